"""`evasion train ARCH --data DATA`: train a zoo architecture on a dataset, save its state dict.

For architectures the zoo lists without weights (e.g. ``resnet32-cifar``, the CIFAR-10 ResNet of
Metzen et al.), or to retrain any zoo architecture on other data. Writes ``OUT`` (a state dict,
loadable with ``models.load(OUT, architecture=ARCH)``) and ``OUT.json`` (recipe, accuracy,
checksum). Training is the library's seeded trainer (Adam, cosine learning rate, cross-entropy).

With ``--adversarial RECIPE --epsilon E`` (or ``--distill T``) it trains with
:class:`evasion.training.AdversarialTrainer` instead, and ``--out`` is a folder: ``model.pt`` (the
state dict), ``training.json`` (the recipe, the per-epoch log, catastrophic-overfitting events,
test accuracies), ``checkpoints/`` (one per epoch, written atomically) and ``report.html`` (training
curves with catastrophic-overfitting events, and the security evaluation curves of the trained
model beside the standard model, computed by :func:`evasion.evaluation.evaluate` into a run store
under ``evaluation/``; ``--no-report`` skips it). Re-running the same command after a crash resumes
from the last checkpoint and ends with the same weights.
"""

from __future__ import annotations

import argparse
import io
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import datasets
from .._cache import atomic_write_bytes, sha256_file
from ..errors import ConfigError, InputError
from ..models import zoo
from ..models.io import resolve_architecture
from ..models.training import accuracy, train_classifier
from ..threat_model import ThreatModel
from ..training import RECIPES, SCHEDULES, AdversarialTrainer, CheckpointDir, TrainConfig, distill
from ..training.trainer import EpochRecord
from .common import environment, pick_device, progress, write_json

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a zoo architecture (e.g. resnet32-cifar) on a dataset and save the weights",
        description="Train an architecture on a dataset (a registered name or a path: CIFAR python "
        "batches, MNIST IDX, an image folder, .npz). Writes OUT (state dict) and OUT.json.",
    )
    p.add_argument(
        "architecture", help="zoo architecture (see `evasion zoo list`) or package.module:callable"
    )
    p.add_argument("--data", required=True, help="dataset name or path, e.g. ~/data/cifar-10-batches-py")
    p.add_argument("--split", default="train", choices=["train", "all"], help="split to train on")
    p.add_argument("--test-split", default="test", help="split to report accuracy on ('none' to skip)")
    p.add_argument("-n", "--num-samples", type=int, help="train on the first N samples only")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--augment-shift", type=int, default=0, help="random shifts of up to this many pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, help="weights file (default: out/train/ARCH.pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    adv = p.add_argument_group(
        "adversarial training (--out is then a folder: model.pt, training.json, checkpoints/, report.html)"
    )
    adv.add_argument(
        "--adversarial",
        metavar="RECIPE",
        help=f"train on adversarial examples: {', '.join(RECIPES)} (none: standard training, same outputs)",
    )
    adv.add_argument("--epsilon", type=float, help="training budget in --norm (required with a recipe)")
    adv.add_argument("--norm", default="linf", help="linf or l2 (default linf)")
    adv.add_argument("--beta", type=float, default=6.0, help="trades: weight of the KL term (default 6)")
    adv.add_argument("--adv-weight", type=float, default=0.5, help="fgsm: weight of the adversarial loss")
    adv.add_argument("--steps", type=int, default=10, help="pgd / trades inner steps (default 10)")
    adv.add_argument(
        "--warmup-epochs",
        type=float,
        help="grow epsilon linearly from 0 over this many epochs (default: a quarter of the epochs)",
    )
    adv.add_argument("--schedule", default="cosine", help=f"learning rate: {', '.join(SCHEDULES)}")
    adv.add_argument(
        "--val-size",
        type=int,
        default=500,
        help="training samples held out for the per-epoch clean/robust accuracy (and fgsm-rs's check)",
    )
    adv.add_argument("--optimizer", default="adam", help="adam or sgd (momentum 0.9) (default adam)")
    adv.add_argument(
        "--rs-step",
        type=float,
        default=1.25,
        help="fgsm-rs: step in units of epsilon (default 1.25, Wong et al.)",
    )
    adv.add_argument(
        "--rs-init",
        type=float,
        default=1.0,
        help="fgsm-rs: radius of the random start in units of epsilon (default 1; 1.5 holds on mnist5k at 0.3)",
    )
    adv.add_argument(
        "--no-report",
        action="store_true",
        help="skip report.html (training curves and the security evaluation beside the standard model)",
    )
    adv.add_argument(
        "--report-samples",
        type=int,
        default=100,
        help="test images the report's security evaluation attacks (default 100)",
    )
    adv.add_argument(
        "--baseline",
        default="auto",
        help="the standard model the report compares with: a zoo name or model file of the same "
        "architecture, or none (default auto: the zoo model of ARCH when it was trained on --data)",
    )
    adv.add_argument(
        "--distill",
        type=float,
        metavar="T",
        help="defensive distillation at temperature T (e.g. 100): a gradient-masking baseline to break",
    )
    p.set_defaults(func=run)


def _training_data(args: argparse.Namespace, info: zoo.ModelInfo | None) -> datasets.Dataset:
    data = datasets.load(args.data, split=args.split)
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
        data = data.head(args.num_samples)
    if info is not None:
        if tuple(data.input_shape) != tuple(info.input_shape):
            raise InputError(
                f"dataset {args.data!r} has images {data.input_shape}, architecture {info.name!r} "
                f"expects {info.input_shape}"
            )
        if data.num_classes != info.num_classes:
            raise ConfigError(
                f"dataset {args.data!r} has {data.num_classes} classes, architecture {info.name!r} has "
                f"{info.num_classes} outputs"
            )
    return data


def _fit(
    args: argparse.Namespace, build: Callable[[], nn.Module], train: datasets.Dataset, device: torch.device
) -> nn.Module:
    """Train a fresh module with a progress bar over the epochs."""
    with progress(args.quiet) as bar:
        task = bar.add(f"train {args.architecture} on {train.name}", args.epochs)

        def tick(epoch: int, loss: float) -> None:
            bar.update(task, description=f"train {args.architecture}: epoch {epoch}, loss {loss:.4f}")
            bar.advance(task)

        return train_classifier(
            build(),
            train,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            weight_decay=args.weight_decay,
            augment_shift=args.augment_shift,
            device=device,
            progress=tick,
        )


def _save(module: nn.Module, out: Path) -> None:
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in module.state_dict().items()}, buffer)
    atomic_write_bytes(out, buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    if args.adversarial is not None or args.distill is not None:
        return run_adversarial(args)
    for flag in ("epsilon", "warmup_epochs"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} needs --adversarial RECIPE")
    build = resolve_architecture(args.architecture)
    info = zoo.model_info(args.architecture, missing_ok=True)
    device = pick_device(args.device)
    train = _training_data(args, info)
    out = args.out or Path("out/train") / f"{args.architecture.replace(':', '_')}.pt"
    started = time.perf_counter()
    module = _fit(args, build, train, device)
    seconds = time.perf_counter() - started
    test_acc = (
        None
        if args.test_split == "none"
        else accuracy(module, datasets.load(args.data, split=args.test_split))
    )
    _save(module, out)
    recipe = ("epochs", "lr", "batch_size", "weight_decay", "augment_shift", "seed")
    summary = {
        "architecture": args.architecture,
        "data": f"{args.data}:{args.split}",
        "samples": len(train),
        "recipe": {k: getattr(args, k) for k in recipe},
        "train_accuracy": accuracy(module, train),
        "test_accuracy": test_acc,
        "seconds": round(seconds, 2),
        "sha256": sha256_file(out),
        "load_with": f"models.load({str(out)!r}, architecture={args.architecture!r})",
        "environment": environment(device),
    }
    write_json(out.with_name(out.name + ".json"), summary)
    acc = "n/a" if test_acc is None else f"{test_acc:.4f}"
    print(
        f"trained {args.architecture} on {len(train)} images of {args.data} in {seconds:.1f} s: "
        f"train accuracy {summary['train_accuracy']:.4f}, {args.test_split} accuracy {acc}\n"
        f"  saved {out} (+ .json); load with {summary['load_with']}"
    )
    return 0


# -- adversarial training ----------------------------------------------------------------------
def _adversarial_config(args: argparse.Namespace) -> TrainConfig:
    """The trainer config from the options (one-line errors for every bad value)."""
    recipe = "none" if args.adversarial is None else args.adversarial
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r} for --adversarial; valid: {', '.join(RECIPES)}")
    if args.distill is not None:
        if recipe != "none":
            raise ConfigError("--distill trains without adversarial examples: drop --adversarial or use none")
        if not args.distill > 1:
            raise ConfigError(f"--distill T needs a temperature > 1, got {args.distill}")
    if recipe == "none":
        if args.epsilon is not None and args.epsilon != 0:
            raise ConfigError("--epsilon has no effect with --adversarial none")
        epsilon = 0.0
    else:
        if args.epsilon is None:
            raise ConfigError(f"--adversarial {recipe} needs --epsilon (e.g. 0.3 for MNIST in L-inf)")
        if not args.epsilon > 0:
            raise ConfigError(f"--epsilon must be > 0, got {args.epsilon}")
        epsilon = args.epsilon
    norm = ThreatModel(args.norm, 0.0).norm
    if norm not in ("linf", "l2"):
        raise ConfigError(f"--norm must be linf or l2, got {args.norm!r}")
    warmup = (
        args.warmup_epochs
        if args.warmup_epochs is not None
        else (0.0 if recipe == "none" else args.epochs / 4)
    )
    if args.val_size < 0:
        raise ConfigError(f"--val-size must be >= 0, got {args.val_size}")
    if args.report_samples < 1:
        raise ConfigError(f"--report-samples must be >= 1, got {args.report_samples}")
    return TrainConfig(
        recipe=recipe,
        epsilon=epsilon,
        norm=norm,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        schedule=args.schedule,
        optimizer=args.optimizer,
        rs_step=args.rs_step,
        rs_init=args.rs_init,
        weight_decay=args.weight_decay,
        warmup_epochs=warmup,
        adv_weight=args.adv_weight,
        beta=args.beta,
        steps=args.steps,
        temperature=1.0 if args.distill is None else float(args.distill),
        augment_shift=args.augment_shift,
        check_size=max(1, min(256, args.val_size)),
    )


def _split(train: datasets.Dataset, size: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(training part, seeded validation part of ``size`` samples; ``None`` when size is 0)."""
    if size == 0:
        return train, None
    if size >= len(train):
        raise ConfigError(f"--val-size {size} leaves nothing to train on ({len(train)} samples)")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    return train.subset(order[size:].sort().values), train.subset(order[:size])


def _robust_accuracy(clf: Any, test: datasets.Dataset, config: TrainConfig, n: int = 500) -> float | None:
    """PGD-20 accuracy at the training budget on the first ``n`` test samples."""
    from ..attacks import PGD

    if config.epsilon == 0:
        return None
    x, y = test.x[:n], test.y[:n]
    threat = ThreatModel(config.norm, config.epsilon, config.bounds)
    result = PGD(steps=20)(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(config.seed))
    return result.robust_accuracy


def _baseline(args: argparse.Namespace, info: zoo.ModelInfo | None) -> str | None:
    """The standard model the report compares with (a zoo name or a model file), or ``None``."""
    choice = args.baseline
    if choice == "none" or args.no_report or args.test_split == "none":
        return None
    if choice == "auto":
        return info.name if info is not None and info.dataset == args.data else None
    if zoo.model_info(choice, missing_ok=True) is None and not Path(choice).is_file():
        raise ConfigError(f"--baseline {choice!r} is neither a zoo model nor a model file (or use none)")
    return str(choice)


def _report_grid(config: TrainConfig, data: datasets.Dataset) -> list[float]:
    """The report's epsilons: 1/4 to 2 times the training epsilon (the default config's grid when 0)."""
    if config.epsilon == 0:
        return [0.05, 0.1, 0.2, 0.3] if config.norm == "linf" else [0.5, 1.0, 2.0, 3.0]
    span = config.bounds[1] - config.bounds[0]
    largest = span if config.norm == "linf" else span * math.sqrt(data.x[0].numel())
    grid = {round(config.epsilon * f, 6) for f in (0.25, 0.5, 1.0, 1.5, 2.0)}
    return sorted(e for e in grid if 0 < e <= largest)


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "model"


def _report(
    args: argparse.Namespace,
    out: Path,
    config: TrainConfig,
    summary: dict[str, Any],
    baseline: str | None,
    data: datasets.Dataset,
    device: torch.device,
) -> Path:
    """Evaluate the trained model beside ``baseline`` (default suites, run store) and write report.html."""
    from ..build import build
    from ..config import parse_config
    from ..evaluation import evaluate
    from ..reports.evaluation_report import write_report
    from ..reports.training_report import write_training_report
    from ..store import RunStore
    from .evaluate import Bars

    what = f"distilled-T{config.temperature:g}" if summary["distilled"] else config.recipe
    trained = f"{_label(args.architecture)}-{what}"
    models: list[dict[str, Any]] = [
        {"name": trained, "model": str((out / "model.pt").resolve()), "architecture": args.architecture}
    ]
    base_name = None
    if baseline is not None:
        base_name = f"{_label(Path(baseline).stem if Path(baseline).is_file() else baseline)} (standard)"
        entry: dict[str, Any] = {"name": base_name, "model": baseline}
        if Path(baseline).is_file():
            entry["architecture"] = args.architecture
        models.append(entry)
    raw = {
        "run": {"name": "training-report", "seed": args.seed, "batch_size": 200},
        "data": {
            "name": args.data,
            "split": args.test_split,
            "samples": args.report_samples,
            "shuffle": True,
        },
        "models": models,
        "epsilons": {config.norm: _report_grid(config, data)},
    }
    cfg = parse_config(raw, source=str(out / "training.json"))
    clfs, test, specs = build(cfg, device)
    folder = out / "evaluation" / str(summary["sha256"])[:12]  # a retrained model gets a fresh store
    session = {"command": "train (report)", **environment(device)}
    with RunStore(folder, session=session, config_text=cfg.to_toml()) as store, progress(args.quiet) as bar:
        evaluate(
            clfs,
            test,
            specs,
            self_check=True,
            batch_size=cfg.run.batch_size,
            seed=cfg.run.seed,
            progress=Bars(bar),
            store=store,
        )
        ev = store.evaluation()
    full = write_report(ev, folder / "report.html")
    notes = []
    if baseline is None:
        notes.append(
            "No standard model to compare with: pass --baseline (a zoo name or a model file of this architecture)."
        )
    return write_training_report(
        out / "report.html",
        summary,
        ev,
        trained=trained,
        baseline=base_name,
        evaluation_link=str(full.relative_to(out)),
        notes=notes,
    )


def run_adversarial(args: argparse.Namespace) -> int:
    """`evasion train ARCH --adversarial RECIPE --epsilon E --out DIR` (or ``--distill T``)."""
    config = _adversarial_config(args)
    out = args.out or Path("out/train") / args.architecture.replace(":", "_")
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"--out {out} is a file; adversarial training writes a folder (model.pt, training.json)"
        )
    build = resolve_architecture(args.architecture)
    info = zoo.model_info(args.architecture, missing_ok=True)
    device = pick_device(args.device)
    baseline = _baseline(args, info)
    data = _training_data(args, info)
    train, val = _split(data, args.val_size, args.seed)
    test = None if args.test_split == "none" else datasets.load(args.data, split=args.test_split)
    what = f"distill T={config.temperature:g}" if args.distill is not None else config.recipe
    started = time.perf_counter()
    with progress(args.quiet) as bar:
        phases = 2 if args.distill is not None else 1
        task = bar.add(f"{what} {args.architecture} on {train.name}", args.epochs * phases)

        def tick(record: EpochRecord) -> None:
            clean = "n/a" if record.val_clean is None else f"{record.val_clean:.3f}"
            robust = "n/a" if record.val_robust is None else f"{record.val_robust:.3f}"
            bar.update(
                task,
                description=f"{what} {args.architecture}: epoch {record.epoch}, loss {record.loss:.4f}, "
                f"val clean {clean}, robust {robust} (eps {record.epsilon:.3g})",
            )
            bar.advance(task)

        def fresh() -> nn.Module:
            return build().to(device)

        folder = CheckpointDir(out / "checkpoints")
        if args.distill is not None:
            teacher, result = distill(
                fresh,
                train,
                config,
                val=val,
                checkpoints=(
                    CheckpointDir(out / "checkpoints" / "teacher"),
                    CheckpointDir(out / "checkpoints" / "student"),
                ),
                progress=tick,
            )
        else:
            teacher = None
            result = AdversarialTrainer(config, checkpoints=folder, progress=tick).fit(fresh(), train, val)
    seconds = time.perf_counter() - started
    clf = result.classifier
    module = clf.module
    test_acc = None if test is None else accuracy(module, test)
    robust = None if test is None else _robust_accuracy(clf, test, config)
    model_path = out / "model.pt"
    _save(module, model_path)
    summary = {
        "architecture": args.architecture,
        "data": f"{args.data}:{args.split}",
        "samples": len(train),
        "validation_samples": 0 if val is None else len(val),
        "config": config.fingerprint(),
        "distilled": args.distill is not None,
        "log": result.log(),
        "teacher_log": None if teacher is None else teacher.log(),
        "test_accuracy": test_acc,
        "test_robust_accuracy_pgd20": robust,
        "seconds": round(seconds, 2),
        "sha256": sha256_file(model_path),
        "load_with": f"models.load({str(model_path)!r}, architecture={args.architecture!r})",
        "environment": environment(device),
    }
    write_json(out / "training.json", summary)
    report = None
    if not args.no_report and test is not None:
        report = _report(args, out, config, summary, baseline, data, device)
    acc = "n/a" if test_acc is None else f"{test_acc:.4f}"
    rob = "" if robust is None else f", PGD-20 accuracy at {config.norm} {config.epsilon:g}: {robust:.4f}"
    resumed = "" if result.resumed_from is None else f" (resumed after epoch {result.resumed_from})"
    events = "".join(f"\n  event: {e['event']} at epoch {e['epoch']}: {e['action']}" for e in result.events)
    print(
        f"trained {args.architecture} ({what}) on {len(train)} images of {args.data} in {seconds:.1f} s"
        f"{resumed}: {args.test_split} accuracy {acc}{rob}{events}\n"
        f"  saved {model_path}, {out / 'training.json'}; load with {summary['load_with']}"
        + ("" if report is None else f"\n  report: {report}")
    )
    return 0
