"""Maximum-confidence evasion (Melis et al. 2017, Algorithm 1), batched on the shared loop.

Error-generic: minimise ``f_y(x) - max_{l!=y} f_l(x)``; error-specific: maximise
``f_t(x) - max_{l!=t} f_l(x)``, both subject to ``d(x, x') <= d_max`` and the box
``x_lb <= x' <= x_ub`` (a mask, a "sticker", is a box with ``x_lb = x_ub = x`` outside it). The
attack follows projected (steepest-ascent) gradient steps and stops a sample when its objective
changes by less than ``tolerance``; an optional line search along the step (secml's PGD-LS)
adapts the step size per sample. Unlike minimum-distance attacks it keeps going after the first
evasion (``early_stop=False``): the adversarial examples are misclassified with high confidence.

Against a reject option (SVM-adv) the objective counts the reject score as a competitor: an
error-generic attacker needs some wrong class above both the true class and ``theta``; an
error-specific one needs the target above every other class and ``theta``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.classifier import REJECT, Classifier, as_classifier
from ..threat_model import ThreatModel
from .base import AttackResult, Problem, check_fraction, check_int, check_positive
from .iterative import IterativeAttack
from .loop import LoopSettings, run_loop
from .losses import LossObjective, Objective, ObjectiveValue, get_loss, other_max
from .steps import SteepestAscent, StepContext, StepRule

__all__ = [
    "LineSearch",
    "MaxConfidence",
    "MaxConfidenceObjective",
    "MinimumBudget",
    "minimum_budget",
    "sticker_mask",
]


@dataclass(frozen=True)
class MaxConfidenceObjective:
    """The paper's Eq. (2) as a quantity to maximise, positive exactly when the attack succeeds.

    Generic: ``max_{l!=y} f_l - max(f_y, r)``; specific: ``f_t - max(max_{l!=t} f_l, r)``, where
    ``r`` is the reject score of a reject-option classifier (absent otherwise).
    """

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> ObjectiveValue:
        scores = model(x)
        cls = scores[:, : model.num_classes]
        reject = scores[:, model.num_classes] if model.rejects else None
        if target is None:
            own = cls.gather(1, y[:, None])[:, 0]
            if reject is not None:
                own = torch.maximum(own, reject)
            phi = other_max(cls, y) - own
        else:
            rival = other_max(cls, target)
            if reject is not None:
                rival = torch.maximum(rival, reject)
            phi = cls.gather(1, target[:, None])[:, 0] - rival
        return ObjectiveValue(scores, (phi,))


@dataclass
class LineSearch:
    """Steepest-ascent step whose size is searched per sample along the direction (PGD-LS).

    From each sample's last accepted step ``eta`` it tries ``eta``, then doubles while the
    objective improves (at most ``tries`` times) or halves until it improves (at most ``tries``
    times; with no improvement the point stays, and the loop's tolerance stops the sample).
    Candidate evaluations are forward passes only; they are counted in ``forwards``.
    """

    objective: Objective
    tries: int = 4
    forwards: Tensor | None = None
    _eta: Tensor | None = field(default=None, repr=False)

    def start(self, ctx: StepContext) -> None:
        n, dev = ctx.problem.n, ctx.problem.x.device
        self._eta = torch.full((n,), ctx.step_size, device=dev, dtype=ctx.problem.x.dtype)
        if self.forwards is None or self.forwards.shape[0] != n:
            self.forwards = torch.zeros(n, dtype=torch.long, device=dev)

    def _value(self, ctx: StepContext, z: Tensor, idx: Tensor) -> Tensor:
        p = ctx.problem
        with torch.no_grad():
            value = self.objective(p.model, z, p.y[idx], None if p.target is None else p.target[idx])
        assert self.forwards is not None
        self.forwards[idx] += 1
        return torch.nan_to_num(value.total.detach(), nan=-math.inf)

    def _move(self, ctx: StepContext, x: Tensor, d: Tensor, eta: Tensor, idx: Tensor) -> Tensor:
        return ctx.project(x + eta.reshape((-1,) + (1,) * (x.dim() - 1)) * d, idx)

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
        assert self._eta is not None
        d = sum(w * ctx.direction(g, x, idx) for w, g in zip(weights, grads))
        assert isinstance(d, Tensor)
        eta = self._eta[idx].clone()
        best_x = self._move(ctx, x, d, eta, idx)
        best = self._value(ctx, best_x, idx)
        grow, shrink = best > loss, best <= loss
        for _ in range(self.tries):
            if not bool(grow.any() or shrink.any()):
                break
            if bool(grow.any()):  # the step paid: try twice as far while that pays more
                rows = grow.nonzero()[:, 0]
                cand_eta = eta[rows] * 2
                cand = self._move(ctx, x[rows], d[rows], cand_eta, idx[rows])
                val = self._value(ctx, cand, idx[rows])
                better = val > best[rows]
                upd = rows[better]
                best_x[upd], best[upd], eta[upd] = cand[better], val[better], cand_eta[better]
                grow[rows[~better]] = False
            if bool(shrink.any()):  # the step did not pay: halve it until it does
                rows = shrink.nonzero()[:, 0]
                eta[rows] = eta[rows] / 2
                cand = self._move(ctx, x[rows], d[rows], eta[rows], idx[rows])
                val = self._value(ctx, cand, idx[rows])
                better = val > loss[rows]
                upd = rows[better]
                best_x[upd], best[upd] = cand[better], val[better]
                shrink[upd] = False
        stay = best <= loss  # nothing paid: keep the point (the tolerance then stops the sample)
        best_x[stay] = x[stay]
        eta = torch.where(stay, torch.full_like(eta, ctx.step_size), eta)
        self._eta[idx] = eta.clamp(max=ctx.step_size * 2**self.tries)
        return best_x


@dataclass(frozen=True)
class MaxConfidence(IterativeAttack):
    """Melis et al.'s maximum-confidence evasion: projected gradient on Eq. (2) until it converges.

    Args:
        steps: at most this many gradient steps (Algorithm 1 stops earlier on ``tolerance``).
        step_size: the step ``eta`` in the threat norm (default ``2.5 * epsilon / steps``).
        loss: ``"margin"`` is the paper's objective (reject-aware); others as in the loop.
        early_stop: stop a sample at its first evasion (enough for accuracy curves, cheaper);
            the default ``False`` keeps maximising the confidence of the evasion.
        tolerance: stop a sample when its objective changes by ``<= tolerance`` (``None``: never).
        line_search: search the step size per sample along each step (secml's PGD-LS).
        line_search_tries: doublings / halvings per line search.
    """

    name: ClassVar[str] = "max-confidence"
    norms = ("l2", "l1", "linf")
    reject_aware = True  # the reject score is a competitor in the objective
    steps: int = 100
    loss: str = "margin"
    early_stop: bool = False
    tolerance: float | None = 1e-4
    line_search: bool = False
    line_search_tries: int = 4
    l1_fraction: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tolerance is not None:
            check_positive("tolerance", self.tolerance, allow_zero=True)
        if not isinstance(self.line_search, bool):
            raise ConfigError(f"line_search must be True or False, got {self.line_search!r}")
        check_int("line_search_tries", self.line_search_tries, 1)
        check_fraction("l1_fraction", self.l1_fraction)

    def objective(self, problem: Problem) -> Objective:
        return MaxConfidenceObjective() if self.loss == "margin" else LossObjective(get_loss(self.loss))

    def settings(self, problem: Problem) -> LoopSettings:
        return replace(super().settings(problem), tolerance=self.tolerance, l1_fraction=self.l1_fraction)

    def _run(self, problem: Problem) -> AttackResult:
        _check_free_pixels(problem)
        objective = self.objective(problem)
        search = LineSearch(objective, self.line_search_tries) if self.line_search else None
        make: Callable[[], StepRule] = (lambda: search) if search is not None else SteepestAscent
        out = run_loop(problem, objective, make, self.settings(problem), problem.init)
        if search is not None and search.forwards is not None:
            out.forwards += search.forwards
        return self.to_result(problem, out)


def _check_free_pixels(problem: Problem) -> None:
    """A clear error when the mask and box leave some sample nothing to change."""
    free = (problem.upper > problem.lower).reshape(problem.n, -1).any(1)
    if not bool(free.all()):
        i = int((~free).nonzero()[0, 0])
        raise ConfigError(
            f"the mask and bounds leave no pixel free for {int((~free).sum())} input(s) (first: index {i}); "
            "the attacker could not change anything"
        )


def sticker_mask(shape: Sequence[int], top: int, left: int, height: int, width: int) -> Tensor:
    """A boolean ``(H, W)`` mask, True on the rectangle the attacker may change (the sticker)."""
    h, w = int(shape[-2]), int(shape[-1])
    if height <= 0 or width <= 0:
        raise ConfigError(f"a sticker needs a positive size, got {height}x{width}")
    if top < 0 or left < 0 or top + height > h or left + width > w:
        raise ConfigError(f"sticker {height}x{width} at ({top}, {left}) does not fit in a {h}x{w} image")
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


@dataclass(frozen=True)
class MinimumBudget:
    """Per sample, the smallest budget of the grid at which the attack evaded (``inf`` if none)."""

    epsilons: Tensor
    adversarial: Tensor
    predictions: Tensor
    grid: tuple[float, ...]

    @property
    def evaded(self) -> Tensor:
        return torch.isfinite(self.epsilons)


def minimum_budget(
    attack: IterativeAttack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str,
    epsilons: Sequence[float],
    mask: Tensor | None = None,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MinimumBudget:
    """The minimum ``d_max`` that evades, per sample, scanning ``epsilons`` upwards.

    Each budget attacks only the samples not evaded yet, warm-started from their points at the
    previous budget (the paper's "minimally-perturbed adversarial example that evades"). A sample
    the model already gets wrong (or assigns to ``target``) needs 0; ``inf``: not evaded.
    """
    grid = tuple(sorted(float(e) for e in epsilons if e > 0))
    if not grid:
        raise ConfigError("minimum_budget needs at least one epsilon > 0")
    clf = as_classifier(model, x)
    clean = clf.predict(x).cpu()
    already = (clean == target.cpu()) if target is not None else (clean != y.cpu()) & (clean != REJECT)
    found = torch.where(already, 0.0, math.inf)
    adversarial, predictions = x.detach().clone(), clean.clone()
    current = x.detach().clone()
    for eps in grid:
        rows = (~torch.isfinite(found)).nonzero()[:, 0]
        if rows.numel() == 0:
            break
        rows_mask = (
            mask[rows] if mask is not None and mask.dim() == 4 and mask.shape[0] == x.shape[0] else mask
        )
        threat = ThreatModel(norm, eps, mask=rows_mask, targeted=target is not None)
        r = attack(
            clf,
            x[rows],
            y[rows],
            threat=threat,
            target=None if target is None else target[rows],
            generator=generator,
            init=current[rows],
        )
        ok = r.success.cpu()
        current[rows] = r.adversarial.detach().cpu().to(current.dtype)
        found[rows[ok]] = eps
        adversarial[rows[ok]] = r.adversarial.detach().cpu()[ok].to(adversarial.dtype)
        predictions[rows] = r.predictions.cpu()
    return MinimumBudget(found, adversarial, predictions, grid)
