"""Low-precision models (bfloat16 / float16 weights) and devices.

The threat model's maths stays float32: attacks keep float32 iterates, the classifier casts its
input to the module's dtype and its scores back to float32. These tests run a bfloat16 model on
the CPU through every registered attack and check the invariants a user relies on: the result is
inside ball ∩ box, and ``success`` agrees with a fresh prediction of the low-precision model.
On a CUDA machine the same runs on the GPU, in bfloat16 and float16.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.errors import ConfigError
from evasion.evaluation.engine import fingerprint
from evasion.models.classifier import Classifier
from evasion.perturbations import norm as perturbation_norm
from evasion.runtime import resolve_device

EPS = {"linf": 0.1, "l2": 1.0, "l1": 4.0, "l0": 4.0}
CUDA = torch.cuda.is_available()


def _net(dtype: torch.dtype, device: str = "cpu") -> Classifier:
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    ).eval()
    return Classifier(body.to(device=device, dtype=dtype), 10, input_shape=(1, 14, 14), name="tiny")


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 14, 14, generator=g), torch.randint(0, 10, (n,), generator=g)


def _cases() -> list[tuple[str, str]]:
    return [(name, norm) for name, cls in sorted(attacks.REGISTRY.items()) for norm in cls.norms]


def _check(clf: Classifier, name: str, norm: str, x: torch.Tensor, y: torch.Tensor) -> None:
    attack = attacks.make(name)
    threat = ThreatModel(norm, EPS[norm])
    result = attack(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    adv = result.adversarial
    assert adv.dtype == torch.float32, "iterates must stay float32 whatever the model's dtype"
    assert torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1, "left the box"
    if not attack.minimum_norm:
        sizes = perturbation_norm(adv - x.to(adv.device), norm)
        assert float(sizes.max()) <= EPS[norm] * (1 + 1e-4) + 1e-6, f"{name} left the {norm} ball"
    fresh = clf.predict(adv)
    assert torch.equal(fresh, result.predictions), "predictions must come from the model itself"
    assert torch.equal(result.success, (fresh != y.to(fresh.device)) & (fresh >= 0))


@pytest.mark.parametrize(("name", "norm"), _cases())
def test_every_attack_on_a_bfloat16_model(name: str, norm: str, one_thread: None) -> None:
    x, y = _data()
    _check(_net(torch.bfloat16), name, norm, x, y)


def test_scores_of_a_low_precision_model_are_float32_and_differentiable() -> None:
    clf = _net(torch.bfloat16)
    x, _ = _data(2)
    x.requires_grad_(True)
    scores = clf(x)
    assert scores.dtype == torch.float32
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the same as running the module by hand in bfloat16
    expected = clf.module(x.detach().to(torch.bfloat16)).float()
    assert torch.equal(clf(x.detach()), expected)


def test_detector_on_a_bfloat16_classifier() -> None:
    from evasion.defenses.detected import DetectedClassifier
    from evasion.defenses.detector import Detector

    clf = _net(torch.bfloat16)
    det = Detector.attach(
        clf, "1", architecture=lambda shape: nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 1))
    )
    det.net.to(torch.bfloat16)
    guarded = DetectedClassifier(clf, det, threshold=0.5)
    x, y = _data()
    scores = guarded(x)
    assert scores.dtype == torch.float32 and scores.shape == (len(x), 11)
    result = attacks.make("pgd")(guarded, x, y, threat=ThreatModel("linf", 0.1))
    fresh = guarded.predict(result.adversarial)
    assert torch.equal(fresh, result.predictions)


def test_fingerprints_follow_the_weights_not_the_dtype() -> None:
    net = nn.Linear(4, 3)
    with torch.no_grad():  # values exactly representable in bfloat16 and float16
        net.weight.copy_(torch.tensor([[0.5, -1.0, 0.25, 2.0]] * 3))
        net.bias.copy_(torch.tensor([0.0, 1.0, -0.5]))
    ref = fingerprint(net)
    assert fingerprint(copy.deepcopy(net).to(torch.bfloat16)) == ref
    assert fingerprint(copy.deepcopy(net).to(torch.float16)) == ref
    rough = nn.Linear(4, 3)  # random float32 weights lose bits in bfloat16: another model
    assert fingerprint(copy.deepcopy(rough).to(torch.bfloat16)) != fingerprint(rough)
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed.weight[0, 0] += 2.0**-8
    assert fingerprint(changed) != ref


def test_a_device_that_does_not_exist_is_one_clear_error() -> None:
    count = torch.cuda.device_count() if CUDA else 0
    with pytest.raises(ConfigError, match=r"cuda:7|no CUDA") as err:
        resolve_device(f"cuda:{max(7, count)}")
    assert "cpu" in str(err.value), "the message names the devices there are"
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) is None
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")


def test_zoo_load_refuses_a_missing_device() -> None:
    from evasion import models

    with pytest.raises(ConfigError, match="cuda:9"):
        models.load("digits-mlp", device="cuda:9")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("name", "norm"), _cases())
def test_every_attack_on_cuda(name: str, norm: str, dtype: torch.dtype) -> None:
    x, y = _data()
    _check(_net(dtype, "cuda"), name, norm, x, y)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_results_match_cpu_in_float32() -> None:
    x, y = _data()
    threat = ThreatModel("linf", 0.1)
    pgd = attacks.make("pgd", random_start=False)
    cpu = pgd(_net(torch.float32), x, y, threat=threat)
    gpu = pgd(_net(torch.float32, "cuda"), x, y, threat=threat)
    assert gpu.adversarial.device.type == "cuda"
    assert math.isclose(float((gpu.adversarial.cpu() - cpu.adversarial).abs().max()), 0.0, abs_tol=1e-3)
