"""Classification with a reject option on the discriminant scores (Melis et al. 2017, SVM-adv).

The rule of Eq. (6): predict ``argmax_k f_k(x)`` only if ``max_k f_k(x) > theta``, else REJECT.
With an RBF SVM (a compact-abating-probability model, whose scores fall towards the biases far
from the training data) it rejects the "blind-spot" adversarial examples that land far from
every class. :class:`ThresholdReject` implements it as a reject-score column equal to ``theta``
(the :class:`~evasion.models.Classifier` contract), so attacks and evaluations see it.

``theta`` may also be one threshold per class, which is the same as shifting the bias of each
one-vs-all classifier: then the class scores become ``f_k - theta_k`` and the reject score 0.
:func:`calibrate_threshold` sets it from validation data for a target increase of each
classifier's false-negative rate (the paper's conservative "+5% FNR" setting).
:func:`make_reject` is the ``"reject"`` defence of the registry: thresholds calibrated on
training data (:class:`RejectParams`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _validation as check
from ..datasets.base import Dataset
from ..errors import ConfigError, InputError
from ..models.classifier import Classifier
from .base import WHERE, Cache

__all__ = ["RejectParams", "ThresholdReject", "calibrate_threshold", "false_negative_rates", "make_reject"]

Theta = float | Sequence[float] | Tensor


def _check_theta(theta: Theta, num_classes: int) -> Tensor:
    """``theta`` as a float64 tensor: a scalar ``()`` or one value per class ``(num_classes,)``."""
    if isinstance(theta, bool):
        raise ConfigError(f"theta must be a number or one number per class, got {theta!r}")
    try:
        t = torch.as_tensor(theta, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"theta must be a number or one number per class, got {theta!r}") from None
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != num_classes):
        raise ConfigError(
            f"theta must be a number or {num_classes} numbers (one per class), got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"theta must be finite, got {t.tolist()}")
    return t


class ThresholdReject(Classifier):
    """Wrap a classifier of discriminant scores with the reject rule ``max_k f_k(x) <= theta``.

    The scores are ``num_classes + 1`` columns: the class scores and the reject score ``theta``
    (or ``f_k - theta_k`` and ``0`` for per-class thresholds). ``decide`` returns REJECT where the
    reject score is the largest, i.e. exactly where no class score beats its threshold.
    """

    rejects = True

    def __init__(self, base: Classifier, theta: Theta = 0.0, *, name: str | None = None) -> None:
        if not isinstance(base, Classifier) or base.rejects:
            raise ConfigError("ThresholdReject needs a Classifier without a reject option of its own")
        super().__init__(
            base,
            base.num_classes,
            input_shape=base.input_shape,
            bounds=base.bounds,
            class_names=base.class_names,
            name=name or f"{base.name}+reject",
        )
        self.register_buffer("theta", _check_theta(theta, base.num_classes))

    theta: Tensor

    @property
    def base(self) -> Classifier:
        assert isinstance(self.module, Classifier)
        return self.module

    @property
    def per_class(self) -> bool:
        return self.theta.dim() == 1

    def forward(self, x: Tensor) -> Tensor:
        return self.with_reject(self.base(x))

    def with_reject(self, class_scores: Tensor) -> Tensor:
        """Append the reject column to class scores ``(N, num_classes)`` (e.g. a head's output)."""
        theta = self.theta.to(device=class_scores.device, dtype=class_scores.dtype)
        if self.per_class:
            shifted = class_scores - theta
            return self.check_scores(torch.cat([shifted, torch.zeros_like(shifted[:, :1])], 1))
        return self.check_scores(torch.cat([class_scores, theta.expand(class_scores.shape[0], 1)], 1))

    def set_theta(self, theta: Theta) -> ThresholdReject:
        """Change the threshold (validated: finite, a number or one per class)."""
        self.theta = _check_theta(theta, self.num_classes).to(self.theta.device)
        return self

    def learn(self, x: Tensor, label: int | str) -> ThresholdReject:
        """Forward an online update to the base classifier (a new class gets threshold 0)."""
        learn = getattr(self.base, "learn", None)
        if learn is None:
            raise ConfigError(f"the base classifier {self.base.name!r} cannot learn online")
        learn(x, label)
        if self.base.num_classes > self.num_classes and self.per_class:
            self.theta = torch.cat(
                [self.theta, self.theta.new_zeros(self.base.num_classes - self.num_classes)]
            )
        self.num_classes, self.class_names = self.base.num_classes, list(self.base.class_names)
        return self


def false_negative_rates(scores: Tensor, y: Tensor, theta: Theta = 0.0) -> Tensor:
    """Per class k, the fraction of its samples with ``f_k(x) <= theta_k`` (one-vs-all misses)."""
    k = scores.shape[1]
    t = _check_theta(theta, k).to(scores.dtype)
    own = scores.gather(1, y[:, None].long())[:, 0]
    missed = own <= (t[y] if t.dim() == 1 else t)
    counts = torch.bincount(y, minlength=k).clamp_min(1)
    return torch.bincount(y, weights=missed.double(), minlength=k) / counts


def calibrate_threshold(
    scores: Tensor, y: Tensor, fnr_increase: float = 0.05, *, base: Theta = 0.0, per_class: bool = True
) -> Tensor:
    """Thresholds that raise each one-vs-all classifier's false-negative rate by ``fnr_increase``.

    ``scores`` are validation class scores ``(N, c)`` and ``y`` their labels. Per class k the
    threshold is the quantile of ``f_k`` over class-k samples at level ``FNR_k(base) + increase``;
    with ``per_class=False`` one threshold for all (the quantile over every sample's own score).
    """
    if (
        not isinstance(scores, Tensor)
        or scores.dim() != 2
        or not isinstance(y, Tensor)
        or y.shape != scores.shape[:1]
    ):
        raise InputError("calibrate_threshold needs scores (N, c) and labels (N,)")
    if not (isinstance(fnr_increase, (int, float)) and math.isfinite(fnr_increase) and 0 <= fnr_increase < 1):
        raise ConfigError(f"fnr_increase must be in [0, 1), got {fnr_increase!r}")
    c = scores.shape[1]
    t0 = _check_theta(base, c)
    own = scores.detach().double().gather(1, y[:, None].long())[:, 0].cpu()
    labels = y.cpu().long()
    if not per_class:
        level = float((own <= (t0.mean() if t0.dim() else t0)).double().mean()) + fnr_increase
        return torch.quantile(own, min(level, 1.0)).reshape(())
    fnr = false_negative_rates(scores.detach().double().cpu(), labels, t0)
    out = torch.empty(c, dtype=torch.float64)
    for k in range(c):
        mine = own[labels == k]
        if mine.numel() == 0:
            raise InputError(f"class {k} has no validation samples: cannot calibrate its threshold")
        out[k] = torch.quantile(mine, min(float(fnr[k]) + fnr_increase, 1.0))
    return out


# -- the "reject" defence ------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectParams:
    """Parameters of the ``"reject"`` defence, checked on construction.

    ``fnr_increase``: each class's false-negative rate rises by this much (0.05: the paper's
    conservative setting); ``samples``: calibration points drawn from the training data.
    """

    fnr_increase: float = 0.05
    samples: int = 2000

    def __post_init__(self) -> None:
        fnr = check.finite(self.fnr_increase, f"{WHERE}.fnr_increase")
        if not 0.0 <= fnr < 1.0:
            raise ConfigError(f"{WHERE}.fnr_increase must be in [0, 1), got {self.fnr_increase!r}")
        object.__setattr__(self, "fnr_increase", fnr)
        object.__setattr__(self, "samples", check.integer(self.samples, f"{WHERE}.samples", minimum=10))


def make_reject(
    classifier: Classifier,
    train: Dataset,
    params: RejectParams,
    *,
    label: str | None = None,
    cache: Cache | None = None,
) -> ThresholdReject:
    """Melis et al.'s reject option on ``classifier``'s scores, thresholds calibrated on ``train``.

    ``samples`` points of ``train`` (a fixed shuffle, seed 0) set one threshold per class for
    the false-negative-rate increase ``fnr_increase``. Nothing is trained, so ``cache`` is unused.
    """
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: params.samples]
    calibration = train.subset(order)
    scores = classifier.class_scores(classifier.scores(calibration.x))
    theta = calibrate_threshold(scores, calibration.y.to(scores.device), params.fnr_increase)
    return ThresholdReject(classifier, theta, name=label)
