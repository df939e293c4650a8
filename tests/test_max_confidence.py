"""Maximum-confidence evasion (Melis et al. 2017, Algorithm 1): analytic oracles and behaviour."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.attacks.max_confidence import MaxConfidence, MaxConfidenceObjective, minimum_budget, sticker_mask
from evasion.defenses.reject import ThresholdReject
from evasion.errors import ConfigError
from evasion.models.classifier import REJECT, Classifier
from evasion.models.deep_features import DeepFeatureClassifier
from evasion.models.heads import LinearSVMHead
from evasion.perturbations import norm


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> Classifier:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return Classifier(lin, weight.shape[0], input_shape=(weight.shape[1],))


def _two_class_svm() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """One-vs-all linear SVMs fit by scikit-learn on two blobs in [0, 1]^5, features = pixels."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.4] * 5, [0.6] * 5])
    y = torch.arange(2).repeat_interleave(40)
    x = (centres[y] + 0.03 * torch.randn(80, 5, generator=g)).clamp(0.05, 0.95)
    head = LinearSVMHead(1.0).fit(x, y)
    return DeepFeatureClassifier(head, nn.Identity(), input_shape=(5,)), x, y


def test_error_specific_step_is_along_w_t_minus_w_k():
    # the optimal L2 perturbation of the linear objective f_t - f_k is epsilon * (w_t - w_k) / |w_t - w_k|
    model, x, y = _two_class_svm()
    w = model.head.weight.float()
    x0, y0 = x[:5], y[:5]
    target = torch.ones(5, dtype=torch.long)
    eps = 0.05
    r = MaxConfidence(steps=20)(model, x0, y0, threat=ThreatModel("l2", eps, targeted=True), target=target)
    delta = r.adversarial - x0
    direction = (w[1] - w[0]) / (w[1] - w[0]).norm()
    assert torch.allclose(delta.norm(dim=1), torch.full((5,), eps), atol=1e-5)
    assert torch.allclose(delta @ direction, torch.full((5,), eps), atol=1e-5)
    phi = MaxConfidenceObjective()(model, r.adversarial, y0, target).total
    phi0 = MaxConfidenceObjective()(model, x0, y0, target).total
    assert torch.allclose(phi - phi0, torch.full((5,), eps * float((w[1] - w[0]).norm())), atol=1e-4)


def test_error_generic_step_moves_towards_the_closest_rival():
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    model = _linear(w, torch.zeros(3))
    x = torch.tensor([[0.6, 0.5, 0.5]])
    y = torch.tensor([0])
    r = MaxConfidence(steps=30)(model, x, y, threat=ThreatModel("l2", 0.2))
    delta = (r.adversarial - x)[0]
    expected = (w[1] - w[0]) / (w[1] - w[0]).norm() * 0.2
    assert torch.allclose(delta, expected, atol=1e-4)
    assert bool(r.success[0])


def test_tolerance_stops_a_converged_sample():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    model = _linear(w, torch.zeros(2))
    x = torch.tensor([[0.5, 0.5]])
    r = MaxConfidence(steps=50, step_size=0.1)(model, x, torch.tensor([0]), threat=ThreatModel("l2", 0.1))
    assert int(r.forwards[0]) < 10  # reaches the boundary optimum at once, then the objective stops changing
    never = MaxConfidence(steps=50, step_size=0.1, tolerance=None)(
        model, x, torch.tensor([0]), threat=ThreatModel("l2", 0.1)
    )
    assert int(never.forwards[0]) == 51


def test_line_search_counts_its_forwards_and_is_no_worse():
    torch.manual_seed(0)
    model = _linear(torch.randn(4, 12), torch.zeros(4))
    x = torch.rand(16, 12)
    y = model.predict(x)
    threat = ThreatModel("l2", 0.3)
    plain = MaxConfidence(steps=3, step_size=0.01)(model, x, y, threat=threat)
    searched = MaxConfidence(steps=3, step_size=0.01, line_search=True)(model, x, y, threat=threat)
    assert bool((searched.forwards > searched.backwards + 1).all())
    assert bool((searched.stats["objective"] >= plain.stats["objective"] - 1e-5).all())
    assert bool((norm(searched.adversarial - x, "l2") <= 0.3 + 1e-5).all())


@pytest.mark.parametrize("p", ["l2", "l1", "linf"])
def test_budget_and_box_in_every_norm(p, tiny_cnn, batch):
    x, y = batch
    eps = {"l2": 0.5, "l1": 2.0, "linf": 0.05}[p]
    r = MaxConfidence(steps=5)(tiny_cnn, x, y, threat=ThreatModel(p, eps))
    assert bool((norm(r.adversarial - x, p) <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(r.adversarial.min()) >= 0 and float(r.adversarial.max()) <= 1
    assert torch.equal(r.success, (tiny_cnn.predict(r.adversarial) != y))


def test_keeps_optimising_after_success_unless_early_stop(tiny_cnn, batch):
    x, y = batch
    threat = ThreatModel("l2", 2.0)
    greedy = MaxConfidence(steps=10, early_stop=True)(tiny_cnn, x, y, threat=threat)
    confident = MaxConfidence(steps=10, tolerance=None)(tiny_cnn, x, y, threat=threat)
    both = greedy.success & confident.success
    assert bool(both.any())
    assert bool((confident.stats["objective"][both] >= greedy.stats["objective"][both] - 1e-6).all())
    assert int(confident.forwards.sum()) > int(greedy.forwards.sum())


def test_reject_aware_objective_needs_a_score_above_theta():
    torch.manual_seed(1)
    base = _linear(torch.randn(3, 6), torch.full((3,), -0.3))
    model = ThresholdReject(base, 0.2)
    x = torch.rand(200, 6)
    y = base.predict(x)
    keep = model.predict(x) != REJECT
    x, y = x[keep], y[keep]
    value = MaxConfidenceObjective()(model, x, y, None)
    scores = base(x)
    rival = scores.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), -math.inf).amax(1)
    own = torch.maximum(scores.gather(1, y[:, None])[:, 0], torch.tensor(0.2))
    assert torch.allclose(value.total, rival - own)
    r = MaxConfidence(steps=20)(model, x, y, threat=ThreatModel("linf", 0.2))
    assert bool((r.predictions[r.success] != REJECT).all())
    assert torch.equal(r.stats["objective"] > 0, r.success)


def test_sticker_only_changes_its_pixels(tiny_cnn, batch):
    x, y = batch
    mask = sticker_mask(x.shape, 2, 3, 3, 4)
    r = MaxConfidence(steps=5)(tiny_cnn, x, y, threat=ThreatModel("l2", 1.0, mask=mask))
    outside = ~mask.expand_as(x)
    assert torch.equal(r.adversarial[outside], x[outside])


def test_sticker_and_mask_errors(tiny_cnn, batch):
    x, y = batch
    with pytest.raises(ConfigError, match="positive size"):
        sticker_mask((8, 8), 0, 0, 0, 3)
    with pytest.raises(ConfigError, match="does not fit"):
        sticker_mask((8, 8), 6, 6, 4, 4)
    with pytest.raises(ConfigError, match="no pixel free"):
        ThreatModel("l2", 1.0, mask=torch.zeros(8, 8, dtype=torch.bool))
    per_sample = torch.ones(x.shape, dtype=torch.bool)
    per_sample[3] = False  # one input the attacker cannot touch at all
    with pytest.raises(ConfigError, match=r"no pixel free.*index 3"):
        MaxConfidence(steps=2)(tiny_cnn, x, y, threat=ThreatModel("l2", 1.0, mask=per_sample))


def test_minimum_budget_matches_the_closed_form_distance():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    model = _linear(w, torch.zeros(2))
    x = torch.tensor([[0.6, 0.5], [0.7, 0.5], [0.4, 0.5]])  # the last one is already misclassified
    y = torch.tensor([0, 0, 0])
    grid = [0.05 * k for k in range(1, 11)]
    mb = minimum_budget(MaxConfidence(steps=20, early_stop=True), model, x, y, norm="l2", epsilons=grid)
    exact = (x[:, 0] - x[:, 1]) / math.sqrt(2)  # distance to the boundary x0 = x1
    assert float(mb.epsilons[2]) == 0.0
    for i in (0, 1):
        expected = min(e for e in grid if e >= float(exact[i]) + 1e-6)
        assert float(mb.epsilons[i]) == pytest.approx(expected)
    assert bool(mb.evaded.all())


def test_registered_and_configurable_by_name():
    assert attacks.get("max-confidence") is MaxConfidence
    a = attacks.make("max-confidence", steps="7", line_search="true")
    assert isinstance(a, MaxConfidence) and a.steps == 7 and a.line_search
    with pytest.raises(ConfigError):
        MaxConfidence(tolerance=-1.0)
    with pytest.raises(ConfigError):
        MaxConfidence(line_search_tries=0)
