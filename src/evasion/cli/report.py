"""`evasion report RUN`: re-render a run's HTML report from its store (nothing is recomputed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..store import RunStore, find_run
from ..store.catalog import DEFAULT_ROOT

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="re-render the HTML report of a run from its stored records",
        description="Re-render RUN/report.html from the run's store (no attack is re-run). Every cell's "
        "records are checked against their checksums first: a run with modified cells is refused (exit 1, "
        "each cell named) unless --allow-modified, which renders it under an error banner naming them.",
    )
    p.add_argument("run", help="run folder, or a run name under --root")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding runs (default: runs)")
    p.add_argument("--out", type=Path, help="where to write the report (default: RUN/report.html)")
    p.add_argument(
        "--allow-modified",
        action="store_true",
        help="render a run whose stored records were modified, under an error banner naming the cells",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..reports.evaluation_report import write_report

    path = find_run(args.run, args.root)
    with RunStore.open(path) as store:
        ev = store.evaluation(allow_modified=args.allow_modified)
    out = write_report(ev, args.out or path / "report.html")
    integrity = ev.meta.get("integrity", {})
    modified = integrity.get("modified", [])
    if modified:
        print(
            f"evasion: warning: {len(modified)} modified cell(s) rendered under an error banner: "
            + "; ".join(modified),
            file=sys.stderr,
        )
    if integrity.get("unverified"):
        print(
            f"note: {integrity['unverified']} cell(s) unverified (written before checksums)", file=sys.stderr
        )
    print(f"report: {out}")
    return 0
