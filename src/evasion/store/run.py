"""`RunStore`: a resumable run folder (resolved config, SQLite records, adversarial shards, report).

Layout::

    RUN/run.json           format version, evasion version, creation time
    RUN/config.toml        the resolved configuration of the latest invocation
    RUN/results.sqlite     per-sample records, cells, sessions (WAL)
    RUN/shards/*.npz       adversarial points of each cell (compressed, checksummed)
    RUN/inputs.npz         the first inputs (for the report's image grids)
    RUN/report.html        the report

A cell is committed in one transaction after its shard is on disk, with a checksum of its
records; a run killed at any moment resumes from its committed cells, and adding an epsilon or an
attack computes only what is new. A cell whose records were edited afterwards is refused when read
(never silently reused). Only one process may write a run folder at a time (an advisory lock).

``RunStore`` opens the folder and joins its two halves: a :class:`~.writer.RunWriter` (the
``Sink`` that :func:`evasion.evaluate` commits to) and a :class:`~.reader.RunReader` (cells,
records, the :class:`Evaluation`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from .. import __version__
from .._cache import atomic_write_text
from ..errors import StoreError
from ..evaluation.engine import Setup
from ..evaluation.records import Cell, CellOutput
from ..evaluation.result import Evaluation
from ..evaluation.spec import SpecInfo
from .database import FORMAT_VERSION, connect
from .reader import Integrity, RunReader, StoredCell
from .writer import RunWriter

__all__ = ["RunStore"]


def _check_format(path: Path, create: bool) -> None:
    """Write ``run.json`` in a new folder; refuse a folder of another run format."""
    marker = path / "run.json"
    if not marker.exists():
        if (path / "results.sqlite").exists() or not create:
            raise StoreError(f"{path} has no run.json: not a run folder of this evasion version")
        info = {"format": FORMAT_VERSION, "evasion": __version__, "created": time.time()}
        atomic_write_text(marker, json.dumps(info, indent=2) + "\n")
        return
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        version = int(info["format"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{marker} is unreadable ({exc})") from None
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path} was written by evasion {info.get('evasion', '?')} (run format {version}); "
            f"this evasion {__version__} reads format {FORMAT_VERSION}: use a new --out folder"
        )


class RunStore:
    """A run folder, opened for reading (``RunStore.open``) or writing (``RunStore(path)``).

    ``session`` is free-form information recorded with this invocation (command, engine,
    environment); it appears in the report's metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        session: dict[str, Any] | None = None,
        config_text: str | None = None,
        create: bool = True,
    ):
        self.path = Path(path)
        if not create and not (self.path / "results.sqlite").is_file():
            raise StoreError(f"{self.path} is not a run folder (no results.sqlite)")
        try:
            (self.path / "shards").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the run folder {self.path} ({exc.strerror or exc})") from None
        _check_format(self.path, create)
        self.db = connect(self.path / "results.sqlite")
        self.reader = RunReader(self.path, self.db)
        self.writer = RunWriter(self.reader, session=session, config_text=config_text)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunStore:
        """Open an existing run folder for reading."""
        return cls(path, create=False)

    def close(self, status: str = "stopped") -> None:
        """End a session still open with ``status`` (a failure to record it is a warning) and release
        the folder. ``evaluate()`` ends its session as ``finished`` itself (:meth:`finish`)."""
        self.writer.close(status)
        self.db.close()

    def finish(self) -> None:
        """Record the current session as finished (``evaluate()`` calls it when it has every cell)."""
        self.writer.end("finished")

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            status = "stopped"
        elif issubclass(kind, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = f"failed: {kind.__name__}" + (f" ({str(exc)[:200]})" if str(exc) else "")
        self.close(status)

    # -- the Sink protocol (the writer) -----------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        """Check that the run folder holds results of the same data, models and attacks; record them."""
        self.writer.prepare(setup)

    def save_inputs(self, x: Tensor, y: Tensor) -> None:
        """Keep the first inputs for the report's image grids."""
        self.writer.save_inputs(x, y)

    def completed(self) -> set[str]:
        return self.reader.completed()

    def load(self, cell: Cell) -> CellOutput:
        """A committed cell, with its adversarial points (records and shard checksums verified);
        counted as reused by the current session."""
        return self.writer.load(cell)

    def commit(self, output: CellOutput) -> None:
        """Write the cell's shard, then its rows and its cell entry in one transaction."""
        self.writer.commit(output)

    # -- other writes -----------------------------------------------------------------------------
    def forget(self, cells: list[Cell]) -> None:
        """Drop cells (their records and shards) so that the next run recomputes them."""
        self.writer.forget(cells)

    def save_config(self, text: str) -> None:
        self.writer.save_config(text)

    # -- reading (the reader) ---------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return self.reader.meta()

    def specs(self) -> list[SpecInfo]:
        return self.reader.specs()

    def models(self) -> list[str]:
        return self.reader.models()

    def sessions(self) -> list[dict[str, Any]]:
        """Every session with its status, times and cell counts (see :meth:`RunReader.sessions`)."""
        return self.reader.sessions(self.writer.session)

    def cells(self) -> list[StoredCell]:
        """Every committed cell, in commit order."""
        return self.reader.cells()

    def verify(self) -> list[tuple[Cell, str]]:
        """Every committed cell whose records were modified or whose records or shard are damaged."""
        return self.reader.verify()

    def integrity(self) -> Integrity:
        """Every committed cell checked: verified, unverified (before checksums), modified, damaged."""
        return self.reader.integrity()

    def missing(self) -> list[str]:
        """Keys of the cells the latest invocation planned that are not committed yet."""
        return self.reader.missing()

    def inputs(self) -> tuple[Tensor, Tensor] | None:
        return self.reader.inputs()

    def evaluation(self, examples: bool = True, *, allow_modified: bool = False) -> Evaluation:
        """Everything this run folder holds, as an :class:`Evaluation` (curves, checks, examples).

        Modified cells are refused (a :class:`StoreError` naming them) unless ``allow_modified``.
        """
        return self.reader.evaluation(examples, allow_modified=allow_modified, session=self.writer.session)
