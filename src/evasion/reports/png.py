"""A tiny PNG encoder (stdlib zlib only), so saving images needs no imaging library."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from torch import Tensor

__all__ = ["encode_png", "to_uint8", "write_png"]


def to_uint8(image: Tensor | np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A (C, H, W) or (H, W) float image in ``bounds`` -> (H, W) or (H, W, 3|4) uint8."""
    arr = (
        image.detach().cpu().float().numpy()
        if isinstance(image, Tensor)
        else np.asarray(image, dtype=np.float32)
    )
    lo, hi = bounds
    arr = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))
    return np.round(arr * 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 array."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"encode_png needs a uint8 (H, W[, C]) array, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour = {1: 0, 3: 2, 4: 6}.get(channels)
    if colour is None:
        raise ValueError(f"encode_png supports 1, 3 or 4 channels, got {channels}")
    rows = np.ascontiguousarray(pixels).reshape(h, w * channels)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_png(
    path: str | os.PathLike[str], image: Tensor | np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)
) -> Path:
    """Write a float image (C, H, W) in ``bounds``, or a uint8 array, as a PNG file."""
    pixels = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else to_uint8(image, bounds)
    out = Path(path)
    out.write_bytes(encode_png(pixels))
    return out
