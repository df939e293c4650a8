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

**Pairs.** A record keeps which clean input and which adversarial example the detector flagged
(one entry per pair, in test order): :meth:`Detectability.pair_scores` gives each pair's share of
the accuracy, so a bootstrap can resample *test images* with an image and its adversarial example
as one row (:mod:`evasion.evaluation.bootstrap`); a :class:`DetectabilityMatrix` holds such a
record per cell, and its ``intervals`` once computed.

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
import numpy.typing as npt
import torch
from torch import Tensor

from ..attacks.noise import Noise, NoiseKind
from ..defenses.detected import DetectedClassifier
from ..defenses.detector import Detector, threshold_for_fpr
from ..errors import ConfigError, InputError
from ..models.classifier import REJECT, Classifier
from ..threat_model import Norm, ThreatModel
from .bootstrap import Interval

__all__ = [
    "Detectability",
    "DetectabilityMatrix",
    "NoiseBaseline",
    "detectability",
    "detectability_from_scores",
    "flags_to_dict",
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
    #: per input, in test order: the detector flags the clean input / the adversarial example
    clean_flagged: npt.NDArray[np.bool_] | None = field(default=None, compare=False, repr=False)
    adv_flagged: npt.NDArray[np.bool_] | None = field(default=None, compare=False, repr=False)

    def pair_scores(self) -> npt.NDArray[np.float64] | None:
        """Per pair: (clean input not flagged + its adversarial example flagged) / 2.

        Their mean is :attr:`accuracy` (the balanced joint set of footnote 3); ``None`` when the
        flags were not kept or the clean and adversarial inputs are not paired (sizes differ)."""
        if self.clean_flagged is None or self.adv_flagged is None:
            return None
        if len(self.clean_flagged) != len(self.adv_flagged):
            return None
        return ((~self.clean_flagged).astype(float) + self.adv_flagged.astype(float)) / 2.0

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
        clean_flagged=(pc > threshold).numpy(),
        adv_flagged=(pa > threshold).numpy(),
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


def _bits(values: npt.NDArray[np.bool_]) -> str:
    """A boolean vector as a string of 0/1, one character per input (compact in JSON)."""
    return "".join("1" if v else "0" for v in np.asarray(values, dtype=bool))


def flags_to_dict(d: Detectability) -> dict[str, str] | None:
    """The per-input flags of a record as 0/1 strings (JSON), or ``None`` where none were kept."""
    if d.clean_flagged is None or d.adv_flagged is None:
        return None
    return {"clean_flagged": _bits(d.clean_flagged), "adversarial_flagged": _bits(d.adv_flagged)}


@dataclass(frozen=True)
class DetectabilityMatrix:
    """Detectability of detectors trained on one setting (rows) tested on another (columns).

    ``details``: the record of each cell (with its per-pair flags); ``intervals``: where
    computed (e.g. by the detector reproduction), a 95% bootstrap interval per cell over the test
    images, same shape as ``values``.
    """

    rows: list[str]
    columns: list[str]
    values: list[list[float]]
    title: str = ""
    details: list[list[Detectability]] = field(default_factory=list, compare=False, repr=False)
    intervals: list[list[Interval]] = field(default_factory=list, compare=False)

    def pair_scores(self, row: int, column: int) -> npt.NDArray[np.float64] | None:
        """The per-pair scores of one cell (their mean is its value), ``None`` without them."""
        if not self.details:
            return None
        return self.details[row][column].pair_scores()

    def to_dict(self) -> dict[str, Any]:
        """Title, labels and values (as always); ``intervals`` (one Interval dict per cell) and
        ``outcomes`` (each cell's per-input flags as 0/1 strings) where present."""
        out: dict[str, Any] = {"title": self.title, "rows": self.rows, "columns": self.columns}
        out["values"] = self.values
        if self.intervals:
            out["intervals"] = [[iv.to_dict() for iv in row] for row in self.intervals]
        flags = [[flags_to_dict(d) for d in row] for row in self.details]
        if flags and all(f is not None for row in flags for f in row):
            out["outcomes"] = flags
        return out


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
