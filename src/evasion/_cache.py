"""The cache folder (trained zoo weights, trained defences, derived data) and safe writes into it.

The folder is ``platformdirs.user_cache_dir("evasion")`` unless the environment variable
``EVASION_CACHE`` names another one (tests and CI point it at a temporary folder). Files are
written atomically (temporary file in the same folder, then ``os.replace``) so that a crash or a
concurrent writer never leaves a half-written file behind under the final name.

:func:`load_or_train` keeps what training produced (a zoo model's state dict, a detector's weights
and threshold ...) as ``<cache>/<folder>/<name>.pt`` with a JSON sidecar ``<name>.json`` holding
the file's sha256, the facts the entry must match (its ``identity``: a digest key, a training
recipe) and a description. Entries are read back with ``torch.load(weights_only=True)`` (no code
is unpickled); one that is missing, corrupt (checksum), stale (another identity) or unreadable is
trained again, with a warning. A lock file makes concurrent processes wait for the one that
trains; a read-only cache only warns.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import platformdirs
import torch

from .errors import ConfigError

__all__ = [
    "CACHE_ENV",
    "Payload",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "digest",
    "entry_paths",
    "file_lock",
    "load_or_train",
    "sha256_file",
]

#: environment variable that overrides the cache folder
CACHE_ENV = "EVASION_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a sub-folder of it), created if missing; read from the env on every call."""
    base = os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("evasion")
    path = Path(base).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    """The process umask (read from /proc on Linux, else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _file_mode(target: Path) -> int:
    """The mode a plain ``open(target, "w")`` would leave: the existing file's, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then move it into place atomically.

    The file gets the mode a normal write would give it (``mkstemp`` alone makes it 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _file_mode(target))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) while the block runs.

    Lets concurrent processes (pytest-xdist workers, parallel jobs) wait for one of them to fill
    a cache entry instead of all computing it at once.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a+b") as f:
        if sys.platform == "win32":
            import msvcrt

            while True:  # LK_LOCK gives up after ~10 s: keep trying
                try:
                    f.seek(0)
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- trained entries: load, or train and store -----------------------------------------------------
#: what a cache entry holds: tensors, numbers, strings and dicts / lists of them (weights_only-safe)
Payload = dict[str, Any]

_NAME = re.compile(r"^[0-9a-z][0-9a-z._-]{0,127}$")


def digest(*parts: Any, length: int = 24) -> str:
    """A short hex sha256 of JSON-serialisable ``parts`` (dict keys sorted): a cache key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def entry_paths(folder: str, name: str) -> tuple[Path, Path]:
    """The payload file and its JSON sidecar of entry ``name`` in the cache sub-folder ``folder``."""
    if not _NAME.match(name) or not _NAME.match(folder):
        raise ConfigError(f"cache folder and key must be short lower-case names, got {folder!r} / {name!r}")
    base = cache_dir(folder)
    return base / f"{name}.pt", base / f"{name}.json"


def _problem(weights: Path, sidecar: Path, identity: Mapping[str, Any]) -> str | None:
    """Why the entry's files cannot be used as they are (``None``: the checksum and identity match)."""
    meta = json.loads(sidecar.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        return "has a sidecar that is not a JSON object (stale)"
    other = [k for k, v in identity.items() if meta.get(k) != v]
    if other:
        return f"has another {', '.join(other)} (stale)"
    if sha256_file(weights) != meta.get("sha256"):
        return "fails its sha256 checksum (corrupt)"
    return None


def _read(
    weights: Path,
    sidecar: Path,
    identity: Mapping[str, Any],
    what: str,
    check: Callable[[Payload], object] | None,
) -> Payload | None:
    """The stored payload, or ``None`` (with a warning when files exist but are unusable)."""
    if not weights.exists() and not sidecar.exists():
        return None
    try:
        problem = _problem(weights, sidecar, identity)
        if problem is None:
            payload = torch.load(weights, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict):
                raise TypeError(f"it holds a {type(payload).__name__}, not a dict")
            if check is not None:
                check(payload)
            return payload
    except Exception as exc:  # whatever is wrong with the files, training again fixes it
        problem = f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    warnings.warn(f"the cached {what} ({weights}) {problem}; retraining it", RuntimeWarning, stacklevel=4)
    return None


def _write(weights: Path, sidecar: Path, payload: Payload, meta: Mapping[str, Any]) -> None:
    """Write the payload, then the sidecar with its sha256 (a read-only cache only warns)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        atomic_write_bytes(weights, buffer.getvalue())
        info = {**meta, "sha256": sha256_file(weights), "torch": torch.__version__}
        atomic_write_text(sidecar, json.dumps(info, indent=2, sort_keys=True, default=repr) + "\n")
    except OSError as exc:
        warnings.warn(f"cannot write the cache entry {weights}: {exc}", RuntimeWarning, stacklevel=4)


def load_or_train(
    folder: str,
    name: str,
    train: Callable[[], Payload],
    *,
    identity: Mapping[str, Any],
    meta: Mapping[str, Any] | Callable[[Payload], Mapping[str, Any]] | None = None,
    what: str = "entry",
    check: Callable[[Payload], object] | None = None,
    refresh: bool = False,
) -> tuple[Payload, bool]:
    """``(payload, from_cache)``: entry ``name`` of ``<cache>/<folder>``, made by ``train()`` if needed.

    ``identity`` (JSON-able: a digest key, a recipe) is stored in the sidecar and must match for
    the entry to be used. ``train`` returns the payload to store (loadable with
    ``weights_only=True``: tensors, numbers, strings, dicts and lists); ``meta`` (JSON-able, or a
    function of the new payload giving it) is written to the sidecar for people to read.
    ``check(payload)`` may raise on a stored payload that cannot be used (e.g. weights of another
    shape): the entry is then trained again, like a corrupt one. ``refresh`` trains regardless.
    A lock serialises concurrent processes: one trains, the others then load its result.
    """
    weights, sidecar = entry_paths(folder, name)
    with ExitStack() as stack:
        with suppress(OSError):  # a read-only cache: go on without the lock
            stack.enter_context(file_lock(weights.parent / f".{name}.lock"))
        cached = None if refresh else _read(weights, sidecar, identity, what, check)
        if cached is not None:
            return cached, True
        payload = train()
        if not isinstance(payload, dict):
            raise TypeError(f"train() must return a dict to cache, got {type(payload).__name__}")
        info = meta(payload) if callable(meta) else meta
        _write(weights, sidecar, payload, {**(info or {}), **identity})
        return payload, False
