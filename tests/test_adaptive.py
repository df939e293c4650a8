"""The threat-aware dynamic adversary (``detector_loss="hinge"``) against a deployed detector threshold."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.attacks import DynamicAdversary
from evasion.attacks.dynamic import DetectorObjective
from evasion.attacks.losses import margin
from evasion.defenses.detected import DetectedClassifier
from evasion.defenses.detector import Detector
from evasion.errors import ConfigError
from evasion.models.classifier import REJECT, Classifier

from .conftest import make_tiny_cnn

#: tiny models gain nothing from threads, and on a busy machine they spin
pytestmark = pytest.mark.usefixtures("one_thread")


class _Linear(nn.Module):
    """A linear classifier on 8x8 images; its logits are the output of the layer ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class _LowMargin(nn.Module):
    """A confidence detector on the classifier's logits: ``logit(p_adv) = bias - scale * gap``,
    where ``gap`` is the distance between the two largest logits. Inputs near a decision boundary
    (where minimal adversarial examples land) are flagged."""

    def __init__(self, bias: float, scale: float) -> None:
        super().__init__()
        self.bias, self.scale = bias, scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        top2 = z.topk(2, dim=1).values
        return self.bias - self.scale * (top2[:, 0] - top2[:, 1])


def _deployed(n: int = 48):
    """A classifier, a detector on its logits, a threshold far below 0.5 just above every clean
    p_adv (no clean input is rejected), and clean inputs with their predicted labels."""
    clf = Classifier(_Linear(), 10, input_shape=(1, 8, 8), name="linear")
    x = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = clf(x)
    top2 = z.topk(2, dim=1).values
    confident = (top2[:, 0] - top2[:, 1]) > 0.1
    x, y = x[confident][:n], z.argmax(1)[confident][:n]
    det = Detector.attach(clf, "fc", _LowMargin(-3.0, 0.5))
    threshold = float(det.probability(x).max()) * 1.001
    return clf, det, DetectedClassifier(clf, det, threshold), x, y


def test_deployed_system_is_a_meaningful_detector():
    clf, _, system, x, y = _deployed()
    assert len(x) == 48
    assert system.threshold < 0.1  # far below the paper's 0.5
    assert bool((system.predict(x) == y).all())  # no clean input rejected or misclassified
    # the classifier alone is easy to fool, and the detector rejects most of those examples
    threat = ThreatModel("linf", 0.2)
    bim = attacks.BIM(steps=20)(clf, x, y, threat=threat)
    assert bim.success.float().mean() >= 0.9
    rejected = system.predict(bim.adversarial) == REJECT
    assert rejected[bim.success].float().mean() >= 0.75


def test_hinge_evades_a_low_threshold_where_the_papers_loss_fails(one_thread):
    clf, det, system, x, y = _deployed()
    threat = ThreatModel("linf", 0.2)
    common = {"sigma": 0.5, "steps": 20}
    ce = DynamicAdversary(detector_loss="ce", **common)(system, x, y, threat=threat)
    hinge = DynamicAdversary(detector_loss="hinge", **common)(system, x, y, threat=threat)
    n = len(y)
    assert int(hinge.success.sum()) >= 0.75 * n
    assert int(hinge.success.sum()) - int(ce.success.sum()) >= n // 2
    # the hinge's successes really evade the whole system: misclassified and not rejected
    adv = hinge.adversarial[hinge.success]
    assert bool((clf.predict(adv) != y[hinge.success]).all())
    assert bool((det.probability(adv) <= system.threshold).all())
    assert bool((system.predict(adv) != REJECT).all())
    assert float((hinge.adversarial - x).abs().amax()) <= 0.2 + 1e-6
    assert float(hinge.adversarial.min()) >= 0.0 and float(hinge.adversarial.max()) <= 1.0


def test_hinge_objective_is_the_capped_sum_against_the_deployed_threshold():
    clf, det, system, x, y = _deployed(16)
    sigma, kappa = 0.3, 0.2
    value = DetectorObjective(margin, sigma, "hinge", kappa)(system, x, y, None)
    assert len(value.terms) == 1 and value.weights == (1.0,)
    with torch.no_grad():
        z = clf(x)
        logit = det(x)
    t_logit = math.log(system.threshold / (1 - system.threshold))
    expected = (1 - sigma) * torch.clamp(margin(z, y, None), max=kappa) + sigma * torch.clamp(
        t_logit - logit, max=kappa
    )
    assert torch.allclose(value.terms[0].detach(), expected, atol=1e-5)
    # the clean inputs sit just under the threshold: some are within kappa of it (term active)
    assert bool(((t_logit - logit) < kappa).any())


def test_satisfied_hinge_terms_have_no_gradient():
    _, _, system, x, y = _deployed(8)
    # kappa = 0: the detector term is satisfied (0) at every clean input, the class term is not
    xg = x.clone().requires_grad_(True)
    value = DetectorObjective(margin, 1.0, "hinge", 0.0)(system, xg, y, None)
    (g,) = torch.autograd.grad(value.terms[0].sum(), xg)
    assert float(g.abs().max()) == 0.0
    xg = x.clone().requires_grad_(True)
    value = DetectorObjective(margin, 0.0, "hinge", 0.0)(system, xg, y, None)
    (g,) = torch.autograd.grad(value.terms[0].sum(), xg)
    assert float(g.abs().max()) > 0.0


def test_hinge_with_the_ce_loss_uses_the_margin():
    _, _, system, x, y = _deployed(8)
    attack = DynamicAdversary(detector_loss="hinge")
    assert attack.loss == "ce"
    problem = attack.prepare(system, x, y, threat=ThreatModel("linf", 0.1))
    objective = attack.objective(problem)
    assert isinstance(objective, DetectorObjective) and objective.loss is margin
    assert objective.detector_loss == "hinge" and objective.kappa == 1.0


def test_hinge_without_a_detector_is_bim():
    clf = make_tiny_cnn()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(5))
    threat = ThreatModel("linf", 0.1)
    paper = {"early_stop": False, "keep": "last"}
    bim = attacks.BIM(steps=5, step_size=0.03, **paper)(clf, x, y, threat=threat)
    dyn = DynamicAdversary(sigma=0.6, steps=5, step_size=0.03, detector_loss="hinge", kappa=0.5, **paper)(
        clf, x, y, threat=threat
    )
    assert torch.equal(dyn.adversarial, bim.adversarial)


@pytest.mark.parametrize(
    "bad",
    [
        {"detector_loss": "x"},
        {"detector_loss": "HINGE"},
        {"kappa": -1},
        {"kappa": -1e-3},
        {"kappa": math.nan},
        {"kappa": math.inf},
        {"kappa": True},
    ],
)
def test_bad_hinge_parameters_are_config_errors(bad):
    with pytest.raises(ConfigError):
        DynamicAdversary(**bad)


def test_hinge_parameters_through_the_registry():
    attack = attacks.make("dynamic", detector_loss="hinge", kappa="0.5", sigma="0.25")
    assert isinstance(attack, DynamicAdversary)
    assert attack.detector_loss == "hinge" and attack.kappa == 0.5 and attack.sigma == 0.25
    assert DynamicAdversary(kappa=0).kappa == 0  # a zero margin is allowed
    with pytest.raises(ConfigError):
        attacks.make("dynamic", detector_loss="x")
    with pytest.raises(ConfigError):
        attacks.make("dynamic", kappa="-1")
