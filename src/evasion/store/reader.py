"""Reading a run folder: committed cells, their records and shards, and the `Evaluation` they make.

Reading takes no lock: a run folder can be read (``evasion runs show``, ``evasion report``) while
another process writes it, and sees the cells committed so far.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import StoreError
from ..evaluation.engine import ExamplePicker
from ..evaluation.records import ATTACK_COLUMNS, CLEAN_COLUMNS, Cell, CellOutput
from ..evaluation.result import Evaluation
from ..evaluation.spec import SpecInfo
from .database import ATTACK_SQL, CLEAN_SQL, select_columns
from .shards import read_shard

__all__ = ["EXAMPLE_POOL", "RunReader", "StoredCell"]

#: the first inputs kept for the report's image grids (and the cells read back for examples)
EXAMPLE_POOL = 32

_CELL_FIELDS = "kind, model, attack, epsilon, batch, first, rows, shard, sha256, seconds, session"


@dataclass(frozen=True)
class StoredCell:
    """The entry of one committed cell: which rows it holds, its shard, its cost and session."""

    cell: Cell
    first: int  # index of its first sample
    rows: int  # number of samples (records) it holds
    shard: str | None  # file name under RUN/shards/ (None: no adversarial points)
    sha256: str | None  # checksum of the shard
    seconds: float  # compute time
    session: int  # id of the session that committed it

    @property
    def key(self) -> str:
        return self.cell.key


class RunReader:
    """Everything a run folder's database and shards hold, read back (no writes, no lock)."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.db = db

    # -- the set-up -------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def specs(self) -> list[SpecInfo]:
        rows = self.db.execute("SELECT info FROM specs ORDER BY position").fetchall()
        return [SpecInfo.from_dict(json.loads(i)) for (i,) in rows]

    def models(self) -> list[str]:
        return [n for (n,) in self.db.execute("SELECT name FROM models ORDER BY rowid")]

    def sessions(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, started, finished, info FROM sessions ORDER BY id").fetchall()
        return [{"id": i, "started": s, "finished": f, **json.loads(info)} for i, s, f, info in rows]

    # -- cells ------------------------------------------------------------------------------
    def cells(self) -> list[StoredCell]:
        """Every committed cell, in commit order."""
        rows = self.db.execute(f"SELECT {_CELL_FIELDS} FROM cells").fetchall()
        return [
            StoredCell(Cell(k, m, a, float(e), b), f, r, sh, sha, s, ses)
            for k, m, a, e, b, f, r, sh, sha, s, ses in rows
        ]

    def completed(self) -> set[str]:
        """Keys of the committed cells."""
        return {k for (k,) in self.db.execute("SELECT key FROM cells")}

    def missing(self) -> list[str]:
        """Keys of the cells the latest invocation planned that are not committed yet."""
        planned = json.loads(self.meta().get("planned", "[]"))
        done = self.completed()
        return [k for k in planned if k not in done]

    def load(self, cell: Cell) -> CellOutput:
        """A committed cell, with its adversarial points (checksum verified)."""
        row = self.db.execute(
            "SELECT first, rows, shard, sha256, seconds, session FROM cells WHERE key=?", (cell.key,)
        ).fetchone()
        if row is None:
            raise StoreError(f"{cell.describe()} is not stored in {self.path}")
        return self.output(StoredCell(cell, *row))

    def output(self, stored: StoredCell, points: bool = True) -> CellOutput:
        """The records of a committed cell and (with ``points``) its verified adversarial points."""
        cell, first, rows = stored.cell, stored.first, stored.rows
        cols = self._columns(cell, first, first + rows - 1)
        if len(cols["index"]) != rows:
            raise StoreError(
                f"{cell.describe()} in {self.path} has {len(cols['index'])} records, expected {rows}"
            )
        out = CellOutput(cell, cols, seconds=stored.seconds)
        if points and stored.shard is not None and stored.sha256 is not None:
            shard = self.path / "shards" / stored.shard
            out.indices, out.adversarial = read_shard(shard, stored.sha256, cell.describe())
        return out

    def _columns(self, cell: Cell, first: int, last: int) -> dict[str, np.ndarray]:
        if cell.kind == "clean":
            return select_columns(
                self.db,
                "clean",
                "model=? AND idx BETWEEN ? AND ?",
                (cell.model, first, last),
                CLEAN_COLUMNS,
                CLEAN_SQL,
            )
        return select_columns(
            self.db,
            "records",
            "model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
            (cell.model, cell.attack, cell.epsilon, first, last),
            ATTACK_COLUMNS,
            ATTACK_SQL,
        )

    def verify(self) -> list[tuple[Cell, str]]:
        """Every committed cell whose records or shard are damaged, with the reason."""
        bad = []
        for stored in self.cells():
            try:
                self.output(stored)
            except StoreError as exc:
                bad.append((stored.cell, str(exc)))
        return bad

    # -- the evaluation ---------------------------------------------------------------------
    def inputs(self) -> tuple[Tensor, Tensor] | None:
        """The first inputs and their indices (kept for the report's image grids), if saved."""
        path = self.path / "inputs.npz"
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return torch.from_numpy(z["points"]), torch.from_numpy(z["indices"])
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{path} is unreadable ({exc})") from None

    def evaluation(self, examples: bool = True) -> Evaluation:
        """Everything this run folder holds, as an :class:`Evaluation` (curves, checks, examples)."""
        try:
            meta = self.meta()
            samples = int(meta.get("samples", "0"))
            picker = ExamplePicker(pool=EXAMPLE_POOL)
            outputs = []
            for stored in self.cells():
                cell = stored.cell
                with_points = examples and cell.kind == "budget" and stored.first < EXAMPLE_POOL
                out = self.output(stored, points=with_points)
                picker.add(out)
                outputs.append(out.without_points())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results database in {self.path} is corrupt ({exc})") from None
        ev = Evaluation.from_outputs(
            self.models(), self.specs(), samples, outputs, meta=self._meta_for_report(meta)
        )
        inputs = self.inputs() if examples else None
        if inputs is not None:
            x, y = inputs
            ev.examples.extend(picker.examples(x, y, ev.clean_columns))
        return ev

    def _meta_for_report(self, meta: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(meta)
        out["classes"] = json.loads(meta.get("classes", "[]"))
        out["sessions"] = self.sessions()
        out["run"] = str(self.path)
        config = self.path / "config.toml"
        out["config"] = config.read_text(encoding="utf-8") if config.exists() else ""
        out["seconds"] = float(self.db.execute("SELECT COALESCE(SUM(seconds), 0) FROM cells").fetchone()[0])
        return out
