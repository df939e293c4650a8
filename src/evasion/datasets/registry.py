"""Dataset names and paths -> :class:`Dataset`: the registry, plug-ins and format detection.

:func:`load` takes a registered name (``digits``, ``mnist5k`` or a plug-in added with
:func:`register`) or a path, whose format is recognised from what it is: an image folder, an
``.npz`` file, CIFAR python batches or MNIST IDX files. A registered name wins over a file of the
same name; pass a :class:`pathlib.Path` (or ``./name``) to force the path.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..errors import ConfigError, DataError, UnknownNameError
from .base import Dataset
from .cifar import cifar_layout, read_cifar
from .readers import _IDX_IMAGES, _peek, check_split, read_image_folder, read_mnist_idx, read_npz

__all__ = ["DatasetInfo", "Loader", "detect_format", "list_datasets", "load", "register"]

#: a loader is called as ``loader(split, **options)`` and returns a :class:`Dataset`.
Loader = Callable[..., Dataset]

_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset is, without loading it; ``size`` maps split -> sample count."""

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int
    size: Mapping[str, int] = field(default_factory=dict, hash=False)
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", MappingProxyType(dict(self.size)))

    def __reduce__(self) -> tuple[type[DatasetInfo], tuple[object, ...]]:  # a mappingproxy cannot pickle
        fields = (
            self.name,
            self.description,
            self.input_shape,
            self.num_classes,
            dict(self.size),
            self.source,
        )
        return DatasetInfo, fields


@dataclass(frozen=True)
class _Entry:
    loader: Loader
    info: DatasetInfo


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, loader_fn: Loader, info: DatasetInfo, *, overwrite: bool = False) -> None:
    """Make ``load(name, split, **options)`` call ``loader_fn(split, **options)``.

    ``name`` is lower-case (letters, digits, ``_.-``) and must equal ``info.name``; registering a
    taken name needs ``overwrite=True``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"dataset name must be lower-case letters, digits or _.- , got {name!r}")
    if not callable(loader_fn):
        raise ConfigError(f"loader for dataset {name!r} must be callable, got {type(loader_fn).__name__}")
    if not isinstance(info, DatasetInfo) or info.name != name:
        raise ConfigError(f"info for dataset {name!r} must be a DatasetInfo with name {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"dataset {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = _Entry(loader_fn, info)


def list_datasets() -> list[DatasetInfo]:
    """The registered datasets, sorted by name."""
    return [_REGISTRY[name].info for name in sorted(_REGISTRY)]


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Name the format of an existing path ("image-folder", "npz", "cifar", "mnist-idx"), or None."""
    p = Path(path)
    if p.is_dir():
        if cifar_layout(p) is not None:
            return "cifar"
        if any(_IDX_IMAGES.search(f.name) for f in p.iterdir() if f.is_file()):
            return "mnist-idx"
        if any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
            return "image-folder"
        return None
    head = _peek(p, 4)
    if p.suffix.lower() == ".npz" or head[:2] == b"PK":
        return "npz"
    if _IDX_IMAGES.search(p.name) or head == b"\0\0\x08\x03":
        return "mnist-idx"
    return "cifar" if head[:1] == b"\x80" else None  # a pickle, protocol 2 or later


_READERS: dict[str, Loader] = {
    "image-folder": read_image_folder,
    "npz": read_npz,
    "cifar": read_cifar,
    "mnist-idx": read_mnist_idx,
}


def _check_options(fn: Loader, what: str, args: tuple[object, ...], options: dict[str, object]) -> None:
    """Raise a ConfigError naming the accepted options when ``fn(*args, **options)`` cannot bind."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # not introspectable (a C function): let the call decide
        return
    try:
        signature.bind(*args, **options)
    except TypeError:
        accepted = [p for p in list(signature.parameters)[len(args) :] if p != "split"]
        given = ", ".join(sorted(k for k in options if k != "split"))
        raise ConfigError(
            f"{what} does not accept option(s) {given}; it accepts: {', '.join(accepted) or '(none)'}"
        ) from None


def _unknown(name: object) -> UnknownNameError:
    err = UnknownNameError("dataset", str(name), sorted(_REGISTRY))
    err.args = (f"{err.args[0]}; and no file or directory {str(name)!r} exists",)
    return err


def load(name_or_path: str | os.PathLike[str], split: str = "test", **options: object) -> Dataset:
    """Load a registered dataset by name, or a dataset file/folder by path (format auto-detected).

    ``split`` is "train", "test" or "all"; ``options`` go to the loader or reader (for example
    ``size=`` and ``grayscale=`` for an image folder, ``x_key=`` for an NPZ file).
    """
    split = check_split(split)
    if isinstance(name_or_path, str):
        key = name_or_path.strip().lower()
        if key in _REGISTRY:
            loader = _REGISTRY[key].loader
            _check_options(loader, f"dataset {key!r}", (split,), options)
            dataset = loader(split, **options)
            if not isinstance(dataset, Dataset):
                raise DataError(
                    f"the loader of dataset {key!r} returned {type(dataset).__name__}, not a Dataset"
                )
            return dataset
        if not name_or_path.strip():
            raise _unknown(name_or_path)
    elif not isinstance(name_or_path, os.PathLike):
        raise ConfigError(f"a dataset is a name or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise _unknown(name_or_path)
    kind = detect_format(path)
    if kind is None:
        raise DataError(
            f"cannot tell what dataset {path} is: expected a folder of class sub-folders, an .npz file, "
            "CIFAR python batches or MNIST *-images-idx3-ubyte files"
        )
    reader, options = _READERS[kind], {**options, "split": split}
    _check_options(reader, f"the {kind} reader", (path,), options)
    return reader(path, **options)
