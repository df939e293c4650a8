"""Writing a run folder: the :class:`~evasion.evaluation.engine.Sink` that commits cells and sessions.

A cell is committed in one transaction after its shard is on disk, so a process killed at any
moment leaves either the whole cell or nothing of it; the same transaction stores the checksum of
the cell's records (:func:`~.database.records_digest`). Only one process may write a run folder at
a time (an advisory lock, taken on the first write).

A *session* is one ``evaluate()`` into the folder: it is recorded when the set-up is accepted,
counts the cells it computed and the cells it reused from earlier sessions, and ends
``finished`` (``evaluate()`` returned), ``interrupted`` (Ctrl-C) or ``failed: <error>``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from typing import Any

import numpy as np
from torch import Tensor

from .._cache import atomic_write_bytes, atomic_write_text
from ..errors import StoreError
from ..evaluation.engine import Setup
from ..evaluation.records import Cell, CellOutput, columns_of
from .database import (
    ATTACK_SQL,
    CERTIFY_SQL,
    CHECKSUMS_SINCE,
    CLEAN_SQL,
    insert_columns,
    records_digest,
    transaction,
)
from .reader import EXAMPLE_POOL, RunReader
from .shards import encode, shard_name, write_shard

__all__ = ["RunWriter"]

#: stored specs by name: (fingerprint, information as a dict)
_StoredSpecs = dict[str, tuple[str, Any]]


class RunWriter:
    """Commits cells, the run's set-up and session records; reads committed cells via ``reader``.

    ``session`` is free-form information recorded with this invocation (command, engine,
    environment); ``config_text`` is saved as ``RUN/config.toml`` once the set-up is accepted.
    """

    def __init__(
        self, reader: RunReader, *, session: dict[str, Any] | None = None, config_text: str | None = None
    ) -> None:
        self.reader = reader
        self.path = reader.path
        self.db = reader.db
        self.session_info = dict(session or {})
        self.config_text = config_text
        self.session: int | None = None
        self.computed = 0  # cells this session computed and committed
        self.reused = 0  # cells this session read back from earlier sessions
        self._lock: int | None = None

    # -- the Sink protocol ------------------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        """Check that the run folder holds results of the same data, models and attacks; record them.

        Each call starts a session (a previous one of this writer is recorded as finished first).
        """
        self._acquire()
        if self.session is not None:
            self.end("finished")
        wanted = {
            "data": setup.data,
            "samples": str(setup.samples),
            "batch_size": str(setup.batch_size),
            "seed": str(setup.seed),
            "data_fingerprint": setup.data_fingerprint,
        }
        self._check_meta(wanted)
        self._check_models(setup)
        specs = self._check_specs(setup)
        self._check_certifications(setup)
        self._record_setup(setup, wanted, specs)
        if self.config_text is not None:
            self.save_config(self.config_text)

    def save_inputs(self, x: Tensor, y: Tensor) -> None:
        """Keep the first inputs for the report's image grids."""
        n = min(EXAMPLE_POOL, int(x.shape[0]))
        path = self.path / "inputs.npz"
        if path.exists():
            return
        try:
            atomic_write_bytes(path, encode(y[:n].numpy().astype(np.int64), x[:n]))
        except OSError as exc:
            raise StoreError(f"cannot write {path} ({exc.strerror or exc})") from None

    def completed(self) -> set[str]:
        return self.reader.completed()

    def load(self, cell: Cell) -> CellOutput:
        """A committed cell (records checksum and shard verified), counted as reused by this session."""
        out = self.reader.load(cell)
        self.reused += 1
        return out

    def commit(self, output: CellOutput) -> None:
        """Write the cell's shard, then its rows, its cell entry and their checksum in one transaction."""
        cell = output.cell
        shard = sha = None
        if output.adversarial is not None and len(output.indices):
            shard = shard_name(cell.key)
            sha = write_shard(self.path / "shards" / shard, output.indices, output.adversarial)
        first = int(output.columns["index"][0]) if len(output) else 0
        entry = (
            cell.key,
            cell.kind,
            cell.model,
            cell.attack,
            float(cell.epsilon),
            int(cell.batch),
            first,
            len(output),
            shard,
            sha,
            float(output.seconds),
        )
        digest = records_digest(entry, columns_of(cell.kind), output.columns)
        with transaction(self.db, f"committing {cell.describe()}"):
            self.db.execute(
                "INSERT INTO cells (key, kind, model, attack, epsilon, batch, first, rows, shard, sha256, "
                "seconds, session, committed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*entry, self.session or 0, time.time()),
            )
            self.db.execute("INSERT OR REPLACE INTO checksums VALUES (?, ?)", (cell.key, digest))
            if self.session is not None:
                self.db.execute(
                    "UPDATE sessions SET computed=?, reused=? WHERE id=?",
                    (self.computed + 1, self.reused, self.session),
                )
            if cell.kind == "clean":
                insert_columns(self.db, "clean", (cell.model,), CLEAN_SQL, output.columns)
            elif cell.kind == "certify":
                insert_columns(
                    self.db,
                    "certificates",
                    (cell.model, cell.attack, cell.epsilon),
                    CERTIFY_SQL,
                    output.columns,
                )
            else:
                insert_columns(
                    self.db, "records", (cell.model, cell.attack, cell.epsilon), ATTACK_SQL, output.columns
                )
        self.computed += 1

    # -- checks of the set-up ---------------------------------------------------------------
    def _check_meta(self, wanted: dict[str, str]) -> None:
        meta = self.reader.meta()
        for key, value in wanted.items():
            if key in meta and meta[key] != value:
                raise StoreError(
                    f"{self.path} holds results for {key} = {meta[key]}, not {value}: "
                    "use another --out folder (or the same settings) to keep results consistent"
                )

    def _check_models(self, setup: Setup) -> None:
        models = dict(self.db.execute("SELECT name, fingerprint FROM models").fetchall())
        for name, fp in setup.models.items():
            if name in models and models[name] != fp:
                raise StoreError(
                    f"model {name!r} differs from the one whose results {self.path} holds (weights changed); "
                    "use another --out folder or another model name"
                )

    def _check_specs(self, setup: Setup) -> _StoredSpecs:
        """The stored specs (an attack configured differently under the same name is refused)."""
        specs = {
            n: (fp, json.loads(i))
            for n, fp, i in self.db.execute("SELECT name, fingerprint, info FROM specs")
        }
        stale = [
            s.name
            for s in setup.specs
            if s.role == "self-check" and s.name in specs and specs[s.name][0] != s.fingerprint
        ]
        if stale:  # a self-check depends on the attacks it re-checks: when they change, redo it
            self._drop_attacks(stale)
            specs = {n: v for n, v in specs.items() if n not in stale}
        for s in setup.specs:
            if s.name in specs and specs[s.name][0] != s.fingerprint:
                raise StoreError(
                    f"attack {s.name!r} is configured differently from the one whose results {self.path} holds "
                    f"(was {specs[s.name][1]['attack']}, now {s.attack}): rename it or use another --out folder"
                )
        return specs

    def _check_certifications(self, setup: Setup) -> None:
        """Drop the cells of a certification configured differently from the stored one (same
        name, other options, e.g. a longer MILP time limit): certificates are recomputed, never
        mixed, and the attacks' cells are kept."""
        stored = self.reader.certifications()
        stale = [
            c.name for c in setup.certify if c.name in stored and stored[c.name].fingerprint != c.fingerprint
        ]
        if stale:
            self.forget(
                [c.cell for c in self.reader.cells() if c.cell.kind == "certify" and c.cell.attack in stale]
            )

    def _record_setup(self, setup: Setup, wanted: dict[str, str], specs: _StoredSpecs) -> None:
        with transaction(self.db, "recording the run set-up"):
            for key, value in {**wanted, "classes": json.dumps(setup.classes)}.items():
                self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('planned', ?)", (json.dumps(setup.planned),))
            if setup.certify:
                known = {n: c.to_dict() for n, c in self.reader.certifications().items()}
                known.update({c.name: c.to_dict() for c in setup.certify})
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('certify', ?)", (json.dumps(known),))
            for name, fp in setup.models.items():
                self.db.execute("INSERT OR IGNORE INTO models VALUES (?, ?)", (name, fp))
            position = len(specs)
            for s in setup.specs:
                info = s.to_dict()
                if s.name in specs:
                    old = specs[s.name][1]["epsilons"]
                    info["epsilons"] = sorted({*old, *s.epsilons})
                    self.db.execute("UPDATE specs SET info=? WHERE name=?", (json.dumps(info), s.name))
                else:
                    self.db.execute(
                        "INSERT INTO specs VALUES (?, ?, ?, ?)",
                        (s.name, s.fingerprint, json.dumps(info), position),
                    )
                    position += 1
            info = {**self.session_info, "pid": os.getpid(), "host": socket.gethostname()}
            cur = self.db.execute(
                "INSERT INTO sessions (started, info, computed, reused) VALUES (?, ?, 0, 0)",
                (time.time(), json.dumps(info, default=str)),
            )
            self.session = cur.lastrowid
            self.computed = self.reused = 0
            # cells of this session and later ones must all carry a checksum; older ones predate them
            self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (CHECKSUMS_SINCE, str(self.session)))

    # -- other writes -----------------------------------------------------------------------
    def save_config(self, text: str) -> None:
        try:
            atomic_write_text(self.path / "config.toml", text)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path / 'config.toml'} ({exc.strerror or exc})") from None

    def _drop_attacks(self, names: list[str]) -> None:
        """Forget every cell of these attacks and their spec entries (derived results to recompute)."""
        self.forget(
            [c.cell for c in self.reader.cells() if c.cell.kind != "certify" and c.cell.attack in names]
        )
        with transaction(self.db, "dropping a stale self-check"):
            for name in names:
                self.db.execute("DELETE FROM specs WHERE name=?", (name,))

    def forget(self, cells: list[Cell]) -> None:
        """Drop cells (their records and shards) so that the next run recomputes them.

        Cells are deterministic, so a recomputed cell equals the one it replaces and the cells
        computed after it stay valid.
        """
        self._acquire()
        with transaction(self.db, "dropping damaged cells"):
            for cell in cells:
                self.db.execute("DELETE FROM cells WHERE key=?", (cell.key,))
                self.db.execute("DELETE FROM checksums WHERE key=?", (cell.key,))
                if cell.kind == "clean":
                    self.db.execute(
                        "DELETE FROM clean WHERE model=? AND idx BETWEEN ? AND ?",
                        (cell.model, *self._range(cell)),
                    )
                elif cell.kind == "certify":
                    self.db.execute(
                        "DELETE FROM certificates WHERE model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
                        (cell.model, cell.attack, cell.epsilon, *self._range(cell)),
                    )
                else:
                    self.db.execute(
                        "DELETE FROM records WHERE model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
                        (cell.model, cell.attack, cell.epsilon, *self._range(cell)),
                    )
        for cell in cells:
            (self.path / "shards" / shard_name(cell.key)).unlink(missing_ok=True)

    def _range(self, cell: Cell) -> tuple[int, int]:
        size = int(self.reader.meta().get("batch_size", "0"))
        return cell.batch * size, (cell.batch + 1) * size - 1

    # -- the session and the lock -----------------------------------------------------------
    def _acquire(self) -> None:
        if self._lock is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory lock, one writer by convention
            return
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"{self.path} is being written by another process") from None
        self._lock = fd

    def end(self, status: str) -> None:
        """Record the end of the session: its status (``finished``, ``interrupted``, ``failed: ...``),
        time and counts. A failure to record it is a warning: the cells are committed."""
        if self.session is None:
            return
        try:
            with transaction(self.db, "closing the session"):
                self.db.execute(
                    "UPDATE sessions SET finished=?, status=?, computed=?, reused=? WHERE id=?",
                    (time.time(), status, self.computed, self.reused, self.session),
                )
        except StoreError as exc:
            warnings.warn(
                f"{self.path}: the end of session {self.session} was not recorded ({exc})",
                RuntimeWarning,
                stacklevel=3,
            )
        self.session = None

    def close(self, status: str = "stopped") -> None:
        """End a session still open with ``status`` (``evaluate()`` ends its own as finished) and unlock."""
        self.end(status)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
