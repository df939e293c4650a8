"""Deep-feature sensitivity (Melis et al. 2017, Sect. 5): equal input norms, feature distances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion.attacks.max_confidence import MaxConfidence
from evasion.errors import ConfigError, UnknownNameError
from evasion.evaluation.sensitivity import (
    PAPER_EPSILON,
    FeatureSensitivity,
    Perturbations,
    feature_distances,
    feature_sensitivity,
    layer_extractor,
    perturb,
    random_perturbation,
    worst_case_perturbation,
)
from evasion.models.classifier import Classifier
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


class _Linear(nn.Module):
    """``z = W x`` on flattened images: the Jacobian is ``W`` everywhere."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def _spectrum_matrix(singular: list[float], d: int, seed: int = 0) -> torch.Tensor:
    """``U diag(s) V^T`` with random orthonormal ``U`` (m x m) and ``V`` (d x m)."""
    g = torch.Generator().manual_seed(seed)
    m = len(singular)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, m, generator=g))
    return u @ torch.diag(torch.tensor(singular)) @ v.T


@pytest.fixture
def linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    weight = _spectrum_matrix([4.0, 1.5, 1.0, 0.5, 0.5, 0.25], d=48)
    g = torch.Generator().manual_seed(3)
    x = 0.5 + 0.1 * (torch.rand(2000, 3, 4, 4, generator=g) - 0.5)  # inside the box, far from its edges
    return _Linear(weight), weight, x


def test_worst_case_on_a_linear_extractor_is_the_top_singular_value_times_the_input_norm(linear):
    extractor, weight, x = linear
    radius = torch.full((40,), 0.05)
    z = worst_case_perturbation(
        extractor, x[:40], radius, steps=12, generator=torch.Generator().manual_seed(1)
    )
    step = (z - x[:40]).reshape(40, -1)
    assert torch.allclose(step.norm(dim=1), radius, atol=1e-5)
    shift = step @ weight.T
    assert torch.allclose(shift.norm(dim=1), torch.full((40,), 4.0 * 0.05), rtol=1e-3)


def test_random_directions_on_a_linear_extractor_match_the_expectation(linear):
    # E ||W g||^2 = r^2 ||W||_F^2 / d for g uniform on the sphere of radius r in R^d
    extractor, weight, x = linear
    radius = torch.full((x.shape[0],), 0.05)
    rnd = random_perturbation(x, radius, generator=torch.Generator().manual_seed(2))
    p = Perturbations(0.05, x, rnd, rnd, radius)
    record = feature_distances(extractor, p, batch_size=len(x))
    expected_rms = 0.05 * float(weight.norm()) / 48**0.5
    assert float(record.random.pow(2).mean().sqrt()) == pytest.approx(expected_rms, rel=0.06)
    assert record.feature_dim == 6 and record.input_dim == 48 and record.layer == "output"


def test_equal_norm_columns_and_the_sqrt_d_ceiling(linear):
    extractor, weight, x = linear
    x = x[:24]
    y = (x.flatten(1) @ weight.T)[:, :3].argmax(1)
    head = nn.Linear(6, 3)
    clf = Classifier(nn.Sequential(extractor, head), 3, input_shape=(3, 4, 4))
    record = feature_sensitivity(
        extractor, clf, x, y, epsilon=0.05, attack=MaxConfidence(steps=5, tolerance=None), worst_case_steps=10
    )
    assert record.worst_case is not None
    # the classifier's attack cannot move W x further than the top singular direction does
    assert bool((record.adversarial <= record.worst_case + 1e-6).all())
    assert torch.allclose(record.worst_case, 4.0 * record.input_norms, rtol=1e-3)
    assert record.worst_case_ratio is not None and record.worst_case_ratio <= 48**0.5
    assert record.worst_case_ratio > record.ratio > 1
    d = record.to_dict()
    assert d["worst_case_ratio"] == pytest.approx(record.worst_case_ratio) and "worst_case_std" in d


def test_normalised_features_lie_on_the_sphere_and_rescaling_keeps_the_ratio(model):
    clf, extractor, x, y = model
    g = torch.Generator().manual_seed(0)
    p = perturb(clf, x, y, epsilon=0.5, attack=MaxConfidence(steps=3, tolerance=None), generator=g)
    raw = feature_distances(extractor, p)
    unit = feature_distances(extractor, p, normalize="l2", norm_to=2.0)
    scaled = feature_distances(extractor, p, normalize="rescale", norm_to=10.0)
    assert torch.allclose(unit.feature_norms, torch.full((12,), 2.0, dtype=torch.float64))
    assert float(unit.adversarial.max()) <= 4.0 and unit.normalize == "l2"
    assert float(scaled.feature_norms.mean()) == pytest.approx(10.0)
    factor = 10.0 / float(raw.feature_norms.mean())
    assert torch.allclose(scaled.random, raw.random * factor) and scaled.ratio == pytest.approx(raw.ratio)
    with pytest.raises(ConfigError, match="normalize"):
        feature_distances(extractor, p, normalize="unit")
    with pytest.raises(ConfigError, match="norm_to"):
        feature_distances(extractor, p, normalize="l2", norm_to=0.0)


def test_a_named_layer_is_measured_and_an_unknown_one_is_a_clear_error(model):
    clf, extractor, x, y = model
    net, attack = extractor.model, MaxConfidence(steps=2, tolerance=None)
    pooled = feature_sensitivity(net, clf, x[:4], y[:4], attack=attack, layer="conv1")
    flat = feature_sensitivity(net, clf, x[:4], y[:4], attack=attack, layer="conv1", pool=False)
    assert pooled.feature_dim == 8 and flat.feature_dim == 8 * 8 * 8 and pooled.layer == "conv1"
    assert torch.equal(pooled.input_norms, flat.input_norms)  # same seed, same perturbations
    with torch.no_grad():
        assert pooled.feature_norms[0] == pytest.approx(float(net.conv1(x[:1]).mean((2, 3)).norm()), rel=1e-5)
    with pytest.raises(UnknownNameError, match=r"unknown layer 'conv3'.*conv2"):
        feature_sensitivity(net, clf, x, y, layer="conv3")
    with pytest.raises(ConfigError, match="already the features of layer 'conv2'"):
        layer_extractor(extractor, "model.conv1")
    with pytest.raises(ConfigError, match="worst_case_steps"):
        feature_sensitivity(extractor, clf, x, y, worst_case_steps=-1)


def test_the_default_call_is_the_composition_of_its_steps(model):
    clf, extractor, x, y = model
    attack = MaxConfidence(steps=3, tolerance=None)
    record = feature_sensitivity(
        extractor, clf, x, y, attack=attack, generator=torch.Generator().manual_seed(5)
    )
    p = perturb(clf, x, y, attack=attack, generator=torch.Generator().manual_seed(5))
    again = feature_distances(extractor, p)
    assert torch.equal(record.random, again.random) and torch.equal(record.adversarial, again.adversarial)
    assert record.worst_case is None and "worst_case_mean" not in record.to_dict()
    assert record.normalize == "none" and record.layer == "output"
