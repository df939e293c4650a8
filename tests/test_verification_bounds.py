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
        for _ in range(20):
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


def _sampled_worst_margin(model: nn.Module, x: Tensor, y: Tensor, lo: Tensor, hi: Tensor, n: int) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    worst = torch.full((x.shape[0],), torch.inf)
    with torch.no_grad():
        for i in range(n):
            z = lo + (hi - lo) * torch.rand(x.shape, generator=gen)
            if i % 2:  # corners as well: where ReLU/MaxPool bounds are tight
                z = torch.where(torch.rand(x.shape, generator=gen) < 0.5, lo, hi)
            out = model(z)
            margin = (
                out.gather(1, y[:, None]).squeeze(1) - out.scatter(1, y[:, None], -torch.inf).max(1).values
            )
            worst = torch.minimum(worst, margin)
    return worst


@pytest.mark.parametrize("ceil", [False, True])
def test_crown_sound_and_tighter_than_ibp_on_a_cnn(ceil: bool) -> None:
    """Conv, BatchNorm, MaxPool (DeepPoly relaxation, also in ceil mode), AvgPool, normalisation."""
    torch.manual_seed(11)
    body = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=ceil),
        nn.Conv2d(4, 6, 2, stride=2),
        nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=False),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()
    model = Classifier(body, 3, preprocess=Normalize([0.5], [0.25]))
    import evasion
    from evasion.verification import certify

    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = evasion.ThreatModel("linf", 0.03)
    crown = certify(model, x, y, threat=threat, method="crown")
    ibp = certify(model, x, y, threat=threat, method="ibp")
    lo, hi = (x - 0.03).clamp(0, 1), (x + 0.03).clamp(0, 1)
    worst = _sampled_worst_margin(model, x, y, lo, hi, 30)
    assert bool((crown.margin_lower <= worst + 1e-5).all())
    assert bool((ibp.margin_lower <= crown.margin_lower + 1e-6).all())
    assert float((crown.margin_lower - ibp.margin_lower).mean()) > 0  # strictly tighter on average


def test_maxpool_relaxation_exact_when_one_input_dominates() -> None:
    """Max of 4 inputs where one input's interval lies above the others: CROWN is exact (affine)."""
    pool = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 2))
    lin = pool[2]
    assert isinstance(lin, nn.Linear)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin.bias.zero_()
    import evasion
    from evasion.verification import certify

    x = torch.tensor([[[[0.9, 0.1], [0.2, 0.3]]]])
    cert = certify(pool.eval(), x, torch.tensor([0]), threat=evasion.ThreatModel("linf", 0.1), method="crown")
    assert cert.margin_lower.item() == pytest.approx(2 * 0.8, abs=1e-6)  # f0 - f1 = 2 max = 2 * (0.9 - 0.1)


def test_ibp_class_margins_fold_the_last_layer_soundly_and_tighter():
    from evasion.verification.bounds import ibp_class_margins, ibp_through
    from evasion.verification.layers import extract_layers

    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    x = torch.rand(6, 1, 3, 4)
    y = net(x).argmax(1)
    lower, upper = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    layers = extract_layers(net, lower)
    folded = ibp_class_margins(layers, lower, upper, y)
    lo, hi = ibp_through(layers, lower, upper)
    plain = lo.gather(1, y[:, None]) - hi
    plain = plain.scatter(1, y[:, None], 0.0)
    assert bool((folded >= plain - 1e-6).all()) and bool((folded > plain + 1e-6).any())
    for _ in range(200):  # sound: no point of the box has a smaller margin
        z = lower + (upper - lower) * torch.rand_like(x)
        out = net(z)
        actual = out.gather(1, y[:, None]) - out
        assert bool((actual >= folded - 1e-5).all())
