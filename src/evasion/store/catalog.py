"""Finding and summarising run folders (``evasion runs list`` / ``evasion runs show``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StoreError, UnknownNameError
from .run import RunStore

__all__ = ["DEFAULT_ROOT", "RunSummary", "find_run", "list_runs", "summarize"]

#: where `evasion evaluate` puts runs when no --out is given
DEFAULT_ROOT = Path("runs")


@dataclass(frozen=True)
class RunSummary:
    """What a run folder holds, without building curves."""

    name: str
    path: Path
    created: float
    data: str
    samples: int
    models: list[str]
    attacks: list[str]
    cells: int
    missing: int
    seconds: float
    sessions: int
    error: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.error:
            return "unreadable"
        return "complete" if self.missing == 0 else f"incomplete ({self.missing} cells left)"


def _created(path: Path) -> float:
    try:
        return float(json.loads((path / "run.json").read_text(encoding="utf-8")).get("created", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def summarize(path: str | os.PathLike[str]) -> RunSummary:
    """A summary of one run folder (a :class:`StoreError` if it is not one)."""
    p = Path(path)
    with RunStore.open(p) as store:
        meta = store.meta()
        cells = store.cells()
        return RunSummary(
            name=p.name,
            path=p,
            created=_created(p),
            data=meta.get("data", "?"),
            samples=int(meta.get("samples", "0")),
            models=store.models(),
            attacks=[s.name for s in store.specs()],
            cells=len(cells),
            missing=len(store.missing()),
            seconds=sum(c.seconds for c in cells),
            sessions=len(store.sessions()),
        )


def list_runs(root: str | os.PathLike[str] = DEFAULT_ROOT) -> list[RunSummary]:
    """Every run folder directly under ``root`` (unreadable ones are listed with their error)."""
    base = Path(root)
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.iterdir()):
        if not (p / "results.sqlite").is_file():
            continue
        try:
            out.append(summarize(p))
        except StoreError as exc:
            out.append(RunSummary(p.name, p, _created(p), "?", 0, [], [], 0, 0, 0.0, 0, error=str(exc)))
    return sorted(out, key=lambda r: r.created)


def find_run(name: str | os.PathLike[str], root: str | os.PathLike[str] = DEFAULT_ROOT) -> Path:
    """A run folder given as a path, or by name under ``root``."""
    p = Path(name)
    if (p / "results.sqlite").is_file():
        return p
    q = Path(root) / p
    if (q / "results.sqlite").is_file():
        return q
    if p.exists():
        raise StoreError(f"{p} is not a run folder (no results.sqlite)")
    known = [r.name for r in list_runs(root)]
    raise UnknownNameError("run", str(name), known)
