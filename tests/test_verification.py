"""certify: closed-form oracles, the IBP <= CROWN <= MILP order, soundness against attacks, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import evasion
from evasion.attacks import PGD
from evasion.errors import ConfigError, UnknownNameError
from evasion.models import Classifier
from evasion.verification import certify
from evasion.verification.certificate import domain_for


def _margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out.gather(1, y[:, None]).squeeze(1) - out.scatter(1, y[:, None], -torch.inf).max(1).values


def _mlp(seed: int, width: int = 12, classes: int = 3) -> nn.Module:
    """A random ReLU MLP on 4x4 inputs, weights x3 so that its margins vary at small epsilons."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    ).eval()
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(3.0)
    return net


def _data(model: nn.Module, n: int, seed: int) -> tuple[Tensor, Tensor]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x).argmax(1)


def test_crown_equals_closed_form_on_an_affine_model() -> None:
    """No ReLU: CROWN's margin bound is the exact minimum of an affine function over the ball."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.Linear(6, 4)).eval()
    bn = body[2]
    assert isinstance(bn, nn.BatchNorm1d)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = Classifier(body, 4)
    x = 0.3 + 0.4 * torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0])
    lin1, lin2 = body[1], body[3]
    assert isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = lin2.weight @ (scale[:, None] * lin1.weight)  # (4, 16)
    for norm, eps in (("linf", 0.35), ("l2", 0.1)):
        threat = evasion.ThreatModel(norm, eps)
        cert = certify(model, x, y, threat=threat, method="crown")
        dom = domain_for(x, threat)
        expected = []
        for i in range(5):
            clean = _margin(model, x[i : i + 1], y[i : i + 1])  # noqa: F841 (documenting the sign)
            out = model(x[i : i + 1])[0].detach()
            best = torch.inf
            for k in range(4):
                if k == y[i]:
                    continue
                a = (w[y[i]] - w[k]).double()
                base = float(out[y[i]] - out[k])
                if norm == "linf":  # min of a·(x' - x) over the box: each coordinate at its worst corner
                    lo, hi = (
                        (dom.lower[i].flatten() - x[i].flatten()).double(),
                        (dom.upper[i].flatten() - x[i].flatten()).double(),
                    )
                    low = base + float(torch.minimum(a * lo, a * hi).sum())
                else:  # the ball lies inside the box: -eps * ||a||_2
                    low = base - eps * float(a.norm())
                best = min(best, low)
            expected.append(best)
        assert torch.allclose(
            cert.margin_lower.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5
        )


def _two_neurons() -> Classifier:
    """f_0 = relu(x) + relu(-x) = |x|, f_1 = 0.5: margin of class 1 is 0.5 - |x'|."""
    lin1, lin2 = nn.Linear(1, 2), nn.Linear(2, 2)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        lin2.bias.copy_(torch.tensor([0.0, 0.5]))
    return Classifier(
        nn.Sequential(nn.Flatten(), lin1, nn.ReLU(), lin2, nn.ReLU(), nn.Identity()), 2, bounds=(-1, 1)
    )


@pytest.mark.parametrize("eps", [0.2, 0.3, 0.45, 0.6])
def test_two_neuron_network_known_bounds(eps: float) -> None:
    """IBP: 0.5 - 2 eps; CROWN (chords of both ReLUs cancel x): 0.5 - eps, the exact minimum."""
    model = _two_neurons()
    x, y = torch.zeros(1, 1, 1, 1), torch.tensor([1])
    threat = evasion.ThreatModel("linf", eps, bounds=(-1.0, 1.0))
    ibp = certify(model, x, y, threat=threat, method="ibp")
    crown = certify(model, x, y, threat=threat, method="crown")
    exact = certify(model, x, y, threat=threat, method="milp", exact=True)
    assert ibp.margin_lower.item() == pytest.approx(0.5 - 2 * eps, abs=1e-6)
    assert crown.margin_lower.item() == pytest.approx(0.5 - eps, abs=1e-6)
    assert exact.margin_upper is not None and exact.margin_upper.item() == pytest.approx(0.5 - eps, abs=1e-5)
    assert bool(crown.certified[0]) == (eps < 0.5) and bool(ibp.certified[0]) == (eps < 0.25)
    assert exact.status == ("robust" if eps < 0.5 else "not-robust",)
    # class 0 (= |x| - 0.5) at the same point is misclassified clean: never certified
    wrong = certify(model, x, torch.tensor([0]), threat=threat, method="crown")
    assert not bool(wrong.certified[0]) and wrong.margin_lower.item() == pytest.approx(-0.5, abs=1e-6)


def test_order_ibp_crown_milp_per_sample() -> None:
    model = _mlp(3)
    x, y = _data(model, 6, 4)
    threat = evasion.ThreatModel("linf", 0.04)
    ibp = certify(model, x, y, threat=threat, method="ibp")
    crown = certify(model, x, y, threat=threat, method="crown")
    alpha = certify(model, x, y, threat=threat, method="crown", alpha_steps=10)
    milp = certify(model, x, y, threat=threat, method="milp", exact=True)
    assert milp.margin_upper is not None and milp.status is not None
    assert bool((ibp.margin_lower <= crown.margin_lower + 1e-6).all())
    assert bool((crown.margin_lower <= alpha.margin_lower + 1e-6).all())
    assert bool((alpha.margin_lower <= milp.margin_upper + 1e-5).all())
    assert bool((milp.margin_lower >= crown.margin_lower - 1e-5).all())
    assert bool((milp.margin_upper - milp.margin_lower <= 1e-3).all())  # solved to optimality
    assert "unknown" not in milp.status
    assert set(milp.status) == {"robust", "not-robust"}  # the test exercises both outcomes
    assert bool((ibp.certified <= crown.certified).all() and (crown.certified <= milp.certified).all())


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.32)])
def test_certified_samples_are_never_broken(norm: str, eps: float) -> None:
    model = _mlp(5, width=16)
    x, y = _data(model, 16, 6)
    threat = evasion.ThreatModel(norm, eps)
    crown = certify(model, x, y, threat=threat, method="crown")
    assert 0 < int(crown.certified.sum()) < 16
    attack = PGD(steps=20, restarts=2)
    result = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    assert not bool((result.success & crown.certified).any())
    dom = domain_for(x, threat)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        z = dom.lower + (dom.upper - dom.lower) * torch.rand(x.shape, generator=gen)
        if norm == "l2":
            d = z - x
            d = d * (eps / d.flatten(1).norm(dim=1).clamp(min=1e-12)).clamp(max=1).reshape(-1, 1, 1, 1)
            z = x + d
        bound = crown.margin_lower
        assert bool((_margin(model, z, y) >= bound - 1e-5).all())


def test_milp_counterexamples_are_adversarial() -> None:
    model = _mlp(7)
    x, y = _data(model, 6, 8)
    eps = 0.04
    threat = evasion.ThreatModel("linf", eps)
    cert = certify(model, x, y, threat=threat, method="milp", falsify=0)  # the solver's own points
    assert cert.status is not None and cert.counterexample is not None
    assert certify(model, x, y, threat=threat, method="milp").status == cert.status  # with the APGD falsifier
    found = [i for i, s in enumerate(cert.status) if s == "not-robust"]
    assert found
    for i in found:
        adv = cert.counterexample[i]
        assert adv is not None
        assert (
            float((adv - x[i]).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
        )
        assert int(model(adv[None]).argmax()) != int(y[i])
    for i, s in enumerate(cert.status):
        assert (cert.counterexample[i] is None) == (s != "not-robust")
        assert bool(cert.certified[i]) == (s == "robust")


def test_milp_timeout_is_unknown_never_robust() -> None:
    model = _mlp(9, width=48)
    x, y = _data(model, 2, 10)
    cert = certify(
        model, x, y, threat=evasion.ThreatModel("linf", 0.3), method="milp", time_limit=1e-3, falsify=0
    )
    assert cert.status == ("unknown", "unknown")
    assert not bool(cert.certified.any())


def test_bad_input_is_named() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.GELU(), nn.Linear(4, 2)).eval()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    linf = evasion.ThreatModel("linf", 0.1)
    with pytest.raises(ConfigError, match=r"cannot bound layer '2' \(GELU\)"):
        certify(model, x, y, threat=linf, method="crown")
    mlp = _mlp(0)
    with pytest.raises(ConfigError, match="certifies linf \\(L2"):
        certify(mlp, x, y, threat=evasion.ThreatModel("l2", 0.1), method="milp")
    with pytest.raises(ConfigError, match="certifies linf, l2"):
        certify(mlp, x, y, threat=evasion.ThreatModel("l1", 0.1), method="crown")
    with pytest.raises(UnknownNameError, match="verification method"):
        certify(mlp, x, y, threat=linf, method="deepz")
    with pytest.raises(ConfigError, match="targeted"):
        certify(mlp, x, y, threat=evasion.ThreatModel("linf", 0.1, targeted=True))
    with pytest.raises(ConfigError, match="time_limit"):
        certify(mlp, x, y, threat=linf, method="milp", time_limit=0)
    pooled = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(ConfigError, match=r"milp cannot encode layer '0' \(MaxPool2d\)"):
        certify(pooled, x, y, threat=linf, method="milp")


def test_sandwich_counts_the_band_between_proof_and_attack() -> None:
    from evasion.verification import sandwich

    model = _two_neurons()
    x, y = torch.zeros(3, 1, 1, 1), torch.tensor([1, 1, 0])  # the last sample is a clean error
    certs = []
    for eps in (0.2, 0.3):
        threat = evasion.ThreatModel("linf", eps, bounds=(-1.0, 1.0))
        certs += [certify(model, x, y, threat=threat, method=m) for m in ("ibp", "crown")]
    unbroken = {0.2: torch.tensor([True, True, False]), 0.3: torch.tensor([True, False, False])}
    rows = sandwich(certs, unbroken)
    assert [r.epsilon for r in rows] == [0.2, 0.3]
    assert rows[0].certified == pytest.approx(2 / 3) and rows[0].by_method == pytest.approx(
        {"ibp": 2 / 3, "crown": 2 / 3}
    )
    assert rows[0].unknown == 0 and rows[0].contradictions == 0 and rows[0].exact is None
    assert rows[1].by_method["ibp"] == 0.0 and rows[1].certified == pytest.approx(2 / 3)
    assert rows[1].contradictions == 1  # certified by CROWN, "broken" by the made-up attack outcome
