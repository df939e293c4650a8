"""ImageNet-1k class names and the standard evaluation preprocessing for photos.

The 1000 names are embedded (``imagenet_classes.txt``, one per line, index-aligned with the
standard ImageNet-1k label order used by the pretrained checkpoints), so ImageNet models work
without extra packages. They are the curated short names of the ``imagenet-classes`` package
(``imagenet1k_clean_names.json``): unambiguous, human-readable, e.g. 281 ``tabby cat``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, InputError, MissingDependencyError

__all__ = ["IMAGENET_NUM_CLASSES", "imagenet_class_names", "preprocess_image"]

IMAGENET_NUM_CLASSES = 1000
_NAMES_FILE = Path(__file__).with_name("imagenet_classes.txt")
#: TF EfficientNet evaluation crops ``size / (size + 32)`` of the shorter side (224 of 256)
_CROP_PADDING = 32


@lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    try:
        lines = _NAMES_FILE.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"cannot read the ImageNet class names file {_NAMES_FILE}: {err}") from err
    names = tuple(line.strip() for line in lines if line.strip())
    if len(names) != IMAGENET_NUM_CLASSES:
        raise DataError(f"{_NAMES_FILE} holds {len(names)} class names, expected {IMAGENET_NUM_CLASSES}")
    return names


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, index-aligned with the standard label order (a fresh list)."""
    return list(_class_names())


def _pil_image_module() -> ModuleType:
    """``PIL.Image``, imported on demand: Pillow is an optional dependency (the ``zoo`` extra)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise MissingDependencyError("pillow", "zoo", "preprocess_image") from err
    return Image


def _to_rgb_pil(image: object, Image: ModuleType) -> Any:
    """A PIL RGB image from a PIL image or an ``(H, W)`` / ``(H, W, 3|4)`` array (uint8 or floats in [0, 1])."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InputError(f"image array must have shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise InputError(f"image array must be uint8 or float in [0, 1], got dtype {image.dtype}")
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise InputError("a float image array must hold finite values in [0, 1]")
        image = np.round(image * 255.0).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(image).convert("RGB")


def preprocess_image(image: object, size: int = 224) -> Tensor:
    """Turn a photo into a ``(1, 3, size, size)`` float32 batch in [0, 1] (pixel space, no normalisation).

    TF EfficientNet evaluation preprocessing: centre-crop a square of ``size / (size + 32)`` of the
    shorter side (224/256 = 0.875, like "resize to 256, crop 224") and resize it to ``size`` with
    bicubic interpolation, in one resampling step. ``image`` is a PIL image or a numpy array
    ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha dropped), uint8 or float in [0, 1].
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"size must be a positive integer, got {size!r}")
    Image = _pil_image_module()
    pil = _to_rgb_pil(image, Image)
    width, height = pil.size
    side = max(1, int(size / (size + _CROP_PADDING) * min(width, height)))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    resized = pil.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    array = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
