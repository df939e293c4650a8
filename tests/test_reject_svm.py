"""SVM-adv (Melis et al. 2017, Eq. 6): the reject rule, its threshold calibration, bad thresholds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel
from evasion.attacks.max_confidence import MaxConfidence
from evasion.defenses.reject import ThresholdReject, calibrate_threshold, false_negative_rates
from evasion.errors import ConfigError
from evasion.models.classifier import REJECT
from evasion.models.deep_features import DeepFeatureClassifier
from evasion.models.heads import RBFSVMHead


def _blobs(n: int = 30, d: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 0.2 + 0.6 * torch.rand(classes, d, generator=g)
    y = torch.arange(classes).repeat_interleave(n)
    return (centres[y] + 0.05 * torch.randn(len(y), d, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def rbf() -> DeepFeatureClassifier:
    x, y = _blobs()
    return DeepFeatureClassifier(RBFSVMHead(10.0, 5.0).fit(x, y), nn.Identity(), input_shape=(6,))


@pytest.mark.parametrize("theta", [-0.5, 0.0, 0.4])
def test_rejects_exactly_when_the_top_score_is_at_most_theta(rbf, theta):
    model = ThresholdReject(rbf, theta)
    x = torch.rand(300, 6, generator=torch.Generator().manual_seed(1))
    f = rbf.scores(x)
    pred = model.predict(x)
    top, arg = f.max(1)
    assert torch.equal(pred == REJECT, top <= theta)
    assert torch.equal(pred[top > theta], arg[top > theta])
    assert model.scores(x).shape == (300, 4)


def test_far_from_the_data_everything_is_rejected(rbf):
    # the RBF SVM is a compact-abating model: far away its scores fall to the (negative) biases
    model = ThresholdReject(rbf, 0.0)
    far = torch.full((5, 6), 5.0)  # features far outside the training data
    assert bool((model.with_reject(rbf.head(far)).argmax(1) == 3).all())
    x, _ = _blobs(seed=0)
    assert float((model.predict(x) != REJECT).float().mean()) > 0.9


def test_per_class_thresholds_are_shifted_biases(rbf):
    theta = torch.tensor([0.1, -0.2, 0.3])
    model = ThresholdReject(rbf, theta)
    x = torch.rand(300, 6, generator=torch.Generator().manual_seed(2))
    shifted = rbf.scores(x) - theta
    top, arg = shifted.max(1)
    pred = model.predict(x)
    assert torch.equal(pred == REJECT, top <= 0)
    assert torch.equal(pred[top > 0], arg[top > 0])


@pytest.mark.parametrize("theta", [math.nan, math.inf, -math.inf, [0.0, math.nan, 0.0]])
def test_a_threshold_that_is_not_finite_is_refused(rbf, theta):
    with pytest.raises(ConfigError, match="finite"):
        ThresholdReject(rbf, theta)
    with pytest.raises(ConfigError, match="finite"):
        ThresholdReject(rbf, 0.0).set_theta(theta)


def test_thresholds_of_the_wrong_shape_or_type_are_refused(rbf):
    with pytest.raises(ConfigError, match="one per class"):
        ThresholdReject(rbf, [0.0, 1.0])
    with pytest.raises(ConfigError):
        ThresholdReject(rbf, "high")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ThresholdReject(ThresholdReject(rbf, 0.0), 0.0)


def test_calibration_raises_each_false_negative_rate_by_the_target():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(4).repeat_interleave(200)
    scores = torch.randn(800, 4, generator=g) - 1.0
    scores[torch.arange(800), y] += 1.5  # the own class scores mostly positive
    base = false_negative_rates(scores, y, 0.0)
    theta = calibrate_threshold(scores, y, 0.05)
    assert theta.shape == (4,)
    raised = false_negative_rates(scores, y, theta)
    assert torch.allclose(raised - base, torch.full((4,), 0.05, dtype=torch.float64), atol=1 / 200 + 1e-9)
    single = calibrate_threshold(scores, y, 0.05, per_class=False)
    assert single.dim() == 0 and float(single) > 0
    with pytest.raises(ConfigError):
        calibrate_threshold(scores, y, 1.5)


def test_conservative_threshold_rejects_more_clean_inputs(rbf):
    x, y = _blobs(seed=5)
    scores = rbf.scores(x)
    loose, tight = ThresholdReject(rbf, 0.0), ThresholdReject(rbf, calibrate_threshold(scores, y, 0.1))
    assert float((tight.predict(x) == REJECT).float().mean()) >= float(
        (loose.predict(x) == REJECT).float().mean()
    )


def test_attacks_against_svm_adv_never_count_a_rejection_as_evasion(rbf):
    model = ThresholdReject(rbf, 0.0)
    x, y = _blobs(n=5, seed=7)
    keep = model.predict(x) == y
    r = MaxConfidence(steps=10)(model, x[keep], y[keep], threat=ThreatModel("l2", 0.5))
    assert bool((r.predictions[r.success] != REJECT).all())
    assert bool((r.predictions[r.success] != y[keep][r.success]).all())


def test_online_learning_through_the_reject_wrapper(rbf):
    x, y = _blobs()
    clf = DeepFeatureClassifier(
        RBFSVMHead(10.0, 5.0).fit(x, y), nn.Identity(), input_shape=(6,), class_names=["a", "b", "c"]
    )
    model = ThresholdReject(clf, [0.0, 0.0, 0.0])
    new = torch.full((10, 6), 0.95)
    model.learn(new, "d")
    assert model.num_classes == 4 and model.class_names[-1] == "d" and model.theta.shape == (4,)
    assert bool((model.predict(new) == 3).all())
