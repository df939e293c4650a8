"""APGD, auto-PGD with the CE or DLR loss (Croce & Hein, ICML 2020).

A step-size-free PGD: it starts with a step of ``2 * epsilon``, adds momentum (0.75), and at
checkpoints halves the step of every sample whose objective rose in fewer than 75% of the steps
since the last checkpoint, or whose step and best objective did not change; such samples restart
from their best point. It is the gradient loop with the :class:`APGDStep` rule.

``targets=k`` is AutoAttack's APGD-T: under an untargeted threat, one run per target class (the
``k`` classes other than the true one with the highest clean scores), each with the *targeted*
form of the loss towards that class, on the points the earlier runs left; success is still any
wrong class. Aiming at one runner-up at a time finds points the untargeted loss misses when its
gradient keeps switching between competing classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from .._validation import fraction, integer
from ..errors import ConfigError
from .base import AttackResult, Problem
from .iterative import IterativeAttack
from .loop import LoopSettings, run_loop
from .steps import StepContext, StepRule

__all__ = ["APGD", "APGDState", "APGDStep", "checkpoints", "runner_up_classes"]


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD revisits its step sizes: p0 = 0, p1 = 0.22, then shrinking gaps."""
    marks = [0, 0.22]
    while marks[-1] < 1:
        marks.append(marks[-1] + max(marks[-1] - marks[-2] - 0.03, 0.06))
    return sorted({math.ceil(p * steps) for p in marks[1:] if math.ceil(p * steps) < steps})


@dataclass
class APGDState:
    """Per-sample APGD state, full-batch tensors indexed by row (stopped rows are left alone)."""

    eta: Tensor  # step size
    prev_x: Tensor  # previous iterate (for the momentum term)
    prev_loss: Tensor  # previous objective (to count rises)
    best_loss: Tensor  # best objective so far
    best_x: Tensor  # point of the best objective (where a halved sample restarts)
    best_grad: Tensor  # gradient at that point
    rises: Tensor  # steps whose objective rose since the last checkpoint
    best_at_mark: Tensor  # best objective at the last checkpoint
    halved_at_mark: Tensor  # whether the step was halved at the last checkpoint

    @classmethod
    def initial(cls, x: Tensor, epsilon: float) -> APGDState:
        """The state before the first step: step ``2 * epsilon``, no objective seen yet."""
        n, dev, dtype = x.shape[0], x.device, x.dtype
        return cls(
            eta=torch.full((n,), 2.0 * epsilon, device=dev, dtype=dtype),
            prev_x=x.clone(),
            prev_loss=torch.full((n,), -math.inf, device=dev, dtype=dtype),
            best_loss=torch.full((n,), -math.inf, device=dev, dtype=dtype),
            best_x=x.clone(),
            best_grad=torch.zeros_like(x),
            rises=torch.zeros(n, device=dev),
            best_at_mark=torch.full((n,), -math.inf, device=dev, dtype=dtype),
            halved_at_mark=torch.zeros(n, dtype=torch.bool, device=dev),
        )


@dataclass
class APGDStep:
    """The APGD update with per-sample step sizes, momentum, and checkpoint halving."""

    momentum: float = 0.75
    rho: float = 0.75
    _state: APGDState | None = field(default=None, repr=False)
    _marks: list[int] = field(default_factory=list, repr=False)

    @property
    def state(self) -> APGDState:
        assert self._state is not None, "start() allocates the state"
        return self._state

    def start(self, ctx: StepContext) -> None:
        self._marks = checkpoints(ctx.steps)
        self._state = APGDState.initial(ctx.problem.x, ctx.problem.threat.epsilon)

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
        s = self.state
        rows = ctx.rows(idx)  # None: the whole batch, read and written without gathers
        g = (
            grads[0]
            if len(grads) == 1 and weights[0] == 1.0
            else sum(w * gk for w, gk in zip(weights, grads))
        )
        assert isinstance(g, Tensor)
        shape = (-1,) + (1,) * (x.dim() - 1)
        if t > 0:
            s.rises = _put(s.rises, rows, _take(s.rises, rows) + (loss > _take(s.prev_loss, rows)).float())
        old_best = _take(s.best_loss, rows)
        better = loss > old_best
        b = better.reshape(shape)
        s.best_loss = _put(s.best_loss, rows, torch.where(better, loss, old_best))
        s.best_x = _put(s.best_x, rows, torch.where(b, x, _take(s.best_x, rows)))
        s.best_grad = _put(s.best_grad, rows, torch.where(b, g, _take(s.best_grad, rows)))
        prev_x = _take(s.prev_x, rows)
        if t in self._marks:
            x, g, prev_x = self._checkpoint(x, g, prev_x, idx, t)
        s.prev_loss = _put(s.prev_loss, rows, loss)
        eta = _take(s.eta, rows).reshape(shape)
        z = ctx.project(x + eta * ctx.direction(g, x, idx), idx)
        a = 1.0 if t == 0 else self.momentum
        nxt = ctx.project(x + a * (z - x) + (1 - a) * (x - prev_x), idx)
        s.prev_x = _put(s.prev_x, rows, x)
        return nxt

    def _checkpoint(
        self, x: Tensor, g: Tensor, prev_x: Tensor, idx: Tensor, t: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Halve the step of stalled samples and send them back to their best point."""
        s = self.state
        k = self._marks.index(t)
        since = t - (self._marks[k - 1] if k > 0 else 0)
        oscillating = s.rises[idx] < self.rho * since
        unchanged = (~s.halved_at_mark[idx]) & (s.best_at_mark[idx] >= s.best_loss[idx])
        halve = oscillating | unchanged
        s.halved_at_mark[idx] = halve
        s.best_at_mark[idx] = s.best_loss[idx]
        s.rises[idx] = 0
        s.eta[idx[halve]] /= 2
        if bool(halve.any()):
            rows = idx[halve]
            x, g, prev_x = x.clone(), g.clone(), prev_x.clone()
            x[halve], g[halve], prev_x[halve] = s.best_x[rows], s.best_grad[rows], s.best_x[rows]
        return x, g, prev_x


def _take(t: Tensor, rows: Tensor | None) -> Tensor:
    """Rows ``rows`` of a full-batch state tensor (``None``: all of it, no copy)."""
    return t if rows is None else t[rows]


def _put(t: Tensor, rows: Tensor | None, value: Tensor) -> Tensor:
    """``t`` with rows ``rows`` replaced by ``value``, out of place (``None``: ``value`` itself).

    State tensors are replaced, never written into, so a state may share memory with the
    loop's iterates or losses without either side seeing the other change.
    """
    return value if rows is None else t.index_put((rows,), value)


def runner_up_classes(model_scores: Tensor, y: Tensor, num_classes: int, k: int) -> Tensor:
    """``(n, k)``: per row, the ``k`` classes other than ``y`` in decreasing order of score (the
    reject column of a rejecting classifier, if any, is not a class to aim at)."""
    cls = model_scores[:, :num_classes].float()
    cls = cls.scatter(1, y[:, None], float("-inf"))
    return cls.argsort(dim=1, descending=True, stable=True)[:, :k]


@dataclass(frozen=True)
class APGD(IterativeAttack):
    """Auto-PGD: PGD with momentum and a step size that adapts per sample (no step size to tune).

    ``loss="ce"`` (APGD-CE) or ``"dlr"`` (APGD-DLR, scale-invariant; ``targeted`` uses the
    targeted DLR). ``restarts`` re-runs from random starts on the samples still unbroken.
    ``targets=k`` (untargeted threats only) is APGD-T: one run per runner-up class, with the
    targeted loss towards it (AutoAttack uses ``loss="dlr", targets=9``); 0 = the plain attack.
    """

    name: ClassVar[str] = "apgd"
    norms = ("linf", "l2")
    steps: int = 100
    random_start: bool = True
    restarts: int = 1
    momentum: float = 0.75
    rho: float = 0.75
    targets: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_size is not None:
            raise ConfigError(
                "APGD adapts its own step size (2 * epsilon, halved at checkpoints); do not set step_size"
            )
        integer(self.restarts, "restarts", minimum=1)
        fraction(self.momentum, "momentum", open_low=True)
        fraction(self.rho, "rho", open_low=True)
        integer(self.targets, "targets", minimum=0)

    def make_rule(self) -> Callable[[], StepRule]:
        return partial(APGDStep, self.momentum, self.rho)

    def settings(self, problem: Problem) -> LoopSettings:
        return LoopSettings(
            steps=self.steps,
            step_size=2.0 * problem.threat.epsilon,
            random_start=self.random_start,
            restarts=self.restarts,
            early_stop=self.early_stop,
            keep=self.keep,
            trace=self.trace,
        )

    def _run(self, problem: Problem) -> AttackResult:
        if self.targets == 0:
            return super()._run(problem)
        if problem.target is not None:
            raise ConfigError(
                "APGD targets= aims a targeted loss at runner-up classes under an untargeted threat; "
                "with a targeted threat the target is given: leave targets=0"
            )
        k = problem.model.num_classes
        if self.targets > k - 1:
            raise ConfigError(f"targets={self.targets} exceeds the {k - 1} classes other than the true one")
        with torch.no_grad():
            order = runner_up_classes(problem.model(problem.x), problem.y, k, self.targets)
        settings, rule = self.settings(problem), self.make_rule()
        problem.aim = order[:, 0]
        out = run_loop(problem, self.objective(problem), rule, settings, problem.init)
        out.forwards += 1  # the clean forward that ranked the classes
        for j in range(1, self.targets):
            rows = (~out.success).nonzero()[:, 0]
            if rows.numel() == 0:
                break
            sub = problem.subset(rows)
            sub.aim = order[rows, j]
            again = run_loop(sub, self.objective(sub), rule, settings, sub.init)
            out.take(again, rows, again.success & ~out.success[rows])
            if out.loss_trace is not None and again.loss_trace is not None:
                # per sample, the trace of the last run it took part in (the runs have equal
                # lengths): the convergence check then asks whether that run had converged
                out.loss_trace[:, rows] = again.loss_trace
        problem.aim = None
        return self.to_result(problem, out)
