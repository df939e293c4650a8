"""FGSM, the fast gradient sign method (Goodfellow et al. 2015), and its L2 / L1 analogues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from .base import Problem
from .iterative import IterativeAttack
from .loop import LoopSettings

__all__ = ["FGSM"]


@dataclass(frozen=True)
class FGSM(IterativeAttack):
    """One step of size ``epsilon`` along the steepest-ascent direction of the loss.

    ``x' = clip(x + epsilon * sign(grad_x loss))`` for L∞ (the normalised gradient for L2). It is
    exactly one step of :class:`BIM` with ``step_size = epsilon`` and no random start.
    """

    name: ClassVar[str] = "fgsm"
    norms = ("linf", "l2", "l1")
    steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps != 1 or self.step_size is not None:
            raise ConfigError("FGSM takes exactly one step of size epsilon; use BIM or PGD for more")

    def settings(self, problem: Problem) -> LoopSettings:
        eps = problem.threat.epsilon
        return LoopSettings(
            steps=1, step_size=eps, early_stop=self.early_stop, keep=self.keep, trace=self.trace
        )
