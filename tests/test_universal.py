"""Universal perturbations: one v within the budget, fooling rate against clean predictions."""

from __future__ import annotations

import pytest
import torch

from evasion.attacks.universal import Universal, UniversalPerturbation, fooling_rate
from evasion.errors import ConfigError, InputError
from evasion.models.classifier import Classifier
from evasion.perturbations import norm

from .conftest import make_tiny_cnn


def _x(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("p", "eps"), [("linf", 0.15), ("l2", 0.8)])
def test_respects_budget_and_box_and_fools(one_thread, p: str, eps: float) -> None:
    model = make_tiny_cnn()
    u = Universal(norm=p, epsilon=eps, passes=2, deepfool_steps=5)(model, _x())
    assert isinstance(u, UniversalPerturbation) and u.perturbation.shape == (1, 8, 8)
    assert float(norm(u.perturbation[None], p)[0]) <= eps + 1e-5
    pushed = u.apply(_x(8, seed=7))
    assert float(pushed.min()) >= 0.0 and float(pushed.max()) <= 1.0
    assert 1 <= u.passes == len(u.history) <= 2 and u.fooling_rate == max(u.history)
    assert u.fooling_rate > 0.2 and u.backwards > 0
    # the fit-set rate is the rate of the returned v on the fitting images
    assert u.fooling_rate == pytest.approx(fooling_rate(model, _x(), u))


def test_fooling_rate_is_measured_against_clean_predictions_not_labels(one_thread) -> None:
    model = make_tiny_cnn()
    held_out = _x(32, seed=5)
    pred = model.predict(held_out)
    labels = (pred + 1) % 10  # every label differs from the prediction
    assert fooling_rate(model, held_out, torch.zeros(1, 8, 8)) == 0.0  # a label-based rate says 1.0
    v = 0.3 * torch.sign(torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0)))
    moved = model.predict((held_out + v).clamp(0, 1))
    assert fooling_rate(model, held_out, v) == pytest.approx(float((moved != pred).float().mean()))
    assert float((moved != labels).float().mean()) != pytest.approx(fooling_rate(model, held_out, v))


def test_stops_at_the_target_fooling_rate_and_is_deterministic(one_thread) -> None:
    model = make_tiny_cnn()
    fit = Universal(epsilon=0.3, fooling=0.05, passes=4, deepfool_steps=5)
    u1 = fit(model, _x(), generator=torch.Generator().manual_seed(2))
    u2 = fit(model, _x(), generator=torch.Generator().manual_seed(2))
    assert u1.passes == 1 and u1.fooling_rate >= 0.05
    assert torch.equal(u1.perturbation, u2.perturbation) and u1.history == u2.history


def test_rejected_clean_images_are_left_out() -> None:
    model = make_tiny_cnn()

    class AlwaysReject(Classifier):
        rejects = True

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 11))
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([0.0] * 10 + [100.0]))
    rejecting = AlwaysReject(net, 10, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="rejects every clean image"):
        fooling_rate(rejecting, _x(), torch.zeros(1, 8, 8))
    assert fooling_rate(model, _x(), torch.zeros(1, 8, 8)) == 0.0


def test_bad_input_is_a_one_line_error() -> None:
    model = make_tiny_cnn()
    for eps in (0.0, -1.0):
        with pytest.raises(ConfigError, match="epsilon"):
            Universal(epsilon=eps)
    with pytest.raises(ConfigError, match="linf and l2"):
        Universal(norm="l1")
    with pytest.raises(ConfigError, match="fooling"):
        Universal(fooling=1.5)
    with pytest.raises(ConfigError, match=r"exceeds the input range .*own scale"):
        Universal(epsilon=10.0)(model, _x())  # ART's default budget is on a 0-255 scale
    with pytest.raises(InputError, match=r"perturbation has shape \(1, 4, 4\)"):
        fooling_rate(model, _x(), torch.zeros(1, 4, 4))
