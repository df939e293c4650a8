"""`evasion reproduce detector`: bootstrap intervals over test images and verdicts decided on them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from evasion.evaluation.curves import CORRECT, MISCLASSIFIED, REJECTED, SecurityCurve
from evasion.evaluation.detectability import Detectability
from evasion.experiments.detector_records import (
    CurvesResult,
    CurveSummary,
    PairOutcomes,
    StaticRow,
    SweepRow,
    with_intervals,
)
from evasion.experiments.detector_report import acceptance, interpretation, render

from .test_reproduce_detector import fake_results


def _det(value: float, n: int) -> Detectability:
    return Detectability(value, value, value, 0.05, value, 1 - value, n, n)


def _outcomes(n: int, clean_flagged: int, adv_missed: int, *, fooled: int | None = None) -> PairOutcomes:
    """``n`` images: the first ``clean_flagged`` clean ones flagged, the last ``adv_missed``
    adversarial ones missed; with ``fooled``, only the first ``fooled`` pairs count."""
    cf, af = np.zeros(n, bool), np.ones(n, bool)
    cf[:clean_flagged] = True
    af[n - adv_missed :] = False
    kept = None if fooled is None else np.arange(n) < fooled
    return PairOutcomes(cf, af, np.zeros(n, bool), kept=kept, evaded=None if fooled is None else ~af)


def test_detectability_is_the_mean_of_paired_scores_and_its_interval_keeps_the_pairing():
    out = _outcomes(1000, 40, 90)  # 0.5 * (0.96 + 0.91) = 0.935
    assert out.scores().mean() == pytest.approx(0.935)
    row = StaticRow("fast", "Fast", "linf", 4.0, 0.32, "pool1", 0.0, _det(0.935, 1000), outcomes=out)
    results = with_intervals(replace(fake_results(), static=(row,)))
    iv = results.static[0].interval
    assert iv is not None and iv.estimate == pytest.approx(0.935) and iv.n == 1000
    assert 0.92 < iv.low < 0.935 < iv.high < 0.95  # binomial-sized: about +-0.01 on 1000 images
    # paired: an image whose clean input and adversarial example are both flagged scores 0.5, so
    # when every image is such a pair the interval has no width (resampling clean and adversarial
    # images independently would give one of about +-0.03)
    both = PairOutcomes(np.arange(100) < 50, np.arange(100) < 50, np.zeros(100, bool))
    row = replace(row, detectability=_det(0.5, 100), outcomes=both)
    iv = with_intervals(replace(fake_results(), static=(row,))).static[0].interval
    assert iv is not None and iv.low == iv.high == 0.5


def test_dynamic_detectability_counts_only_the_successful_pairs():
    # 200 swept images, 20 fool the classifier; of those, 4 adversarial examples are missed
    out = _outcomes(200, 0, 184, fooled=20)  # missed: the last 184, i.e. images 16..199
    assert out.scores().mean() == pytest.approx((16 + 4 * 0.5) / 20)
    results = fake_results()
    row = SweepRow(0.5, 0.9, 20, _det(0.9, 20), evasion_rate=0.92, outcomes=out)
    aware = {"dynamic": replace(results.dynamic.aware["dynamic"], rows=(row,))}
    results = with_intervals(replace(results, dynamic=replace(results.dynamic, aware=aware)))
    r = results.dynamic.aware["dynamic"].rows[0]
    assert r.interval is not None and r.interval.n == 20 and r.interval.estimate == pytest.approx(0.9)
    assert r.evasion_interval is not None and r.evasion_interval.n == 200
    assert r.evasion_interval.estimate == pytest.approx(0.92)
    data = r.to_dict()
    assert data["outcomes"]["kept"] == "1" * 20 + "0" * 180 and len(data["outcomes"]["evaded"]) == 200
    assert data["detectability_interval"]["n"] == 20
    json.dumps(data)


def test_a_finding_whose_interval_straddles_the_bound_is_inconclusive():
    results = fake_results()
    # detectability 0.75 on 20 successful pairs: the interval reaches below 0.7
    row = SweepRow(0.5, 0.4, 20, _det(0.75, 20), outcomes=_outcomes(20, 0, 10))
    results = with_intervals(replace(results, dynamic=replace(results.dynamic, dynamic=(row,))))
    item = acceptance(results)[3]
    assert item.kind == "finding" and item.status == "inconclusive" and not item.ok
    assert item.label == "finding inconclusive" and "finding inconclusive" in item.text
    iv = results.dynamic.dynamic[0].interval
    assert iv is not None and iv.low < 0.7 < iv.high and f"[{iv.low:.3f}, {iv.high:.3f}]" in item.text
    assert item.to_dict()["verdict"] == "inconclusive"
    # the same rate on 2,000 pairs is decided: the interval lies above 0.7
    row = replace(row, outcomes=_outcomes(2000, 0, 1000), detectability=_det(0.75, 2000))
    results = with_intervals(replace(results, dynamic=replace(results.dynamic, dynamic=(row,))))
    assert acceptance(results)[3].status == "holds"
    assert dict(interpretation(results))[acceptance(results)[3].text + "."] == "holds"


def _status(rng: np.random.Generator, n: int, p: list[float]) -> np.ndarray:
    """(n, 3) per-image statuses that never recover (correct -> rejected -> misclassified)."""
    cols = [np.full(n, CORRECT)]
    for q in p:
        worse = rng.random(n) < q
        cols.append(np.where(worse, np.maximum(cols[-1], REJECTED + (rng.random(n) < 0.5)), cols[-1]))
    return np.stack(cols, axis=1).clip(max=MISCLASSIFIED)


def _summary(model: str, st: np.ndarray, eps: list[float]) -> CurveSummary:
    acc = [float((st[:, j] == CORRECT).mean()) for j in range(st.shape[1])]
    rej = [float((st[:, j] == REJECTED).mean()) for j in range(st.shape[1])]
    mis = [1 - a - r for a, r in zip(acc, rej)]
    curve = SecurityCurve(model, "worst case", "linf", eps, acc, rej, mis, len(st))
    defended = [a + (r if e > 0 else 0) for e, a, r in zip(eps, acc, rej)]
    auc_def = sum((e1 - e0) * (a + b) / 2 for e0, e1, a, b in zip(eps, eps[1:], defended, defended[1:]))
    return CurveSummary(curve, auc_def / (eps[-1] - eps[0]), status=st)


def test_curve_bands_and_aucs_resample_whole_per_image_curves():
    rng = np.random.default_rng(0)
    eps = [0.0, 0.08, 0.24]
    undefended = _summary("undefended", _status(rng, 300, [0.5, 0.9]), eps)
    dyn_status = _status(rng, 300, [0.4, 0.6])
    dyn_status[:, 1:][dyn_status[:, 1:] == MISCLASSIFIED] = REJECTED  # the detector rejects most
    defended = _summary("dynamic detector", dyn_status, eps)
    curves = CurvesResult(
        tuple(eps),
        (0, 1, 3),
        {"undefended": {"worst case": undefended}, "dynamic detector": {"worst case": defended}},
    )
    results = with_intervals(replace(fake_results(), curves=curves))
    c = results.curves.models["undefended"]["worst case"]
    assert [iv.estimate for iv in c.accuracy_band] == pytest.approx(c.accuracy)
    assert c.auc_interval is not None and c.auc_interval.estimate == pytest.approx(c.auc)
    assert c.auc_defended_interval is not None
    assert c.auc_defended_interval.estimate == pytest.approx(c.auc_defended)
    assert all(iv.low <= iv.estimate <= iv.high for iv in c.accuracy_band)
    diff = results.curves.differences["dynamic detector - undefended"]
    assert diff.estimate == pytest.approx(defended.auc_defended - undefended.auc_defended) and diff.low > 0
    data = results.curves.to_dict()
    assert len(data["models"]["undefended"]["worst case"]["status"]) == 300
    assert len(data["models"]["undefended"]["worst case"]["accuracy_band"]) == 3
    assert "auc_defended_differences" in data
    items = acceptance(results)
    check = next(i for i in items if i.kind == "check" and "95% interval" in i.text)
    assert check.ok and "[+" in items[-3].text  # the paired difference is reported
    finding = next(v for text, v in interpretation(results) if "paired difference" in text)
    assert finding == "holds"


def test_an_interval_that_does_not_match_its_number_is_an_error(tmp_path):
    out = _outcomes(100, 10, 10)
    row = StaticRow("fast", "Fast", "linf", 4.0, 0.32, "pool1", 0.0, _det(0.9, 100), outcomes=out)
    results = with_intervals(replace(fake_results(), static=(row,)))
    assert all(not i.error for i in acceptance(results))
    broken = replace(results, static=(replace(results.static[0], detectability=_det(0.95, 100)),))
    check = next(i for i in acceptance(broken) if "95% interval" in i.text and i.kind == "check")
    assert check.error and "Fast 4 detectability" in check.text
    html = render(results).write(tmp_path / "r.html").read_text()
    assert "95% interval" in html and "bootstrap" in html


def test_sigmas_with_too_few_successes_are_listed_but_not_judged():
    results = fake_results()
    rows = (
        SweepRow(0.0, 0.4, 200, _det(0.95, 200), outcomes=_outcomes(200, 0, 20)),
        SweepRow(0.9, 0.9, 1, _det(0.5, 1), outcomes=_outcomes(1, 1, 0)),  # one pair: [0.5, 0.5]
    )
    results = with_intervals(replace(results, dynamic=replace(results.dynamic, dynamic=rows)))
    item = acceptance(results)[3]
    assert item.status == "holds" and "not judged (fewer than 10 successful examples): σ=0.9" in item.text
    assert "σ=0.9: 0.500 [0.500, 0.500] (n=1)" in item.text  # still listed
