"""`evasion reproduce detector`: the report and acceptance checks (fast), the quick run (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evasion.cli.main import main
from evasion.experiments import detector as experiment
from evasion.experiments.detector_report import acceptance, interpretation, render


def _det(value: float) -> dict:
    return {"detectability": value, "roc_auc": value, "tpr_at_0.05_fpr": value}


def _curve(acc: list[float], rej: list[float]) -> dict:
    return {"accuracy": acc, "rejected": rej, "auc": sum(acc) / len(acc), "auc_defended": 0.5}


def fake_results() -> dict:
    """Results shaped like `reproduce` returns them, with made-up numbers."""
    static = []
    for key, label, accs, dets in (
        ("fast", "Fast", [0.9, 0.2], [0.7, 0.75]),
        ("bim-linf", "Iterative ℓ∞", [0.8, 0.05], [0.85, 0.99]),
        ("deepfool-l2", "DeepFool ℓ2", [0.0], [0.91]),
    ):
        for units, acc, det in zip((1.0, 3.0) if len(accs) == 2 else (math.inf,), accs, dets):
            eps = units * 0.08
            static.append(
                {
                    "adversary": key,
                    "label": label,
                    "norm": "linf",
                    "units": units,
                    "epsilon": eps,
                    "layer": "pool1",
                    "classifier_accuracy": acc,
                    "detectability": _det(det),
                }
            )
    sweep = [
        {
            "sigma": s,
            "classifier_accuracy": 0.3 + s / 2,
            "n_successful": 10,
            "detectability": _det(0.9 - s / 3),
        }
        for s in (0.0, 0.5, 1.0)
    ]
    sweep[-1]["detectability"], sweep[-1]["n_successful"] = None, 0
    matrix = {
        "title": "Fast",
        "rows": ["1", "3"],
        "columns": ["1", "3"],
        "values": [[0.9, 0.95], [0.6, 0.97]],
    }
    return {
        "settings": {**experiment.QUICK.__dict__, "l2_unit": experiment.QUICK.l2_unit},
        "clean_accuracy": 0.98,
        "static": static,
        "eps_star": {"fast": 0.24, "bim-linf": 0.24, "deepfool-l2": math.inf},
        "depth": {"layers": ["pool1", "pool2"], "detectability": {"fast": {"pool1": 0.9, "pool2": 0.8}}},
        "fig3": {"fast": matrix},
        "fig4": {"title": "x", "rows": ["Fast", "Iterative ℓ∞"], "columns": ["Fast", "Iterative ℓ∞"], "values": [[0.95, 0.7], [0.9, 0.99]]},
        "dynamic": {
            "epsilon": 0.16, "static": sweep, "dynamic": [dict(r, detectability=_det(0.8)) if r["detectability"] else r for r in sweep],
            "combined_clean": {k: {"threshold_0.5": {"accuracy": 0.97, "rejected": 0.01}, "fpr_0.05": {"accuracy": 0.93, "rejected": 0.05}} for k in ("static", "dynamic")},
        },
        "curves": {"units": [0, 1, 3], "models": {
            "undefended": {"worst case": _curve([0.98, 0.5, 0.0], [0, 0, 0])},
            "dynamic detector": {"worst case": _curve([0.93, 0.5, 0.1], [0.05, 0.3, 0.8])},
        }},
        "seconds": 1.0,
    }  # fmt: skip


def test_acceptance_reads_the_thresholds_of_the_issue():
    items = acceptance(fake_results())
    static10, static30, worst, dynamic = items[:4]
    assert static10["ok"] and "Iterative ℓ∞ 3: 0.990" in static10["text"]
    assert not static30["ok"] and "Fast 3: 0.750" in static30["text"]  # 0.75 < 0.8 at 20% accuracy
    assert "sigma 0.5" in worst["text"] and dynamic["ok"]


def test_report_renders_every_section(tmp_path):
    results = fake_results()
    examples = [{"label": "Fast", "clean": torch.rand(2, 1, 28, 28), "adversarial": torch.rand(2, 1, 28, 28)}]
    path = render(results, examples).write(tmp_path / "report.html")
    html = path.read_text()
    for needle in (
        "Fig. 2 left",
        "Fig. 2 right",
        "Fig. 3",
        "Fig. 5",
        "Security evaluation curves",
        "<svg",
        "Interpretation",
    ):
        assert needle in html
    findings = interpretation(results)
    assert any(holds is False for _, holds in findings) and any(holds for _, holds in findings)


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
    assert (out / "report.html").stat().st_size > 10_000
