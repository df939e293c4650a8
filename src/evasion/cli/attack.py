"""`evasion attack`: run one attack on a dataset or a single image; save PNGs and a JSON summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import ThreatModel, attacks, datasets, models
from ..errors import ConfigError, InputError, MissingFileError
from ..reports.png import write_png
from .common import environment, pick_device, progress, write_json

__all__ = ["add_parser", "run"]

DEFAULT_EPSILON = {"linf": 0.1, "l2": 1.5, "l1": 10.0, "l0": 1.0}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "attack",
        help="run one attack on a dataset or an image, save adversarial PNGs and a JSON summary",
        description="Run one attack against a model. With no options: PGD (L∞, eps 0.1) on mnist-cnn "
        "over the mnist5k test split. Writes OUT/summary.json, OUT/adversarial.npz and PNG images.",
    )
    p.add_argument("--model", default="mnist-cnn", help="zoo name or model file (see `evasion zoo list`)")
    p.add_argument("--architecture", help="for model files: 'package.module:factory' that builds the module")
    p.add_argument("--input-shape", help="for model files: C,H,W")
    p.add_argument(
        "--trust", action="store_true", help="allow loading a pickled model file (runs code from it!)"
    )
    p.add_argument("--data", default="mnist5k", help="dataset name or path (see `evasion datasets list`)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--image", type=Path, help="attack this single image file instead of a dataset")
    p.add_argument("--label", type=int, help="true class of --image (default: the model's prediction)")
    p.add_argument("-n", "--num-samples", type=int, help="attack only the first N samples")
    p.add_argument("--attack", default="pgd", help=f"attack name: {', '.join(sorted(attacks.REGISTRY))}")
    p.add_argument("--norm", default="linf", choices=["linf", "l2", "l1", "l0"])
    p.add_argument(
        "--epsilon",
        "--eps",
        type=float,
        help="budget (default: 0.1 linf, 1.5 l2, 10 l1, 1 pixel l0; inf for minimum-norm)",
    )
    p.add_argument("--target", type=int, help="targeted attack towards this class")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="attack parameter, repeatable (e.g. steps=100)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=Path("out/attack"), help="output folder (created)")
    p.add_argument("--save-images", type=int, default=16, help="how many adversarial examples to save as PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    p.set_defaults(func=run)


def _params(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _load_model(args: argparse.Namespace, device: torch.device) -> models.Classifier:
    kwargs: dict[str, Any] = {"device": device}
    if args.architecture:
        kwargs["architecture"] = args.architecture
    if args.input_shape:
        try:
            kwargs["input_shape"] = tuple(int(v) for v in args.input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape must be C,H,W integers, got {args.input_shape!r}") from None
    if args.trust:
        kwargs["trust"] = True
    return models.load(args.model, **kwargs)


def _inputs(args: argparse.Namespace, model: models.Classifier) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Images, labels and where they came from (``--image`` without ``--label``: the model's prediction)."""
    if args.image is not None:
        from ..datasets.image import read_image

        x = read_image(args.image, model.input_shape)
        if args.label is not None and not 0 <= args.label < model.num_classes:
            raise ConfigError(f"--label must be a class index in [0, {model.num_classes}), got {args.label}")
        label = args.label if args.label is not None else int(model.predict(x)[0])
        return x, torch.tensor([label]), str(args.image)
    data = datasets.load(args.data, split=args.split)
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
        data = data.head(args.num_samples)
    if model.input_shape is not None and data.input_shape != model.input_shape:
        raise InputError(
            f"dataset {args.data!r} has images {data.input_shape}, model {args.model!r} expects {model.input_shape}"
        )
    return data.x, data.y, f"{args.data}:{args.split}"


def run(args: argparse.Namespace) -> int:
    if args.image is not None and not args.image.is_file():  # before loading the model (can be slow)
        what = "is a folder, not an image file" if args.image.is_dir() else "does not exist"
        raise MissingFileError(f"--image {str(args.image)!r} {what}")
    device = pick_device(args.device)
    attack = attacks.make(args.attack, **_params(args.param))
    eps = (
        args.epsilon
        if args.epsilon is not None
        else (float("inf") if attack.minimum_norm else DEFAULT_EPSILON[args.norm])
    )
    threat = ThreatModel(args.norm, eps, targeted=args.target is not None)
    model = _load_model(args, device)
    x, y, source = _inputs(args, model)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    gen = torch.Generator().manual_seed(args.seed)
    results, started = [], time.perf_counter()
    clean = model.predict(x.to(device)).cpu()
    with progress(args.quiet) as bar:
        task = bar.add(f"{attack.name} {threat.describe()}", len(x))
        for start in range(0, len(x), args.batch_size):
            xb, yb = x[start : start + args.batch_size], y[start : start + args.batch_size]
            target = None if args.target is None else torch.full_like(yb, args.target)
            results.append(attack(model, xb, yb, threat=threat, target=target, generator=gen).cpu())
            bar.advance(task, len(xb))
    seconds = time.perf_counter() - started
    adv = torch.cat([r.adversarial for r in results])
    success = torch.cat([r.success for r in results])
    preds = torch.cat([r.predictions for r in results])
    norms = torch.cat([r.norms for r in results])
    summary = _summary(
        args, model, attack, threat, source, y, clean, preds, success, norms, results, seconds, device
    )
    _save(args.out, x, adv, y, preds, success, norms, model, args.save_images)
    write_json(args.out / "summary.json", summary)
    _print(summary, args.out)
    return 0


def _summary(
    args: argparse.Namespace,
    model: models.Classifier,
    attack: attacks.Attack,
    threat: ThreatModel,
    source: str,
    y: torch.Tensor,
    clean: torch.Tensor,
    preds: torch.Tensor,
    success: torch.Tensor,
    norms: torch.Tensor,
    results: list[attacks.AttackResult],
    seconds: float,
    device: torch.device,
) -> dict[str, Any]:
    correct = clean == y
    broken = success & correct
    return {
        "model": model.name,
        "data": source,
        "samples": len(y),
        "attack": attack.describe(),
        "threat": {
            "norm": threat.norm,
            "epsilon": threat.epsilon,
            "targeted": threat.targeted,
            "target": args.target,
        },
        # --image without --label attacks the model's own prediction: clean accuracy is 1 by construction
        "label_source": "dataset"
        if args.image is None
        else ("--label" if args.label is not None else "prediction"),
        "clean_accuracy": float(correct.float().mean()),
        "robust_accuracy": float((preds == y).float().mean()),
        "attack_success_rate": float(success.float().mean()),
        "success_rate_on_correct": float(broken.sum() / max(int(correct.sum()), 1)),
        "median_norm_of_successes": float(norms[broken].median()) if bool(broken.any()) else None,
        "mean_norm_of_successes": float(norms[broken].mean()) if bool(broken.any()) else None,
        "forwards": int(sum(int(r.forwards.sum()) for r in results)),
        "backwards": int(sum(int(r.backwards.sum()) for r in results)),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(y) / max(seconds, 1e-9), 2),
        "seed": args.seed,
        "environment": environment(device),
    }


def _save(
    out: Path,
    x: torch.Tensor,
    adv: torch.Tensor,
    y: torch.Tensor,
    preds: torch.Tensor,
    success: torch.Tensor,
    norms: torch.Tensor,
    model: models.Classifier,
    count: int,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "adversarial.npz",
        x=adv.numpy(),
        y=y.numpy(),
        predictions=preds.numpy(),
        success=success.numpy(),
        norms=norms.numpy(),
    )
    images = out / "images"
    images.mkdir(exist_ok=True)
    names = model.class_names
    lo, hi = model.bounds
    for i in range(min(count, len(x))):
        pred = "reject" if int(preds[i]) < 0 else names[int(preds[i])]
        stem = f"{i:05d}_true-{names[int(y[i])]}_pred-{pred}".replace("/", "_").replace(" ", "_")
        write_png(images / f"{stem}_adversarial.png", adv[i], (lo, hi))
        write_png(images / f"{i:05d}_original.png", x[i], (lo, hi))
        delta = adv[i] - x[i]
        scale = float(delta.abs().max()) or 1.0
        write_png(images / f"{i:05d}_perturbation.png", 0.5 + 0.5 * delta / scale, (0.0, 1.0))


def _print(summary: dict[str, Any], out: Path) -> None:
    med = summary["median_norm_of_successes"]
    own = summary.get("label_source") == "prediction"
    lines = [
        f"{summary['attack']} on {summary['model']} ({summary['data']}, {summary['samples']} samples)",
        f"  clean accuracy   {summary['clean_accuracy']:.4f}"
        + ("   (no --label: the label is the model's own prediction, so 1 by construction)" if own else ""),
        f"  robust accuracy  {summary['robust_accuracy']:.4f}   ({summary['threat']['norm']} eps={summary['threat']['epsilon']:g})",
        f"  success rate     {summary['attack_success_rate']:.4f}   median norm {med if med is None else f'{med:.4f}'}",
        f"  {summary['seconds']:.1f} s, {summary['images_per_second']:.1f} images/s, "
        f"{summary['forwards']} forwards, {summary['backwards']} backwards",
        f"  saved to {out}/ (summary.json, adversarial.npz, images/)",
    ]
    print("\n".join(lines))
