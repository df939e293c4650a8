"""MI-FGSM, the momentum iterative method (Dong et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from .base import check_positive
from .iterative import IterativeAttack
from .steps import Momentum, StepRule

__all__ = ["MIFGSM"]


@dataclass(frozen=True)
class MIFGSM(IterativeAttack):
    """BIM with a velocity: ``g <- decay * g + grad / ||grad||_1``, ``x <- Proj(x + alpha * d(g))``.

    Momentum stabilises the update direction and escapes poor local maxima, which also makes the
    examples transfer better to other models. Default ``step_size`` is ``epsilon / steps``.
    """

    name: ClassVar[str] = "mifgsm"
    norms = ("linf", "l2")
    steps: int = 10
    decay: float = 1.0
    step_factor = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("decay", self.decay, allow_zero=True)

    def make_rule(self) -> Callable[[], StepRule]:
        return partial(Momentum, self.decay)
