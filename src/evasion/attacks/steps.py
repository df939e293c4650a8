"""Step rules of the shared gradient loop: how a gradient becomes the next iterate.

A rule sees the current points of the still-active samples, their gradients (one per objective
term), their objective values and their row indices in the batch; it returns the next points,
already projected. Per-sample state lives in full-batch tensors indexed by those rows, so samples
that stop early simply stop being indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ..perturbations import BallBox, direction
from .base import Problem

__all__ = ["Momentum", "SteepestAscent", "StepContext", "StepRule"]

Projector = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepContext:
    """What a rule may use besides gradients: the problem, the step size, a projector.

    ``all_rows`` is the index tensor the loop passes while every sample of the batch is active:
    given exactly that tensor (``idx is ctx.all_rows``), :meth:`project` and :meth:`direction`
    use the problem's tensors as they are, without gathering rows.
    """

    problem: Problem
    step_size: float
    steps: int
    l1_fraction: float = 0.01
    all_rows: Tensor | None = None
    _set: BallBox | None = field(default=None, init=False, repr=False)

    def rows(self, idx: Tensor) -> Tensor | None:
        """``None`` when ``idx`` is the whole batch (the loop's ``all_rows``), else ``idx``."""
        return None if idx is self.all_rows else idx

    @property
    def ball_box(self) -> BallBox:
        """The epsilon-ball ∩ box (mask included), built on first use."""
        if self._set is None:
            p = self.problem
            self._set = BallBox(p.x, p.threat.epsilon, p.threat.norm, p.lower, p.upper)
        return self._set

    def project(self, z: Tensor, idx: Tensor) -> Tensor:
        """Project rows ``idx`` onto their epsilon-ball ∩ box (mask included)."""
        return self.ball_box.project(z, self.rows(idx))

    def direction(self, grad: Tensor, x: Tensor, idx: Tensor) -> Tensor:
        """Steepest-ascent direction in the threat norm, restricted to coordinates that can move."""
        p = self.problem
        free = p.free
        rows = self.rows(idx)
        free_rows = None if free is None else (free if rows is None else free[rows])
        if p.threat.norm == "l1":  # coordinates pinned at the box and pushed outwards cannot move
            lo, hi = (p.lower, p.upper) if rows is None else (p.lower[rows], p.upper[rows])
            movable = ~(((x <= lo) & (grad < 0)) | ((x >= hi) & (grad > 0)))
            free_rows = movable if free_rows is None else free_rows & movable
        return direction(grad, p.threat.norm, free=free_rows, l1_fraction=self.l1_fraction)


class StepRule(Protocol):
    def start(self, ctx: StepContext) -> None:
        """Allocate per-sample state for a new run."""

    def step(
        self,
        ctx: StepContext,
        x: Tensor,
        grads: Sequence[Tensor],
        weights: Sequence[float],
        loss: Tensor,
        idx: Tensor,
        t: int,
    ) -> Tensor:
        """Next (projected) points for rows ``idx``."""
        ...


@dataclass
class SteepestAscent:
    """``x + alpha * sum_k w_k d(grad_k)`` then project: FGSM, BIM, PGD (and the dynamic adversary).

    ``d`` is the threat norm's steepest-ascent direction (sign for L∞, normalised for L2, sparse
    sign for L1); with several objective terms each gets its own direction (Metzen et al. 2017).
    """

    def start(self, ctx: StepContext) -> None:
        return None

    def step(
        self,
        ctx: StepContext,
        x: Tensor,
        grads: Sequence[Tensor],
        weights: Sequence[float],
        loss: Tensor,
        idx: Tensor,
        t: int,
    ) -> Tensor:
        return ctx.project(x + ctx.step_size * _combined(ctx, x, grads, weights, idx), idx)


def _combined(
    ctx: StepContext, x: Tensor, grads: Sequence[Tensor], weights: Sequence[float], idx: Tensor
) -> Tensor:
    """``sum_k w_k d(grad_k)``; a single term of weight 1 is its direction as it is."""
    if len(grads) == 1 and weights[0] == 1.0:
        return ctx.direction(grads[0], x, idx)
    d = sum(w * ctx.direction(g, x, idx) for w, g in zip(weights, grads))
    assert isinstance(d, Tensor)
    return d


@dataclass
class Momentum:
    """MI-FGSM (Dong et al. 2018): accumulate L1-normalised gradients with ``decay``, step along them."""

    decay: float = 1.0
    _velocity: Tensor | None = None

    def start(self, ctx: StepContext) -> None:
        self._velocity = torch.zeros_like(ctx.problem.x)

    def step(
        self,
        ctx: StepContext,
        x: Tensor,
        grads: Sequence[Tensor],
        weights: Sequence[float],
        loss: Tensor,
        idx: Tensor,
        t: int,
    ) -> Tensor:
        assert self._velocity is not None
        g = sum(w * gk for w, gk in zip(weights, grads))
        assert isinstance(g, Tensor)
        l1 = g.abs().reshape(g.shape[0], -1).sum(1).clamp_min(1e-12).reshape((-1,) + (1,) * (g.dim() - 1))
        rows = ctx.rows(idx)
        v = self.decay * (self._velocity if rows is None else self._velocity[rows]) + g / l1
        if rows is None:
            self._velocity = v
        else:
            self._velocity[rows] = v
        return ctx.project(x + ctx.step_size * ctx.direction(v, x, idx), idx)
