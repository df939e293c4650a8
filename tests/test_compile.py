"""``Classifier(compile=True)``: torch.compile when it works, eager with a warning when it does not.

Real compilation takes minutes on these machines, so the tests replace ``torch.compile`` by
stand-ins that record the call (or fail like a broken compiler); benchmarks/compile.py measures
the real thing.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks
from evasion.errors import ConfigError, ModelError
from evasion.models.classifier import Classifier


def _clf(**kwargs: object) -> Classifier:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    return Classifier(body, 3, input_shape=(1, 4, 4), **kwargs)  # type: ignore[arg-type]


def test_compiled_module_is_used_and_gives_the_eager_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_compile(module: nn.Module) -> object:
        def run(z: torch.Tensor) -> torch.Tensor:
            calls.append(z.shape[0])
            return module(z)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    clf, eager = _clf(compile=True), _clf()
    x = torch.rand(5, 1, 4, 4)
    assert torch.equal(clf(x), eager(x))
    assert calls == [5], "the compiled function must run the forward"
    r = attacks.make("pgd", steps=3)(
        clf, x, torch.zeros(5, dtype=torch.long), threat=ThreatModel("linf", 0.1)
    )
    assert len(calls) > 1 and r.adversarial.shape == x.shape
    assert set(clf.state_dict()) == set(eager.state_dict()), "compilation adds no state_dict keys"


def test_a_failing_compiler_warns_once_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: nn.Module) -> object:
        def run(z: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: no C++ compiler found\nlong trace")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    clf = _clf(compile=True)
    x = torch.rand(2, 1, 4, 4)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler.*eagerly"):
        out = clf(x)
    assert torch.equal(out, _clf()(x))
    assert clf.compiled is False


def test_hooks_bypass_the_compiled_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        torch, "compile", lambda m: pytest.fail("compiled path used while a hook is attached")
    )
    clf = _clf(compile=True)
    seen: list[torch.Tensor] = []
    handle = clf.module[1].register_forward_hook(lambda m, i, o: seen.append(o))
    clf(torch.rand(2, 1, 4, 4))
    handle.remove()
    assert len(seen) == 1


def test_compiled_classifier_copies_and_pickles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda m: lambda z: m(z))
    clf = _clf(compile=True)
    clf(torch.rand(1, 1, 4, 4))  # the compiled function now exists
    again = pickle.loads(pickle.dumps(copy.deepcopy(clf)))
    assert again.compiled is True and "_compiled_fn" not in again.__dict__


def test_compile_option_is_validated() -> None:
    with pytest.raises(ModelError, match="compile must be True or False"):
        _clf().use_compile("yes")  # type: ignore[arg-type]
    from evasion.config import RunConfig

    assert RunConfig.parse({"compile": True}).compile is True
    assert RunConfig.parse({}).compile is False
    with pytest.raises(ConfigError, match=r"run\.compile"):
        RunConfig.parse({"compile": "fast"})
