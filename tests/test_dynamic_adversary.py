"""The dynamic adversary (Metzen et al. Sect. 3.3) as a configuration of the shared gradient loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evasion import ThreatModel, attacks
from evasion.attacks import DynamicAdversary
from evasion.defenses.detected import DetectedClassifier
from evasion.defenses.detector import Detector
from evasion.defenses.detector_training import TrainingConfig, train_dynamic_detector
from evasion.errors import ConfigError

from .conftest import make_tiny_cnn

PAPER = {"early_stop": False, "keep": "last"}


def _setup(n: int = 24):
    clf = make_tiny_cnn()
    det = Detector.attach(clf, "conv1", width=0.05, seed=1)
    g = torch.Generator().manual_seed(2)
    return clf, det, torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sigma_zero_equals_bim(norm):
    clf, det, x, y = _setup()
    threat = ThreatModel(norm, 0.1 if norm == "linf" else 0.8)
    bim = attacks.BIM(steps=7, step_size=0.03 if norm == "linf" else 0.2, **PAPER)(clf, x, y, threat=threat)
    dyn = DynamicAdversary(sigma=0.0, steps=7, step_size=bim_step(norm), **PAPER)
    out = dyn(DetectedClassifier(clf, det), x, y, threat=threat)
    assert torch.equal(out.adversarial, bim.adversarial)


def bim_step(norm: str) -> float:
    return 0.03 if norm == "linf" else 0.2


def test_one_step_is_the_papers_update():
    clf, det, x, y = _setup()
    system, sigma, alpha, eps = DetectedClassifier(clf, det), 0.3, 0.02, 0.1
    out = DynamicAdversary(sigma=sigma, steps=1, step_size=alpha, **PAPER)(
        system, x, y, threat=ThreatModel("linf", eps)
    )
    xg = x.clone().requires_grad_(True)
    (g_cls,) = torch.autograd.grad(F.cross_entropy(clf(xg), y, reduction="sum"), xg)
    xg = x.clone().requires_grad_(True)
    (g_det,) = torch.autograd.grad(F.softplus(-det.eval()(xg)).sum(), xg)
    step = x + alpha * ((1 - sigma) * g_cls.sign() + sigma * g_det.sign())
    expected = torch.minimum(torch.maximum(step, (x - eps).clamp_min(0)), (x + eps).clamp_max(1))
    assert torch.allclose(out.adversarial, expected, atol=1e-6)


def test_sigma_one_lowers_p_adv_and_budget_is_kept():
    clf, det, x, y = _setup()
    threat = ThreatModel("linf", 0.1)
    out = DynamicAdversary(sigma=1.0, steps=10, step_size=0.02, **PAPER)(
        DetectedClassifier(clf, det), x, y, threat=threat
    )
    assert float(det.probability(out.adversarial).mean()) < float(det.probability(x).mean())
    assert float((out.adversarial - x).abs().max()) <= 0.1 + 1e-6
    assert float(out.adversarial.min()) >= 0 and float(out.adversarial.max()) <= 1


def test_without_a_detector_it_is_bim():
    clf, _, x, y = _setup()
    threat = ThreatModel("linf", 0.1)
    bim = attacks.BIM(steps=5, step_size=0.03, **PAPER)(clf, x, y, threat=threat)
    dyn = DynamicAdversary(sigma=0.6, steps=5, step_size=0.03, **PAPER)(clf, x, y, threat=threat)
    assert torch.equal(dyn.adversarial, bim.adversarial)


def test_registry_and_validation():
    attack = attacks.make("dynamic", sigma="0.3", steps="4")
    assert isinstance(attack, DynamicAdversary) and attack.sigma == 0.3 and attack.steps == 4
    for bad in (-0.1, 1.2, "x"):
        with pytest.raises(ConfigError, match="sigma"):
            DynamicAdversary(sigma=bad)  # type: ignore[arg-type]


def test_success_means_evading_the_whole_system():
    clf, det, x, y = _setup()
    system = DetectedClassifier(clf, det, threshold=0.5)
    out = DynamicAdversary(sigma=0.5, steps=5)(system, x, y, threat=ThreatModel("linf", 0.2))
    assert torch.equal(out.success, (out.predictions != y) & (out.predictions != -1))
    assert torch.equal(out.predictions, system.predict(out.adversarial))


def test_dynamic_adversary_training_runs_and_is_deterministic():
    clf, _, x, y = _setup(32)
    nets = []
    for _ in range(2):
        det = Detector.attach(clf, "conv1", width=0.05, seed=1)
        log = train_dynamic_detector(
            det,
            x,
            y,
            ThreatModel("linf", 0.1),
            val=(x[:8], y[:8]),
            config=TrainingConfig(epochs=1, batch_size=16),
            steps=3,
            step_size=0.03,
            val_sigmas=(0.3,),
        )
        nets.append(det.net.state_dict())
    assert len(log.val_detectability) == 1 and not det.training
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    with pytest.raises(ConfigError, match="epsilon > 0"):
        train_dynamic_detector(det, x, y, ThreatModel("linf", 0.0), val=(x, y))
