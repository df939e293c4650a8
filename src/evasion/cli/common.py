"""Helpers shared by CLI commands: devices, output folders, JSON, progress, environment facts.

``ProgressBar`` (the protocol) lives in :mod:`evasion.progress`; it is re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from ..progress import LineProgress, ProgressBar, SessionRate, duration

__all__ = ["ProgressBar", "environment", "pick_device", "progress", "rich_progress", "write_json"]

log = logging.getLogger("evasion")


def pick_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; a device this machine lacks is a one-line error."""
    device = runtime.resolve_device(name)
    assert device is not None
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
    policy = runtime.active()
    if policy is not None:  # a command: how its thread count was chosen
        facts["thread_policy"] = policy.describe()
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


class _RichProgress:
    """Rich bars that fit the terminal: the overall task (the first added) and the current one.

    Other tasks are hidden, not removed: a task becomes the current one when it is advanced or
    updated. The time left comes from :class:`~evasion.progress.SessionRate` (this session's
    speed, reused work excluded), shown by :class:`_Eta`."""

    def __init__(self, bar: Any, clock: Any = time.monotonic) -> None:
        self._bar, self._clock = bar, clock
        self._ids: list[int] = []
        self._rates: list[SessionRate] = []
        self._current: int | None = None

    def add(self, description: str, total: float) -> int:
        index = len(self._ids)
        visible = index == 0
        self._ids.append(int(self._bar.add_task(description, total=total, visible=visible, eta_at=None)))
        self._rates.append(SessionRate(float(total), self._clock()))
        return index

    def _focus(self, task: int) -> None:
        if task == 0 or task == self._current:
            return
        if self._current is not None:
            self._bar.update(self._ids[self._current], visible=False)
        self._bar.update(self._ids[task], visible=True)
        self._current = task

    def advance(self, task: int, amount: float = 1.0, *, reused: bool = False) -> None:
        now = self._clock()
        rate = self._rates[task]
        rate.advance(amount, now, reused)
        left = rate.remaining(now)
        self._focus(task)
        self._bar.update(self._ids[task], advance=amount, eta_at=None if left is None else now + left)
        runtime.rebalance()  # between units of work: the moment to adapt the thread count

    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if description is not None:
            kwargs["description"] = description
        if total is not None:
            kwargs["total"] = total
            self._rates[task].total = float(total)
        self._focus(task)
        self._bar.update(self._ids[task], **kwargs)


class _LineProgress(LineProgress):
    """Log lines that also give the thread policy its moments to adapt (between units of work)."""

    def advance(self, task: int, amount: float = 1.0, *, reused: bool = False) -> None:
        super().advance(task, amount, reused=reused)
        runtime.rebalance()


def _columns(clock: Any = time.monotonic) -> tuple[Any, ...]:
    """Columns whose counts and times never get cut: only the description and the bar shrink."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column
    from rich.text import Text

    class _Eta(ProgressColumn):
        """``ETA 3m05s`` from the task's ``eta_at`` field (this session's speed), counting down."""

        def render(self, task: Any) -> Text:
            at = task.fields.get("eta_at")
            if task.finished:
                return Text("done", style="progress.remaining")
            left = "?" if at is None else duration(max(0.0, at - clock()))
            return Text(f"ETA {left}", style="progress.remaining")

    def fixed(width: int, justify: Any = "left") -> Column:  # never wrapped or cut
        return Column(min_width=width, justify=justify, no_wrap=True, overflow="ignore")

    return (
        TextColumn(
            "{task.description}",
            table_column=Column(ratio=3, no_wrap=True, overflow="ellipsis", min_width=8),
        ),
        BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=4)),
        MofNCompleteColumn(table_column=fixed(9, "right")),
        TimeElapsedColumn(table_column=fixed(7)),
        _Eta(table_column=fixed(10)),
    )


def rich_progress(console: Any = None, clock: Any = time.monotonic, **options: Any) -> Any:
    """The rich ``Progress`` the CLI shows on a terminal (``console``: default stderr)."""
    from rich.console import Console
    from rich.progress import Progress

    console = console or Console(stderr=True)
    return Progress(*_columns(clock), console=console, expand=True, transient=False, **options)


@contextmanager
def progress(quiet: bool, *, tty: bool | None = None) -> Iterator[ProgressBar]:
    """Rich bars on a terminal; plain timestamped lines (every few seconds) with ``quiet`` or in a log.

    ``tty``: whether stderr is a terminal (default: asked)."""
    terminal = sys.stderr.isatty() if tty is None else tty
    if quiet or not terminal:
        lines = _LineProgress().start()
        try:
            yield lines
        finally:
            lines.close()
        return
    with rich_progress() as bar:
        yield _RichProgress(bar)
