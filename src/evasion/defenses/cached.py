"""Trained defence state kept in the user cache, so that re-running an evaluation does not retrain.

:func:`load_or_train` stores what a defence learned (a detector's weights, its threshold ...) as
``<cache>/<folder>/<key>.pt`` with a JSON sidecar ``<key>.json`` that holds the file's sha256
and a description. The key is a digest of everything the result depends on (:func:`digest`):
change any of it and a new entry is trained. Files are written atomically, a lock file makes
concurrent processes wait for the one that trains, entries are read back with
``torch.load(weights_only=True)`` (no code is unpickled), and an entry that is missing, corrupt
(checksum) or unreadable is trained again, with a warning. A read-only cache only warns.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import torch

from .._cache import atomic_write_bytes, atomic_write_text, cache_dir, file_lock, sha256_file
from ..errors import ConfigError

__all__ = ["Payload", "digest", "entry_paths", "load_or_train"]

#: what a cache entry holds: tensors, numbers, strings and dicts / lists of them (weights_only-safe)
Payload = dict[str, Any]

_KEY = re.compile(r"^[0-9a-z][0-9a-z._-]{0,127}$")


def digest(*parts: Any, length: int = 24) -> str:
    """A short hex sha256 of JSON-serialisable ``parts`` (dict keys sorted): a cache key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def entry_paths(folder: str, key: str) -> tuple[Path, Path]:
    """The payload file and its JSON sidecar of entry ``key`` in the cache sub-folder ``folder``."""
    if not _KEY.match(key) or not _KEY.match(folder):
        raise ConfigError(f"cache folder and key must be short lower-case names, got {folder!r} / {key!r}")
    base = cache_dir(folder)
    return base / f"{key}.pt", base / f"{key}.json"


def _read(
    weights: Path, sidecar: Path, key: str, what: str, check: Callable[[Payload], object] | None
) -> Payload | None:
    """The cached payload, or ``None`` (with a warning when files exist but are unusable)."""
    if not weights.exists() and not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            problem = "does not belong to this key (stale)"
        elif sha256_file(weights) != meta.get("sha256"):
            problem = "fails its sha256 checksum (corrupt)"
        else:
            payload = torch.load(weights, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict):
                raise TypeError(f"it holds a {type(payload).__name__}, not a dict")
            if check is not None:
                check(payload)
            return payload
    except Exception as exc:  # whatever is wrong with the files, training again fixes it
        problem = f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    warnings.warn(f"the cached {what} ({weights}) {problem}; training it again", RuntimeWarning, stacklevel=3)
    return None


def _write(weights: Path, sidecar: Path, key: str, payload: Payload, meta: dict[str, Any]) -> None:
    """Write the payload, then the sidecar with its sha256 (a read-only cache only warns)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write_bytes(weights, buffer.getvalue())
        info = {**meta, "key": key, "sha256": sha256_file(weights), "torch": torch.__version__}
        atomic_write_text(sidecar, json.dumps(info, indent=2, sort_keys=True, default=repr) + "\n")
    except OSError as exc:
        warnings.warn(f"cannot write the cache entry {weights}: {exc}", RuntimeWarning, stacklevel=3)


def load_or_train(
    folder: str,
    key: str,
    train: Callable[[], Payload],
    *,
    meta: dict[str, Any] | Callable[[Payload], dict[str, Any]] | None = None,
    what: str = "defence",
    check: Callable[[Payload], object] | None = None,
) -> tuple[Payload, bool]:
    """``(payload, from_cache)``: entry ``key`` of ``<cache>/<folder>``, made by ``train()`` if needed.

    ``train`` returns the payload to store (loadable with ``weights_only=True``: tensors, numbers,
    strings, dicts and lists); ``meta`` (JSON-able, or a function of the new payload giving it) is
    written to the sidecar for people to read.
    ``check(payload)`` may raise on a cached payload that cannot be used (e.g. weights of another
    shape): the entry is then trained again, like a corrupt one.
    A lock serialises concurrent processes: one trains, the others then load its result.
    """
    weights, sidecar = entry_paths(folder, key)
    with ExitStack() as stack:
        with suppress(OSError):  # a read-only cache: go on without the lock
            stack.enter_context(file_lock(weights.parent / f".{key}.lock"))
        cached = _read(weights, sidecar, key, what, check)
        if cached is not None:
            return cached, True
        payload = train()
        if not isinstance(payload, dict):
            raise TypeError(f"train() must return a dict to cache, got {type(payload).__name__}")
        info = meta(payload) if callable(meta) else meta
        _write(weights, sidecar, key, payload, info or {})
        return payload, False
