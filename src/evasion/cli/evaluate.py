"""`evasion evaluate [CONFIG]`: the main job, security evaluation curves end to end.

Reads a TOML config (the embedded default without one), resolves every name before anything is
written, runs :func:`evasion.evaluation.evaluate` into a resumable run folder with progress bars,
writes the HTML report and prints a summary. Re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import attacks, datasets, models
from ..attacks import Attack
from ..config import AttackConfig, Config, ModelConfig, load_config
from ..datasets.base import Dataset
from ..defenses.detector import Detector, threshold_for_fpr
from ..errors import ConfigError, StoreError, UnknownNameError
from ..evaluation import AttackSpec, Evaluation, ProgressEvent, evaluate
from ..evaluation.engine import Engine
from ..models.classifier import Classifier
from ..store import RunStore
from ..store.catalog import DEFAULT_ROOT
from ..threat_model import ThreatModel
from .common import ProgressBar, environment, pick_device, progress, write_json

__all__ = ["add_parser", "build", "run"]

log = logging.getLogger("evasion")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="security evaluation curves of models under attacks (the main job; resumable)",
        description="Security evaluation: accuracy vs. perturbation budget per attack and worst case, "
        "attack-failure checks, an HTML report. Without CONFIG it runs the embedded default "
        "(mnist-cnn undefended, with a reject option and with a detector subnetwork on layer pool1, "
        "on 200 mnist5k test images; FGSM, PGD-Linf, APGD, DeepFool, C&W, PGD-L2 and the dynamic "
        "adversary, an adaptive attack on classifier and detector together; the detector is trained "
        "once, about 15 s, and cached). "
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


#: ``defense_params`` of the "detector" defence and their defaults: the static detector of
#: `evasion reproduce detector` (its ``eps*`` on mnist-cnn: BIM L∞ at 0.16 = 2 paper units, the
#: smallest of 0.08/0.16/0.24/0.32 that brings the classifier below 30% accuracy)
DETECTOR_DEFAULTS: dict[str, Any] = {
    "layer": "pool1",  # where the detector is attached (the paper's AD(2)-like depth on mnist-cnn)
    "attack": "bim",  # static attack that makes the training examples (on the bare classifier)
    "epsilon": 0.16,  # its L∞ budget
    "samples": 1000,  # training points of the train split (+ samples // 4 held-out validation points)
    "fpr": 0.05,  # threshold: at most 5% of the clean validation points are rejected
    "epochs": 3,
    "width": 0.25,  # the paper's 96/192/192 channels x 0.25 = 24/48/48
    "seed": 0,  # detector init, data shuffle, attack randomness, mini-batch order
}
#: optimiser settings of the experiment (Adam, beta1 0.99 as in the paper, a larger lr for 3 epochs)
DETECTOR_LR, DETECTOR_BATCH_SIZE = 1e-3, 64
#: bump when the training procedure changes: cached detectors of older versions are not reused
_DETECTOR_VERSION = 1


def _detector_params(mc: ModelConfig) -> dict[str, Any]:
    """``defense_params`` of a detector model, checked and completed with the defaults."""
    params = dict(mc.defense_params)
    unknown = sorted(set(params) - set(DETECTOR_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"model {mc.name!r}: unknown defense_params {', '.join(unknown)} for 'detector'; "
            f"valid: {', '.join(DETECTOR_DEFAULTS)}"
        )
    p = {**DETECTOR_DEFAULTS, **params}

    def bad(key: str, what: str) -> ConfigError:
        return ConfigError(f"model {mc.name!r}: defense_params.{key} must be {what}, got {p[key]!r}")

    def number(key: str) -> float:
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(key, "a finite number")
        return float(v)

    def integer(key: str, minimum: int) -> int:
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise bad(key, f"an integer >= {minimum}")
        return int(v)

    for key in ("layer", "attack"):
        if not isinstance(p[key], str) or not p[key].strip():
            raise bad(key, "a non-empty name")
    if number("epsilon") <= 0:
        raise bad("epsilon", "a number > 0 (the L∞ budget of the training attack)")
    if not 0.0 <= number("fpr") <= 1.0:
        raise bad("fpr", "a false-positive rate in [0, 1]")
    if not 0.0 < number("width") <= 16.0:
        raise bad("width", "a number in (0, 16]")
    return {
        "layer": p["layer"],
        "attack": p["attack"],
        "epsilon": float(p["epsilon"]),
        "samples": integer("samples", 20),
        "fpr": float(p["fpr"]),
        "epochs": integer("epochs", 1),
        "width": float(p["width"]),
        "seed": integer("seed", 0),
    }


def _training_attack(mc: ModelConfig, params: dict[str, Any]) -> Attack:
    """The static attack of a detector's training examples, as the experiment runs it.

    Every step is taken and the last iterate kept (``early_stop=False, keep="last"``), also on
    points the classifier already gets wrong; BIM takes 10 steps of ``epsilon / 2`` (the
    experiment's alpha = 1 paper unit at its eps* of 2 units).
    """
    try:
        cls = attacks.get(params["attack"])
    except UnknownNameError as exc:
        raise ConfigError(f"model {mc.name!r}: defense_params.attack: {exc}") from None
    if "linf" not in cls.norms:
        raise ConfigError(
            f"model {mc.name!r}: defense_params.attack {params['attack']!r} has no L∞ version; "
            f"its norms: {', '.join(cls.norms)}"
        )
    valid = attacks.parameters(cls)
    kwargs: dict[str, Any] = {k: v for k, v in (("early_stop", False), ("keep", "last")) if k in valid}
    if cls.name == "bim":
        kwargs.update(steps=10, step_size=params["epsilon"] / 2)
    return attacks.make(cls.name, **kwargs)


def _train_detector(
    detector: Detector,
    attack: Attack,
    threat: ThreatModel,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: dict[str, Any],
) -> dict[str, Any]:
    """Static training of ``detector`` (in place) and its threshold; the payload to cache.

    The adversarial examples of the training and validation points come from ``attack`` on the
    bare classifier; the epoch of best validation detectability is kept; the threshold rejects a
    fraction ``fpr`` of the clean validation points.
    """
    from ..defenses.detector_training import TrainingConfig, adversarial_examples, fit_detector

    started = time.perf_counter()
    clf = detector.classifier
    gen = torch.Generator().manual_seed(params["seed"])
    adv = adversarial_examples(clf, *train, attack, threat, generator=gen)
    val_adv = adversarial_examples(clf, *val, attack, threat, generator=gen)
    config = TrainingConfig(
        epochs=params["epochs"], lr=DETECTOR_LR, batch_size=DETECTOR_BATCH_SIZE, seed=params["seed"]
    )
    training = fit_detector(detector, train[0], adv, val[0], val_adv, config)
    p_clean, p_adv = detector.probability(val[0]), detector.probability(val_adv)
    threshold = threshold_for_fpr(p_clean, params["fpr"])
    stats = {
        "val_fpr": float((p_clean > threshold).float().mean()),
        "val_detection_rate": float((p_adv > threshold).float().mean()),
        "val_classifier_accuracy": float((clf.predict(val_adv) == val[1]).float().mean()),
        "train_seconds": round(time.perf_counter() - started, 2),
        "training": training.to_dict(),
    }
    state = {k: v.detach().cpu().clone() for k, v in detector.net.state_dict().items()}
    return {"state_dict": state, "threshold": threshold, "stats": stats}


def _detector(clf: Classifier, mc: ModelConfig, config: Config) -> Classifier:
    """Metzen et al.'s detector subnetwork on a layer of the model: flagged inputs are rejected.

    A static detector as in `evasion reproduce detector` (see :data:`DETECTOR_DEFAULTS` for the
    ``defense_params``: layer, attack, epsilon, samples, fpr, epochs, width, seed): trained on
    ``samples`` points of the dataset's train split (a fixed seeded shuffle) and their adversarial
    examples, its threshold set for the false-positive rate ``fpr`` on ``samples // 4`` further
    held-out clean points. The weights and the threshold are cached in the user cache folder
    under a digest of the classifier's weights, the training data and every parameter, so that
    re-running or resuming an evaluation loads them instead of training again.
    """
    from ..defenses.cached import digest, load_or_train
    from ..defenses.detected import DetectedClassifier
    from ..evaluation.engine import data_fingerprint, fingerprint

    params = _detector_params(mc)
    attack = _training_attack(mc, params)
    detector = Detector.attach(clf, params["layer"], width=params["width"], seed=params["seed"])
    train = datasets.load(config.data.name, split="train")
    n, n_val = params["samples"], max(10, params["samples"] // 4)
    if n + n_val > len(train):
        raise ConfigError(
            f"model {mc.name!r}: defense_params.samples = {n} needs {n + n_val} images of the train split "
            f"({n} + {n_val} held out), but {config.data.name} has {len(train)}"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(params["seed"]))
    x, y = train.x[order[: n + n_val]], train.y[order[: n + n_val]]
    key = digest(_DETECTOR_VERSION, fingerprint(clf), data_fingerprint(x, y), params, repr(attack))
    x, y = x.to(clf.device), y.to(clf.device)
    threat = ThreatModel("linf", params["epsilon"])

    def train_it() -> dict[str, Any]:
        log.info("training the detector of %r (%d points, %s; cached afterwards)", mc.name, n, attack.name)
        fresh = Detector.attach(clf, params["layer"], width=params["width"], seed=params["seed"])
        payload = _train_detector(fresh, attack, threat, (x[:n], y[:n]), (x[n:], y[n:]), params)
        s = payload["stats"]
        log.info(
            "trained the detector of %r in %.1f s: %.3f of the held-out adversarial examples detected, "
            "%.3f of the clean ones rejected",
            mc.name,
            s["train_seconds"],
            s["val_detection_rate"],
            s["val_fpr"],
        )
        return payload

    def use(payload: dict[str, Any]) -> float:
        """Load the payload into ``detector``; raises if it does not fit (the entry is then retrained)."""
        detector.net.load_state_dict(payload["state_dict"])
        threshold = payload["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, float) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold {threshold!r} is not a probability")
        return threshold

    def meta(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": mc.model or mc.name,
            "data": config.data.name,
            "params": params,
            "attack": repr(attack),
            "threshold": payload["threshold"],
            **payload["stats"],
        }

    payload, _ = load_or_train(
        "detectors", key, train_it, meta=meta, what=f"detector of {mc.name!r}", check=use
    )
    threshold = use(payload)
    detector.eval()
    return DetectedClassifier(clf, detector, threshold, name=mc.name)


DEFENCES: dict[str, Callable[[Classifier, ModelConfig, Config], Classifier]] = {
    "reject": _reject,
    "detector": _detector,
}


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
