"""Randomized smoothing: closed-form radii of a linear model, abstention, determinism, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats
from torch import Tensor, nn

from evasion.errors import ConfigError, InputError
from evasion.models import Classifier
from evasion.verification.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    attack_smoothed,
    certified_accuracy_curve,
)

SHAPE = (1, 4, 4)


class Linear2(nn.Module):
    """Binary linear model: logits ``(z, -z)`` with ``z = w.x + b``; class 0 iff ``z > 0``."""

    def __init__(self, w: Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x: Tensor) -> Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([z, -z], dim=1)


def linear_model(scale: float = 2.0) -> tuple[Classifier, Tensor, float]:
    w = torch.linspace(-1.0, 1.5, 16)
    w = w / w.norm() * scale
    b = -0.5 * float(w.sum())
    return Classifier(Linear2(w, b), 2, input_shape=SHAPE), w, b


def points(w: Tensor, b: float, distances: list[float]) -> Tensor:
    """Images at signed L2 distance ``d`` from the decision boundary (inside [0, 1])."""
    unit = w / w.norm()
    centre = torch.full((16,), 0.5)  # on the boundary: w . 0.5 + b = 0
    assert abs(float(centre @ w + b)) < 1e-5
    return torch.stack([centre + d * unit for d in distances]).view(-1, *SHAPE)


def test_linear_model_radius_matches_closed_form_up_to_clopper_pearson() -> None:
    clf, w, b = linear_model()
    sigma, n, alpha = 0.25, 100_000, 0.001
    distances = [0.05, 0.1, -0.2, 0.3, -0.4]
    x = points(w, b, distances)
    cert = SmoothedClassifier(clf, sigma, batch_size=50_000).certify(
        x, 100, n, alpha, torch.Generator().manual_seed(3)
    )
    for i, d in enumerate(distances):
        # the smoothed probability of the true side is Phi(|margin| / (sigma ||w||)) = Phi(|d| / sigma)
        p_a = stats.norm.cdf(abs(d) / sigma)
        assert int(cert.prediction[i]) == (0 if d > 0 else 1)
        assert abs(int(cert.top_count[i]) / n - p_a) < 4 * math.sqrt(p_a * (1 - p_a) / n)
        # without the slack: the exact p_A gives radius |d| exactly; the bound must stay below it
        exact = sigma * stats.norm.ppf(p_a)
        assert exact == pytest.approx(abs(d), rel=1e-9)
        assert float(cert.radius[i]) < abs(d)
        # with the slack: Clopper-Pearson at a count 4 standard deviations below the expected one
        low_count = math.floor(n * p_a - 4 * math.sqrt(n * p_a * (1 - p_a)))
        slack = sigma * stats.norm.ppf(stats.beta.ppf(alpha, low_count, n - low_count + 1))
        assert float(cert.radius[i]) > slack > 0.8 * abs(d) - 0.01
        assert not bool(cert.abstained[i])


def test_linear_model_on_the_boundary_abstains_and_far_points_are_sure() -> None:
    clf, w, b = linear_model()
    smoothed = SmoothedClassifier(clf, 0.08)
    x = points(w, b, [0.0, 0.45, -0.45])  # 5.6 sigma from the boundary
    gen = torch.Generator().manual_seed(0)
    cert = smoothed.certify(x, 50, 2_000, 0.001, gen)
    assert cert.abstained.tolist() == [True, False, False]
    assert cert.prediction.tolist() == [ABSTAIN, 0, 1]
    assert float(cert.radius[0]) == 0.0 and float(cert.p_lower[0]) < 0.5
    # all 2000 draws on one side: p_lower = alpha ** (1 / n), the largest radius n draws can give
    top = 0.08 * stats.norm.ppf(0.001 ** (1 / 2_000))
    assert cert.radius[1:].tolist() == pytest.approx([top, top])
    assert top < 0.45
    assert smoothed.predict(x, 2_000, 0.001, gen).tolist() == [ABSTAIN, 0, 1]


def test_three_class_tie_abstains_in_predict() -> None:
    class Tie(nn.Module):
        def forward(self, x: Tensor) -> Tensor:  # class 0 or 1 by the sign of the first pixel's noise
            first = x.flatten(1)[:, :1] - 0.5
            return torch.cat([first, -first, torch.full_like(first, -10.0)], dim=1)

    smoothed = SmoothedClassifier(Classifier(Tie(), 3, input_shape=SHAPE), 1.0)
    x = torch.full((2, *SHAPE), 0.5)
    counts = smoothed.counts(x, 4_000, torch.Generator().manual_seed(1))
    assert counts.sum(1).tolist() == [4_000, 4_000] and counts[:, 2].tolist() == [0, 0]
    assert smoothed.predict(x, 4_000, 0.01, torch.Generator().manual_seed(1)).tolist() == [ABSTAIN] * 2


def test_counts_are_deterministic_under_a_generator_and_independent_of_image_packing() -> None:
    clf, w, b = linear_model()
    x = points(w, b, [0.02, -0.05, 0.1])
    smoothed = SmoothedClassifier(clf, 0.5, batch_size=700)  # chunks span several images
    a = smoothed.certify(x, 10, 3_000, 0.01, torch.Generator().manual_seed(5))
    c = smoothed.certify(x, 10, 3_000, 0.01, torch.Generator().manual_seed(5))
    assert torch.equal(a.radius, c.radius) and torch.equal(a.prediction, c.prediction)
    d = smoothed.certify(x, 10, 3_000, 0.01, torch.Generator().manual_seed(6))
    assert not torch.equal(a.top_count, d.top_count)
    state = torch.get_rng_state()
    smoothed.predict(x, 500, 0.01, torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is never used


def test_certified_accuracy_curve() -> None:
    clf, w, b = linear_model()
    x = points(w, b, [0.3, -0.3, 0.0, 0.3])
    y = torch.tensor([0, 1, 0, 1])  # the last one is wrong
    cert = SmoothedClassifier(clf, 0.25).certify(x, 50, 5_000, 0.001, torch.Generator().manual_seed(2))
    curve = certified_accuracy_curve(cert, y, [0.0, 0.2, 0.3])
    assert curve == [(0.0, 0.5), (0.2, 0.5), (0.3, 0.0)]  # certified radii lie just below 0.3
    with pytest.raises(InputError, match="shape"):
        cert.certified(y[:2])


def test_attack_on_the_smoothed_classifier_never_breaks_a_certified_radius() -> None:
    clf, w, b = linear_model()
    sigma = 0.25
    smoothed = SmoothedClassifier(clf, sigma)
    distances = [0.2, -0.25, 0.3, -0.35]
    x = points(w, b, distances)
    y = torch.tensor([0 if d > 0 else 1 for d in distances])
    cert = smoothed.certify(x, 100, 20_000, 0.001, torch.Generator().manual_seed(0))
    assert bool(cert.certified(y).all())
    radius = float(cert.radius.min())
    inside = attack_smoothed(smoothed, x, y, epsilon=radius, samples=16, steps=10, n=2_000)
    assert not bool(inside.broken.any())
    assert bool((inside.norms <= radius + 1e-5).all())
    # beyond the true radius of g (the boundary itself: |d|), the same attack breaks every point
    beyond = attack_smoothed(smoothed, x, y, epsilon=0.45, samples=16, steps=10, n=2_000)
    assert bool(beyond.broken.all())


def test_attackable_view_is_the_noisy_softmax_of_the_base_model() -> None:
    clf, w, b = linear_model()
    sigma, d = 0.25, 0.1
    view = SmoothedClassifier(clf, sigma).attackable(samples=20_000, seed=1)
    x = points(w, b, [d]).requires_grad_(True)
    scores = view(x)
    # softmax(z, -z)[0] = sigmoid(2z), z ~ N(d ||w||, (sigma ||w||)^2): the soft smoothed probability
    mean, std = d * float(w.norm()), sigma * float(w.norm())
    soft, _ = integrate.quad(lambda z: stats.norm.pdf(z, mean, std) / (1 + math.exp(-2 * z)), -10, 10)
    assert float(scores.detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(scores[0, 0].detach().exp()) == pytest.approx(soft, abs=0.01)
    scores[0, 0].backward()
    assert x.grad is not None and float(x.grad.flatten() @ w) > 0  # ascent direction is along w


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n0": 200, "n": 100}, "n0 .200. must not exceed n .100."),
        ({"alpha": 0.0}, "alpha must be in .0, 1."),
        ({"alpha": 1.5}, "alpha must be in .0, 1."),
        ({"n": 0, "n0": 0}, "n0 must be a positive integer"),
        ({"n": 0}, "n must be a positive integer"),
    ],
)
def test_bad_certify_settings(kwargs: dict[str, float], message: str) -> None:
    clf, w, b = linear_model()
    settings: dict[str, float] = {"n0": 10, "n": 100, "alpha": 0.01, **kwargs}
    with pytest.raises(ConfigError, match=message):
        SmoothedClassifier(clf, 0.5).certify(points(w, b, [0.1]), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan, True])
def test_bad_sigma(sigma: float) -> None:
    clf, _, _ = linear_model()
    with pytest.raises(ConfigError, match="sigma must be"):
        SmoothedClassifier(clf, sigma)


def test_bad_predict_and_batch_size_and_images() -> None:
    clf, w, b = linear_model()
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        SmoothedClassifier(clf, 0.5, batch_size=0)
    smoothed = SmoothedClassifier(clf, 0.5)
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        smoothed.predict(points(w, b, [0.1]), 0)
    with pytest.raises(ConfigError, match="alpha must be in"):
        smoothed.predict(points(w, b, [0.1]), 10, alpha=1.0)
    with pytest.raises(InputError, match="shape"):
        smoothed.predict(torch.rand(2, 1, 5, 5), 10)


def test_attack_never_breaks_a_certified_radius_of_a_small_relu_network() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    clf = Classifier(net, 3, input_shape=SHAPE)
    smoothed = SmoothedClassifier(clf, 0.25)
    x = torch.rand(12, *SHAPE, generator=torch.Generator().manual_seed(0))
    cert = smoothed.certify(x, 100, 5_000, 0.001, torch.Generator().manual_seed(1))
    keep = ~cert.abstained & (cert.radius > 0.05)
    assert int(keep.sum()) >= 3
    x, y, radius = x[keep], cert.prediction[keep], float(cert.radius[keep].min())
    result = attack_smoothed(smoothed, x, y, epsilon=radius, samples=32, steps=10, n=2_000)
    assert not bool(result.broken.any())


def test_selection_and_estimation_draws_are_independent_without_a_generator() -> None:
    clf, w, b = linear_model()
    smoothed = SmoothedClassifier(clf, 0.5)
    x = points(w, b, [0.01, -0.02])
    seen: list[Tensor] = []
    counts = smoothed.counts

    def spy(*args: object, **kwargs: object) -> Tensor:
        out = counts(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(out)
        return out

    smoothed.counts = spy  # type: ignore[method-assign]
    first = smoothed.certify(x, 500, 500, 0.01)
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])  # fresh noise for the estimate
    assert torch.equal(first.top_count, smoothed.certify(x, 500, 500, 0.01).top_count)  # seeded default
