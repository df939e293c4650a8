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
    check = runs_sub.add_parser(
        "check",
        help="verify every stored cell (records and shard checksums)",
        description="Check every committed cell: its records against the checksum written with them, "
        "its row count and its shard. Exit status 1 if a cell was modified or damaged (each is named), "
        "0 otherwise; cells written before checksums existed are listed as unverified.",
    )
    check.add_argument("run", help="run folder, or a run name under --root")
    check.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding runs (default: runs)")
    check.add_argument(
        "--repair",
        action="store_true",
        help="drop modified or damaged cells so that a re-run recomputes them",
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
        ev = store.evaluation(examples=False, allow_modified=True)
        missing = len(store.missing())
        sessions = store.sessions()
    seconds = float(ev.meta.get("seconds", 0.0))
    reused = (sessions[-1].get("reused") or 0) if sessions else 0
    report = path / "report.html" if (path / "report.html").exists() else None
    integrity = ev.meta.get("integrity", {})
    for where in integrity.get("modified", []):  # first, so that tampered numbers never look clean
        print(f"MODIFIED: {where}: its records differ from their checksum (see `evasion runs check`)")
    print(summary(ev, path, report, seconds, reused))
    status = "complete" if not missing else f"incomplete: {missing} cells left (re-run the same command)"
    print(f"status: {status}; {len(sessions)} session(s)")
    for s in sessions:
        print(f"  {_session_line(s)}")
    if integrity.get("modified"):
        print(
            f"{len(integrity['modified'])} cell(s) MODIFIED after they were committed: the numbers above include them"
        )
    if integrity.get("unverified"):
        print(f"{integrity['unverified']} cell(s) unverified (written before checksums)")
    return 0


def _count(n: object) -> str:
    return "?" if n is None else str(n)


def _session_line(s: dict[str, Any]) -> str:
    """One session: command, engine, status, start and end, cells computed and reused."""
    status = str(s.get("status", "?"))
    end = f", ended {_when(s['finished'])}" if s.get("finished") else ""
    return (
        f"#{s['id']} {s.get('command', '?')} engine={s.get('engine', '?')}: {status}; "
        f"started {_when(s['started'])}{end}; {_count(s.get('computed'))} cells computed, "
        f"{_count(s.get('reused'))} reused"
    )


def _check(args: argparse.Namespace) -> int:
    """Check every cell; name each modified or damaged one; exit 1 if there is any."""
    path = find_run(args.run, args.root)
    with RunStore.open(path) as store:
        found = store.integrity()
        for m in found.modified:
            print(f"modified: {m.where}: its records differ from the checksum written when it was committed")
        for stored, reason in found.damaged:
            print(f"damaged: {store.reader.describe(stored.cell)}: {reason}")
        bad = [m.stored.cell for m in found.modified] + [s.cell for s, _ in found.damaged]
        if bad and args.repair:
            store.forget(bad)
    if found.unverified:
        print(f"{len(found.unverified)} cell(s) unverified (written before checksums)")
    if not bad:
        done = (
            f"all {found.cells} cells verified"
            if not found.unverified
            else f"{found.verified} cells verified"
        )
        print(f"{path}: {done}")
        return 0
    counts = ", ".join(
        f"{n} {what}" for n, what in ((len(found.modified), "modified"), (len(found.damaged), "damaged")) if n
    )
    print(f"{path}: {counts} of {found.cells} cells; {found.verified} verified")
    if args.repair:
        print(f"dropped {len(bad)} cell(s); re-run `evasion evaluate` with the same config to recompute them")
        return 0
    print("re-run with --repair to drop them (a re-run of the same command recomputes them)")
    return 1
