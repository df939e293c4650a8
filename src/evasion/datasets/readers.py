"""Readers for dataset files on disk: image folders, MNIST IDX files and NPZ arrays.

Every reader returns a :class:`Dataset` (float32 images in [0, 1], int64 labels) and turns a
malformed file into a one-line :class:`DataError` that names the file and the problem. The CIFAR
reader lives in :mod:`evasion.datasets.cifar` (it needs a restricted unpickler).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import (
    ConfigError,
    DataError,
    EvasionError,
    InputError,
    MissingDependencyError,
    MissingFileError,
)
from .base import Dataset

__all__ = [
    "SPLITS",
    "check_split",
    "missing_dependency",
    "read_image_folder",
    "read_mnist_idx",
    "read_npz",
]

#: the splits every source understands; "all" is train followed by test.
SPLITS = ("train", "test", "all")

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]


def check_split(split: object) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a :class:`ConfigError`."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return str(split)


def missing_dependency(package: str, extra: str, purpose: str, hint: str) -> MissingDependencyError:
    """A :class:`MissingDependencyError` whose message ends with an extra install ``hint``."""
    err = MissingDependencyError(package, extra, purpose)
    err.msg = f"{err.msg}; {hint}"
    err.args = (err.msg,)
    return err


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` (``~`` expanded) if it exists, else a :class:`MissingFileError` (exit code 2)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"{what} {str(p)!r} does not exist")
    return p


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _peek(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as fh:
            head = fh.read(max(n, 2))
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as gz:
                head = gz.read(n)
        return head[:n]
    except (OSError, EOFError):
        return b""


def _from_uint8(x: npt.NDArray[Any]) -> torch.Tensor:
    """uint8 (or 0..255 integer) pixels -> contiguous float32 tensor ``v / 255`` (divided in float32)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(255))


def _labels(y: npt.NDArray[Any]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _wrong_split(source: str, split: str, available: Sequence[str]) -> ConfigError:
    return ConfigError(f"{source} has no {split!r} split; available: {', '.join(available)}")


# ---------------------------------------------------------------------------------------- image folder
_IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA"})


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image_file(f: Path) -> bool:
    """An image by its suffix; hidden files (``.DS_Store``, ``._x.png`` from macOS) are skipped."""
    return f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()


def _folder_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """``(image file, label)`` of every class folder under ``folder``; an empty class folder is an error.

    A class folder without images would still count as a class (one the data never shows) and
    usually means a failed copy: it is refused, naming the folder."""
    items = []
    for label, name in enumerate(classes):
        if (folder / name).is_dir():
            files = [f for f in sorted((folder / name).iterdir()) if _is_image_file(f)]
            if not files:
                raise InputError(
                    f"class folder {str(folder / name)!r} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))}); "
                    "add its images or remove the folder"
                )
            items += [(f, label) for f in files]
    return items


def _scan_images(files: list[Path], size: tuple[int, int] | None) -> bool:
    """Check every header (readable; one shared size unless ``size``); True if all are grayscale."""
    from PIL import Image, UnidentifiedImageError

    first: tuple[Path, tuple[int, int]] | None = None
    gray = True
    for f in files:
        try:
            with Image.open(f) as im:
                mode, wh = im.mode, im.size
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"image {f} cannot be read: {exc}") from None
        gray = gray and mode in _GRAY_MODES
        if size is not None:
            continue
        if first is None:
            first = (f, wh)
        elif wh != first[1]:
            raise DataError(
                f"image {f} is {wh[0]}x{wh[1]} but {first[0]} is {first[1][0]}x{first[1][1]}; "
                "all images must share one size (or pass size=... to resize them)"
            )
    return gray


def _decode_image(f: Path, mode: str, size: tuple[int, int] | None) -> _U8:
    from PIL import Image

    try:
        with Image.open(f) as im:
            out = im.convert(mode)
    except OSError as exc:  # a header that parses but pixel data that does not (truncated file)
        raise DataError(f"image {f} cannot be decoded: {exc}") from None
    if size is not None and out.size != (size[1], size[0]):
        out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def _check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ConfigError(f"size must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def read_image_folder(
    path: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    grayscale: bool | None = None,
    split: str = "all",
) -> Dataset:
    """Read ``root/<class>/<image>`` (or ``root/{train,test}/<class>/<image>``) with Pillow.

    Classes are the sorted sub-folder names (the union over train/ and test/, so labels agree).
    ``size`` (int or (height, width)) resizes every image; without it all images must share one
    size. ``grayscale=None`` gives 1 channel if every image is grayscale, else RGB.
    """
    root, split, hw = _existing(path, "image folder"), check_split(split), _check_size(size)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} is not a directory")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise missing_dependency(
            "pillow", "plots", "reading image folders", "or: pip install pillow"
        ) from None
    layout = {s: root / s for s in ("train", "test") if (root / s).is_dir()} or {"all": root}
    if split != "all" and split not in layout:
        if "all" in layout:
            raise ConfigError(f"image folder {root} has no train/ or test/ sub-folders; use split='all'")
        raise _wrong_split(f"image folder {root}", split, ["all", *layout])
    classes = sorted({d.name for folder in layout.values() for d in _subdirs(folder)})
    if not classes:
        raise DataError(
            f"image folder {root} has no class sub-folders (expected one folder of images per class)"
        )
    files = {s: _folder_files(folder, classes) for s, folder in layout.items()}
    chosen = [item for s, items in files.items() if split in ("all", s) for item in items]
    if not chosen:
        raise DataError(f"image folder {root} holds no images for split {split!r}")
    gray = _scan_images([f for items in files.values() for f, _ in items], hw)
    mode = "L" if (gray if grayscale is None else grayscale) else "RGB"
    pixels = np.stack([_decode_image(f, mode, hw) for f, _ in chosen])
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
    y = np.array([label for _, label in chosen], dtype=np.int64)
    meta: dict[str, object] = {"source": str(root), "format": "image-folder"}
    return Dataset(_from_uint8(pixels), _labels(y), classes, root.name, split, meta)


# ------------------------------------------------------------------------------------------- MNIST IDX
_IDX_IMAGES = re.compile(r"images([.-])idx3-ubyte")


def _read_idx(path: Path, ndim: int) -> _U8:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (gzip or plain)."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4].hex() or 'empty'})")
    if raw[3] != ndim:
        raise DataError(f"{path}: expected an IDX file with {ndim} dimension(s), got {raw[3]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes (truncated or not an IDX file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _idx_labels_path(images: Path) -> Path:
    if not _IDX_IMAGES.search(images.name):
        raise DataError(f"cannot guess the labels file for {images}; pass labels_path=...")
    base = _IDX_IMAGES.sub(r"labels\1idx1-ubyte", images.name).removesuffix(".gz")
    candidates = [images.with_name(base), images.with_name(base + ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingFileError(
        f"labels file for {images} not found (looked for {', '.join(c.name for c in candidates)}); "
        "pass labels_path=..."
    )


def _idx_split(name: str) -> str | None:
    if name.startswith(("t10k", "test")):
        return "test"
    return "train" if name.startswith("train") else None


def _read_idx_pair(images: Path, labels: Path | None) -> tuple[_U8, _I64]:
    labels = _existing(labels, "MNIST labels file") if labels is not None else _idx_labels_path(images)
    x, y = _read_idx(images, 3), _read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    return x, y.astype(np.int64)


def read_mnist_idx(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str] | None = None,
    *,
    split: str = "all",
) -> Dataset:
    """Read MNIST-style IDX files (``*-images-idx3-ubyte`` + labels, optionally ``.gz``).

    ``images_path`` may be a directory holding ``train-*`` and ``t10k-*`` files: ``split`` picks
    them. For a single file, the split is read from its name (``train``/``t10k``); ``split`` must
    match it or be "all". The labels file is found beside the images unless ``labels_path`` is given.
    """
    p, split = _existing(images_path, "MNIST images file"), check_split(split)
    if p.is_dir():
        if labels_path is not None:
            raise ConfigError("labels_path cannot be combined with a directory of IDX files")
        found: dict[str, Path] = {}
        for f in sorted(p.iterdir()):
            kind = _idx_split(f.name) if _IDX_IMAGES.search(f.name) else None
            if kind is not None:
                found.setdefault(kind, f)
        if not found or (split != "all" and split not in found):
            raise DataError(
                f"no {'' if split == 'all' else split + ' '}MNIST images file (*-images-idx3-ubyte) in {p}"
            )
        parts = [
            _read_idx_pair(found[s], None) for s in ("train", "test") if s in found and split in ("all", s)
        ]
        x, y = np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    else:
        own = _idx_split(p.name)
        if split != "all" and own != split:
            raise _wrong_split(f"MNIST file {p.name}", split, ["all"] + ([own] if own else []))
        x, y = _read_idx_pair(p, Path(labels_path) if labels_path is not None else None)
    classes = [str(i) for i in range(max(10, int(y.max(initial=0)) + 1))]
    meta: dict[str, object] = {"source": str(p), "format": "mnist-idx"}
    return Dataset(_from_uint8(x[:, None]), _labels(y), classes, p.name, split, meta)


# ------------------------------------------------------------------------------------------------- NPZ
def _npz_keys(keys: set[str], x_key: str, y_key: str, split: str, where: str) -> list[tuple[str, str]]:
    """The (images, labels) key pairs that make up ``split``: ``x``/``y`` or ``x_train``/``x_test``."""
    per_split = [(f"{x_key}_{s}", f"{y_key}_{s}") for s in ("train", "test") if f"{x_key}_{s}" in keys]
    if split == "all":
        chosen = [(x_key, y_key)] if x_key in keys else per_split
    elif f"{x_key}_{split}" in keys:
        chosen = [(f"{x_key}_{split}", f"{y_key}_{split}")]
    elif x_key in keys:
        raise ConfigError(
            f"{where} holds one set of arrays ({x_key!r}) and no {x_key}_{split!r}; use split='all'"
        )
    else:
        chosen = []
    if not chosen:
        raise DataError(f"{where}: no image array {x_key!r} (or {x_key}_train/_test); arrays: {sorted(keys)}")
    for xk, yk in chosen:
        if yk not in keys:
            raise DataError(f"{where}: image array {xk!r} has no label array {yk!r}; arrays: {sorted(keys)}")
    return chosen


def _channels_first(shape: tuple[int, ...], integer: bool, layout: str | None, where: str) -> bool:
    if layout is not None:
        if layout.upper() not in ("NCHW", "NHWC"):
            raise ConfigError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        return layout.upper() == "NCHW"
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return first
    if first:  # ambiguous, e.g. (N, 3, 3, 3): follow the usual convention of the dtype
        return not integer
    raise DataError(
        f"{where}: cannot tell the channel axis of shape {shape}: expected 1 or 3 channels first "
        "(N, C, H, W) or last (N, H, W, C); pass layout='NCHW' or 'NHWC'"
    )


def _npz_images(arr: npt.NDArray[Any], where: str, layout: str | None) -> torch.Tensor:
    """NHWC / NCHW / (N, H, W) images, integers in 0..255 or floats in [0, 1] -> float32 NCHW."""
    integer = arr.dtype.kind in "iu"
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim != 4:
        raise DataError(
            f"{where} must be images (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {arr.shape}"
        )
    elif not _channels_first(arr.shape, integer, layout, where):
        arr = arr.transpose(0, 3, 1, 2)
    if integer:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{where}: integer pixels must lie in 0..255, got [{arr.min()}, {arr.max()}]")
        return _from_uint8(arr)
    if arr.dtype.kind != "f":
        raise DataError(f"{where}: images must be uint8 (0..255) or float (0..1), got dtype {arr.dtype}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{where}: {int(bad.sum())} NaN or infinite value(s), the first at index {first}")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        hint = " (0..255 pixel values? store uint8 or divide by 255)" if hi <= 255 and lo >= 0 else ""
        raise DataError(f"{where}: float pixels must lie in [0, 1], got [{lo:g}, {hi:g}]{hint}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _npz_labels(arr: npt.NDArray[Any], n: int, where: str) -> _I64:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise DataError(f"{where}: expected {n} labels (one per image), got shape {arr.shape}")
    if n and arr.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, got {arr.min()}")
    return arr.astype(np.int64)


def _npz_classes(npz: Any, classes_key: str, y_keys: list[str], where: str) -> list[str]:
    """Names from ``classes_key``, else "0".."K-1"; every label in the file must index one."""
    top = max((int(npz[k].max()) for k in y_keys if npz[k].size), default=0)
    if classes_key not in npz.files:
        return [str(i) for i in range(top + 1)]
    names = npz[classes_key]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{where}: {classes_key!r} must be a 1-D array of strings, got {names.dtype} {names.shape}"
        )
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if top >= len(classes):
        raise DataError(f"{where}: label {top} is out of range for {len(classes)} classes ({classes_key!r})")
    return classes


def read_npz(
    path: str | os.PathLike[str],
    x_key: str = "x",
    y_key: str = "y",
    classes_key: str = "classes",
    *,
    split: str = "all",
    layout: str | None = None,
) -> Dataset:
    """Read images and labels from an ``.npz`` (never unpickling: object arrays are refused).

    Images: (N, H, W, C) or (N, C, H, W) or (N, H, W), integers 0..255 (divided by 255) or floats
    in [0, 1]; the channel axis is guessed (``layout`` forces it). ``split`` "train"/"test" reads
    ``{x_key}_{split}``/``{y_key}_{split}``; "all" reads ``x_key`` or both of those, concatenated.
    """
    p, split = _existing(path, "NPZ file"), check_split(split)
    try:
        with np.load(p, allow_pickle=False) as npz:
            pairs = _npz_keys(set(npz.files), x_key, y_key, split, str(p))
            xs = [_npz_images(npz[xk], f"{p}[{xk!r}]", layout) for xk, _ in pairs]
            ys = [_npz_labels(npz[yk], len(x), f"{p}[{yk!r}]") for x, (_, yk) in zip(xs, pairs)]
            y_keys = [k for k in npz.files if k == y_key or k in (f"{y_key}_train", f"{y_key}_test")]
            classes = _npz_classes(npz, classes_key, y_keys, str(p))
    except EvasionError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{p} is not a readable NPZ file of plain arrays ({exc})") from None
    if len({tuple(x.shape[1:]) for x in xs}) > 1:
        raise DataError(f"{p}: train and test images differ in shape: {[tuple(x.shape[1:]) for x in xs]}")
    meta: dict[str, object] = {"source": str(p), "format": "npz", "keys": [k for pair in pairs for k in pair]}
    return Dataset(torch.cat(xs), _labels(np.concatenate(ys)), classes, p.stem, split, meta)
