"""CIFAR-10/100 in the official python format, read without trusting the pickle.

The batches are pickled dicts. They are read with an unpickler that can build nothing but dicts,
lists, strings, bytes, ints and numpy arrays (``numpy.core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``), so a tampered batch that names ``os.system`` or any other
callable is refused before anything runs. ``_codecs.encode`` is also allowed, restricted to
latin-1, because protocol-2 pickles written by Python 3 store bytes with it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .base import Dataset
from .readers import SPLITS, _existing, _from_uint8, _labels, _wrong_split, check_split

__all__ = ["CIFAR10_FILES", "CifarLayoutError", "check_cifar10", "cifar_layout", "read_cifar"]

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]
_CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Refused(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes; latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.empty(0).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct, whatever the version
    table: dict[tuple[str, str], Any] = {
        (module, name): obj
        for module in ("builtins", "__builtin__")
        for name, obj in (("dict", dict), ("list", list), ("str", str), ("bytes", bytes), ("int", int))
    }
    table.update(
        {(m, "_reconstruct"): reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")}
    )
    table.update(
        {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
    )
    return table


class _BatchUnpickler(pickle.Unpickler):
    """Builds only dicts, lists, str, bytes, ints and numpy arrays; any other global is refused."""

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to unpickle {module}.{name}") from None


def _load_batch(path: Path) -> dict[str, Any]:
    """One CIFAR batch (a pickled dict, read with ``encoding='bytes'``), keys decoded to str."""
    try:
        with path.open("rb") as fh:
            obj = _BatchUnpickler(fh, encoding="bytes").load()
    except _Refused as exc:
        raise DataError(
            f"{path}: {exc}; a CIFAR batch holds only dicts, lists, strings, ints and numpy arrays, "
            "so this file is not a CIFAR batch or has been tampered with"
        ) from None
    except Exception as exc:  # a malformed pickle can fail in many ways
        raise DataError(f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch: it holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _batch_arrays(path: Path, fine_labels: bool) -> tuple[_U8, _I64, str]:
    """Images (N, 3, 32, 32) uint8, labels and the label key of one batch file."""
    batch = _load_batch(path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    key = ("fine_labels" if fine_labels else "coarse_labels") if "fine_labels" in batch else "labels"
    if key not in batch:
        raise DataError(f"{path}: no {key!r} entry (entries: {', '.join(sorted(batch))})")
    y = np.asarray(batch[key])
    if y.dtype.kind not in "iu" or y.shape != (len(data),):
        raise DataError(f"{path}: {key!r} must be {len(data)} integers, got {y.dtype} {y.shape}")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64), key


def cifar_layout(root: Path) -> tuple[dict[str, list[Path]], Path] | None:
    """``({"train": [...], "test": [...]}, meta file)`` for a CIFAR-10/100 folder, else None."""
    for base in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        train = sorted(base.glob("data_batch_*"), key=lambda p: (len(p.name), p.name))
        if train or (base / "test_batch").is_file():
            test = [base / "test_batch"] if (base / "test_batch").is_file() else []
            return {"train": train, "test": test}, base / "batches.meta"
        if (base / "train").is_file() or (base / "test").is_file():
            return {s: [base / s] for s in ("train", "test") if (base / s).is_file()}, base / "meta"
    return None


def _cifar_classes(meta: Path, key: str, y: _I64) -> list[str]:
    names_key = {"labels": "label_names", "fine_labels": "fine_label_names"}.get(key, "coarse_label_names")
    if meta.is_file():
        names = _load_batch(meta).get(names_key)
        if not isinstance(names, list):
            raise DataError(f"{meta}: no list {names_key!r}")
        classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    elif key == "labels":
        classes = list(_CIFAR10_NAMES)
    else:
        classes = [str(i) for i in range(100 if key == "fine_labels" else 20)]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(
            f"{meta.parent}: labels range over [{y.min()}, {y.max()}], outside the {len(classes)} classes"
        )
    return classes


def read_cifar(path: str | os.PathLike[str], split: str = "test", *, fine_labels: bool = True) -> Dataset:
    """Read the CIFAR-10/100 python format: a folder of batches or one batch file.

    A folder holds ``data_batch_1..5`` + ``test_batch`` (CIFAR-10) or ``train`` + ``test``
    (CIFAR-100); "all" is train then test. A single file's split comes from its name.
    ``fine_labels`` picks the 100 fine (default) or 20 coarse CIFAR-100 labels.
    """
    p, split = _existing(path, "CIFAR path"), check_split(split)
    if p.is_dir():
        layout = cifar_layout(p)
        if layout is None:
            raise DataError(f"{p} holds no CIFAR batches (data_batch_N/test_batch or train/test)")
        files, meta = layout
        chosen = [f for s in ("train", "test") if split in ("all", s) for f in files.get(s, [])]
        if not chosen:
            raise _wrong_split(f"CIFAR folder {p}", split, [s for s in SPLITS if s == "all" or files.get(s)])
    else:
        own = "test" if p.name in ("test_batch", "test") else None
        own = "train" if p.name.startswith("data_batch") or p.name == "train" else own
        if split != "all" and own != split:
            raise _wrong_split(f"CIFAR batch {p.name}", split, ["all"] + ([own] if own else []))
        chosen, meta = [p], p.with_name("batches.meta" if (p.parent / "batches.meta").is_file() else "meta")
    parts = [_batch_arrays(f, fine_labels) for f in chosen]
    x, y = np.concatenate([a for a, _, _ in parts]), np.concatenate([b for _, b, _ in parts])
    classes = _cifar_classes(meta, parts[0][2], y)
    info: dict[str, object] = {"source": str(p), "format": "cifar", "label_key": parts[0][2]}
    return Dataset(_from_uint8(x), _labels(y), classes, p.name, split, info)


#: the files of the CIFAR-10 python release (cifar-10-python.tar.gz, extracted)
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CIFAR10_EXPECTED = "cifar-10-batches-py/ with data_batch_1..data_batch_5, test_batch and batches.meta"


class CifarLayoutError(DataError):
    """A folder given as the CIFAR-10 release is not laid out like it (a usage error: exit code 2)."""

    exit_code = 2


def check_cifar10(root: str | os.PathLike[str]) -> Path:
    """The folder of the CIFAR-10 python batches under ``root`` (itself or ``cifar-10-batches-py``).

    Checks the release's layout before anything long runs: every file of :data:`CIFAR10_FILES`
    present and a file; else a one-line :class:`CifarLayoutError` naming what is missing and what
    was expected (CIFAR-100's ``train``/``test``/``meta`` is named as such).
    """
    p = _existing(root, "CIFAR-10 folder")
    if not p.is_dir():
        raise CifarLayoutError(
            f"{p} is a file; expected the folder of the CIFAR-10 python batches ({_CIFAR10_EXPECTED})"
        )
    candidates = [p / "cifar-10-batches-py", p]
    for base in candidates:
        present = [f for f in CIFAR10_FILES if (base / f).exists()]
        if present:
            missing = [f for f in CIFAR10_FILES if not (base / f).is_file()]
            if missing:
                raise CifarLayoutError(
                    f"{base}: missing {', '.join(missing)} (expected data_batch_1..data_batch_5, test_batch, "
                    "batches.meta: the CIFAR-10 python release, extracted)"
                )
            return base
    c100 = (p, p / "cifar-100-python")
    if any((base / f).is_file() for base in c100 for f in ("train", "test", "meta")):
        raise CifarLayoutError(
            f"{p} holds CIFAR-100 (train/test/meta); expected CIFAR-10: {_CIFAR10_EXPECTED}"
        )
    raise CifarLayoutError(f"{p} holds no CIFAR-10 python batches; expected {_CIFAR10_EXPECTED}")
