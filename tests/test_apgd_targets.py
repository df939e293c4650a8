"""APGD-T (``APGD(targets=k)``): a targeted loss aimed at runner-up classes, untargeted success."""

from __future__ import annotations

import pytest
import torch

from evasion import ThreatModel, attacks
from evasion.attacks.apgd import runner_up_classes
from evasion.attacks.losses import LossObjective, margin
from evasion.errors import ConfigError
from evasion.models.classifier import REJECT
from evasion.perturbations import norm

from .conftest import make_tiny_cnn
from .test_oracles import linear_problem
from .test_reject_option import _linear


def test_runner_up_classes_are_the_other_classes_by_decreasing_score():
    scores = torch.tensor([[0.1, 3.0, 2.0, -1.0, 0.5], [5.0, 4.0, 3.0, 2.0, 9.0]])
    y = torch.tensor([1, 0])
    # the last column is a reject score of a 4-class model: never an aim
    assert runner_up_classes(scores, y, 4, 3).tolist() == [[2, 0, 3], [1, 2, 3]]


class Recording:
    """A margin loss that records the targets (aims) the loop hands it, per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, torch.Tensor | None]] = []

    def __call__(self, scores: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        self.calls.append((int(scores.shape[0]), None if target is None else target.clone()))
        return margin(scores, y, target)


def test_each_run_aims_at_the_next_runner_up_on_the_points_left():
    model, x, y, _ = linear_problem(n=40, seed=3)
    order = runner_up_classes(model(x), y, 5, 2)
    threat = ThreatModel("l2", 0.05)  # small: some points survive the first run
    one = attacks.APGD(steps=5, loss="margin", targets=1, early_stop=False)(model, x, y, threat=threat)
    left = (~one.success).nonzero()[:, 0]
    assert 0 < left.numel() < 40
    rec = Recording()
    r = attacks.APGD(steps=5, loss=rec, targets=2, early_stop=False)(model, x, y, threat=threat)
    assert len(rec.calls) == 2 * 6  # two runs of steps + 1 evaluations
    first, second = rec.calls[:6], rec.calls[6:]
    assert all(n == 40 and t is not None and torch.equal(t, order[:, 0]) for n, t in first)
    assert all(t is not None and torch.equal(t, order[left, 1]) for _, t in second)
    assert bool(r.success[one.success].all()) and r.success.sum() >= one.success.sum()


def test_success_is_untargeted_and_the_budget_holds(one_thread):
    model = make_tiny_cnn(seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(64, 1, 8, 8, generator=g)
    y = model.predict(x)
    for p, eps in (("linf", 0.05), ("l2", 0.5)):
        threat = ThreatModel(p, eps)
        r = attacks.APGD(steps=20, loss="dlr", targets=3)(model, x, y, threat=threat)
        fresh = model.predict(r.adversarial)
        assert torch.equal(fresh, r.predictions) and torch.equal(r.success, fresh != y)
        assert bool((norm(r.adversarial - x, p) <= eps * (1 + 1e-5) + 1e-6).all())
        assert float(r.adversarial.min()) >= 0 and float(r.adversarial.max()) <= 1
        assert r.success.any()
        # each run forwards only the points left: a broken point is not attacked again
        plain = attacks.APGD(steps=20, loss="dlr", targets=1)(model, x, y, threat=threat)
        assert int(r.forwards.sum()) >= int(plain.forwards.sum())
        assert r.success_rate >= plain.success_rate


def test_more_targets_never_break_fewer_points(one_thread):
    model = make_tiny_cnn(seed=2)
    x = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    y = model.predict(x)
    threat = ThreatModel("linf", 0.03)
    rates = [
        attacks.APGD(steps=10, loss="dlr", targets=k)(
            model, x, y, threat=threat, generator=torch.Generator().manual_seed(0)
        ).success_rate
        for k in (1, 2, 4)
    ]
    assert rates == sorted(rates)


def test_the_aimed_loss_sees_a_rejection_as_the_true_class():
    model = _linear(0.0)  # 3 classes + a reject column
    seen: list[int] = []

    def loss(scores, y, target):
        seen.append(scores.shape[1])
        return margin(scores, y, target)

    x = torch.rand(8, 10)
    y = torch.zeros(8, dtype=torch.long)
    LossObjective(loss, aimed=True)(model, x, y, torch.ones(8, dtype=torch.long))
    LossObjective(loss)(model, x, y, torch.ones(8, dtype=torch.long))
    assert seen == [3, 4]  # aimed: the reject column merged into y; targeted: kept as a competitor
    r = attacks.APGD(steps=10, loss="margin", targets=2)(model, x, y, threat=ThreatModel("linf", 0.5))
    assert torch.equal(r.success, (r.predictions != y) & (r.predictions != REJECT))


def test_bad_targets_are_refused():
    model, x, y, _ = linear_problem(n=8)
    with pytest.raises(ConfigError, match="targets"):
        attacks.APGD(targets=-1)
    with pytest.raises(ConfigError, match="exceeds the 4 classes"):
        attacks.APGD(targets=5)(model, x, y, threat=ThreatModel("linf", 0.1))
    with pytest.raises(ConfigError, match="targeted threat"):
        attacks.APGD(targets=2)(
            model, x, y, threat=ThreatModel("linf", 0.1, targeted=True), target=(y + 1) % 5
        )
