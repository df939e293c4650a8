"""Defences: classification with a reject option, detector subnetworks, adversarial training.

:func:`make` builds a registered defence around a classifier (``"reject"``, ``"detector"``) from
plain parameters (:class:`RejectParams`, :class:`DetectorParams`).
"""

from .base import Cache, TrainingJob
from .registry import DEFENCES, DefenceInfo, DefenceParams, list_defences, make, parameters
from .reject import RejectParams
from .static_detector import DetectorParams

__all__ = [
    "DEFENCES",
    "Cache",
    "DefenceInfo",
    "DefenceParams",
    "DetectorParams",
    "RejectParams",
    "TrainingJob",
    "list_defences",
    "make",
    "parameters",
]
