"""Adversarial training: make a model more robust, and record what it cost.

:class:`AdversarialTrainer` trains any classifier with a recipe (``none``, ``fgsm``, ``fgsm-rs``,
``pgd``, ``trades``, ``ibp``) and any evasion attack as the inner maximisation; :func:`distill` is defensive
distillation (a defence that masks gradients, kept as a case the attack-failure checks must flag);
:class:`CheckpointDir` holds the atomic per-epoch checkpoints that make a killed run resumable;
:func:`train_ibp` (IBP certified training, Gowal et al.) and :func:`train_noise` (Gaussian-noise
training, the base model of randomized smoothing) are standalone recipes.
"""

from __future__ import annotations

from .certified import IBPConfig, ibp_certified_accuracy, train_ibp
from .checkpoint import CheckpointDir
from .distillation import distill
from .noise import train_noise
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
    "IBPConfig",
    "TrainConfig",
    "TrainingResult",
    "collapsed",
    "distill",
    "ibp_certified_accuracy",
    "train_ibp",
    "train_noise",
]
