"""Defensive distillation (Papernot et al. 2016): a defence that only *hides* the gradient.

A teacher is trained with its logits divided by a temperature ``T`` (e.g. 100); a student of the
same architecture is trained, also at ``T``, on the teacher's softened probabilities, and deployed
at ``T = 1``. The deployed logits are about ``T`` times larger than a normally trained model's, so
the softmax saturates and the cross-entropy gradient underflows to zero in float32: white-box
gradient attacks fail, transfer and larger budgets do not (Carlini and Wagner 2016). It is here to
be *broken*: the attack-failure checks of :mod:`evasion.evaluation` must flag it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from ..datasets.base import Dataset
from ..errors import ConfigError
from .checkpoint import CheckpointDir
from .trainer import AdversarialTrainer, Progress, TrainConfig, TrainingResult

__all__ = ["distill"]


def distill(
    build: Callable[[], nn.Module],
    train: Dataset,
    config: TrainConfig,
    *,
    val: Dataset | None = None,
    checkpoints: tuple[CheckpointDir, CheckpointDir] | None = None,
    progress: Progress | None = None,
) -> tuple[TrainingResult, TrainingResult]:
    """Train a teacher and then a distilled student at ``config.temperature``; (teacher, student).

    ``build()`` makes a fresh module (called twice); ``config.recipe`` must be ``"none"`` and
    ``config.temperature`` > 1. ``checkpoints`` are the teacher's and the student's folders.
    """
    if config.recipe != "none":
        raise ConfigError(f"defensive distillation trains with the 'none' recipe, got {config.recipe!r}")
    if config.temperature <= 1:
        raise ConfigError(f"defensive distillation needs a temperature > 1, got {config.temperature}")
    config = replace(config, epsilon=0.0)
    teacher_ckpt, student_ckpt = checkpoints if checkpoints is not None else (None, None)
    teacher = AdversarialTrainer(config, checkpoints=teacher_ckpt, progress=progress).fit(build(), train, val)
    teacher_net = teacher.classifier.module
    student = AdversarialTrainer(config, checkpoints=student_ckpt, progress=progress).fit(
        build(), train, val, teacher=teacher_net
    )
    return teacher, student
