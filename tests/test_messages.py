"""What a user is told when something is wrong: one line, the right key or path, the right exit code.

Each test pins one message of issue 15: an unsafe pickle refused before any other complaint, our
own text for an old-protocol pickle, the config key of an unknown attack or model, exit code 2
for every missing input file, an empty class folder, the label of `attack --image` without
`--label`, and `reproduce` telling a finding that does not hold from an error.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from evasion import datasets, models
from evasion.build import model as build_model
from evasion.cli.main import main
from evasion.cli.reproduce import _verdicts
from evasion.config import parse_config
from evasion.datasets.image import read_image
from evasion.errors import (
    ConfigError,
    EvasionError,
    InputError,
    MissingFileError,
    UnknownNameError,
    UnsafeFileError,
)
from evasion.experiments import icub_report
from evasion.experiments.detector_records import AcceptanceItem
from evasion.experiments.detector_report import acceptance
from evasion.reports.png import write_png

from .test_reproduce_detector import fake_results as detector_results
from .test_reproduce_icub import _results as icub_results

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")  # torch.jit.trace/save


class _Payload:
    """Unpickling this creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _evil(tmp_path: Path, protocol: int | None) -> tuple[Path, Path]:
    """A malicious model file (``protocol`` None: a torch.save archive) and its marker path."""
    marker, path = tmp_path / "pwned", tmp_path / f"evil-{protocol}.pt"
    if protocol is None:
        torch.save(_Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=protocol))
    return path, marker


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


# -------------------------------------------------------------------------------- unsafe pickles
@pytest.mark.parametrize("protocol", [0, 1, 2, 4, None])
def test_unsafe_pickle_is_refused_before_input_shape_is_asked(tmp_path: Path, protocol: int | None) -> None:
    path, marker = _evil(tmp_path, protocol)
    with pytest.raises(UnsafeFileError) as err:
        models.load(path)  # no input_shape: the refusal must come first
    text = _one_line(err.value)
    assert "input_shape" not in text and "refused" in text and "run any code" in text
    assert "trust=True" in text and "--trust" in text
    assert not marker.exists()
    assert err.value.exit_code == 2


@pytest.mark.parametrize("protocol", [0, 1])
def test_old_protocol_pickle_gets_our_message_not_torchs(tmp_path: Path, protocol: int) -> None:
    path, marker = _evil(tmp_path, protocol)
    with pytest.raises(UnsafeFileError) as err:
        models.load(path, input_shape=(1, 8, 8))
    text = _one_line(err.value)
    assert f"is a protocol-{protocol} Python pickle" in text  # what the file is
    assert "references posix.system" in text or "references builtins.open" in text or "io.open" in text
    assert "weights_only" not in text and "Weights only load failed" not in text  # not torch's advice
    assert not marker.exists()


def test_benign_protocol_0_pickle_is_refused_too_and_loads_with_trust(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps(net, protocol=0))
    with pytest.raises(UnsafeFileError, match="protocol-0 Python pickle"):
        models.load(path, input_shape=(1, 8, 8))
    clf = models.load(path, input_shape=(1, 8, 8), trust=True)  # the explicit opt-in
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(clf(x), net(x))


def test_not_a_pickle_is_not_called_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello, these are not weights\n")
    with pytest.raises(EvasionError) as err:
        models.load(path, input_shape=(1, 8, 8))
    assert not isinstance(err.value, UnsafeFileError) and "cannot read" in str(err.value)


def test_cli_refuses_the_unsafe_file_without_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = _evil(tmp_path, 0)
    code = main(["attack", "--model", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "refused" in err and "input_shape" not in err and "--trust" in err
    assert len(err.strip().splitlines()) == 1 and not marker.exists()


def test_input_shape_is_asked_for_a_safe_file(tmp_path: Path) -> None:
    scripted = torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), torch.rand(1, 1, 8, 8))
    path = tmp_path / "net.ts"
    torch.jit.save(scripted, str(path))
    with pytest.raises(ConfigError, match=r"input_shape is required .*--input-shape"):
        models.load(path)


# ------------------------------------------------------------------------- config keys of names
def _config(**tables: object) -> dict[str, object]:
    base: dict[str, object] = {"models": [{"name": "mnist-cnn"}], "epsilons": {"linf": [0.1]}}
    return {**base, **tables}


def test_unknown_attack_names_its_config_key_and_the_likely_name() -> None:
    raw = _config(
        attacks=[{"attack": "fgsm", "norm": "linf"}, {"attack": "pgdd", "norm": "linf"}],
    )
    with pytest.raises(UnknownNameError) as err:
        parse_config(raw)
    text = _one_line(err.value)
    assert text.startswith("attacks[1].attack: unknown attack 'pgdd' (did you mean 'pgd'?); valid attacks: ")
    assert err.value.exit_code == 2


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key data\.splt in the config \(did you mean data\.split\?\)"
    ):
        parse_config(_config(data={"splt": "test"}))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "mnist-cnnn"}, "models[1].name: unknown model 'mnist-cnnn' (did you mean 'mnist-cnn'?)"),
        ({"name": "m", "model": "mnist-cnnn"}, "models[1].model: unknown model 'mnist-cnnn'"),
        (
            {"name": "f", "model": "weights/absent.pt"},
            "models[1].model: model file 'weights/absent.pt' does not exist",
        ),
    ],
)
def test_unknown_model_names_its_config_key(table: dict[str, str], message: str) -> None:
    config = parse_config({"models": [{"name": "digits-mlp"}, table], "epsilons": {"linf": [0.1]}})
    with pytest.raises(EvasionError) as err:
        build_model(config.models[1], torch.device("cpu"), config)
    assert _one_line(err.value).startswith(message) and err.value.exit_code == 2


def test_a_guess_is_offered_only_when_it_is_unambiguous() -> None:
    assert UnknownNameError("layer", "conv9", ["bn1", "conv1", "conv2"]).suggestion is None
    assert UnknownNameError("attack", "fgms", ["fgsm", "pgd"]).suggestion == "fgsm"
    assert UnknownNameError("attack", "zzz", ["fgsm", "pgd"]).suggestion is None
    err = pickle.loads(pickle.dumps(UnknownNameError("attack", "pgdd", ["pgd"]).at("attacks[0].attack")))
    assert str(err).startswith("attacks[0].attack: unknown attack 'pgdd'")


# ------------------------------------------------------------------------ missing input files
def test_every_missing_input_file_is_exit_code_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    calls = {
        "image": lambda: read_image(missing.with_suffix(".png")),
        "model file": lambda: models.load_file(missing.with_suffix(".pt"), input_shape=(1, 8, 8)),
        "model path": lambda: models.load(str(missing.with_suffix(".pt"))),
        "image folder": lambda: datasets.read_image_folder(missing),
        "npz": lambda: datasets.read_npz(missing.with_suffix(".npz")),
        "idx": lambda: datasets.read_mnist_idx(missing),
        "dataset path": lambda: datasets.load(str(missing)),
    }
    for what, call in calls.items():
        with pytest.raises(EvasionError) as err:
            call()
        assert err.value.exit_code == 2, (what, err.value)
        assert "absent" in _one_line(err.value), what
    with pytest.raises(MissingFileError):
        read_image(missing.with_suffix(".png"))


def test_cli_missing_image_and_missing_data_both_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    image = tmp_path / "no-such.png"
    assert main(["attack", "--image", str(image), "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such.png" in err and "does not exist" in err
    model = ["--model", str(_tiny_model(tmp_path)), "--input-shape", "1,8,8"]
    assert main(["attack", *model, "--data", str(tmp_path / "no-data"), "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-data" in err


def test_missing_config_file_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["evaluate", "nothere.toml"]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert "config file nothere.toml does not exist" in err and f"looked in {tmp_path}" in err


# ----------------------------------------------------------------------------- empty class folder
def _png(path: Path, value: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, torch.full((1, 4, 4), value), (0.0, 1.0))


@pytest.mark.parametrize("layout", ["flat", "splits"])
def test_empty_class_folder_is_an_input_error_naming_it(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "data"
    base = root / "train" if layout == "splits" else root
    _png(base / "cat" / "a.png", 0.2)
    _png(base / "dog" / "b.png", 0.8)
    (base / "emu").mkdir()
    (base / "emu" / "notes.txt").write_text("not an image")
    if layout == "splits":
        _png(root / "test" / "cat" / "c.png", 0.3)
    with pytest.raises(InputError) as err:
        datasets.load(str(root), split="train" if layout == "splits" else "all")
    text = _one_line(err.value)
    assert str(base / "emu") in text and "holds no images" in text and err.value.exit_code == 2
    (base / "emu" / "notes.txt").unlink()
    _png(base / "emu" / "e.png", 0.5)
    data = datasets.load(str(root), split="train" if layout == "splits" else "all")
    assert data.classes == ["cat", "dog", "emu"] and len(data) == 3


# ------------------------------------------------------------------- attack --image without --label
def _tiny_model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    path = tmp_path / "tiny.ts"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 1, 8, 8)), str(path))
    return path


def test_attack_image_without_label_says_the_label_is_the_models_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, image = _tiny_model(tmp_path), tmp_path / "x.png"
    _png(image, 0.5)
    common = ["attack", "--model", str(model), "--input-shape", "1,8,8", "--image", str(image)]
    common += ["--attack", "fgsm", "--epsilon", "0.05", "--quiet", "--save-images", "0"]
    assert main([*common, "--out", str(tmp_path / "own")]) == 0
    out = capsys.readouterr().out
    assert "clean accuracy   1.0000   (no --label: the label is the model's own prediction" in out
    summary = json.loads((tmp_path / "own" / "summary.json").read_text())
    assert summary["label_source"] == "prediction" and summary["clean_accuracy"] == 1.0
    assert main([*common, "--label", "3", "--out", str(tmp_path / "given")]) == 0
    out = capsys.readouterr().out
    assert "clean accuracy" in out and "own prediction" not in out
    assert json.loads((tmp_path / "given" / "summary.json").read_text())["label_source"] == "--label"
    assert main([*common, "--label", "12", "--out", str(tmp_path / "bad")]) == 2
    assert "--label must be a class index in [0, 10)" in capsys.readouterr().err


# --------------------------------------------------------------- reproduce: findings vs. errors
def test_a_finding_that_does_not_hold_is_a_result_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    items = acceptance(detector_results())
    static = [i for i in items if i.kind == "static"]
    assert any(not i.ok for i in static)  # the fake numbers miss the paper's 0.8 at accuracy < 30%
    assert _verdicts(items) == 0
    out = capsys.readouterr().out
    assert "[finding does not hold] static detectability >= 0.8" in out
    assert "[finding holds]" in out and "[check ok] every accuracy and detectability" in out
    assert "FAIL" not in out and "ERROR" not in out


def test_a_broken_invariant_is_an_error_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    results = detector_results()
    broken = replace(results, clean_accuracy=math.nan)
    check = acceptance(broken)[-1]
    assert check.kind == "check" and check.error and "clean accuracy = nan" in check.text
    assert _verdicts(acceptance(broken)) == 1
    out, err = capsys.readouterr()
    assert "[ERROR] every accuracy and detectability" in out and "1 check(s) of this code failed" in err
    assert AcceptanceItem(False, "finding", "x").label == "finding does not hold"


def test_icub_findings_use_the_same_words(capsys: pytest.CaptureFixture[str]) -> None:
    results = icub_results()
    items = icub_report.findings(results)
    assert {i.kind for i in items} <= {"finding", "info", "check"}
    assert [i.text for i in items if i.kind != "check"] == icub_report.interpret(results)
    assert [i.ok for i in items if i.kind == "check"] == [True, True]
    assert _verdicts(items) == 0
    out = capsys.readouterr().out
    assert "[finding holds] SVM-adv beats SVM-RBF" in out and "FAIL" not in out
    # the torch heads disagreeing with sklearn is a bug of this code, not a finding
    fit = next(iter(results.sets.values())).splits[0].fit
    wrong = {m: replace(f, sklearn_max_abs_diff=0.5) for m, f in fit.models.items()}
    split = replace(next(iter(results.sets.values())).splits[0], fit=replace(fit, models=wrong))
    sets = {k: replace(v, splits=(split,)) for k, v in results.sets.items()}
    items = icub_report.findings(replace(results, sets=sets))
    assert [i.error for i in items if i.kind == "check"] == [True, False]
    assert _verdicts(items) == 1
    assert "[ERROR] the torch SVM heads reproduce sklearn's decision values" in capsys.readouterr().out


def test_icub_curve_out_of_range_is_an_error() -> None:
    results = icub_results()
    label, attacks = next(iter(results.curves.items()))
    curve = attacks["error-generic"]["SVM"]
    bad = replace(curve, accuracy=[1.5, *curve.accuracy[1:]])
    curves = {label: {**attacks, "error-generic": {**attacks["error-generic"], "SVM": bad}}}
    checks = icub_report.checks(replace(results, curves=curves))
    assert checks[1].error and f"{label}/error-generic/SVM" in checks[1].text and checks[0].ok
