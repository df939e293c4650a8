"""Certified lower bounds beside the attacks' upper bounds: IBP, CROWN and exact MILP verification.

``certified accuracy (proof) <= true robust accuracy <= accuracy under the strongest attack``.
"""

from __future__ import annotations

from .bounds import ibp_bounds, margin_lower_from_bounds

__all__ = ["ibp_bounds", "margin_lower_from_bounds"]
