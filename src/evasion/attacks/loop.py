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
            radius="uniform",  # see ``random_start``: a start on the L2 sphere is a weaker one
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
    # While every sample runs (always, in full mode) the loop indexes nothing: ``active`` stays
    # None, the rule gets ``everyone`` (the context's ``all_rows``: no gathers) and the per-sample
    # counts of those steps are two Python integers added once at the end.
    active: Tensor | None = None
    everyone = torch.arange(n, device=dev)
    can_stop = s.early_stop or s.tolerance is not None
    prev = torch.full((n,), math.nan, device=dev, dtype=x.dtype) if s.tolerance is not None else None
    ctx = StepContext(problem, s.step_size, s.steps, s.l1_fraction, all_rows=everyone)
    rule.start(ctx)
    aim = problem.loss_target
    full_forwards = full_backwards = 0
    for t in range(s.steps + 1):
        full = active is None
        if full:
            idx, rows = everyone, None
        else:
            assert active is not None
            idx = active.nonzero()[:, 0]
            rows = idx
            if idx.numel() == 0:
                break
        with_grad = t < s.steps
        xa = (x if full else x[idx]).detach().requires_grad_(with_grad)
        y_rows = problem.y if rows is None else problem.y[rows]
        aim_rows = aim if aim is None or rows is None else aim[rows]
        with torch.set_grad_enabled(with_grad):  # the last evaluation only checks: no graph
            value = objective(problem.model, xa, y_rows, aim_rows)
        if full:
            full_forwards += 1
        else:
            best.forwards[idx] += 1
        loss = value.total.detach()
        preds = problem.model.decide(value.scores.detach())
        succ = problem.success(preds, rows) & torch.isfinite(loss)
        if best.loss_trace is not None:
            best.loss_trace[t, idx] = loss.to(best.loss_trace.dtype)
        _keep_best(best, rows, xa.detach(), preds, succ, loss, s.keep == "last")
        go: Tensor | None = None  # None: every sample of this iteration goes on
        if can_stop:
            stop = succ if s.early_stop else torch.zeros_like(succ)
            if prev is not None and s.tolerance is not None:
                if t > 0:
                    stop = stop | ((loss - (prev if rows is None else prev[rows])).abs() <= s.tolerance)
                prev[idx] = loss
            stopped = int(stop.sum())
            if stopped == idx.numel():
                break
            if stopped:
                if active is None:
                    active = torch.ones(n, dtype=torch.bool, device=dev)
                active[idx[stop]] = False
                go = ~stop
        if not with_grad:
            break
        grads = [_sanitise(g, rows, best) for g in _gradients(value.terms, xa)]
        if full:
            full_backwards += 1
        else:
            best.backwards[idx] += 1
        if go is None:
            step_rows, xs, loss_go = idx, xa.detach(), loss
        else:
            step_rows, xs, grads, loss_go = idx[go], xa.detach()[go], [g[go] for g in grads], loss[go]
        nxt = rule.step(ctx, xs, grads, value.weights, loss_go, step_rows, t)
        # out of place: ``x`` may be a tensor the step rule returned (and keeps), never written into
        x = nxt if step_rows is everyone else x.index_put((step_rows,), nxt)
    if full_forwards:
        best.forwards += full_forwards
    if full_backwards:
        best.backwards += full_backwards
    return best


def _sanitise(g: Tensor, rows: Tensor | None, out: LoopOutput) -> Tensor:
    """Count all-zero and non-finite gradients per sample (rows ``rows``, ``None``: all);
    replace non-finite entries by 0."""
    flat = g.reshape(g.shape[0], -1)
    # the largest |g_i| per sample (one fused pass): NaN or inf exactly when some entry is, 0
    # exactly when all are
    peak = torch.linalg.vector_norm(flat, math.inf, dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    finite = torch.isfinite(peak)
    if rows is None:
        out.nonfinite_grad_steps += ~finite
        out.zero_grad_steps += peak == 0
    else:
        out.nonfinite_grad_steps[rows] += (~finite).long()
        out.zero_grad_steps[rows] += (peak == 0).long()
    if bool(finite.all()):
        return g
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def _keep_best(
    best: LoopOutput,
    rows: Tensor | None,
    x: Tensor,
    preds: Tensor,
    succ: Tensor,
    loss: Tensor,
    always: bool,
) -> None:
    """Record the current iterate where it beats the best so far (or always, for keep="last").

    ``rows``: the rows of the batch ``x`` holds (``None``: the whole batch, in order).
    """
    if rows is None:  # the whole batch: masked selections, no gather/scatter
        if always:
            # copies: ``x`` and ``loss`` may be kept by the step rule, and ``take`` writes into these
            best.adversarial = x.clone()
            best.predictions, best.success = preds.clone(), succ.clone()
            best.objective = loss.to(best.objective.dtype, copy=True)
            return
        better = _better(succ, loss, best.success, best.objective)
        b = better.reshape((-1,) + (1,) * (x.dim() - 1))
        best.adversarial = torch.where(b, x, best.adversarial)
        best.predictions = torch.where(better, preds, best.predictions)
        best.success = torch.where(better, succ, best.success)
        best.objective = torch.where(better, loss.to(best.objective.dtype), best.objective)
        return
    better = (
        torch.ones_like(succ) if always else _better(succ, loss, best.success[rows], best.objective[rows])
    )
    pick = rows[better]
    best.adversarial[pick] = x[better]
    best.predictions[pick] = preds[better]
    best.success[pick] = succ[better]
    best.objective[pick] = loss[better].to(best.objective.dtype)


def _better(succ: Tensor, loss: Tensor, old_succ: Tensor, old_loss: Tensor) -> Tensor:
    """A success beats a failure, then a larger objective; the first evaluation always counts."""
    failed_before = ~old_succ
    better = (succ & failed_before) | ((succ == old_succ) & (loss > old_loss))
    return better | (failed_before & ~torch.isfinite(old_loss))
