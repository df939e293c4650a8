"""`IterativeAttack`: the fields and the plumbing shared by attacks built on the gradient loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

from .._validation import integer, positive
from ..errors import ConfigError
from .base import Attack, AttackResult, Problem
from .loop import Keep, LoopOutput, LoopSettings, run_loop
from .losses import LOSSES, LossObjective, Objective, get_loss
from .steps import SteepestAscent, StepRule

__all__ = ["IterativeAttack"]

_KEEP: tuple[Keep, ...] = get_args(Keep)


@dataclass(frozen=True)
class IterativeAttack(Attack):
    """A fixed-budget attack that is a configuration of the shared gradient loop.

    Args:
        steps: gradient steps per run.
        step_size: absolute step size in the threat norm; ``None`` uses the attack's default
            (a multiple of ``epsilon / steps``).
        loss: ``"ce"``, ``"margin"`` or ``"dlr"`` (or a callable ``(scores, y, target) -> (n,)``).
        early_stop: stop a sample as soon as it is adversarial (robust-accuracy evaluation);
            ``False`` keeps optimising the objective (maximum-confidence examples).
        keep: ``"best"`` returns, per sample, the best iterate (adversarial first, then the
            highest objective); ``"last"`` returns the final iterate, as most peer libraries do.
        trace: record the objective of every iterate in ``AttackResult.loss_trace``.
    """

    steps: int = 10
    step_size: float | None = None
    loss: str = "ce"
    early_stop: bool = True
    keep: Keep = "best"
    trace: bool = False

    #: the default objective (:class:`LossObjective`) sees the reject score (``attacker_view``)
    reject_aware = True
    #: default step size = ``step_factor * epsilon / steps`` when ``step_size`` is None
    step_factor = 2.5

    def __post_init__(self) -> None:
        integer(self.steps, "steps", minimum=1)
        if self.step_size is not None:
            positive(self.step_size, "step_size")
        if not callable(self.loss) and self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; valid losses: {', '.join(LOSSES)}")
        if self.keep not in _KEEP:
            raise ConfigError(f"keep must be one of {_KEEP}, got {self.keep!r}")
        for name in ("early_stop", "trace"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")

    # -- hooks for subclasses ---------------------------------------------------------------
    def objective(self, problem: Problem) -> Objective:
        return LossObjective(get_loss(self.loss), aimed=problem.target is None and problem.aim is not None)

    def make_rule(self) -> Callable[[], StepRule]:
        return SteepestAscent

    def settings(self, problem: Problem) -> LoopSettings:
        return LoopSettings(
            steps=self.steps,
            step_size=self.resolve_step_size(problem.threat.epsilon),
            early_stop=self.early_stop,
            keep=self.keep,
            trace=self.trace,
        )

    def resolve_step_size(self, epsilon: float) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        if epsilon == float("inf"):
            raise ConfigError(f"{type(self).__name__} with an unbounded epsilon needs an explicit step_size")
        return self.step_factor * epsilon / self.steps

    # -- run ---------------------------------------------------------------------------------
    def _run(self, problem: Problem) -> AttackResult:
        out = run_loop(
            problem, self.objective(problem), self.make_rule(), self.settings(problem), problem.init
        )
        return self.to_result(problem, out)

    def to_result(self, problem: Problem, out: LoopOutput) -> AttackResult:
        return self.result(
            problem,
            out.adversarial,
            out.predictions,
            out.forwards,
            out.backwards,
            loss_trace=out.loss_trace,
            stats={
                "zero_grad_steps": out.zero_grad_steps,
                "nonfinite_grad_steps": out.nonfinite_grad_steps,
                "objective": out.objective,
            },
        )
