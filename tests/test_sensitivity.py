"""Deep-feature sensitivity (Melis et al. 2017, Sect. 5): equal input norms, feature distances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion.attacks.max_confidence import MaxConfidence
from evasion.errors import ConfigError
from evasion.evaluation.sensitivity import (
    PAPER_EPSILON,
    FeatureSensitivity,
    feature_sensitivity,
    random_perturbation,
)
from evasion.models.deep_features import DeepFeatureClassifier, LayerFeatures
from evasion.models.heads import LinearSVMHead

from .conftest import TinyCNN


def test_random_perturbation_has_the_asked_norm_inside_the_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[:2] = (x[:2] > 0.5).float()  # pixels on the box edges: clipping would shorten the step
    radius = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.0, 0.3])
    z = random_perturbation(x, radius, generator=g)
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert torch.allclose((z - x).reshape(6, -1).norm(dim=1), radius, atol=1e-4)
    assert torch.equal(
        random_perturbation(x, radius, generator=torch.Generator().manual_seed(7)),
        random_perturbation(x, radius, generator=torch.Generator().manual_seed(7)),
    )


@pytest.fixture
def model() -> tuple[DeepFeatureClassifier, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    extractor = LayerFeatures(TinyCNN(channels=3, classes=10, size=8).eval(), "conv2")
    x = torch.rand(12, 3, 8, 8)
    y = torch.arange(3).repeat(4)
    for c in range(3):
        x[y == c, c] *= 0.2
    clf = DeepFeatureClassifier(LinearSVMHead(1.0), extractor, input_shape=(3, 8, 8)).fit(x, y)
    return clf, extractor, x, y


def test_adversarial_directions_move_features_more_than_random_ones(model):
    clf, extractor, x, y = model
    record = feature_sensitivity(
        extractor, clf, x, y, epsilon=0.5, attack=MaxConfidence(steps=5, tolerance=None)
    )
    assert isinstance(record, FeatureSensitivity)
    assert record.random.shape == record.adversarial.shape == (12,)
    assert bool((record.input_norms <= 0.5 + 1e-5).all()) and float(record.input_norms.min()) > 0
    assert record.adversarial_mean > record.random_mean
    assert record.ratio == pytest.approx(record.adversarial_mean / record.random_mean)
    d = record.to_dict()
    assert d["samples"] == 12 and d["epsilon"] == 0.5 and {"random_std", "adversarial_std"} <= set(d)


def test_default_budget_is_the_papers_and_bad_budgets_are_refused(model):
    clf, extractor, x, y = model
    assert pytest.approx(10 / 255) == PAPER_EPSILON
    record = feature_sensitivity(extractor, clf, x[:3], y[:3], attack=MaxConfidence(steps=2))
    assert record.epsilon == pytest.approx(10 / 255)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError):
            feature_sensitivity(extractor, clf, x, y, epsilon=bad)
