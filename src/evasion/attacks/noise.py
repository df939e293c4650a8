"""Random noise of a threat model's norm and size: the baseline every detector must beat.

Not an attack: it uses no gradient and no query beyond the one that scores it. It answers two
questions an honest evaluation must ask of a defence:

* does a detector flag *adversarial* perturbations, or any perturbation? A detector that rejects
  random noise of the same norm as often as it rejects attacks detects noise, not attacks (and
  the clean accuracy it protects is bought with a rejection of every slightly noisy input);
* does the model resist random noise at all? (If noise breaks a point that the gradient
  attacks did not break, their gradients are not to be trusted: the attack-failure checks read
  it like any other black-box attack.)

``kind="uniform"``: uniform in the L∞ ball (each pixel in ``[-eps, eps]``), uniform in the L2 / L1
ball otherwise. ``kind="gaussian"``: an isotropic Gaussian direction scaled to use the whole
budget (``||delta||_p = eps`` before clipping to the box). ``draws`` independent samples per
input; the first evading draw is returned (an attacker who tries ``draws`` times), otherwise
the first draw (so a flag rate reads as the rate of one random perturbation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from ..perturbations import norm as perturbation_norm
from ..perturbations import project, random_start
from .base import Attack, AttackResult, Problem, check_int

__all__ = ["Noise", "NoiseKind"]

NoiseKind = Literal["uniform", "gaussian"]


@dataclass(frozen=True)
class Noise(Attack):
    """Random perturbations inside the threat model (a baseline, not an attack).

    Args:
        kind: ``"uniform"`` (uniform in the ball) or ``"gaussian"`` (a Gaussian direction at
            the full budget).
        draws: independent draws per input; the first evading draw is returned.
    """

    name: ClassVar[str] = "noise"
    norms = ("linf", "l2", "l1")
    supports_targeted = False
    black_box = True
    access: ClassVar[str] = "labels"  # it only asks whether a noisy point evades
    kind: NoiseKind = "uniform"
    draws: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "gaussian"):
            raise ConfigError(f"kind must be 'uniform' or 'gaussian', got {self.kind!r}")
        check_int("draws", self.draws, 1)

    def _draw(self, p: Problem) -> Tensor:
        eps, norm = p.threat.epsilon, p.threat.norm
        if self.kind == "uniform":
            return random_start(p.x, eps, norm, p.lower, p.upper, p.generator)
        gen = p.generator
        g = torch.randn(p.x.shape, generator=gen, device=gen.device, dtype=p.x.dtype).to(p.x.device)
        if p.free is not None:
            g = g * p.free
        size = perturbation_norm(g, norm).clamp_min(1e-12).reshape((-1,) + (1,) * (p.x.dim() - 1))
        return project(p.x + g * (eps / size), p.x, eps, norm, p.lower, p.upper)

    def _run(self, problem: Problem) -> AttackResult:
        if problem.threat.is_unbounded:
            raise ConfigError("Noise needs a finite epsilon")
        p = problem
        adversarial = p.x.clone()
        predictions = torch.empty(p.n, dtype=torch.long, device=p.x.device)
        done = torch.zeros(p.n, dtype=torch.bool, device=p.x.device)
        with torch.no_grad():
            for draw in range(self.draws):
                z = self._draw(p)
                pred = p.model.decide(p.model(z))
                hit = p.success(pred) & ~done
                first = torch.full_like(done, draw == 0)
                take = hit | first  # the first draw stands until an evading one replaces it
                adversarial[take], predictions[take] = z[take], pred[take]
                done |= hit
        forwards = torch.full((p.n,), self.draws, dtype=torch.long, device=p.x.device)
        return self.result(p, adversarial, predictions, forwards, torch.zeros_like(forwards))
