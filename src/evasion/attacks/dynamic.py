"""The dynamic adversary of Metzen et al. (2017, Sect. 3.3): fool the classifier and its detector.

It is the basic iterative method with two objective terms, each with its own steepest-ascent
direction, on the shared gradient loop:

``x <- Clip_eps(x + alpha((1 - sigma) sgn grad J_cls(x, y) + sigma sgn grad J_det(x, 1)))``

``J_cls`` is the classifier's loss (cross-entropy by default) and ``J_det(x, 1) = -log p_adv(x)``
the detector's cross-entropy for the label "adversarial": maximising it drives ``p_adv`` down.
``sigma = 0`` is BIM on the classifier; ``sigma = 1`` only hides from the detector. In L2 the
directions are normalised gradients instead of signs.

**Threshold-aware variant** (``detector_loss="hinge"``). The paper's detector decides at
``p_adv = 0.5`` and its ``J_det`` pushes ``p_adv`` down without limit. A deployed detector
decides at its own threshold (often far below 0.5: one for a 5% false-positive rate), and an
attacker that knows it only needs ``logit(p_adv) < logit(threshold)``. The hinge objective caps
both terms at ``kappa``: ``J_cls = min(margin, kappa)`` (misclassified by ``kappa``) and
``J_det = min(logit(threshold) - logit(p_adv), kappa)`` (below the deployed threshold by
``kappa``). Both terms are in logit units, so they are added (weights ``1 - sigma`` and
``sigma``) into one objective with one gradient: a satisfied term has a zero gradient and the
whole step goes to the term still unsatisfied, instead of two sign vectors cancelling wherever
they disagree (the paper's combination, which leaves most pixels still).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.classifier import Classifier
from .base import Problem, check_positive
from .iterative import IterativeAttack
from .losses import LossFn, LossObjective, Objective, ObjectiveValue, get_loss, margin

__all__ = ["DetectorObjective", "DynamicAdversary", "WithDetector"]


@runtime_checkable
class WithDetector(Protocol):
    """A classifier with a detector (e.g. ``evasion.defenses.DetectedClassifier``)."""

    #: ``logit(threshold)``: the detector flags an input when its logit exceeds this value
    threshold_logit: float

    def scores_and_detector_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The full scores and the detector's logit of ``p_adv``, from one forward pass."""
        ...


DetectorLoss = Literal["ce", "hinge"]


@dataclass(frozen=True)
class DetectorObjective:
    """``(1 - sigma) J_cls + sigma J_det`` as two terms, one gradient each.

    ``detector_loss="ce"``: the paper's ``J_det = -log p_adv`` and the classifier loss as given.
    ``"hinge"``: both terms capped at ``kappa`` against the *deployed* threshold (module doc).
    """

    loss: LossFn
    sigma: float
    detector_loss: DetectorLoss = "ce"
    kappa: float = 1.0

    def __call__(self, model: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> ObjectiveValue:
        assert isinstance(model, WithDetector)
        scores, logit = model.scores_and_detector_logit(x)
        if self.detector_loss == "hinge":  # one objective in logit units: one gradient, one direction
            j_cls = torch.clamp(self.loss(model.class_scores(scores), y, target), max=self.kappa)
            j_det = torch.clamp(model.threshold_logit - logit, max=self.kappa)
            return ObjectiveValue(scores, ((1.0 - self.sigma) * j_cls + self.sigma * j_det,), (1.0,))
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
        detector_loss: ``"ce"`` (the paper: drive ``p_adv`` towards 0) or ``"hinge"`` (aim
            just below the detector's *deployed* threshold, ``kappa`` logits under it, and
            cap the classifier's margin at ``kappa``; with ``loss="ce"`` the hinge uses the
            margin, since a capped cross-entropy has no natural decision point).
        kappa: the hinge's margin in logit units (``detector_loss="hinge"`` only).

    The model must provide ``scores_and_detector_logit`` (:class:`WithDetector`, e.g. a
    ``DetectedClassifier``). A model without a detector has nothing to hide from: the attack is
    then BIM on the classifier's loss, so one attack serves undefended and defended systems in
    the same security evaluation. The paper's version runs every step and returns the last
    iterate (``early_stop=False, keep="last"``); the defaults keep the best evasion of the
    whole system (misclassified and not rejected), the right choice for security curves.
    """

    name: ClassVar[str] = "dynamic"
    norms = ("linf", "l2")
    reject_aware = True  # the loss sees the reject score; with a detector, one term hides from it
    sigma: float = 0.5
    steps: int = 10
    detector_loss: DetectorLoss = "ce"
    kappa: float = 1.0

    step_factor = 2.5  # step = 2.5 * eps / steps = eps / 4 with the default 10 steps

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
            raise ConfigError(f"sigma must be a number in [0, 1], got {s!r}")
        if self.detector_loss not in ("ce", "hinge"):
            raise ConfigError(f"detector_loss must be 'ce' or 'hinge', got {self.detector_loss!r}")
        check_positive("kappa", self.kappa, allow_zero=True)

    def objective(self, problem: Problem) -> Objective:
        loss = get_loss(self.loss)
        if isinstance(problem.model, WithDetector):
            if self.detector_loss == "hinge" and self.loss == "ce":
                loss = margin  # a capped CE is no hinge: the margin is 0 exactly at the decision
            return DetectorObjective(loss, float(self.sigma), self.detector_loss, float(self.kappa))
        return LossObjective(loss)
