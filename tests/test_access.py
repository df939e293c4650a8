"""Access levels: a victim exposes scores or labels only, counts every query, passes no gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion.access import Victim
from evasion.attacks import PGD
from evasion.defenses.reject import ThresholdReject
from evasion.errors import AccessError, ConfigError, InputError, ModelError
from evasion.models.classifier import REJECT, Classifier
from evasion.threat_model import ThreatModel


class Counting(nn.Module):
    """A linear model that counts the images its forward pass sees (independently of the victim)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += int(x.shape[0])
        return self.net(x)


def _model() -> tuple[Classifier, Counting]:
    inner = Counting()
    return Classifier(inner, 4, input_shape=(1, 4, 4), name="counting"), inner


def _x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_query_count_equals_the_forwards_the_model_saw() -> None:
    clf, inner = _model()
    victim = Victim(clf, view="scores")
    victim.scores(_x(5))
    victim.labels(_x(3, 1))
    victim.scores(_x(1, 2))
    assert victim.queries == inner.seen == 9


def test_scores_and_labels_match_the_model() -> None:
    clf, _ = _model()
    x = _x(6)
    victim = Victim(clf, view="scores")
    s = victim.scores(x)
    assert torch.equal(s, clf(x).detach())
    assert torch.equal(victim.labels(x), clf(x).argmax(1))
    assert not s.requires_grad and s.grad_fn is None


def test_labels_view_refuses_scores_and_charges_nothing() -> None:
    clf, inner = _model()
    victim = Victim(clf, view="labels")
    with pytest.raises(AccessError, match="labels only"):
        victim.scores(_x(2))
    assert victim.queries == inner.seen == 0
    assert victim.labels(_x(2)).shape == (2,)
    assert victim.queries == 2


def test_labels_include_reject() -> None:
    base, _ = _model()
    # theta far above every score: the model rejects everything
    victim = Victim(ThresholdReject(base, theta=1e6), view="labels")
    assert victim.rejects
    assert (victim.labels(_x(3)) == REJECT).all()
    assert Victim(ThresholdReject(base, theta=1e6), view="scores").scores(_x(2)).shape == (2, 5)


def test_no_gradient_passes_through() -> None:
    clf, inner = _model()
    victim = Victim(clf, view="scores")
    x = _x(2).requires_grad_(True)
    with pytest.raises(AccessError, match="require grad"):
        victim.scores(x)
    with pytest.raises(AccessError):
        victim.labels(x)
    assert victim.queries == inner.seen == 0
    with torch.enable_grad():
        out = victim.scores(_x(2))
    with pytest.raises(RuntimeError):  # no graph: a backward pass fails
        out.sum().backward()
    assert all(p.grad is None for p in clf.parameters())
    with pytest.raises(AccessError, match="does not hand out its model"):
        _ = victim.model


def test_a_victim_is_not_a_model_for_white_box_attacks() -> None:
    clf, _ = _model()
    victim = Victim(clf, view="scores")
    with pytest.raises(ModelError):
        PGD(steps=1)(victim, _x(2), torch.zeros(2, dtype=torch.long), threat=ThreatModel("linf", 0.1))  # type: ignore[arg-type]


def test_budget_is_enforced_before_the_model_runs() -> None:
    clf, inner = _model()
    victim = Victim(clf, view="scores", max_queries=5)
    victim.scores(_x(4))
    assert victim.remaining == 1
    with pytest.raises(AccessError, match="max_queries=5"):
        victim.scores(_x(2))
    assert victim.queries == inner.seen == 4
    victim.labels(_x(1))
    assert victim.remaining == 0
    with pytest.raises(AccessError, match="budget"):
        victim.labels(_x(1))


def test_plain_module_is_wrapped_on_first_query() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    victim = Victim(net, view="scores")
    with pytest.raises(AccessError, match="first query"):
        _ = victim.num_classes
    assert victim.scores(_x(2)).shape == (2, 3)
    assert victim.num_classes == 3 and victim.bounds == (0.0, 1.0) and not victim.rejects
    assert victim.queries == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"view": "gradients"}, "view must be one of"),
        ({"view": "scores", "max_queries": 0}, "max_queries must be a positive integer"),
        ({"view": "scores", "max_queries": -3}, "max_queries must be a positive integer"),
        ({"view": "scores", "max_queries": 2.5}, "max_queries must be a positive integer"),
        ({"view": "scores", "max_queries": True}, "max_queries must be a positive integer"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], match: str) -> None:
    clf, _ = _model()
    with pytest.raises(ConfigError, match=match):
        Victim(clf, **kwargs)  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    clf, _ = _model()
    with pytest.raises(ConfigError, match="wraps a torch"):
        Victim("model", view="scores")  # type: ignore[arg-type]
    victim = Victim(clf, view="scores")
    with pytest.raises(InputError, match="tensor of images"):
        victim.scores([[0.0]])  # type: ignore[arg-type]
    with pytest.raises(InputError):  # outside the model's bounds
        victim.scores(_x(2) + 2.0)
    assert victim.queries == 0
    assert issubclass(AccessError, InputError)


def test_attack_results_record_access() -> None:
    clf, _ = _model()
    res = PGD(steps=2)(clf, _x(2), torch.zeros(2, dtype=torch.long), threat=ThreatModel("linf", 0.1))
    assert res.access == "gradients"
    res0 = PGD(steps=2)(clf, _x(2), torch.zeros(2, dtype=torch.long), threat=ThreatModel("linf", 0.0))
    assert res0.access == "gradients"
