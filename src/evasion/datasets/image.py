"""Read one image file into a model-ready tensor (for attacking a single photo)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError, MissingDependencyError, MissingFileError

__all__ = ["read_image"]


def read_image(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None) -> Tensor:
    """A (1, C, H, W) float tensor in [0, 1]: centre-cropped to the model's aspect and resized.

    ``input_shape`` (C, H, W) picks grey or RGB and the size; ``None`` keeps the file as it is.
    """
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("pillow", "zoo", "reading image files") from None
    if not os.path.isfile(path):
        what = "is a folder, not an image file" if os.path.isdir(path) else "does not exist"
        raise MissingFileError(f"image file {os.fspath(path)!r} {what}")
    try:
        with Image.open(path) as img:
            image: Image.Image = img.copy()
    except OSError as exc:
        raise DataError(f"cannot read image {os.fspath(path)!r}: {exc}") from None
    if input_shape is not None:
        c, h, w = (int(v) for v in input_shape)
        image = image.convert("L" if c == 1 else "RGB")
        image = _crop_to_aspect(image, w / h).resize((w, h), Image.Resampling.BICUBIC)
    else:
        image = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
    return tensor.unsqueeze(0).contiguous()


def _crop_to_aspect(image, aspect: float):  # type: ignore[no-untyped-def]
    w, h = image.size
    if w / h > aspect:
        new_w = round(h * aspect)
        left = (w - new_w) // 2
        return image.crop((left, 0, left + new_w, h))
    new_h = round(w / aspect)
    top = (h - new_h) // 2
    return image.crop((0, top, w, top + new_h))
