"""Adversarial examples on disk: one compressed ``.npz`` shard per cell, checksummed.

A shard is written to a temporary file, flushed to disk and renamed into place before the
database row that points to it is committed; its SHA-256 is stored in that row, so a shard that
was truncated or altered afterwards is detected when read, never silently used.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._cache import atomic_write_bytes
from ..errors import StoreError

__all__ = ["read_shard", "shard_name", "write_shard"]


def shard_name(key: str) -> str:
    """A file name for a cell key (stable, filesystem-safe)."""
    return hashlib.sha1(key.encode()).hexdigest()[:20] + ".npz"


def encode(indices: np.ndarray, points: Tensor) -> bytes:
    buf = io.BytesIO()
    array = points.detach().cpu().contiguous().numpy()
    np.savez_compressed(buf, indices=indices.astype(np.int64), points=array)
    return buf.getvalue()


def write_shard(path: Path, indices: np.ndarray, points: Tensor) -> str:
    """Write a shard atomically; returns its SHA-256. A full disk becomes a :class:`StoreError`."""
    data = encode(indices, points)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise StoreError(
            f"cannot write {path} ({exc.strerror or exc}); the results committed so far are kept"
        ) from None
    return hashlib.sha256(data).hexdigest()


def read_shard(path: Path, sha256: str, what: str) -> tuple[np.ndarray, Tensor]:
    """Read and verify a shard; a missing, altered or unreadable one is a :class:`StoreError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(
            f"shard {path} of {what} cannot be read ({exc.strerror or exc}); "
            "`evasion runs check RUN --repair` drops the damaged cells so that a re-run recomputes them"
        ) from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(
            f"shard {path} of {what} is corrupt (checksum mismatch); "
            "`evasion runs check RUN --repair` drops the damaged cells so that a re-run recomputes them"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            indices, points = z["indices"], z["points"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise StoreError(f"shard {path} of {what} is unreadable ({exc})") from None
    return indices.astype(np.int64), torch.from_numpy(np.ascontiguousarray(points))
