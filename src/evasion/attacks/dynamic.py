"""The dynamic adversary of Metzen et al. (2017, Sect. 3.3): fool the classifier and its detector.

It is the basic iterative method with two objective terms, each with its own steepest-ascent
direction, on the shared gradient loop:

``x <- Clip_eps(x + alpha((1 - sigma) sgn grad J_cls(x, y) + sigma sgn grad J_det(x, 1)))``

``J_cls`` is the classifier's loss (cross-entropy by default) and ``J_det(x, 1) = -log p_adv(x)``
the detector's cross-entropy for the label "adversarial": maximising it drives ``p_adv`` down.
``sigma = 0`` is BIM on the classifier; ``sigma = 1`` only hides from the detector. In L2 the
directions are normalised gradients instead of signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.classifier import Classifier
from .base import Problem
from .iterative import IterativeAttack
from .losses import LossFn, LossObjective, Objective, ObjectiveValue, get_loss

__all__ = ["DetectorObjective", "DynamicAdversary", "WithDetector"]


@runtime_checkable
class WithDetector(Protocol):
    """A classifier with a detector (e.g. ``evasion.defenses.DetectedClassifier``)."""

    def scores_and_detector_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The full scores and the detector's logit of ``p_adv``, from one forward pass."""
        ...


@dataclass(frozen=True)
class DetectorObjective:
    """``(1 - sigma) J_cls + sigma J_det(x, 1)`` as two terms, one gradient each."""

    loss: LossFn
    sigma: float

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> ObjectiveValue:
        assert isinstance(model, WithDetector)
        scores, logit = model.scores_and_detector_logit(x)
        j_cls = self.loss(model.class_scores(scores), y, target)
        j_det = F.softplus(-logit)  # -log sigmoid(logit) = -log p_adv
        if self.sigma == 0.0:  # skip the backward pass of a term with weight 0
            return ObjectiveValue(scores, (j_cls,), (1.0,))
        if self.sigma == 1.0:
            return ObjectiveValue(scores, (j_det,), (1.0,))
        return ObjectiveValue(scores, (j_cls, j_det), (1.0 - self.sigma, self.sigma))


@dataclass(frozen=True)
class DynamicAdversary(IterativeAttack):
    """Metzen et al.'s dynamic adversary against a classifier with a detector.

    Args:
        sigma: trade-off in [0, 1] between fooling the classifier (0) and the detector (1).
        steps, step_size: iterations and the step ``alpha``; the default step is
            ``2.5 * epsilon / steps``, i.e. ``epsilon / 4`` with the default 10 steps (the
            paper: alpha = 0.25 at epsilon = 1, in [0, 255] units).

    The model must provide ``scores_and_detector_logit`` (:class:`WithDetector`, e.g. a
    ``DetectedClassifier``). A model without a detector has nothing to hide from: the attack is
    then BIM on the classifier's loss, so one attack serves undefended and defended systems in
    the same security evaluation. The paper's version runs every step and returns the last
    iterate (``early_stop=False, keep="last"``); the defaults keep the best evasion of the
    whole system (misclassified and not rejected), the right choice for security curves.
    """

    name: ClassVar[str] = "dynamic"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    sigma: float = 0.5
    steps: int = 10

    step_factor = 2.5  # step = 2.5 * eps / steps = eps / 4 with the default 10 steps

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ConfigError(f"sigma must be a number in [0, 1], got {s!r}")

    def objective(self, problem: Problem) -> Objective:
        loss = get_loss(self.loss)
        if isinstance(problem.model, WithDetector):
            return DetectorObjective(loss, float(self.sigma))
        return LossObjective(loss)
