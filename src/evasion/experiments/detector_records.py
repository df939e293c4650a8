"""The settings and typed results of `evasion reproduce detector` (Metzen et al. 2017).

:func:`evasion.experiments.detector.reproduce` returns a :class:`DetectorResults`; the report
(:mod:`evasion.experiments.detector_report`) reads it, and ``to_dict()`` gives the JSON written as
``results.json`` (keys and order as they have always been).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from torch import Tensor

from ..defenses.detector_training import TrainingLog
from ..evaluation.bootstrap import Interval, Verdict, bootstrap, bootstrap_columns
from ..evaluation.curves import CORRECT, MISCLASSIFIED, REJECTED, SecurityCurve
from ..evaluation.detectability import Detectability, DetectabilityMatrix, flags_to_dict

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
    "PairOutcomes",
    "Settings",
    "StaticRow",
    "SweepRow",
    "matrix_difference",
    "with_intervals",
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
    resamples: int = 2000  # bootstrap resamples of the test images behind every 95% interval
    # the data and classifier: mnist5k / mnist-cnn, or "cifar10" (the user's python batches, `--data`)
    # with the paper's ResNet (`resnet_blocks` residual blocks per stage: 5 is ResNet-32)
    dataset: str = "mnist5k"
    input_dims: int = MNIST_DIMS  # L2 epsilons keep the paper's per-pixel size on this many dimensions
    resnet_blocks: int = 5
    clf_train: int = 50_000  # CIFAR: training images of the classifier (the first ones; all if fewer)
    clf_epochs: int = 30
    clf_lr: float = 1e-3
    clf_batch_size: int = 128

    @property
    def l2_unit(self) -> float:
        return self.linf_unit * math.sqrt(self.input_dims / CIFAR_DIMS)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "l2_unit": self.l2_unit}


Bools = npt.NDArray[np.bool_]


def _bits(values: Bools) -> str:
    """A boolean vector as a string of 0/1, one character per test image (compact in JSON)."""
    return "".join("1" if v else "0" for v in np.asarray(values, dtype=bool))


@dataclass(frozen=True, eq=False)
class PairOutcomes:
    """Per-image outcomes behind a detectability, one entry per test image (pairs stay paired).

    ``clean_flagged`` / ``adv_flagged``: the detector flags the clean image / its adversarial
    example (``p_adv`` above the threshold scored). ``adv_correct``: the classifier is right on the
    adversarial example. ``kept``: the pairs detectability counts (dynamic adversaries: those whose
    example fools the classifier on an image it classifies correctly); ``None`` keeps all.
    ``evaded``: the adversarial example evades the whole system (misclassified, not rejected).
    """

    clean_flagged: Bools
    adv_flagged: Bools
    adv_correct: Bools
    kept: Bools | None = None
    evaded: Bools | None = None

    @property
    def n(self) -> int:
        return len(self.clean_flagged)

    def scores(self) -> npt.NDArray[np.float64]:
        """Per kept pair: (clean image not flagged + adversarial example flagged) / 2.

        Their mean is the detectability (the accuracy on the balanced joint set of footnote 3)."""
        score = ((~self.clean_flagged).astype(float) + self.adv_flagged.astype(float)) / 2.0
        return score if self.kept is None else score[self.kept]

    def to_dict(self) -> dict[str, str]:
        out = {
            "clean_flagged": _bits(self.clean_flagged),
            "adversarial_flagged": _bits(self.adv_flagged),
            "adversarial_correct": _bits(self.adv_correct),
        }
        if self.kept is not None:
            out["kept"] = _bits(self.kept)
        if self.evaded is not None:
            out["evaded"] = _bits(self.evaded)
        return out


def _iv(interval: Interval | None) -> dict[str, Any] | None:
    return None if interval is None else interval.to_dict()


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
    outcomes: PairOutcomes | None = field(default=None, compare=False)
    #: 95% bootstrap intervals over the test images (see :func:`with_intervals`)
    interval: Interval | None = None
    accuracy_interval: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "adversary": self.adversary,
            "label": self.label,
            "norm": self.norm,
            "units": self.units,
            "epsilon": self.epsilon,
            "layer": self.layer,
            "classifier_accuracy": self.classifier_accuracy,
            "detectability": self.detectability.to_dict(),
        }
        if self.interval is not None:
            out["detectability_interval"] = _iv(self.interval)
            out["classifier_accuracy_interval"] = _iv(self.accuracy_interval)
        if self.outcomes is not None:
            out["outcomes"] = self.outcomes.to_dict()
        return out


@dataclass(frozen=True)
class DepthTable:
    """Fig. 2 right: detectability per adversary (key) and attachment layer, at epsilon*.

    ``details``: each cell's record (with its per-pair flags); ``intervals``: the 95% bootstrap
    interval of each cell (see :func:`with_intervals`), keyed like ``detectability``.
    """

    layers: tuple[str, ...]
    detectability: dict[str, dict[str, float]]
    details: dict[str, dict[str, Detectability]] = field(default_factory=dict, compare=False, repr=False)
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layers": list(self.layers),
            "detectability": {k: dict(v) for k, v in self.detectability.items()},
        }
        if self.intervals:
            out["intervals"] = {
                k: {layer: iv.to_dict() for layer, iv in row.items()} for k, row in self.intervals.items()
            }
        flags = {k: {layer: flags_to_dict(d) for layer, d in row.items()} for k, row in self.details.items()}
        if flags and all(f is not None for row in flags.values() for f in row.values()):
            out["outcomes"] = flags
        return out


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
    outcomes: PairOutcomes | None = field(default=None, compare=False)
    #: 95% bootstrap intervals (detectability of the successful pairs; evasion over all swept images)
    interval: Interval | None = None
    evasion_interval: Interval | None = None

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
        if self.interval is not None:
            out["detectability_interval"] = _iv(self.interval)
        if self.evasion_interval is not None:
            out["evasion_interval"] = _iv(self.evasion_interval)
        if self.outcomes is not None:
            out["outcomes"] = self.outcomes.to_dict()
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
    #: per test image and epsilon: 0 correct, 1 rejected, 2 misclassified (images, epsilons)
    status: npt.NDArray[np.int64] | None = field(default=None, compare=False, repr=False)
    accuracy_band: tuple[Interval, ...] = ()
    rejected_band: tuple[Interval, ...] = ()
    unbroken_band: tuple[Interval, ...] = ()  # correct or rejected (not misclassified)
    auc_interval: Interval | None = None
    auc_defended_interval: Interval | None = None

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
        out = {**self.curve.to_dict(), "auc": self.auc, "auc_defended": self.auc_defended}
        if self.auc_interval is not None:
            out["accuracy_band"] = [iv.to_dict() for iv in self.accuracy_band]
            out["rejected_band"] = [iv.to_dict() for iv in self.rejected_band]
            out["unbroken_band"] = [iv.to_dict() for iv in self.unbroken_band]
            out["auc_interval"] = _iv(self.auc_interval)
            out["auc_defended_interval"] = _iv(self.auc_defended_interval)
        if self.status is not None:  # one string per test image, one digit per epsilon
            out["status"] = ["".join(str(int(v)) for v in row) for row in self.status]
        return out


@dataclass(frozen=True)
class CurvesResult:
    """Security curves per system (undefended, detector-defended) and attack (and "worst case")."""

    epsilons: tuple[float, ...]
    units: tuple[float, ...]  # the epsilons in paper units
    models: dict[str, dict[str, CurveSummary]]
    #: "A - B" -> paired interval of AUC(accuracy + rejected) of A minus B, worst case, same images
    differences: dict[str, Interval] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epsilons": list(self.epsilons),
            "units": list(self.units),
            "models": {m: {a: c.to_dict() for a, c in curves.items()} for m, curves in self.models.items()},
        }
        if self.differences:
            out["auc_defended_differences"] = {k: iv.to_dict() for k, iv in self.differences.items()}
        return out


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
    #: decided on 95% intervals: "inconclusive" when an interval straddles the paper's bound
    verdict: Verdict | None = None

    @property
    def status(self) -> str:
        """``holds`` / ``does not hold`` / ``inconclusive`` for findings, ``ok`` / ``ERROR`` for checks, ``info``."""
        if self.kind == "info":
            return "info"
        if self.kind == "check":
            return "ok" if self.ok else "ERROR"
        if self.verdict is not None:
            return self.verdict
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
        out: dict[str, Any] = {"ok": self.ok, "kind": self.kind, "text": self.text}
        if self.verdict is not None:
            out["verdict"] = self.verdict
        return out


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
    #: the classifier attacked, where it is not the zoo's (CIFAR: trained here or loaded, and how)
    classifier: dict[str, Any] = field(default_factory=dict)

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
        if self.classifier:
            out["classifier"] = dict(self.classifier)
        return out


# -- intervals -------------------------------------------------------------------------------------
def _mean(values: npt.NDArray[np.float64]) -> float:
    return float(np.mean(values))


def _pair_intervals(outcomes: PairOutcomes, resamples: int, seed: int) -> tuple[Interval | None, Interval]:
    """(detectability over the kept pairs or None if none is kept, classifier accuracy over all)."""
    scores = outcomes.scores()
    det = bootstrap(_mean, scores, resamples=resamples, seed=seed) if len(scores) else None
    acc = bootstrap(_mean, outcomes.adv_correct.astype(float), resamples=resamples, seed=seed)
    return det, acc


def _sweep_intervals(rows: tuple[SweepRow, ...], resamples: int, seed: int) -> tuple[SweepRow, ...]:
    out = []
    for r in rows:
        if r.outcomes is None:
            out.append(r)
            continue
        det, _ = _pair_intervals(r.outcomes, resamples, seed)
        evaded = r.outcomes.evaded
        ev = (
            bootstrap(_mean, evaded.astype(float), resamples=resamples, seed=seed)
            if evaded is not None
            else None
        )
        out.append(replace(r, interval=det, evasion_interval=ev))
    return tuple(out)


def _per_image_auc(
    status: npt.NDArray[np.int64], eps: tuple[float, ...], defended: bool
) -> npt.NDArray[np.float64]:
    """Each image's area under its own 0/1 curve (the curve's AUC is their mean: the area is linear)."""
    ok = status == CORRECT
    if defended:  # a rejected adversarial input is defended, a rejected clean one is not
        ok = ok | ((status == REJECTED) & (np.asarray(eps) > 0)[None, :])
    v, e = ok.astype(float), np.asarray(eps, dtype=float)
    if len(e) < 2:
        return v[:, 0]
    area = ((e[1:] - e[:-1])[None, :] * (v[:, 1:] + v[:, :-1]) / 2).sum(axis=1)
    return np.asarray(area / (e[-1] - e[0]), dtype=float)


def _curve_intervals(c: CurveSummary, eps: tuple[float, ...], resamples: int, seed: int) -> CurveSummary:
    if c.status is None:
        return c
    st = c.status
    return replace(
        c,
        accuracy_band=tuple(bootstrap_columns((st == CORRECT).astype(float), resamples=resamples, seed=seed)),
        rejected_band=tuple(
            bootstrap_columns((st == REJECTED).astype(float), resamples=resamples, seed=seed)
        ),
        unbroken_band=tuple(
            bootstrap_columns((st != MISCLASSIFIED).astype(float), resamples=resamples, seed=seed)
        ),
        auc_interval=bootstrap(_mean, _per_image_auc(st, eps, False), resamples=resamples, seed=seed),
        auc_defended_interval=bootstrap(_mean, _per_image_auc(st, eps, True), resamples=resamples, seed=seed),
    )


def _paired_differences(curves: CurvesResult, resamples: int, seed: int) -> dict[str, Interval]:
    """AUC(accuracy + rejected) of each defended system minus the undefended one, worst case,
    resampling the same test images for both (a paired comparison)."""
    worst = {m: c.get("worst case") for m, c in curves.models.items()}
    base = worst.get("undefended")
    if base is None or base.status is None:
        return {}
    a0 = _per_image_auc(base.status, curves.epsilons, True)
    out = {}
    for m, c in worst.items():
        if m == "undefended" or c is None or c.status is None or len(c.status) != len(a0):
            continue
        a1 = _per_image_auc(c.status, curves.epsilons, True)
        out[f"{m} - undefended"] = bootstrap(
            lambda x, y: float(np.mean(x) - np.mean(y)), a1, a0, resamples=resamples, seed=seed
        )
    return out


def _scores_interval(d: Detectability | None, resamples: int, seed: int) -> Interval | None:
    scores = None if d is None else d.pair_scores()
    if scores is None or len(scores) == 0:
        return None
    return bootstrap(_mean, scores, resamples=resamples, seed=seed)


def _matrix_intervals(m: DetectabilityMatrix, resamples: int, seed: int) -> DetectabilityMatrix:
    """``m`` with the interval of every cell (the same test images resampled for every cell);
    unchanged where some cell has no per-pair flags."""
    ivs = [[_scores_interval(d, resamples, seed) for d in row] for row in m.details]
    if not ivs or any(iv is None for row in ivs for iv in row):
        return m
    return replace(m, intervals=[[iv for iv in row if iv is not None] for row in ivs])


def _depth_intervals(t: DepthTable, resamples: int, seed: int) -> DepthTable:
    ivs = {
        k: {layer: _scores_interval(d, resamples, seed) for layer, d in row.items()}
        for k, row in t.details.items()
    }
    if not ivs or any(iv is None for row in ivs.values() for iv in row.values()):
        return t
    return replace(
        t, intervals={k: {la: iv for la, iv in row.items() if iv is not None} for k, row in ivs.items()}
    )


def matrix_difference(
    m: DetectabilityMatrix,
    plus: Sequence[tuple[int, int]],
    minus: Sequence[tuple[int, int]],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval | None:
    """Paired 95% interval of (mean of the ``plus`` cells) - (mean of the ``minus`` cells).

    Every cell of a generalisation matrix is measured on the same test images (each with its
    adversarial example of the column's setting), so an image is one row carrying its score in
    every cell: resampling images keeps the comparison paired. ``None`` where a cell has no
    per-pair scores or the cells hold different images (sizes differ)."""
    if not plus or not minus:
        return None
    cols = [m.pair_scores(i, j) for i, j in (*plus, *minus)]
    if any(c is None for c in cols):
        return None
    arrays = [c for c in cols if c is not None]
    if len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        return None
    table = np.stack(arrays, axis=1)
    k = len(plus)
    per_image = table[:, :k].mean(axis=1) - table[:, k:].mean(axis=1)
    return bootstrap(_mean, per_image, resamples=resamples, seed=seed)


def with_intervals(results: DetectorResults) -> DetectorResults:
    """``results`` with a 95% bootstrap interval beside every detectability, evasion rate and curve.

    The test images are resampled (``settings.resamples`` times, seeded by ``settings.seed``):
    an image and its adversarial example stay one row, so detectability (a balanced accuracy over
    clean and adversarial inputs) keeps its pairing; a dynamic adversary's detectability counts the
    resampled images whose example fooled the classifier; curve bands and AUCs resample whole
    per-image curves. Every cell of the generalisation matrices (Figs. 3 and 4) and of the
    attachment-depth table gets the interval of its paired per-image scores (same resamples in
    every cell). Rows and cells without per-image outcomes keep no interval.
    """
    n, seed = results.settings.resamples, results.settings.seed
    static = []
    for r in results.static:
        if r.outcomes is None:
            static.append(r)
            continue
        det, acc = _pair_intervals(r.outcomes, n, seed)
        static.append(replace(r, interval=det, accuracy_interval=acc))
    dyn = results.dynamic
    dyn = replace(
        dyn,
        static=_sweep_intervals(dyn.static, n, seed),
        dynamic=_sweep_intervals(dyn.dynamic, n, seed),
        aware={k: replace(a, rows=_sweep_intervals(a.rows, n, seed)) for k, a in dyn.aware.items()},
    )
    cv = results.curves
    models = {
        m: {a: _curve_intervals(c, cv.epsilons, n, seed) for a, c in curves.items()}
        for m, curves in cv.models.items()
    }
    cv = replace(cv, models=models)
    cv = replace(cv, differences=_paired_differences(cv, n, seed))
    return replace(
        results,
        static=tuple(static),
        depth=_depth_intervals(results.depth, n, seed),
        fig3={k: _matrix_intervals(m, n, seed) for k, m in results.fig3.items()},
        fig4=_matrix_intervals(results.fig4, n, seed),
        dynamic=dyn,
        curves=cv,
    )
