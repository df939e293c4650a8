"""Helpers shared by CLI commands: devices, output folders, JSON, progress bars, environment facts.

``ProgressBar`` (the protocol) lives in :mod:`evasion.progress`; it is re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..progress import ProgressBar

__all__ = ["ProgressBar", "environment", "pick_device", "progress", "write_json"]

log = logging.getLogger("evasion")


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (tmp file + rename), so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def environment(device: torch.device) -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    from .. import __version__

    facts = {
        "evasion": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


class _LogProgress:
    """Progress as log lines (``--quiet`` or no terminal): one line per finished task."""

    def __init__(self) -> None:
        self._tasks: dict[int, list[Any]] = {}

    def add(self, description: str, total: float) -> int:
        self._tasks[len(self._tasks)] = [description, total, 0.0]
        return len(self._tasks) - 1

    def advance(self, task: int, amount: float = 1.0) -> None:
        entry = self._tasks[task]
        entry[2] += amount
        if entry[2] >= entry[1]:
            log.info("done: %s", entry[0])

    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None:
        if description is not None:
            self._tasks[task][0] = description
        if total is not None:
            self._tasks[task][1] = total


class _RichProgress:
    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def add(self, description: str, total: float) -> int:
        return int(self._bar.add_task(description, total=total))

    def advance(self, task: int, amount: float = 1.0) -> None:
        self._bar.advance(task, amount)

    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if description is not None:
            kwargs["description"] = description
        if total is not None:
            kwargs["total"] = total
        self._bar.update(task, **kwargs)


@contextmanager
def progress(quiet: bool) -> Iterator[ProgressBar]:
    """Rich progress bars with ETA on a terminal; log lines with ``quiet`` or without rich."""
    if quiet:
        yield _LogProgress()
        return
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:  # pragma: no cover - rich is a core dependency
        yield _LogProgress()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as bar:
        yield _RichProgress(bar)
