"""`evasion report RUN`: re-render a run's HTML report from its store (nothing is recomputed)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..store import RunStore, find_run
from ..store.catalog import DEFAULT_ROOT

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="re-render the HTML report of a run from its stored records",
        description="Re-render RUN/report.html from the run's store (no attack is re-run).",
    )
    p.add_argument("run", help="run folder, or a run name under --root")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding runs (default: runs)")
    p.add_argument("--out", type=Path, help="where to write the report (default: RUN/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..reports.evaluation_report import write_report

    path = find_run(args.run, args.root)
    with RunStore.open(path) as store:
        ev = store.evaluation()
    out = write_report(ev, args.out or path / "report.html")
    print(f"report: {out}")
    return 0
