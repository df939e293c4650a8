"""Validation shared by the training configurations (one message per kind of bad value)."""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["check_counts", "check_finite"]


def check_counts(config: object, names: tuple[str, ...], *, shift: str | None = "augment_shift") -> None:
    """``names`` are positive integers and ``shift`` (if any) a non-negative integer on ``config``."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if shift is not None:
        value = getattr(config, shift)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{shift} must be a non-negative integer, got {value!r}")


def check_finite(name: str, value: object, *, positive: bool) -> None:
    """A finite number, ``> 0`` (``positive``) or ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
