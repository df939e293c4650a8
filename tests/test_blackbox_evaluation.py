"""Square in evaluations: it feeds the black-box-beats-white-box check, its queries per sample are
reported, it takes no white-box attack's points, and the `thorough` config adds it to the default
suites."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evasion import attacks, evaluate
from evasion.build import build
from evasion.config import EMBEDDED_CONFIGS, load_config, parse_config
from evasion.errors import ConfigError
from evasion.evaluation import AttackSpec
from evasion.models.classifier import Classifier
from evasion.reports.evaluation_report import black_box_queries, build_report

pytestmark = pytest.mark.usefixtures("one_thread")


class Saturating(nn.Module):
    """A linear model whose logits are scaled by 1e4: the softmax saturates, so the cross-entropy's
    input gradient is exactly zero in float32 (gradient masking, like defensive distillation)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e4 * self.net(x)


def _data(model: Classifier, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return x, model.predict(x)


def test_square_beats_masked_gradients_and_the_check_fires() -> None:
    model = Classifier(Saturating(), 4, input_shape=(1, 4, 4), name="saturating")
    x, y = _data(model)
    grid = [0.1, 0.2]
    specs = [
        AttackSpec(attacks.PGD(steps=10, random_start=False), "linf", grid, name="pgd-ce"),
        AttackSpec(attacks.Square(queries=150), "linf", grid, name="square"),
    ]
    ev = evaluate({"m": model}, (x, y), specs, self_check=False, batch_size=24)
    pgd, square = ev.curve("m", "pgd-ce"), ev.curve("m", "square")
    assert pgd.accuracy[-1] >= 0.9  # zero gradients: PGD on the cross-entropy hardly moves
    assert square.accuracy[-1] < 0.8
    codes = {(c.code, c.attack) for c in ev.checks}
    assert ("black-box-beats-white-box", "square") in codes
    assert ("zero-gradients", "pgd-ce") in codes
    # the queries Square made per sample: at least its clean query and start, at most its budget
    # at each epsilon; reported as median and max
    q = black_box_queries(ev, "m", "square")
    assert len(q) == len(x) and q.min() >= 2 and q.max() <= 150 * len(grid)
    html = build_report(ev).render()
    assert "median queries" in html and f"{float(np.median(q)):g}" in html
    assert len(black_box_queries(ev, "m", "pgd-ce")) == len(x)  # defined for any attack


def test_black_box_attacks_take_no_white_box_points() -> None:
    """Fixed-budget attacks first try the minimum-norm attacks' points; a black-box one must not
    (its curve would then credit a white-box attack's success to it)."""
    torch.manual_seed(0)
    model = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), 4, input_shape=(1, 4, 4), name="lin")
    x, y = _data(model, 12)
    specs = [
        AttackSpec(attacks.DeepFool(steps=20), "l2", [1.0], name="deepfool"),
        AttackSpec(attacks.Square(queries=20), "l2", [1.0], name="square"),
        AttackSpec(attacks.PGD(steps=2), "l2", [1.0], name="pgd"),
    ]
    ev = evaluate({"m": model}, (x, y), specs, self_check=False, batch_size=12)
    sources = {r.source for r in ev.records if r.attack == "square" and r.epsilon > 0}
    assert "min-norm" not in sources
    assert "min-norm" in {r.source for r in ev.records if r.attack == "pgd" and r.epsilon > 0}


def test_thorough_config_adds_square_to_the_default_suites() -> None:
    assert set(EMBEDDED_CONFIGS) >= {"default", "thorough"}
    config = load_config("thorough")
    assert config.run.default_suite and config.source == "<thorough>"
    assert [(a.attack, a.norm, a.params["queries"]) for a in config.attacks] == [
        ("square", "linf", 5000),
        ("square", "l2", 5000),
    ]
    default = load_config()
    assert (config.models, config.epsilons, config.data) == (default.models, default.epsilons, default.data)


def test_default_suite_plus_attacks_builds_both() -> None:
    raw = {
        "run": {"default_suite": True},
        "data": {"name": "digits", "samples": 4},
        "models": [{"name": "digits-mlp"}],
        "epsilons": {"linf": [0.1]},
        "attacks": [{"attack": "square", "norm": "linf", "params": {"queries": 10}}],
    }
    _, _, specs = build(parse_config(raw), torch.device("cpu"))
    names = [s.name for s in specs]
    assert "apgd-ce-linf" in names and names[-1] == "square-linf"
    raw["attacks"] = [{"attack": "square", "norm": "linf", "name": "apgd-ce-linf"}]
    with pytest.raises(ConfigError, match="taken by the default suite"):
        build(parse_config(raw), torch.device("cpu"))
    with pytest.raises(ConfigError, match="needs the \\[epsilons\\]"):
        parse_config(
            {**raw, "epsilons": {}, "attacks": [{"attack": "square", "norm": "linf", "epsilons": [0.1]}]}
        )
    with pytest.raises(ConfigError, match=r"run\.default_suite must be true or false"):
        parse_config({**raw, "run": {"default_suite": "yes"}})
