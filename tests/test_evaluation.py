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
from evasion.evaluation import CHECKS, AttackSpec, Evaluation, ProgressEvent, SecurityCurve
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
    ev = evaluate({"lin": model}, (x, y), specs, batch_size=8, self_check=False)
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
    warm = evaluate(
        {"m": model}, (x, y), AttackSpec(pgd, "linf", grid, warm_start=True, warm_steps=3), self_check=False
    )
    cold = evaluate({"m": model}, (x, y), AttackSpec(pgd, "linf", grid), self_check=False)
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
    ev = evaluate({"m": model}, (x, y), specs, self_check=False)
    assert any(c.code == "black-box-beats-white-box" and c.attack == "bb" for c in ev.checks)
    assert all(
        c.level == "ok"
        for c in ev.checks_run
        if c.code == "black-box-beats-white-box" and c.attack == "white"
    )
    # with the self-check, a strong white-box attack breaks those points itself (a linear model
    # masks nothing): the flag then says the white-box attack was weak, not the gradients masked
    checked = evaluate({"m": model}, (x, y), specs)
    assert any(c.code == "self-check" and "white" in c.message for c in checked.checks)
    assert not any(c.code == "black-box-beats-white-box" for c in checked.checks)


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
    # 3 clean cells, FGSM at 2 epsilons x 3 batches, and the self-check at the same 6 cells
    assert len(cells) == events[0].total == sum(events[0].groups.values()) == 3 + 2 * 3 + 2 * 3
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


# -- attack-failure checks: the table reproduces the documented thresholds and wording ----------------
def _flagged_records() -> Evaluation:
    """Hand-made records that raise every check at a known count and epsilon."""
    from evasion.evaluation import Cell, CellOutput, SpecInfo
    from evasion.evaluation.records import ATTACK_COLUMNS, CLEAN_COLUMNS, SOURCES, empty_columns

    n = 10
    clean = empty_columns(CLEAN_COLUMNS, n)
    clean["index"][:] = np.arange(n)
    clean["label"][:] = clean["prediction"][:] = clean["repeat_prediction"][:] = 1
    clean["score_change"][2] = 3e-4
    outs = [CellOutput(Cell("clean", "m", "", 0.0, 0), clean)]

    def cols(**rows: dict[int, object]) -> dict[str, np.ndarray]:
        c = empty_columns(ATTACK_COLUMNS, n)
        c["index"][:] = np.arange(n)
        c["label"][:] = c["prediction"][:] = 1
        c["in_budget"][:] = True
        c["source"][:] = SOURCES.index("attack")
        for key, values in rows.items():
            for r, v in values.items():
                c[key][r] = v
        return c

    low = cols(
        reported_success={0: True, 1: True},
        zero_grad={5: 2, 6: 1},
        improving={7: True},
        success={8: True},
        prediction={8: 0},
        source={9: SOURCES.index("inherited")},
    )
    high = cols(
        reported_success={0: True},
        in_budget={3: False, 4: False},
        nonfinite_grad={2: 1, 3: 1, 4: 1},
        zero_grad={5: 1},
        improving={6: True, 7: True},
        success={8: True, 9: True},
        prediction={8: 0, 9: 0},
    )
    black = cols(success={0: True, 1: True}, prediction={0: 2, 1: 2})
    search = cols(minimal_norm={i: 0.5 if i not in (3, 4) else math.inf for i in range(n)})
    search["source"][:] = SOURCES.index("search")
    outs += [
        CellOutput(Cell("budget", "m", "a", 0.1, 0), low),
        CellOutput(Cell("budget", "m", "a", 0.2, 0), high),
        CellOutput(Cell("budget", "m", "bb", 0.2, 0), black),
        CellOutput(Cell("search", "m", "mn", math.inf, 0), search),
    ]
    specs = [
        SpecInfo("a", "linf", (0.0, 0.1, 0.2), "A()", "a"),
        SpecInfo("bb", "linf", (0.0, 0.2), "B()", "bb", black_box=True),
        SpecInfo("mn", "l2", (0.0,), "M()", "mn", minimum_norm=True),
    ]
    return Evaluation.from_outputs(["m"], specs, n, outs)


def test_every_check_fires_with_the_documented_count_epsilon_and_message():
    ev = _flagged_records()
    flagged = [c.to_dict() for c in ev.checks]
    assert flagged == [
        {"code": "randomness", "level": "warn", "model": "m", "attack": "", "epsilon": 0.0, "count": 1,
         "total": 10, "message": "scores changed by up to 0.0003 between identical calls (predictions did not)"},
        {"code": "silent-success", "level": "bad", "model": "m", "attack": "a", "epsilon": 0.1, "count": 3,
         "total": 19, "message": "3 points the attack called adversarial are not (fresh prediction "
         "disagrees); they were counted as not broken"},
        {"code": "out-of-budget", "level": "bad", "model": "m", "attack": "a", "epsilon": 0.2, "count": 2,
         "total": 19, "message": "2 returned points lie outside the epsilon-ball or the box; they were "
         "counted as not broken"},
        {"code": "nonfinite-gradients", "level": "bad", "model": "m", "attack": "a", "epsilon": 0.2,
         "count": 3, "total": 19, "message": "3 samples had NaN/inf input gradients (numerically unstable "
         "model or loss): the attack could not follow them"},
        {"code": "zero-gradients", "level": "warn", "model": "m", "attack": "a", "epsilon": 0.1, "count": 3,
         "total": 16, "message": "3 unbroken samples had all-zero input gradients (saturated loss or "
         "gradient masking): try the margin/DLR loss or a black-box attack"},
        {"code": "incomplete-optimisation", "level": "warn", "model": "m", "attack": "a", "epsilon": 0.2,
         "count": 3, "total": 16, "message": "the objective was still rising at the last step for 3 of 16 "
         "unbroken samples: more steps would likely break more"},
        {"code": "unbounded-not-zero", "level": "warn", "model": "m", "attack": "mn", "epsilon": "inf",
         "count": 2, "total": 10, "message": "without a budget the attack left 2 samples (20.0%) unbroken; "
         "an unbounded attack should reach ~0% accuracy: it is failing, not the model robust"},
        {"code": "black-box-beats-white-box", "level": "warn", "model": "m", "attack": "bb", "epsilon": 0.2,
         "count": 2, "total": 10, "message": "the black-box attack bb broke 2 samples that no white-box "
         "attack broke at epsilon 0.2: the gradients are probably masked"},
    ]  # fmt: skip
    passed = [c for c in ev.checks_run if c.level == "ok"]
    assert len(passed) == 10 and all(c.message == f"{CHECKS[c.code]}: none" for c in passed)


def test_the_check_table_matches_the_docs():
    from pathlib import Path

    from evasion.evaluation.checks import (
        ATTACK_CHECKS,
        INCOMPLETE_FRACTION,
        SCORE_TOLERANCE,
        UNBOUNDED_ACCURACY,
    )

    docs = (Path(__file__).parents[1] / "docs" / "attack-failure-checks.md").read_text()
    assert [c.code for c in ATTACK_CHECKS] == list(CHECKS)[1:6]
    for code in CHECKS:
        assert f"**`{code}`" in docs
    assert (INCOMPLETE_FRACTION, UNBOUNDED_ACCURACY, SCORE_TOLERANCE) == (0.05, 0.01, 1e-4)
    assert "more than 5%" in docs and "more than 1%" in docs and "1e-4" in docs


# -- the Evaluation record ---------------------------------------------------------------------------
def test_an_evaluation_is_frozen_and_computes_its_checks_once():
    import dataclasses

    ev = _flagged_records()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.samples = 3  # type: ignore[misc]
    assert ev.checks_run is not ev.checks_run and ev._all_checks is ev._all_checks
    more = ev.with_examples([])
    assert more is not ev and more.to_dict() == ev.to_dict()


# -- engines ------------------------------------------------------------------------------------------
def test_the_local_engine_is_the_default_loop():
    from evasion.engines import LocalEngine
    from evasion.evaluation import Engine

    engine: Engine = LocalEngine()  # implements the protocol (checked by mypy)
    x, y = data(20)
    spec = [AttackSpec(attacks.PGD(steps=5), "linf", [0.1, 0.3]), AttackSpec(attacks.DeepFool(), "l2", [0.5])]
    default = evaluate({"m": linear_model()}, (x, y), spec, batch_size=8)
    local = evaluate({"m": linear_model()}, (x, y), spec, batch_size=8, engine=engine)
    assert default.to_dict() == local.to_dict()
    assert [r.norm_value for r in default.records] == [r.norm_value for r in local.records]


# -- fingerprints -------------------------------------------------------------------------------------
def test_fingerprint_of_float32_weights_is_their_raw_bytes():
    import hashlib

    from evasion.evaluation.engine import fingerprint

    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    h = hashlib.sha256(b"Sequential")
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    assert fingerprint(net) == h.hexdigest()[:16]


def test_fingerprint_of_bfloat16_weights():
    from evasion.evaluation.engine import fingerprint

    torch.manual_seed(0)
    half = nn.Linear(4, 3).to(torch.bfloat16)
    same = nn.Linear(4, 3)
    same.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    # bfloat16 values hash as the float32 values they are; another model hashes differently
    assert fingerprint(half) == fingerprint(same)
    with torch.no_grad():
        half.weight[0, 0] += 1
    assert fingerprint(half) != fingerprint(same)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fingerprint_of_cuda_weights():
    from evasion.evaluation.engine import fingerprint

    net = nn.Linear(4, 3)
    cpu = fingerprint(net)
    assert fingerprint(net.cuda()) == cpu
    assert fingerprint(net.to(torch.bfloat16)) == fingerprint(net.to(torch.bfloat16).cpu())


def test_epsilon_grids_are_parsed_by_the_shared_checker():
    from evasion.evaluation import check_epsilons

    assert check_epsilons([0.3, 0.1, 0.1]) == (0.0, 0.1, 0.3)
    assert check_epsilons(torch.tensor([0.25], dtype=torch.float64)) == (0.0, 0.25)
    for bad in ("0.1", [True], [-1.0], [math.inf], []):
        with pytest.raises(ConfigError, match="epsilons"):
            check_epsilons(bad)
