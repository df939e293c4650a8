"""`RunStore`: a resumable run folder (resolved config, SQLite records, adversarial shards, report).

Layout::

    RUN/run.json           format version, evasion version, creation time
    RUN/config.toml        the resolved configuration of the latest invocation
    RUN/results.sqlite     per-sample records, cells, sessions (WAL)
    RUN/shards/*.npz       adversarial points of each cell (compressed, checksummed)
    RUN/inputs.npz         the first inputs (for the report's image grids)
    RUN/report.html        the report

A cell is committed in one transaction after its shard is on disk; a run killed at any moment
resumes from its committed cells, and adding an epsilon or an attack computes only what is new.
Only one process may write a run folder at a time (an advisory lock).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from .._cache import atomic_write_bytes, atomic_write_text
from ..errors import StoreError
from ..evaluation.engine import ExamplePicker, Setup
from ..evaluation.records import ATTACK_COLUMNS, CLEAN_COLUMNS, Cell, CellOutput
from ..evaluation.result import Evaluation
from ..evaluation.spec import SpecInfo
from .database import (
    ATTACK_SQL,
    CLEAN_SQL,
    FORMAT_VERSION,
    connect,
    insert_columns,
    select_columns,
    transaction,
)
from .shards import encode, read_shard, shard_name, write_shard

__all__ = ["RunStore"]

EXAMPLE_POOL = 32


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
        self._check_version(create)
        self.db = connect(self.path / "results.sqlite")
        self.session_info = dict(session or {})
        self.config_text = config_text
        self.session: int | None = None
        self._lock: int | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunStore:
        """Open an existing run folder for reading."""
        return cls(path, create=False)

    # -- versioning and locking --------------------------------------------------------------------
    def _check_version(self, create: bool) -> None:
        marker = self.path / "run.json"
        if not marker.exists():
            if (self.path / "results.sqlite").exists() or not create:
                raise StoreError(f"{self.path} has no run.json: not a run folder of this evasion version")
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
                f"{self.path} was written by evasion {info.get('evasion', '?')} (run format {version}); "
                f"this evasion {__version__} reads format {FORMAT_VERSION}: use a new --out folder"
            )

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

    def close(self) -> None:
        """Finish the session and release the folder."""
        if self.session is not None:
            try:
                with transaction(self.db, "closing the session"):
                    self.db.execute("UPDATE sessions SET finished=? WHERE id=?", (time.time(), self.session))
            except StoreError:
                pass
            self.session = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Sink protocol ----------------------------------------------------------------------
    def prepare(self, setup: Setup) -> None:
        """Check that the run folder holds results of the same data, models and attacks; record them."""
        self._acquire()
        meta = self.meta()
        wanted = {
            "data": setup.data,
            "samples": str(setup.samples),
            "batch_size": str(setup.batch_size),
            "seed": str(setup.seed),
            "data_fingerprint": setup.data_fingerprint,
        }
        for key, value in wanted.items():
            if key in meta and meta[key] != value:
                raise StoreError(
                    f"{self.path} holds results for {key} = {meta[key]}, not {value}: "
                    "use another --out folder (or the same settings) to keep results consistent"
                )
        models = dict(self.db.execute("SELECT name, fingerprint FROM models").fetchall())
        for name, fp in setup.models.items():
            if name in models and models[name] != fp:
                raise StoreError(
                    f"model {name!r} differs from the one whose results {self.path} holds (weights changed); "
                    "use another --out folder or another model name"
                )
        specs = {
            n: (fp, json.loads(i))
            for n, fp, i in self.db.execute("SELECT name, fingerprint, info FROM specs")
        }
        for s in setup.specs:
            if s.name in specs and specs[s.name][0] != s.fingerprint:
                raise StoreError(
                    f"attack {s.name!r} is configured differently from the one whose results {self.path} holds "
                    f"(was {specs[s.name][1]['attack']}, now {s.attack}): rename it or use another --out folder"
                )
        self._record_setup(setup, wanted, specs)
        if self.config_text is not None:
            self.save_config(self.config_text)

    def _record_setup(self, setup: Setup, wanted: dict[str, str], specs: dict[str, tuple[str, Any]]) -> None:
        with transaction(self.db, "recording the run set-up"):
            for key, value in {**wanted, "classes": json.dumps(setup.classes)}.items():
                self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('planned', ?)", (json.dumps(setup.planned),))
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
            cur = self.db.execute(
                "INSERT INTO sessions (started, info) VALUES (?, ?)",
                (time.time(), json.dumps(self.session_info, default=str)),
            )
            self.session = cur.lastrowid

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
        return {k for (k,) in self.db.execute("SELECT key FROM cells")}

    def commit(self, output: CellOutput) -> None:
        """Write the cell's shard, then its rows and its cell entry in one transaction."""
        cell = output.cell
        shard = sha = None
        if output.adversarial is not None and len(output.indices):
            shard = shard_name(cell.key)
            sha = write_shard(self.path / "shards" / shard, output.indices, output.adversarial)
        first = int(output.columns["index"][0]) if len(output) else 0
        with transaction(self.db, f"committing {cell.describe()}"):
            self.db.execute(
                "INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    cell.key,
                    cell.kind,
                    cell.model,
                    cell.attack,
                    cell.epsilon,
                    cell.batch,
                    first,
                    len(output),
                    shard,
                    sha,
                    output.seconds,
                    self.session or 0,
                    time.time(),
                ),
            )
            if cell.kind == "clean":
                insert_columns(self.db, "clean", (cell.model,), CLEAN_SQL, output.columns)
            else:
                insert_columns(
                    self.db, "records", (cell.model, cell.attack, cell.epsilon), ATTACK_SQL, output.columns
                )

    def load(self, cell: Cell) -> CellOutput:
        """A committed cell, with its adversarial points (checksum verified)."""
        row = self.db.execute(
            "SELECT first, rows, shard, sha256, seconds FROM cells WHERE key=?", (cell.key,)
        ).fetchone()
        if row is None:
            raise StoreError(f"{cell.describe()} is not stored in {self.path}")
        return self._output(cell, *row)

    def _output(
        self,
        cell: Cell,
        first: int,
        rows: int,
        shard: str | None,
        sha: str | None,
        seconds: float,
        points: bool = True,
    ) -> CellOutput:
        last = first + rows - 1
        if cell.kind == "clean":
            cols = select_columns(
                self.db,
                "clean",
                "model=? AND idx BETWEEN ? AND ?",
                (cell.model, first, last),
                CLEAN_COLUMNS,
                CLEAN_SQL,
            )
        else:
            cols = select_columns(
                self.db,
                "records",
                "model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
                (cell.model, cell.attack, cell.epsilon, first, last),
                ATTACK_COLUMNS,
                ATTACK_SQL,
            )
        if len(cols["index"]) != rows:
            raise StoreError(
                f"{cell.describe()} in {self.path} has {len(cols['index'])} records, expected {rows}"
            )
        out = CellOutput(cell, cols, seconds=seconds)
        if points and shard is not None and sha is not None:
            out.indices, out.adversarial = read_shard(self.path / "shards" / shard, sha, cell.describe())
        return out

    # -- reading ----------------------------------------------------------------------------------
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

    def cells(self) -> list[tuple[Cell, int, int, str | None, str | None, float, int]]:
        rows = self.db.execute(
            "SELECT kind, model, attack, epsilon, batch, first, rows, shard, sha256, seconds, session FROM cells"
        ).fetchall()
        return [
            (Cell(k, m, a, float(e), b), f, r, sh, sha, s, ses)
            for k, m, a, e, b, f, r, sh, sha, s, ses in rows
        ]

    def verify(self) -> list[tuple[Cell, str]]:
        """Every committed cell whose records or shard are damaged, with the reason."""
        bad = []
        for cell, first, rows, shard, sha, seconds, _ in self.cells():
            try:
                self._output(cell, first, rows, shard, sha, seconds)
            except StoreError as exc:
                bad.append((cell, str(exc)))
        return bad

    def forget(self, cells: list[Cell]) -> None:
        """Drop cells (their records and shards) so that the next run recomputes them.

        Cells are deterministic, so a recomputed cell equals the one it replaces and the cells
        computed after it stay valid.
        """
        self._acquire()
        with transaction(self.db, "dropping damaged cells"):
            for cell in cells:
                self.db.execute("DELETE FROM cells WHERE key=?", (cell.key,))
                if cell.kind == "clean":
                    self.db.execute(
                        "DELETE FROM clean WHERE model=? AND idx BETWEEN ? AND ?",
                        (cell.model, *self._range(cell)),
                    )
                else:
                    self.db.execute(
                        "DELETE FROM records WHERE model=? AND attack=? AND epsilon=? AND idx BETWEEN ? AND ?",
                        (cell.model, cell.attack, cell.epsilon, *self._range(cell)),
                    )
        for cell in cells:
            (self.path / "shards" / shard_name(cell.key)).unlink(missing_ok=True)

    def _range(self, cell: Cell) -> tuple[int, int]:
        size = int(self.meta().get("batch_size", "0"))
        return cell.batch * size, (cell.batch + 1) * size - 1

    def missing(self) -> list[str]:
        """Keys of the cells the latest invocation planned that are not committed yet."""
        planned = json.loads(self.meta().get("planned", "[]"))
        done = self.completed()
        return [k for k in planned if k not in done]

    def inputs(self) -> tuple[Tensor, Tensor] | None:
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
            for cell, first, rows, shard, sha, seconds, _ in self.cells():
                with_points = examples and cell.kind == "budget" and first < EXAMPLE_POOL
                out = self._output(cell, first, rows, shard, sha, seconds, points=with_points)
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

    def save_config(self, text: str) -> None:
        try:
            atomic_write_text(self.path / "config.toml", text)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path / 'config.toml'} ({exc.strerror or exc})") from None
