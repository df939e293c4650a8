"""Transferability matrices: the diagonal is white-box success, off-diagonal entries re-checked."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evasion.attacks import FGSM, PGD, DeepFool
from evasion.errors import ConfigError, InputError
from evasion.evaluation.transfer import MeanLogits, TransferMatrix, transferability
from evasion.models.classifier import Classifier
from evasion.threat_model import ThreatModel

from .conftest import make_tiny_cnn


def _models() -> tuple[Classifier, Classifier, Classifier]:
    a, b, c = make_tiny_cnn(0), make_tiny_cnn(1), make_tiny_cnn(2)
    b.name, c.name = "tiny-b", "tiny-c"
    return a, b, c


def _data(model: Classifier, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model.predict(x)
    y[::3] = (y[::3] + 1) % 10  # a third of the samples misclassified by the first model
    return x, y


def test_diagonal_is_white_box_success_on_correct_samples(one_thread) -> None:
    a, b, _ = _models()
    x, y = _data(a)
    attack = PGD(steps=5, early_stop=False)
    m = transferability([a, b], [a, b], (x, y), attack, 0.1, seed=3)
    assert m.shape == (2, 2) and m.sources == ("tiny-cnn", "tiny-b") and m.targets == m.sources
    threat = ThreatModel("linf", 0.1)
    for i, model in enumerate((a, b)):
        res = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(3))
        ok = model.predict(x) == y
        assert m.counts[i] == int(ok.sum())
        assert m.clean_accuracy[i] == pytest.approx(float(ok.float().mean()))
        if ok.any():
            assert m.success[i][i] == pytest.approx(float(res.success[ok].float().mean()))
        else:
            assert math.isnan(m.success[i][i])
    # off-diagonal: a's examples, judged by b on the samples b gets right
    adv = attack(a, x, y, threat=threat, generator=torch.Generator().manual_seed(3)).adversarial
    ok_b = b.predict(x) == y
    if ok_b.any():
        assert m.rate("tiny-cnn", "tiny-b") == pytest.approx(
            float((b.predict(adv)[ok_b] != y[ok_b]).float().mean())
        )


def test_ensemble_row_attacks_the_mean_logits(one_thread) -> None:
    a, b, c = _models()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = c.predict(x)
    m = transferability([a, b], [a, b, c], (x, y), FGSM(), 0.1, ensemble=True)
    assert m.shape == (3, 3) and m.sources[-1] == "ensemble(tiny-cnn+tiny-b)"
    mean = Classifier(MeanLogits([a, b]), 10, input_shape=(1, 8, 8))
    adv = FGSM(early_stop=False)(mean, x, y, threat=ThreatModel("linf", 0.1)).adversarial
    assert m.rate(m.sources[-1], "tiny-c") == pytest.approx(float((c.predict(adv) != y).float().mean()))
    assert m.counts[2] == 16
    d = m.to_dict()
    assert len(d["success"]) == 3 and d["config"]["ensemble"] is True
    assert "<svg" in m.heatmap_svg()


def test_deterministic_and_an_iterative_attack_runs_without_early_stop(one_thread) -> None:
    a, b, _ = _models()
    x, y = _data(a, 12)
    runs = [transferability(a, [a, b], (x, y), PGD(steps=3), 0.05, seed=1) for _ in range(2)]
    assert runs[0] == runs[1]
    assert isinstance(runs[0], TransferMatrix) and "early_stop=False" in runs[0].config["attack"]


def test_bad_input_is_a_one_line_error() -> None:
    a, b, _ = _models()
    x, y = _data(a, 4)
    for eps in (0.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="eps"):
            transferability(a, b, (x, y), FGSM(), eps)
    with pytest.raises(ConfigError, match="minimum-norm"):
        transferability(a, b, (x, y), DeepFool(), 0.1)
    with pytest.raises(ConfigError, match="appears twice"):
        transferability([a, make_tiny_cnn(5)], b, (x, y), FGSM(), 0.1)
    big = make_tiny_cnn(0, size=16)
    big.name = "big"
    with pytest.raises(InputError, match=r"model 'big' takes inputs of shape \(1, 16, 16\)"):
        transferability(a, big, (x, y), FGSM(), 0.1)
    with pytest.raises(ConfigError, match="Classifiers or zoo names"):
        transferability([torch.nn.Linear(2, 2)], b, (x, y), FGSM(), 0.1)  # type: ignore[list-item]
    with pytest.raises(InputError, match="data must be"):
        transferability(a, b, x, FGSM(), 0.1)  # type: ignore[arg-type]


def test_cli_writes_the_matrix_and_bad_input_exits_2(tmp_path, capsys) -> None:
    from evasion.cli.main import main

    out = tmp_path / "t"
    args = ["transfer", "--models", "digits-mlp,digits-cnn", "--data", "digits", "-n", "16"]
    rc = main([*args, "--attack", "fgsm", "--eps", "0.1", "--ensemble", "--out", str(out), "--threads", "1"])
    assert rc == 0
    data = json.loads((out / "transfer.json").read_text())
    assert data["sources"] == ["digits-mlp", "digits-cnn", "ensemble(digits-mlp+digits-cnn)"]
    assert len(data["success"]) == 3 and all(len(r) == 2 for r in data["success"])
    assert (out / "transfer.svg").read_text().startswith("<svg")
    assert "digits-cnn" in capsys.readouterr().out
    for bad, words in (
        (["--eps", "0"], "eps must be > 0"),
        (["--attack", "deepfool"], "minimum-norm"),
        (["--attack", "fgsm", "--param", "steps"], "KEY=VALUE"),
    ):
        assert main([*args, *bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
