"""`evasion runs list` and `evasion runs show RUN`: what the run folders hold."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from ..store import RunStore, find_run, list_runs
from ..store.catalog import DEFAULT_ROOT

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("runs", help="list and inspect evaluation runs", description="Evaluation run folders.")
    runs_sub = p.add_subparsers(dest="runs_command", metavar="{list,show,check}")
    runs_sub.required = True
    lst = runs_sub.add_parser("list", help="list the run folders under --root")
    lst.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding runs (default: runs)")
    lst.set_defaults(func=_list)
    show = runs_sub.add_parser("show", help="curves, flags and sessions of one run")
    show.add_argument("run", help="run folder, or a run name under --root")
    show.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding runs (default: runs)")
    show.set_defaults(func=_show)
    check = runs_sub.add_parser("check", help="verify every stored cell (records and shard checksums)")
    check.add_argument("run", help="run folder, or a run name under --root")
    check.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding runs (default: runs)")
    check.add_argument(
        "--repair", action="store_true", help="drop damaged cells so that a re-run recomputes them"
    )
    check.set_defaults(func=_check)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    )


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="minutes") if t else "-"


def _list(args: argparse.Namespace) -> int:
    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
        return 0
    rows = [
        [
            r.name,
            _when(r.created),
            r.data,
            str(r.samples),
            ", ".join(r.models),
            str(len(r.attacks)),
            str(r.cells),
            f"{r.seconds:.0f} s",
            r.status if not r.error else f"unreadable: {r.error}",
        ]
        for r in runs
    ]
    print(
        _table(["run", "created", "data", "samples", "models", "attacks", "cells", "compute", "status"], rows)
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from .evaluate import summary

    path = find_run(args.run, args.root)
    with RunStore.open(path) as store:
        ev = store.evaluation(examples=False)
        missing = len(store.missing())
        sessions = store.sessions()
    seconds = float(ev.meta.get("seconds", 0.0))
    print(summary(ev, path, path / "report.html" if (path / "report.html").exists() else None, seconds))
    status = "complete" if not missing else f"incomplete: {missing} cells left (re-run the same command)"
    print(f"status: {status}; {len(sessions)} session(s)")
    for s in sessions:
        print(
            f"  #{s['id']} {s.get('command', '?')} engine={s.get('engine', '?')} started {_when(s['started'])}"
            f" finished {_when(s['finished']) if s.get('finished') else '(not finished)'}"
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    path = find_run(args.run, args.root)
    with RunStore.open(path) as store:
        bad = store.verify()
        for cell, reason in bad:
            print(f"damaged: {cell.describe()}: {reason}")
        if bad and args.repair:
            store.forget([cell for cell, _ in bad])
            print(
                f"dropped {len(bad)} damaged cell(s); re-run `evasion evaluate` with the same config to recompute them"
            )
            return 0
    if not bad:
        print(f"{path}: all {len(RunStore.open(path).cells())} cells verified")
        return 0
    print("re-run with --repair to drop them")
    return 1
