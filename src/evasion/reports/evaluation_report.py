"""The HTML report of a security evaluation: curves, tables, histograms, image grids, checks, metadata.

One self-contained file (inline SVG plots and PNG images, no network access) rendered from an
:class:`~evasion.evaluation.Evaluation` alone, so ``evasion report RUN`` can redraw it from the
store. Every user-supplied string (class names, run names, paths, config text) is escaped by
:class:`~evasion.reports.html.Page`.

A report over records that no longer match their checksums (``meta["integrity"]``, from
:meth:`evasion.store.RunStore.evaluation` with ``allow_modified=True``) carries it in its title and
an error banner naming every modified cell: it never looks like a clean report.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..evaluation import CHECKS, SOURCES, Evaluation, Example, SecurityCurve
from .html import GridCell, Page
from .plots import figure, to_svg

if TYPE_CHECKING:
    from ..verification.sandwich import SandwichRow

__all__ = ["MASKING", "black_box_queries", "build_report", "masking_flags", "sandwich_rows", "write_report"]

_DOCS = "docs/attack-failure-checks.md"


def _label(classes: Sequence[str], k: int) -> str:
    if k < 0:
        return "REJECT"
    return f"{k} {classes[k]}" if 0 <= k < len(classes) and classes[k] != str(k) else str(k)


def _eps(e: float) -> str:
    return "unbounded" if math.isinf(e) else f"{e:g}"


# -- plots -----------------------------------------------------------------------------------------
def curve_figure(
    curves: Sequence[SecurityCurve],
    worst: SecurityCurve | None,
    title: str,
    bounds: Sequence[SandwichRow] = (),
) -> str:
    """Accuracy vs. epsilon per attack, the worst case in black, rejected fractions as bands.

    ``bounds`` (certifications): the certified lower bound in green, the exact robust accuracy
    (MILP) dotted, and the band between the certified and the attacked accuracy hatched "unknown"."""
    fig, ax = figure(6.0, 3.8)
    for c in curves:
        (line,) = ax.plot(c.epsilons, c.accuracy, marker="o", markersize=3, linewidth=1.4, label=c.attack)
        if worst is None and any(r > 0 for r in c.rejected):  # one band per attack only without a worst case
            top = [a + r for a, r in zip(c.accuracy, c.rejected)]
            ax.fill_between(c.epsilons, c.accuracy, top, color=line.get_color(), alpha=0.15, linewidth=0)
    if worst is not None:
        ax.plot(
            worst.epsilons, worst.accuracy, color="black", linewidth=2.4, linestyle="--", label="worst case"
        )
        if any(r > 0 for r in worst.rejected):
            top = [a + r for a, r in zip(worst.accuracy, worst.rejected)]
            ax.fill_between(
                worst.epsilons, worst.accuracy, top, color="grey", alpha=0.25, label="+ rejected (worst case)"
            )
    if bounds:
        clean = worst.accuracy[0] if worst is not None else curves[0].accuracy[0] if curves else 1.0
        eps = [0.0, *(r.epsilon for r in bounds)]
        lower = [clean, *(r.certified for r in bounds)]
        upper = [clean, *(r.attacked for r in bounds)]
        ax.plot(
            eps, lower, color="tab:green", linewidth=2.2, marker="s", markersize=3, label="certified (proof)"
        )
        ax.fill_between(
            eps,
            lower,
            upper,
            facecolor="none",
            edgecolor="tab:orange",
            hatch="///",
            linewidth=0,
            label="unknown",
        )
        exact = [(r.epsilon, r.exact) for r in bounds if r.exact is not None]
        if exact:
            ax.plot(
                [0.0, *(e for e, _ in exact)],
                [clean, *(v for _, v in exact)],
                color="tab:purple",
                linestyle=":",
                linewidth=2.0,
                marker="x",
                markersize=4,
                label="exact (MILP)",
            )
    ax.set_xlabel(f"maximum perturbation epsilon ({curves[0].norm if curves else ''})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return to_svg(fig)


def minimal_norm_figure(ev: Evaluation, model: str, names: Sequence[str]) -> str | None:
    """Histogram of minimal perturbation norms, and the robust-accuracy curve they imply."""
    data = []
    for name in names:
        minimal = ev.minimal_norms(model, name)
        clean = ev.clean_columns.get(model)
        if minimal is None or clean is None:
            continue
        correct = clean["prediction"] == clean["label"]
        values = minimal.numpy()[correct]
        data.append((name, values))
    if not data:
        return None
    fig, (left, right) = figure(9.0, 3.4, ncols=2)
    finite = np.concatenate([v[np.isfinite(v)] for _, v in data]) if data else np.zeros(0)
    top = float(finite.max()) if finite.size else 1.0
    bins = np.linspace(0, max(top, 1e-6), 30)
    for name, values in data:
        left.hist(values[np.isfinite(values)], bins=bins, alpha=0.55, label=name)
        grid = np.linspace(0, max(top, 1e-6), 200)
        right.plot(grid, [(values > g).mean() for g in grid], label=name)
    left.set_xlabel("minimal perturbation norm")
    left.set_ylabel("samples")
    left.legend(fontsize=8, frameon=False)
    right.set_xlabel("epsilon")
    right.set_ylabel("implied robust accuracy")
    right.set_ylim(-0.02, 1.02)
    return to_svg(fig)


def black_box_queries(ev: Evaluation, model: str, attack: str) -> np.ndarray:
    """Queries ``attack`` made on each sample it attacked, summed over the epsilons at which it
    attacked it (the evaluator's own re-verification forward of each cell not counted)."""
    table = ev.attack_columns.get((model, attack), {})
    attacked = SOURCES.index("attack")
    index, spent = [], []
    for c in table.values():
        mine = c["source"] == attacked
        index.append(c["index"][mine])
        spent.append(np.maximum(c["forwards"][mine] - 1, 0))
    if not index or not sum(len(i) for i in index):
        return np.zeros(0, dtype=np.int64)
    keys, inverse = np.unique(np.concatenate(index), return_inverse=True)
    total = np.zeros(len(keys), dtype=np.int64)
    np.add.at(total, inverse, np.concatenate(spent))
    return total


def _queries_rows(ev: Evaluation, model: str, names: Sequence[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name in names:
        q = black_box_queries(ev, model, name)
        if len(q):
            rows.append([name, len(q), f"{float(np.median(q)):g}", int(q.max())])
    return rows


# -- sections --------------------------------------------------------------------------------------
def _curve_rows(curves: Sequence[SecurityCurve], ev: Evaluation, model: str) -> list[list[object]]:
    rows: list[list[object]] = []
    for c in curves:
        cells: list[object] = [c.attack]
        for a, r in zip(c.accuracy, c.rejected):
            cells.append(f"{a:.3f}" + (f" ({r:.3f})" if r > 0 else ""))
        fwd, bwd = ev.queries(model, c.attack) if c.attack in ev.specs else (0, 0)
        cells += [f"{c.auc():.3f}", f"{fwd:,} / {bwd:,}" if c.attack in ev.specs else "-"]
        rows.append(cells)
    return rows


def _model_section(page: Page, ev: Evaluation, model: str) -> None:
    page.section(f"Model {model}", anchor=f"model-{model}")
    page.paragraph(f"Clean accuracy {ev.clean_accuracy(model):.3f} on {ev.samples} samples.")
    for norm in ev.norms:
        specs = [s for s in ev.specs.values() if s.norm == norm and s.applies_to(model)]
        if not specs:
            continue
        curves = [ev.curve(model, s.name) for s in specs]
        worst = ev.worst_case(model, norm) if any(not s.targeted for s in specs) else None
        bounds = ev.sandwich(model, norm) if norm in ev.certified_norms(model) else []
        page.heading(f"Security evaluation curve, {norm}")
        page.svg(
            curve_figure(curves, worst, f"{model}, {norm}", bounds),
            caption=(
                "Accuracy under each attack vs. the maximum perturbation; dashed black: worst case per sample "
                "over all attacks of this norm; grey band: inputs rejected in the worst case (a rejected adversarial "
                "input counts as defended, a rejected clean input as an error)."
                + (
                    " Green: certified accuracy, a proof per sample (lower bound of the true robust accuracy); "
                    'hatched "unknown": between the proof and the worst-case attack (upper bound), where '
                    "neither a proof nor an attack settled the sample; dotted: exact robust accuracy (MILP)."
                    if bounds
                    else ""
                )
            ),
        )
        if bounds:
            _sandwich_table(page, model, norm, bounds, ev.missed_by_attacks(model, norm))
        grid = sorted({e for c in curves for e in c.epsilons})
        table = [*curves, *([worst] if worst is not None else [])]
        if any(r > 0 for c in table for r in c.rejected):
            page.paragraph("Accuracy (in parentheses: the fraction rejected).", css="note")
        if all(c.epsilons == grid for c in table):
            header = ["attack", *[f"eps {e:g}" for e in grid], "AUC", "forwards / backwards"]
            page.table(header, _curve_rows(table, ev, model))
        else:
            for c in table:
                page.table(
                    ["attack", *[f"eps {e:g}" for e in c.epsilons], "AUC", "forwards / backwards"],
                    _curve_rows([c], ev, model),
                )
        if any(s.role == "self-check" for s in specs):
            page.paragraph(
                f"self-check-{norm}: a longer APGD on the reject-aware margin loss that re-attacks, at each "
                "epsilon, the samples no other attack of this norm broke, started from their best points; its "
                "curve is the worst case including what it found (see the self-check flag in Checks). Attacks "
                "with `after` run as a cascade: each curve is the worst case of the attacks up to it.",
                css="note",
            )
        black = [s.name for s in specs if s.black_box]
        queries = _queries_rows(ev, model, black)
        if queries:
            page.paragraph(
                "Queries per sample of the black-box attacks (forward passes of the model, the only "
                "access they have), over the samples each attacked, all epsilons together.",
                css="note",
            )
            page.table(["black-box attack", "samples attacked", "median queries", "max queries"], queries)
        noise = _noise_statement(ev, model, [c for c in curves if ev.specs[c.attack].kind == "noise"], curves)
        if noise:
            page.paragraph(noise)
        minimal = [s.name for s in specs if s.minimum_norm]
        svg = minimal_norm_figure(ev, model, minimal) if minimal else None
        if svg is not None:
            page.heading(f"Minimal perturbations, {norm}")
            page.svg(
                svg,
                caption="Smallest adversarial perturbation per correctly classified sample found by the "
                "minimum-norm attacks (left), and the robust accuracy it implies (right).",
            )


def sandwich_rows(
    bounds: Sequence[SandwichRow], missed: dict[float, list[int]] | None = None
) -> tuple[list[str], list[list[object]]]:
    """Header and rows of the sandwich table: certified per method and by any, exact (MILP),
    attacked, the unknown band, certified-yet-broken samples; with a MILP, the samples it showed
    breakable that the attacks missed (``missed``: their indices per epsilon)."""
    order = ("ibp", "crown", "milp")
    methods = sorted(
        {m for r in bounds for m in r.by_method}, key=lambda m: (order.index(m) if m in order else 9, m)
    )
    milp = any(r.exact is not None for r in bounds)
    missed = missed or {}
    header = [
        "epsilon",
        *[f"certified ({m})" for m in methods if m != "milp"],
        "certified (any)",
        *(["exact (MILP)", "MILP timed out"] if milp else []),
        "attacked (worst case)",
        *(["breakable, missed by the attacks"] if milp else []),
        "unknown (samples)",
        "certified yet broken",
    ]
    rows: list[list[object]] = []
    for r in bounds:
        cells: list[object] = [f"{r.epsilon:g}"]
        cells += [f"{r.by_method[m]:.3f}" if m in r.by_method else "-" for m in methods if m != "milp"]
        cells.append(f"{r.certified:.3f}")
        if milp:
            cells += ["-", "-"] if r.exact is None else [f"{r.exact:.3f}", f"{r.exact_unknown or 0.0:.3f}"]
        cells.append(f"{r.attacked:.3f}")
        if milp:
            found = missed.get(r.epsilon)
            cells.append("-" if found is None else _samples(found))
        cells += [f"{r.unknown} of {r.samples}", r.contradictions]
        rows.append(cells)
    return header, rows


def _samples(indices: Sequence[int], show: int = 8) -> str:
    """``"2: #5, #9"``: a count and the first sample indices."""
    if not indices:
        return "0"
    more = ", ..." if len(indices) > show else ""
    return f"{len(indices)}: " + ", ".join(f"#{i}" for i in indices[:show]) + more


def _sandwich_table(
    page: Page, model: str, norm: str, bounds: Sequence[SandwichRow], missed: dict[float, list[int]]
) -> None:
    page.heading(f"Certified vs. attacked, {norm}")
    page.paragraph(
        "certified (proof) <= exact robust accuracy <= attacked (the strongest attack). Fractions of all "
        'samples; "unknown": samples no attack broke and no proof covers (the band in the plot); the MILP '
        'is exact where it did not time out (a timeout is never counted as robust); "breakable, missed by the '
        'attacks": samples the MILP broke with a counterexample (re-checked by a fresh prediction) that no '
        "attack broke, so the attacked accuracy overstates robustness by them.",
        css="note",
    )
    header, rows = sandwich_rows(bounds, missed)
    page.table(header, rows)
    for r in bounds:
        if r.contradictions:
            page.flag(
                f"ERROR: {model}, {norm} eps {r.epsilon:g}: {r.contradictions} sample(s) certified yet broken by "
                "an attack. A proof and an attack contradict each other: a bug in a bound or in an attack's "
                "budget check; neither number can be trusted.",
                level="bad",
            )


def _noise_statement(
    ev: Evaluation, model: str, noise: Sequence[SecurityCurve], curves: Sequence[SecurityCurve]
) -> str:
    """What the noise baseline says about a defence that rejects: does it flag random noise of the
    attacks' size as often as it rejects the attacks' points?"""
    attacks = [
        c for c in curves if ev.specs[c.attack].kind != "noise" and ev.specs[c.attack].role == "attack"
    ]
    if not noise or not attacks or not any(r > 0 for c in noise for r in c.rejected[1:]):
        return ""
    # the attacks' detection rate at a budget: the most of any attack's points the defence rejected
    # at that budget or below (adaptive attacks avoid rejection as they grow, so take the best catch)
    flagged, rejected, at, caught = 0.0, 0.0, 0.0, 0.0
    for i, eps in enumerate(noise[0].epsilons[1:], start=1):
        f = max(c.rejected[i] for c in noise if len(c.rejected) > i)
        caught = max([caught, *(c.rejected[i] for c in attacks if len(c.rejected) > i)])
        if f >= caught and f - caught >= flagged - rejected:
            flagged, rejected, at = f, caught, eps
    if at == 0.0:
        return (
            f"Noise baseline: {model} rejects random noise less often than the attacks' points at every "
            "epsilon (at the same budget, it caught more of some attack's points than of the noise)."
        )
    return (
        f"Noise baseline: at epsilon {at:g}, {model} rejects {flagged:.0%} of random-noise inputs (uniform or "
        f"Gaussian, the same norm and size), while it caught at most {rejected:.0%} of any attack's points at "
        "that budget or below: it flags random "
        "noise as often as adversarial examples (or more). It detects perturbations, not attacks, and an "
        "attacker who knows it stays under it."
    )


def _examples_section(page: Page, ev: Evaluation, classes: Sequence[str]) -> None:
    page.section("Adversarial examples", anchor="examples")
    if not ev.examples:
        page.paragraph("No adversarial examples among the first samples (or none stored).", css="note")
        return
    page.paragraph(
        "Original | adversarial at the smallest epsilon that broke it | perturbation, amplified "
        "(grey = unchanged). Labels with the model's confidence.",
        css="note",
    )
    by_key: dict[tuple[str, str], list[Example]] = {}
    for ex in ev.examples:
        by_key.setdefault((ex.model, ex.attack), []).append(ex)
    per_row = 3  # examples side by side: original | adversarial | perturbation, three times
    for (model, attack), items in by_key.items():
        page.heading(f"{model}: {attack}")
        triplets = [_grid_row(ex, classes) for ex in items]
        rows = [[c for t in triplets[i : i + per_row] for c in t] for i in range(0, len(triplets), per_row)]
        titles = ["original", "adversarial", "perturbation"] * min(per_row, len(triplets))
        page.image_grid(rows, column_titles=titles, cell_width=100)


def _grid_row(ex: Example, classes: Sequence[str]) -> list[GridCell]:
    delta = ex.adversarial.float() - ex.original.float()
    scale = float(delta.abs().max())
    amp = 0.5 + delta / (2 * scale) if scale > 0 else torch.full_like(delta, 0.5)
    return [
        GridCell(
            ex.original,
            [
                f"#{ex.index} true {_label(classes, ex.label)}",
                f"pred {_label(classes, ex.clean_prediction)} ({ex.clean_confidence:.2f})",
            ],
        ),
        GridCell(
            ex.adversarial.clamp(0, 1),
            [f"eps {_eps(ex.epsilon)}", f"pred {_label(classes, ex.prediction)} ({ex.confidence:.2f})"],
        ),
        GridCell(
            amp.clamp(0, 1), [f"max |delta| {scale:.3g}", f"x{0.5 / scale:.1f}" if scale > 0 else "none"]
        ),
    ]


#: flags that mean the gradients an attack followed were masked: white-box numbers overstate robustness
MASKING = ("zero-gradients", "nonfinite-gradients", "black-box-beats-white-box", "unbounded-not-zero")


def masking_flags(ev: Evaluation, model: str) -> list[str]:
    """The gradient-masking flags (:data:`MASKING`) raised on ``model``, sorted."""
    return sorted({c.code for c in ev.checks if c.model == model and c.code in MASKING})


def _checks_section(page: Page, ev: Evaluation) -> None:
    page.section("Attack-failure checks", anchor="checks")
    flags = ev.checks
    if flags:
        page.paragraph(f"{len(flags)} flag(s): these numbers may overstate robustness. See {_DOCS}.")
        for c in flags:
            where = "/".join(x for x in (c.model, c.attack) if x)
            eps = f", epsilon {_eps(c.epsilon)}" if c.attack else ""
            page.flag(f"[{c.level}] {c.code} ({where}{eps}): {c.message}", level=c.level)
    else:
        page.flag("All attack-failure checks passed.", level="ok")
    codes = list(CHECKS)
    table: dict[str, dict[str, str]] = {}
    for c in ev.checks_run:
        row = table.setdefault(f"{c.model} / {c.attack or '(model)'}", {})
        prev = row.get(c.code, "ok")
        row[c.code] = c.level if c.level != "ok" or prev == "ok" else prev
    page.table(
        ["model / attack", *codes], [[k, *[v.get(code, "-") for code in codes]] for k, v in table.items()]
    )
    page.bullets([f"{code}: {text}" for code, text in CHECKS.items()])


def _count(n: Any) -> str:
    return "?" if n is None else str(n)


def _when(t: Any) -> str:
    return dt.datetime.fromtimestamp(float(t)).isoformat(timespec="seconds") if t else "-"


def _metadata_section(page: Page, ev: Evaluation) -> None:
    meta = ev.meta
    page.section("Run metadata", anchor="metadata")
    rows: list[list[object]] = [
        ["samples", ev.samples],
        ["data", meta.get("data", "-")],
        ["models", ", ".join(ev.models)],
        ["compute time (cells)", f"{meta.get('seconds', 0.0):.1f} s"],
    ]
    rows += [[k, meta[k]] for k in ("run", "seed", "batch_size") if k in meta]
    page.table(["", ""], rows)
    page.heading("Attacks")
    page.table(
        ["name", "norm", "attack", "epsilons", "kind"],
        [
            [
                s.name,
                s.norm,
                s.attack,
                ", ".join(f"{e:g}" for e in s.epsilons),
                ", ".join(
                    k
                    for k, on in (
                        ("minimum-norm", s.minimum_norm),
                        ("targeted", s.targeted),
                        ("black-box", s.black_box),
                    )
                    if on
                )
                or "fixed budget",
            ]
            for s in ev.specs.values()
        ],
    )
    sessions = meta.get("sessions", [])
    if sessions:
        page.heading("Sessions (each invocation that wrote this run)")
        keys = ["command", "engine", "evasion", "torch", "python", "device", "platform", "torch_threads"]
        page.table(
            ["#", "status", "started", "ended", "cells computed", "cells reused", *keys],
            [
                [
                    s.get("id"),
                    s.get("status", "-"),
                    _when(s.get("started")),
                    _when(s.get("finished")) if s.get("finished") else "(not yet)",
                    _count(s.get("computed")),
                    _count(s.get("reused")),
                    *[s.get(k, "-") for k in keys],
                ]
                for s in sessions
            ],
        )
    if meta.get("config"):
        page.heading("Resolved configuration")
        page.preformatted(str(meta["config"]))


def _integrity_flags(page: Page, ev: Evaluation) -> None:
    """Error banner for modified records, a warning for cells that predate checksums."""
    integrity = ev.meta.get("integrity") or {}
    modified = list(integrity.get("modified", []))
    if modified:
        page.flag(
            f"RECORDS MODIFIED: {len(modified)} cell(s) of this run no longer match the checksums written "
            "when they were committed; every number computed from them below is untrustworthy. "
            "`evasion runs check RUN --repair` drops them and a re-run recomputes them.",
            level="bad",
        )
        page.bullets(modified)
    damaged = list(integrity.get("damaged", []))
    if damaged:
        page.flag(f"{len(damaged)} damaged cell(s): " + "; ".join(damaged), level="bad")
    unverified = int(integrity.get("unverified", 0) or 0)
    if unverified:
        page.flag(
            f"{unverified} of {integrity.get('cells', '?')} cells are unverified (written before checksums): "
            "an edit of their records would not be detected.",
            level="warn",
        )


def _summary_tables(page: Page, ev: Evaluation) -> None:
    """Worst case per model and norm at the middle and the largest epsilon, one table per norm and
    grid, so that every column says which norm and epsilon it is."""
    tables: dict[tuple[str, ...], list[list[object]]] = {}
    for norm in ev.norms:
        for model in ev.models:
            if not any(s.norm == norm and not s.targeted and s.applies_to(model) for s in ev.specs.values()):
                continue
            w = ev.worst_case(model, norm)
            mid, last = w.epsilons[len(w.epsilons) // 2], w.epsilons[-1]
            header: tuple[str, ...] = (
                "model",
                "clean accuracy",
                f"worst-case accuracy, {norm} eps {mid:g}",
                f"rejected, {norm} eps {mid:g}",
                f"worst-case accuracy, {norm} eps {last:g} (largest)",
                f"rejected, {norm} eps {last:g} (largest)",
                f"AUC ({norm})",
            )
            i = len(w.epsilons) // 2
            tables.setdefault(header, []).append(
                [
                    model,
                    w.clean_accuracy,
                    w.accuracy[i],
                    w.rejected[i],
                    w.accuracy[-1],
                    w.rejected[-1],
                    w.auc(),
                ]
            )
    for columns, rows in tables.items():
        page.table(list(columns), rows)


def build_report(ev: Evaluation, title: str | None = None) -> Page:
    """The report page of an evaluation."""
    run = str(ev.meta.get("run", "")) or "evaluation"
    tampered = bool((ev.meta.get("integrity") or {}).get("modified"))
    page = Page(
        ("[MODIFIED RECORDS] " if tampered else "") + (title or f"Security evaluation: {Path(run).name}"),
        subtitle=f"{', '.join(ev.models)} on {ev.meta.get('data', 'data')} ({ev.samples} samples); "
        f"generated {dt.datetime.now().isoformat(timespec='seconds')}",
    )
    classes = [str(c) for c in ev.meta.get("classes", [])]
    page.nav(
        [("summary", "Summary")]
        + [(f"model-{m}", m) for m in ev.models]
        + [("examples", "Examples"), ("checks", "Checks"), ("metadata", "Metadata")]
    )
    page.section("Summary", anchor="summary")
    _integrity_flags(page, ev)
    _summary_tables(page, ev)
    n_flags = len(ev.checks)
    page.flag(
        f"{n_flags} attack-failure flag(s); see below." if n_flags else "All attack-failure checks passed.",
        level="warn" if n_flags else "ok",
    )
    for model in ev.models:
        if masking_flags(ev, model):
            page.flag(
                f"{model}: gradient masking flagged ({', '.join(masking_flags(ev, model))}): its white-box "
                "numbers are not to be trusted (see Checks).",
                level="bad",
            )
    for model, name, eps, indices in ev.contradictions():
        page.flag(
            f"ERROR: {model}: {len(indices)} sample(s) certified by {name} at eps {eps:g} yet broken by an "
            f"attack (samples {', '.join(map(str, indices[:10]))}): a bug in a bound or an attack.",
            level="bad",
        )
    if ev.incomplete:
        page.flag(
            f"{len(ev.incomplete)} (model, attack, epsilon) groups are incomplete (interrupted run?) and "
            "are left out of the curves; re-run the same command to finish them.",
            level="warn",
        )
    for model in ev.models:
        _model_section(page, ev, model)
    _examples_section(page, ev, classes)
    _checks_section(page, ev)
    _metadata_section(page, ev)
    return page


def write_report(ev: Evaluation, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Render and write the report (atomically)."""
    return build_report(ev, title).write(path)
