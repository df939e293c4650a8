"""`evasion reproduce detector`: 95% paired bootstrap intervals on every cell of the
generalisation matrices (Figs. 3, 4) and of the attachment-depth table, and findings decided on them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from evasion.evaluation.bootstrap import bootstrap
from evasion.evaluation.detectability import (
    Detectability,
    DetectabilityMatrix,
    detectability_from_scores,
    generalisation_matrix,
)
from evasion.experiments import detector as experiment
from evasion.experiments.detector_records import (
    DepthTable,
    DetectorResults,
    matrix_difference,
    with_intervals,
)
from evasion.experiments.detector_report import acceptance, interpretation, render
from evasion.progress import NULL_PROGRESS

from .test_detectability import _offset_detector
from .test_reproduce_detector import fake_results

RESAMPLES = 400  # fewer than a run's 2,000: the same code, a faster test


def _cell(rng: np.random.Generator, n: int, p_clean: float, p_adv: float) -> Detectability:
    """A record on ``n`` pairs: ``round(p_clean * n)`` clean inputs and ``round(p_adv * n)``
    adversarial examples flagged, at random positions."""
    flagged = [rng.permutation(n) < round(p * n) for p in (p_clean, p_adv)]
    clean, adv = (torch.from_numpy(f.astype(float) * 0.8 + 0.1) for f in flagged)
    return detectability_from_scores(clean, adv)


def _matrix(title: str, names: list[str], cells: list[list[Detectability]]) -> DetectabilityMatrix:
    return DetectabilityMatrix(names, names, [[d.accuracy for d in row] for row in cells], title, cells)


def _results(n: int = 150) -> DetectorResults:
    """Fake results whose Fig. 3, Fig. 4 and depth cells keep per-pair flags."""
    rng = np.random.default_rng(1)
    fig3 = _matrix(  # small -> large generalises (upper triangle high), large -> small does not
        "Fast",
        ["1", "3"],
        [
            [_cell(rng, n, 0.05, 0.95), _cell(rng, n, 0.05, 0.97)],
            [_cell(rng, n, 0.05, 0.4), _cell(rng, n, 0.05, 0.98)],
        ],
    )
    names = ["Fast", "Iterative ℓ∞", "Iterative ℓ2"]
    p_adv = [[0.95, 0.5, 0.5], [0.97, 0.98, 0.68], [0.9, 0.64, 0.97]]
    fig4 = _matrix("x", names, [[_cell(rng, n, 0.05, p) for p in row] for row in p_adv])
    details = {"fast": {"pool1": _cell(rng, n, 0.05, 0.9), "pool2": _cell(rng, n, 0.1, 0.8)}}
    depth = DepthTable(
        ("pool1", "pool2"),
        {k: {la: d.accuracy for la, d in row.items()} for k, row in details.items()},
        details,
    )
    settings = replace(experiment.QUICK, resamples=RESAMPLES, seed=3)
    return replace(fake_results(), settings=settings, fig3={"fast": fig3}, fig4=fig4, depth=depth)


def _cells(results: DetectorResults) -> list[tuple[float, Detectability, object]]:
    """(value, record, interval) of every matrix and depth cell."""
    out = []
    for m in [*results.fig3.values(), results.fig4]:
        for i, row in enumerate(m.details):
            out += [(m.values[i][j], d, m.intervals[i][j]) for j, d in enumerate(row)]
    for key, row in results.depth.details.items():
        out += [
            (results.depth.detectability[key][la], d, results.depth.intervals[key][la])
            for la, d in row.items()
        ]
    return out


def test_every_cell_gets_the_bootstrap_of_its_paired_scores():
    results = with_intervals(_results())
    cells = _cells(results)
    assert len(cells) == 4 + 9 + 2
    for value, d, iv in cells:
        scores = d.pair_scores()
        assert scores is not None and len(scores) == 150
        assert float(scores.mean()) == pytest.approx(value)  # the per-pair scores are the cell's value
        assert iv == bootstrap(lambda s: float(np.mean(s)), scores, resamples=RESAMPLES, seed=3)
        assert iv.low <= iv.estimate <= iv.high and iv.estimate == pytest.approx(value)
        assert iv.n == 150 and iv.resamples == RESAMPLES and iv.width > 0
    # the interval check of the acceptance list covers the new cells, and catches a wrong value
    check = next(i for i in acceptance(results) if i.kind == "check" and "95% interval" in i.text)
    assert check.ok
    values = [list(row) for row in results.fig4.values]
    values[1][0] += 0.05
    broken = replace(results, fig4=replace(results.fig4, values=values))
    check = next(i for i in acceptance(broken) if i.kind == "check" and "95% interval" in i.text)
    assert check.error and "Fig. 4 Iterative ℓ∞ -> Fast" in check.text


def test_a_cell_interval_keeps_each_image_paired_with_its_adversarial_example():
    # half the images: clean and adversarial both flagged; the other half: neither. Every pair
    # scores 0.5, so the paired interval has no width; resampling the clean inputs and the
    # adversarial examples independently would give one of about +-0.1 on 100 images
    flags = np.arange(100) < 50
    p = torch.from_numpy(flags.astype(float) * 0.8 + 0.1)
    d = detectability_from_scores(p, p.clone())
    m = _matrix("t", ["a"], [[d]])
    results = with_intervals(replace(_results(), fig4=m))
    iv = results.fig4.intervals[0][0]
    assert iv.low == iv.high == 0.5 == results.fig4.values[0][0]
    rng = np.random.default_rng(0)
    unpaired = [
        0.5 * (1 - flags[rng.integers(0, 100, 100)].mean()) + 0.5 * flags[rng.integers(0, 100, 100)].mean()
        for _ in range(RESAMPLES)
    ]
    low, high = np.quantile(unpaired, [0.025, 0.975])
    assert high - low > 0.1


def test_generalisation_matrix_and_depth_phase_keep_the_per_pair_flags():
    det = _offset_detector()
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    big = x + 0.2
    big[:5] = x[:5]  # five adversarial examples left unchanged: missed
    m = generalisation_matrix({"a": det}, {"big": (x, big), "none": (x, x.clone())})
    scores = m.pair_scores(0, 0)
    assert scores is not None and scores.tolist() == [0.5] * 5 + [1.0] * 15
    assert m.values == [[pytest.approx(17.5 / 20), 0.5]]
    # depth_phase: one record per adversary and layer, its flags kept for the intervals
    s = replace(experiment.QUICK, layers=("pool1", "pool2"))
    adv = next(a for a in experiment.adversaries(s) if a.key == "fast")
    test = experiment.Split(x, torch.zeros(20, dtype=torch.long))
    st = experiment.State(s, det.classifier, {"test": test}, NULL_PROGRESS, {}, {}, {})
    st.adversarial[("fast", 0.24)] = {"test": big}
    st.detectors.update({("fast", 0.24, layer): det for layer in s.layers})
    table = experiment.depth_phase(st, [adv], {"fast": 0.24})
    assert table.detectability == {"fast": {"pool1": 0.875, "pool2": 0.875}}
    flags = table.details["fast"]["pool1"].pair_scores()
    assert flags is not None and flags.tolist() == scores.tolist()


def test_intervals_are_written_beside_the_values_and_survive_a_json_round_trip():
    results = with_intervals(_results())
    data = json.loads(json.dumps(results.to_dict()))
    for fig in [data["fig3"]["fast"], data["fig4"]]:
        values, intervals = fig["values"], fig["intervals"]
        assert [len(r) for r in intervals] == [len(r) for r in values]
        for vrow, irow, orow in zip(values, intervals, fig["outcomes"]):
            for v, iv, out in zip(vrow, irow, orow):
                assert set(iv) == {"estimate", "low", "high", "level", "resamples", "n"}
                # recomputed from the stored per-image outcomes alone: the same interval
                clean = np.array([c == "1" for c in out["clean_flagged"]])
                adv = np.array([c == "1" for c in out["adversarial_flagged"]])
                scores = ((~clean).astype(float) + adv) / 2
                again = bootstrap(lambda s: float(np.mean(s)), scores, resamples=RESAMPLES, seed=3)
                assert again.to_dict() == iv and iv["estimate"] == pytest.approx(v)
    depth = data["depth"]
    assert depth["detectability"] == results.depth.detectability  # the old key unchanged
    assert {k: set(row) for k, row in depth["intervals"].items()} == {"fast": {"pool1", "pool2"}}
    assert len(depth["outcomes"]["fast"]["pool2"]["clean_flagged"]) == 150
    # without per-pair flags (older records) the layout is as before
    plain = fake_results().to_dict()
    assert "intervals" not in plain["fig4"] and "outcomes" not in plain["fig4"]
    assert set(plain["depth"]) == {"layers", "detectability"}


def test_generalisation_findings_are_decided_on_paired_intervals(tmp_path):
    results = with_intervals(_results())
    findings = dict(interpretation(results))
    fig3 = next(t for t in findings if t.startswith("Fast: trained on a small epsilon"))
    assert "paired difference +" in fig3 and findings[fig3] == "holds"
    m = results.fig3["fast"]
    diff = matrix_difference(m, [(0, 1)], [(1, 0)], resamples=RESAMPLES, seed=3)
    assert (
        diff is not None and diff.estimate == pytest.approx(m.values[0][1] - m.values[1][0]) and diff.low > 0
    )
    assert f"[{diff.low:+.3f}, {diff.high:+.3f}]" in fig3
    it_fast = next(t for t in findings if t.startswith("Iterative -> Fast"))
    assert findings[it_fast] == "holds" and "paired difference" in it_fast
    # ℓ∞ <-> ℓ2 at 0.813 and 0.793 on 150 images: both intervals straddle 0.8
    between = next(t for t in findings if t.startswith("Detectors generalise between"))
    ivs = [results.fig4.intervals[1][2], results.fig4.intervals[2][1]]
    assert all(iv.low < 0.8 < iv.high for iv in ivs) and findings[between] == "inconclusive"
    assert all(f"[{iv.low:.3f}, {iv.high:.3f}]" in between for iv in ivs)
    # without intervals (no per-pair flags) the same comparisons fall back on the point estimates
    plain = dict(interpretation(fake_results()))
    assert "paired difference" not in next(t for t in plain if t.startswith("Fast: trained on"))
    html = render(results).write(tmp_path / "r.html").read_text()
    iv = results.fig4.intervals[1][0]
    assert f"{results.fig4.values[1][0]:.3f} [{iv.low:.3f}, {iv.high:.3f}]" in html
    iv = results.fig3["fast"].intervals[1][0]
    assert f"{results.fig3['fast'].values[1][0]:.3f} [{iv.low:.3f}, {iv.high:.3f}]" in html
    iv = results.depth.intervals["fast"]["pool2"]
    assert f"{results.depth.detectability['fast']['pool2']:.3f} [{iv.low:.3f}, {iv.high:.3f}]" in html
    assert "Fig. 4: trained on (rows) x tested on (columns)" in html
