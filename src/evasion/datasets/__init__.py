"""`evasion.datasets`: image-classification data as :class:`Dataset` records.

Use :func:`load` with a registered name (``digits``, ``mnist5k``; see :func:`list_datasets`) or a
path to an image folder, ``.npz`` file, CIFAR-10/100 python batches or MNIST IDX files; every
source offers the splits "train", "test" and "all". The readers can also be called directly.
"""

from __future__ import annotations

from . import icub_sim as icub_sim  # registers icub-sim*; pybullet is imported only to render
from .base import Dataset
from .cifar import read_cifar
from .embedded import MNIST5K_SHA256, cache_dir, load_digits, load_mnist5k, stratified_split
from .readers import SPLITS, read_image_folder, read_mnist_idx, read_npz
from .registry import DatasetInfo, detect_format, list_datasets, load, register

__all__ = [
    "MNIST5K_SHA256",
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "cache_dir",
    "detect_format",
    "list_datasets",
    "load",
    "load_digits",
    "load_mnist5k",
    "read_cifar",
    "read_image_folder",
    "read_mnist_idx",
    "read_npz",
    "register",
    "stratified_split",
]
