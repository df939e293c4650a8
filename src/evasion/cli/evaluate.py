"""`evasion evaluate [CONFIG]`: the main job, security evaluation curves end to end.

Reads a TOML config (the embedded default without one), resolves every name before anything is
written (:func:`evasion.build.build`: data, models with their defences, attacks), runs
:func:`evasion.evaluation.evaluate` into a resumable run folder with progress bars, writes the
HTML report and prints a summary. Re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ..build import build
from ..config import RunConfig, load_config
from ..errors import ConfigError, StoreError
from ..evaluation import Engine, Evaluation, ProgressEvent, evaluate
from ..evaluation.engine import certification_plan
from ..models.classifier import Classifier
from ..runtime import auto_batch_size
from ..store import RunStore
from ..store.catalog import DEFAULT_ROOT
from .common import ProgressBar, environment, pick_device, progress, write_json

log = logging.getLogger("evasion")

__all__ = ["add_parser", "build", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="security evaluation curves of models under attacks (the main job; resumable)",
        description="Security evaluation: accuracy vs. perturbation budget per attack and worst case, "
        "attack-failure checks, an HTML report. Without CONFIG it runs the embedded default "
        "(mnist-cnn undefended, with a reject option and with a detector subnetwork on layer pool1, "
        "on 200 mnist5k test images, each under the default attack suite of its defence: APGD "
        "cascades, a margin that also sees the reject score, the dynamic adversary aimed at the "
        "detector's deployed threshold, a random-noise baseline, DeepFool and C&W on the undefended "
        "model; the detector is trained once, about 15 s, and cached). A config without [[attacks]] "
        "gets the same default suites. Every run adds a self-check per norm: a longer APGD that "
        "re-attacks what every attack left ([run] self_check = false turns it off). "
        "Re-running the same command resumes an interrupted run and computes only what is new. "
        'Verification: certify = ["ibp", "crown", "milp"] in a [[models]] table proves robustness per '
        'sample at the epsilons of its attacks (certify_norms = ["linf"] picks the norms; '
        "certify_options = {time_limit = 30} bounds the MILP per sample; milp is exact but L-inf only and "
        "for small ReLU networks); the summary and the report then show certified <= exact <= attacked "
        "accuracy per epsilon and the unknown band between them (docs/verification.md).",
    )
    p.add_argument(
        "config",
        nargs="?",
        type=Path,
        help="TOML config, or the name of an embedded one: default, thorough (the default suites plus "
        "the Square attack, 5000 queries; much slower) (default: the embedded default)",
    )
    p.add_argument("--out", type=Path, help="run folder (default: runs/<run.name>)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where cells run")
    p.add_argument("--address", help="Ray cluster address for --engine ray (default: a local instance)")
    p.add_argument("--device", help="override run.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--samples", type=int, help="override data.samples (the first N inputs)")
    p.add_argument(
        "--batch-size",
        help="override run.batch_size: a number, or auto (measured on this machine: the fastest batch "
        "on a CPU, the largest that fits on a GPU; recorded in the run, reused when it resumes)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    p.set_defaults(func=run)


# -- progress ------------------------------------------------------------------------------------
class Bars:
    """Maps :class:`ProgressEvent` s onto progress bars: all cells, and one bar per model/attack."""

    def __init__(self, bar: ProgressBar):
        self.bar = bar
        self.tasks: dict[str, int] = {}
        self.cached = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            self.tasks[""] = self.bar.add("all cells", event.total)
            for group, n in event.groups.items():
                self.tasks[group] = self.bar.add(group.replace("[", "(").replace("]", ")"), n)
        elif event.kind == "cell" and event.cell is not None:
            self.cached += int(event.cached)
            self.bar.advance(self.tasks[""], reused=event.cached)  # reused: not in the ETA
            task = self.tasks.get(event.group)
            if task is not None:
                cell = event.cell
                where = "clean" if cell.kind == "clean" else f"eps {cell.epsilon:g}"
                label = f"{event.group} ({where}, batch {cell.batch})".replace("[", "(").replace("]", ")")
                self.bar.update(task, description=label)  # no brackets: rich reads them as markup
                self.bar.advance(task, reused=event.cached)


def _engine(args: argparse.Namespace) -> Engine | None:
    if args.engine != "ray":
        if args.address:
            raise ConfigError("--address needs --engine ray")
        return None
    from ..engines.ray import RayEngine

    return RayEngine(address=args.address)


def _run_table(run: RunConfig) -> dict[str, object]:
    return {f.name: getattr(run, f.name) for f in fields(run) if f.name != "auto_batch"}


def _auto_batch(out: Path, clfs: dict[str, Classifier], x: Tensor) -> int:
    """``batch_size = "auto"``: the size a resumed run recorded, else one measured now."""
    db = out / "results.sqlite"
    if db.is_file():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'batch_size'").fetchone()
        except sqlite3.Error:
            row = None
        finally:
            con.close()
        recorded = str(row[0]) if row else ""
        if recorded.isdigit() and int(recorded) > 0:
            log.info("batch size %s (recorded in %s)", recorded, out)
            return int(recorded)
    sizes = [auto_batch_size(clf, x[:1], limit=max(1, len(x))) for clf in clfs.values()]
    size = min(sizes) if sizes else 1
    log.info("batch size %d (measured on this machine for %s)", size, ", ".join(clfs))
    return size


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.samples is not None:
        if args.samples < 0:
            raise ConfigError(f"--samples must be >= 0, got {args.samples}")
        config = replace(config, data=replace(config.data, samples=args.samples))
    if args.batch_size is not None:
        size = int(args.batch_size) if args.batch_size.strip().lstrip("-").isdigit() else args.batch_size
        config = replace(config, run=RunConfig.parse({**_run_table(config.run), "batch_size": size}))
    device = pick_device(args.device or config.run.device)
    clfs, data, specs = build(config, device)
    certify = config.certify_specs()
    certification_plan(certify, clfs, {str(s.name): s for s in specs}, data.x)  # refused before any write
    engine = _engine(args)
    out = args.out or DEFAULT_ROOT / config.run.name
    if config.run.auto_batch:
        size = _auto_batch(out, clfs, data.x)
        config = replace(config, run=replace(config.run, batch_size=size, auto_batch=False))
    started = time.time()
    session = {"command": "evaluate", "config": config.source, "engine": args.engine, **environment(device)}
    with RunStore(out, session=session, config_text=config.to_toml()) as store, progress(args.quiet) as bar:
        bars = Bars(bar)
        evaluate(
            clfs,
            data,
            specs,
            self_check=config.run.self_check,
            batch_size=config.run.batch_size,
            seed=config.run.seed,
            progress=bars,
            store=store,
            engine=engine,
            certify=certify,
        )
        ev = store.evaluation()
    seconds = time.time() - started
    try:
        report = None if args.no_report else _report(ev, out)
        write_json(
            out / "summary.json", {**ev.to_dict(), "seconds": round(seconds, 2), "cached_cells": bars.cached}
        )
    except OSError as exc:
        raise StoreError(
            f"cannot write the report or summary in {out} ({exc.strerror or exc}); the results are stored"
        ) from None
    print(summary(ev, out, report, seconds, bars.cached))
    return 0


def _report(ev: Evaluation, out: Path) -> Path:
    from ..reports.evaluation_report import write_report

    return write_report(ev, out / "report.html")


def sandwich_lines(ev: Evaluation, model: str) -> list[str]:
    """certified <= exact <= attacked accuracy per certified epsilon, the unknown band, and an
    ERROR line for a sample certified yet broken (a bug in a bound or an attack)."""
    lines = []
    norms = sorted(
        {ev.certifications[n].norm for n in ev.certification_names(model) if n in ev.certifications}
    )
    for norm in norms:
        rows = ev.sandwich(model, norm)
        if not rows:
            continue
        lines.append(f"  sandwich {norm} (certified <= exact <= attacked; unknown: unbroken, not proved):")
        missed = ev.missed_by_attacks(model, norm)
        for r in rows:
            methods = ", ".join(f"{m} {r.by_method[m]:.3f}" for m in ("ibp", "crown") if m in r.by_method)
            exact = "" if r.exact is None else f"  exact {r.exact:.3f} ({r.exact_unknown or 0:.3f} timed out)"
            if r.epsilon in missed:
                exact += f", {len(missed[r.epsilon])} breakable sample(s) the attacks missed"
            lines.append(
                f"    eps {r.epsilon:g}: certified {r.certified:.3f} ({methods or 'milp'}){exact}  "
                f"attacked {r.attacked:.3f}  unknown {r.unknown} of {r.samples}"
            )
            if r.contradictions:
                lines.append(
                    f"    ERROR eps {r.epsilon:g}: {r.contradictions} sample(s) certified yet broken by an attack: "
                    "a bug in a bound or an attack (report it)"
                )
    return lines


def summary(ev: Evaluation, out: Path, report: Path | None, seconds: float, cached: int = 0) -> str:
    """A short text summary: clean accuracy, robust accuracy per attack, flags, where things are."""
    lines = [f"evaluated {ev.samples} samples in {seconds:.1f} s ({cached} cells reused from {out})"]
    for model in ev.models:
        lines.append(f"{model}: clean accuracy {ev.clean_accuracy(model):.3f}")
        for curve in ev.curves():
            if curve.model != model:
                continue
            points = ", ".join(
                f"{e:g}: {a:.3f}" + (f" (+{r:.3f} rej.)" if r > 0 else "")
                for e, a, r in zip(curve.epsilons[1:], curve.accuracy[1:], curve.rejected[1:])
            )
            lines.append(f"  {curve.attack:<18} auc {curve.auc():.3f}  accuracy at eps {points}")
        lines += sandwich_lines(ev, model)
    flags = ev.checks
    lines.append(f"attack-failure flags: {len(flags)}" if flags else "attack-failure checks: all passed")
    lines += [f"  [{c.level}] {c.code} ({c.model}/{c.attack or '-'}): {c.message}" for c in flags]
    lines.append(f"run folder: {out}")
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)
