"""JSMA: moves the salient pixels (pairs) to the ends of their box, at most d pixels of box ∩ mask,
reaches its target, and counts its forward and backward passes honestly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel
from evasion.attacks import JSMA
from evasion.errors import ConfigError
from evasion.models.classifier import Classifier
from evasion.perturbations import norm

from .conftest import make_tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


class _Counted(nn.Module):
    """Counts the images of every forward pass and of every backward pass through it."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.forward_images = 0
        self.backward_images = 0
        self.register_full_backward_hook(self._backward)

    def _backward(self, module: nn.Module, grad_in: object, grad_out: tuple[torch.Tensor, ...]) -> None:
        self.backward_images += grad_out[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_images += x.shape[0]
        return self.body(x) * 1.0


def _linear(weights: torch.Tensor, bias: list[float]) -> Classifier:
    """``z = W x + b`` on ``(1, 4, 4)`` images."""
    lin = nn.Linear(16, weights.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weights)
        lin.bias.copy_(torch.tensor(bias))
    return Classifier(nn.Sequential(nn.Flatten(), lin), weights.shape[0], input_shape=(1, 4, 4))


def test_moves_the_single_pixel_that_flips_a_linear_model() -> None:
    w = torch.zeros(2, 16)
    w[1, 6] = 2.0  # class 1 reads pixel (1, 2) only
    w[1, 9] = 0.2  # a weak second pixel: not enough on its own
    model = _linear(w, [1.0, 0.0])
    x = torch.full((3, 1, 4, 4), 0.1)
    y = torch.zeros(3, dtype=torch.long)
    r = JSMA(direction="increase")(model, x, y, threat=ThreatModel("l0", 1))
    assert bool(r.success.all())
    expected = x.clone()
    expected[:, 0, 1, 2] = 1.0  # theta = +1: the pixel goes to its upper bound
    assert torch.equal(r.adversarial, expected) and torch.equal(r.norms, torch.ones(3))


def test_takes_the_pair_the_saliency_map_prefers() -> None:
    """Pixels 0 and 1 raise the target and lower the other class: the best pair by alpha * |beta|."""
    w = torch.zeros(3, 16)
    w[2, :4] = torch.tensor([1.0, 1.0, 3.0, 0.0])  # target class 2
    w[1, :4] = torch.tensor([-1.0, -1.0, 3.0, 1.0])  # the other class
    model = _linear(w, [10.0, 0.0, 0.0])  # class 0 wins: nothing reaches the target in one pair
    x = torch.zeros(1, 1, 4, 4)
    threat = ThreatModel("l0", 2, targeted=True)
    r = JSMA(direction="increase")(model, x, torch.zeros(1, dtype=torch.long), threat=threat, target=2)
    changed = (r.adversarial != x).flatten()
    assert changed.nonzero().flatten().tolist() == [0, 1]
    assert not bool(r.success.any()) and int(r.backwards[0]) == 2  # one saliency step, then no budget


@pytest.mark.parametrize("direction", ["increase", "decrease", "both"])
def test_targeted_reaches_the_target_within_d_pixels(direction: str) -> None:
    model = make_tiny_cnn()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model.predict(x)
    scores = model.scores(x)
    scores[torch.arange(16), y] = -math.inf
    target = scores.argmax(1)
    threat = ThreatModel("l0", 10, targeted=True)
    r = JSMA(direction=direction)(model, x, y, threat=threat, target=target)
    assert torch.equal(r.success, r.predictions == target)
    assert torch.equal(r.predictions, model.predict(r.adversarial))
    assert int(r.success.sum()) >= 8, r.success_rate
    assert bool((r.norms <= 10).all())
    moved = r.adversarial != x
    if direction == "increase":
        assert bool((r.adversarial[moved] == 1).all())
    elif direction == "decrease":
        assert bool((r.adversarial[moved] == 0).all())
    else:
        assert bool(((r.adversarial[moved] == 0) | (r.adversarial[moved] == 1)).all())
    assert torch.allclose(r.stats["pixel_fraction"], r.norms / 64)


def test_untargeted_counts_any_wrong_class_and_gamma_caps_the_pixels() -> None:
    model = make_tiny_cnn()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model.predict(x)
    r = JSMA(gamma=0.1)(model, x, y, threat=ThreatModel("l0", math.inf))
    assert bool((r.norms <= 6).all())  # floor(0.1 * 64)
    assert torch.equal(r.success, r.predictions != y) and bool(r.success.any())


def test_colour_pixels_count_once_and_box_and_mask_hold() -> None:
    model = make_tiny_cnn(channels=3, size=6)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 3, 6, 6, generator=g)
    y = model.predict(x)
    mask = torch.rand(8, 3, 6, 6, generator=g) < 0.6
    lower, upper = (x - 0.2).clamp_min(0), (x + 0.1).clamp_max(1)
    r = JSMA()(model, x, y, threat=ThreatModel("l0", 3, bounds=(lower, upper), mask=mask))
    pixels = (r.adversarial != x).any(1).flatten(1).sum(1)
    assert int(pixels.max()) <= 3 and torch.equal(r.norms, pixels.float())
    assert torch.equal(norm(r.adversarial - x, "l0"), r.norms)
    assert torch.equal(r.adversarial[~mask], x[~mask])
    assert bool((r.adversarial >= lower).all()) and bool((r.adversarial <= upper).all())
    moved = r.adversarial != x
    ends = (r.adversarial == lower) | (r.adversarial == upper)
    assert bool(ends[moved].all()) and bool(moved.any())


def test_counts_forwards_and_backwards_and_is_deterministic() -> None:
    model = make_tiny_cnn()
    counted = _Counted(model.module)
    clf = Classifier(counted, 10, input_shape=(1, 8, 8))
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = model.predict(x)
    y[0] = (y[0] + 1) % 10  # misclassified already: one forward, no gradient
    r = JSMA()(clf, x, y, threat=ThreatModel("l0", 6))
    assert int(r.forwards.sum()) == counted.forward_images
    assert int(r.backwards.sum()) == counted.backward_images
    assert int(r.forwards[0]) == 1 and int(r.backwards[0]) == 0
    assert all(p.grad is None for p in model.parameters())
    again = JSMA()(clf, x, y, threat=ThreatModel("l0", 6))
    assert torch.equal(r.adversarial, again.adversarial) and r.access == "gradients"


def test_pairs_among_the_best_pixels_when_the_image_is_large() -> None:
    model = make_tiny_cnn()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = model.predict(x)
    r = JSMA(max_pair_pixels=8)(model, x, y, threat=ThreatModel("l0", 8))
    assert bool((r.norms <= 8).all()) and bool(r.success.any())


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="direction must be one of increase, decrease, both"):
        JSMA(direction="up")
    with pytest.raises(ConfigError, match="gamma"):
        JSMA(gamma=0.0)
    with pytest.raises(ConfigError, match="gamma"):
        JSMA(gamma=1.5)
    with pytest.raises(ConfigError, match="does not support the l2 norm"):
        JSMA()(
            make_tiny_cnn(),
            torch.rand(1, 1, 8, 8),
            torch.zeros(1, dtype=torch.long),
            threat=ThreatModel("l2", 1.0),
        )
