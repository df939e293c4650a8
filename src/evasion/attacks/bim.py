"""BIM, the basic iterative method (Kurakin et al. 2017); the L2 variant as in Metzen et al. 2017."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .iterative import IterativeAttack

__all__ = ["BIM"]


@dataclass(frozen=True)
class BIM(IterativeAttack):
    """Iterated FGSM from the clean input: ``x <- Proj(x + alpha * d(grad))``, no random start.

    For L∞ ``d`` is the gradient sign and the projection clips to the epsilon-box; for L2 the
    gradient is normalised and the iterate projected onto the L2 ball (Metzen et al.'s variant).
    Default ``step_size`` is ``2.5 * epsilon / steps``.
    """

    name: ClassVar[str] = "bim"
    norms = ("linf", "l2", "l1")
    steps: int = 10
