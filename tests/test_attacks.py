"""Invariants every registered attack must keep, checked on a small CNN for each supported norm."""

from __future__ import annotations

import math

import pytest
import torch

from evasion import ThreatModel, attacks
from evasion.attacks import REGISTRY
from evasion.models.classifier import Classifier
from evasion.perturbations import norm

from .conftest import make_tiny_cnn

#: a fast configuration of every registered attack (a new attack must be added here)
FAST: dict[str, attacks.Attack] = {
    "fgsm": attacks.FGSM(),
    "bim": attacks.BIM(steps=5),
    "pgd": attacks.PGD(steps=5),
    "mifgsm": attacks.MIFGSM(steps=5),
    "apgd": attacks.APGD(steps=10),
    "deepfool": attacks.DeepFool(steps=10),
    "cw-l2": attacks.CarliniWagnerL2(steps=10, binary_search_steps=2, initial_const=1.0),
    "max-confidence": attacks.MaxConfidence(steps=10),
    "dynamic": attacks.DynamicAdversary(steps=5),
    "noise": attacks.Noise(kind="gaussian", draws=2),
    "onepixel": attacks.OnePixel(population=20, generations=5),
    "jsma": attacks.JSMA(gamma=0.5),
    "square": attacks.Square(queries=100),
    "substitute": attacks.Substitute(seeds=8, rounds=3, epochs=3, transfer="fgsm"),
}
EPS = {"linf": 0.1, "l2": 0.5, "l1": 2.0, "l0": 3.0}
CASES = [(name, p) for name in sorted(FAST) for p in FAST[name].norms]


def test_every_registered_attack_is_covered():
    assert set(REGISTRY) == set(FAST)


def _run(name, p, model, x, y, **threat_kw):
    threat = ThreatModel(p, threat_kw.pop("epsilon", EPS[p]), **threat_kw)
    return FAST[name](model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "p"), CASES)
def test_budget_box_and_success_are_honest(name, p, tiny_cnn, batch):
    x, y = batch
    r = _run(name, p, tiny_cnn, x, y)
    assert r.adversarial.shape == x.shape and r.adversarial.dtype == x.dtype
    assert float(r.adversarial.min()) >= 0.0 and float(r.adversarial.max()) <= 1.0
    assert bool((norm(r.adversarial - x, p) <= EPS[p] * (1 + 1e-5) + 1e-6).all())
    assert torch.allclose(r.norms, norm(r.adversarial - x, p))
    fresh = tiny_cnn.predict(r.adversarial)
    assert torch.equal(fresh, r.predictions)
    assert torch.equal(r.success, fresh != y)
    assert int(r.forwards.min()) >= 1 and r.queries > 0


@pytest.mark.parametrize(("name", "p"), CASES)
def test_masked_pixels_untouched(name, p, tiny_cnn, batch):
    x, y = batch
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    r = _run(name, p, tiny_cnn, x, y, mask=mask)
    outside = ~mask.expand_as(x)
    assert torch.equal(r.adversarial[outside], x[outside])


@pytest.mark.parametrize(("name", "p"), CASES)
def test_per_sample_masks_and_per_pixel_bounds(name, p, tiny_cnn, batch):
    x, y = batch
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(x.shape, generator=g) < 0.5
    lower = (x - 0.05).clamp_min(0.0)
    upper = (x + 0.2).clamp_max(1.0)
    r = _run(name, p, tiny_cnn, x, y, mask=mask, bounds=(lower, upper))
    assert torch.equal(r.adversarial[~mask], x[~mask])
    assert bool((r.adversarial >= lower - 1e-7).all()) and bool((r.adversarial <= upper + 1e-7).all())


@pytest.mark.parametrize(("name", "p"), CASES)
def test_zero_epsilon_returns_the_input(name, p, tiny_cnn, batch):
    x, y = batch
    r = _run(name, p, tiny_cnn, x, y, epsilon=0.0)
    assert torch.equal(r.adversarial, x)
    assert torch.equal(r.success, tiny_cnn.predict(x) != y)


@pytest.mark.parametrize(("name", "p"), CASES)
def test_no_side_effects_and_deterministic(name, p, batch):
    model = make_tiny_cnn()
    x, y = batch
    x_before, y_before = x.clone(), y.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.module.modules()]
    r1 = _run(name, p, model, x, y)
    r2 = _run(name, p, model, x, y)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert [m.training for m in model.module.modules()] == modes  # still in train mode
    for k, v in model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(r1.adversarial, r2.adversarial)
    assert torch.equal(r1.success, r2.success)


def _runner_up(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per input, the best-scoring class other than its clean prediction and its label."""
    scores = model.scores(x)
    rows = torch.arange(len(y))
    scores[rows, scores.argmax(1)] = -math.inf
    scores[rows, y] = -math.inf
    return scores.argmax(1)


@pytest.mark.parametrize(("name", "p"), [c for c in CASES if FAST[c[0]].supports_targeted])
def test_targeted_success_means_target(name, p, tiny_cnn, batch):
    x, y = batch
    target = _runner_up(tiny_cnn, x, y)  # never the clean prediction: a success is a point moved there
    assert not bool((tiny_cnn.predict(x) == target).any())
    threat = ThreatModel(p, 4 * EPS[p], targeted=True)
    r = FAST[name](tiny_cnn, x, y, threat=threat, target=target)
    assert torch.equal(r.predictions, tiny_cnn.predict(r.adversarial))
    assert torch.equal(r.success, r.predictions == target)
    # every attack moves a fair share of the inputs to their targets (the iterative ones ~90%)
    assert int(r.success.sum()) >= len(y) // 6, f"{r.success_rate:.2f} of the targets reached"


def test_attacks_break_more_with_larger_budget(tiny_cnn, batch):
    x, y = batch
    weak = attacks.PGD(steps=10)(tiny_cnn, x, y, threat=ThreatModel("linf", 0.01))
    strong = attacks.PGD(steps=10)(tiny_cnn, x, y, threat=ThreatModel("linf", 0.5))
    assert strong.success_rate == 1.0 and weak.success_rate < strong.success_rate


def test_minimum_norm_attacks_report_minimal_norms(tiny_cnn, batch):
    x, y = batch
    for attack in (FAST["deepfool"], FAST["cw-l2"]):
        r = attack(tiny_cnn, x, y, threat=ThreatModel("l2", math.inf))
        assert r.minimal_norms is not None
        found = torch.isfinite(r.minimal_norms)
        assert torch.equal(found, r.success)
        assert torch.allclose(r.minimal_norms[found], r.norms[found])
        small = attack(tiny_cnn, x, y, threat=ThreatModel("l2", 0.05))
        assert bool((small.norms <= 0.05 + 1e-6).all())


def test_early_stop_saves_queries(tiny_cnn, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.3)
    stop = attacks.PGD(steps=20)(tiny_cnn, x, y, threat=threat)
    full = attacks.PGD(steps=20, early_stop=False)(tiny_cnn, x, y, threat=threat)
    assert stop.success_rate == full.success_rate == 1.0
    assert stop.queries < full.queries / 3
    assert int(full.backwards.min()) == 20


def test_loss_trace_and_restarts(tiny_cnn, batch):
    x, y = batch
    r = attacks.PGD(steps=6, trace=True, early_stop=False)(tiny_cnn, x, y, threat=ThreatModel("linf", 0.02))
    assert r.loss_trace is not None and r.loss_trace.shape == (7, x.shape[0])
    assert bool(torch.isfinite(r.loss_trace).all())
    one = attacks.PGD(steps=3)(tiny_cnn, x, y, threat=ThreatModel("linf", 0.02))
    many = attacks.PGD(steps=3, restarts=4)(tiny_cnn, x, y, threat=ThreatModel("linf", 0.02))
    assert bool((many.success | ~one.success).all())  # restarts never lose a broken point
    assert many.queries > one.queries


def test_plain_module_is_accepted_in_eval_mode(batch):
    x, y = batch
    net = make_tiny_cnn().module.eval()
    r = attacks.FGSM()(net, x, y, threat=ThreatModel("linf", 0.1))
    assert r.adversarial.shape == x.shape


def test_results_live_on_the_model_device(tiny_cnn, batch):
    x, y = batch
    r = attacks.PGD(steps=2)(tiny_cnn, x, y, threat=ThreatModel("linf", 0.1))
    assert r.adversarial.device == tiny_cnn.device == r.success.device


#: attacks with branch points that a float rounding can flip (CW's binary search over its constant,
#: APGD's step halving): on another device they are compared by outcome, not point by point
BRANCHING = {"cw-l2", "apgd"}


def _same_attack_on(device: str, name: str, p: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """The attack on a model on ``device`` (inputs on the CPU) agrees with the same attack on the CPU."""
    model = make_tiny_cnn().to(device)
    if name in BRANCHING:
        y = make_tiny_cnn().predict(x)  # correct labels: each success is the attack's own work
    r = _run(name, p, model, x, y)
    assert r.adversarial.device.type == r.success.device.type == device
    cpu = _run(name, p, make_tiny_cnn(), x, y)
    if name not in BRANCHING:
        assert torch.allclose(r.adversarial.cpu(), cpu.adversarial, atol=1e-4)
        return
    assert cpu.success_rate >= 0.25
    assert float((r.success.cpu() == cpu.success).float().mean()) >= 0.9
    assert bool((r.norms.cpu() <= EPS[p] * (1 + 1e-5) + 1e-6).all())
    assert torch.allclose(r.norms.cpu(), norm(r.adversarial.cpu() - x, p), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "p"), CASES)
def test_cuda_model_cpu_inputs(name, p, batch):
    x, y = batch
    _same_attack_on("cuda", name, p, x, y)


def test_classifier_is_a_plain_logits_module(tiny_cnn, batch):
    x, _ = batch
    assert isinstance(tiny_cnn, torch.nn.Module)
    assert tiny_cnn(x).shape == (x.shape[0], 10)
    assert isinstance(tiny_cnn, Classifier)


def test_warm_start_is_projected_and_used(tiny_cnn, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.05)
    far = (x + 0.5).clamp(0, 1)  # outside the ball: must be projected back
    r = attacks.BIM(steps=1, step_size=1e-9, early_stop=False, keep="last")(
        tiny_cnn, x, y, threat=threat, init=far
    )
    expected = torch.minimum(far, x + 0.05).clamp(0, 1)
    assert torch.allclose(r.adversarial, expected, atol=1e-6)
    assert bool((norm(r.adversarial - x, "linf") <= 0.05 + 1e-6).all())
