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

from ..evaluation.detectability import DetectabilityMatrix
from ..reports.html import GridCell, Page
from ..reports.plots import figure, heatmap, pyplot, to_svg
from .detector_records import AcceptanceItem, DetectorResults, Example, StaticRow, SweepRow

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


def _finding(rows: Sequence[SweepRow]) -> tuple[bool, str]:
    """Whether detectability stays >= 0.7 at every sigma with successes, and the wording of it."""
    points = _sweep_points(rows)
    low = min((p[2] for p in points), default=math.nan)
    holds = bool(points) and low >= 0.7
    listed = ", ".join(f"σ={p[0]:g}: {p[2]:.3f} (n={p[3]})" for p in points) or "no successful examples"
    verdict = "finding holds" if holds else "finding does not hold"
    return holds, f"{verdict} (lowest detectability {low:.3f}): {listed}"


def _evasion(rows: Sequence[SweepRow]) -> str:
    """The highest fraction of inputs that evade the whole system, and its sigma."""
    rates = [(r.evasion_rate, r.sigma) for r in rows if r.evasion_rate is not None]
    if not rates:
        return "evasion rate not measured"
    rate, sigma = max(rates)
    return f"up to {rate:.1%} of the test inputs evade the whole system (σ={sigma:g})"


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
            f"{r.label} {r.units:g}: {_det(r):.3f} (acc {r.classifier_accuracy:.3f})" for r in rows
        )
        text = f"static detectability >= {need} for every adversary with classifier accuracy < {limit:.0%}"
        ok = all(_det(r) >= need for r in rows)
        items.append(AcceptanceItem(ok, "static", f"{text} ({len(rows)} settings): {listed}"))
    dyn = results.dynamic
    s, d, n = worst_sigma(dyn.static)
    text = f"dynamic adversary vs. static detector: lowest detectability {d:.3f} at sigma {s:g} ({n} successful examples)"
    items.append(AcceptanceItem(True, "info", text))
    holds, text = _finding(dyn.dynamic)
    text = f"{FINDING}, paper protocol (CE dynamic adversary, detectability at p_adv > 0.5): {text}"
    items.append(AcceptanceItem(holds, "finding", text))
    if "dynamic" in dyn.aware:
        sweep = dyn.aware["dynamic"]
        holds, text = _finding(sweep.rows)
        text = (
            f"{FINDING}, threshold-aware adversary at the deployed threshold (hinge objective, p_adv > "
            f"{sweep.threshold:.4g}, {dyn.aware_fpr:.0%} validation FPR): {text}; {_evasion(sweep.rows)}"
        )
        if "static" in dyn.aware:
            static = dyn.aware["static"]
            low = min((p[2] for p in _sweep_points(static.rows)), default=math.nan)
            text += (
                f" (static detector at p_adv > {static.threshold:.4g}: lowest detectability {low:.3f}; "
                f"{_evasion(static.rows)})"
            )
        items.append(AcceptanceItem(holds, "finding", text))
    c = dyn.combined_clean["dynamic"]
    half, fpr = c["threshold_0.5"], c["fpr_0.05"]
    text = (
        f"clean accuracy of classifier + dynamic detector: {half.accuracy:.3f} at p_adv > 0.5 ({half.rejected:.1%} "
        f"rejected), {fpr.accuracy:.3f} at 5% validation FPR; classifier alone {results.clean_accuracy:.3f}"
    )
    items.append(AcceptanceItem(True, "info", text))
    worst = {m: c["worst case"] for m, c in results.curves.models.items()}
    aucs = "; ".join(f"{m} {w.auc:.3f} / {w.auc_defended:.3f}" for m, w in worst.items())
    text = f"security curves, worst case over all attacks, AUC of accuracy / of accuracy + rejected: {aucs}"
    items.append(AcceptanceItem(True, "info", text))
    items.append(_range_check(results))
    return items


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


Finding = tuple[str, bool | None]


def _rows_of(results: DetectorResults, key: str) -> list[StaticRow]:
    """The static rows of one adversary, by increasing epsilon."""
    return sorted((r for r in results.static if r.adversary == key), key=lambda r: r.epsilon)


def _static_findings(results: DetectorResults) -> list[Finding]:
    acc = acceptance(results)
    out: list[Finding] = [
        (f"Static adversaries are detected well (paper: > 80% below 30% accuracy, > 90% below 10%): {acc[1].text}.",
         acc[0].ok and acc[1].ok)
    ]  # fmt: skip
    mono = []
    for key in sorted({r.adversary for r in results.static}):
        rows = _rows_of(results, key)
        dets = [_det(r) for r in rows]
        if len(dets) > 1:
            mono.append(all(b >= a - 0.01 for a, b in itertools.pairwise(dets)))
    if mono:
        text = f"Larger epsilon, higher detectability: non-decreasing for {sum(mono)} of {len(mono)} adversaries."
        out.append((text, all(mono)))
    depth = results.depth.detectability
    best = ", ".join(f"{k}: {max(row, key=lambda layer: row[layer])}" for k, row in depth.items())
    out.append(
        (
            f"Best attachment layer: {best} (paper: a middle layer for Fast/Iterative, the deepest for DeepFool).",
            None,
        )
    )
    return out


def _generalisation_findings(results: DetectorResults) -> list[Finding]:
    out: list[Finding] = []
    for m in results.fig3.values():
        up, lo = _upper_lower(m.values)
        text = (
            f"{m.title}: trained on a small epsilon, tested on larger ones {up:.3f}; large to small {lo:.3f}."
        )
        out.append((text + " (paper: small -> large generalises, not the reverse)", up >= lo))
    f4 = results.fig4
    idx, v = {n: i for i, n in enumerate(f4.rows)}, f4.values
    if {"Fast", "Iterative ℓ∞", "Iterative ℓ2"} <= set(idx):
        fast, it, l2 = idx["Fast"], idx["Iterative ℓ∞"], idx["Iterative ℓ2"]
        out.append((f"Iterative -> Fast generalises ({v[it][fast]:.3f}) better than Fast -> Iterative ({v[fast][it]:.3f}).", v[it][fast] >= v[fast][it]))  # fmt: skip
        out.append((f"Detectors generalise between the ℓ∞ and ℓ2 iterative adversaries ({v[it][l2]:.3f}, {v[l2][it]:.3f}).", min(v[it][l2], v[l2][it]) >= 0.8))  # fmt: skip
    return out


def _dynamic_findings(results: DetectorResults) -> list[Finding]:
    s, d, n = worst_sigma(results.dynamic.static)
    text = f"The dynamic adversary fools the static detector: lowest detectability {d:.3f} at sigma {s:g} ({n} successful examples; paper: near chance at sigma 0.3-0.4)."
    out: list[Finding] = [(text, bool(d <= 0.6))]
    items = acceptance(results)
    out.append((items[3].text + ".", items[3].ok))
    aware = [i for i in items[4:] if i.kind == "finding"]
    out += [(i.text + ". The deployed system faces this attacker, not the paper's.", i.ok) for i in aware]
    curves = results.curves.models
    if {"dynamic detector", "undefended"} <= set(curves):
        u, dd = (curves[m]["worst case"].auc_defended for m in ("undefended", "dynamic detector"))
        text = f"Under the worst case of all attacks (adaptive ones included) the dynamic detector keeps more inputs defended (correct or rejected; AUC {dd:.3f}) than the undefended classifier ({u:.3f})."
        out.append((text, dd > u))
    return out


def interpretation(results: DetectorResults) -> list[Finding]:
    """The paper's findings, each restated with this run's numbers and whether it holds here."""
    return _static_findings(results) + _generalisation_findings(results) + _dynamic_findings(results)


# -- figures ---------------------------------------------------------------------------------
def _fig_static(results: DetectorResults) -> str:
    fig, ax = figure(6.0, 4.0)
    for key in dict.fromkeys(r.adversary for r in results.static):
        rows = _rows_of(results, key)
        xs, ys = [r.classifier_accuracy for r in rows], [_det(r) for r in rows]
        ax.plot(xs, ys, "o-", color=_COLOURS.get(key), label=rows[0].label)
        for r, x, y in zip(rows, xs, ys):
            if math.isfinite(r.units):
                ax.annotate(f"{r.units:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.plot([results.clean_accuracy], [0.5], "ks", label="No (unchanged input)")
    ax.set_xlabel("classifier accuracy on adversarial examples")
    ax.set_ylabel("detectability")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0.45, 1.02)
    ax.legend(fontsize=8, loc="best")
    return to_svg(fig)


def _fig_depth(results: DetectorResults) -> str:
    depth = results.depth
    fig, ax = figure(6.0, 3.6)
    for key, row in depth.detectability.items():
        ax.plot(
            list(depth.layers),
            [row[layer] for layer in depth.layers],
            "o-",
            color=_COLOURS.get(key),
            label=key,
        )
    ax.set_xlabel("attachment layer (shallow -> deep)")
    ax.set_ylabel("detectability")
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
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", color=colour, label=f"{name} detector")
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
        paper = _sweep_points(dyn.static if name == "static" else dyn.dynamic)
        left.plot([p[0] for p in paper], [p[2] for p in paper], "o--", color=colour, alpha=0.6,
                  label=f"{name} detector, paper protocol (0.5)")  # fmt: skip
        if name not in dyn.aware:
            continue
        sweep = dyn.aware[name]
        aware = _sweep_points(sweep.rows)
        left.plot([p[0] for p in aware], [p[2] for p in aware], "s-", color=colour,
                  label=f"{name} detector, threshold-aware ({sweep.threshold:.3g})")  # fmt: skip
        rates = [(r.sigma, r.evasion_rate) for r in sweep.rows if r.evasion_rate is not None]
        right.plot([r[0] for r in rates], [r[1] for r in rates], "s-", color=colour, label=f"{name} detector")
    left.axhline(0.7, color="grey", lw=0.8, ls="--")
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.set_xlabel("sigma")
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
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("L∞ epsilon (paper units)", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_xlim(units[0], units[-1])
    axes[0][0].set_ylabel("fraction of test inputs", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(attack, fontsize=10)
    fig.tight_layout()
    return to_svg(fig)


# -- page ------------------------------------------------------------------------------------
def _static_table(page: Page, results: DetectorResults) -> None:
    rows = [
        [
            r.label,
            "unbounded" if not math.isfinite(r.units) else f"{r.units:g}",
            "min-norm" if not math.isfinite(r.epsilon) else f"{r.epsilon:.3f}",
            r.layer,
            r.classifier_accuracy,
            _det(r),
            r.detectability.roc_auc,
            r.detectability.tpr_at_fpr,
        ]
        for r in results.static
    ]
    page.table(
        [
            "adversary",
            "eps (paper units)",
            "eps (MNIST)",
            "layer",
            "classifier acc.",
            "detectability",
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
        rows.append(cells)
    page.table(
        [
            "sigma",
            "static: clf acc.",
            "successes",
            "detectability",
            "dynamic: clf acc.",
            "successes",
            "detectability",
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
        header += [f"{name}: clf acc.", "fooled", "detectability", "evasion rate"]
    for i, sigma in enumerate(dyn.aware[next(iter(dyn.aware))].rows):
        cells: list[object] = [f"{sigma.sigma:g}"]
        for sweep in dyn.aware.values():
            r = sweep.rows[i]
            rate = r.evasion_rate if r.evasion_rate is not None else "n/a"
            cells += [r.classifier_accuracy, r.n_successful, _det(r) if r.detectability else "n/a", rate]
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


def _setup(results: DetectorResults) -> list[str]:
    s = results.settings
    w = s.width
    return [
        f"Classifier mnist-cnn, clean test accuracy {results.clean_accuracy:.3f}. Detector: the paper's architecture "
        f"(width {w:g}: {round(96 * w)}/{round(192 * w)}/{round(192 * w)} channels), attached at {s.layer} "
        f"(DeepFool: {_deepfool_layers(results)}), trained {s.epochs} epochs with Adam (lr {s.lr:g}, betas "
        "0.99/0.999) on cached features of the frozen classifier, model selection on the validation split.",
        f"Epsilons: one paper unit ([0, 255] on CIFAR) = {s.linf_unit:g} in L∞ and {s.l2_unit:.4f} in L2 on "
        "MNIST (same per-pixel size on 784 instead of 3072 dimensions); MNIST needs larger perturbations than CIFAR.",
        f"Iterative methods: 10 iterations, alpha = 1 (L∞) / 20 (L2) paper units. DeepFool: {s.deepfool_steps} "
        f"steps, {s.deepfool_candidates} candidate classes, unbounded (minimum norm).",
        f"Dynamic adversary: epsilon = {results.dynamic.epsilon:.3f} (the Iterative ℓ∞ epsilon* below 30% "
        f"accuracy), alpha = {s.dyn_alpha:g} paper units, {s.dyn_steps} iterations. Dynamic detector: the static "
        f"detector trained {s.dyn_epochs} more epochs by dynamic adversary training on {s.dyn_train} images.",
        "Threshold-aware dynamic adversary (beside Fig. 5 and in the security curves): the hinge objective against "
        "the detector's deployed threshold (5% validation FPR) instead of the paper's cross-entropy towards "
        "p_adv = 0; its detectability is scored at that threshold.",
    ]


def _flags(page: Page, results: DetectorResults) -> None:
    page.section("Acceptance criteria", "acceptance")
    for item in acceptance(results):  # a finding that does not hold is a result (warn), not an error
        page.flag(item.text, "ok" if item.ok and item.kind != "info" else "bad" if item.error else "warn")
    page.section("Interpretation: which findings of the paper hold here", "interpretation")
    for text, holds in interpretation(results):
        prefix = {True: "holds: ", False: "does not hold: ", None: ""}[holds]
        page.flag(prefix + text, "ok" if holds else "warn")  # not holding is a result, not an error


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
        page.svg(_fig_curves(results, attack))
    worst = {m: c["worst case"] for m, c in results.curves.models.items()}
    rows = [[m, w.accuracy[0], w.auc, w.auc_defended] for m, w in worst.items()]
    page.table(["system", "clean accuracy", "AUC accuracy (worst case)", "AUC accuracy + rejected"], rows)


def render(results: DetectorResults, seconds: float = 0.0) -> Page:
    """The report page (the caller writes it with ``.write(path)``); ``seconds``: the run's duration."""
    s = results.settings
    page = Page(
        "Detecting adversarial perturbations (Metzen et al. 2017) — reproduction",
        f"mnist-cnn on mnist5k, {s.name} run: {s.n_train} training / {s.n_val} validation / "
        f"{s.n_test} test images, {seconds:.0f} s",
    )
    _flags(page, results)
    page.section("Setup", "setup").bullets(_setup(results))
    page.section("Static adversaries (Fig. 2 left)", "static")
    page.svg(_fig_static(results), "Detectability vs. classifier accuracy (labels: epsilon in paper units).")
    _static_table(page, results)
    page.section("Attachment depth (Fig. 2 right)", "depth")
    page.svg(_fig_depth(results), "Detectability per attachment layer at each adversary's epsilon*.")
    page.section("Generalisation across epsilon (Fig. 3) and across adversaries (Fig. 4)", "generalisation")
    if results.fig3:
        page.svg(_fig_fig3(results), "Trained at epsilon_fit (rows), tested at epsilon_test (columns).")
    page.svg(_fig_fig4(results), "Trained on one adversary (rows), tested on another (columns), at epsilon*.")
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
