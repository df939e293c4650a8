"""`evasion reproduce detector`: the report and acceptance checks (fast), the quick run (slow)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from evasion.cli.main import main
from evasion.defenses.detector_training import TrainingLog
from evasion.evaluation.curves import SecurityCurve
from evasion.evaluation.detectability import Detectability, DetectabilityMatrix
from evasion.experiments import detector as experiment
from evasion.experiments.detector_records import (
    AcceptanceItem,
    AwareSweep,
    CurvesResult,
    CurveSummary,
    DepthTable,
    DetectorResults,
    DynamicResult,
    Example,
    OperatingPoint,
    StaticRow,
    SweepRow,
)
from evasion.experiments.detector_report import acceptance, interpretation, render


def _det(value: float) -> Detectability:
    return Detectability(value, value, value, 0.05, value, 1 - value, 100, 100)


def _curve(model: str, acc: list[float], rej: list[float]) -> CurveSummary:
    mis = [1 - a - r for a, r in zip(acc, rej)]
    return CurveSummary(SecurityCurve(model, "worst case", "linf", [0.0, 0.08, 0.24], acc, rej, mis), 0.5)


def _matrix(title: str, names: list[str], values: list[list[float]]) -> DetectabilityMatrix:
    return DetectabilityMatrix(names, names, values, title)


def fake_results() -> DetectorResults:
    """Results shaped like `reproduce` returns them, with made-up numbers."""
    static = []
    for key, label, accs, dets in (
        ("fast", "Fast", [0.9, 0.2], [0.7, 0.75]),
        ("bim-linf", "Iterative ℓ∞", [0.8, 0.05], [0.85, 0.99]),
        ("deepfool-l2", "DeepFool ℓ2", [0.0], [0.91]),
    ):
        for units, acc, det in zip((1.0, 3.0) if len(accs) == 2 else (math.inf,), accs, dets):
            static.append(StaticRow(key, label, "linf", units, units * 0.08, "pool1", acc, _det(det)))
    sweep = [SweepRow(s, 0.3 + s / 2, 10, _det(0.9 - s / 3)) for s in (0.0, 0.5)] + [
        SweepRow(1.0, 0.8, 0, None)
    ]
    dynamic_sweep = [replace(r, detectability=_det(0.8)) if r.detectability else r for r in sweep]
    aware = {  # the threshold-aware adversary: the dynamic detector drops below 0.7 at sigma 0.5
        "static": AwareSweep(
            0.002, tuple(replace(r, detectability=_det(0.55), evasion_rate=0.6) for r in sweep)
        ),
        "dynamic": AwareSweep(
            0.0015,
            (
                replace(sweep[0], detectability=_det(0.75), evasion_rate=0.1),
                replace(sweep[1], detectability=_det(0.6), evasion_rate=0.35),
                replace(sweep[2], evasion_rate=0.0),
            ),
        ),
    }
    point = {"threshold_0.5": OperatingPoint(0.5, 0.97, 0.01), "fpr_0.05": OperatingPoint(0.7, 0.93, 0.05)}
    log = TrainingLog((0.5, 0.4), (0.9, 0.95), 2, 1.0)
    return DetectorResults(
        settings=experiment.QUICK,
        clean_accuracy=0.98,
        training={},
        layer_selection={},
        static=tuple(static),
        eps_star={"fast": 0.24, "bim-linf": 0.24, "deepfool-l2": math.inf},
        depth=DepthTable(("pool1", "pool2"), {"fast": {"pool1": 0.9, "pool2": 0.8}}),
        fig3={"fast": _matrix("Fast", ["1", "3"], [[0.9, 0.95], [0.6, 0.97]])},
        fig4=_matrix("x", ["Fast", "Iterative ℓ∞"], [[0.95, 0.7], [0.9, 0.99]]),
        dynamic=DynamicResult(0.16, 0.02, 10, "pool1", tuple(sweep), log, tuple(dynamic_sweep),
                              {"static": point, "dynamic": point}, aware=aware),
        curves=CurvesResult((0.0, 0.08, 0.24), (0, 1, 3), {
            "undefended": {"worst case": _curve("undefended", [0.98, 0.5, 0.0], [0, 0, 0])},
            "dynamic detector": {"worst case": _curve("dynamic detector", [0.93, 0.5, 0.1], [0.05, 0.3, 0.8])},
        }),
        timings={"static": 1.0},
        examples=(Example("Fast", torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)),),
    )  # fmt: skip


def test_acceptance_reads_the_thresholds_of_the_issue():
    items = acceptance(fake_results())
    static10, static30, worst, dynamic, aware = items[:5]
    assert static10.ok and "Iterative ℓ∞ 3: 0.990" in static10.text
    assert not static30.ok and "Fast 3: 0.750" in static30.text  # 0.75 < 0.8 at 20% accuracy
    assert "sigma 0.5" in worst.text
    # the paper's finding under the paper's protocol, then under the threshold-aware adversary
    assert dynamic.kind == "finding" and dynamic.ok and dynamic.status == "holds"
    assert "paper protocol" in dynamic.text and "finding holds" in dynamic.text
    assert aware.kind == "finding" and not aware.ok and aware.status == "does not hold"
    assert "threshold-aware adversary at the deployed threshold" in aware.text
    assert "finding does not hold" in aware.text and "lowest detectability 0.600" in aware.text
    assert "p_adv > 0.0015" in aware.text and "35.0% of the test inputs evade" in aware.text
    assert "static detector at p_adv > 0.002" in aware.text
    assert [i.status for i in items if i.kind == "info"] == ["info"] * 3  # reported, not judged
    assert AcceptanceItem(False, "static", "x").status == "does not hold"  # a result, not a failure
    assert AcceptanceItem(False, "check", "x").status == "ERROR" and AcceptanceItem(False, "check", "x").error


def test_acceptance_without_threshold_aware_sweeps():
    results = fake_results()
    results = replace(results, dynamic=replace(results.dynamic, aware={}))
    items = acceptance(results)
    assert [i.kind for i in items].count("finding") == 1
    assert "threshold_aware" in results.dynamic.to_dict()


def test_report_renders_every_section(tmp_path):
    results = fake_results()
    path = render(results, seconds=1.0).write(tmp_path / "report.html")
    html = path.read_text()
    for needle in (
        "Fig. 2 left",
        "Fig. 2 right",
        "Fig. 3",
        "Fig. 5",
        "Threshold-aware adversary at the deployed threshold",
        "evasion rate",
        "Security evaluation curves",
        "<svg",
        "Interpretation",
    ):
        assert needle in html
    findings = interpretation(results)
    assert any(v == "does not hold" for _, v in findings) and any(v == "holds" for _, v in findings)
    assert any("threshold-aware" in text and v == "does not hold" for text, v in findings)
    # a finding that does not hold is shown as a result (warn), not as a failed criterion (bad)
    aware = acceptance(results)[4]
    assert f'<div class="flag warn">{aware.text[:40]}' in html.replace("&#x27;", "'")


def test_settings_map_the_papers_units():
    s = experiment.FULL
    assert s.l2_unit == pytest.approx(0.08 * math.sqrt(784 / 3072))
    advs = {a.key: a for a in experiment.adversaries(s)}
    assert advs["bim-l2"].epsilons[0] == pytest.approx(20 * s.l2_unit)
    assert advs["bim-linf"].epsilons == pytest.approx((0.08, 0.16, 0.24, 0.32))
    assert math.isinf(advs["deepfool-l2"].epsilons[0])


@pytest.mark.slow
def test_quick_reproduction_writes_report_and_results(tmp_path):
    out = tmp_path / "detector"
    assert main(["reproduce", "detector", "--quick", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"static", "depth", "fig3", "fig4", "dynamic", "curves", "acceptance"} <= set(results)
    assert len(results["static"]) == 3 * 2 + 2
    aware = results["dynamic"]["threshold_aware"]
    sigmas = list(experiment.QUICK.sigmas)
    for name in ("static", "dynamic"):
        assert [r["sigma"] for r in aware[name]["rows"]] == sigmas and 0 < aware[name]["threshold"] < 1
        assert all(0 <= r["evasion_rate"] <= 1 for r in aware[name]["rows"])
    assert all("evasion_rate" not in r for r in results["dynamic"]["dynamic"])  # the paper's rows as before
    assert [a["kind"] for a in results["acceptance"]].count("finding") == 2
    assert any("(threshold-aware)" in attack for attack in results["curves"]["models"]["undefended"])
    assert (out / "report.html").stat().st_size > 10_000


def test_results_serialise_to_the_json_layout():
    data = fake_results().to_dict()
    assert list(data) == [
        "settings", "clean_accuracy", "static", "eps_star", "depth", "fig3", "fig4", "dynamic", "curves", "timings",
    ]  # fmt: skip
    assert data["settings"]["l2_unit"] == experiment.QUICK.l2_unit and data["settings"]["grid"] == (1, 3)
    assert data["static"][0]["detectability"]["tpr_at_0.05_fpr"] == 0.7
    assert data["dynamic"]["static"][-1]["detectability"] is None
    assert data["dynamic"]["combined_clean"]["dynamic"]["fpr_0.05"]["rejected"] == 0.05
    assert list(data["dynamic"]) == [
        "epsilon", "step_size", "steps", "layer", "static", "training", "dynamic", "combined_clean", "threshold_aware",
    ]  # fmt: skip
    assert list(data["dynamic"]["static"][0]) == [
        "sigma",
        "classifier_accuracy",
        "n_successful",
        "detectability",
    ]
    aware = data["dynamic"]["threshold_aware"]
    assert list(aware) == ["detector_loss", "kappa", "fpr", "keep", "static", "dynamic"]
    assert (aware["detector_loss"], aware["kappa"], aware["fpr"], aware["keep"]) == (
        "hinge",
        1.0,
        0.05,
        "best",
    )
    assert aware["dynamic"]["threshold"] == 0.0015 and len(aware["dynamic"]["rows"]) == 3
    assert list(aware["dynamic"]["rows"][1]) == [
        "sigma", "classifier_accuracy", "n_successful", "detectability", "evasion_rate",
    ]  # fmt: skip
    assert aware["dynamic"]["rows"][1]["evasion_rate"] == 0.35
    assert aware["dynamic"]["rows"][-1]["detectability"] is None
    assert data["curves"]["models"]["undefended"]["worst case"]["auc_defended"] == 0.5
    assert data["fig4"] == {"title": "x", "rows": ["Fast", "Iterative ℓ∞"], "columns": ["Fast", "Iterative ℓ∞"],
                            "values": [[0.95, 0.7], [0.9, 0.99]]}  # fmt: skip
    json.dumps(data)
