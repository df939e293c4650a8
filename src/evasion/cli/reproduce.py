"""`evasion reproduce NAME`: re-run a paper's experiments and write an HTML report.

Each experiment lives in ``evasion.experiments.<module>`` and provides
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

__all__ = ["EXPERIMENTS", "add_parser"]

#: experiment name -> (module under evasion.experiments, one-line description)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "icub": (
        "icub",
        "Melis et al. 2017: iCub deep features + SVM with reject, max-confidence evasion, stickers",
    ),
    "detector": (
        "detector",
        "Metzen et al. 2017: detector subnetworks, dynamic adversaries, dynamic training",
    ),
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="re-run a paper's experiments and write an HTML report",
        description="Re-run the experiments of a reference paper. --quick runs a reduced version (CI-sized).",
    )
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    exp.required = True
    for name, (module, description) in EXPERIMENTS.items():
        try:
            mod = importlib.import_module(f"evasion.experiments.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"evasion.experiments.{module}":
                raise
            continue
        sp = exp.add_parser(name, help=description, description=description)
        mod.add_arguments(sp)
        sp.set_defaults(func=_runner(mod))


def _runner(mod: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        return int(mod.run(args) or 0)

    return run
