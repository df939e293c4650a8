"""Attack-failure checks, computed from the records of every evaluation.

After Pintor et al., "Indicators of Attack Failure" (NeurIPS 2022) and AutoAttack's flags: an
evaluation whose attacks silently failed overstates robustness, so each result comes with the
checks below. ``docs/attack-failure-checks.md`` explains each one and what to do about it.

=========================  ====================================================================
``randomness``             the model's predictions (or scores) differ between identical calls
``silent-success``         the attack reported a success that the evaluator's fresh prediction denies
``out-of-budget``          a returned point lies outside the epsilon-ball or the box
``nonfinite-gradients``    NaN/inf input gradients during the attack
``zero-gradients``         all-zero input gradients on samples the attack did not break
``incomplete-optimisation`` the objective was still rising at the last step on unbroken samples
``unbounded-not-zero``     a minimum-norm attack without a budget left samples unbroken
``black-box-beats-white-box`` a black-box/transfer attack broke samples no white-box attack broke
``self-check``             the self-check re-attack broke more than 1% of the samples every attack left
=========================  ====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .curves import MISCLASSIFIED, worst_status
from .records import SOURCES

if TYPE_CHECKING:
    from .result import Evaluation

__all__ = ["ATTACK_CHECKS", "CHECKS", "AttackCheck", "Check", "Level", "Samples", "Tally", "run_checks"]

#: ``"ok"`` (passed), ``"warn"`` (the number may be too optimistic) or ``"bad"`` (it cannot be
#: trusted as is)
Level = Literal["ok", "warn", "bad"]

#: every check, with a one-line summary (the docs have a paragraph per check)
CHECKS: dict[str, str] = {
    "randomness": "predictions change between identical calls",
    "silent-success": "reported successes that a fresh prediction denies",
    "out-of-budget": "points outside the epsilon-ball or the box",
    "nonfinite-gradients": "NaN or infinite input gradients",
    "zero-gradients": "all-zero input gradients on unbroken samples",
    "incomplete-optimisation": "objective still improving at the last step",
    "unbounded-not-zero": "unbounded attack leaves samples unbroken",
    "black-box-beats-white-box": "black-box attack breaks samples the white-box ones miss",
    "self-check": "the self-check re-attack breaks samples every attack left unbroken",
}

_ATTACKED = (SOURCES.index("attack"), SOURCES.index("search"), SOURCES.index("projected"))

#: thresholds: fraction of the attacked samples above which a check warns
INCOMPLETE_FRACTION = 0.05
UNBOUNDED_ACCURACY = 0.01
SELF_CHECK_FRACTION = 0.01
SCORE_TOLERANCE = 1e-4

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class Check:
    """The outcome of one check on one model (and attack, and epsilon where it applies).

    ``level``: ``"ok"``, ``"warn"`` (the number may be too optimistic) or ``"bad"`` (the number
    cannot be trusted). ``count`` of ``total`` samples triggered it.
    """

    code: str
    level: Level
    model: str
    attack: str
    epsilon: float
    count: int
    total: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "level": self.level,
            "model": self.model,
            "attack": self.attack,
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else "inf",
            "count": self.count,
            "total": self.total,
            "message": self.message,
        }


def _check(
    code: str, bad: bool, level: Level, model: str, attack: str, eps: float, count: int, total: int, msg: str
) -> Check:
    return Check(
        code,
        level if bad else "ok",
        model,
        attack,
        eps,
        count,
        total,
        msg if bad else CHECKS[code] + ": none",
    )


def _randomness(ev: Evaluation, model: str) -> Check:
    c = ev.clean_columns[model]
    changed = int(np.sum(c["prediction"] != c["repeat_prediction"]))
    drift = float(np.max(c["score_change"])) if len(c["score_change"]) else 0.0
    if changed:
        return _check(
            "randomness",
            True,
            "bad",
            model,
            "",
            0.0,
            changed,
            len(c["index"]),
            f"{changed} predictions changed between two identical calls: the model is random "
            "(dropout/sampling in eval?); every number in this run is a random variable",
        )
    return _check(
        "randomness",
        drift > SCORE_TOLERANCE,
        "warn",
        model,
        "",
        0.0,
        int(np.sum(c["score_change"] > SCORE_TOLERANCE)),
        len(c["index"]),
        f"scores changed by up to {drift:.3g} between identical calls (predictions did not)",
    )


# -- checks on the records of one attack: a table ----------------------------------------------------
@dataclass(frozen=True)
class Samples:
    """The records of one attack at one epsilon: its columns, the samples the attack ran on
    (``ran``) and those of them it did not break (``unbroken``)."""

    columns: Columns
    ran: np.ndarray
    unbroken: np.ndarray

    @classmethod
    def of(cls, columns: Columns) -> Samples:
        ran = np.isin(columns["source"], _ATTACKED)
        return cls(columns, ran, ran & ~columns["success"])


@dataclass(frozen=True)
class Tally:
    """One attack's samples over all its epsilons: how many ran and stayed unbroken."""

    attacked: int
    unbroken: int


@dataclass(frozen=True)
class AttackCheck:
    """A check on the records of one attack, summed over its epsilons.

    ``select`` picks the samples it counts at one epsilon; ``per`` names what the count is out
    of (``total`` of the :class:`Check`); ``raised(count, tally)`` says whether it fires (at
    ``level``) and ``message(count, tally)`` what it says then. The check is reported at the
    epsilon where its count peaked.
    """

    code: str
    level: Level
    per: Literal["attacked", "unbroken"]
    select: Callable[[Samples], np.ndarray]
    raised: Callable[[int, Tally], bool]
    message: Callable[[int, Tally], str]


def _any(count: int, tally: Tally) -> bool:
    return count > 0


#: the attack checks, in the order they are reported (thresholds and wording as documented in
#: docs/attack-failure-checks.md)
ATTACK_CHECKS: tuple[AttackCheck, ...] = (
    AttackCheck(
        "silent-success",
        "bad",
        "attacked",
        lambda s: s.ran & s.columns["reported_success"] & ~s.columns["success"],
        _any,
        lambda k, t: (
            f"{k} points the attack called adversarial are not "
            "(fresh prediction disagrees); they were counted as not broken"
        ),
    ),
    AttackCheck(
        "out-of-budget",
        "bad",
        "attacked",
        lambda s: s.ran & ~s.columns["in_budget"],
        _any,
        lambda k, t: (
            f"{k} returned points lie outside the epsilon-ball or the box; they were counted as not broken"
        ),
    ),
    AttackCheck(
        "nonfinite-gradients",
        "bad",
        "attacked",
        lambda s: s.ran & (s.columns["nonfinite_grad"] > 0),
        _any,
        lambda k, t: (
            f"{k} samples had NaN/inf input gradients (numerically unstable "
            "model or loss): the attack could not follow them"
        ),
    ),
    AttackCheck(
        "zero-gradients",
        "warn",
        "unbroken",
        lambda s: s.unbroken & (s.columns["zero_grad"] > 0),
        _any,
        lambda k, t: (
            f"{k} unbroken samples had all-zero input gradients "
            "(saturated loss or gradient masking): try the margin/DLR loss or a black-box attack"
        ),
    ),
    AttackCheck(
        "incomplete-optimisation",
        "warn",
        "unbroken",
        lambda s: s.unbroken & s.columns["improving"],
        lambda k, t: k / max(t.unbroken, 1) > INCOMPLETE_FRACTION,
        lambda k, t: (
            f"the objective was still rising at the last step for {k} of "
            f"{t.unbroken} unbroken samples: more steps would likely break more"
        ),
    ),
)


def _attack_checks(ev: Evaluation, model: str, attack: str) -> list[Check]:
    """Every :data:`ATTACK_CHECKS` entry on one attack's records."""
    per_eps = [(eps, Samples.of(c)) for eps, c in sorted(ev.attack_columns.get((model, attack), {}).items())]
    tally = Tally(
        sum(int(np.sum(s.ran)) for _, s in per_eps), sum(int(np.sum(s.unbroken)) for _, s in per_eps)
    )
    out = []
    info = ev.specs[attack]
    warm = info.role == "self-check" or info.start_from_peers
    for spec in ATTACK_CHECKS:
        if warm and spec.code == "incomplete-optimisation":
            # the self-check (and a cascade attack started from its peers' best points) starts
            # from points other attacks already optimised: its trace measures progress from
            # there, not from the clean input, so "rising over the last 10% by 5% of the total
            # gain" does not mean what it means for an attack; whether its result was the best
            # reachable is judged by the self-check that follows it (the `self-check` flag)
            continue
        count, peak, at = 0, 0, 0.0
        for eps, samples in per_eps:
            k = int(np.sum(spec.select(samples)))
            count += k
            if k > peak:  # the first epsilon where the count is largest
                peak, at = k, eps
        total = max(tally.attacked if spec.per == "attacked" else tally.unbroken, 1)
        raised = spec.raised(count, tally)
        out.append(
            _check(spec.code, raised, spec.level, model, attack, at, count, total, spec.message(count, tally))
        )
    return out


# -- checks across attacks ---------------------------------------------------------------------------
def _unbounded(ev: Evaluation, model: str, attack: str) -> Check | None:
    c = ev.attack_columns.get((model, attack), {}).get(math.inf)
    if c is None:
        return None
    left = int(np.sum(~np.isfinite(c["minimal_norm"])))
    acc = left / max(len(c["index"]), 1)
    return _check(
        "unbounded-not-zero",
        acc > UNBOUNDED_ACCURACY,
        "warn",
        model,
        attack,
        math.inf,
        left,
        len(c["index"]),
        f"without a budget the attack left {left} samples ({acc:.1%}) unbroken; "
        "an unbounded attack should reach ~0% accuracy: it is failing, not the model robust",
    )


def _black_box(ev: Evaluation, model: str, norm: str) -> list[Check]:
    specs = [s for s in ev.specs.values() if s.norm == norm and not s.targeted and s.applies_to(model)]
    white = [s.name for s in specs if not s.black_box]
    black = [s for s in specs if s.black_box]
    if not black:
        return []
    worst = dict(worst_status([ev._steps(model, a) for a in white])) if white else {}
    out = []
    for s in black:
        steps = ev._steps(model, s.name)
        count, at = 0, 0.0
        for eps, status in steps[1:]:
            ref = max((e for e in worst if e <= eps), default=None)
            if ref is None:
                continue
            extra = int(np.sum((status == MISCLASSIFIED) & (worst[ref] != MISCLASSIFIED)))
            if extra > count:
                count, at = extra, eps
        out.append(
            _check(
                "black-box-beats-white-box",
                count > 0,
                "warn",
                model,
                s.name,
                at,
                count,
                ev.samples,
                f"the black-box attack {s.name} broke {count} samples that no white-box "
                f"attack broke at epsilon {at:g}: the gradients are probably masked",
            )
        )
    return out


def run_checks(ev: Evaluation) -> list[Check]:
    """Every check for every model and attack of an evaluation."""
    out: list[Check] = []
    for model in ev.models:
        if model in ev.clean_columns:
            out.append(_randomness(ev, model))
        for attack in ev.attacks_of(model):
            out += _attack_checks(ev, model, attack)
            unbounded = _unbounded(ev, model, attack)
            if unbounded is not None:
                out.append(unbounded)
        for norm in ev.norms:
            out += _black_box(ev, model, norm)
        out += [
            _self_check(ev, model, s.name)
            for s in ev.specs.values()
            if s.role == "self-check" and s.applies_to(model)
        ]
    return out


def _self_check(ev: Evaluation, model: str, name: str) -> Check:
    """Warn where the self-check broke more than 1% of the samples at some epsilon: the norm's
    attacks left those samples unbroken, so they were too weak (the worst case includes them)."""
    table = ev.attack_columns.get((model, name), {})
    attacked = SOURCES.index("attack")
    count, at = 0, 0.0
    for eps, c in sorted(table.items()):
        n = int(np.sum(c["success"] & (c["source"] == attacked)))
        if n > count:
            count, at = n, eps
    spec = ev.specs[name]
    others = [
        s.name
        for s in ev.specs.values()
        if s.norm == spec.norm and s.role == "attack" and s.applies_to(model) and not s.black_box
    ]
    return _check(
        "self-check",
        count > SELF_CHECK_FRACTION * ev.samples,
        "warn",
        model,
        name,
        at,
        count,
        ev.samples,
        f"the self-check ({spec.attack}, started from the attacks' best points) broke {count} samples "
        f"at epsilon {at:g} that {', '.join(others) or 'no attack'} left unbroken: those attacks are "
        "incomplete; the worst case includes the self-check's result",
    )
