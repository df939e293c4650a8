"""DeepFool (Moosavi-Dezfooli et al. 2016), batched, in L2 and L∞."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..perturbations import project_box
from .base import Attack, AttackResult, Problem, check_int, check_positive
from .minimum_norm import class_gradients, finish_minimum_norm

__all__ = ["DeepFool"]


@dataclass(frozen=True)
class DeepFool(Attack):
    """Minimum-norm attack: step to the nearest linearised decision boundary until the label flips.

    Each iteration linearises the logit differences ``f_k = z_k - z_y`` for the ``candidates``
    most likely other classes, moves to the closest of their boundaries (distance
    ``|f_k| / ||grad f_k||_q``, q the dual norm), and accumulates the step; the total is scaled by
    ``1 + overshoot`` so the point ends up just across. Samples stop as soon as they flip; all
    class gradients of an iteration come from one backward pass per candidate class over the
    batch, on the graph of one forward pass. Untargeted only; on
    a classifier with a reject option it linearises the class scores and ignores the reject rule.
    """

    name: ClassVar[str] = "deepfool"
    norms = ("l2", "linf")
    minimum_norm: ClassVar[bool] = True
    supports_targeted: ClassVar[bool] = False
    reject_aware = False  # linearises the class scores only
    steps: int = 50
    candidates: int = 10
    overshoot: float = 0.02

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("candidates", self.candidates, 2)
        check_positive("overshoot", self.overshoot, allow_zero=True)

    def _run(self, problem: Problem) -> AttackResult:
        model, x0, y = problem.model, problem.x, problem.y
        n, dev = problem.n, x0.device
        k = min(self.candidates, model.num_classes)
        if k < 2:
            raise ConfigError("DeepFool needs a model with at least 2 classes")
        free = problem.free
        total = torch.zeros_like(x0)
        best, found = x0.clone(), torch.zeros(n, dtype=torch.bool, device=dev)
        fwd = torch.zeros(n, dtype=torch.long, device=dev)
        bwd = torch.zeros_like(fwd)
        active = torch.arange(n, device=dev)
        x_adv = x0.clone()
        for it in range(self.steps + 1):
            last = it == self.steps  # the last forward only checks: no graph
            xa = x_adv[active].detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                full = model(xa)
            fwd[active] += 1
            done = problem.success(model.decide(full.detach()), active)
            scores = model.class_scores(full)  # DeepFool linearises the class scores only
            best[active[done]], found[active[done]] = xa.detach()[done], True
            keep = ~done
            if last or not bool(keep.any()):
                break
            ya = y[active]
            others = scores.detach().scatter(1, ya[:, None], float("-inf")).topk(k - 1, dim=1).indices
            grads = class_gradients(xa, scores, others, ya)  # (n, k-1, *x)
            bwd[active] += k - 1
            step = _step(
                problem.threat.norm,
                scores.detach(),
                grads,
                others,
                ya,
                None if free is None else free[active],
            )
            active, step = active[keep], step[keep]
            total[active] += step
            x_adv[active] = project_box(
                x0[active] + (1 + self.overshoot) * total[active],
                problem.lower[active],
                problem.upper[active],
            )
        return finish_minimum_norm(self, problem, best, found, fwd, bwd)


def _step(norm: str, scores: Tensor, grads: Tensor, others: Tensor, y: Tensor, free: Tensor | None) -> Tensor:
    """The step to the nearest linearised boundary among the candidate classes."""
    if free is not None:
        grads = grads * free[:, None]
    f = scores.gather(1, others) - scores.gather(1, y[:, None])  # (n, k-1), negative before flipping
    flat = grads.flatten(2)
    dual = flat.norm(dim=2) if norm == "l2" else flat.abs().sum(2)
    dist = f.abs() / dual.clamp_min(1e-12)
    j = dist.argmin(dim=1)
    rows = torch.arange(grads.shape[0], device=grads.device)
    w, fj, dj = grads[rows, j], f[rows, j].abs(), dual[rows, j].clamp_min(1e-12)
    shape = (-1,) + (1,) * (w.dim() - 1)
    if norm == "l2":
        return ((fj + 1e-4) / dj.square()).reshape(shape) * w
    return ((fj + 1e-4) / dj).reshape(shape) * torch.sign(w)
