"""`evasion zoo list` and `evasion datasets list`: what is available offline."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    zoo = sub.add_parser("zoo", help="the model zoo", description="Models available offline.")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", metavar="{list}")
    zoo_sub.required = True
    zoo_sub.add_parser("list", help="list registered models").set_defaults(func=_zoo_list)
    data = sub.add_parser("datasets", help="embedded datasets", description="Datasets available offline.")
    data_sub = data.add_subparsers(dest="datasets_command", metavar="{list,build}")
    data_sub.required = True
    data_sub.add_parser("list", help="list registered datasets").set_defaults(func=_datasets_list)
    build = data_sub.add_parser("build", help="render a generated dataset into the cache (icub-sim)")
    build.add_argument("name", help="dataset to build: icub-sim or icub-sim-fine (--quick: icub-sim-quick)")
    build.add_argument("--quick", action="store_true", help="build the CI-sized variant instead")
    build.add_argument("--force", action="store_true", help="render again even if a valid cache exists")
    build.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    build.set_defaults(func=_datasets_build)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        + [fmt.format(*map(str, r)) for r in rows]
    )


def _zoo_list(args: argparse.Namespace) -> int:
    from ..models import list_models

    rows = [
        [m.name, "x".join(map(str, m.input_shape)), str(m.num_classes), m.dataset, m.source, m.description]
        for m in list_models()
    ]
    print(_table(["name", "input", "classes", "data", "source", "description"], rows))
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    from ..datasets import list_datasets

    rows = []
    for d in list_datasets():
        size = ", ".join(f"{k} {v}" for k, v in dict(d.size).items())
        rows.append(
            [d.name, "x".join(map(str, d.input_shape)), str(d.num_classes), size, d.source, d.description]
        )
    print(_table(["name", "input", "classes", "samples", "source", "description"], rows))
    return 0


def _datasets_build(args: argparse.Namespace) -> int:
    from ..datasets import icub_sim
    from ..progress import counter
    from .common import progress

    name = "icub-sim-quick" if args.quick and args.name == "icub-sim" else args.name
    with progress(args.quiet) as bar:  # rendering takes minutes: a bar, or a line every few seconds
        path, facts = icub_sim.build(name, force=args.force, progress=counter(bar, f"rendering {name} views"))
    size = facts.get("bytes", path.stat().st_size) / 1e6
    per_view = facts.get("seconds_per_view")
    timing = f", {per_view * 1000:.0f} ms per view" if isinstance(per_view, (int, float)) else ""
    print(f"{name}: {path} ({size:.1f} MB, sha256 {facts['sha256'][:16]}...{timing})")
    return 0
