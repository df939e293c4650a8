"""The settings and typed results of `evasion reproduce detector` (Metzen et al. 2017).

:func:`evasion.experiments.detector.reproduce` returns a :class:`DetectorResults`; the report
(:mod:`evasion.experiments.detector_report`) reads it, and ``to_dict()`` gives the JSON written as
``results.json`` (keys and order as they have always been).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import Tensor

from ..defenses.detector_training import TrainingLog
from ..evaluation.curves import SecurityCurve
from ..evaluation.detectability import Detectability, DetectabilityMatrix

__all__ = [
    "AcceptanceItem",
    "AwareSweep",
    "CurveSummary",
    "CurvesResult",
    "DepthTable",
    "DetectorResults",
    "DynamicResult",
    "Example",
    "OperatingPoint",
    "Settings",
    "StaticRow",
    "SweepRow",
]

CIFAR_DIMS, MNIST_DIMS = 3 * 32 * 32, 28 * 28


@dataclass(frozen=True)
class Settings:
    """Sizes and hyper-parameters of one run (``QUICK`` for CI, ``FULL`` for the numbers)."""

    name: str
    n_train: int
    n_val: int
    n_test: int
    grid: tuple[int, ...]  # epsilons in the paper's units (L∞; L2 uses 20x)
    layers: tuple[str, ...]  # attachment depths analysed (Fig. 2 right)
    sigmas: tuple[float, ...]
    n_dynamic: int  # test points of the sigma sweeps
    dyn_train: int  # training points of dynamic adversary training (the first n_train are shared)
    dyn_epochs: int
    n_curve: int  # test points of the security curves
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    width: float = 0.25
    layer: str = "pool1"
    # "auto": the layer of ``layers`` with the best detectability on the validation split (the paper
    # attached DeepFool's detector deeper, AD(4); on another network the best depth differs)
    deepfool_layer: str = "auto"
    deepfool_candidates: int = 10
    deepfool_steps: int = 50
    linf_unit: float = 0.08
    dyn_steps: int = 10
    dyn_alpha: float = 0.25  # paper units
    dyn_val_sigmas: tuple[float, ...] = (0.25, 0.5, 0.75)
    curve_sigmas: tuple[float, ...] = (0.25, 0.5)
    seed: int = 0

    @property
    def l2_unit(self) -> float:
        return self.linf_unit * math.sqrt(MNIST_DIMS / CIFAR_DIMS)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "l2_unit": self.l2_unit}


@dataclass(frozen=True)
class StaticRow:
    """One static adversary at one epsilon (Fig. 2 left): classifier accuracy, detectability."""

    adversary: str
    label: str
    norm: str
    units: float  # paper units (math.inf: minimum-norm)
    epsilon: float
    layer: str
    classifier_accuracy: float
    detectability: Detectability

    def to_dict(self) -> dict[str, Any]:
        return {
            "adversary": self.adversary,
            "label": self.label,
            "norm": self.norm,
            "units": self.units,
            "epsilon": self.epsilon,
            "layer": self.layer,
            "classifier_accuracy": self.classifier_accuracy,
            "detectability": self.detectability.to_dict(),
        }


@dataclass(frozen=True)
class DepthTable:
    """Fig. 2 right: detectability per adversary (key) and attachment layer, at epsilon*."""

    layers: tuple[str, ...]
    detectability: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "detectability": {k: dict(v) for k, v in self.detectability.items()},
        }


@dataclass(frozen=True)
class SweepRow:
    """The dynamic adversary at one sigma; ``detectability`` of its successes (None: no success).

    ``n_successful``: adversarial examples that fool the classifier on inputs it classifies
    correctly (the pairs ``detectability`` counts). ``evasion_rate`` (threshold-aware sweeps only):
    the fraction of all swept test inputs whose adversarial example evades the whole system,
    misclassified and not rejected.
    """

    sigma: float
    classifier_accuracy: float
    n_successful: int
    detectability: Detectability | None
    evasion_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        det = self.detectability.to_dict() if self.detectability is not None else None
        out: dict[str, Any] = {
            "sigma": self.sigma,
            "classifier_accuracy": self.classifier_accuracy,
            "n_successful": self.n_successful,
            "detectability": det,
        }
        if self.evasion_rate is not None:  # the paper's sweeps keep their keys
            out["evasion_rate"] = self.evasion_rate
        return out


@dataclass(frozen=True)
class OperatingPoint:
    """Clean test accuracy and rejected fraction of classifier + detector at one threshold."""

    threshold: float
    accuracy: float
    rejected: float

    def to_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "accuracy": self.accuracy, "rejected": self.rejected}


@dataclass(frozen=True)
class AwareSweep:
    """The threshold-aware dynamic adversary against one detector at its deployed threshold.

    The system rejects where ``p_adv > threshold`` (set for ``fpr`` false positives on the
    validation split); the adversary (``detector_loss="hinge"``) aims ``kappa`` logits below it,
    and detectability is scored at the same threshold.
    """

    threshold: float
    rows: tuple[SweepRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "rows": [r.to_dict() for r in self.rows]}


@dataclass(frozen=True)
class DynamicResult:
    """Fig. 5: sigma sweeps against the static and the dynamically trained detector.

    ``static`` / ``dynamic``: the paper's protocol (CE dynamic adversary, threshold 0.5).
    ``aware``: detector ("static", "dynamic") -> the threshold-aware adversary's sweep against
    the system deployed at ``aware_fpr`` validation FPR (empty where not measured).
    """

    epsilon: float
    step_size: float
    steps: int
    layer: str
    static: tuple[SweepRow, ...]
    training: TrainingLog
    dynamic: tuple[SweepRow, ...]
    #: detector ("static", "dynamic") -> operating point ("threshold_0.5", "fpr_0.05") -> numbers
    combined_clean: dict[str, dict[str, OperatingPoint]]
    aware: dict[str, AwareSweep] = field(default_factory=dict)
    aware_fpr: float = 0.05
    aware_kappa: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "epsilon": self.epsilon,
            "step_size": self.step_size,
            "steps": self.steps,
            "layer": self.layer,
            "static": [r.to_dict() for r in self.static],
            "training": self.training.to_dict(),
            "dynamic": [r.to_dict() for r in self.dynamic],
            "combined_clean": {
                k: {name: p.to_dict() for name, p in points.items()}
                for k, points in self.combined_clean.items()
            },
        }
        out["threshold_aware"] = {
            "detector_loss": "hinge",
            "kappa": self.aware_kappa,
            "fpr": self.aware_fpr,
            "keep": "best",
            **{name: sweep.to_dict() for name, sweep in self.aware.items()},
        }
        return out


@dataclass(frozen=True)
class CurveSummary:
    """A security curve with its areas under accuracy and under accuracy + rejected."""

    curve: SecurityCurve
    auc_defended: float

    @property
    def accuracy(self) -> list[float]:
        return self.curve.accuracy

    @property
    def rejected(self) -> list[float]:
        return self.curve.rejected

    @property
    def auc(self) -> float:
        return self.curve.auc()

    def to_dict(self) -> dict[str, Any]:
        return {**self.curve.to_dict(), "auc": self.auc, "auc_defended": self.auc_defended}


@dataclass(frozen=True)
class CurvesResult:
    """Security curves per system (undefended, detector-defended) and attack (and "worst case")."""

    epsilons: tuple[float, ...]
    units: tuple[float, ...]  # the epsilons in paper units
    models: dict[str, dict[str, CurveSummary]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilons": list(self.epsilons),
            "units": list(self.units),
            "models": {m: {a: c.to_dict() for a, c in curves.items()} for m, curves in self.models.items()},
        }


@dataclass(frozen=True)
class Example:
    """Clean / adversarial test images of one adversary at epsilon* (the report's image grid)."""

    label: str
    clean: Tensor
    adversarial: Tensor


@dataclass(frozen=True)
class AcceptanceItem:
    """One acceptance item of a reproduction: a finding of the paper, a check, or ``info``.

    ``static``, ``dynamic`` and ``finding`` items are the paper's results re-measured here; ``ok``
    says whether they hold. A result that differs from the paper is a result, never a failure.
    ``check`` items are invariants of this code (values in range, two implementations agreeing):
    one that fails is an error, and only that makes ``reproduce`` exit non-zero. ``info`` items
    are reported, not judged.
    """

    ok: bool
    kind: Literal["static", "dynamic", "finding", "info", "check"]
    text: str

    @property
    def status(self) -> str:
        """``holds`` / ``does not hold`` for findings, ``ok`` / ``ERROR`` for checks, ``info``."""
        if self.kind == "info":
            return "info"
        if self.kind == "check":
            return "ok" if self.ok else "ERROR"
        return "holds" if self.ok else "does not hold"

    @property
    def label(self) -> str:
        """The status as printed: ``finding holds``, ``finding does not hold``, ``check ok``, ``ERROR``, ``info``."""
        if self.kind == "info":
            return "info"
        if self.kind == "check":
            return "check ok" if self.ok else "ERROR"
        return f"finding {self.status}"

    @property
    def error(self) -> bool:
        """Whether this is a failed check: a broken invariant of this code, not a scientific result."""
        return self.kind == "check" and not self.ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "kind": self.kind, "text": self.text}


@dataclass(frozen=True)
class DetectorResults:
    """Everything one reproduction measured (``examples`` are images, not part of the JSON)."""

    settings: Settings
    clean_accuracy: float
    #: training logs per detector, ``"{adversary}@{epsilon}@{layer}"`` -> the log's dict
    training: dict[str, dict[str, Any]]
    #: adversary -> layer -> validation detectability (where the layer was chosen automatically)
    layer_selection: dict[str, dict[str, float]]
    static: tuple[StaticRow, ...]
    eps_star: dict[str, float]
    depth: DepthTable
    fig3: dict[str, DetectabilityMatrix]
    fig4: DetectabilityMatrix
    dynamic: DynamicResult
    curves: CurvesResult
    timings: dict[str, float]
    examples: tuple[Example, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able results (what ``results.json`` holds before the CLI's additions)."""
        out: dict[str, Any] = {"settings": self.settings.to_dict(), "clean_accuracy": self.clean_accuracy}
        if self.training:
            out["training"] = dict(self.training)
        if self.layer_selection:
            out["layer_selection"] = {k: dict(v) for k, v in self.layer_selection.items()}
        out["static"] = [r.to_dict() for r in self.static]
        out["eps_star"] = dict(self.eps_star)
        out["depth"] = self.depth.to_dict()
        out["fig3"] = {k: m.to_dict() for k, m in self.fig3.items()}
        out["fig4"] = self.fig4.to_dict()
        out["dynamic"] = self.dynamic.to_dict()
        out["curves"] = self.curves.to_dict()
        out["timings"] = dict(self.timings)
        return out
