"""Reading a run folder: committed cells, their records and shards, and the `Evaluation` they make.

Reading takes no lock: a run folder can be read (``evasion runs show``, ``evasion report``) while
another process writes it, and sees the cells committed so far.

Every cell read is checked: its record rows and entry against the checksum committed with them
(a mismatch is a :class:`RecordsModified`), its shard against the shard's checksum. Cells
committed before checksums existed are read as "unverified (written before checksums)".
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import StoreError
from ..evaluation.engine import ExamplePicker
from ..evaluation.records import ATTACK_COLUMNS, CERTIFY_COLUMNS, CLEAN_COLUMNS, Cell, CellOutput, columns_of
from ..evaluation.result import Evaluation
from ..evaluation.spec import CertifyInfo, SpecInfo
from .database import ATTACK_SQL, CERTIFY_SQL, CHECKSUMS_SINCE, CLEAN_SQL, records_digest, select_columns
from .shards import read_shard

__all__ = ["EXAMPLE_POOL", "Integrity", "RecordsModified", "RunReader", "StoredCell", "session_status"]

#: the first inputs kept for the report's image grids (and the cells read back for examples)
EXAMPLE_POOL = 32

_CELL_FIELDS = (
    "c.kind, c.model, c.attack, c.epsilon, c.batch, c.first, c.rows, c.shard, c.sha256, c.seconds, "
    "c.session, k.records"
)
_CELLS = "cells c LEFT JOIN checksums k ON k.key = c.key"

#: what a cell without a checksum is, when it was committed before checksums existed
UNVERIFIED = "unverified (written before checksums)"


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
    records_sha256: str | None = None  # checksum of its entry and records (None: written before checksums)

    @property
    def key(self) -> str:
        return self.cell.key

    def entry(self) -> tuple[object, ...]:
        """The cell entry's fields that its records checksum covers (see ``records_digest``)."""
        c = self.cell
        return (
            c.key,
            c.kind,
            c.model,
            c.attack,
            c.epsilon,
            c.batch,
            self.first,
            self.rows,
            self.shard,
            self.sha256,
            self.seconds,
        )


class RecordsModified(StoreError):
    """A committed cell's records (or its entry) no longer match the checksum written with them."""

    def __init__(self, stored: StoredCell, where: str, reason: str):
        self.stored = stored
        self.where = where
        super().__init__(
            f"{where}: {reason}; its numbers cannot be trusted. `evasion runs check RUN --repair` drops "
            "the modified cells so that a re-run recomputes them"
        )


@dataclass
class Integrity:
    """The outcome of checking every committed cell of a run folder."""

    cells: int = 0
    verified: int = 0
    unverified: list[StoredCell] = field(default_factory=list)  # committed before checksums existed
    modified: list[RecordsModified] = field(default_factory=list)  # records differ from their checksum
    damaged: list[tuple[StoredCell, str]] = field(default_factory=list)  # missing rows, bad shard ...

    @property
    def ok(self) -> bool:
        """No modified and no damaged cell (unverified ones are reported, not failed)."""
        return not self.modified and not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {
            "cells": self.cells,
            "verified": self.verified,
            "unverified": len(self.unverified),
            "modified": [m.where for m in self.modified],
            "damaged": [f"{s.cell.describe()}: {why}" for s, why in self.damaged],
        }


def session_status(session: dict[str, Any], current: int | None = None) -> str:
    """How a recorded session ended: ``finished``, ``interrupted``, ``failed: ...``, or, when no end
    was recorded, ``running`` (this process's open session, or its process is alive on this host)
    or ``killed (no end recorded)``."""
    if session.get("status"):
        return str(session["status"])
    if session.get("finished"):
        return "finished"  # written before statuses were recorded: its end was recorded, so it ended
    if current is not None and session.get("id") == current:
        return "running"
    pid, host = session.get("pid"), session.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return "running, or killed (no end recorded)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "killed (no end recorded)"
    except OSError:  # exists, owned by someone else
        pass
    return "running"


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

    def certifications(self) -> dict[str, CertifyInfo]:
        """The certification methods recorded by name (method, norm, options, fingerprint)."""
        raw = self.meta().get("certify")
        if not raw:
            return {}
        try:
            return {n: CertifyInfo.from_dict(d) for n, d in json.loads(raw).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"the certifications recorded in {self.path} are unreadable ({exc})") from None

    def sessions(self, current: int | None = None) -> list[dict[str, Any]]:
        """Every session: its information, ``started``/``finished`` times, ``computed`` and ``reused``
        cell counts (None if not recorded) and ``status`` (see :func:`session_status`; ``current``:
        the id of the session this process has open)."""
        rows = self.db.execute(
            "SELECT id, started, finished, info, status, computed, reused FROM sessions ORDER BY id"
        ).fetchall()
        out = []
        for i, s, f, info, status, computed, reused in rows:
            row = {
                **json.loads(info),
                "id": i,
                "started": s,
                "finished": f,
                "computed": computed,
                "reused": reused,
            }
            row["status"] = session_status({**row, "status": status}, current)
            out.append(row)
        return out

    # -- cells ------------------------------------------------------------------------------
    def cells(self) -> list[StoredCell]:
        """Every committed cell, in commit order."""
        rows = self.db.execute(f"SELECT {_CELL_FIELDS} FROM {_CELLS} ORDER BY c.rowid").fetchall()
        return [
            StoredCell(Cell(k, m, a, float(e), b), f, r, sh, sha, s, ses, rec)
            for k, m, a, e, b, f, r, sh, sha, s, ses, rec in rows
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
            "SELECT c.kind, c.model, c.attack, c.epsilon, c.batch, c.first, c.rows, c.shard, c.sha256, "
            f"c.seconds, c.session, k.records FROM {_CELLS} WHERE c.key=?",
            (cell.key,),
        ).fetchone()
        if row is None:
            raise StoreError(f"{cell.describe()} is not stored in {self.path}")
        k, m, a, e, b, *rest = row
        return self.output(StoredCell(Cell(k, m, a, float(e), b), *rest))

    def output(self, stored: StoredCell, points: bool = True, verify: bool = True) -> CellOutput:
        """The records of a committed cell and (with ``points``) its verified adversarial points.

        ``verify``: check the records against their checksum (a :class:`RecordsModified` if they
        differ); the shard is always checked.
        """
        cell, first, rows = stored.cell, stored.first, stored.rows
        cols = self._columns(cell, first, first + rows - 1)
        if len(cols["index"]) != rows:
            raise StoreError(
                f"{cell.describe()} in {self.path} has {len(cols['index'])} records, expected {rows}"
            )
        if verify:
            self.check_records(stored, cols)
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
        if cell.kind == "certify":
            return select_columns(
                self.db,
                "certificates",
                "model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
                (cell.model, cell.attack, cell.epsilon, first, last),
                CERTIFY_COLUMNS,
                CERTIFY_SQL,
            )
        return select_columns(
            self.db,
            "records",
            "model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
            (cell.model, cell.attack, cell.epsilon, first, last),
            ATTACK_COLUMNS,
            ATTACK_SQL,
        )

    # -- integrity --------------------------------------------------------------------------
    def describe(self, cell: Cell) -> str:
        """A cell named by model, attack, norm and epsilon (and batch), for messages."""
        if cell.kind == "clean":
            return f"model {cell.model}, clean predictions, batch {cell.batch}"
        if cell.kind == "certify":
            return f"model {cell.model}, certification {cell.attack}, epsilon {cell.epsilon:g}, batch {cell.batch}"
        norms = {s.name: s.norm for s in self.specs()}
        eps = "unbounded" if math.isinf(cell.epsilon) else f"{cell.epsilon:g}"
        return (
            f"model {cell.model}, attack {cell.attack}, norm {norms.get(cell.attack, '?')}, "
            f"epsilon {eps}, batch {cell.batch}"
        )

    def check_records(self, stored: StoredCell, cols: dict[str, np.ndarray]) -> bool:
        """True if the records match their checksum, False if the cell predates checksums; a
        :class:`RecordsModified` if they differ (or the checksum of a newer cell was removed)."""
        if stored.records_sha256 is None:
            since = self.meta().get(CHECKSUMS_SINCE)
            if since is not None and since.isdigit() and stored.session >= int(since):
                raise RecordsModified(
                    stored,
                    self.describe(stored.cell),
                    "its checksum is missing (removed, or the cell was added by hand)",
                )
            return False
        if records_digest(stored.entry(), columns_of(stored.cell.kind), cols) != stored.records_sha256:
            raise RecordsModified(
                stored,
                self.describe(stored.cell),
                "its stored records differ from the checksum written when it was committed",
            )
        return True

    def integrity(self) -> Integrity:
        """Check every committed cell: records against their checksum, row counts, shards."""
        out = Integrity()
        for stored in self.cells():
            out.cells += 1
            try:
                cols = self.output(stored, verify=False).columns  # row count and shard checked
            except StoreError as exc:
                out.damaged.append((stored, str(exc)))
                continue
            try:
                if self.check_records(stored, cols):
                    out.verified += 1
                else:
                    out.unverified.append(stored)
            except RecordsModified as exc:
                out.modified.append(exc)
        return out

    def verify(self) -> list[tuple[Cell, str]]:
        """Every committed cell whose records were modified or whose records or shard are damaged."""
        found = self.integrity()
        return [(m.stored.cell, str(m)) for m in found.modified] + [(s.cell, why) for s, why in found.damaged]

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

    def evaluation(
        self, examples: bool = True, *, allow_modified: bool = False, session: int | None = None
    ) -> Evaluation:
        """Everything this run folder holds, as an :class:`Evaluation` (curves, checks, examples).

        A cell whose records differ from their checksum is refused (a :class:`StoreError` naming
        every such cell) unless ``allow_modified``; then it is used and named in
        ``meta["integrity"]["modified"]``, which the report shows as an error banner.
        ``meta["integrity"]`` also counts the verified cells and those written before checksums.
        ``session``: the id of the session this process has open (shown as running).
        """
        integrity = Integrity()
        try:
            meta = self.meta()
            samples = int(meta.get("samples", "0"))
            picker = ExamplePicker(pool=EXAMPLE_POOL)
            outputs = []
            for stored in self.cells():
                cell = stored.cell
                with_points = examples and cell.kind == "budget" and stored.first < EXAMPLE_POOL
                out = self.output(stored, points=with_points, verify=False)
                integrity.cells += 1
                try:
                    if self.check_records(stored, out.columns):
                        integrity.verified += 1
                    else:
                        integrity.unverified.append(stored)
                except RecordsModified as exc:
                    integrity.modified.append(exc)
                picker.add(out)
                outputs.append(out.without_points())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results database in {self.path} is corrupt ({exc})") from None
        if integrity.modified and not allow_modified:
            raise StoreError(modified_message(self.path, integrity.modified))
        report_meta = self._meta_for_report(meta, session)
        report_meta["integrity"] = integrity.to_dict()
        ev = Evaluation.from_outputs(
            self.models(),
            self.specs(),
            samples,
            outputs,
            meta=report_meta,
            certifications=self.certifications().values(),
        )
        inputs = self.inputs() if examples else None
        if inputs is not None:
            x, y = inputs
            ev.examples.extend(picker.examples(x, y, ev.clean_columns))
        return ev

    def _meta_for_report(self, meta: dict[str, str], session: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(meta)
        out["classes"] = json.loads(meta.get("classes", "[]"))
        out["sessions"] = self.sessions(session)
        out["run"] = str(self.path)
        config = self.path / "config.toml"
        out["config"] = config.read_text(encoding="utf-8") if config.exists() else ""
        out["seconds"] = float(self.db.execute("SELECT COALESCE(SUM(seconds), 0) FROM cells").fetchone()[0])
        return out


def modified_message(path: Path, modified: list[RecordsModified], show: int = 5) -> str:
    """One message naming the modified cells (the first ``show``) and their count."""
    names = "; ".join(m.where for m in modified[:show])
    more = f"; and {len(modified) - show} more" if len(modified) > show else ""
    return (
        f"{path}: {len(modified)} cell(s) were modified after they were committed (their records differ "
        f"from their checksums): {names}{more}. `evasion runs check {path}` lists them; "
        "`--repair` drops them so that a re-run recomputes them"
    )
