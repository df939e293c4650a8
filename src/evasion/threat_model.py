"""What the attacker may do: the norm and size of the perturbation, the box, and the pixels it may touch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from .errors import ConfigError, InputError, UnknownNameError

__all__ = ["NORMS", "Norm", "ThreatModel"]

Norm = Literal["linf", "l2", "l1", "l0"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0")
_ALIASES = {"inf": "linf", "l_inf": "linf", "linfty": "linf", "2": "l2", "1": "l1", "0": "l0"}

Bound = float | Tensor


def _check_bound(name: str, value: object) -> Bound:
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise ConfigError(f"{name} must be a float tensor, got dtype {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise ConfigError(f"{name} contains NaN or infinite values")
        return value.detach()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class ThreatModel:
    """The attacker's constraints, validated once at construction.

    Args:
        norm: ``"linf"``, ``"l2"``, ``"l1"`` or ``"l0"`` (the distance in which ``epsilon`` is measured).
        epsilon: maximum perturbation size, ``>= 0``; ``math.inf`` for minimum-norm attacks run
            without a budget.
        bounds: the box ``x_lb <= x' <= x_ub`` of valid inputs: two numbers, or two tensors
            broadcastable to the input for per-pixel bounds (Melis et al.'s box constraint).
        mask: boolean tensor broadcastable to the input, ``True`` where the attacker may change a
            pixel (a "sticker"); ``None`` means every pixel. Shapes ``(H, W)``, ``(C, H, W)`` and
            ``(N, C, H, W)`` (one mask per sample) are accepted.
        targeted: whether the attacker wants a chosen class (``target=``) rather than any error.
    """

    norm: str
    epsilon: float
    bounds: tuple[Bound, Bound] = (0.0, 1.0)
    mask: Tensor | None = field(default=None, compare=False)
    targeted: bool = False

    def __post_init__(self) -> None:
        norm = str(self.norm).lower().replace("-", "_")
        norm = _ALIASES.get(norm, norm)
        if norm not in NORMS:
            raise UnknownNameError("norm", self.norm, list(NORMS))
        object.__setattr__(self, "norm", norm)
        eps = self.epsilon
        if isinstance(eps, Tensor):
            if eps.numel() != 1:
                raise ConfigError(
                    f"epsilon must be a single number, got a tensor of shape {tuple(eps.shape)}"
                )
            eps = float(eps.item())
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise ConfigError(f"epsilon must be a number, got {type(eps).__name__}")
        if math.isnan(eps) or eps < 0:
            raise ConfigError(f"epsilon must be >= 0 (math.inf for no budget), got {eps}")
        object.__setattr__(self, "epsilon", float(eps))
        if not isinstance(self.bounds, (tuple, list)) or len(self.bounds) != 2:
            raise ConfigError(f"bounds must be a pair (lower, upper), got {self.bounds!r}")
        lo, hi = _check_bound("lower bound", self.bounds[0]), _check_bound("upper bound", self.bounds[1])
        if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
            raise ConfigError(f"bounds must satisfy lower <= upper, got ({lo}, {hi})")
        if isinstance(lo, Tensor) or isinstance(hi, Tensor):
            try:
                bad = bool((torch.as_tensor(lo) > torch.as_tensor(hi)).any())
            except RuntimeError as exc:
                raise ConfigError(f"lower and upper bound tensors do not broadcast: {exc}") from None
            if bad:
                raise ConfigError("bounds must satisfy lower <= upper at every pixel")
        object.__setattr__(self, "bounds", (lo, hi))
        if self.mask is not None:
            mask = self.mask
            if not isinstance(mask, Tensor):
                raise ConfigError(f"mask must be a boolean tensor, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise ConfigError(f"mask must have dtype torch.bool, got {mask.dtype}")
            if mask.dim() < 2 or mask.dim() > 4:
                raise ConfigError(
                    f"mask must have shape (H, W), (C, H, W) or (N, C, H, W), got {tuple(mask.shape)}"
                )
            if not bool(mask.any()):
                raise ConfigError("mask leaves no pixel free: the attacker could not change anything")
            object.__setattr__(self, "mask", mask.detach())
        if not isinstance(self.targeted, bool):
            raise ConfigError(f"targeted must be True or False, got {self.targeted!r}")

    # ----------------------------------------------------------------------------------------
    @property
    def p(self) -> float:
        """The norm as a number: ``inf``, 2, 1 or 0."""
        return {"linf": math.inf, "l2": 2.0, "l1": 1.0, "l0": 0.0}[self.norm]

    @property
    def is_unbounded(self) -> bool:
        return math.isinf(self.epsilon)

    def with_epsilon(self, epsilon: float) -> ThreatModel:
        """The same threat with another budget (validated)."""
        return replace(self, epsilon=epsilon)

    def with_mask(self, mask: Tensor | None) -> ThreatModel:
        return replace(self, mask=mask)

    def mask_for(self, x: Tensor) -> Tensor | None:
        """The mask broadcast to ``x`` (N, C, H, W) on its device, or ``None``; checks the shape."""
        if self.mask is None:
            return None
        mask = self.mask
        if mask.dim() == 2:
            mask = mask[None, None]
        elif mask.dim() == 3:
            mask = mask[None]
        try:
            return torch.broadcast_to(mask.to(x.device), x.shape)
        except RuntimeError:
            raise InputError(
                f"mask of shape {tuple(self.mask.shape)} does not broadcast to inputs of shape {tuple(x.shape)}"
            ) from None

    def box_for(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel lower and upper bounds for ``x`` with the mask folded in.

        Pixels the attacker may not touch get ``lower == upper == x``: every projection onto the
        box then leaves them unchanged, so the mask needs no special case anywhere else.
        """
        lo, hi = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in self.bounds)
        try:
            lo, hi = torch.broadcast_to(lo, x.shape), torch.broadcast_to(hi, x.shape)
        except RuntimeError:
            raise InputError(
                f"per-pixel bounds of shapes {tuple(lo.shape)}, {tuple(hi.shape)} do not broadcast "
                f"to inputs of shape {tuple(x.shape)}"
            ) from None
        mask = self.mask_for(x)
        if mask is not None:
            lo, hi = torch.where(mask, lo, x), torch.where(mask, hi, x)
        return lo, hi

    def scalar_bounds(self) -> tuple[float, float] | None:
        """``(lower, upper)`` when both bounds are numbers, else ``None``."""
        lo, hi = self.bounds
        if isinstance(lo, float) and isinstance(hi, float):
            return lo, hi
        return None

    def describe(self) -> str:
        eps = "inf" if self.is_unbounded else f"{self.epsilon:g}"
        parts = [f"{self.norm} eps={eps}"]
        if self.mask is not None:
            parts.append(f"mask {int(self.mask.sum())} px")
        if self.targeted:
            parts.append("targeted")
        return ", ".join(parts)
