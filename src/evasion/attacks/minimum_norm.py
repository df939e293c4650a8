"""Shared plumbing of minimum-norm attacks: budget projection, result assembly, class gradients."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..perturbations import norm as perturbation_norm
from ..perturbations import project
from .base import Attack, AttackResult, Problem

__all__ = ["class_gradients", "finish_minimum_norm"]


def class_gradients(x: Tensor, scores: Tensor, classes: Tensor, reference: Tensor) -> Tensor:
    """Gradients of ``scores[:, classes[:, j]] - scores[:, reference]`` w.r.t. ``x``: ``(n, C, *x)``.

    All ``C`` vector-Jacobian products run as one vectorised backward pass (``is_grads_batched``);
    models with operations that cannot be vectorised fall back to one backward per class.
    """
    n, c = classes.shape
    seeds = torch.zeros((c, n, scores.shape[1]), device=scores.device, dtype=scores.dtype)
    rows = torch.arange(n, device=scores.device)
    for j in range(c):
        seeds[j, rows, classes[:, j]] += 1.0
        seeds[j, rows, reference] -= 1.0
    try:
        (g,) = torch.autograd.grad(scores, x, grad_outputs=seeds, is_grads_batched=True, retain_graph=True)
    except RuntimeError:
        g = torch.stack(
            [torch.autograd.grad(scores, x, grad_outputs=seeds[j], retain_graph=True)[0] for j in range(c)]
        )
    return g.transpose(0, 1)


def finish_minimum_norm(
    attack: Attack,
    problem: Problem,
    best: Tensor,
    found: Tensor,
    forwards: Tensor,
    backwards: Tensor,
) -> AttackResult:
    """Project the smallest adversarial points onto ``threat.epsilon`` and re-check them.

    ``best`` holds the smallest adversarial point found per sample (the clean point where
    ``found`` is False). ``minimal_norms`` keeps their unprojected norms (``inf`` if none).
    """
    threat = problem.threat
    minimal = torch.where(
        found,
        perturbation_norm(best - problem.x, threat.norm),
        torch.full_like(found, math.inf, dtype=best.dtype),
    )
    adversarial = best
    if not math.isinf(threat.epsilon):
        adversarial = project(best, problem.x, threat.epsilon, threat.norm, problem.lower, problem.upper)
    with torch.no_grad():
        predictions = problem.model.decide(problem.model(adversarial))
    return attack.result(problem, adversarial, predictions, forwards + 1, backwards, minimal_norms=minimal)
