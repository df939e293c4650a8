"""Detectability of adversarial examples (Metzen et al. 2017, footnote 3), ROC AUC and TPR at low FPR.

Footnote 3: for every test sample an adversarial example is generated; the originals and their
adversarial examples form a joint test set twice the size of the test set, which is shuffled and
classified by the detector (label 1 = adversarial, decided by ``p_adv > threshold``, 0.5 for the
paper's two-class softmax). *Detectability* is the detector's accuracy on that set: 0.5 is
chance, 1.0 perfect. Since the score does not depend on a threshold choice, the record also
holds the ROC AUC and the true-positive rate at a fixed false-positive rate (5% by default: the
share of adversarial examples caught when only 5% of clean inputs are flagged).

For dynamic adversaries (Sect. 4.1.2) an adversarial example that does not fool the classifier
is ignored, with its clean original: ``keep`` selects the pairs that count.

**Which threshold.** A deployed system (:class:`~evasion.defenses.DetectedClassifier`) rejects
above *its* threshold, often far below 0.5 (one set for a 5% false-positive rate): given the
system, :func:`detectability` scores at that threshold, the one users face. A bare
:class:`~evasion.defenses.detector.Detector` has only its own two-class decision, ``p_adv > 0.5``
(the paper's protocol); pass ``threshold=`` to score any other.

**Noise baseline.** :func:`noise_baseline` measures how often a system with a reject option
rejects *random* perturbations of the attacks' norms and sizes. A detector that flags noise as
often as adversarial examples detects perturbations, not attacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..attacks.noise import Noise, NoiseKind
from ..defenses.detected import DetectedClassifier
from ..defenses.detector import Detector, threshold_for_fpr
from ..errors import ConfigError, InputError
from ..models.classifier import REJECT, Classifier
from ..threat_model import Norm, ThreatModel

__all__ = [
    "Detectability",
    "DetectabilityMatrix",
    "NoiseBaseline",
    "detectability",
    "detectability_from_scores",
    "generalisation_matrix",
    "noise_baseline",
]


@dataclass(frozen=True)
class Detectability:
    """How well a detector tells clean inputs from adversarial ones (one joint test set)."""

    accuracy: float
    roc_auc: float
    tpr_at_fpr: float
    fpr_target: float
    true_positive_rate: float
    false_positive_rate: float
    n_clean: int
    n_adversarial: int
    threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {
            "detectability": self.accuracy,
            "roc_auc": self.roc_auc,
            f"tpr_at_{self.fpr_target:g}_fpr": self.tpr_at_fpr,
            "true_positive_rate": self.true_positive_rate,
            "false_positive_rate": self.false_positive_rate,
            "n_clean": self.n_clean,
            "n_adversarial": self.n_adversarial,
            "threshold": self.threshold,
        }


def _roc_auc(p_clean: np.ndarray, p_adv: np.ndarray) -> float:
    """P(score of an adversarial > score of a clean input), ties counted half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    scores = np.concatenate([p_clean, p_adv])
    ranks = rankdata(scores)
    n_c, n_a = len(p_clean), len(p_adv)
    u = ranks[n_c:].sum() - n_a * (n_a + 1) / 2
    return float(u / (n_c * n_a))


def detectability_from_scores(
    p_clean: Tensor,
    p_adv: Tensor,
    *,
    threshold: float = 0.5,
    fpr: float = 0.05,
    generator: torch.Generator | None = None,
) -> Detectability:
    """Detectability of precomputed detector scores ``p_adv`` of clean and adversarial inputs.

    The joint set is shuffled (footnote 3); with scores already computed per input the shuffle
    cannot change the result, it only mirrors the protocol.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must lie in [0, 1], got {threshold}")
    pc = p_clean.detach().double().flatten().cpu()
    pa = p_adv.detach().double().flatten().cpu()
    if pc.numel() == 0 or pa.numel() == 0:
        raise InputError(
            f"detectability needs clean and adversarial inputs, got {pc.numel()} and {pa.numel()}"
        )
    scores = torch.cat([pc, pa])
    labels = torch.cat([torch.zeros(len(pc), dtype=torch.bool), torch.ones(len(pa), dtype=torch.bool)])
    order = torch.randperm(len(scores), generator=generator or torch.Generator().manual_seed(0))
    scores, labels = scores[order], labels[order]
    accuracy = float(((scores > threshold) == labels).double().mean())
    t_fpr = threshold_for_fpr(pc, fpr)
    return Detectability(
        accuracy=accuracy,
        roc_auc=_roc_auc(pc.numpy(), pa.numpy()),
        tpr_at_fpr=float((pa > t_fpr).double().mean()),
        fpr_target=fpr,
        true_positive_rate=float((pa > threshold).double().mean()),
        false_positive_rate=float((pc > threshold).double().mean()),
        n_clean=int(pc.numel()),
        n_adversarial=int(pa.numel()),
        threshold=threshold,
    )


def detectability(
    detector: Detector | DetectedClassifier,
    clean: Tensor,
    adversarial: Tensor,
    *,
    keep: Tensor | None = None,
    threshold: float | None = None,
    fpr: float = 0.05,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> Detectability:
    """Detectability of ``detector`` on clean inputs and their adversarial examples (footnote 3).

    ``detector``: a deployed system (scored at its own threshold unless ``threshold`` is given)
    or a bare detector (scored at ``threshold``, default 0.5, the paper's decision).
    ``keep`` (boolean, one per pair) keeps only some pairs, e.g. those whose adversarial example
    fools the classifier (the paper's evaluation of dynamic adversaries).
    """
    if isinstance(detector, DetectedClassifier):
        threshold = detector.threshold if threshold is None else threshold
        detector = detector.detector
    elif not isinstance(detector, Detector):
        raise ConfigError(
            f"detectability needs a Detector or a DetectedClassifier, got {type(detector).__name__}"
        )
    threshold = 0.5 if threshold is None else threshold
    if adversarial.shape != clean.shape:
        raise InputError(
            f"one adversarial example per clean input is needed, got {tuple(adversarial.shape)} and {tuple(clean.shape)}"
        )
    if keep is not None:
        if keep.shape != (len(clean),) or keep.dtype != torch.bool:
            raise InputError(f"keep must be a boolean tensor of shape ({len(clean)},)")
        clean, adversarial = clean[keep.to(clean.device)], adversarial[keep.to(adversarial.device)]
    if len(clean) == 0:
        raise InputError("no pairs left to measure detectability on (keep selects none)")
    return detectability_from_scores(
        detector.probability(clean, batch_size),
        detector.probability(adversarial, batch_size),
        threshold=threshold,
        fpr=fpr,
        generator=generator,
    )


@dataclass(frozen=True)
class DetectabilityMatrix:
    """Detectability of detectors trained on one setting (rows) tested on another (columns)."""

    rows: list[str]
    columns: list[str]
    values: list[list[float]]
    title: str = ""
    details: list[list[Detectability]] = field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "rows": self.rows, "columns": self.columns, "values": self.values}


def generalisation_matrix(
    detectors: Mapping[str, Detector],
    tests: Mapping[str, tuple[Tensor, Tensor]],
    *,
    title: str = "",
    rows: Sequence[str] | None = None,
) -> DetectabilityMatrix:
    """Detectability of each detector (trained on one adversary / epsilon) on each test set.

    ``tests`` maps a name to (clean inputs, their adversarial examples); Figs. 3 and 4 of the
    paper are such matrices (epsilon_fit x epsilon_test, adversary x adversary).
    """
    names = list(rows) if rows is not None else list(detectors)
    details = [[detectability(detectors[r], *tests[c]) for c in tests] for r in names]
    return DetectabilityMatrix(
        rows=names,
        columns=list(tests),
        values=[[d.accuracy for d in row] for row in details],
        title=title,
        details=details,
    )


@dataclass(frozen=True)
class NoiseBaseline:
    """How often a system rejects random noise: ``rates[kind][i]`` at ``epsilons[i]``."""

    norm: str
    epsilons: tuple[float, ...]
    rates: dict[str, tuple[float, ...]]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm,
            "epsilons": list(self.epsilons),
            "rates": {k: list(v) for k, v in self.rates.items()},
            "n": self.n,
        }


def noise_baseline(
    system: Classifier,
    x: Tensor,
    y: Tensor,
    norm: Norm,
    epsilons: Sequence[float],
    *,
    kinds: Sequence[NoiseKind] = ("uniform", "gaussian"),
    generator: torch.Generator | None = None,
) -> NoiseBaseline:
    """Flag rate (fraction rejected) of ``system`` on random noise of ``norm`` at each epsilon.

    Compare it with the fraction of adversarial examples the system rejects at the same budget:
    a detector is only evidence of *adversarial* detection where it rejects attacks clearly more
    often than noise.
    """
    if not system.rejects:
        raise ConfigError(f"model {system.name!r} has no reject option: there is no flag rate to measure")
    gen = generator or torch.Generator().manual_seed(0)
    rates: dict[str, tuple[float, ...]] = {}
    for kind in kinds:
        attack = Noise(kind=kind)
        row = []
        for eps in epsilons:
            r = attack(system, x, y, threat=ThreatModel(norm, float(eps)), generator=gen)
            row.append(float((r.predictions == REJECT).double().mean()))
        rates[kind] = tuple(row)
    return NoiseBaseline(norm, tuple(float(e) for e in epsilons), rates, int(x.shape[0]))
