"""Bound propagation: layer extraction, IBP and CROWN on small hand-made and random networks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from evasion.errors import ConfigError, InputError
from evasion.models import Classifier
from evasion.models.classifier import Normalize
from evasion.verification.bounds import ibp_bounds, margin_lower_from_bounds
from evasion.verification.layers import extract_layers


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, stride=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 3),
    )
    bn = body[1]
    assert isinstance(bn, nn.BatchNorm2d)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    return Classifier(body.eval(), 3, preprocess=Normalize([0.3], [0.4]))


def _box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def test_ibp_contains_random_points_of_the_box() -> None:
    model = _cnn()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    lo, hi = _box(x, 0.05)
    lower, upper = ibp_bounds(model, lo, hi)
    assert lower.shape == upper.shape == (5, 3)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(50):
            z = lo + (hi - lo) * torch.rand(x.shape, generator=gen)
            out = model(z)
            assert bool((out >= lower - 1e-5).all() and (out <= upper + 1e-5).all())


def test_ibp_is_exact_for_a_point_and_differentiable() -> None:
    model = _cnn()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    lower, upper = ibp_bounds(model, x, x)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(lower, out, atol=1e-5) and torch.allclose(upper, out, atol=1e-5)
    lower, upper = ibp_bounds(model, *_box(x, 0.1))
    (upper - lower).sum().backward()
    first = next(model.parameters())
    assert first.grad is not None and bool(first.grad.abs().sum() > 0)


def test_margin_from_bounds() -> None:
    lower = torch.tensor([[1.0, 0.0, -1.0]])
    upper = torch.tensor([[2.0, 0.5, 0.8]])
    assert margin_lower_from_bounds(lower, upper, torch.tensor([0])).item() == pytest.approx(0.2)


def test_unsupported_layer_is_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.GELU()), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"cannot bound layer '1\.1' \(GELU\)"):
        ibp_bounds(model, torch.zeros(1, 4), torch.ones(1, 4))


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


class _Residual(_Chain):
    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(self.relu(h) + h)


class _Functional(_Chain):
    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class _InPlace(_Chain):
    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.fc1(x))
        h.mul_(2.0)  # in place: the same tensor object, another value
        return self.fc2(h)


def test_custom_forward_traced_or_refused() -> None:
    names = [layer.name for layer in extract_layers(_Chain(), torch.zeros(1, 4))]
    assert names == ["fc1", "relu", "fc2"]
    for bad in (_Residual(), _Functional(), _InPlace()):
        with pytest.raises(ConfigError, match="not a plain chain"):
            ibp_bounds(bad, torch.zeros(1, 4), torch.ones(1, 4))


def test_reject_classifier_and_bad_boxes_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(InputError, match="lower must be <= upper"):
        ibp_bounds(model, torch.ones(1, 4), torch.zeros(1, 4))
    with pytest.raises(InputError, match="differ in shape"):
        ibp_bounds(model, torch.zeros(1, 4), torch.ones(2, 4))
    with pytest.raises(ConfigError, match="padding_mode"):
        ibp_bounds(
            nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular"),
            torch.zeros(1, 1, 4, 4),
            torch.ones(1, 1, 4, 4),
        )
