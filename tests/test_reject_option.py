"""Reject-option classifiers: the reject score column, REJECT decisions, and attacks that see it."""

from __future__ import annotations

import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.attacks.losses import attacker_view
from evasion.models.classifier import REJECT, Classifier


class ThresholdReject(Classifier):
    """Reject when the top class score is <= theta (Melis et al.'s SVM-adv rule)."""

    rejects = True

    def __init__(self, module: nn.Module, num_classes: int, theta: float, **kw):
        super().__init__(module, num_classes, **kw)
        self.theta = theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.module(self.preprocess(x))
        return self.check_scores(torch.cat([scores, torch.full_like(scores[:, :1], self.theta)], 1))


def _linear(theta: float) -> ThresholdReject:
    torch.manual_seed(0)
    lin = nn.Linear(10, 3)
    return ThresholdReject(lin, 3, theta, input_shape=(10,))


def test_decide_maps_the_reject_column_to_reject():
    model = _linear(0.0)
    scores = torch.tensor([[1.0, 0.5, -1.0, 0.0], [-1.0, -0.5, -0.2, 0.0]])
    assert model.decide(scores).tolist() == [0, REJECT]
    assert model.class_scores(scores).shape == (2, 3)


def test_reject_exactly_when_max_score_below_theta():
    model = _linear(0.3)
    x = torch.rand(200, 10)
    pred = model.predict(x)
    top = model.module(x).max(1).values
    assert torch.equal(pred == REJECT, top <= 0.3)


def test_rejected_adversarial_is_not_an_evasion():
    model = _linear(0.0)
    x = torch.rand(50, 10)
    y = torch.zeros(50, dtype=torch.long)
    r = attacks.FGSM()(model, x, y, threat=ThreatModel("linf", 0.0))
    assert torch.equal(r.success, (r.predictions != y) & (r.predictions != REJECT))


def test_attacker_view_merges_reject_into_true_class():
    model = _linear(0.0)
    scores = torch.tensor([[2.0, 1.0, 0.0, 3.0]])
    view = attacker_view(model, scores, torch.tensor([1]), None)
    assert view.shape == (1, 3)
    assert torch.allclose(view[0, 1], torch.logaddexp(torch.tensor(1.0), torch.tensor(3.0)))
    assert torch.equal(attacker_view(model, scores, torch.tensor([1]), torch.tensor([0])), scores)


def test_reject_aware_attack_beats_a_reject_blind_one():
    # a wrong class must win *and* beat theta; the attacker that sees the reject score gets there
    # far more often than one that attacks the bare classifier and is then rejected
    model = _linear(0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(300, 10, generator=g)
    pred = model.predict(x)
    keep = pred != REJECT
    x, y = x[keep], pred[keep]
    threat = ThreatModel("linf", 0.2)
    aware = attacks.PGD(steps=50, loss="margin")(model, x, y, threat=threat)
    assert bool((aware.predictions[aware.success] != REJECT).all())
    assert bool((aware.predictions[aware.success] != y[aware.success]).all())
    blind_model = Classifier(model.module, 3, input_shape=(10,))
    blind = attacks.PGD(steps=50, loss="margin")(blind_model, x, y, threat=threat)
    blind_pred = model.predict(blind.adversarial)
    blind_success = (blind_pred != y) & (blind_pred != REJECT)
    assert aware.success_rate > float(blind_success.float().mean()) + 0.1
