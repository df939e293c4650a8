"""Random-noise baselines: `attacks.Noise`, `noise_baseline` and the threshold of `detectability`."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.attacks import Noise
from evasion.defenses.detected import DetectedClassifier
from evasion.defenses.detector import Detector
from evasion.defenses.reject import ThresholdReject
from evasion.errors import ConfigError
from evasion.evaluation.detectability import detectability, detectability_from_scores, noise_baseline
from evasion.models.classifier import REJECT, Classifier
from evasion.perturbations import norm as pnorm

from .conftest import make_tiny_cnn

#: tiny models gain nothing from threads, and on a busy machine they spin
pytestmark = pytest.mark.usefixtures("one_thread")

BUDGETS = {"linf": 0.1, "l2": 0.5, "l1": 2.0}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=_gen(11))
    x[:4, :, :2] = 0.0  # pixels on the box edges
    x[4:8, :, -2:] = 1.0
    return x, torch.randint(0, 10, (n,), generator=_gen(12))


# -- Noise ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_noise_stays_in_the_ball_and_the_box(kind, norm):
    x, y = _data()
    eps = BUDGETS[norm]
    r = Noise(kind=kind, draws=3)(make_tiny_cnn(), x, y, threat=ThreatModel(norm, eps), generator=_gen())
    assert r.adversarial.shape == x.shape
    assert bool((pnorm(r.adversarial - x, norm) <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(r.adversarial.min()) >= 0.0 and float(r.adversarial.max()) <= 1.0
    assert bool((r.adversarial != x).any())  # it does perturb
    assert torch.allclose(r.norms, pnorm(r.adversarial - x, norm))


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_noise_respects_the_mask(kind, norm):
    x, y = _data()
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 3:6] = True
    threat = ThreatModel(norm, BUDGETS[norm], mask=mask)
    r = Noise(kind=kind, draws=2)(make_tiny_cnn(), x, y, threat=threat, generator=_gen())
    outside = ~mask.expand_as(x)
    assert torch.equal(r.adversarial[outside], x[outside])
    assert bool((r.adversarial[~outside] != x[~outside]).any())


def test_gaussian_noise_uses_the_whole_budget_inside_the_mask():
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.zeros(6, dtype=torch.long)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    r = Noise(kind="gaussian")(
        make_tiny_cnn(), x, y, threat=ThreatModel("l2", 0.3, mask=mask), generator=_gen()
    )
    assert torch.allclose(pnorm(r.adversarial - x, "l2"), torch.full((6,), 0.3), atol=1e-5)
    assert torch.equal(r.adversarial[:, :, 4:], x[:, :, 4:])


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5), ("l1", 1.0)])
def test_gaussian_noise_has_norm_epsilon_when_the_box_does_not_clip(norm, eps):
    x = torch.full((10, 1, 8, 8), 0.5)
    y = torch.zeros(10, dtype=torch.long)
    r = Noise(kind="gaussian")(make_tiny_cnn(), x, y, threat=ThreatModel(norm, eps), generator=_gen())
    assert torch.allclose(pnorm(r.adversarial - x, norm), torch.full((10,), eps), rtol=1e-4, atol=1e-6)
    assert torch.allclose(r.norms, torch.full((10,), eps), rtol=1e-4, atol=1e-6)
    # a direction, not a sign pattern: in L-inf not every pixel is at the budget
    if norm == "linf":
        assert float(((r.adversarial - x).abs() < 0.9 * eps).float().mean()) > 0.5


def test_uniform_linf_noise_is_uniform_in_the_ball():
    x = torch.full((50, 1, 8, 8), 0.5)
    y = torch.zeros(50, dtype=torch.long)
    eps = 0.1
    r = Noise()(make_tiny_cnn(), x, y, threat=ThreatModel("linf", eps), generator=_gen())
    delta = (r.adversarial - x).flatten()
    assert float(delta.abs().max()) <= eps + 1e-6
    assert float(delta.abs().mean()) == pytest.approx(eps / 2, rel=0.05)  # E|U(-eps, eps)| = eps / 2
    assert abs(float(delta.mean())) < 0.01 * eps * 10


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_is_deterministic_under_a_generator_and_uses_no_gradient(kind):
    x, y = _data()
    threat = ThreatModel("l2", 0.5)
    clf = make_tiny_cnn()
    a = Noise(kind=kind, draws=4)(clf, x, y, threat=threat, generator=_gen(7))
    b = Noise(kind=kind, draws=4)(clf, x, y, threat=threat, generator=_gen(7))
    c = Noise(kind=kind, draws=4)(clf, x, y, threat=threat, generator=_gen(8))
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.predictions, b.predictions)
    assert not torch.equal(a.adversarial, c.adversarial)
    assert int(a.backwards.abs().sum()) == 0 and a.backwards.shape == (len(y),)
    assert bool((a.forwards == 4).all())
    # without a generator: the documented default (a fresh generator seeded 0), not the global RNG
    torch.manual_seed(123)
    d = Noise(kind=kind, draws=4)(clf, x, y, threat=threat)
    torch.manual_seed(456)
    e = Noise(kind=kind, draws=4)(clf, x, y, threat=threat)
    assert torch.equal(d.adversarial, e.adversarial)
    assert torch.equal(
        d.adversarial, Noise(kind=kind, draws=4)(clf, x, y, threat=threat, generator=_gen(0)).adversarial
    )


def test_noise_predictions_are_the_models_fresh_decisions():
    x, y = _data()
    clf = make_tiny_cnn()
    r = Noise(draws=2)(clf, x, y, threat=ThreatModel("linf", 0.3), generator=_gen())
    assert torch.equal(r.predictions, clf.predict(r.adversarial))
    assert torch.equal(r.success, r.predictions != y)


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_more_draws_never_evade_less(kind):
    clf = make_tiny_cnn()
    x = torch.rand(64, 1, 8, 8, generator=_gen(21))
    y = clf.predict(x)  # every clean input is correct: successes come from the noise alone
    threat = ThreatModel("linf", 0.3)
    one = Noise(kind=kind, draws=1)(clf, x, y, threat=threat, generator=_gen(3))
    many = Noise(kind=kind, draws=8)(clf, x, y, threat=threat, generator=_gen(3))
    assert 0 < int(one.success.sum()) < len(y)
    assert bool((many.success | ~one.success).all())  # per sample: broken with 1 draw -> with 8
    assert int(many.success.sum()) > int(one.success.sum())
    # where no draw evades, the first draw (the single-draw result) is returned
    failed = ~many.success
    assert torch.equal(many.adversarial[failed], one.adversarial[failed])
    # where it evades, the returned point is one that evades
    assert bool((clf.predict(many.adversarial[many.success]) != y[many.success]).all())


def test_noise_counts_a_rejection_as_no_evasion():
    clf = make_tiny_cnn()
    x, y = _data()
    y = clf.predict(x)
    system = DetectedClassifier(clf, Detector.attach(clf, "conv1", _Constant(50.0)), 0.5)
    r = Noise(draws=3)(system, x, y, threat=ThreatModel("linf", 0.3), generator=_gen())
    assert bool((r.predictions == REJECT).all()) and not bool(r.success.any())


@pytest.mark.parametrize(
    "bad", [{"kind": "salt"}, {"kind": "Gaussian"}, {"draws": 0}, {"draws": 1.5}, {"draws": True}]
)
def test_bad_noise_parameters_are_config_errors(bad):
    with pytest.raises(ConfigError):
        Noise(**bad)


def test_noise_needs_a_finite_untargeted_threat():
    x, y = _data(4)
    clf = make_tiny_cnn()
    with pytest.raises(ConfigError):
        Noise()(clf, x, y, threat=ThreatModel("linf", math.inf))
    with pytest.raises(ConfigError):
        Noise()(clf, x, y, threat=ThreatModel("linf", 0.1, targeted=True), target=0)
    with pytest.raises(ConfigError):
        Noise()(clf, x, y, threat=ThreatModel("l0", 3.0))
    r = Noise(draws=5)(clf, x, y, threat=ThreatModel("linf", 0.0))
    assert torch.equal(r.adversarial, x)


def test_noise_is_registered_as_a_black_box_baseline():
    attack = attacks.make("noise", kind="gaussian", draws="3")
    assert isinstance(attack, Noise) and attack.kind == "gaussian" and attack.draws == 3
    assert Noise.black_box and not Noise.supports_targeted


# -- noise_baseline ------------------------------------------------------------------------------
class _Constant(nn.Module):
    """A detector that outputs the same logit for every input."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=(1, 2, 3)) * 0.0 + self.value


EPSILONS = [0.0, 0.01, 0.1, 0.3]


@pytest.mark.parametrize(
    "make",
    [
        lambda clf: DetectedClassifier(clf, Detector.attach(clf, "conv1", width=0.05, seed=1), 0.0),
        lambda clf: DetectedClassifier(clf, Detector.attach(clf, "conv1", _Constant(1e3)), 0.5),
        lambda clf: ThresholdReject(clf, 1e6),
    ],
    ids=["threshold-0", "huge-bias", "reject-all"],
)
def test_a_system_that_flags_everything_flags_all_noise(make):
    clf = make_tiny_cnn()
    x, y = _data(16)
    result = noise_baseline(make(clf), x, y, "linf", EPSILONS)
    assert result.norm == "linf" and result.epsilons == tuple(EPSILONS) and result.n == 16
    assert set(result.rates) == {"uniform", "gaussian"}
    for kind, rates in result.rates.items():
        assert rates == (1.0,) * len(EPSILONS), kind
    assert result.to_dict()["rates"]["gaussian"] == [1.0] * len(EPSILONS)


def test_a_system_that_flags_nothing_has_flag_rate_zero():
    clf = make_tiny_cnn()
    x, y = _data(16)
    for system in (
        DetectedClassifier(clf, Detector.attach(clf, "conv1", width=0.05, seed=1), 1.0),
        ThresholdReject(clf, -1e6),
    ):
        result = noise_baseline(system, x, y, "l2", [0.5, 2.0], kinds=("gaussian",))
        assert set(result.rates) == {"gaussian"}
        assert result.rates["gaussian"] == (0.0, 0.0)


def test_flag_rate_is_the_rejected_fraction_of_the_noise():
    clf = make_tiny_cnn()
    x, y = _data(32)
    det = Detector.attach(clf, "conv1", _MeanDetector())
    p = det.probability(x)
    system = DetectedClassifier(clf, det, float(p.median()))
    result = noise_baseline(system, x, y, "linf", [0.05, 0.2])
    again = noise_baseline(system, x, y, "linf", [0.05, 0.2], generator=_gen(0))
    assert result == again  # the default generator is seeded 0
    gen = _gen(0)
    for kind in ("uniform", "gaussian"):
        for i, eps in enumerate((0.05, 0.2)):
            r = Noise(kind=kind)(system, x, y, threat=ThreatModel("linf", eps), generator=gen)
            assert result.rates[kind][i] == pytest.approx(float((r.predictions == REJECT).double().mean()))
    rates = [v for row in result.rates.values() for v in row]
    assert any(0.0 < v < 1.0 for v in rates)


def test_noise_baseline_needs_a_reject_option():
    x, y = _data(4)
    with pytest.raises(ConfigError, match="reject"):
        noise_baseline(make_tiny_cnn(), x, y, "linf", [0.1])


# -- detectability at the deployed threshold -----------------------------------------------------
class _MeanDetector(nn.Module):
    """``logit(p_adv)`` grows with the mean activation of the attached layer."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 8.0 * (h.mean(dim=(1, 2, 3)) - 0.1)


class _MeanPixel(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 20.0 * (h.mean(dim=(1, 2, 3)) - 0.55)


def _pixel_detector() -> Detector:
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(input=nn.Identity(), flatten=nn.Flatten(), fc=nn.Linear(64, 10)))
    return Detector.attach(Classifier(net, 10, input_shape=(1, 8, 8)), "input", _MeanPixel())


def test_detectability_of_a_system_uses_its_own_threshold():
    det = _pixel_detector()
    clean = torch.rand(40, 1, 8, 8, generator=_gen(1)) * 0.05 + 0.475  # p_adv ~ sigmoid(-1) ~ 0.27
    adv = clean + 0.03  # p_adv ~ sigmoid(-0.4) ~ 0.4: below 0.5, above a low threshold
    pc, pa = det.probability(clean), det.probability(adv)
    t = float((pc.max() + pa.min()) / 2)
    assert t < 0.5 and float(pc.max()) < t < float(pa.min())
    system = DetectedClassifier(det.classifier, det, t)

    deployed = detectability(system, clean, adv)
    assert deployed.threshold == t
    assert deployed.accuracy == 1.0 and deployed.true_positive_rate == 1.0
    assert deployed == detectability_from_scores(pc, pa, threshold=t)

    bare = detectability(det, clean, adv)
    assert bare.threshold == 0.5
    assert bare.accuracy == 0.5 and bare.true_positive_rate == 0.0
    assert bare.roc_auc == deployed.roc_auc == 1.0  # the ranking does not depend on the threshold

    override = detectability(system, clean, adv, threshold=0.5)
    assert override.threshold == 0.5 and override.accuracy == bare.accuracy
    assert detectability(det, clean, adv, threshold=t).accuracy == 1.0
    assert deployed.to_dict()["threshold"] == t


def test_detectability_refuses_other_models():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ConfigError):
        detectability(make_tiny_cnn(), x, x)  # type: ignore[arg-type]
