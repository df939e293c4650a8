"""`DetectedClassifier`: a classifier plus a detector subnetwork, as a classifier with a reject option.

An input the detector flags (``p_adv(x) > threshold``) is rejected: a fallback to a safe mode
or a human, instead of a prediction. Following the :class:`~evasion.models.Classifier` contract
the reject rule is one more score column, ``max_k z_k + logit(p_adv) - logit(threshold)``,
which is the largest score exactly when ``p_adv > threshold``. It is differentiable, so every
attack of the library sees the detector (an adaptive attacker), and the evaluation engine
counts rejected adversarial inputs as defended and rejected clean inputs as errors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.classifier import Classifier, eval_mode
from .detector import Detector, logit_of, threshold_for_fpr

__all__ = ["DetectedClassifier"]


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ConfigError(f"threshold must be a number in [0, 1], got {threshold!r}")
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ConfigError(
            f"threshold must lie in [0, 1] (a probability p_adv above which inputs are rejected), got {t}"
        )
    return t


class DetectedClassifier(Classifier):
    """``classifier`` guarded by ``detector``: REJECT where ``p_adv(x) > threshold``.

    The detector network runs in eval mode (its batch-norm statistics are fixed), and the
    classifier exactly as it runs alone; one forward pass serves both.
    """

    rejects = True

    def __init__(
        self, classifier: Classifier, detector: Detector, threshold: float = 0.5, name: str | None = None
    ):
        if not isinstance(detector, Detector):
            raise ConfigError(f"detector must be an evasion Detector, got {type(detector).__name__}")
        if not isinstance(classifier, Classifier) or detector.classifier is not classifier:
            raise ConfigError("the detector is attached to a different classifier than the one given")
        t = _check_threshold(threshold)
        super().__init__(
            classifier.module,
            classifier.num_classes,
            input_shape=classifier.input_shape,
            bounds=classifier.bounds,
            preprocess=classifier.preprocess,
            class_names=classifier.class_names,
            name=name or f"{classifier.name}+detector",
        )
        self.base = (classifier,)  # the undefended classifier, not a second registration of it
        self.detector = detector
        self.threshold = t
        self.threshold_logit = logit_of(t)

    @classmethod
    def calibrated(
        cls,
        classifier: Classifier,
        detector: Detector,
        clean: Tensor,
        *,
        fpr: float = 0.05,
        name: str | None = None,
    ) -> DetectedClassifier:
        """A system whose threshold rejects at most a fraction ``fpr`` of the ``clean`` inputs.

        ``clean`` should be held-out clean data (a validation split), not the test set.
        """
        t = threshold_for_fpr(detector.probability(clean), fpr)
        return cls(classifier, detector, t, name=name)

    def with_threshold(self, threshold: float) -> DetectedClassifier:
        """The same classifier and detector with another threshold."""
        return DetectedClassifier(self.base[0], self.detector, threshold, name=self.name)

    # -- forward ---------------------------------------------------------------------------
    def combine(self, class_scores: Tensor, logit: Tensor) -> Tensor:
        """Class scores followed by the reject score ``max_k z_k + logit - logit(threshold)``."""
        reject = class_scores.amax(dim=1) + logit - self.threshold_logit
        return self.check_scores(torch.cat([class_scores, reject[:, None]], dim=1))

    def scores_and_detector_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The full scores (reject column included) and the detector's logit, from one pass."""
        with eval_mode(self.detector):
            class_scores, logit = self.detector.scores_and_logit(x)
        return self.combine(class_scores, logit), logit

    def forward(self, x: Tensor) -> Tensor:
        return self.scores_and_detector_logit(x)[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layer={self.detector.layer!r}, threshold={self.threshold:.4g}"
