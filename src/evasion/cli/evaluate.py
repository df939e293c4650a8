"""`evasion evaluate [CONFIG]`: the main job, security evaluation curves end to end.

Reads a TOML config (the embedded default without one), resolves every name before anything is
written, runs :func:`evasion.evaluation.evaluate` into a resumable run folder with progress bars,
writes the HTML report and prints a summary. Re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import attacks, datasets, models
from ..config import AttackConfig, Config, ModelConfig, load_config
from ..datasets.base import Dataset
from ..errors import ConfigError, StoreError, UnknownNameError
from ..evaluation import AttackSpec, Evaluation, ProgressEvent, evaluate
from ..evaluation.engine import Engine
from ..models.classifier import Classifier
from ..store import RunStore
from ..store.catalog import DEFAULT_ROOT
from .common import ProgressBar, environment, pick_device, progress, write_json

__all__ = ["add_parser", "build", "run"]

log = logging.getLogger("evasion")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="security evaluation curves of models under attacks (the main job; resumable)",
        description="Security evaluation: accuracy vs. perturbation budget per attack and worst case, "
        "attack-failure checks, an HTML report. Without CONFIG it runs the embedded default "
        "(mnist-cnn without and with a reject option on 300 mnist5k test images; FGSM, PGD-Linf, "
        "APGD, DeepFool, C&W, PGD-L2). "
        "Re-running the same command resumes an interrupted run and computes only what is new.",
    )
    p.add_argument("config", nargs="?", type=Path, help="TOML config (default: the embedded default)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<run.name>)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="where cells run")
    p.add_argument("--address", help="Ray cluster address for --engine ray (default: a local instance)")
    p.add_argument("--device", help="override run.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--samples", type=int, help="override data.samples (the first N inputs)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    p.set_defaults(func=run)


# -- building the inputs of evaluate() from a config -------------------------------------------------
def _dataset(config: Config) -> Dataset:
    data = datasets.load(config.data.name, split=config.data.split)
    if config.data.shuffle:  # files are often sorted by class: a fixed shuffle spreads the classes
        generator = torch.Generator().manual_seed(config.data.shuffle_seed)
        data = data.subset(torch.randperm(len(data), generator=generator))
    if config.data.samples:
        data = data.head(config.data.samples)
    return data


def _reject(clf: Classifier, mc: ModelConfig, config: Config) -> Classifier:
    """Melis et al.'s reject option on the model's scores, thresholds calibrated on training data.

    ``defense_params``: ``fnr_increase`` (default 0.05: each class's false-negative rate rises by
    5%, the paper's conservative setting), ``samples`` (calibration samples, default 2000).
    """
    from ..defenses.reject import ThresholdReject, calibrate_threshold

    params = dict(mc.defense_params)
    unknown = sorted(set(params) - {"fnr_increase", "samples"})
    if unknown:
        raise ConfigError(
            f"unknown defense_params {', '.join(unknown)} for 'reject'; valid: fnr_increase, samples"
        )
    train = datasets.load(config.data.name, split="train")
    n = params.get("samples", 2000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise ConfigError(f"defense_params.samples must be an integer >= 10, got {n!r}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    calibration = train.subset(order)
    scores = clf.class_scores(clf.scores(calibration.x))
    theta = calibrate_threshold(scores, calibration.y.to(scores.device), params.get("fnr_increase", 0.05))
    return ThresholdReject(clf, theta, name=mc.name)


DEFENCES: dict[str, Callable[[Classifier, ModelConfig, Config], Classifier]] = {"reject": _reject}


def _model(mc: ModelConfig, device: torch.device, config: Config) -> Classifier:
    kwargs: dict[str, Any] = dict(mc.options)
    if mc.architecture:
        kwargs["architecture"] = mc.architecture
    if mc.input_shape:
        kwargs["input_shape"] = mc.input_shape
    clf = models.load(mc.model, device=device, **kwargs)
    if not mc.defense:
        return clf
    from .. import defenses

    make = getattr(defenses, "make", None)  # a registry of defences, once the package has one
    if mc.defense in DEFENCES:
        defended = DEFENCES[mc.defense](clf, mc, config)
    elif make is not None:
        defended = make(mc.defense, clf, **mc.defense_params)
    else:
        raise UnknownNameError("defence", mc.defense, list(DEFENCES))
    if not isinstance(defended, Classifier):
        raise ConfigError(f"defence {mc.defense!r} did not return a Classifier")
    return defended


def _targets(ac: AttackConfig, num_classes: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if ac.target is None:
        return None
    if ac.target == "next":
        return lambda y: (y + 1) % num_classes
    if not isinstance(ac.target, int) or ac.target >= num_classes:
        raise ConfigError(f"attack {ac.name!r}: target {ac.target!r} is not a class index < {num_classes}")
    target = int(ac.target)
    return lambda y: torch.full_like(y, target)


def _patch(ac: AttackConfig, shape: tuple[int, int, int]) -> torch.Tensor | None:
    if not ac.patch:
        return None
    top, left, height, width = ac.patch
    _, h, w = shape
    if height < 1 or width < 1 or top + height > h or left + width > w:
        raise ConfigError(f"attack {ac.name!r}: patch {list(ac.patch)} does not fit in {h}x{w} images")
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def build(config: Config, device: torch.device) -> tuple[dict[str, Classifier], Dataset, list[AttackSpec]]:
    """Resolve every name of a config (data, models, defences, attacks) before anything runs."""
    data = _dataset(config)
    clfs = {mc.name: _model(mc, device, config) for mc in config.models}
    specs = []
    for ac in config.attacks:
        targets = _targets(ac, data.num_classes)
        specs.append(
            AttackSpec(
                attacks.make(ac.attack, **ac.params),
                ac.norm,
                list(ac.epsilons),
                name=ac.name,
                targeted=targets is not None,
                targets=targets,
                mask=_patch(ac, data.input_shape),
            )
        )
    return clfs, data, specs


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
            self.bar.advance(self.tasks[""])
            task = self.tasks.get(event.group)
            if task is not None:
                cell = event.cell
                where = "clean" if cell.kind == "clean" else f"eps {cell.epsilon:g}"
                label = f"{event.group} ({where}, batch {cell.batch})".replace("[", "(").replace("]", ")")
                self.bar.update(task, description=label)  # no brackets: rich reads them as markup
                self.bar.advance(task)


def _engine(args: argparse.Namespace) -> Engine | None:
    if args.engine != "ray":
        if args.address:
            raise ConfigError("--address needs --engine ray")
        return None
    from ..engines.ray import RayEngine

    return RayEngine(address=args.address)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.samples is not None:
        if args.samples < 0:
            raise ConfigError(f"--samples must be >= 0, got {args.samples}")
        from dataclasses import replace

        config = replace(config, data=replace(config.data, samples=args.samples))
    device = pick_device(args.device or config.run.device)
    clfs, data, specs = build(config, device)
    engine = _engine(args)
    out = args.out or DEFAULT_ROOT / config.run.name
    started = time.time()
    session = {"command": "evaluate", "config": config.source, "engine": args.engine, **environment(device)}
    with RunStore(out, session=session, config_text=config.to_toml()) as store, progress(args.quiet) as bar:
        bars = Bars(bar)
        evaluate(
            clfs,
            data,
            specs,
            batch_size=config.run.batch_size,
            seed=config.run.seed,
            progress=bars,
            store=store,
            engine=engine,
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
    flags = ev.checks
    lines.append(f"attack-failure flags: {len(flags)}" if flags else "attack-failure checks: all passed")
    lines += [f"  [{c.level}] {c.code} ({c.model}/{c.attack or '-'}): {c.message}" for c in flags]
    lines.append(f"run folder: {out}")
    if report is not None:
        lines.append(f"report: {report}")
    return "\n".join(lines)
