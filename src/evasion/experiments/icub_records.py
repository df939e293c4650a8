"""The settings and typed results of `evasion reproduce icub` (Melis et al. 2017).

:func:`evasion.experiments.icub.run_experiment` returns an :class:`IcubResults`; the report
(:mod:`evasion.experiments.icub_report`) reads it, and ``to_dict()`` gives the JSON of
``icub-results.json`` (keys and order as they have always been; the CLI adds the acceptance
numbers and the interpretation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from ..evaluation.bootstrap import Interval
from ..evaluation.sensitivity import FeatureSensitivity

__all__ = [
    "CALIBRATIONS",
    "AveragedCurve",
    "BaselineCurve",
    "CurvePoints",
    "DriftRow",
    "ExampleFacts",
    "FigureImage",
    "Figures",
    "FitFacts",
    "IcubAcceptance",
    "IcubResults",
    "LinearCheck",
    "ModelFacts",
    "SensitivityResult",
    "SetInfo",
    "Settings",
    "SkippedExamples",
    "SplitFacts",
    "StickerStudy",
]


#: calibrations of the conservative thresholds: "out-of-fold" (the paper's validation set: k-fold
#: out-of-fold scores of the training images) or "sessions" (leave-one-acquisition-session-out
#: scores: each training session scored by an SVM fit without it, so the thresholds see what a
#: new session does to the scores)
CALIBRATIONS = ("out-of-fold", "sessions")


@dataclass(frozen=True)
class Settings:
    """The size of a run (the full run and ``--quick`` differ only in these numbers)."""

    main: str  # dataset of the 7-object set (its first 7 classes)
    fine: str | None  # finer-grained set (all its classes), or None
    baseline: str  # dataset of Fig. 5 (accuracy vs. number of objects)
    baseline_repeats: int
    splits: int  # session splits averaged (test session 3, then 2, 1, 0)
    samples: int  # attacked test images per split, 7-object set
    fine_samples: int
    epsilons: tuple[float, ...]  # L2 budgets of the curves (pixels in [0, 1])
    steps: int
    cv_per_class: int  # training samples per class used to choose C and gamma (0 = all)
    sensitivity_samples: int
    sensitivity_steps: int
    sticker_samples: int
    sticker_epsilons: tuple[float, ...]
    sticker_models: tuple[str, ...]
    example_epsilons: tuple[float, ...]
    batch_size: int = 32
    seed: int = 0
    #: how the conservative "+5% FNR" thresholds are calibrated (one of :data:`CALIBRATIONS`)
    calibrate: str = "out-of-fold"
    resamples: int = 2000  # bootstrap resamples of every interval (over attacked images)
    data: str | None = None  # the iCubWorld28 release folder (None: the rendered icub-sim sets)
    data_per_class: int | None = 100  # with data: first images per class, day and split (None: all)


@dataclass(frozen=True)
class LinearCheck:
    """The linear SVM's clean accuracy on *all* of a dataset's classes (held-out session / views)."""

    dataset: str
    by_session: float
    by_view: float
    classes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split by session": self.by_session,
            "split by view": self.by_view,
            "classes": self.classes,
        }


@dataclass(frozen=True)
class ModelFacts:
    """One fitted classifier of a split: chosen hyper-parameters and clean behaviour."""

    c: float | None
    gamma: float | None
    support_vectors: int
    clean_accuracy: float
    clean_rejected: float
    sklearn_max_abs_diff: float  # |sklearn decision values - the torch head's|, test set
    theta: list[float] | None  # per-class reject thresholds (reject models)

    def to_dict(self) -> dict[str, Any]:
        return {
            "C": self.c,
            "gamma": self.gamma,
            "support_vectors": self.support_vectors,
            "clean_accuracy": self.clean_accuracy,
            "clean_rejected": self.clean_rejected,
            "sklearn_max_abs_diff": self.sklearn_max_abs_diff,
            "theta": self.theta,
        }


@dataclass(frozen=True)
class DriftRow:
    """Clean accuracy and rejection of one reject model, per acquisition session.

    Every session is scored by a classifier that never saw it: the test session by the final
    model, each training session by an SVM-adv fit on the other training sessions (leave one
    session out) with the same thresholds; ``validation`` is the k-fold out-of-fold estimate (the
    paper's validation set, which mixes sessions) that the default calibration relies on.
    """

    model: str  # "SVM-adv", "+5% FNR (out-of-fold)", "+5% FNR (sessions)"
    attacked: bool  # the thresholds of an attacked model of Fig. 6
    sessions: dict[int, tuple[float, float]]  # session -> (clean accuracy, clean rejection)
    validation: tuple[float, float]  # out-of-fold (random folds) (accuracy, rejection)
    test_session: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "attacked": self.attacked,
            "test_session": self.test_session,
            "sessions": {str(k): {"accuracy": a, "rejected": r} for k, (a, r) in self.sessions.items()},
            "validation": {"accuracy": self.validation[0], "rejected": self.validation[1]},
        }


@dataclass(frozen=True)
class FitFacts:
    """The four classifiers fit on one session split."""

    test_session: int
    train: int
    test: int
    fit_seconds: float
    models: dict[str, ModelFacts]
    drift: tuple[DriftRow, ...] = ()  # clean rejection per session of the reject models
    calibrate: str = "out-of-fold"  # how the attacked "+5% FNR" thresholds were calibrated

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_session": self.test_session,
            "train": self.train,
            "test": self.test,
            "fit_seconds": self.fit_seconds,
            "models": {k: m.to_dict() for k, m in self.models.items()},
            "calibrate": self.calibrate,
            "drift": [d.to_dict() for d in self.drift],
        }


@dataclass(frozen=True)
class SplitFacts:
    """One split: its fit, and the attack run on it."""

    fit: FitFacts
    attack_seconds: float
    attacked: int
    target: str  # the error-specific target class
    queries: dict[str, tuple[int, int]]  # "model|attack" -> (forwards, backwards)
    rows: list[int] = field(default_factory=list)  # the attacked images (rows of the set's data)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.fit.to_dict(),
            "attack_seconds": self.attack_seconds,
            "attacked": self.attacked,
            "target": self.target,
            "queries": {k: list(v) for k, v in self.queries.items()},
            "rows": list(self.rows),
        }


@dataclass(frozen=True)
class SetInfo:
    """One object set: its splits and the facts about its data."""

    splits: tuple[SplitFacts, ...]
    dataset: str
    classes: int
    images: int
    sha256: str
    render_seconds_per_view: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": [s.to_dict() for s in self.splits],
            "dataset": self.dataset,
            "classes": self.classes,
            "images": self.images,
            "sha256": self.sha256,
            "render_seconds_per_view": self.render_seconds_per_view,
        }


@dataclass(frozen=True)
class CurvePoints:
    """A security curve of one model, attack and split (``defended``: rejected adversarial counts)."""

    epsilons: list[float]
    accuracy: list[float]
    rejected: list[float]
    defended: list[float]
    misclassified: list[float]
    #: per attacked image (rows) and epsilon: 0 correct, 1 rejected, 2 misclassified
    status: list[list[int]] = field(default_factory=list)


@dataclass(frozen=True)
class AveragedCurve:
    """The mean over splits of one model's curve, with the areas under accuracy and 'defended'."""

    epsilons: list[float]
    accuracy: list[float]
    rejected: list[float]
    defended: list[float]
    misclassified: list[float]
    auc: float
    auc_defended: float
    splits: int
    #: per attacked image of every split (rows) and epsilon: 0 correct, 1 rejected, 2 misclassified
    status: list[list[int]] = field(default_factory=list)
    split: list[int] = field(default_factory=list)  # the split of each row (bootstrap strata)
    accuracy_band: list[Interval] = field(default_factory=list)  # 95% interval per point
    defended_band: list[Interval] = field(default_factory=list)
    auc_interval: Interval | None = None
    auc_defended_interval: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilons": self.epsilons,
            "accuracy": self.accuracy,
            "rejected": self.rejected,
            "defended": self.defended,
            "misclassified": self.misclassified,
            "auc": self.auc,
            "auc_defended": self.auc_defended,
            "splits": self.splits,
            "accuracy_band": [[i.low, i.high] for i in self.accuracy_band],
            "defended_band": [[i.low, i.high] for i in self.defended_band],
            "auc_interval": None if self.auc_interval is None else self.auc_interval.to_dict(),
            "auc_defended_interval": (
                None if self.auc_defended_interval is None else self.auc_defended_interval.to_dict()
            ),
            "split": self.split,
            "status": self.status,
        }


@dataclass(frozen=True)
class BaselineCurve:
    """Fig. 5: linear-SVM accuracy per number of objects (runs per size), and quantiles."""

    set_label: str
    sizes: list[int]
    accuracy: list[list[float]]
    c: float
    guaranteed: dict[str, list[float]]  # "90%" -> accuracy reached with that confidence, per size
    correct: list[int] = field(default_factory=list)  # per test image, the run on every object

    def to_dict(self) -> dict[str, Any]:
        return {
            "set": self.set_label,
            "sizes": self.sizes,
            "accuracy": self.accuracy,
            "C": self.c,
            "guaranteed": self.guaranteed,
            "correct": self.correct,
        }


@dataclass(frozen=True)
class SensitivityResult:
    """Sect. 5: deep-feature sensitivity of one model, with the paper's numbers beside it."""

    record: FeatureSensitivity
    model: str
    images: str
    paper: dict[str, tuple[float, float]]  # "random" / "adversarial" -> (mean, std)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "model": self.model,
            "images": self.images,
            "paper": {k: list(v) for k, v in self.paper.items()},
        }


@dataclass(frozen=True)
class StickerStudy:
    """Minimum d_max per image, whole image vs. sticker, error-generic (``inf``: not evaded)."""

    mask_pixels: int
    mask_fraction: float
    grids: dict[str, list[float]]  # "whole image" / "sticker" -> the d_max grid searched
    min_dmax: dict[str, list[float]]  # "model|whole image" / "model|sticker" -> per image

    def to_dict(self) -> dict[str, Any]:
        return {
            "mask_pixels": self.mask_pixels,
            "mask_fraction": self.mask_fraction,
            "grids": {k: list(v) for k, v in self.grids.items()},
            **{k: list(v) for k, v in self.min_dmax.items()},
        }


@dataclass(frozen=True)
class ExampleFacts:
    """Fig. 7 in numbers: the error-specific sequence, minimal budgets, the sticker study."""

    true: str
    target: str
    sequence: tuple[tuple[float, str], ...]  # (d_max, prediction)
    min_dmax: dict[str, float]  # "whole image" / "sticker" -> minimal d_max that evades
    sticker: StickerStudy

    def to_dict(self) -> dict[str, Any]:
        return {
            "true": self.true,
            "target": self.target,
            "sequence": [{"epsilon": e, "prediction": p} for e, p in self.sequence],
            **{f"min_dmax_{name}": v for name, v in self.min_dmax.items()},
            "sticker": self.sticker.to_dict(),
        }


@dataclass(frozen=True)
class SkippedExamples:
    """Fig. 7 could not be made (no correctly classified test image)."""

    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": self.reason}


@dataclass(frozen=True)
class FigureImage:
    """One image of Fig. 7 with its budget and the model's prediction."""

    epsilon: float
    image: Tensor
    prediction: str


@dataclass(frozen=True)
class Figures:
    """The images of Fig. 7 (not part of the JSON)."""

    sequence: tuple[FigureImage, ...]
    original: Tensor
    minimal: dict[str, FigureImage]
    mask: Tensor
    true: str
    target: str


@dataclass(frozen=True)
class IcubAcceptance:
    """The issue's acceptance numbers, gathered from the results."""

    sklearn_torch_max_abs_diff: float
    linear_svm_clean_accuracy: float
    linear_svm_split: str
    sensitivity_ratio: float
    auc: dict[str, dict[str, dict[str, float]]]  # "set|attack" -> model -> {"auc", "auc_defended"}
    linear_svm_all_classes: LinearCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sklearn_torch_max_abs_diff": self.sklearn_torch_max_abs_diff,
            "linear_svm_clean_accuracy": self.linear_svm_clean_accuracy,
            "linear_svm_split": self.linear_svm_split,
            "sensitivity_ratio": self.sensitivity_ratio,
            "auc": self.auc,
        }
        if self.linear_svm_all_classes is not None:
            out["linear_svm_all_classes"] = self.linear_svm_all_classes.to_dict()
        return out


#: attack -> model -> curve averaged over splits
Curves = dict[str, dict[str, AveragedCurve]]


@dataclass(frozen=True)
class IcubResults:
    """Everything one reproduction measured (``figures`` are images, not part of the JSON)."""

    settings: Settings
    timing: dict[str, float]  # phase -> wall-clock seconds (and total CPU seconds, torch threads)
    sets: dict[str, SetInfo]
    curves: dict[str, Curves]  # set label -> curves
    baseline: BaselineCurve
    sensitivity: SensitivityResult
    examples: ExampleFacts | SkippedExamples
    linear: LinearCheck | None = None  # the linear SVM on all classes of the main dataset
    figures: Figures | None = field(default=None, repr=False, compare=False)
    #: max |features of the attacked (BatchNorm-folded) network - the feature network's|
    network_max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able results (without the acceptance numbers and the interpretation)."""
        return {
            "settings": asdict(self.settings),
            "timing": dict(self.timing),
            "sets": {k: s.to_dict() for k, s in self.sets.items()},
            "curves": {
                label: {a: {m: c.to_dict() for m, c in models.items()} for a, models in attacks.items()}
                for label, attacks in self.curves.items()
            },
            "baseline": self.baseline.to_dict(),
            "sensitivity": self.sensitivity.to_dict(),
            "examples": self.examples.to_dict(),
            "network_max_abs_diff": self.network_max_abs_diff,
        }
