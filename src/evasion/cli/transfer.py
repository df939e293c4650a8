"""`evasion transfer`: the transferability matrix of an attack among models (zoo names or files).

Crafts examples on every source model (white-box) and reports how often they fool every target,
counting only the samples each target classifies correctly; ``--ensemble`` adds a row crafted on
the mean logits of all sources. Writes OUT/transfer.json and OUT/transfer.svg (the heat map).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import attacks, datasets, models
from ..errors import ConfigError
from ..evaluation.transfer import check_attack, transferability
from .common import environment, pick_device, write_json

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "transfer",
        help="transferability matrix: examples crafted on each source model, tested on each target",
        description="Transfer success of an attack among models of the same input shape (e.g. "
        "mnist-cnn,mnist-cnn-pgd,mnist-cnn-distilled). Success counts only the samples each target "
        "classifies correctly; the diagonal is white-box success. Writes OUT/transfer.json and OUT/transfer.svg.",
    )
    p.add_argument(
        "--models", required=True, help="comma-separated sources (zoo names), e.g. mnist-cnn,mnist-cnn-pgd"
    )
    p.add_argument("--targets", help="comma-separated targets (default: the same models)")
    p.add_argument("--data", default="mnist5k", help="dataset name or path")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("-n", "--num-samples", type=int, default=500, help="first N samples of the split")
    p.add_argument("--attack", default="mifgsm", help="a fixed-budget attack name (default mifgsm)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="attack parameter")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--epsilon", "--eps", type=float, default=0.3)
    p.add_argument(
        "--ensemble", action="store_true", help="add a row crafted on the mean logits of the sources"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=Path("out/transfer"), help="output folder (created)")
    p.set_defaults(func=run)


def _names(text: str, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{option} needs at least one model name")
    return names


def _load(names: list[str], device: Any) -> list[Any]:
    """Classifiers named as given on the command line (rows and columns of the matrix)."""
    loaded = []
    for name in names:
        model = models.load(name, device=device)
        model.name = name
        loaded.append(model)
    return loaded


def run(args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    for item in args.param:
        if "=" not in item:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = value.strip()
    attack = attacks.make(args.attack, **params)
    check_attack(attack, args.epsilon)  # before the models load
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples must be >= 1, got {args.num_samples}")
    device = pick_device(args.device)
    sources = _load(_names(args.models, "--models"), device)
    targets = sources if args.targets is None else _load(_names(args.targets, "--targets"), device)
    data = datasets.load(args.data, args.split)
    data = data.head(args.num_samples) if args.num_samples else data
    matrix = transferability(
        sources, targets, data, attack, args.epsilon, norm=args.norm, ensemble=args.ensemble, seed=args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "transfer.json", {**matrix.to_dict(), "environment": environment(device)})
    (args.out / "transfer.svg").write_text(matrix.heatmap_svg())
    width = max(len(s) for s in matrix.sources)
    print(
        f"transfer success of {matrix.config['attack']} ({args.norm} eps {args.epsilon}), on target-correct samples"
    )
    print(" " * width + " | " + " | ".join(matrix.targets))
    for name, row in zip(matrix.sources, matrix.success):
        print(f"{name:<{width}} | " + " | ".join(f"{v:>{len(t)}.3f}" for v, t in zip(row, matrix.targets)))
    print(f"wrote {args.out / 'transfer.json'}")
    return 0
