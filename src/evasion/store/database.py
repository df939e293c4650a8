"""The SQLite side of a run folder: schema, versioning, one-transaction cell commits, checksums.

WAL journal with ``synchronous=FULL``: a commit that returned is on disk, and a process killed
at any moment (``kill -9``) leaves either the whole cell or nothing of it.

Each committed cell has a SHA-256 over its cell entry and its record rows (:func:`records_digest`),
written in the transaction that commits the cell (table ``checksums``), so that a value edited in
the database afterwards is detected when the cell is read. It detects accidental or naive edits,
not a forger: whoever can write the database can also rewrite the checksum (there is no secret key).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..evaluation.records import ATTACK_COLUMNS, CERTIFY_COLUMNS, CLEAN_COLUMNS

__all__ = ["FORMAT_VERSION", "connect", "insert_columns", "records_digest", "select_columns"]

#: bump when the layout changes in a way older/newer versions cannot read
FORMAT_VERSION = 1

#: SQL column names (``index`` is a keyword)
ATTACK_SQL = ["idx" if c == "index" else c for c in ATTACK_COLUMNS]
CLEAN_SQL = ["idx" if c == "index" else c for c in CLEAN_COLUMNS]
CERTIFY_SQL = ["idx" if c == "index" else c for c in CERTIFY_COLUMNS]

_TYPES = {np.int64: "INTEGER", np.int8: "INTEGER", np.bool_: "INTEGER", np.float64: "REAL"}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS specs (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, info TEXT NOT NULL,
    position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL NOT NULL,
    finished REAL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL,
    attack TEXT NOT NULL, epsilon REAL NOT NULL, batch INTEGER NOT NULL, first INTEGER NOT NULL,
    rows INTEGER NOT NULL, shard TEXT, sha256 TEXT, seconds REAL NOT NULL, session INTEGER NOT NULL,
    committed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (model TEXT NOT NULL, attack TEXT NOT NULL, epsilon REAL NOT NULL,
    {", ".join(f"{c} {_TYPES[t]}" for c, t in zip(ATTACK_SQL, ATTACK_COLUMNS.values()))},
    PRIMARY KEY (model, attack, epsilon, idx));
CREATE TABLE IF NOT EXISTS clean (model TEXT NOT NULL,
    {", ".join(f"{c} {_TYPES[t]}" for c, t in zip(CLEAN_SQL, CLEAN_COLUMNS.values()))},
    PRIMARY KEY (model, idx));
CREATE TABLE IF NOT EXISTS checksums (key TEXT PRIMARY KEY, records TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (model TEXT NOT NULL, attack TEXT NOT NULL, epsilon REAL NOT NULL,
    {", ".join(f"{c} {_TYPES[t]}" for c, t in zip(CERTIFY_SQL, CERTIFY_COLUMNS.values()))},
    PRIMARY KEY (model, attack, epsilon, idx));
"""

#: columns added to ``sessions`` after format 1 was released (added on open, NULL in old rows):
#: how the session ended, how many cells it computed and how many it reused from earlier sessions
_SESSION_COLUMNS = {"status": "TEXT", "computed": "INTEGER", "reused": "INTEGER"}

#: the meta key holding the first session whose cells all carry a checksum (older ones predate them)
CHECKSUMS_SINCE = "checksums_since"


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the database and check that it is a healthy results database."""
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        status = db.execute("PRAGMA quick_check").fetchone()
        if status is None or status[0] != "ok":
            raise StoreError(f"results database {path} is corrupt ({status[0] if status else 'no answer'})")
        db.executescript(SCHEMA)
        _migrate(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"results database {path} is corrupt or not a database ({exc})") from None
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns newer versions record to a store written before them (nothing is recomputed).

    Old cells get no checksum here: computing one now would bless whatever the rows hold today,
    so they stay "unverified (written before checksums)".
    """
    have = {row[1] for row in db.execute("PRAGMA table_info(sessions)")}
    for name, kind in _SESSION_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE sessions ADD COLUMN {name} {kind}")


@contextmanager
def transaction(db: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """One atomic transaction; database errors (a full disk ...) become a :class:`StoreError`."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot write the results database ({exc}) while {what}") from None
    try:
        yield db
        db.execute("COMMIT")
    except sqlite3.IntegrityError as exc:
        db.execute("ROLLBACK")
        raise StoreError(f"{what}: already stored ({exc}); is another process writing this run?") from None
    except sqlite3.DatabaseError as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise StoreError(
            f"cannot write the results database while {what} ({exc}); what was committed before is kept"
        ) from None
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _py(value: Any) -> Any:
    if isinstance(value, np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer, np.bool_)):
        return int(value)
    return value


def insert_columns(
    db: sqlite3.Connection,
    table: str,
    prefix: Sequence[Any],
    sql: Sequence[str],
    columns: dict[str, np.ndarray],
) -> None:
    """Insert one row per sample: ``prefix`` values followed by the columns."""
    names = list(columns)
    head = {
        "records": ["model", "attack", "epsilon"],
        "certificates": ["model", "attack", "epsilon"],
        "clean": ["model"],
    }[table]
    marks = ", ".join("?" * (len(head) + len(names)))
    n = len(columns[names[0]])
    rows = [tuple(prefix) + tuple(_py(columns[k][i]) for k in names) for i in range(n)]
    db.executemany(f"INSERT INTO {table} ({', '.join(head + list(sql))}) VALUES ({marks})", rows)


def select_columns(
    db: sqlite3.Connection,
    table: str,
    where: str,
    args: Sequence[Any],
    spec: dict[str, Any],
    sql: Sequence[str],
) -> dict[str, np.ndarray]:
    """Rows of ``table`` ordered by sample index, as typed numpy columns."""
    rows = db.execute(
        f"SELECT {', '.join(sql)} FROM {table} WHERE {where} ORDER BY idx", tuple(args)
    ).fetchall()
    out = {}
    for j, (name, dtype) in enumerate(spec.items()):
        values = [r[j] for r in rows]
        try:
            if dtype is np.float64:
                out[name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
            else:
                out[name] = np.array(values, dtype=dtype).reshape(len(rows))
        except (TypeError, ValueError) as exc:  # a value edited to text or NULL by hand
            raise StoreError(
                f"column {name!r} of table {table} holds a value that is not a number ({exc})"
            ) from None
    return out


def _canonical(values: np.ndarray, dtype: Any, order: np.ndarray) -> bytes:
    """The little-endian bytes of one column in sample order, as the database gives it back.

    NaN (stored as NULL) becomes the one quiet NaN and -0.0 becomes 0.0 (SQLite may store an
    integral REAL as an integer), so the digest of the rows written equals that of the rows read.
    """
    if dtype is np.float64:
        a = np.asarray(values, dtype=np.float64)[order].copy()
        a[np.isnan(a)] = np.nan
        return (a + 0.0).astype("<f8").tobytes()
    if dtype is np.bool_:
        return np.asarray(values, dtype=np.bool_)[order].astype("<i1").tobytes()
    return np.asarray(values).astype(np.int64)[order].astype("<i8").tobytes()


def _number(v: Any) -> str:
    return (float(v) + 0.0).hex()


def records_digest(entry: Sequence[Any], spec: dict[str, Any], columns: dict[str, np.ndarray]) -> str:
    """SHA-256 of a cell: its entry (key, kind, model, attack, epsilon, batch, first, rows, shard,
    shard sha256, seconds) and its per-sample columns sorted by sample index, column by column.

    Numbers enter as ``float.hex`` (exact; an integral REAL that SQLite returns as an integer
    gives the same text), so the same cell written and read back gives the same digest; any
    changed value, row or entry field gives another.
    """
    head = [_number(v) if isinstance(v, (int, float, np.number)) else v for v in entry]
    h = hashlib.sha256(b"evasion-cell-records-v1\0")
    h.update(json.dumps(head).encode())
    order = np.argsort(np.asarray(columns["index"], dtype=np.int64), kind="stable")
    for name, dtype in spec.items():
        h.update(f"\0{name}:{np.dtype(dtype).str}:{len(order)}\0".encode())
        h.update(_canonical(columns[name], dtype, order))
    return h.hexdigest()
