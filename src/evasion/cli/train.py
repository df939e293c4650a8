"""`evasion train ARCH --data DATA`: train a zoo architecture on a dataset, save its state dict.

For architectures the zoo lists without weights (e.g. ``resnet32-cifar``, the CIFAR-10 ResNet of
Metzen et al.), or to retrain any zoo architecture on other data. Writes ``OUT`` (a state dict,
loadable with ``models.load(OUT, architecture=ARCH)``) and ``OUT.json`` (recipe, accuracy,
checksum). Training is the library's seeded trainer (Adam, cosine learning rate, cross-entropy).
"""

from __future__ import annotations

import argparse
import io
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
