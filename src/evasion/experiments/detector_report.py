"""The HTML report of `evasion reproduce detector`, and the checks of the issue's acceptance criteria.

Everything is drawn from the :class:`~evasion.experiments.detector_records.DetectorResults` of
:func:`evasion.experiments.detector.reproduce`. The interpretation is generated: each of the
paper's findings is stated with the numbers of this run and whether it holds here. Rendering
returns a :class:`~evasion.reports.html.Page`; the CLI writes it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluation.bootstrap import Interval, Verdict, verdict
from ..evaluation.detectability import DetectabilityMatrix
from ..models.architectures.resnet_cifar import ATTACHMENT_POINTS
from ..reports.html import GridCell, Page
from ..reports.plots import figure, heatmap, pyplot, to_svg
from .detector_records import (
    AcceptanceItem,
    CurveSummary,
    DetectorResults,
    Example,
    Settings,
    StaticRow,
    SweepRow,
    matrix_difference,
)

__all__ = ["acceptance", "interpretation", "render", "worst_sigma"]
_COLOURS = {
    "fast": "#1f77b4",
    "bim-linf": "#d62728",
    "bim-l2": "#ff7f0e",
    "deepfool-l2": "#2ca02c",
    "deepfool-linf": "#9467bd",
}


def _det(row: StaticRow | SweepRow) -> float:
    assert row.detectability is not None
    return float(row.detectability.accuracy)


def _interval(row: StaticRow | SweepRow) -> Interval:
    """The row's 95% detectability interval; without per-image outcomes, the estimate alone."""
    if row.interval is not None:
        return row.interval
    d = _det(row)
    return Interval(d, d, d)


def _ci(iv: Interval | None) -> str:
    """`` [low, high]`` of an interval, or nothing where none was measured."""
    return "" if iv is None or iv.n == 0 else f" [{iv.low:.3f}, {iv.high:.3f}]"


def _combined(verdicts: Sequence[Verdict]) -> Verdict:
    """A finding over several settings: holds if it holds in each, fails if it fails in any."""
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


def _decided(named: Sequence[tuple[str, Interval]], bound: float, result: Verdict) -> str:
    """The numbers that decided ``result`` for "every value > ``bound``": the lowest lower bound
    (holds), the intervals wholly below the bound (does not hold), or those straddling it."""
    if result == "holds":
        lowest = min(iv.low for _, iv in named)
        return f"every 95% interval above {bound:g}, lowest lower bound {lowest:.3f}"
    if result == "does not hold":
        below = [f"{name} [{iv.low:.3f}, {iv.high:.3f}]" for name, iv in named if iv.high < bound]
        return f"95% interval wholly below {bound:g}: " + ", ".join(below)
    straddle = [f"{name} [{iv.low:.3f}, {iv.high:.3f}]" for name, iv in named if iv.low <= bound <= iv.high]
    return f"95% interval straddles {bound:g}: " + ", ".join(straddle)


def _sweep_points(rows: Sequence[SweepRow]) -> list[tuple[float, float, float, int]]:
    """(sigma, classifier accuracy, detectability, successes) where some attack succeeded."""
    return [(r.sigma, r.classifier_accuracy, _det(r), r.n_successful) for r in rows if r.detectability]


def worst_sigma(rows: Sequence[SweepRow]) -> tuple[float, float, int]:
    """The sigma with the lowest detectability of successful examples: (sigma, detectability, n)."""
    points = _sweep_points(rows)
    if not points:
        return math.nan, math.nan, 0
    s, _, d, n = min(points, key=lambda p: p[2])
    return s, d, n


FINDING = "Metzen et al.'s finding (dynamic adversary training keeps detectability > 70% for every sigma)"


#: sigmas with fewer successful examples are listed but not judged: a bootstrap interval over one
#: or a few pairs has no coverage to speak of (one pair gives [0.5, 0.5] or [1, 1])
MIN_PAIRS = 10


def _finding(rows: Sequence[SweepRow], bound: float = 0.7) -> tuple[Verdict, str]:
    """Whether detectability stays above ``bound`` at every sigma with at least
    :data:`MIN_PAIRS` successes, decided on the 95% intervals (holds: every lower bound above it;
    does not hold: some upper bound below it), and the wording of it with the numbers that decided it."""
    kept = [r for r in rows if r.detectability is not None]
    judged = [r for r in kept if r.n_successful >= MIN_PAIRS]
    listed = ", ".join(f"σ={r.sigma:g}: {_det(r):.3f}{_ci(r.interval)} (n={r.n_successful})" for r in kept)
    if not judged:
        why = (
            "no successful examples"
            if not kept
            else f"fewer than {MIN_PAIRS} successful examples at every sigma"
        )
        return "inconclusive", f"finding inconclusive ({why}): {listed or 'none'}"
    result = _combined([verdict(_interval(r), bound) for r in judged])
    low = min(judged, key=_det)
    decided = _decided([(f"σ={r.sigma:g}", _interval(r)) for r in judged], bound, result)
    skipped = [f"σ={r.sigma:g}" for r in kept if r.n_successful < MIN_PAIRS]
    if skipped:
        decided += f"; not judged (fewer than {MIN_PAIRS} successful examples): {', '.join(skipped)}"
    return result, (
        f"finding {result} (lowest detectability {_det(low):.3f}{_ci(low.interval)} at σ={low.sigma:g}; "
        f"{decided}): {listed}"
    )


def _evasion(rows: Sequence[SweepRow]) -> str:
    """The highest fraction of inputs that evade the whole system, and its sigma."""
    rates = [r for r in rows if r.evasion_rate is not None]
    if not rates:
        return "evasion rate not measured"
    top = max(rates, key=lambda r: (r.evasion_rate or 0.0, r.sigma))
    iv = top.evasion_interval
    band = "" if iv is None else f" [{iv.low:.1%}, {iv.high:.1%}]"
    return f"up to {top.evasion_rate:.1%}{band} of the test inputs evade the whole system (σ={top.sigma:g})"


def acceptance(results: DetectorResults) -> list[AcceptanceItem]:
    """The issue's acceptance criteria, each with its numbers and whether it is met.

    Order: static < 10%, static < 30%, worst sigma (info), the paper's dynamic-training finding
    under the paper's protocol (a ``finding``), the same finding under the threshold-aware
    adversary at the deployed threshold (a ``finding``, where measured), clean accuracy (info),
    security curves (info), the range check of every measured fraction (a ``check``). A finding
    that does not hold is a result, not a failed criterion; only a failed check is an error.
    """
    items: list[AcceptanceItem] = []
    for limit, need in ((0.10, 0.9), (0.30, 0.8)):
        rows = [r for r in results.static if r.classifier_accuracy < limit]
        listed = ", ".join(
            f"{r.label} {r.units:g}: {_det(r):.3f}{_ci(r.interval)} (acc {r.classifier_accuracy:.3f})"
            for r in rows
        )
        text = f"static detectability >= {need} for every adversary with classifier accuracy < {limit:.0%}"
        result = _combined([verdict(_interval(r), need) for r in rows])
        decided = (
            _decided([(f"{r.label} {r.units:g}", _interval(r)) for r in rows], need, result) if rows else ""
        )
        text = f"{text} ({len(rows)} settings; {result}: {decided}): {listed}"
        items.append(AcceptanceItem(result == "holds", "static", text, result))
    dyn = results.dynamic
    s, d, n = worst_sigma(dyn.static)
    worst = next((r for r in dyn.static if r.sigma == s and r.detectability is not None), None)
    band = _ci(worst.interval) if worst is not None else ""
    text = f"dynamic adversary vs. static detector: lowest detectability {d:.3f}{band} at sigma {s:g} ({n} successful examples)"
    items.append(AcceptanceItem(True, "info", text))
    result, text = _finding(dyn.dynamic)
    text = f"{FINDING}, paper protocol (CE dynamic adversary, detectability at p_adv > 0.5): {text}"
    items.append(AcceptanceItem(result == "holds", "finding", text, result))
    if "dynamic" in dyn.aware:
        sweep = dyn.aware["dynamic"]
        result, text = _finding(sweep.rows)
        text = (
            f"{FINDING}, threshold-aware adversary at the deployed threshold (hinge objective, p_adv > "
            f"{sweep.threshold:.4g}, {dyn.aware_fpr:.0%} validation FPR): {text}; {_evasion(sweep.rows)}"
        )
        if "static" in dyn.aware:
            static = dyn.aware["static"]
            kept = [r for r in static.rows if r.detectability is not None]
            lowest = min(kept, key=_det) if kept else None
            shown = "n/a" if lowest is None else f"{_det(lowest):.3f}{_ci(lowest.interval)}"
            text += (
                f" (static detector at p_adv > {static.threshold:.4g}: lowest detectability {shown}; "
                f"{_evasion(static.rows)})"
            )
        items.append(AcceptanceItem(result == "holds", "finding", text, result))
    c = dyn.combined_clean["dynamic"]
    half, fpr = c["threshold_0.5"], c["fpr_0.05"]
    text = (
        f"clean accuracy of classifier + dynamic detector: {half.accuracy:.3f} at p_adv > 0.5 ({half.rejected:.1%} "
        f"rejected), {fpr.accuracy:.3f} at 5% validation FPR; classifier alone {results.clean_accuracy:.3f}"
    )
    items.append(AcceptanceItem(True, "info", text))
    curves = {m: c["worst case"] for m, c in results.curves.models.items()}
    aucs = "; ".join(
        f"{m} {w.auc:.3f}{_ci(w.auc_interval)} / {w.auc_defended:.3f}{_ci(w.auc_defended_interval)}"
        for m, w in curves.items()
    )
    text = f"security curves, worst case over all attacks, AUC of accuracy / of accuracy + rejected (95% intervals): {aucs}"
    diffs = results.curves.differences
    if diffs:
        text += "; paired differences of AUC(accuracy + rejected): " + "; ".join(
            f"{k} {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]" for k, iv in diffs.items()
        )
    items.append(AcceptanceItem(True, "info", text))
    items.append(_interval_check(results))
    items.append(_range_check(results))
    return items


def _interval_check(results: DetectorResults) -> AcceptanceItem:
    """A check of this code: each interval's estimate (recomputed from the stored per-image
    outcomes) equals the number reported, and lies inside its interval."""
    pairs: list[tuple[str, float, Interval | None]] = []
    for r in results.static:
        pairs.append((f"{r.label} {r.units:g} detectability", _det(r), r.interval))
        pairs.append((f"{r.label} {r.units:g} accuracy", r.classifier_accuracy, r.accuracy_interval))
    dyn = results.dynamic
    sweeps = [("static", dyn.static), ("dynamic", dyn.dynamic)] + [
        (f"{k} (threshold-aware)", a.rows) for k, a in dyn.aware.items()
    ]
    for name, rows in sweeps:
        for sr in rows:
            if sr.detectability is not None:
                pairs.append((f"{name} σ={sr.sigma:g} detectability", _det(sr), sr.interval))
            if sr.evasion_rate is not None:
                pairs.append((f"{name} σ={sr.sigma:g} evasion", sr.evasion_rate, sr.evasion_interval))
    matrices = [(f"Fig. 3 {k}", mat) for k, mat in results.fig3.items()] + [("Fig. 4", results.fig4)]
    for name, mat in matrices:
        for i, cells in enumerate(mat.intervals):
            pairs += [
                (f"{name} {mat.rows[i]} -> {mat.columns[j]}", mat.values[i][j], iv)
                for j, iv in enumerate(cells)
            ]
    depth = results.depth
    for key, by_layer in depth.intervals.items():
        pairs += [
            (f"depth {key} {layer}", depth.detectability[key][layer], iv) for layer, iv in by_layer.items()
        ]
    for m, cs in results.curves.models.items():
        for a, c in cs.items():
            pairs.append((f"{m} / {a} AUC", c.auc, c.auc_interval))
            pairs.append((f"{m} / {a} AUC accuracy + rejected", c.auc_defended, c.auc_defended_interval))
            pairs += [(f"{m} / {a} accuracy", v, iv) for v, iv in zip(c.accuracy, c.accuracy_band)]
    measured = [(name, v, iv) for name, v, iv in pairs if iv is not None]
    bad = [
        f"{name}: {v:.4f} vs. {iv}"
        for name, v, iv in measured
        if abs(iv.estimate - v) > 1e-6 or not iv.low - 1e-9 <= iv.estimate <= iv.high + 1e-9
    ]
    text = (
        f"every 95% interval ({len(measured)}) is centred on the number it qualifies "
        "(recomputed from the stored per-image outcomes)"
    )
    return AcceptanceItem(not bad, "check", text + (f"; mismatched: {', '.join(bad[:3])}" if bad else ""))


def _range_check(results: DetectorResults) -> AcceptanceItem:
    """A check of this code: every accuracy and detectability measured is a fraction in [0, 1].

    NaN or a value out of range means a broken metric or an empty test set, never a result."""
    values = [("clean accuracy", results.clean_accuracy)]
    for r in results.static:
        values += [
            (f"{r.label} {r.units:g} accuracy", r.classifier_accuracy),
            (f"{r.label} {r.units:g} detectability", _det(r)),
        ]
    bad = [f"{name} = {value!r}" for name, value in values if not 0.0 <= float(value) <= 1.0]
    text = f"every accuracy and detectability measured lies in [0, 1] ({len(values)} values)"
    return AcceptanceItem(not bad, "check", text + (f"; out of range: {', '.join(bad[:5])}" if bad else ""))


def _upper_lower(values: list[list[float]]) -> tuple[float, float]:
    """Mean of the entries above (fit < test) and below (fit > test) the diagonal."""
    v = np.asarray(values)
    iu, il = np.triu_indices(len(v), 1), np.tril_indices(len(v), -1)
    return float(v[iu].mean()), float(v[il].mean())


#: a finding restated with this run's numbers, and its verdict (None: reported, not judged)
Finding = tuple[str, Verdict | None]


def _judged(ok: bool) -> Verdict:
    """A verdict decided on point estimates (comparisons of two numbers with no interval)."""
    return "holds" if ok else "does not hold"


def _rows_of(results: DetectorResults, key: str) -> list[StaticRow]:
    """The static rows of one adversary, by increasing epsilon."""
    return sorted((r for r in results.static if r.adversary == key), key=lambda r: r.epsilon)


def _static_findings(results: DetectorResults) -> list[Finding]:
    acc = acceptance(results)
    both = _combined([acc[0].verdict or _judged(acc[0].ok), acc[1].verdict or _judged(acc[1].ok)])
    out: list[Finding] = [
        (f"Static adversaries are detected well (paper: > 80% below 30% accuracy, > 90% below 10%): "
         f"{acc[0].text}; {acc[1].text}.", both)
    ]  # fmt: skip
    mono = []
    for key in sorted({r.adversary for r in results.static}):
        rows = _rows_of(results, key)
        dets = [_det(r) for r in rows]
        if len(dets) > 1:
            mono.append(all(b >= a - 0.01 for a, b in itertools.pairwise(dets)))
    if mono:
        text = f"Larger epsilon, higher detectability: non-decreasing for {sum(mono)} of {len(mono)} adversaries."
        out.append((text, _judged(all(mono))))
    depth, ivs = results.depth.detectability, results.depth.intervals
    best_of = {k: max(row, key=lambda layer: row[layer]) for k, row in depth.items()}
    best = ", ".join(
        f"{k}: {layer} {depth[k][layer]:.3f}{_ci(ivs.get(k, {}).get(layer))}" for k, layer in best_of.items()
    )
    out.append(
        (
            f"Best attachment layer: {best} (paper: a middle layer for Fast/Iterative, the deepest for DeepFool).",
            None,
        )
    )
    return out


def _paired(diff: Interval | None) -> str:
    """``; paired difference +d [low, high]`` of an interval, or nothing where none was measured."""
    if diff is None:
        return ""
    return f"; paired difference {diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] (95%, same test images)"


def _cell(m: DetectabilityMatrix, i: int, j: int) -> Interval | None:
    return m.intervals[i][j] if m.intervals else None


def _generalisation_findings(results: DetectorResults) -> list[Finding]:
    """Figs. 3 and 4, each comparison decided on the paired interval of its difference (an
    image carries its score in every cell) and each bound on the cells' intervals; on point
    estimates only where no per-image outcomes were kept."""
    out: list[Finding] = []
    n, seed = results.settings.resamples, results.settings.seed
    for m in results.fig3.values():
        up, lo = _upper_lower(m.values)
        k = len(m.rows)
        upper = [(i, j) for i in range(k) for j in range(k) if i < j]
        lower = [(i, j) for i in range(k) for j in range(k) if i > j]
        diff = matrix_difference(m, upper, lower, resamples=n, seed=seed)
        text = (
            f"{m.title}: trained on a small epsilon, tested on larger ones {up:.3f}; large to small {lo:.3f}"
            f"{_paired(diff)}."
        )
        result = verdict(diff, 0.0) if diff is not None else _judged(up >= lo)
        out.append((text + " (paper: small -> large generalises, not the reverse)", result))
    f4 = results.fig4
    idx, v = {name: i for i, name in enumerate(f4.rows)}, f4.values
    if {"Fast", "Iterative ℓ∞", "Iterative ℓ2"} <= set(idx):
        fast, it, l2 = idx["Fast"], idx["Iterative ℓ∞"], idx["Iterative ℓ2"]
        diff = matrix_difference(f4, [(it, fast)], [(fast, it)], resamples=n, seed=seed)
        text = (
            f"Iterative -> Fast generalises ({v[it][fast]:.3f}{_ci(_cell(f4, it, fast))}) better than "
            f"Fast -> Iterative ({v[fast][it]:.3f}{_ci(_cell(f4, fast, it))}){_paired(diff)}."
        )
        out.append((text, verdict(diff, 0.0) if diff is not None else _judged(v[it][fast] >= v[fast][it])))
        cells = [(it, l2), (l2, it)]
        ivs = [_cell(f4, i, j) for i, j in cells]
        shown = ", ".join(f"{v[i][j]:.3f}{_ci(iv)}" for (i, j), iv in zip(cells, ivs))
        text = (
            f"Detectors generalise between the ℓ∞ and ℓ2 iterative adversaries ({shown}; judged against 0.8)."
        )
        judged = [verdict(iv, 0.8) for iv in ivs if iv is not None]
        result = _combined(judged) if len(judged) == 2 else _judged(min(v[it][l2], v[l2][it]) >= 0.8)
        out.append((text, result))
    return out


def _dynamic_findings(results: DetectorResults) -> list[Finding]:
    s, d, n = worst_sigma(results.dynamic.static)
    worst = next((r for r in results.dynamic.static if r.sigma == s and r.detectability is not None), None)
    fooled: Verdict = verdict(_interval(worst), 0.6, above=False) if worst is not None else "inconclusive"
    band = _ci(worst.interval) if worst is not None else ""
    text = f"The dynamic adversary fools the static detector: lowest detectability {d:.3f}{band} at sigma {s:g} ({n} successful examples; paper: near chance at sigma 0.3-0.4; judged against 0.6)."
    out: list[Finding] = [(text, fooled)]
    items = acceptance(results)
    out.append((items[3].text + ".", items[3].verdict or _judged(items[3].ok)))
    aware = [i for i in items[4:] if i.kind == "finding"]
    out += [
        (i.text + ". The deployed system faces this attacker, not the paper's.", i.verdict or _judged(i.ok))
        for i in aware
    ]
    curves = results.curves.models
    if {"dynamic detector", "undefended"} <= set(curves):
        u, dd = (curves[m]["worst case"] for m in ("undefended", "dynamic detector"))
        diff = results.curves.differences.get("dynamic detector - undefended")
        paired = (
            ""
            if diff is None
            else f"; paired difference {diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
        )
        text = (
            "Under the worst case of all attacks (adaptive ones included) the dynamic detector keeps more inputs "
            f"defended (correct or rejected; AUC {dd.auc_defended:.3f}{_ci(dd.auc_defended_interval)}) than the "
            f"undefended classifier ({u.auc_defended:.3f}{_ci(u.auc_defended_interval)}{paired})."
        )
        out.append(
            (text, verdict(diff, 0.0) if diff is not None else _judged(dd.auc_defended > u.auc_defended))
        )
    return out


def interpretation(results: DetectorResults) -> list[Finding]:
    """The paper's findings, each restated with this run's numbers and whether it holds here."""
    return _static_findings(results) + _generalisation_findings(results) + _dynamic_findings(results)


# -- figures ---------------------------------------------------------------------------------
def _band(ax: Any, xs: Sequence[float], intervals: Sequence[Interval | None], colour: str | None) -> None:
    """Shade the 95% interval of a curve (points without an interval are left out)."""
    pts = [(x, iv.low, iv.high) for x, iv in zip(xs, intervals) if iv is not None and iv.n > 0]
    if pts:
        ax.fill_between([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], color=colour,
                        alpha=0.18, linewidth=0)  # fmt: skip


def _yerr(rows: Sequence[StaticRow | SweepRow]) -> list[list[float]] | None:
    """Asymmetric error bars (below, above) of the rows' detectability intervals."""
    ivs = [_interval(r) for r in rows]
    if all(iv.n == 0 for iv in ivs):
        return None
    return [[max(0.0, iv.estimate - iv.low) for iv in ivs], [max(0.0, iv.high - iv.estimate) for iv in ivs]]


def _fig_static(results: DetectorResults) -> str:
    fig, ax = figure(6.0, 4.0)
    for key in dict.fromkeys(r.adversary for r in results.static):
        rows = _rows_of(results, key)
        xs, ys = [r.classifier_accuracy for r in rows], [_det(r) for r in rows]
        ax.errorbar(
            xs, ys, yerr=_yerr(rows), fmt="o-", color=_COLOURS.get(key), label=rows[0].label, capsize=2
        )
        for r, x, y in zip(rows, xs, ys):
            if math.isfinite(r.units):
                ax.annotate(f"{r.units:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.plot([results.clean_accuracy], [0.5], "ks", label="No (unchanged input)")
    ax.set_xlabel("classifier accuracy on adversarial examples")
    ax.set_ylabel("detectability (95% interval)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0.45, 1.02)
    ax.legend(fontsize=8, loc="best")
    return to_svg(fig)


def _fig_depth(results: DetectorResults) -> str:
    depth = results.depth
    fig, ax = figure(6.0, 3.6)
    for key, row in depth.detectability.items():
        ys = [row[layer] for layer in depth.layers]
        ivs = depth.intervals.get(key, {})
        yerr = None
        if all(layer in ivs for layer in depth.layers):
            yerr = [
                [max(0.0, y - ivs[layer].low) for y, layer in zip(ys, depth.layers)],
                [max(0.0, ivs[layer].high - y) for y, layer in zip(ys, depth.layers)],
            ]
        ax.errorbar(
            list(depth.layers), ys, yerr=yerr, fmt="o-", color=_COLOURS.get(key), label=key, capsize=2
        )
    ax.set_xlabel("attachment layer (shallow -> deep)")
    ax.set_ylabel("detectability (95% interval)" if depth.intervals else "detectability")
    ax.set_ylim(0.45, 1.02)
    ax.legend(fontsize=8)
    return to_svg(fig)


def _heat(ax: Any, m: DetectabilityMatrix, xlabel: str, ylabel: str) -> None:
    heatmap(ax, m.values, m.rows, m.columns, xlabel=xlabel, ylabel=ylabel, title=m.title, vmin=0.5)


def _fig_fig3(results: DetectorResults) -> str:
    mats = list(results.fig3.values())
    plt = pyplot()
    fig, axes = plt.subplots(1, len(mats), figsize=(3.2 * len(mats), 3.0), dpi=100, squeeze=False)
    for ax, m in zip(axes[0], mats):
        _heat(ax, m, "epsilon_test (paper units)", "epsilon_fit")
    fig.tight_layout()
    return to_svg(fig)


def _fig_fig4(results: DetectorResults) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 4.2), dpi=100)
    _heat(ax, results.fig4, "tested on", "trained on")
    fig.tight_layout()
    return to_svg(fig)


def _fig_dynamic(results: DetectorResults) -> str:
    fig, ax = figure(6.0, 4.0)
    for name, rows, colour in (
        ("static", results.dynamic.static, "#d62728"),
        ("dynamic", results.dynamic.dynamic, "#1f77b4"),
    ):
        pts = _sweep_points(rows)
        kept = [r for r in rows if r.detectability]
        ax.errorbar([p[1] for p in pts], [p[2] for p in pts], yerr=_yerr(kept), fmt="o-", color=colour,
                    label=f"{name} detector", capsize=2)  # fmt: skip
        for s, x, y, _ in pts:
            ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("classifier accuracy on dynamic adversarial examples")
    ax.set_ylabel("detectability (successful examples)")
    ax.set_ylim(0.4, 1.02)
    ax.legend(fontsize=8)
    return to_svg(fig)


def _fig_aware(results: DetectorResults) -> str:
    """Detectability (paper protocol vs. threshold-aware) and evasion rate over sigma."""
    dyn = results.dynamic
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=100)
    for name, colour in (("static", "#d62728"), ("dynamic", "#1f77b4")):
        rows = dyn.static if name == "static" else dyn.dynamic
        paper = _sweep_points(rows)
        left.plot([p[0] for p in paper], [p[2] for p in paper], "o--", color=colour, alpha=0.6,
                  label=f"{name} detector, paper protocol (0.5)")  # fmt: skip
        measured = [r for r in rows if r.detectability]
        _band(left, [r.sigma for r in measured], [r.interval for r in measured], colour)
        if name not in dyn.aware:
            continue
        sweep = dyn.aware[name]
        aware = _sweep_points(sweep.rows)
        left.plot([p[0] for p in aware], [p[2] for p in aware], "s-", color=colour,
                  label=f"{name} detector, threshold-aware ({sweep.threshold:.3g})")  # fmt: skip
        kept = [r for r in sweep.rows if r.detectability]
        _band(left, [r.sigma for r in kept], [r.interval for r in kept], colour)
        rated = [r for r in sweep.rows if r.evasion_rate is not None]
        right.plot([r.sigma for r in rated], [r.evasion_rate for r in rated], "s-", color=colour,
                   label=f"{name} detector")  # fmt: skip
        _band(right, [r.sigma for r in rated], [r.evasion_interval for r in rated], colour)
    left.axhline(0.7, color="grey", lw=0.8, ls="--")
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.set_xlabel("sigma (bands: 95% intervals over test images)")
    left.set_ylabel("detectability (successful examples)")
    left.set_ylim(0.4, 1.02)
    left.legend(fontsize=7)
    right.set_xlabel("sigma")
    right.set_ylabel("evading the whole system (fraction of inputs)")
    right.set_ylim(0.0, 1.0)
    right.legend(fontsize=7)
    fig.tight_layout()
    return to_svg(fig)


def _fig_curves(results: DetectorResults, attack: str) -> str:
    """One panel per system: correct / rejected / misclassified fractions stacked over epsilon."""
    systems = results.curves.models
    units = list(results.curves.units)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(systems), figsize=(3.3 * len(systems), 2.9), dpi=100, squeeze=False)
    for ax, (model, curves) in zip(axes[0], systems.items()):
        c = curves[attack]
        wrong = [max(0.0, 1.0 - a - r) for a, r in zip(c.accuracy, c.rejected)]
        ax.stackplot(
            units,
            c.accuracy,
            c.rejected,
            wrong,
            colors=("#2ca02c", "#ff7f0e", "#d62728"),
            labels=("correct", "rejected", "misclassified"),
            alpha=0.85,
        )
        _curve_bands(ax, units, c)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("L∞ epsilon (paper units)", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_xlim(units[0], units[-1])
    axes[0][0].set_ylabel("fraction of test inputs", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(attack, fontsize=10)
    fig.tight_layout()
    return to_svg(fig)


def _curve_bands(ax: Any, units: Sequence[float], c: CurveSummary) -> None:
    """95% bands of the two stack boundaries: accuracy, and accuracy + rejected."""
    _band(ax, units, list(c.accuracy_band), "black")
    _band(ax, units, list(c.unbroken_band), "black")


# -- page ------------------------------------------------------------------------------------
def _with_ci(value: float, iv: Interval | None) -> str:
    """``0.973 [0.961, 0.984]``, or the value alone where no interval was measured."""
    return f"{value:.3f}{_ci(iv)}"


def _matrix_table(page: Page, m: DetectabilityMatrix, corner: str) -> None:
    """The matrix's cells with their 95% intervals (rows: trained on; columns: tested on)."""
    rows = [
        [name, *(_with_ci(val, _cell(m, i, j)) for j, val in enumerate(m.values[i]))]
        for i, name in enumerate(m.rows)
    ]
    page.table([corner, *m.columns], rows)


def _depth_table(page: Page, results: DetectorResults) -> None:
    depth = results.depth
    rows = [
        [key, *(_with_ci(row[layer], depth.intervals.get(key, {}).get(layer)) for layer in depth.layers)]
        for key, row in depth.detectability.items()
    ]
    page.table(["adversary", *depth.layers], rows)


def _generalisation(page: Page, results: DetectorResults) -> None:
    page.section("Generalisation across epsilon (Fig. 3) and across adversaries (Fig. 4)", "generalisation")
    cells = "Cells: detectability [95% interval over the test images]."
    if results.fig3:
        page.svg(_fig_fig3(results), "Trained at epsilon_fit (rows), tested at epsilon_test (columns).")
        for m in results.fig3.values():
            page.heading(f"Fig. 3, {m.title}: epsilon_fit (rows) x epsilon_test (columns)")
            page.paragraph(cells)
            _matrix_table(page, m, "epsilon_fit")
    page.svg(_fig_fig4(results), "Trained on one adversary (rows), tested on another (columns), at epsilon*.")
    page.heading("Fig. 4: trained on (rows) x tested on (columns), at epsilon*")
    page.paragraph(cells)
    _matrix_table(page, results.fig4, "trained on")


def _static_table(page: Page, results: DetectorResults) -> None:
    rows = [
        [
            r.label,
            "unbounded" if not math.isfinite(r.units) else f"{r.units:g}",
            "min-norm" if not math.isfinite(r.epsilon) else f"{r.epsilon:.3f}",
            r.layer,
            r.classifier_accuracy,
            _det(r),
            _ci(r.interval).strip() or "n/a",
            r.detectability.roc_auc,
            r.detectability.tpr_at_fpr,
        ]
        for r in results.static
    ]
    page.table(
        [
            "adversary",
            "eps (paper units)",
            "eps (pixels in [0, 1])",
            "layer",
            "classifier acc.",
            "detectability",
            "95% interval",
            "ROC AUC",
            "TPR @ 5% FPR",
        ],
        rows,
    )


def _dynamic_table(page: Page, results: DetectorResults) -> None:
    dyn = results.dynamic
    rows = []
    for a, b in zip(dyn.static, dyn.dynamic):
        cells: list[object] = [f"{a.sigma:g}"]
        for r in (a, b):
            cells += [r.classifier_accuracy, r.n_successful, _det(r) if r.detectability else "n/a"]
            cells.append(_ci(r.interval).strip() or "n/a")
        rows.append(cells)
    page.table(
        [
            "sigma",
            "static: clf acc.",
            "successes",
            "detectability",
            "95% interval",
            "dynamic: clf acc.",
            "successes",
            "detectability",
            "95% interval",
        ],
        rows,
    )


def _aware_section(page: Page, results: DetectorResults) -> None:
    dyn = results.dynamic
    if not dyn.aware:
        return
    page.section("Threshold-aware adversary at the deployed threshold (beside Fig. 5)", "dynamic-aware")
    thresholds = ", ".join(f"{name} detector p_adv > {a.threshold:.4g}" for name, a in dyn.aware.items())
    page.paragraph(
        f"The deployed system rejects at the threshold that flags {dyn.aware_fpr:.0%} of clean validation "
        f"inputs ({thresholds}), not at the paper's 0.5. The threshold-aware dynamic adversary knows it: its "
        f"objective (1 - sigma) min(margin, kappa) + sigma min(logit(threshold) - logit(p_adv), kappa), kappa = "
        f"{dyn.aware_kappa:g}, aims just below the deployed threshold; same epsilon, step and iterations as the "
        "paper's sweep, keeping per input the best evasion of the whole system. Detectability is scored at the "
        "deployed threshold on the examples that fool the classifier (inputs it classifies correctly); the "
        "evasion rate is the fraction of all swept test inputs misclassified and not rejected."
    )
    page.svg(
        _fig_aware(results),
        "Left: detectability per sigma, paper protocol (dashed, threshold 0.5, CE adversary) and "
        "threshold-aware adversary at the deployed threshold (solid); 0.7 is the paper's bound. Right: inputs "
        "that evade the whole system.",
    )
    header, rows = ["sigma"], []
    for name in dyn.aware:
        header += [
            f"{name}: clf acc.",
            "fooled",
            "detectability",
            "95% interval",
            "evasion rate",
            "95% interval",
        ]
    for i, sigma in enumerate(dyn.aware[next(iter(dyn.aware))].rows):
        cells: list[object] = [f"{sigma.sigma:g}"]
        for sweep in dyn.aware.values():
            r = sweep.rows[i]
            rate = r.evasion_rate if r.evasion_rate is not None else "n/a"
            cells += [r.classifier_accuracy, r.n_successful, _det(r) if r.detectability else "n/a"]
            cells += [_ci(r.interval).strip() or "n/a", rate, _ci(r.evasion_interval).strip() or "n/a"]
        rows.append(cells)
    page.table(header, rows)


def _examples(page: Page, examples: Sequence[Example]) -> None:
    grid = []
    for ex in examples:
        for c, a in zip(ex.clean[:2], ex.adversarial[:2]):
            delta = a - c
            scale = float(delta.abs().max()) or 1.0
            grid.append(
                [
                    GridCell(c, ["clean"]),
                    GridCell(a, [ex.label]),
                    GridCell(0.5 + 0.5 * delta / scale, ["perturbation (scaled)"]),
                ]
            )
    page.image_grid(grid, ["clean", "adversarial", "perturbation"], cell_width=96)


def _deepfool_layers(results: DetectorResults) -> str:
    """DeepFool's attachment layer(s), with the validation detectability they were chosen by."""
    chosen = sorted({r.layer for r in results.static if r.adversary.startswith("deepfool")})
    sel = results.layer_selection
    if not sel:
        return ", ".join(chosen) or results.settings.deepfool_layer
    scores = "; ".join(
        f"{key}: " + ", ".join(f"{layer} {v:.3f}" for layer, v in row.items()) for key, row in sel.items()
    )
    return f"{', '.join(chosen)}, chosen by validation detectability ({scores})"


def _classifier(results: DetectorResults) -> str:
    """The classifier's name and where it came from (trained here on how many images, or loaded)."""
    info = results.classifier
    if not info:
        return "mnist-cnn"
    name = str(info.get("name", "the classifier"))
    if "trained_on" in info:
        how = (
            f"trained here on {info['trained_on']} CIFAR-10 training images for {info['epochs']} epochs (Adam, lr "
            f"{info['lr']:g}, cosine schedule, 4-pixel shifts; paper: SGD for 100 epochs, 91.3% test accuracy)"
        )
        return f"{name}, {how}, saved as {info.get('weights')}"
    return f"{name}, loaded from {info.get('weights')}"


def _units(s: Settings) -> str:
    if s.dataset != "mnist5k":
        return (
            f"Epsilons in the paper's own units: 1 = 1/255 (pixels in [0, 1]) in L∞ and L2, on {s.dataset}'s "
            f"{s.input_dims} dimensions as in the paper. Attachment points: AD(0)-AD(4) = "
            + ", ".join(f"{k} {v}" for k, v in ATTACHMENT_POINTS.items())
            + "."
        )
    return (
        f"Epsilons: one paper unit ([0, 255] on CIFAR) = {s.linf_unit:g} in L∞ and {s.l2_unit:.4f} in L2 on "
        "MNIST (same per-pixel size on 784 instead of 3072 dimensions); MNIST needs larger perturbations than CIFAR."
    )


def _setup(results: DetectorResults) -> list[str]:
    s = results.settings
    w = s.width
    return [
        f"Classifier {_classifier(results)}; clean test accuracy {results.clean_accuracy:.3f}. Detector: the paper's architecture "
        f"(width {w:g}: {round(96 * w)}/{round(192 * w)}/{round(192 * w)} channels), attached at {s.layer} "
        f"(DeepFool: {_deepfool_layers(results)}), trained {s.epochs} epochs with Adam (lr {s.lr:g}, betas "
        "0.99/0.999) on cached features of the frozen classifier, model selection on the validation split.",
        _units(s),
        f"Iterative methods: 10 iterations, alpha = 1 (L∞) / 20 (L2) paper units. DeepFool: {s.deepfool_steps} "
        f"steps, {s.deepfool_candidates} candidate classes, unbounded (minimum norm).",
        f"Dynamic adversary: epsilon = {results.dynamic.epsilon:.3f} (the Iterative ℓ∞ epsilon* below 30% "
        f"accuracy), alpha = {s.dyn_alpha:g} paper units, {s.dyn_steps} iterations. Dynamic detector: the static "
        f"detector trained {s.dyn_epochs} more epochs by dynamic adversary training on {s.dyn_train} images.",
        f"Uncertainty: 95% percentile bootstrap intervals over the test images ({s.resamples} resamples, seed "
        f"{s.seed}). An image and its adversarial example are resampled together (detectability is a balanced "
        "accuracy over both); a dynamic adversary's detectability counts the resampled images whose example fools "
        "the classifier; curves resample whole per-image curves; every cell of the depth table and of the "
        "generalisation matrices (Figs. 3, 4) resamples the same images, so a comparison of two cells is paired. "
        "A finding holds when its whole interval lies on the paper's side of the bound, does not hold when it "
        "lies wholly on the other side, and is inconclusive otherwise.",
        "Threshold-aware dynamic adversary (beside Fig. 5 and in the security curves): the hinge objective against "
        "the detector's deployed threshold (5% validation FPR) instead of the paper's cross-entropy towards "
        "p_adv = 0; its detectability is scored at that threshold.",
    ]


def _flags(page: Page, results: DetectorResults) -> None:
    page.section("Acceptance criteria", "acceptance")
    for item in acceptance(results):  # a finding that does not hold is a result (warn), not an error
        page.flag(item.text, "ok" if item.ok and item.kind != "info" else "bad" if item.error else "warn")
    page.section("Interpretation: which findings of the paper hold here", "interpretation")
    for text, result in interpretation(results):
        prefix = "" if result is None else f"{result}: "
        page.flag(prefix + text, "ok" if result == "holds" else "warn")  # a result, not an error


def _curves(page: Page, results: DetectorResults) -> None:
    page.section("Security evaluation curves: undefended vs. detector-defended", "curves")
    page.paragraph(
        "Defended systems reject inputs whose p_adv exceeds the threshold that flags 5% of clean validation "
        "inputs. A rejected adversarial input is a success of the defence, a rejected clean input an error. "
        "Static BIM attacks the classifier alone; PGD on the reject-aware margin and the threshold-aware dynamic "
        "adversary (hinge objective against the deployed threshold) see the detector (adaptive attacks); the "
        "worst case takes the worst outcome per input over all of them."
    )
    for attack in results.curves.models["undefended"]:
        page.svg(
            _fig_curves(results, attack),
            "Grey bands: 95% intervals of the accuracy and of accuracy + rejected.",
        )
    worst = {m: c["worst case"] for m, c in results.curves.models.items()}
    rows = [
        [m, w.accuracy[0], w.auc, _ci(w.auc_interval).strip() or "n/a", w.auc_defended,
         _ci(w.auc_defended_interval).strip() or "n/a"]
        for m, w in worst.items()
    ]  # fmt: skip
    page.table(
        ["system", "clean accuracy", "AUC accuracy (worst case)", "95% interval", "AUC accuracy + rejected",
         "95% interval"],
        rows,
    )  # fmt: skip
    for name, iv in results.curves.differences.items():
        page.paragraph(
            f"Paired difference of AUC(accuracy + rejected), worst case, {name}: {iv.estimate:+.3f} "
            f"[{iv.low:+.3f}, {iv.high:+.3f}] (95% interval, the same {iv.n} test images resampled for both)."
        )


def render(results: DetectorResults, seconds: float = 0.0) -> Page:
    """The report page (the caller writes it with ``.write(path)``); ``seconds``: the run's duration."""
    s = results.settings
    page = Page(
        "Detecting adversarial perturbations (Metzen et al. 2017) — reproduction",
        f"{results.classifier.get('name', 'mnist-cnn')} on {s.dataset}, {s.name} run: {s.n_train} training / {s.n_val} validation / "
        f"{s.n_test} test images, {seconds:.0f} s",
    )
    _flags(page, results)
    page.section("Setup", "setup").bullets(_setup(results))
    page.section("Static adversaries (Fig. 2 left)", "static")
    page.svg(_fig_static(results), "Detectability vs. classifier accuracy (labels: epsilon in paper units).")
    _static_table(page, results)
    page.section("Attachment depth (Fig. 2 right)", "depth")
    page.svg(
        _fig_depth(results),
        "Detectability per attachment layer at each adversary's epsilon* (bars: 95% intervals over the test images).",
    )
    _depth_table(page, results)
    _generalisation(page, results)
    page.section("Dynamic adversaries and dynamic adversary training (Fig. 5)", "dynamic")
    page.svg(
        _fig_dynamic(results),
        "The dynamic adversary for each sigma (labels) against the static and the dynamic detector; "
        "only adversarial examples that fool the classifier (on inputs it classifies correctly) count.",
    )
    _dynamic_table(page, results)
    _aware_section(page, results)
    _curves(page, results)
    if results.examples:
        page.section("Examples at epsilon*", "examples")
        _examples(page, results.examples)
    return page
