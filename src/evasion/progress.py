"""The progress-bar protocol that long computations report to, a no-op default, and log lines.

Library code (experiments, training loops) takes a :class:`ProgressBar` and never decides how
progress is shown; the CLI passes rich bars on a terminal or :class:`LineProgress` (plain
timestamped lines) in a log (``evasion.cli.common.progress``). Nothing here imports a terminal
library.

Estimated times come from :class:`SessionRate`: the speed of the work done *in this session*,
so units read back from an earlier session (``advance(..., reused=True)``, e.g. the cells of a
resumed evaluation) count as done but do not make the estimate optimistic.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

__all__ = [
    "NULL_PROGRESS",
    "LineProgress",
    "NullProgress",
    "ProgressBar",
    "SessionRate",
    "counter",
    "duration",
    "log_counter",
]


class ProgressBar(Protocol):
    """Tasks with a total: ``add`` one, ``advance`` it, ``update`` its description or total.

    ``reused=True`` marks work that was not done now (read back from an earlier session): it
    counts as done, but not towards the speed that estimates the time left."""

    def add(self, description: str, total: float) -> int: ...
    def advance(self, task: int, amount: float = 1.0, *, reused: bool = False) -> None: ...
    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None: ...


class NullProgress:
    """A progress bar that shows nothing (the default when the caller passes none)."""

    def __init__(self) -> None:
        self._count = 0

    def add(self, description: str, total: float) -> int:
        self._count += 1
        return self._count - 1

    def advance(self, task: int, amount: float = 1.0, *, reused: bool = False) -> None:
        return None

    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None:
        return None


#: a shared no-op bar (it keeps no state that matters)
NULL_PROGRESS: ProgressBar = NullProgress()


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short, fixed pieces for progress lines."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class SessionRate:
    """Done/total of one task and the time left, from the speed of this session's work only.

    Time between two advances counts as work only when the second one is fresh (not
    ``reused``); the time spent reading back reused units is not work either."""

    total: float
    start: float
    done: float = 0.0
    fresh: float = 0.0
    fresh_seconds: float = 0.0
    last: float = field(init=False)

    def __post_init__(self) -> None:
        self.last = self.start

    def advance(self, amount: float, now: float, reused: bool = False) -> None:
        self.done += amount
        if not reused:
            self.fresh += amount
            self.fresh_seconds += max(0.0, now - self.last)
        self.last = now

    @property
    def reused(self) -> float:
        return self.done - self.fresh

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total

    def remaining(self, now: float) -> float | None:
        """Seconds left (None until some fresh work was timed); counts down between advances."""
        if self.fresh <= 0 or self.fresh_seconds <= 0:
            return None
        left = max(0.0, self.total - self.done) * self.fresh_seconds / self.fresh
        return max(0.0, left - max(0.0, now - self.last))

    def counts(self) -> str:
        """``104/270`` (integers when the amounts are)."""

        def num(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:.1f}"

        return f"{num(self.done)}/{num(self.total)}"


@dataclass
class _Task:
    description: str
    rate: SessionRate


class LineProgress:
    """Progress as plain timestamped lines, for logs, pipes and ``--quiet``.

    One line when a unit of the first (overall) task is done, at most every ``min_gap`` seconds;
    a status line at least every ``interval`` seconds while work goes on (:meth:`tick`, called
    by :meth:`start`'s background thread; it shows the task being worked on and for how long);
    one line when a task with fresh work finishes. ``write`` receives each line (default: stderr,
    flushed); ``stamp`` prefixes the wall-clock time; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        write: Callable[[str], None] | None = None,
        *,
        interval: float = 5.0,
        min_gap: float = 1.0,
        clock: Callable[[], float] = time.time,
        stamp: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self._write = write or self._to_stream
        self._stream = stream
        self.interval, self.min_gap, self.clock, self.stamp = interval, min_gap, clock, stamp
        self._tasks: list[_Task] = []
        self._current: int | None = None
        self._since = clock()  # when the last unit of work (of any task) was done
        self._last_line = -float("inf")
        self._pending = False  # a unit of the overall task is done and its line not written yet
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the protocol ---------------------------------------------------------------------------
    def add(self, description: str, total: float) -> int:
        with self._lock:
            self._tasks.append(_Task(description, SessionRate(float(total), self.clock())))
            return len(self._tasks) - 1

    def advance(self, task: int, amount: float = 1.0, *, reused: bool = False) -> None:
        with self._lock:
            now = self.clock()
            entry = self._tasks[task]
            was_finished = entry.rate.finished
            entry.rate.advance(amount, now, reused)
            self._since = now
            if task != 0 or len(self._tasks) == 1:
                self._current = task
            if entry.rate.finished and not was_finished and entry.rate.fresh > 0:
                self._emit(now, f"done: {entry.description} ({entry.rate.counts()})")
            elif task == 0 and not reused and now - self._last_line >= self.min_gap:
                self._pending = True  # written once the current task is known (next call or tick)
            if self._pending and (task != 0 or len(self._tasks) == 1):
                self._emit(now, self.status(now))

    def update(self, task: int, *, description: str | None = None, total: float | None = None) -> None:
        with self._lock:
            entry = self._tasks[task]
            if description is not None:
                entry.description = description
            if total is not None:
                entry.rate.total = float(total)
            if task != 0:
                self._current = task

    # -- lines ----------------------------------------------------------------------------------
    def status(self, now: float) -> str:
        """``all cells 104/270 (38%, 12 reused) | current task 3/10, working 12s | elapsed 1m40s | ETA 3m20s``.

        ``working``: time since the last unit was done (shown from 2 s: a long unit is under way)."""
        with self._lock:
            if not self._tasks:
                return "starting"
            main = self._tasks[0]
            rate = main.rate
            pct = f"{100 * rate.done / rate.total:.0f}%" if rate.total else "-"
            reused = f", {rate.reused:g} reused" if rate.reused else ""
            parts = [f"{main.description} {rate.counts()} ({pct}{reused})"]
            if self._current is not None and self._current != 0:
                cur = self._tasks[self._current]
                working = now - self._since
                parts.append(
                    f"{cur.description} {cur.rate.counts()}"
                    + (f", working {duration(working)}" if working >= 2 else "")
                )
            left = rate.remaining(now)
            parts.append(f"elapsed {duration(now - rate.start)}")
            parts.append("ETA " + ("?" if left is None else duration(left)))
            return " | ".join(parts)

    def tick(self) -> None:
        """A status line if none was written for ``interval`` seconds (the heartbeat)."""
        with self._lock:
            now = self.clock()
            busy = bool(self._tasks) and not self._tasks[0].rate.finished
            if self._pending or (busy and now - self._last_line >= self.interval):
                self._emit(now, self.status(now))

    def _emit(self, now: float, text: str) -> None:
        self._last_line, self._pending = now, False
        if self.stamp:
            text = time.strftime("%H:%M:%S", time.localtime(now)) + " " + text
        self._write(text)

    def _to_stream(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    # -- heartbeat ------------------------------------------------------------------------------
    def start(self) -> LineProgress:
        """Start the background thread that calls :meth:`tick` every second."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="evasion-progress", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.interval)):
            self.tick()

    def close(self) -> None:
        """Stop the heartbeat (and write a pending line)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._pending:
                self._emit(self.clock(), self.status(self.clock()))


def counter(bar: ProgressBar, description: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (as dataset builders take) that drives a task of ``bar``."""
    state: dict[str, float] = {}

    def report(done: int, total: int) -> None:
        if "task" not in state:  # what was done before the first call was not timed: no speed
            state["task"], state["done"] = bar.add(description, total), float(done)
            bar.advance(int(state["task"]), done, reused=True)
            return
        task = int(state["task"])
        if done > state["done"]:
            bar.advance(task, done - state["done"])
            state["done"] = float(done)

    return report


def log_counter(
    logger: logging.Logger, description: str, *, interval: float = 5.0, clock: Callable[[], float] = time.time
) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback writing INFO lines to ``logger`` (timestamped by logging):
    at most every ``interval`` seconds, with done/total and the time left, and at the end."""
    lines = LineProgress(logger.info, interval=interval, min_gap=interval, clock=clock, stamp=False)
    return counter(lines, description)
