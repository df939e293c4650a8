"""PGD, projected gradient descent with random start and restarts (Madry et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from ..errors import ConfigError
from .base import Problem, check_fraction, check_int
from .iterative import IterativeAttack
from .loop import LoopSettings

__all__ = ["PGD"]


@dataclass(frozen=True)
class PGD(IterativeAttack):
    """BIM started from a random point of the epsilon-ball, optionally restarted.

    The start is uniform in the L∞ box; in L2 it is a uniformly random direction at a distance
    uniform in ``[0, epsilon]`` (``random_start(radius="uniform")``, as torchattacks), not a point
    uniform in the ball's volume, which in high dimension lies on the sphere and is a weaker start.

    Restarts run only on the samples that are not adversarial yet; each sample keeps its best
    outcome over all restarts. Works in L∞, L2 and L1 (sparse steps over the top ``l1_fraction``
    of coordinates, exact projection onto the L1 ball ∩ box).
    """

    name: ClassVar[str] = "pgd"
    norms = ("linf", "l2", "l1")
    steps: int = 40
    random_start: bool = True
    restarts: int = 1
    l1_fraction: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("restarts", self.restarts, 1)
        check_fraction("l1_fraction", self.l1_fraction)
        if self.restarts > 1 and not self.random_start:
            raise ConfigError("restarts > 1 needs random_start=True (otherwise every restart is identical)")

    def settings(self, problem: Problem) -> LoopSettings:
        return replace(
            super().settings(problem),
            random_start=self.random_start,
            restarts=self.restarts,
            l1_fraction=self.l1_fraction,
        )
