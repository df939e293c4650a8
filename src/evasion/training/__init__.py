"""Adversarial training: make a model more robust, and record what it cost.

:class:`AdversarialTrainer` trains any classifier with a recipe (``none``, ``fgsm``, ``fgsm-rs``,
``pgd``, ``trades``) and any evasion attack as the inner maximisation; :func:`distill` is defensive
distillation (a defence that masks gradients, kept as a case the attack-failure checks must flag);
:class:`CheckpointDir` holds the atomic per-epoch checkpoints that make a killed run resumable.
"""

from __future__ import annotations

from .checkpoint import CheckpointDir
from .distillation import distill
from .trainer import (
    FGSM_GAP,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    AdversarialTrainer,
    EpochRecord,
    TrainConfig,
    TrainingResult,
    collapsed,
)

__all__ = [
    "FGSM_GAP",
    "OPTIMIZERS",
    "RECIPES",
    "SCHEDULES",
    "AdversarialTrainer",
    "CheckpointDir",
    "EpochRecord",
    "TrainConfig",
    "TrainingResult",
    "collapsed",
    "distill",
]
