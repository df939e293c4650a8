"""The one gradient loop every iterative attack is a configuration of.

FGSM, BIM, PGD, MI-FGSM, APGD, the maximum-confidence evasion of Melis et al. and the dynamic
adversary of Metzen et al. differ only in their objective (:mod:`.losses`), their step rule
(:mod:`.steps`), the start point and when a sample stops. The loop owns what they share:

* only samples still running are forwarded (per-sample early stop on success or on a converged
  objective), so a batch gets cheaper as it breaks;
* the best point per sample is kept (a success beats a failure, then a larger objective), so an
  iterate that was adversarial is never lost by a later step;
* per-sample forward/backward counts, an optional objective trace, and gradient diagnostics
  (steps whose gradient was all-zero or non-finite) for the attack-failure checks;
* restarts from fresh random starts, only for the samples not broken yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..perturbations import project, random_start
from .base import Problem
from .losses import Objective
from .steps import StepContext, StepRule

__all__ = ["Keep", "LoopOutput", "LoopSettings", "run_loop"]

#: which iterate a sample returns: "best" (a success, then the highest objective) or "last"
Keep = Literal["best", "last"]


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs (the attack classes validate these values)."""

    steps: int
    step_size: float
    random_start: bool = False
    restarts: int = 1
    early_stop: bool = True
    keep: Keep = "best"
    tolerance: float | None = None  # stop a sample when its objective changes by <= tolerance
    trace: bool = False
    l1_fraction: float = 0.01


@dataclass
class LoopOutput:
    """Per-sample outcome of the loop (full batch, on the problem's device)."""

    adversarial: Tensor
    predictions: Tensor
    success: Tensor
    objective: Tensor
    forwards: Tensor
    backwards: Tensor
    zero_grad_steps: Tensor
    nonfinite_grad_steps: Tensor
    loss_trace: Tensor | None

    def take(self, other: LoopOutput, rows: Tensor, better: Tensor) -> None:
        """Adopt ``other``'s outcome (computed for ``rows``) where ``better``; add its query counts."""
        for name in ("forwards", "backwards", "zero_grad_steps", "nonfinite_grad_steps"):
            getattr(self, name)[rows] += getattr(other, name)
        pick = rows[better]
        for name in ("adversarial", "predictions", "success", "objective"):
            getattr(self, name)[pick] = getattr(other, name)[better]


def run_loop(
    problem: Problem,
    objective: Objective,
    make_rule: Callable[[], StepRule],
    settings: LoopSettings,
    start: Tensor | None = None,
) -> LoopOutput:
    """Run ``settings.restarts`` runs of the loop and keep the best outcome per sample.

    ``start`` (optional) is the first run's starting point (a warm start, e.g. the adversarial
    points found at a smaller epsilon); later restarts start at random points in the ball.
    """
    out = _single_run(problem, objective, make_rule(), settings, start)
    for _ in range(settings.restarts - 1):
        rows = (~out.success).nonzero()[:, 0]
        if rows.numel() == 0:
            break
        again = _single_run(problem.subset(rows), objective, make_rule(), settings, None, force_random=True)
        better = (again.success & ~out.success[rows]) | (
            (again.success == out.success[rows]) & (again.objective > out.objective[rows])
        )
        out.take(again, rows, better)
        if out.loss_trace is not None:
            out.loss_trace = None  # traces of different restarts do not line up; keep none
    return out


def _first_point(
    problem: Problem, settings: LoopSettings, start: Tensor | None, force_random: bool
) -> Tensor:
    if start is not None:
        p = problem
        return project(
            start.to(p.x.device, p.x.dtype), p.x, p.threat.epsilon, p.threat.norm, p.lower, p.upper
        )
    if (settings.random_start or force_random) and not math.isinf(problem.threat.epsilon):
        return random_start(
            problem.x,
            problem.threat.epsilon,
            problem.threat.norm,
            problem.lower,
            problem.upper,
            problem.generator,
        )
    return problem.x.clone()


def _gradients(terms: tuple[Tensor, ...], x: Tensor) -> list[Tensor]:
    """One input gradient per objective term (the graph is kept until the last one)."""
    grads = []
    for k, term in enumerate(terms):
        (g,) = torch.autograd.grad(term.sum(), x, retain_graph=k < len(terms) - 1)
        grads.append(g)
    return grads


def _single_run(
    problem: Problem,
    objective: Objective,
    rule: StepRule,
    s: LoopSettings,
    start: Tensor | None,
    force_random: bool = False,
) -> LoopOutput:
    n, dev = problem.n, problem.x.device
    x = _first_point(problem, s, start, force_random)
    counts = {k: torch.zeros(n, dtype=torch.long, device=dev) for k in ("fwd", "bwd", "zero", "nonfinite")}
    best = LoopOutput(
        adversarial=x.clone(),
        predictions=torch.full((n,), -2, dtype=torch.long, device=dev),
        success=torch.zeros(n, dtype=torch.bool, device=dev),
        objective=torch.full((n,), -math.inf, device=dev, dtype=x.dtype),
        forwards=counts["fwd"],
        backwards=counts["bwd"],
        zero_grad_steps=counts["zero"],
        nonfinite_grad_steps=counts["nonfinite"],
        loss_trace=torch.full((s.steps + 1, n), math.nan, device=dev) if s.trace else None,
    )
    active = torch.ones(n, dtype=torch.bool, device=dev)
    everyone = torch.arange(n, device=dev)
    prev = torch.full((n,), math.nan, device=dev, dtype=x.dtype)
    ctx = StepContext(problem, s.step_size, s.steps, s.l1_fraction)
    rule.start(ctx)
    for t in range(s.steps + 1):
        full = bool(active.all())
        idx = everyone if full else active.nonzero()[:, 0]
        if idx.numel() == 0:
            break
        with_grad = t < s.steps
        xa = (x if full else x[idx]).detach().requires_grad_(with_grad)
        aim = problem.loss_target
        value = objective(problem.model, xa, problem.y[idx], None if aim is None else aim[idx])
        best.forwards[idx] += 1
        loss = value.total.detach()
        preds = problem.model.decide(value.scores.detach())
        succ = problem.success(preds, idx) & torch.isfinite(loss)
        if best.loss_trace is not None:
            best.loss_trace[t, idx] = loss.to(best.loss_trace.dtype)
        _keep_best(best, idx, xa.detach(), preds, succ, loss, s.keep == "last")
        stop = succ if s.early_stop else torch.zeros_like(succ)
        if s.tolerance is not None and t > 0:
            stop = stop | ((loss - prev[idx]).abs() <= s.tolerance)
        prev[idx] = loss
        go = ~stop
        active[idx[stop]] = False
        if not with_grad:
            break
        if not bool(go.any()):
            continue
        grads = [_sanitise(g, idx, best) for g in _gradients(value.terms, xa)]
        best.backwards[idx] += 1
        if bool(go.all()):
            rows, xs, loss_go = idx, xa.detach(), loss
        else:
            rows, xs, grads, loss_go = idx[go], xa.detach()[go], [g[go] for g in grads], loss[go]
        nxt = rule.step(ctx, xs, grads, value.weights, loss_go, rows, t)
        # out of place: ``x`` may be a tensor the step rule returned (and keeps), never written into
        x = nxt if full and rows.numel() == n else x.index_put((rows,), nxt)
    return best


def _sanitise(g: Tensor, idx: Tensor, out: LoopOutput) -> Tensor:
    """Count all-zero and non-finite gradients per sample; replace non-finite entries by 0."""
    flat = g.reshape(g.shape[0], -1)
    finite = torch.isfinite(flat).all(1)
    out.nonfinite_grad_steps[idx] += (~finite).long()
    out.zero_grad_steps[idx] += (finite & (flat == 0).all(1)).long()
    if bool(finite.all()):
        return g
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def _keep_best(
    best: LoopOutput, idx: Tensor, x: Tensor, preds: Tensor, succ: Tensor, loss: Tensor, always: bool
) -> None:
    """Record the current iterate where it beats the best so far (or always, for keep="last")."""
    if always:
        better = torch.ones_like(succ)
    else:
        old_succ, old_loss = best.success[idx], best.objective[idx]
        better = (succ & ~old_succ) | ((succ == old_succ) & (loss > old_loss))
        better |= ~torch.isfinite(old_loss) & ~old_succ  # the very first evaluation always counts
    if idx.numel() == best.success.numel():  # the whole batch: masked writes, no gather/scatter
        b = better.reshape((-1,) + (1,) * (x.dim() - 1))
        best.adversarial.copy_(torch.where(b, x, best.adversarial))
        best.predictions.copy_(torch.where(better, preds, best.predictions))
        best.success.copy_(torch.where(better, succ, best.success))
        best.objective.copy_(torch.where(better, loss.to(best.objective.dtype), best.objective))
        return
    rows = idx[better]
    best.adversarial[rows] = x[better]
    best.predictions[rows] = preds[better]
    best.success[rows] = succ[better]
    best.objective[rows] = loss[better]
