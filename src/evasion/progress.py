"""The progress-bar protocol that long computations report to, and a no-op default.

Library code (experiments, training loops) takes a :class:`ProgressBar` and never decides how
progress is shown; the CLI passes rich bars or log lines (``evasion.cli.common.progress``).
Nothing here imports a terminal library.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NULL_PROGRESS", "NullProgress", "ProgressBar"]


class ProgressBar(Protocol):
    """Tasks with a total: ``add`` one, ``advance`` it, ``update`` its description or total."""

    def add(self, description: str, total: float) -> int: ...
    def advance(self, task: int, amount: float = 1.0) -> None: ...
    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None: ...


class NullProgress:
    """A progress bar that shows nothing (the default when the caller passes none)."""

    def __init__(self) -> None:
        self._count = 0

    def add(self, description: str, total: float) -> int:
        self._count += 1
        return self._count - 1

    def advance(self, task: int, amount: float = 1.0) -> None:
        return None

    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None:
        return None


#: a shared no-op bar (it keeps no state that matters)
NULL_PROGRESS: ProgressBar = NullProgress()
