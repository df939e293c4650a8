"""Certified lower bounds beside the attacks' upper bounds: IBP, CROWN and exact MILP verification.

``certified accuracy (proof) <= true robust accuracy <= accuracy under the strongest attack``.
:func:`certify` proves per sample that no adversarial example exists in the threat's ball (or,
for ``milp``, finds one); :func:`~.bounds.ibp_bounds` gives the interval bounds IBP training uses.
"""

from __future__ import annotations

from .bounds import ibp_bounds, margin_lower_from_bounds
from .certificate import METHODS, Certificate, certify
from .crown import Domain
from .sandwich import SandwichRow, sandwich
from .smoothing import ABSTAIN, SmoothedClassifier, SmoothingCertificate, attack_smoothed

__all__ = [
    "ABSTAIN",
    "METHODS",
    "Certificate",
    "Domain",
    "SandwichRow",
    "SmoothedClassifier",
    "SmoothingCertificate",
    "attack_smoothed",
    "certify",
    "ibp_bounds",
    "margin_lower_from_bounds",
    "sandwich",
]
