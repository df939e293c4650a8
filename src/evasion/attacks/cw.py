"""Carlini-Wagner L2 (Carlini & Wagner, IEEE S&P 2017), batched, with a binary search on c."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Attack, AttackResult, Problem, check_int, check_positive
from .losses import attacker_view, margin
from .minimum_norm import finish_minimum_norm

__all__ = ["CarliniWagnerL2"]

_EDGE = 1 - 1e-6


@dataclass(frozen=True)
class CarliniWagnerL2(Attack):
    """Minimise ``||x' - x||_2^2 + c * max(-margin(x') + confidence, 0)`` in tanh space.

    ``x' = lower + (upper - lower) * (tanh(w) + 1) / 2`` keeps every iterate inside the box (and
    masked pixels, whose ``lower == upper``, fixed) without clipping. Adam runs ``steps``
    iterations per value of ``c``; ``binary_search_steps`` rounds adjust ``c`` per sample (halve
    the interval after a success, multiply by 10 while none was found). The smallest adversarial
    point seen is kept. ``abort_early`` ends a round once the objective stops decreasing.
    """

    name: ClassVar[str] = "cw-l2"
    norms = ("l2",)
    minimum_norm: ClassVar[bool] = True
    reject_aware = True  # the margin of ``attacker_view``: the reject score is a competitor
    steps: int = 100
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    confidence: float = 0.0
    learning_rate: float = 0.01
    abort_early: bool = True

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("binary_search_steps", self.binary_search_steps, 1)
        check_positive("initial_const", self.initial_const)
        check_positive("confidence", self.confidence, allow_zero=True)
        check_positive("learning_rate", self.learning_rate)

    def _run(self, problem: Problem) -> AttackResult:
        x0, n, dev = problem.x, problem.n, problem.x.device
        lo, span = problem.lower, problem.upper - problem.lower
        unit = torch.where(span > 0, (x0 - lo) / span.clamp_min(1e-12), torch.zeros_like(x0))
        w0 = torch.atanh((unit * 2 - 1).clamp(-_EDGE, _EDGE))
        c = torch.full((n,), self.initial_const, device=dev, dtype=x0.dtype)
        low, high = torch.zeros_like(c), torch.full_like(c, math.inf)
        best, best_norm = x0.clone(), torch.full_like(c, math.inf)
        # ``span * u / 2`` and ``(span / 2) * u`` round to the same float (halving is exact)
        half = span / 2
        steps = 0
        for _round in range(self.binary_search_steps):
            succeeded, best, best_norm, taken = self._round(problem, w0, c, lo, half, best, best_norm)
            steps += taken
            high = torch.where(succeeded, torch.minimum(high, c), high)
            low = torch.where(succeeded, low, torch.maximum(low, c))
            c = torch.where(torch.isinf(high), c * 10, (low + high) / 2)
        found = torch.isfinite(best_norm)
        fwd = torch.full((n,), steps, dtype=torch.long, device=dev)
        return finish_minimum_norm(self, problem, best, found, fwd, fwd.clone())

    def _round(
        self,
        problem: Problem,
        w0: Tensor,
        c: Tensor,
        lo: Tensor,
        half: Tensor,
        best: Tensor,
        best_norm: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """One Adam run for fixed ``c``: per-sample success, the closest adversarial points and
        their norms so far, and the number of steps taken (every sample takes every step)."""
        model, x0 = problem.model, problem.x
        shape = (-1,) + (1,) * (x0.dim() - 1)
        w = w0.clone()
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        b1, b2 = 0.9, 0.999
        succeeded = torch.zeros_like(c, dtype=torch.bool)
        previous = math.inf
        t = 0
        for t in range(1, self.steps + 1):
            w.requires_grad_(True)
            x_adv = lo + half * (torch.tanh(w) + 1)
            scores = model(x_adv)
            dist = (x_adv - x0).flatten(1).square().sum(1)
            gap = margin(attacker_view(model, scores, problem.y, problem.target), problem.y, problem.target)
            loss = dist + c * (self.confidence - gap).clamp_min(0)
            (g,) = torch.autograd.grad(loss.sum(), w)
            with torch.no_grad():
                hit = problem.success(model.decide(scores), None) & (gap >= self.confidence)
                now = dist.sqrt()
                closer = hit & (now < best_norm)  # masked selections: no gather, no sync
                best = torch.where(closer.reshape(shape), x_adv, best)
                best_norm = torch.where(closer, now, best_norm)
                succeeded |= hit
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = self.learning_rate * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
                w = w.detach() - step
            if self.abort_early and t % max(self.steps // 10, 1) == 0:
                total = float(loss.detach().sum())
                if total > previous * 0.9999:
                    break
                previous = total
        return succeeded, best, best_norm, t
