"""Detector subnetworks: hooks that leave the classifier untouched, the paper's architecture,
training on a trivially detectable perturbation, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion.defenses.detector import Detector, PaperDetector, feature_shape, paper_pools, threshold_for_fpr
from evasion.defenses.detector_training import TrainingConfig, fit_detector, train_detector
from evasion.errors import ConfigError, InputError, UnknownNameError
from evasion.evaluation.detectability import detectability

from .conftest import make_tiny_cnn


def _inputs(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _input_and_param_grads(clf, x):
    xg = x.clone().requires_grad_(True)
    out = clf(xg)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in clf.parameters()]
    clf.zero_grad(set_to_none=True)
    return out.detach(), xg.grad.clone(), grads


def test_hooks_do_not_change_classifier_outputs_or_gradients():
    clf, x = make_tiny_cnn(), _inputs()
    before = _input_and_param_grads(clf, x)
    det = Detector.attach(clf, "conv1", width=0.05)
    det(x).sum().backward()  # running the detector must not leave anything behind
    clf.zero_grad(set_to_none=True)
    after = _input_and_param_grads(clf, x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert all(torch.equal(a, b) for a, b in zip(before[2], after[2]))
    scores, _ = det.scores_and_logit(x)
    assert torch.equal(scores, clf(x))
    assert not any(m._forward_hooks for m in clf.modules())
    assert clf.module.training  # the wrapper's contract: the user's mode is kept


def test_detector_parameters_are_its_own_and_classifier_stays_frozen():
    clf, x = make_tiny_cnn(), _inputs(32)
    det = Detector.attach(clf, "bn1", width=0.05)
    assert {id(p) for p in det.parameters()}.isdisjoint({id(p) for p in clf.parameters()})
    frozen = {k: v.clone() for k, v in clf.state_dict().items()}
    fit_detector(
        det, x, (x + 0.2).clamp(0, 1), x[:8], (x[:8] + 0.2).clamp(0, 1), TrainingConfig(epochs=1, lr=1e-3)
    )
    assert all(torch.equal(frozen[k], v) for k, v in clf.state_dict().items())


def test_constant_offset_is_detected_almost_perfectly():
    clf = make_tiny_cnn()
    x = _inputs(128) * 0.8
    xv, xt = _inputs(32, 1) * 0.8, _inputs(128, 2) * 0.8
    det = Detector.attach(clf, "conv1", width=0.05)
    log = fit_detector(det, x, x + 0.2, xv, xv + 0.2, TrainingConfig(epochs=5, lr=1e-2, batch_size=64))
    assert log.best_val_detectability >= 0.98
    assert detectability(det, xt, xt + 0.2).accuracy >= 0.98


def test_training_is_deterministic():
    clf, x = make_tiny_cnn(), _inputs(64) * 0.8
    nets = []
    for _ in range(2):
        det = Detector.attach(clf, "conv1", width=0.05, seed=3)
        fit_detector(det, x, x + 0.1, x[:16], x[:16] + 0.1, TrainingConfig(epochs=2, lr=1e-3, seed=5))
        nets.append(det.net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])


def test_train_detector_with_an_attack():
    from evasion import ThreatModel, attacks

    clf, g = make_tiny_cnn(), torch.Generator().manual_seed(4)
    x, y = _inputs(48), torch.randint(0, 10, (48,), generator=g)
    det = Detector.attach(clf, "conv1", width=0.05)
    log = train_detector(
        det,
        x,
        y,
        attacks.FGSM(early_stop=False, keep="last"),
        ThreatModel("linf", 0.3),
        val=(x[:16], y[:16]),
        config=TrainingConfig(epochs=2),
    )
    assert len(log.train_loss) == 2 and 1 <= log.best_epoch <= 2


def test_training_without_adversarial_examples_is_refused():
    clf, x = make_tiny_cnn(), _inputs()
    det = Detector.attach(clf, "conv1", width=0.05)
    with pytest.raises(ConfigError, match="no adversarial examples"):
        fit_detector(det, x, x.clone(), x, x + 0.1)
    with pytest.raises(InputError, match="one adversarial example per clean input"):
        fit_detector(det, x, x[:4] + 0.1, x, x + 0.1)
    with pytest.raises(ConfigError, match="no adversarial examples"):
        from evasion import ThreatModel, attacks

        train_detector(
            det,
            x,
            torch.zeros(16, dtype=torch.long),
            attacks.FGSM(),
            ThreatModel("linf", 0.0),
            val=(x, torch.zeros(16, dtype=torch.long)),
        )


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown layer 'conv9'; valid layers: bn1, conv1, conv2"):
        Detector.attach(make_tiny_cnn(), "conv9")


def test_layer_that_is_not_a_feature_map_says_its_shape():
    with pytest.raises(ConfigError, match=r"layer 'fc' outputs shape \(10,\).*not a feature map"):
        Detector.attach(make_tiny_cnn(), "fc")


def test_architecture_that_cannot_take_the_layer_output():
    bad = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"cannot take the output of layer 'conv1' \(shape \(8, 8, 8\)"):
        Detector.attach(make_tiny_cnn(), "conv1", bad)
    with pytest.raises(ConfigError, match="must return"):
        Detector.attach(make_tiny_cnn(), "conv1", nn.Conv2d(8, 3, 1))


def test_any_module_or_factory_can_be_the_detector():
    clf, x = make_tiny_cnn(), _inputs(4)
    one_logit = nn.Sequential(nn.Flatten(), nn.Linear(10, 1))
    det = Detector.attach(clf, "fc", one_logit)
    assert det(x).shape == (4,)
    det = Detector.attach(
        clf, "conv2", lambda shape: nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], 2))
    )
    assert det.probability(x).shape == (4,)
    assert feature_shape(clf, "conv2") == (16, 8, 8)


def test_paper_architecture_pooling_follows_the_feature_size():
    assert [paper_pools(s) for s in (32, 16, 8, 28, 14, 7)] == [2, 1, 0, 2, 1, 0]
    net = PaperDetector((16, 32, 32), width=1.0)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 192, 192, 2]
    assert net(torch.zeros(2, 16, 32, 32)).shape == (2, 2)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3


def test_threshold_for_fpr():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    t = threshold_for_fpr(p, 0.2)
    assert float((p > t).float().mean()) <= 0.2 + 1e-6 and t == pytest.approx(0.8)
    assert threshold_for_fpr(p, 0.0) == pytest.approx(0.95)
    with pytest.raises(ConfigError):
        threshold_for_fpr(p, 1.5)
