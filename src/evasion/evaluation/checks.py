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
=========================  ====================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .records import SOURCES

if TYPE_CHECKING:
    from .result import Evaluation

__all__ = ["CHECKS", "Check", "run_checks"]

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
}

_ATTACKED = (SOURCES.index("attack"), SOURCES.index("search"), SOURCES.index("projected"))

#: thresholds: fraction of the attacked samples above which a check warns
INCOMPLETE_FRACTION = 0.05
UNBOUNDED_ACCURACY = 0.01
SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    """The outcome of one check on one model (and attack, and epsilon where it applies).

    ``level``: ``"ok"``, ``"warn"`` (the number may be too optimistic) or ``"bad"`` (the number
    cannot be trusted). ``count`` of ``total`` samples triggered it.
    """

    code: str
    level: str
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
    code: str, bad: bool, level: str, model: str, attack: str, eps: float, count: int, total: int, msg: str
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


def _attack_checks(ev: Evaluation, model: str, attack: str) -> list[Check]:
    out = []
    totals = {k: 0 for k in ("silent", "budget", "nonfinite", "zero", "improving", "attacked", "unbroken")}
    peak = {k: (0, 0.0) for k in totals}  # the epsilon where each count is largest
    for eps, c in sorted(ev.attack_columns.get((model, attack), {}).items()):
        ran = np.isin(c["source"], _ATTACKED)
        unbroken = ran & ~c["success"]
        counts = {
            "silent": int(np.sum(ran & c["reported_success"] & ~c["success"])),
            "budget": int(np.sum(ran & ~c["in_budget"])),
            "nonfinite": int(np.sum(ran & (c["nonfinite_grad"] > 0))),
            "zero": int(np.sum(unbroken & (c["zero_grad"] > 0))),
            "improving": int(np.sum(unbroken & c["improving"])),
            "attacked": int(np.sum(ran)),
            "unbroken": int(np.sum(unbroken)),
        }
        for k, v in counts.items():
            totals[k] += v
            if v > peak[k][0]:
                peak[k] = (v, eps)
    worst_eps = {k: v[1] for k, v in peak.items()}
    n, u = max(totals["attacked"], 1), max(totals["unbroken"], 1)
    out.append(
        _check(
            "silent-success",
            totals["silent"] > 0,
            "bad",
            model,
            attack,
            worst_eps["silent"],
            totals["silent"],
            n,
            f"{totals['silent']} points the attack called adversarial are not "
            "(fresh prediction disagrees); they were counted as not broken",
        )
    )
    out.append(
        _check(
            "out-of-budget",
            totals["budget"] > 0,
            "bad",
            model,
            attack,
            worst_eps["budget"],
            totals["budget"],
            n,
            f"{totals['budget']} returned points lie outside the epsilon-ball "
            "or the box; they were counted as not broken",
        )
    )
    out.append(
        _check(
            "nonfinite-gradients",
            totals["nonfinite"] > 0,
            "bad",
            model,
            attack,
            worst_eps["nonfinite"],
            totals["nonfinite"],
            n,
            f"{totals['nonfinite']} samples had NaN/inf input gradients (numerically unstable "
            "model or loss): the attack could not follow them",
        )
    )
    out.append(
        _check(
            "zero-gradients",
            totals["zero"] > 0,
            "warn",
            model,
            attack,
            worst_eps["zero"],
            totals["zero"],
            u,
            f"{totals['zero']} unbroken samples had all-zero input gradients "
            "(saturated loss or gradient masking): try the margin/DLR loss or a black-box attack",
        )
    )
    frac = totals["improving"] / u
    out.append(
        _check(
            "incomplete-optimisation",
            frac > INCOMPLETE_FRACTION,
            "warn",
            model,
            attack,
            worst_eps["improving"],
            totals["improving"],
            u,
            f"the objective was still rising at the last step for {totals['improving']} of "
            f"{totals['unbroken']} unbroken samples: more steps would likely break more",
        )
    )
    return out


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
    specs = [s for s in ev.specs.values() if s.norm == norm and not s.targeted]
    white = [s.name for s in specs if not s.black_box]
    out = []
    for s in (s for s in specs if s.black_box):
        steps = ev._steps(model, s.name)
        worst = {e: st for e, st in _worst_white(ev, model, white)}
        count, at = 0, 0.0
        for eps, status in steps[1:]:
            ref = max((e for e in worst if e <= eps), default=None)
            if ref is None:
                continue
            extra = int(np.sum((status == 2) & (worst[ref] != 2)))
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


def _worst_white(ev: Evaluation, model: str, white: list[str]) -> list[tuple[float, np.ndarray]]:
    from .curves import worst_status

    return worst_status([ev._steps(model, a) for a in white]) if white else []


def run_checks(ev: Evaluation) -> list[Check]:
    """Every check for every model and attack of an evaluation."""
    out: list[Check] = []
    for model in ev.models:
        if model in ev.clean_columns:
            out.append(_randomness(ev, model))
        for attack in ev.specs:
            out += _attack_checks(ev, model, attack)
            unbounded = _unbounded(ev, model, attack)
            if unbounded is not None:
                out.append(unbounded)
        for norm in ev.norms:
            out += _black_box(ev, model, norm)
    return out
