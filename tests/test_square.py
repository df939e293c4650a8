"""The Square attack: a score-based search that stays in ball ∩ box ∩ mask, counts its queries,
respects its budget, is deterministic, and never needs a gradient."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.attacks.square import Square, square_fraction
from evasion.errors import ConfigError
from evasion.models.classifier import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")


class Recording(nn.Module):
    """A linear model that records every input row its forward pass sees."""

    def __init__(self, pixels: int = 64, classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)

    @property
    def count(self) -> int:
        return sum(int(b.shape[0]) for b in self.seen)


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, out: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a gradient was requested from a black-box model")


class GradientFree(nn.Module):
    """Refuses to run with autograd on, and its output refuses any backward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.requires_grad:
            raise AssertionError("forward with autograd on: the attacker could take a gradient")
        return _NoBackward.apply(self.inner(x))


def _model(channels: int = 1, size: int = 8, classes: int = 5) -> tuple[Classifier, Recording]:
    rec = Recording(channels * size * size, classes)
    return Classifier(rec, classes, input_shape=(channels, size, size), name="rec"), rec


def _x(n: int, channels: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _check_inside(z: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> None:
    """Every row of ``z`` lies in the ball around ``x`` (one sample), in the box and the mask."""
    lower, upper = threat.box_for(x.expand_as(z))
    assert bool((z >= lower - 1e-6).all()) and bool((z <= upper + 1e-6).all())
    delta = (z - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "linf" else delta.norm(dim=1)
    assert bool((size <= threat.epsilon * (1 + 1e-5) + 1e-6).all()), float(size.max())
    if threat.mask is not None:
        fixed = ~threat.mask_for(x.expand_as(z))
        assert bool((z[fixed] == x.expand_as(z)[fixed]).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_query_stays_in_ball_box_and_mask(norm: str) -> None:
    """Each sample alone (so every recorded query belongs to it): per-pixel bounds and a sticker."""
    clf, rec = _model(channels=2)
    x = _x(3, channels=2).clamp(0.2, 0.8)
    lower = torch.full((2, 8, 8), 0.1)
    upper = torch.full((2, 8, 8), 0.9)
    upper[1] = 0.85
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1:6, 2:7] = True
    eps = 0.3 if norm == "linf" else 1.0
    threat = ThreatModel(norm, eps, bounds=(lower, upper), mask=mask)
    for i in range(3):
        xi = x[i : i + 1]
        y = torch.tensor([int(clf.predict(xi)[0])])
        rec.seen.clear()
        res = Square(queries=60, restarts=2)(clf, xi, y, threat=threat)
        assert rec.count == int(res.forwards[0]) >= 2
        _check_inside(torch.cat(rec.seen), xi, threat)
        _check_inside(res.adversarial, xi, threat)
        assert torch.equal(res.predictions, clf.predict(res.adversarial))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_queries_counted_and_budget_respected(norm: str) -> None:
    clf, rec = _model()
    x = _x(6)
    y = clf.predict(x)
    rec.seen.clear()
    # a budget too small to break anything: every sample runs to the end of both restarts
    res = Square(queries=40, restarts=2)(clf, x, y, threat=ThreatModel(norm, 1e-3))
    assert int(res.forwards.sum()) == rec.count
    assert int(res.forwards.max()) <= 80
    assert int(res.forwards.min()) > 40  # the second restart ran
    assert int(res.backwards.sum()) == 0 and res.access == "scores"
    # a budget of one query: only the clean point
    rec.seen.clear()
    one = Square(queries=1)(clf, x, y, threat=ThreatModel(norm, 0.5))
    assert one.forwards.tolist() == [1] * 6 and rec.count == 6
    assert torch.equal(one.adversarial, x)


def test_broken_samples_stop_and_misclassified_ones_are_left_alone() -> None:
    clf, rec = _model()
    x = _x(8)
    y = clf.predict(x)
    y[0] = (y[0] + 1) % 5  # already wrong: returned unchanged after its clean query
    rec.seen.clear()
    res = Square(queries=300)(clf, x, y, threat=ThreatModel("linf", 0.5))
    assert bool(res.success.all())
    assert int(res.forwards[0]) == 1 and torch.equal(res.adversarial[0], x[0])
    assert int(res.forwards.sum()) == rec.count
    assert int(res.forwards.max()) < 300  # every sample stopped early


def test_square_finds_what_a_gradient_attack_finds_on_a_linear_model() -> None:
    clf, _ = _model(size=8, classes=5)
    x = _x(16)
    y = clf.predict(x)
    threat = ThreatModel("linf", 0.1)
    square = Square(queries=500)(clf, x, y, threat=threat)
    apgd = attacks.APGD(steps=50)(clf, x, y, threat=threat)
    assert square.success_rate >= apgd.success_rate - 1 / 16
    assert square.success_rate > 0.3


class Quadrants(nn.Module):
    """Four classes on 4x4 images: the brightest 2x2 quadrant wins (every class is reachable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, 0].unflatten(1, (2, 2)).unflatten(3, (2, 2)).mean(dim=(2, 4))  # (n, 2, 2)
        return 10 * q.flatten(1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_reaches_the_target(norm: str) -> None:
    clf = Classifier(Quadrants(), 4, input_shape=(1, 4, 4), name="quadrants")
    x = _x(6, size=4)
    y = clf.predict(x)
    target = clf(x).argmin(1)  # the darkest quadrant
    eps = 0.5 if norm == "linf" else 2.0
    res = Square(queries=300)(clf, x, y, threat=ThreatModel(norm, eps, targeted=True), target=target)
    assert bool(res.success.all())
    assert torch.equal(res.predictions, target)
    assert torch.equal(clf.predict(res.adversarial), target)
    assert int(res.forwards.max()) < 300


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_under_a_generator(norm: str) -> None:
    clf, _ = _model(channels=3)
    x = _x(5, channels=3)
    y = clf.predict(x)
    threat = ThreatModel(norm, 0.05 if norm == "linf" else 0.3)
    run = [
        Square(queries=50)(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    ]
    assert torch.equal(run[0].adversarial, run[1].adversarial)
    assert torch.equal(run[0].forwards, run[1].forwards)
    assert not torch.equal(run[0].adversarial, run[2].adversarial)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_runs_on_a_model_that_refuses_gradients(norm: str) -> None:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    clf = Classifier(GradientFree(inner), 5, input_shape=(1, 8, 8), name="no-grad")
    x = _x(4)
    with torch.no_grad():
        y = inner(x).argmax(1)
    res = Square(queries=100)(clf, x, y, threat=ThreatModel(norm, 0.2 if norm == "linf" else 1.0))
    assert bool(res.success.any())
    with pytest.raises(AssertionError, match="autograd on"):  # a white-box attack cannot run
        attacks.PGD(steps=2)(clf, x, y, threat=ThreatModel(norm, 0.2))


def test_l2_uses_the_whole_budget_and_epsilon_zero_changes_nothing() -> None:
    clf, _ = _model(size=12)
    x = _x(4, size=12).clamp(0.3, 0.7)  # far from the box: the L2 point sits on the sphere
    y = clf.predict(x)
    res = Square(queries=30)(clf, x, y, threat=ThreatModel("l2", 0.5))
    moved = res.norms > 0
    assert bool(moved.any())
    assert torch.allclose(res.norms[moved], torch.full_like(res.norms[moved], 0.5), atol=1e-4)
    zero = Square(queries=30)(clf, x, y, threat=ThreatModel("l2", 0.0))
    assert torch.equal(zero.adversarial, x) and zero.access == "scores"


def test_schedule() -> None:
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 10, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 201, 10000) == 0.1
    assert square_fraction(0.8, 9000, 10000) == 0.8 / 512
    assert square_fraction(0.8, 2, 1000) == 0.4  # rescaled to the budget: 20 of 10,000


def test_declared_access_and_registry() -> None:
    assert attacks.get("square") is Square
    assert Square.black_box and Square.access == "scores" and Square.reject_aware
    assert attacks.make("square", queries="100", p_init="0.5").queries == 100
    assert math.isclose(attacks.make("square", p_init="0.5").p_init, 0.5)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queries": 0}, "queries must be an integer >= 1"),
        ({"queries": -5}, "queries must be an integer >= 1"),
        ({"queries": 2.5}, "queries must be an integer"),
        ({"p_init": 0.0}, r"p_init must be in \(0, 1\]"),
        ({"p_init": 1.5}, r"p_init must be in \(0, 1\]"),
        ({"restarts": 0}, "restarts must be an integer >= 1"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Square(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_configuration_through_the_registry() -> None:
    with pytest.raises(ConfigError, match="queries must be an integer >= 1"):
        attacks.make("square", queries="0")


@pytest.mark.parametrize(
    ("param", "words"),
    [("queries=0", "queries must be an integer >= 1"), ("p_init=1.5", "p_init must be in (0, 1]")],
)
def test_cli_bad_input_is_one_line_with_exit_code_2(
    param: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from evasion.cli.main import main

    code = main(
        [
            "attack",
            "--attack",
            "square",
            "--model",
            "digits-mlp",
            "--data",
            "digits",
            "-n",
            "2",
            "--param",
            param,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err
