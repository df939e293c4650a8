"""`DetectedClassifier`: the rejection rule p_adv > threshold, as a reject-score column."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion.defenses.detected import DetectedClassifier
from evasion.defenses.detector import Detector
from evasion.errors import ConfigError
from evasion.models.classifier import REJECT

from .conftest import make_tiny_cnn


class _Mean(nn.Module):
    """A detector whose logit is a fixed affine function of the mean activation."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 8.0 * (h.mean(dim=(1, 2, 3)) - 0.1)


def _system(threshold: float = 0.5) -> tuple[DetectedClassifier, Detector]:
    clf = make_tiny_cnn()
    det = Detector.attach(clf, "conv1", _Mean())
    return DetectedClassifier(clf, det, threshold), det


def _x(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_reject_exactly_when_p_adv_exceeds_threshold(threshold):
    system, det = _system(threshold)
    x = _x()
    p = det.probability(x)
    pred = system.predict(x)
    assert torch.equal(pred == REJECT, p > threshold)
    base = system.base[0].predict(x)
    assert torch.equal(pred[pred != REJECT], base[pred != REJECT])


def test_scores_are_class_scores_plus_a_reject_score():
    system, det = _system(0.3)
    x = _x(8)
    scores = system(x)
    assert scores.shape == (8, 11) and system.num_scores == 11 and system.rejects
    clf = system.base[0]
    assert torch.equal(scores[:, :10], clf(x))
    logit = det.logits(x)
    expected = clf(x).amax(1) + logit - torch.logit(torch.tensor(0.3, dtype=torch.float64)).item()
    assert torch.allclose(scores[:, 10], expected, atol=1e-5)
    assert bool(torch.isfinite(_system(0.0)[0](x)).all()) and bool(torch.isfinite(_system(1.0)[0](x)).all())


def test_reject_score_is_differentiable():
    system, _ = _system()
    x = _x(4).requires_grad_(True)
    system(x)[:, 10].sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", True])
def test_threshold_outside_unit_interval_is_refused(bad):
    clf = make_tiny_cnn()
    det = Detector.attach(clf, "conv1", _Mean())
    with pytest.raises(ConfigError, match="threshold"):
        DetectedClassifier(clf, det, bad)


def test_detector_of_another_classifier_is_refused():
    det = Detector.attach(make_tiny_cnn(), "conv1", _Mean())
    with pytest.raises(ConfigError, match="different classifier"):
        DetectedClassifier(make_tiny_cnn(), det)


def test_calibrated_threshold_meets_the_false_positive_rate():
    system, det = _system()
    clean = _x(200)
    calibrated = DetectedClassifier.calibrated(system.base[0], det, clean, fpr=0.1)
    rejected = float((calibrated.predict(clean) == REJECT).float().mean())
    assert 0.05 <= rejected <= 0.1 + 1e-6
    assert calibrated.with_threshold(1.0).threshold == 1.0
