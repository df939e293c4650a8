"""Input checks shared by models, attacks and the CLI: one-line errors that name the problem."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import ConfigError, EvasionError, InputError

__all__ = [
    "check_images",
    "check_labels",
    "check_targets",
    "epsilon_grid",
    "finite",
    "fraction",
    "integer",
    "name",
    "positive",
]

_BOUND_TOLERANCE = 1e-5


def check_images(
    x: object,
    *,
    input_shape: Sequence[int] | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    name: str = "x",
) -> Tensor:
    """Check an image batch: a float tensor ``(N, *input_shape)``, finite, inside ``bounds``."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (scale integer images to floats, e.g. x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}{hint}")
    if input_shape is not None:
        expected = (len(input_shape) + 1,)
        if x.dim() != expected[0]:
            raise InputError(
                f"{name} must have shape (N, {', '.join(map(str, input_shape))}), got {tuple(x.shape)} "
                f"(rank {x.dim()}, expected {expected[0]})"
            )
        if tuple(x.shape[1:]) != tuple(input_shape):
            what = "channels" if len(input_shape) == 3 and x.shape[1] != input_shape[0] else "shape"
            raise InputError(
                f"{name} has wrong {what}: got {tuple(x.shape)}, the model expects (N, {', '.join(map(str, input_shape))})"
            )
    elif x.dim() < 2:
        raise InputError(f"{name} must be a batch (N, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(f"{name} contains {bad} NaN or infinite value(s)")
    if bounds is not None:
        lo, hi = bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - _BOUND_TOLERANCE or xmax > hi + _BOUND_TOLERANCE:
            raise InputError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the model's input bounds "
                f"[{lo:g}, {hi:g}]"
                + (" (images in [0, 255]? divide by 255)" if xmax > 1.5 and hi <= 1 else "")
            )
    return x


def check_labels(y: object, n: int, num_classes: int, *, name: str = "y") -> Tensor:
    """Check integer class labels: shape ``(n,)``, values in ``[0, num_classes)``."""
    if isinstance(y, (list, tuple)):
        y = torch.as_tensor(y)
    if not isinstance(y, Tensor):
        raise InputError(f"{name} must be a tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"{name} must be an integer tensor of class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},), one label per input, got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}], outside [0, {num_classes}) "
            f"for a model with {num_classes} classes"
        )
    return y.long()


def check_targets(target: object, y: Tensor, num_classes: int) -> Tensor:
    """Check target classes of a targeted attack: valid labels, never equal to the true label."""
    if isinstance(target, int) and not isinstance(target, bool):
        target = torch.full_like(y, target)
    t = check_labels(target, y.shape[0], num_classes, name="target").to(y.device)
    same = t == y
    if bool(same.any()):
        i = int(same.nonzero()[0, 0])
        raise InputError(
            f"target equals the true label for {int(same.sum())} input(s) (first: index {i}, class {int(y[i])}); "
            "a targeted attack needs a different class"
        )
    return t


# -- scalar parameters: one checker per kind, one message shape ---------------------------------------
# Each takes the value and ``where`` (the name the user knows it by: ``"attacks[2].params.steps"``,
# ``"DetectorParams.fpr"``, ``"--epsilon"``), returns the clean Python value, and raises ``error``
# (:class:`ConfigError` unless told otherwise) with a one-line message naming ``where`` and the value.


def finite(value: object, where: str, *, error: type[EvasionError] = ConfigError) -> float:
    """A finite real number (not a bool), as ``float``."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise error(f"{where} must be finite, got {value!r}")
    return float(value)


def positive(
    value: object, where: str, *, allow_zero: bool = False, error: type[EvasionError] = ConfigError
) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    v = finite(value, where, error=error)
    if v < 0 or (v == 0 and not allow_zero):
        raise error(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def fraction(
    value: object, where: str, *, open_low: bool = False, error: type[EvasionError] = ConfigError
) -> float:
    """A number in ``[0, 1]`` (``(0, 1]`` with ``open_low``): a rate, a probability."""
    v = finite(value, where, error=error)
    low_ok = v > 0.0 if open_low else v >= 0.0
    if not low_ok or v > 1.0:
        raise error(f"{where} must be in {'(0' if open_low else '[0'}, 1], got {value!r}")
    return v


def integer(
    value: object,
    where: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[EvasionError] = ConfigError,
) -> int:
    """An ``int`` (not a bool, not a float) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise error(f"{where} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise error(f"{where} must be an integer <= {maximum}, got {value!r}")
    return int(value)


def name(value: object, where: str, *, error: type[EvasionError] = ConfigError) -> str:
    """A non-empty string (a layer, an attack, a model name)."""
    if not isinstance(value, str) or not value.strip():
        raise error(f"{where} must be a non-empty name, got {value!r}")
    return value


def epsilon_grid(
    values: object,
    where: str = "epsilons",
    *,
    with_zero: bool = True,
    error: type[EvasionError] = ConfigError,
) -> tuple[float, ...]:
    """A non-empty list of finite numbers ``>= 0`` -> sorted, unique (and starting with 0.0)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Tensor)):
        raise error(f"{where} must be a list of numbers, got {values!r}")
    grid = [positive(v, f"{where}[{i}]", allow_zero=True, error=error) for i, v in enumerate(list(values))]
    if not grid:
        raise error(f"{where} is empty; give at least one epsilon")
    return tuple(sorted({0.0, *grid} if with_zero else set(grid)))
