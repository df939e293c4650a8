"""Security evaluation: curves, worst case, reject semantics, efficiency rules, determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from evasion import ThreatModel, attacks, evaluate
from evasion.errors import ConfigError, InputError, UnknownNameError
from evasion.evaluation import AttackSpec, Evaluation, ProgressEvent, SecurityCurve
from evasion.models.classifier import REJECT, Classifier

from .conftest import make_tiny_cnn


def linear_model(seed: int = 0, classes: int = 4) -> Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    return Classifier(net, classes, input_shape=(1, 4, 4), name="linear")


def data(n: int = 30, seed: int = 0, model: Classifier | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    model = model or linear_model()
    y = model.predict(x)
    y[:3] = (y[:3] + 1) % model.num_classes  # a few clean errors
    return x, y


class ThresholdReject(Classifier):
    """Reject when the top class score is <= theta (a reject-score column equal to theta)."""

    rejects = True

    def __init__(self, base: Classifier, theta: float):
        super().__init__(base.module, base.num_classes, input_shape=base.input_shape, name="reject")
        self.theta = theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.module(self.preprocess(x))
        return self.check_scores(torch.cat([s, torch.full_like(s[:, :1], self.theta)], 1))


LINF = [0.05, 0.1, 0.2, 0.4]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_api_curve_shapes_and_invariants():
    model = linear_model()
    x, y = data()
    specs = [
        AttackSpec(attacks.FGSM(), "linf", LINF),
        AttackSpec(attacks.PGD(steps=10), "linf", LINF, name="pgd"),
        AttackSpec(attacks.DeepFool(steps=20), "l2", [0.2, 0.5, 1.0]),
    ]
    ev = evaluate({"lin": model}, (x, y), specs, batch_size=8)
    assert isinstance(ev, Evaluation)
    c = ev.curve("lin", "pgd")
    assert isinstance(c, SecurityCurve)
    assert c.epsilons == [0.0, *LINF]
    assert len(c.accuracy) == len(c.rejected) == len(c.misclassified) == 5
    clean = float((model.predict(x) == y).float().mean())
    assert c.accuracy[0] == pytest.approx(clean)
    for curve in ev.curves():
        for a, r, m in zip(curve.accuracy, curve.rejected, curve.misclassified):
            assert a + r + m == pytest.approx(1.0)
        assert all(b <= a + 1e-12 for a, b in zip(curve.accuracy, curve.accuracy[1:])), "curves never rise"
        assert 0.0 <= curve.auc() <= 1.0
        assert curve.to_dict()["epsilons"][0] == 0.0
    worst = ev.worst_case("lin", "linf")
    for name in ("fgsm-linf", "pgd"):
        assert all(w <= a + 1e-12 for w, a in zip(worst.accuracy, ev.curve("lin", name).accuracy))
    assert set(worst.attacks) == {"fgsm-linf", "pgd"}
    records = ev.records
    assert {(r.attack, r.epsilon) for r in records} >= {("pgd", 0.0), ("pgd", 0.4), ("deepfool-l2", math.inf)}
    assert len([r for r in records if r.attack == "pgd"]) == 30 * 5
    minimal = ev.minimal_norms("lin", "deepfool-l2")
    assert minimal is not None and minimal.shape == (30,)
    assert ev.minimal_norms("lin", "pgd") is None
    with pytest.raises(UnknownNameError):
        ev.curve("lin", "nope")


def test_worst_case_is_per_sample_not_per_attack():
    """Two attacks that each break half of the samples: the worst case breaks all of them."""
    ev = _two_halves()
    assert ev.curve("m", "a").accuracy[-1] == pytest.approx(0.5)
    assert ev.curve("m", "b").accuracy[-1] == pytest.approx(0.5)
    assert ev.worst_case("m", "linf").accuracy[-1] == pytest.approx(0.0)


def _two_halves() -> Evaluation:
    from evasion.evaluation.records import ATTACK_COLUMNS, CLEAN_COLUMNS, Cell, CellOutput, empty_columns
    from evasion.evaluation.spec import SpecInfo

    n = 10
    clean = empty_columns(CLEAN_COLUMNS, n)
    clean["index"][:] = np.arange(n)
    outs = [CellOutput(Cell("clean", "m", "", 0.0, 0), clean)]
    for name, parity in (("a", 0), ("b", 1)):
        cols = empty_columns(ATTACK_COLUMNS, n)
        cols["index"][:] = np.arange(n)
        cols["success"][:] = np.arange(n) % 2 == parity
        cols["prediction"][:] = np.where(cols["success"], 1, 0)
        outs.append(CellOutput(Cell("budget", "m", name, 0.1, 0), cols))
    specs = [SpecInfo(s, "linf", (0.0, 0.1), "x", "x") for s in ("a", "b")]
    return Evaluation.from_outputs(["m"], specs, n, outs)


def test_fgsm_curve_dominates_independent_runs_per_sample():
    """FGSM has no randomness: each epsilon computed independently breaks a subset of what the
    evaluation (broken stays broken, skip broken points) reports broken."""
    model = make_tiny_cnn()
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    grid = [0.02, 0.05, 0.1, 0.2]
    ev = evaluate({"m": model}, (x, y), AttackSpec(attacks.FGSM(), "linf", grid), batch_size=16)
    by_eps = {e: {r.index: r.success for r in ev.records if r.epsilon == e} for e in grid}
    for eps in grid:
        independent = attacks.FGSM()(model, x, y, threat=ThreatModel("linf", eps))
        broken_alone = set(independent.success.nonzero()[:, 0].tolist())
        broken_here = {i for i, s in by_eps[eps].items() if s}
        assert broken_alone <= broken_here


def test_pgd_cells_without_warm_start_dominate_independent_runs_per_sample():
    """A cell is the independent run of its batch restricted to the unbroken samples (the random
    start of each sample does not depend on which others are attacked), plus the samples broken at
    smaller epsilons: so it breaks at least what an independent run of that epsilon breaks."""
    model = make_tiny_cnn()
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    grid = [0.01, 0.02, 0.04, 0.08]
    pgd = attacks.PGD(steps=8)
    chain = evaluate({"m": model}, (x, y), AttackSpec(pgd, "linf", grid, warm_start=False), batch_size=16)
    for eps in grid:
        alone = evaluate(
            {"m": model}, (x, y), AttackSpec(pgd, "linf", [eps], warm_start=False), batch_size=16
        )
        broken_alone = {r.index for r in alone.records if r.epsilon == eps and r.success}
        broken_chain = {r.index for r in chain.records if r.epsilon == eps and r.success}
        assert broken_alone <= broken_chain
        assert broken_alone, "the test needs an epsilon grid where PGD breaks something"


def test_warm_start_continues_from_the_previous_points():
    model = linear_model()
    x, y = data()
    grid = [0.02, 0.04, 0.08]
    pgd = attacks.PGD(steps=6)
    warm = evaluate({"m": model}, (x, y), AttackSpec(pgd, "linf", grid, warm_start=True, warm_steps=3))
    cold = evaluate({"m": model}, (x, y), AttackSpec(pgd, "linf", grid))
    for ev in (warm, cold):
        acc = ev.curve("m", "pgd-linf").accuracy
        assert all(b <= a for a, b in itertools.pairwise(acc))
    attacked = [r for r in warm.records if r.epsilon == 0.08 and r.source == "attack"]
    assert attacked and max(r.backwards for r in attacked) <= 3  # warm_steps on warm-started epsilons
    assert max(r.backwards for r in cold.records if r.epsilon == 0.08) == 6


def test_broken_points_are_not_attacked_again_and_keep_their_point():
    model = linear_model()
    x, y = data()
    ev = evaluate({"m": model}, (x, y), AttackSpec(attacks.PGD(steps=5), "linf", LINF), batch_size=30)
    recs = {(r.epsilon, r.index): r for r in ev.records}
    for eps_prev, eps in itertools.pairwise(LINF):
        for i in range(30):
            before, now = recs[(eps_prev, i)], recs[(eps, i)]
            if before.success:
                assert now.success and now.source == "inherited"
                assert now.forwards == 0 and now.backwards == 0
                assert now.norm_value == before.norm_value <= eps_prev + 1e-6
    clean_errors = [r for r in ev.records if r.epsilon == LINF[0] and r.index < 3]
    assert all(r.source == "inherited" and r.forwards == 0 for r in clean_errors)


def test_minimum_norm_results_are_reused_but_reverified():
    model = linear_model()
    x, y = data()
    specs = [
        AttackSpec(attacks.DeepFool(steps=30), "l2", [0.3, 0.6, 1.2]),
        AttackSpec(attacks.PGD(steps=10), "l2", [0.3, 0.6, 1.2]),
    ]
    ev = evaluate({"m": model}, (x, y), specs, batch_size=10)
    reused = [r for r in ev.records if r.attack == "pgd-l2" and r.source == "min-norm"]
    assert reused, "PGD should start from DeepFool's minimal points where they fit"
    minimal = ev.minimal_norms("m", "deepfool-l2")
    assert minimal is not None
    for r in reused:
        assert r.success and r.norm_value <= r.epsilon + 1e-6
        assert float(minimal[r.index]) <= r.epsilon + 1e-9
        assert r.forwards == 1 and r.backwards == 0  # one fresh prediction, no attack
    pgd, df = ev.curve("m", "pgd-l2"), ev.curve("m", "deepfool-l2")
    assert all(p <= d + 1e-12 for p, d in zip(pgd.accuracy, df.accuracy))
    alone = evaluate({"m": model}, (x, y), specs, batch_size=10, reuse_minimal_norms=False)
    assert not [r for r in alone.records if r.source == "min-norm"]


class _LyingMinimumNorm(attacks.DeepFool):
    """Claims a tiny minimal norm for every sample but returns the clean point (never adversarial)."""

    def _run(self, problem):  # type: ignore[no-untyped-def]
        out = super()._run(problem)
        return out.__class__(
            **{
                **out.__dict__,
                "adversarial": problem.x.clone(),
                "success": torch.ones_like(out.success),
                "minimal_norms": torch.full_like(out.norms, 1e-3),
            }
        )


def test_a_lying_minimum_norm_attack_is_not_trusted():
    model = linear_model()
    x, y = data()
    specs = [
        AttackSpec(_LyingMinimumNorm(steps=5), "l2", [0.5], name="liar"),
        AttackSpec(attacks.FGSM(), "l2", [0.5]),
    ]
    ev = evaluate({"m": model}, (x, y), specs, batch_size=30)
    liar = ev.curve("m", "liar")
    assert liar.accuracy[1] == pytest.approx(liar.accuracy[0])  # nothing verified broken
    assert not [r for r in ev.records if r.source == "min-norm"]
    codes = {(c.code, c.attack) for c in ev.checks}
    assert ("silent-success", "liar") in codes
    assert ("unbounded-not-zero", "liar") in codes


def test_reject_option_semantics():
    base = linear_model()
    x, y = data()
    scores = base.scores(x).max(1).values
    theta = float(scores.quantile(0.3))  # the 30% least confident clean inputs are rejected
    model = ThresholdReject(base, theta)
    ev = evaluate({"r": model}, (x, y), AttackSpec(attacks.PGD(steps=10), "linf", LINF), batch_size=30)
    c = ev.curve("r", "pgd-linf")
    clean_pred = model.predict(x)
    assert c.rejected[0] == pytest.approx(float((clean_pred == REJECT).float().mean()))
    assert c.accuracy[0] == pytest.approx(float((clean_pred == y).float().mean()))
    assert c.rejected[0] > 0
    recs = [r for r in ev.records if r.epsilon > 0]
    assert all(not r.success for r in recs if r.rejected), "a rejected adversarial input is not an evasion"
    assert c.defended[1] == pytest.approx(c.accuracy[1] + c.rejected[1])
    assert c.defended[0] == pytest.approx(c.accuracy[0])


def test_randomness_check_flags_a_stochastic_model():
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x.flatten(1)) + 10 * torch.randn(x.shape[0], 4)

    model = Classifier(Noisy(), 4, input_shape=(1, 4, 4), name="noisy")
    x, y = data(20)
    ev = evaluate({"n": model}, (x, y), AttackSpec(attacks.FGSM(), "linf", [0.1]))
    assert any(c.code == "randomness" and c.level == "bad" for c in ev.checks)


def test_zero_gradients_and_incomplete_optimisation_are_flagged():
    class Step(nn.Module):  # piecewise constant: the input gradient is zero everywhere
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = (x.flatten(1)[:, :4] > 0.5).float()
            return h * 3 + x.flatten(1)[:, :4] * 0

    model = Classifier(Step(), 4, input_shape=(1, 4, 4), name="step")
    x, y = data(20)
    y = model.predict(x)
    slow = attacks.PGD(steps=8, step_size=1e-4, random_start=False)
    ev = evaluate({"s": model, "lin": linear_model()}, (x, y), AttackSpec(slow, "linf", [0.3], name="slow"))
    codes = {(c.code, c.model) for c in ev.checks}
    assert ("zero-gradients", "s") in codes
    assert ("incomplete-optimisation", "lin") in codes


class _OutOfBudget(attacks.FGSM):
    def _run(self, problem):  # type: ignore[no-untyped-def]
        out = super()._run(problem)
        far = (problem.x + 3 * problem.threat.epsilon).clamp(0, 1)
        return out.__class__(**{**out.__dict__, "adversarial": far})


def test_out_of_budget_points_are_flagged_and_not_counted():
    model = linear_model()
    x, y = data()
    ev = evaluate({"m": model}, (x, y), AttackSpec(_OutOfBudget(), "linf", [0.2], name="cheat"))
    assert any(c.code == "out-of-budget" and c.level == "bad" for c in ev.checks)
    assert all(r.norm_value <= 0.2 + 1e-6 for r in ev.records if r.success)


class _BlackBox(attacks.PGD):
    black_box = True


def test_black_box_beating_white_box_is_flagged():
    model = linear_model()
    x, y = data()
    weak = attacks.PGD(steps=1, step_size=1e-4, random_start=False)
    specs = [
        AttackSpec(weak, "linf", [0.3], name="white"),
        AttackSpec(_BlackBox(steps=20), "linf", [0.3], name="bb"),
    ]
    ev = evaluate({"m": model}, (x, y), specs)
    assert any(c.code == "black-box-beats-white-box" and c.attack == "bb" for c in ev.checks)
    assert all(
        c.level == "ok"
        for c in ev.checks_run
        if c.code == "black-box-beats-white-box" and c.attack == "white"
    )


def test_evaluation_is_deterministic_and_independent_of_the_batch_order():
    model = make_tiny_cnn()
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    spec = AttackSpec(attacks.PGD(steps=5), "l2", [0.1, 0.3])
    a = evaluate({"m": model}, (x, y), spec, batch_size=8, seed=1)
    b = evaluate({"m": model}, (x, y), spec, batch_size=8, seed=1)
    assert [r.prediction for r in a.records] == [r.prediction for r in b.records]
    assert [r.norm_value for r in a.records] == [r.norm_value for r in b.records]


def test_targeted_and_masked_specs():
    model = linear_model()
    x, y = data()
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    specs = [
        AttackSpec(attacks.PGD(steps=10), "linf", [0.5], name="sticker", mask=mask),
        AttackSpec(
            attacks.PGD(steps=10),
            "linf",
            [0.5],
            name="to-0",
            targeted=True,
            targets=lambda t: torch.zeros_like(t),
        ),
    ]
    ev = evaluate({"m": model}, (x, y), specs, batch_size=7)
    for r in ev.records:
        if r.attack == "to-0" and r.success and r.epsilon > 0:
            assert r.prediction == 0
    # the sticker attack only changes the masked pixels: its points differ from x only there
    assert ev.worst_case("m", "linf").attacks == ("sticker",)


def test_progress_events():
    events: list[ProgressEvent] = []
    x, y = data(12)
    evaluate(
        {"m": linear_model()},
        (x, y),
        AttackSpec(attacks.FGSM(), "linf", [0.1, 0.2]),
        batch_size=5,
        progress=events.append,
    )
    assert events[0].kind == "start" and events[-1].kind == "finish"
    cells = [e for e in events if e.kind == "cell"]
    assert len(cells) == events[0].total == sum(events[0].groups.values()) == 3 + 2 * 3
    assert [e.done for e in cells] == list(range(1, len(cells) + 1))


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: AttackSpec(attacks.PGD(), "linf", [0.1, -0.2]), ConfigError),
        (lambda: AttackSpec(attacks.PGD(), "linf", [0.1, math.inf]), ConfigError),
        (lambda: AttackSpec(attacks.PGD(), "linf", [math.nan]), ConfigError),
        (lambda: AttackSpec(attacks.PGD(), "linf", []), ConfigError),
        (lambda: AttackSpec(attacks.CarliniWagnerL2(), "linf", [0.1]), ConfigError),
        (lambda: AttackSpec(attacks.PGD(), "l7", [0.1]), UnknownNameError),
        (lambda: AttackSpec(attacks.PGD(), "linf", [0.1], targeted=True), ConfigError),
        (lambda: AttackSpec(attacks.PGD(), "linf", [0.1], name="clean"), ConfigError),
    ],
)
def test_bad_specs(make, error):
    with pytest.raises(error):
        make()


def test_bad_evaluate_inputs():
    spec = AttackSpec(attacks.FGSM(), "linf", [0.1])
    x, y = data(6)
    with pytest.raises(ConfigError):
        evaluate({"m": linear_model()}, (x, y), [spec, spec])
    with pytest.raises(ConfigError):
        evaluate({"m": linear_model()}, (x, y), spec, batch_size=0)
    with pytest.raises(InputError):
        evaluate({"m": linear_model()}, (x, y[:3]), spec)
    with pytest.raises(InputError):
        evaluate({"m": linear_model()}, (x * 5, y), spec)
