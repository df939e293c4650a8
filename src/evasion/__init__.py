"""evasion: security evaluation of image classifiers against adversarial examples."""

from __future__ import annotations

from . import attacks, errors, perturbations
from .evaluation import evaluate
from .threat_model import NORMS, ThreatModel

__version__ = "0.1.0"

__all__ = ["NORMS", "ThreatModel", "__version__", "attacks", "errors", "evaluate", "perturbations"]
