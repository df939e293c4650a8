"""Per-sample objectives an attacker maximises, and the `Objective` the gradient loop calls.

Every loss maps scores ``(n, K)``, true labels ``y`` and (targeted) ``target`` to a ``(n,)``
tensor that is *larger* when the input is closer to being adversarial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, UnknownNameError
from ..models.classifier import Classifier

__all__ = [
    "LOSSES",
    "LossFn",
    "LossObjective",
    "Objective",
    "ObjectiveValue",
    "attacker_view",
    "cross_entropy",
    "dlr",
    "get_loss",
    "margin",
    "other_max",
]

LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def other_max(scores: Tensor, exclude: Tensor) -> Tensor:
    """Largest score among the classes other than ``exclude`` (per row)."""
    masked = scores.masked_fill(F.one_hot(exclude, scores.shape[1]).bool(), float("-inf"))
    return masked.amax(dim=1)


def cross_entropy(scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """CE of the true class (untargeted) or minus CE of the target class (targeted)."""
    if target is None:
        return F.cross_entropy(scores, y, reduction="none")
    return -F.cross_entropy(scores, target, reduction="none")


def margin(scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Logit margin (Carlini-Wagner): ``max_{l!=y} z_l - z_y`` or ``z_t - max_{l!=t} z_l``.

    Positive exactly when the input is misclassified (resp. classified as the target).
    """
    if target is None:
        return other_max(scores, y) - scores.gather(1, y[:, None])[:, 0]
    return scores.gather(1, target[:, None])[:, 0] - other_max(scores, target)


def dlr(scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): a margin invariant to logit scale and shift."""
    k = scores.shape[1]
    if k < (4 if target is not None else 3):
        raise ConfigError(
            f"the DLR loss needs at least {4 if target is not None else 3} classes, the model has {k}"
        )
    top = scores.sort(dim=1, descending=True).values
    z_y = scores.gather(1, y[:, None])[:, 0]
    if target is None:
        return -(z_y - other_max(scores, y)) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = scores.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def attacker_view(model: Classifier, scores: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Scores as an attacker of a reject-option classifier must see them (K columns).

    Untargeted, a rejection is as bad as the true class, so the reject score is merged into the
    true class (``z_y <- logsumexp(z_y, z_reject)``): every loss then pushes away from both.
    Targeted, the reject column is one more competitor of the target and stays as it is.
    Classifiers without a reject option are returned unchanged.
    """
    if not model.rejects:
        return scores
    if target is not None:
        return scores
    k = model.num_classes
    cls, rej = scores[:, :k], scores[:, k]
    z_y = cls.gather(1, y[:, None])[:, 0]
    merged = torch.logaddexp(z_y, rej)
    return cls.scatter(1, y[:, None], merged[:, None])


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str | LossFn) -> LossFn:
    if callable(name):
        return name
    if name not in LOSSES:
        raise UnknownNameError("loss", name, list(LOSSES))
    return LOSSES[name]


@dataclass(frozen=True)
class ObjectiveValue:
    """One evaluation of the objective on a batch: the model's scores and the loss terms.

    ``terms`` are per-sample losses to maximise with ``weights``; most objectives have one term.
    Several terms (e.g. classifier and detector, Metzen et al.'s dynamic adversary) get one
    gradient each and the step rule combines their steepest-ascent directions with the weights.
    """

    scores: Tensor
    terms: tuple[Tensor, ...]
    weights: tuple[float, ...] = (1.0,)

    @property
    def total(self) -> Tensor:
        """``sum_k w_k term_k`` (a single term of weight 1 is returned as it is)."""
        if len(self.terms) == 1 and self.weights[0] == 1.0:
            return self.terms[0]
        return sum((w * t for w, t in zip(self.weights, self.terms)), torch.zeros_like(self.terms[0]))


class Objective(Protocol):
    """What the gradient loop maximises for a batch of current points."""

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> ObjectiveValue: ...


@dataclass(frozen=True)
class LossObjective:
    """The usual objective: one loss of the model's scores.

    ``aimed``: the ``target`` the loop passes is an *aim* under an untargeted threat (a targeted
    loss whose success is any wrong class, AutoAttack's APGD-T): the scores are seen as an
    untargeted attacker sees them (a rejection counts as the true class) and the loss is the
    targeted one towards the aim.
    """

    loss: LossFn
    aimed: bool = False

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> ObjectiveValue:
        scores = model(x)
        view = attacker_view(model, scores, y, None if self.aimed else target)
        return ObjectiveValue(scores, (self.loss(view, y, target),))
