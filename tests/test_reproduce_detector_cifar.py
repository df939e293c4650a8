"""`evasion reproduce detector --data PATH`: CIFAR-10 python batches in the release's exact layout.

The happy path runs the whole protocol on a few dozen synthetic images with a ResNet-8 (the
paper's ResNet with one block per stage) and tiny settings; the wrong layouts must fail in
well under a second, before anything is trained, with one line naming what was expected.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from evasion.cli.main import main
from evasion.datasets.cifar import CIFAR10_FILES, CifarLayoutError, check_cifar10
from evasion.experiments import detector

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]

#: seconds-sized: ResNet-8, one epsilon, two sigmas, a handful of images and steps
TINY = replace(
    detector.CIFAR_QUICK,
    name="cifar-tiny",
    n_train=8,
    n_val=4,
    n_test=8,
    grid=(4,),
    layers=("stem", "stage1"),
    sigmas=(0.0, 1.0),
    n_dynamic=6,
    dyn_train=8,
    dyn_epochs=1,
    n_curve=6,
    curve_sigmas=(),
    epochs=1,
    width=0.125,
    deepfool_candidates=2,
    deepfool_steps=3,
    dyn_steps=2,
    clf_train=40,
    clf_epochs=3,
    clf_lr=1e-2,  # predicts one of the two classes after 3 epochs: right on half the images
    resnet_blocks=1,
    resamples=100,
)


def _batch(path: Path, n: int, seed: int, label: bytes) -> None:
    """One batch as the release pickles it: a dict with bytes keys, uint8 (n, 3072) rows."""
    rng = np.random.default_rng(seed)
    # two of the ten classes, alternating: even an untrained network is right on about half the
    # images, so the minimum-norm attacks (which leave misclassified images alone) have work to do
    labels = [(i + seed) % 2 for i in range(n)]
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": label, b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path, per_batch: int = 6, test: int = 14) -> Path:
    """``root/cifar-10-batches-py/`` with data_batch_1..5, test_batch and batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i in range(1, 6):
        _batch(base / f"data_batch_{i}", per_batch, i, f"training batch {i} of 5".encode())
    _batch(base / "test_batch", test, 0, b"testing batch 1 of 1")
    meta = {b"num_cases_per_batch": per_batch, b"label_names": NAMES, b"num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return base


def test_the_protocol_runs_on_cifar10_batches_in_the_release_layout(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data")
    monkeypatch.setattr(detector, "CIFAR_QUICK", TINY)
    out = tmp_path / "run"
    argv = [
        "reproduce",
        "detector",
        "--quick",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["dataset"] == "cifar10" and results["settings"]["input_dims"] == 3072
    # the paper's units: 4 / 255 in L∞, 80 / 255 in L2 (same dimensions as the paper's images)
    eps = {r["adversary"]: r["epsilon"] for r in results["static"]}
    assert eps["bim-linf"] == pytest.approx(4 / 255) and eps["bim-l2"] == pytest.approx(80 / 255)
    layers = {r["adversary"]: r["layer"] for r in results["static"]}
    assert layers["fast"] == "stage1" and layers["deepfool-l2"] == "stage3"  # AD(2) / AD(4)
    assert results["classifier"]["trained_on"] == 30 and (out / "resnet32-cifar.pt").is_file()
    row = results["static"][0]
    assert len(row["outcomes"]["clean_flagged"]) == 8 and row["detectability_interval"]["n"] == 8
    assert row["detectability_interval"]["estimate"] == pytest.approx(row["detectability"]["detectability"])
    worst = results["curves"]["models"]["undefended"]["worst case"]
    assert len(worst["status"]) == 6 and len(worst["accuracy_band"]) == 2
    checks = [a for a in results["acceptance"] if a["kind"] == "check"]
    assert len(checks) == 2 and all(a["ok"] for a in checks)  # intervals match their numbers
    assert all("verdict" in a for a in results["acceptance"] if a["kind"] in ("static", "finding"))
    assert "cifar10" in (out / "report.html").read_text()


def test_weights_are_loaded_instead_of_trained(tmp_path):
    train, _ = detector.load_cifar10(write_cifar10(tmp_path / "data"))
    settings = replace(TINY, clf_epochs=1)
    clf, info = detector.cifar_classifier(settings, train, torch.device("cpu"), save=tmp_path / "w.pt")
    loaded, again = detector.cifar_classifier(settings, train, torch.device("cpu"), weights=tmp_path / "w.pt")
    assert "trained_on" in info and "trained_on" not in again and again["weights"].endswith("w.pt")
    assert torch.equal(clf.predict(train.x[:8]), loaded.predict(train.x[:8]))


def _layout_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Path, *extra: str) -> str:
    out = tmp_path / "out"
    assert main(["reproduce", "detector", "--data", str(data), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evasion: error: ") and "\n" not in err
    assert not (out / "resnet32-cifar.pt").exists()  # nothing was trained
    return err


def test_wrong_layouts_are_one_line_errors_before_anything_runs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _layout_error(tmp_path, capsys, empty)
    assert "holds no CIFAR-10 python batches" in err and "data_batch_1..data_batch_5" in err

    base = write_cifar10(tmp_path / "partial")
    (base / "data_batch_3").unlink()
    (base / "batches.meta").unlink()
    err = _layout_error(tmp_path, capsys, tmp_path / "partial")
    assert "missing data_batch_3, batches.meta" in err

    c100 = tmp_path / "c100" / "cifar-100-python"
    c100.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (c100 / name).write_bytes(b"x")
    assert "holds CIFAR-100" in _layout_error(tmp_path, capsys, tmp_path / "c100")

    base = write_cifar10(tmp_path / "broken")
    (base / "test_batch").write_bytes(b"not a pickle")
    err = _layout_error(tmp_path, capsys, base)  # the batches folder itself is accepted too
    assert "test_batch is not a readable CIFAR batch" in err and "expected the CIFAR-10" in err

    assert "is a file" in _layout_error(tmp_path, capsys, base / "data_batch_1")
    assert "does not exist" in _layout_error(tmp_path, capsys, tmp_path / "nowhere")
    good = write_cifar10(tmp_path / "good")
    err = _layout_error(tmp_path, capsys, good, "--quick", "--weights", str(tmp_path / "missing.pt"))
    assert "--weights" in err and "not a file" in err
    err = _layout_error(tmp_path, capsys, good, "--quick")  # 30 images; the quick run needs 1,200
    assert "cifar10 has 30 training and 14 test images; the cifar-quick run needs 1200 and 500" in err


def test_weights_need_data_and_the_layout_check_names_every_file(tmp_path, capsys):
    assert main(["reproduce", "detector", "--weights", str(tmp_path / "w.pt")]) == 2
    assert "--weights needs --data" in capsys.readouterr().err
    assert (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta") == CIFAR10_FILES
    with pytest.raises(CifarLayoutError) as info:
        check_cifar10(tmp_path)
    assert info.value.exit_code == 2
    assert check_cifar10(write_cifar10(tmp_path / "d")) == tmp_path / "d" / "cifar-10-batches-py"
    assert check_cifar10(tmp_path / "d") == tmp_path / "d" / "cifar-10-batches-py"
