"""Gaussian-noise training: the base model that randomized smoothing needs (Cohen et al. 2019).

A model trained on clean images only classifies ``x + N(0, sigma^2 I)`` poorly, so its smoothed
classifier abstains almost everywhere. Training on noisy copies of each batch (the same ``sigma``
that smoothing will use, noise not clipped to the box, as in smoothing) fixes that. Built on
:func:`evasion.models.training.train_classifier` (Adam, cosine learning rate, seeded): the noise
comes from a generator seeded by ``seed``, so the same module, data and settings give the same
weights bit-for-bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..datasets.base import Dataset
from ..errors import ConfigError
from ..models.training import train_classifier

__all__ = ["gaussian_perturb", "train_noise"]


def _sigma(sigma: object) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise ConfigError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def gaussian_perturb(sigma: float, seed: int) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """A ``perturb`` hook for ``train_classifier``: each batch becomes ``x + sigma * N(0, I)``."""
    sigma = _sigma(sigma)
    generator = torch.Generator().manual_seed(seed)

    def perturb(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return x + sigma * noise.to(x.device)

    return perturb


def train_noise(
    module: nn.Module,
    train: Dataset,
    *,
    sigma: float,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    augment_shift: int = 0,
    weight_decay: float = 0.0,
    num_threads: int | None = 1,
    progress: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``module`` on Gaussian-noised copies of ``train`` (noise level ``sigma``); eval mode out."""
    perturb = gaussian_perturb(sigma, seed + 7919)
    return train_classifier(
        module,
        train,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        weight_decay=weight_decay,
        augment_shift=augment_shift,
        num_threads=num_threads,
        progress=progress,
        perturb=perturb,
    )
