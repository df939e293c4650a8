"""Every registered attack declares what it can do, and does what it declares.

The evaluator reads these declarations instead of probing attributes: ``minimum_norm``,
``supports_targeted``, ``black_box``, ``reject_aware`` (class variables) and the protocols
``Traceable``, ``RandomStarting`` and ``Stepped`` (options it may read or change).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.attacks.base import Attack, RandomStarting, Stepped, Traceable
from evasion.errors import ConfigError
from evasion.models.classifier import REJECT, Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

ATTACKS = sorted(attacks.REGISTRY.items())
EPSILON = {"linf": 0.5, "l2": 1.0, "l1": 1.0, "l0": 1.0}
WHOLE_BOX = {"linf": 1.0, "l2": 4.0, "l1": 16.0, "l0": 16.0}  # budgets that reach every corner of [0, 1]^16
#: smaller budgets for query-based attacks whose defaults would dominate the run on samples that
#: cannot be broken (every assertion here holds at any budget)
LIGHT: dict[str, dict[str, int]] = {"square": {"queries": 300}}


class _RejectToy(nn.Module):
    """Scores ``[0, 4u, 5u + 8v + 0.5]`` of ``u, v = x - 0.5``: the reject score beats class 1
    along ``u`` alone (an attacker blind to it ends rejected), and falls with ``v``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x[:, 0, 0, 0] - 0.5, x[:, 0, 0, 1] - 0.5
        return torch.stack([torch.zeros_like(u), 4 * u, 5 * u + 8 * v + 0.5], 1)


class RejectToy(Classifier):
    rejects = True

    def __init__(self) -> None:
        super().__init__(_RejectToy(), 2, input_shape=(1, 1, 2), name="reject-toy")


def _linear() -> Classifier:
    torch.manual_seed(0)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 5)), 5, input_shape=(1, 4, 4), name="lin")


def _threat(cls: type[Attack], norm: str, **kw: object) -> ThreatModel:
    return ThreatModel(norm, math.inf if cls.minimum_norm else EPSILON[norm], **kw)  # type: ignore[arg-type]


def _centre(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 1, 2), 0.5), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize(("name", "cls"), ATTACKS)
def test_declarations_have_the_declared_types(name: str, cls: type[Attack]) -> None:
    assert cls.name == name
    for flag in ("minimum_norm", "supports_targeted", "black_box", "reject_aware"):
        assert isinstance(getattr(cls, flag), bool), flag
        assert flag not in {f.name for f in dataclasses.fields(cls)}, f"{flag} must be a class variable"
    # what the attacker sees (evasion.access): black-box exactly when it is not the gradients
    assert cls.access in ("gradients", "scores", "labels", "transfer")
    assert cls.black_box == (cls.access != "gradients")
    assert cls.norms and set(cls.norms) <= {"linf", "l2", "l1", "l0"}
    attack = cls()
    options = {f.name: f.type for f in dataclasses.fields(cls)}
    assert isinstance(attack, Traceable) == ("trace" in options)
    assert isinstance(attack, RandomStarting) == ("random_start" in options)
    assert isinstance(attack, Stepped) == ("steps" in options)
    if isinstance(attack, Stepped):
        assert isinstance(attack.steps, int) and attack.steps >= 1


@pytest.mark.parametrize(("name", "cls"), ATTACKS)
def test_norms_minimum_norm_black_box_and_trace_match_behaviour(name: str, cls: type[Attack]) -> None:
    model = RejectToy()
    x, y = _centre()
    for norm in ("linf", "l2", "l1", "l0"):
        if norm not in cls.norms:
            with pytest.raises(ConfigError, match=f"does not support the {norm} norm"):
                cls()(model, x, y, threat=ThreatModel(norm, 1.0))
            continue
        result = cls()(model, x, y, threat=_threat(cls, norm))
        assert (result.minimal_norms is not None) == cls.minimum_norm
        # a white-box attack computes input gradients on the samples it attacks, a black-box one never
        assert (int(result.backwards.sum()) == 0) == cls.black_box
    attack = cls()
    norm = cls.norms[0]
    if isinstance(attack, Traceable):
        traced = attack.replace(trace=True)(model, x, y, threat=_threat(cls, norm))
        assert traced.loss_trace is not None and traced.loss_trace.shape[1] == len(x)
    else:
        assert attack(model, x, y, threat=_threat(cls, norm)).loss_trace is None


@pytest.mark.parametrize(("name", "cls"), ATTACKS)
def test_targeted_support_is_declared(name: str, cls: type[Attack]) -> None:
    """A targeted attack reaches the least likely class on some samples (an untargeted one never
    does here); an untargeted-only attack refuses a targeted threat."""
    model = _linear()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y, target = model.predict(x), model(x).argmin(1)
    norm = cls.norms[0]
    threat = ThreatModel(norm, math.inf if cls.minimum_norm else WHOLE_BOX[norm], targeted=True)
    if not cls.supports_targeted:
        with pytest.raises(ConfigError, match="untargeted only"):
            cls()(model, x, y, threat=threat, target=target)
        return
    result = cls(**LIGHT.get(name, {}))(model, x, y, threat=threat, target=target)
    assert torch.equal(result.success, result.predictions == target)
    assert bool(result.success.any())


@pytest.mark.parametrize(("name", "cls"), ATTACKS)
def test_reject_awareness_is_declared(name: str, cls: type[Attack]) -> None:
    """A reject-aware attack escapes the toy's reject score; one blind to it ends rejected."""
    if cls.black_box and not cls.reject_aware:
        return  # no objective that could see the reject score (noise); score-based ones are tested
    model = RejectToy()
    x, y = _centre()
    assert bool((model.predict(x) == REJECT).all())
    result = cls()(model, x, y, threat=_threat(cls, "linf" if "linf" in cls.norms else cls.norms[0]))
    if cls.reject_aware:
        assert bool(result.success.all()) and bool((result.predictions == 1).all())
    else:
        assert not bool(result.success.any()) and bool((result.predictions == REJECT).all())
