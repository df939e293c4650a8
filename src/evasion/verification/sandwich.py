"""The sandwich per epsilon: certified <= exact robust <= attacked accuracy, and what lies between.

``certified accuracy (a proof) <= true robust accuracy <= accuracy under the strongest attack``.
:func:`sandwich` puts certificates (:func:`~.certificate.certify`) beside per-sample attack
outcomes (which samples survived every attack at each epsilon) and counts the samples in the
band: unbroken by the attacks, covered by no proof. A sample both certified and broken means a
bug in a bound or an attack's budget and is counted as ``contradictions`` (never hidden).
No I/O: the evaluation report renders the rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .certificate import Certificate

__all__ = ["SandwichRow", "sandwich"]


@dataclass(frozen=True)
class SandwichRow:
    """One epsilon: fractions of the ``samples`` (clean errors count as neither certified nor robust)."""

    epsilon: float
    samples: int
    certified: float
    by_method: dict[str, float]
    exact: float | None
    exact_unknown: float | None
    attacked: float
    unknown: int
    contradictions: int


def sandwich(certificates: Sequence[Certificate], unbroken: Mapping[float, Tensor]) -> list[SandwichRow]:
    """Rows per epsilon of ``unbroken`` (bool per sample: no attack broke it at that epsilon).

    ``certificates`` may hold several methods per epsilon (matched by ``threat.epsilon``); the
    certified fraction is that of samples any method proved, ``exact`` that of MILP "robust"
    samples (with the fraction it left "unknown"), both ``None`` where no MILP ran.
    """
    rows = []
    for eps, alive in sorted(unbroken.items()):
        alive = alive.to(torch.bool).cpu()
        mine = [c for c in certificates if abs(c.threat.epsilon - eps) <= 1e-12]
        n = int(alive.shape[0])
        if any(len(c) != n for c in mine):
            raise InputError(
                f"certificates at epsilon {eps:g} cover {[len(c) for c in mine]} samples, attacks {n}"
            )
        proved = torch.zeros(n, dtype=torch.bool)
        for c in mine:
            proved |= c.certified.cpu()
        milp = [c for c in mine if c.status is not None]
        exact = unknown_exact = None
        if milp:
            exact = sum(s == "robust" for s in milp[0].status or ()) / n
            unknown_exact = sum(s == "unknown" for s in milp[0].status or ()) / n
        rows.append(
            SandwichRow(
                epsilon=float(eps),
                samples=n,
                certified=float(proved.double().mean()),
                by_method={c.method: c.certified_accuracy for c in mine},
                exact=exact,
                exact_unknown=unknown_exact,
                attacked=float(alive.double().mean()),
                unknown=int((alive & ~proved).sum()),
                contradictions=int((proved & ~alive).sum()),
            )
        )
    return rows
