"""Attacks against closed forms: linear models, FGSM's formula, and consistency between attacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.models.classifier import Classifier

from .conftest import make_tiny_cnn


def linear_problem(n: int = 64, d: int = 20, k: int = 5, seed: int = 0):
    """A linear multiclass model with points far enough from the box that it stays inactive."""
    torch.manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.mul_(10)
    model = Classifier(lin, k, input_shape=(d,))
    x = 0.4 + 0.2 * torch.rand(n, d, dtype=torch.float64)
    y = model.predict(x)
    w, b = lin.weight.detach(), lin.bias.detach()
    z = x @ w.T + b
    exact = torch.full((n,), math.inf, dtype=torch.float64)
    for j in range(k):  # distance to the hyperplane z_y = z_j
        dist = (z.gather(1, y[:, None])[:, 0] - z[:, j]) / (w[y] - w[j]).norm(dim=1)
        exact = torch.where(y == j, exact, torch.minimum(exact, dist))
    return model, x, y, exact


@pytest.mark.parametrize(
    "attack",
    [attacks.DeepFool(), attacks.CarliniWagnerL2(steps=100, binary_search_steps=6, initial_const=1.0)],
    ids=["deepfool", "cw"],
)
def test_minimum_norm_attacks_find_the_exact_minimal_l2_perturbation(attack):
    model, x, y, exact = linear_problem()
    r = attack(model, x, y, threat=ThreatModel("l2", math.inf))
    assert r.success.all()
    assert r.minimal_norms is not None
    ratio = r.minimal_norms / exact
    assert float(ratio.min()) >= 1 - 1e-4  # nothing beats the exact minimum
    assert float(ratio.max()) <= 1.25


def test_deepfool_overshoot_is_the_only_gap_on_a_linear_model():
    model, x, y, exact = linear_problem(seed=1)
    r = attacks.DeepFool(overshoot=0.02)(model, x, y, threat=ThreatModel("l2", math.inf))
    assert r.minimal_norms is not None
    ratio = r.minimal_norms / exact
    # one linearised step lands on the nearest hyperplane; the total is scaled by 1 + overshoot
    # (plus DeepFool's 1e-4 logit slack, which matters only for points very close to a boundary)
    assert float(ratio.min()) >= 1.02 - 1e-6 and float(ratio.max()) < 1.1
    assert abs(float(ratio.median()) - 1.02) < 1e-3
    assert int(r.backwards.max()) == 4  # one iteration: the 4 other classes' gradients


@pytest.mark.parametrize("p", ["linf", "l2"])
def test_pgd_reaches_the_closed_form_robust_accuracy_of_a_binary_linear_model(p):
    torch.manual_seed(2)
    lin = nn.Linear(16, 2).double()
    model = Classifier(lin, 2, input_shape=(16,))
    x = 0.3 + 0.4 * torch.rand(400, 16, dtype=torch.float64)
    y = model.predict(x)
    w = (lin.weight[1] - lin.weight[0]).detach()
    z = model.scores(x)
    m = (z[:, 1] - z[:, 0]).abs()  # margin of each point
    dual = w.abs().sum() if p == "linf" else w.norm()
    eps = float(torch.quantile(m / dual, 0.5))  # half the points can be flipped; box stays inactive
    if p == "linf":
        assert eps < 0.3
    breakable = m < eps * dual
    r = attacks.PGD(steps=20, random_start=False)(model, x, y, threat=ThreatModel(p, eps))
    assert torch.equal(r.success, breakable)


def test_fgsm_equals_its_closed_form(batch):
    x, y = batch
    model = make_tiny_cnn()
    eps = 0.07
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    expected = (x + eps * g.sign()).clamp(0, 1)
    r = attacks.FGSM(early_stop=False, keep="last")(model, x, y, threat=ThreatModel("linf", eps))
    assert torch.allclose(r.adversarial, expected, atol=1e-7)


def test_fgsm_l2_equals_normalised_gradient_step(batch):
    x, y = batch
    model = make_tiny_cnn()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg), y, reduction="sum"), xg)
    inner = x.clamp(0.2, 0.8)  # stay away from the box so clipping does not interfere
    xg2 = inner.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(nn.functional.cross_entropy(model(xg2), y, reduction="sum"), xg2)
    step = g2 / g2.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    r = attacks.FGSM(early_stop=False, keep="last")(model, inner, y, threat=ThreatModel("l2", 0.1))
    assert torch.allclose(r.adversarial, (inner + 0.1 * step).clamp(0, 1), atol=1e-6)
    # on the raw batch (pixels on the box edges) the same step is clipped into the box, not rescaled
    raw = attacks.FGSM(early_stop=False, keep="last")(model, x, y, threat=ThreatModel("l2", 0.1))
    unit = g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert torch.allclose(raw.adversarial, (x + 0.1 * unit).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("p", ["linf", "l2", "l1"])
@pytest.mark.parametrize("keep", ["best", "last"])
def test_fgsm_is_one_step_bim_without_random_start(p, keep, batch):
    x, y = batch
    model = make_tiny_cnn()
    eps = {"linf": 0.05, "l2": 0.4, "l1": 2.0}[p]
    threat = ThreatModel(p, eps)
    a = attacks.FGSM(keep=keep)(model, x, y, threat=threat)
    b = attacks.BIM(steps=1, step_size=eps, keep=keep)(model, x, y, threat=threat)
    c = attacks.PGD(steps=1, step_size=eps, random_start=False, keep=keep)(model, x, y, threat=threat)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.adversarial, c.adversarial)


def test_targeted_attack_on_linear_model_hits_every_target():
    model, x, y, _ = linear_problem(n=40, seed=3)
    target = (y + 1) % 5
    threat = ThreatModel("l2", 3.0, targeted=True)
    for attack in (
        attacks.PGD(steps=50),
        attacks.APGD(steps=50),
        attacks.CarliniWagnerL2(steps=100, binary_search_steps=3, initial_const=10.0, learning_rate=0.1),
    ):
        r = attack(model, x, y, threat=threat, target=target)
        assert r.success.all(), type(attack).__name__
        assert torch.equal(r.predictions, target)


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget():
    model = make_tiny_cnn(seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(64, 1, 8, 8, generator=g)
    y = model.predict(x)
    threat = ThreatModel("linf", 0.01)
    pgd = attacks.PGD(steps=50)(model, x, y, threat=threat)
    apgd = attacks.APGD(steps=50)(model, x, y, threat=threat)
    assert apgd.success_rate >= pgd.success_rate - 0.05


def test_max_confidence_mode_keeps_optimising(batch):
    x, y = batch
    model = make_tiny_cnn()
    threat = ThreatModel("linf", 0.3)
    quick = attacks.PGD(steps=20, loss="margin")(model, x, y, threat=threat)
    full = attacks.PGD(steps=20, loss="margin", early_stop=False)(model, x, y, threat=threat)
    gap_quick = quick.stats["objective"]
    gap_full = full.stats["objective"]
    assert quick.success.all() and full.success.all()
    assert bool((gap_full >= gap_quick - 1e-6).all()) and float((gap_full - gap_quick).mean()) > 0
