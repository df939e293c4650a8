"""The HTML report of a training run: what the recipe did per epoch, and what it bought.

Two parts, one self-contained page (:class:`~evasion.reports.html.Page`, inline SVG):

* **training curves**: clean and robust validation accuracy per epoch (and FGSM accuracy for
  ``fgsm-rs``), the epsilon warm-up, catastrophic-overfitting events marked where they happened;
* **security evaluation curves**: the worst case over the default attack suite of the trained
  model beside the standard model, from an :class:`~evasion.evaluation.Evaluation` computed by
  :func:`evasion.evaluation.evaluate` into a run store (``evasion train`` does that), with the
  attack-failure checks of both models and a verdict: where gradient masking is flagged, the
  white-box numbers of that model are not to be trusted.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation import Evaluation
from .evaluation_report import curve_figure, masking_flags
from .html import Page
from .plots import figure, to_svg

__all__ = ["build_training_report", "training_figure", "worst_case_figure", "write_training_report"]


def training_figure(
    history: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]], title: str
) -> str:
    """Validation accuracies per epoch; the epsilon of each epoch on a second axis; events as lines."""
    fig, ax = figure(6.0, 3.6)
    epochs = [int(r["epoch"]) for r in history]
    for key, label, style in (
        ("val_clean", "clean", "-"),
        ("val_robust", "robust (PGD check)", "-"),
        ("val_fgsm", "FGSM check", ":"),
    ):
        points = [(e, float(r[key])) for e, r in zip(epochs, history) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1.6, linestyle=style, label=label)
    for i, event in enumerate(events):
        ax.axvline(
            float(event["epoch"]),
            color="crimson",
            linestyle="--",
            linewidth=1.4,
            label="catastrophic overfitting" if i == 0 else None,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    eps = [float(r.get("epsilon", 0.0)) for r in history]
    if any(e > 0 for e in eps):
        twin = ax.twinx()
        twin.plot(epochs, eps, color="grey", linewidth=1.0, linestyle="-.", label="epsilon (end of epoch)")
        twin.set_ylabel("training epsilon", fontsize=8, color="grey")
        twin.set_ylim(0, max(eps) * 1.05)
        twin.spines["top"].set_visible(False)
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = twin.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, fontsize=8, frameon=False, loc="lower right")
    else:
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    return to_svg(fig)


def worst_case_figure(ev: Evaluation, models: Sequence[str], norm: str) -> str:
    """The worst-case security curves of ``models`` in one plot (one line per model)."""
    fig, ax = figure(6.0, 3.8)
    for model in models:
        worst = ev.worst_case(model, norm)
        ax.plot(worst.epsilons, worst.accuracy, marker="o", markersize=3, linewidth=2.0, label=model)
    ax.set_xlabel(f"maximum perturbation epsilon ({norm})")
    ax.set_ylabel("worst-case accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"worst case over the default attacks, {norm}", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return to_svg(fig)


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _training_section(page: Page, summary: Mapping[str, Any]) -> None:
    config = summary.get("config", {})
    log = summary.get("log", {})
    history, events = log.get("history", []), log.get("events", [])
    page.section("Training", anchor="training")
    recipe = "defensive distillation" if summary.get("distilled") else config.get("recipe", "?")
    page.table(
        ["setting", "value"],
        [
            ["architecture", summary.get("architecture", "?")],
            ["data", f"{summary.get('data', '?')} ({summary.get('samples', '?')} training samples)"],
            ["recipe", recipe],
            ["epsilon", f"{config.get('norm', '')} {config.get('epsilon', '')}"],
            ["epochs run", f"{len(history)} of {config.get('epochs', '?')}"],
            ["training time (s)", _fmt(summary.get("seconds"))],
            ["test accuracy", _fmt(summary.get("test_accuracy"))],
            ["test PGD-20 accuracy at the training epsilon", _fmt(summary.get("test_robust_accuracy_pgd20"))],
        ],
    )
    for event in events:
        page.flag(
            f"catastrophic overfitting at epoch {event.get('epoch')}: PGD accuracy {_fmt(event.get('val_robust'))} "
            f"while FGSM accuracy is {_fmt(event.get('val_fgsm'))} (best earlier PGD accuracy "
            f"{_fmt(event.get('best_val_robust'))}); {event.get('action', '')}",
            level="bad",
        )
    if history:
        page.svg(
            training_figure(history, events, f"{summary.get('architecture', '')}, {recipe}"),
            "Validation accuracy per epoch: clean, under the PGD check at the full training epsilon, and (fgsm-rs) "
            "under FGSM; a PGD curve that collapses while the FGSM curve stays high is catastrophic "
            "overfitting (dashed red lines). Grey: the training epsilon during the warm-up.",
        )
        page.table(
            ["epoch", "loss", "lr", "epsilon", "val clean", "val robust", "val FGSM", "seconds"],
            [
                [
                    r.get("epoch"),
                    _fmt(r.get("loss")),
                    f"{float(r.get('lr', 0.0)):.3g}",
                    f"{float(r.get('epsilon', 0.0)):.3g}",
                    _fmt(r.get("val_clean")),
                    _fmt(r.get("val_robust")),
                    _fmt(r.get("val_fgsm")),
                    _fmt(r.get("seconds")),
                ]
                for r in history
            ],
        )
    else:
        page.paragraph("No epoch was logged.", css="note")


def _evaluation_section(
    page: Page, ev: Evaluation, trained: str, baseline: str | None, link: str | None
) -> None:
    page.section("Security evaluation", anchor="evaluation")
    models = [m for m in (trained, baseline) if m is not None and m in ev.models]
    page.paragraph(
        f"{', '.join(models)} on {ev.meta.get('data', 'data')} ({ev.samples} samples) under the default attack "
        "suite of each model (evasion.evaluate, with its self-check); the worst case per sample over every "
        "attack of a norm."
    )
    for model in models:
        masked = masking_flags(ev, model)
        if masked:
            page.flag(
                f"{model}: gradient masking flagged ({', '.join(masked)}): its white-box numbers are not to be "
                "trusted; the robust accuracies below overstate its robustness (break it with the DLR/margin "
                "loss, larger budgets or transfer attacks).",
                level="bad",
            )
        elif any(c.model == model for c in ev.checks):
            codes = sorted({c.code for c in ev.checks if c.model == model})
            page.flag(
                f"{model}: attack-failure flags ({', '.join(codes)}); see the checks below.", level="warn"
            )
        else:
            page.flag(f"{model}: no attack-failure flag fired.", level="ok")
    for norm in ev.norms:
        page.svg(
            worst_case_figure(ev, models, norm),
            "Worst-case accuracy vs. the maximum perturbation, trained model beside the standard one.",
        )
        grid = ev.worst_case(models[0], norm).epsilons
        page.table(
            ["model", *[f"eps {e:g}" for e in grid]],
            [[m, *ev.worst_case(m, norm).accuracy] for m in models],
        )
        for model in models:
            curves = [c for c in ev.curves() if c.model == model and c.norm == norm]
            if curves:
                page.svg(curve_figure(curves, ev.worst_case(model, norm), f"{model}, {norm}"), "")
    flags = [c for c in ev.checks if c.model in models]
    page.heading("Attack-failure checks")
    if flags:
        for c in flags:
            where = "/".join(x for x in (c.model, c.attack) if x)
            page.flag(f"[{c.level}] {c.code} ({where}, epsilon {c.epsilon:g}): {c.message}", level=c.level)
    else:
        page.flag("All attack-failure checks passed.", level="ok")
    if link:
        page.raw_html(f'<p class="note">The full evaluation report: <a href="{link}">{link}</a></p>')


def build_training_report(
    summary: Mapping[str, Any],
    ev: Evaluation | None = None,
    *,
    trained: str = "trained",
    baseline: str | None = None,
    evaluation_link: str | None = None,
    notes: Sequence[str] = (),
) -> Page:
    """The page: ``summary`` is ``evasion train``'s ``training.json``; ``ev`` evaluates ``trained``
    (and ``baseline``, the standard model) under the default attacks (``None``: training only)."""
    page = Page(
        f"Training report: {summary.get('architecture', 'model')}",
        subtitle=f"{summary.get('data', '')}; generated {dt.datetime.now().isoformat(timespec='seconds')}",
    )
    page.nav([("training", "Training"), ("evaluation", "Security evaluation")])
    _training_section(page, summary)
    if ev is not None:
        _evaluation_section(page, ev, trained, baseline, evaluation_link)
    else:
        page.section("Security evaluation", anchor="evaluation")
        page.paragraph("Not run.", css="note")
    for note in notes:
        page.flag(note, level="warn")
    return page


def write_training_report(
    path: str | os.PathLike[str],
    summary: Mapping[str, Any],
    ev: Evaluation | None = None,
    **kwargs: Any,
) -> Path:
    """Render and write the report atomically."""
    return build_training_report(summary, ev, **kwargs).write(path)
