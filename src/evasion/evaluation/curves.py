"""Security evaluation curves (Melis et al. 2017): accuracy as the attacker's budget grows.

A curve starts at epsilon 0 (the clean accuracy) and splits every sample into *correct*,
*rejected* (classifiers with a reject option) or *misclassified*. On a clean input a rejection is
an error; on an adversarial input it is a success of the defence (``defended``). A sample broken
at epsilon counts as broken at every larger epsilon (the attacker may reuse the smaller
perturbation), so curves never rise. The worst case over attacks takes, per sample and epsilon,
the worst outcome any attack of that norm reached at a budget no larger than epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.classifier import REJECT

__all__ = [
    "CORRECT",
    "MISCLASSIFIED",
    "REJECTED",
    "SecurityCurve",
    "clean_status",
    "cumulative_status",
    "implied_status",
    "make_curve",
    "worst_status",
]

CORRECT, REJECTED, MISCLASSIFIED = 0, 1, 2


@dataclass(frozen=True)
class SecurityCurve:
    """Accuracy vs. maximum perturbation for one model under one attack (or the worst case).

    ``accuracy[i] + rejected[i] + misclassified[i] == 1`` at every ``epsilons[i]``;
    ``epsilons[0] == 0.0`` is the clean input.
    """

    model: str
    attack: str
    norm: str
    epsilons: list[float]
    accuracy: list[float]
    rejected: list[float]
    misclassified: list[float]
    samples: int = 0
    attacks: tuple[str, ...] = field(default=())

    @property
    def clean_accuracy(self) -> float:
        return self.accuracy[0] if self.accuracy else math.nan

    @property
    def defended(self) -> list[float]:
        """Fraction not evaded: correct, plus rejected adversarial inputs (not clean ones)."""
        return [a + (r if e > 0 else 0.0) for e, a, r in zip(self.epsilons, self.accuracy, self.rejected)]

    def accuracy_at(self, epsilon: float) -> float:
        """Accuracy at the largest grid epsilon <= ``epsilon`` (the curve is a step function)."""
        best = math.nan
        for e, a in zip(self.epsilons, self.accuracy):
            if e <= epsilon + 1e-12:
                best = a
        return best

    def auc(self) -> float:
        """Area under accuracy vs. epsilon, normalised by the epsilon range (1 = never fooled)."""
        if len(self.epsilons) < 2:
            return self.clean_accuracy
        eps, acc = np.asarray(self.epsilons), np.asarray(self.accuracy)
        area = float(np.sum((eps[1:] - eps[:-1]) * (acc[1:] + acc[:-1]) / 2))
        return area / float(eps[-1] - eps[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "attack": self.attack,
            "norm": self.norm,
            "epsilons": list(self.epsilons),
            "accuracy": list(self.accuracy),
            "rejected": list(self.rejected),
            "misclassified": list(self.misclassified),
            "samples": self.samples,
            "attacks": list(self.attacks),
            "auc": self.auc(),
        }


def clean_status(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Per-sample status of clean predictions (a rejection of a clean input is an error)."""
    return np.where(prediction == label, CORRECT, np.where(prediction == REJECT, REJECTED, MISCLASSIFIED))


def cumulative_status(
    clean: np.ndarray, steps: Sequence[tuple[float, Mapping[str, np.ndarray]]]
) -> list[tuple[float, np.ndarray]]:
    """Status per epsilon (ascending) for one attack; broken at epsilon stays broken above it.

    ``steps``: ``(epsilon, columns)`` with ``success``, ``prediction`` and ``label`` columns.
    """
    out = [(0.0, clean)]
    broken = clean == MISCLASSIFIED
    for eps, cols in sorted(steps, key=lambda s: s[0]):
        broken = broken | cols["success"]
        pred, label = cols["prediction"], cols["label"]
        state = np.where(pred == REJECT, REJECTED, np.where(pred == label, CORRECT, MISCLASSIFIED))
        out.append((eps, np.where(broken, MISCLASSIFIED, state)))
    return out


def worst_status(per_attack: Sequence[list[tuple[float, np.ndarray]]]) -> list[tuple[float, np.ndarray]]:
    """Worst case per sample over attacks: at epsilon, each attack contributes its status at its
    largest epsilon <= epsilon; misclassified beats rejected beats correct."""
    grid = sorted({e for curve in per_attack for e, _ in curve})
    out = []
    for eps in grid:
        worst: np.ndarray | None = None
        for curve in per_attack:
            current = curve[0][1]
            for e, status in curve:
                if e <= eps:
                    current = status
            worst = current if worst is None else np.maximum(worst, current)
        assert worst is not None
        out.append((eps, worst))
    return out


def implied_status(
    clean: np.ndarray, minimal: np.ndarray, epsilons: Sequence[float]
) -> list[tuple[float, np.ndarray]]:
    """The curve a minimum-norm attack implies: broken at epsilon iff its minimal norm <= epsilon."""
    out = [(0.0, clean)]
    for eps in sorted(e for e in epsilons if e > 0):
        out.append((eps, np.where(minimal <= eps, MISCLASSIFIED, clean)))
    return out


def make_curve(
    model: str, attack: str, norm: str, steps: Sequence[tuple[float, np.ndarray]], attacks: Sequence[str] = ()
) -> SecurityCurve:
    """Fractions of correct / rejected / misclassified samples per epsilon."""
    acc, rej, mis = [], [], []
    n = len(steps[0][1]) if steps else 0
    for _, status in steps:
        acc.append(float(np.mean(status == CORRECT)) if n else math.nan)
        rej.append(float(np.mean(status == REJECTED)) if n else math.nan)
        mis.append(float(np.mean(status == MISCLASSIFIED)) if n else math.nan)
    return SecurityCurve(model, attack, norm, [float(e) for e, _ in steps], acc, rej, mis, n, tuple(attacks))
