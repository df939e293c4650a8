"""`evasion reproduce detector`: Metzen et al. (2017), "On detecting adversarial perturbations".

Runs on ``mnist-cnn`` / ``mnist5k`` (CPU-sized); :func:`reproduce` returns a
:class:`~evasion.experiments.detector_records.DetectorResults` and writes nothing (the CLI writes
``report.html`` + ``results.json``):

1. static adversaries (Fast, Iterative L∞ / L2, DeepFool L2 / L∞) over the paper's epsilon grids,
   one detector trained per adversary and epsilon; detectability vs. classifier accuracy (Fig. 2
   left) and per attachment layer at the smallest epsilon below 30% accuracy (Fig. 2 right);
2. generalisation matrices: epsilon_fit x epsilon_test (Fig. 3) and adversary x adversary (Fig. 4);
3. the dynamic adversary for sigma in 0..1 against the static detector and a detector hardened by
   dynamic adversary training (Fig. 5), with the clean accuracy of the combined system; beside
   the paper's protocol (CE dynamic adversary, detectability at p_adv > 0.5), the same sweep by
   the threshold-aware dynamic adversary (``detector_loss="hinge"``) against each system deployed
   at its 5%-FPR threshold, scored at that threshold, with the fraction of inputs that evade it;
4. security evaluation curves of the undefended classifier and the detector-defended systems
   under the static attack (BIM on the classifier) and adaptive ones that see the detector (PGD
   on the reject-aware margin, the threshold-aware dynamic adversary), rejected fractions included.

Epsilons: the paper's grids are in [0, 255] units on 32x32x3 CIFAR images. A CNN on MNIST needs
far larger L∞ perturbations to be fooled, so one paper unit maps to ``linf_unit`` (0.08, about
20/255) in L∞, and to ``linf_unit * sqrt(784 / 3072)`` in L2 (the same per-pixel size on a
smaller image): L∞ {1, 2, 3, 4} -> {0.08, 0.16, 0.24, 0.32}, L2 {20, 40, 60, 80} -> {0.81, 1.62,
2.42, 3.23}. The steps follow the paper in the same units: alpha = 1 (L∞) and 20 (L2) for the
iterative methods, 10 iterations, and alpha = 0.25 for the dynamic adversary.

**CIFAR-10** (``--data``, :data:`CIFAR_FULL` / :data:`CIFAR_QUICK`): the user's CIFAR-10 python
batches and the paper's ResNet-32 (``resnet32-cifar``, trained here by the project's trainer or
loaded from a state dict), epsilons in the paper's own units (1 = 1/255 in L∞ and L2, on the
same 3,072 dimensions), detectors at the paper's attachment points AD(0)-AD(4) (the ResNet's
input, stem and three stages): AD(2) for Fast / Iterative, AD(4) for DeepFool, as in the paper.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .. import datasets, models
from ..attacks import BIM, FGSM, PGD, Attack, DeepFool, DynamicAdversary
from ..datasets.base import Dataset
from ..datasets.cifar import CifarLayoutError, check_cifar10, read_cifar
from ..defenses.detected import DetectedClassifier
from ..defenses.detector import Detector
from ..defenses.detector_training import (
    TrainingConfig,
    adversarial_examples,
    train_dynamic_detector,
)
from ..defenses.static_detector import fit_static_detector
from ..errors import ConfigError, DataError
from ..evaluation import AttackSpec, Evaluation, evaluate
from ..evaluation.curves import clean_status, cumulative_status, worst_status
from ..evaluation.detectability import (
    Detectability,
    DetectabilityMatrix,
    detectability,
    detectability_from_scores,
    generalisation_matrix,
)
from ..models.architectures.resnet_cifar import ATTACHMENT_POINTS, CIFAR10_CLASSES, ResNetCifar
from ..models.architectures.small import seeded
from ..models.io import load_file
from ..models.training import train_classifier
from ..progress import NULL_PROGRESS, ProgressBar
from ..threat_model import ThreatModel
from .detector_records import (
    CIFAR_DIMS,
    AwareSweep,
    CurvesResult,
    CurveSummary,
    DepthTable,
    DetectorResults,
    DynamicResult,
    Example,
    OperatingPoint,
    PairOutcomes,
    Settings,
    StaticRow,
    SweepRow,
    with_intervals,
)

__all__ = [
    "CIFAR_FULL",
    "CIFAR_QUICK",
    "FULL",
    "QUICK",
    "DetectorResults",
    "Settings",
    "adversaries",
    "check_sizes",
    "cifar_classifier",
    "load_cifar10",
    "reproduce",
]

T = TypeVar("T")

#: the deployed operating point: the threshold that flags this fraction of clean validation inputs
DEPLOYED_FPR = 0.05

QUICK = Settings(
    "quick",
    n_train=300,
    n_val=100,
    n_test=200,
    grid=(1, 3),
    layers=("pool1", "pool2"),
    sigmas=(0.0, 0.25, 0.5, 0.75, 1.0),
    n_dynamic=100,
    dyn_train=300,
    dyn_epochs=2,
    n_curve=100,
    epochs=2,
    width=0.125,
    deepfool_candidates=4,
    deepfool_steps=20,
    dyn_val_sigmas=(0.5,),
    curve_sigmas=(0.5,),
)
FULL = Settings(
    "full",
    n_train=1500,
    n_val=300,
    n_test=1000,
    grid=(1, 2, 3, 4),
    layers=("relu1", "pool1", "relu2", "pool2"),
    sigmas=tuple(i / 10 for i in range(11)),
    n_dynamic=500,
    dyn_train=2500,
    dyn_epochs=8,
    n_curve=200,
    deepfool_candidates=5,
)


#: the paper's attachment points AD(0)..AD(4) as layers of resnet32-cifar
CIFAR_LAYERS = tuple(ATTACHMENT_POINTS.values())
_CIFAR = {
    "dataset": "cifar10",
    "input_dims": CIFAR_DIMS,
    "linf_unit": 1 / 255,  # the paper's units themselves: [0, 255] pixels
    "layer": ATTACHMENT_POINTS["AD(2)"],  # Fast / Iterative, as in the paper
    "deepfool_layer": ATTACHMENT_POINTS["AD(4)"],  # DeepFool, as in the paper
}
#: the paper's protocol on CIFAR-10 at a size one machine holds in memory: the classifier on the
#: paper's 45,000 training images; detectors on 10,000 of them (paper: 45,000), 1,000 validation
#: (5,000) and 2,000 test images (10,000); detector Adam lr 1e-4, 20 epochs, full width (paper)
CIFAR_FULL = Settings(
    "cifar",
    n_train=10_000,
    n_val=1_000,
    n_test=2_000,
    grid=(1, 2, 3, 4),
    layers=CIFAR_LAYERS,
    sigmas=tuple(i / 10 for i in range(11)),
    n_dynamic=1_000,
    dyn_train=10_000,
    dyn_epochs=10,
    n_curve=500,
    epochs=20,
    lr=1e-4,
    width=1.0,
    deepfool_candidates=10,
    clf_train=45_000,
    clf_epochs=50,
    **_CIFAR,  # type: ignore[arg-type]
)
#: a CPU-sized smoke run of the same protocol (classifier on 5,000 images, 3 epochs: far below
#: the paper's 91% accuracy, so its numbers only show that everything runs)
CIFAR_QUICK = Settings(
    "cifar-quick",
    n_train=1_000,
    n_val=200,
    n_test=500,
    grid=(1, 3),
    layers=(ATTACHMENT_POINTS["AD(1)"], ATTACHMENT_POINTS["AD(2)"], ATTACHMENT_POINTS["AD(4)"]),
    sigmas=(0.0, 0.25, 0.5, 0.75, 1.0),
    n_dynamic=200,
    dyn_train=1_000,
    dyn_epochs=2,
    n_curve=100,
    width=0.25,
    deepfool_candidates=4,
    deepfool_steps=20,
    dyn_val_sigmas=(0.5,),
    curve_sigmas=(0.5,),
    clf_train=5_000,
    clf_epochs=3,
    **_CIFAR,  # type: ignore[arg-type]
)


@dataclass(frozen=True)
class Adversary:
    """A static adversary of the paper: its attack, norm, epsilons and detector layer."""

    key: str
    label: str
    attack: Attack
    norm: str
    units: tuple[float, ...]  # paper units (math.inf: minimum-norm, no budget)
    epsilons: tuple[float, ...]
    layer: str


def adversaries(s: Settings) -> list[Adversary]:
    """Fast, Iterative L∞ / L2 and DeepFool L2 / L∞ with the paper's settings in MNIST units."""
    inf = (math.inf,)
    grid = tuple(float(k) for k in s.grid)
    l2_grid = tuple(20.0 * k for k in grid)
    linf_eps, l2_eps = tuple(k * s.linf_unit for k in grid), tuple(k * s.l2_unit for k in l2_grid)
    deepfool = DeepFool(steps=s.deepfool_steps, candidates=s.deepfool_candidates)
    fast = FGSM(early_stop=False, keep="last")  # x + eps sgn(grad), also for misclassified points

    def iterative(step: float) -> BIM:
        return BIM(steps=10, step_size=step, early_stop=False, keep="last")

    return [
        Adversary("fast", "Fast", fast, "linf", grid, linf_eps, s.layer),
        Adversary("bim-linf", "Iterative ℓ∞", iterative(s.linf_unit), "linf", grid, linf_eps, s.layer),
        Adversary("bim-l2", "Iterative ℓ2", iterative(20 * s.l2_unit), "l2", l2_grid, l2_eps, s.layer),
        Adversary("deepfool-l2", "DeepFool ℓ2", deepfool, "l2", inf, inf, s.deepfool_layer),
        Adversary("deepfool-linf", "DeepFool ℓ∞", deepfool, "linf", inf, inf, s.deepfool_layer),
    ]


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class State:
    """What the phases share: model, data, adversarial sets, trained detectors, training logs."""

    settings: Settings
    clf: models.Classifier
    splits: dict[str, Split]
    bar: ProgressBar
    adversarial: dict[tuple[str, float], dict[str, torch.Tensor]]
    detectors: dict[tuple[str, float, str], Detector]
    results: dict[str, dict[str, Any]]  # "training": the log of every detector fit (see _train)
    layer_selection: dict[str, dict[str, float]] = field(default_factory=dict)


def load_cifar10(root: str | Path) -> tuple[Dataset, Dataset]:
    """The training and test sets of the CIFAR-10 python release under ``root``.

    Validates the layout (:func:`~evasion.datasets.cifar.check_cifar10`) and reads every batch
    before anything long starts; a missing, unreadable or malformed batch, or data that is not
    10 classes of 3x32x32 images, is a one-line :class:`CifarLayoutError` (CLI exit code 2).
    """
    base = check_cifar10(root)
    try:
        train, test = read_cifar(base, "train"), read_cifar(base, "test")
    except CifarLayoutError:
        raise
    except DataError as exc:
        raise CifarLayoutError(f"{exc} (expected the CIFAR-10 python release)") from None
    if train.num_classes != 10 or tuple(train.input_shape) != (3, 32, 32):
        raise CifarLayoutError(
            f"{base}: {train.num_classes} classes of {tuple(train.input_shape)} images; expected CIFAR-10 "
            "(10 classes of 3x32x32 images)"
        )
    return train, test


def _resnet(blocks: int) -> Callable[[], torch.nn.Module]:
    """A builder of the paper's CIFAR ResNet (``blocks`` = 5: ResNet-32), seeded like the zoo's."""
    return lambda: seeded(lambda: ResNetCifar(10, blocks=blocks), 0)


def cifar_classifier(
    s: Settings,
    train: Dataset,
    device: torch.device,
    *,
    weights: str | Path | None = None,
    save: str | Path | None = None,
    bar: ProgressBar = NULL_PROGRESS,
) -> tuple[models.Classifier, dict[str, Any]]:
    """The paper's ResNet on CIFAR-10: loaded from ``weights`` (a state dict, read with
    ``weights_only=True``), or trained on the first ``s.clf_train`` training images by the
    project's trainer (Adam, cosine learning rate, shifts of up to 4 pixels) and written to
    ``save``. Returns the classifier and what to record about it."""
    build, name = _resnet(s.resnet_blocks), f"resnet{6 * s.resnet_blocks + 2}-cifar"
    info: dict[str, Any] = {"name": name, "architecture": "resnet32-cifar" if s.resnet_blocks == 5 else name}
    if weights is None:
        if save is None:
            raise ConfigError("training the CIFAR ResNet needs a file to save its weights to")
        data = train.head(min(s.clf_train, len(train)))
        task = bar.add(f"train {name} on {len(data)} images", s.clf_epochs)
        started = time.perf_counter()
        module = train_classifier(
            build(),
            data,
            epochs=s.clf_epochs,
            lr=s.clf_lr,
            batch_size=s.clf_batch_size,
            seed=s.seed,
            augment_shift=4,
            device=device,
            progress=lambda epoch, loss: bar.advance(task),
        )
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in module.state_dict().items()}, buffer)
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        Path(save).write_bytes(buffer.getvalue())
        weights = save
        info.update(
            trained_on=len(data),
            epochs=s.clf_epochs,
            lr=s.clf_lr,
            batch_size=s.clf_batch_size,
            seconds=round(time.perf_counter() - started, 1),
        )
    clf = load_file(
        weights,
        architecture=build,
        input_shape=(3, 32, 32),
        num_classes=10,
        class_names=list(CIFAR10_CLASSES),
        name=name,
        device=device,
    )
    info["weights"] = str(weights)
    return clf, info


def check_sizes(s: Settings, data: tuple[Dataset, Dataset]) -> None:
    """A one-line :class:`ConfigError` when the data holds fewer images than ``s`` needs (before
    anything long: the CLI checks the user's CIFAR-10 before training the classifier)."""
    train, test = data
    need = max(s.n_train, s.dyn_train) + s.n_val
    if need > len(train) or s.n_test > len(test):
        raise ConfigError(
            f"{s.dataset} has {len(train)} training and {len(test)} test images; the {s.name} run needs "
            f"{need} and {s.n_test}"
        )


def _data(s: Settings, device: torch.device, data: tuple[Dataset, Dataset] | None = None) -> dict[str, Split]:
    if data is None:
        if s.dataset != "mnist5k":
            raise ConfigError(f"settings {s.name!r} run on {s.dataset}: pass its training and test sets")
        data = datasets.load("mnist5k", split="train"), datasets.load("mnist5k", split="test")
    train, test = data
    check_sizes(s, data)
    return {
        "train": Split(train.x[: s.n_train].to(device), train.y[: s.n_train].to(device)),
        "dynamic": Split(train.x[: s.dyn_train].to(device), train.y[: s.dyn_train].to(device)),
        "val": Split(train.x[-s.n_val :].to(device), train.y[-s.n_val :].to(device)),
        "test": Split(test.x[: s.n_test].to(device), test.y[: s.n_test].to(device)),
    }


def _config(s: Settings, epochs: int | None = None) -> TrainingConfig:
    return TrainingConfig(epochs=epochs or s.epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed)


def _accuracy(clf: models.Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((clf.predict(x) == y).float().mean())


def _scored(
    detector: Detector | DetectedClassifier,
    clean: torch.Tensor,
    adv: torch.Tensor,
    adv_correct: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    evaded: torch.Tensor | None = None,
) -> tuple[Detectability | None, PairOutcomes]:
    """Detectability of ``detector`` on the (kept) pairs, and the per-image outcomes behind it.

    A deployed system is scored at its threshold, a bare detector at the paper's 0.5 (as
    :func:`~evasion.evaluation.detectability.detectability` does); the record is ``None`` when no
    pair is kept. The outcomes keep every image, so intervals can resample the test images.
    """
    if isinstance(detector, DetectedClassifier):
        threshold, det = detector.threshold, detector.detector
    else:
        threshold, det = 0.5, detector
    p_clean, p_adv = det.probability(clean).double().cpu(), det.probability(adv).double().cpu()
    kept = None if keep is None else keep.cpu()
    record = None
    if kept is None or bool(kept.any()):
        sel = slice(None) if kept is None else kept
        record = detectability_from_scores(p_clean[sel], p_adv[sel], threshold=threshold)
    outcomes = PairOutcomes(
        clean_flagged=(p_clean > threshold).numpy(),
        adv_flagged=(p_adv > threshold).numpy(),
        adv_correct=adv_correct.cpu().numpy().astype(bool),
        kept=None if kept is None else kept.numpy().astype(bool),
        evaded=None if evaded is None else evaded.cpu().numpy().astype(bool),
    )
    return record, outcomes


def _train(st: State, adv: Adversary, eps: float, layer: str) -> Detector:
    """The detector for (adversary, epsilon) at ``layer``, trained once and cached."""
    key = (adv.key, eps, layer)
    if key not in st.detectors:
        sets, tr, va = st.adversarial[(adv.key, eps)], st.splits["train"], st.splits["val"]
        s = st.settings
        det, log = fit_static_detector(
            st.clf,
            layer,
            width=s.width,
            seed=s.seed,
            train=(tr.x, sets["train"]),
            val=(va.x, sets["val"]),
            config=_config(s),
        )
        st.results.setdefault("training", {})[f"{adv.key}@{eps:.4g}@{layer}"] = log.to_dict()
        st.detectors[key] = det
    return st.detectors[key]


def static_phase(st: State, advs: list[Adversary]) -> tuple[StaticRow, ...]:
    """Fig. 2 left: one detector per adversary and epsilon; its detectability on the test set."""
    rows = []
    task = st.bar.add("static adversaries", sum(len(a.epsilons) for a in advs))
    for i, adv in enumerate(advs):
        for units, eps in zip(adv.units, adv.epsilons):
            threat = ThreatModel(adv.norm, eps)
            gen = torch.Generator().manual_seed(st.settings.seed)
            sets = {
                name: adversarial_examples(st.clf, sp.x, sp.y, adv.attack, threat, generator=gen)
                for name, sp in st.splits.items()
                if name != "dynamic"
            }
            st.adversarial[(adv.key, eps)] = sets
            if adv.layer == "auto":
                adv = advs[i] = _select_layer(st, adv, eps)  # later phases see the choice
            det = _train(st, adv, eps, adv.layer)
            test = st.splits["test"]
            correct = st.clf.predict(sets["test"]) == test.y
            record, outcomes = _scored(det, test.x, sets["test"], correct)
            assert record is not None  # every pair is kept
            rows.append(
                StaticRow(
                    adversary=adv.key,
                    label=adv.label,
                    norm=adv.norm,
                    units=units,
                    epsilon=eps,
                    layer=adv.layer,
                    classifier_accuracy=float(correct.float().mean()),
                    detectability=record,
                    outcomes=outcomes,
                )
            )
            st.bar.advance(task)
    return tuple(rows)


def _select_layer(st: State, adv: Adversary, eps: float) -> Adversary:
    """``adv`` attached at the layer of ``settings.layers`` that detects best on validation data."""
    va, scores = st.splits["val"], {}
    for layer in st.settings.layers:
        det = _train(st, adv, eps, layer)  # cached: the depth analysis reuses these detectors
        scores[layer] = detectability(det, va.x, st.adversarial[(adv.key, eps)]["val"]).accuracy
    st.layer_selection[adv.key] = scores
    return replace(adv, layer=max(scores, key=lambda k: scores[k]))


def _eps_star(rows: Sequence[StaticRow], key: str) -> float:
    """The smallest epsilon that brings classifier accuracy below 30% (else the largest)."""
    mine = sorted((r for r in rows if r.adversary == key), key=lambda r: r.epsilon)
    below = [r.epsilon for r in mine if r.classifier_accuracy < 0.3]
    return float(below[0] if below else mine[-1].epsilon)


def depth_phase(st: State, advs: list[Adversary], star: dict[str, float]) -> DepthTable:
    """Fig. 2 right: detectability per attachment layer, at each adversary's epsilon*."""
    layers, test = st.settings.layers, st.splits["test"]
    task = st.bar.add("attachment depth", len(advs) * len(layers))
    table: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Detectability]] = {}
    for adv in advs:
        eps = star[adv.key]
        adv_x = st.adversarial[(adv.key, eps)]["test"]
        table[adv.key], details[adv.key] = {}, {}
        for layer in layers:
            det = _train(st, adv, eps, layer)
            record = detectability(det, test.x, adv_x)  # keeps its per-pair flags (intervals)
            table[adv.key][layer], details[adv.key][layer] = record.accuracy, record
            st.bar.advance(task)
    return DepthTable(tuple(layers), table, details)


def generalisation_phase(
    st: State, advs: list[Adversary], star: dict[str, float]
) -> tuple[dict[str, DetectabilityMatrix], DetectabilityMatrix]:
    """Fig. 3 (epsilon_fit x epsilon_test per adversary) and Fig. 4 (adversary x adversary)."""
    x = st.splits["test"].x
    fig3 = {}
    for adv in (a for a in advs if len(a.epsilons) > 1):
        names = [f"{u:g}" for u in adv.units]
        dets = {n: st.detectors[(adv.key, e, adv.layer)] for n, e in zip(names, adv.epsilons)}
        tests = {n: (x, st.adversarial[(adv.key, e)]["test"]) for n, e in zip(names, adv.epsilons)}
        fig3[adv.key] = generalisation_matrix(dets, tests, title=adv.label)
    dets = {a.label: st.detectors[(a.key, star[a.key], a.layer)] for a in advs}
    tests = {a.label: (x, st.adversarial[(a.key, star[a.key])]["test"]) for a in advs}
    fig4 = generalisation_matrix(dets, tests, title="trained on (rows) / tested on (columns)")
    return fig3, fig4


def _sweep(
    st: State, detector: Detector, threat: ThreatModel, step: float, task: int
) -> tuple[SweepRow, ...]:
    """The dynamic adversary for every sigma: classifier accuracy, detectability of its successes."""
    s, clf = st.settings, st.clf
    x, y = st.splits["test"].x[: s.n_dynamic], st.splits["test"].y[: s.n_dynamic]
    system, correct = DetectedClassifier(clf, detector, 0.5), clf.predict(x) == y
    rows = []
    for sigma in s.sigmas:
        attack = DynamicAdversary(
            sigma=sigma, steps=s.dyn_steps, step_size=step, early_stop=False, keep="last"
        )
        adv = adversarial_examples(
            system, x, y, attack, threat, generator=torch.Generator().manual_seed(s.seed)
        )
        pred = clf.predict(adv)
        fooled = correct & (pred != y)  # adversarial examples that cause a misclassification
        det, outcomes = _scored(detector, x, adv, pred == y, keep=fooled)
        rows.append(
            SweepRow(sigma, float((pred == y).float().mean()), int(fooled.sum()), det, outcomes=outcomes)
        )
        st.bar.advance(task)
    return tuple(rows)


def _aware_sweep(st: State, detector: Detector, threat: ThreatModel, step: float, task: int) -> AwareSweep:
    """The threshold-aware dynamic adversary for every sigma, against the deployed system.

    The system rejects at its 5%-FPR validation threshold; the adversary (hinge objective) aims
    below it and keeps, per input, its best evasion of the whole system. Detectability counts the
    examples that fool the classifier (as in the paper's protocol), scored at the deployed
    threshold; the evasion rate counts all swept inputs misclassified and not rejected.
    """
    s, clf, val = st.settings, st.clf, st.splits["val"]
    x, y = st.splits["test"].x[: s.n_dynamic], st.splits["test"].y[: s.n_dynamic]
    system = DetectedClassifier.calibrated(clf, detector, val.x, fpr=DEPLOYED_FPR)
    correct = clf.predict(x) == y
    rows = []
    for sigma in s.sigmas:
        attack = DynamicAdversary(
            sigma=sigma,
            steps=s.dyn_steps,
            step_size=step,
            detector_loss="hinge",
            early_stop=False,
            keep="best",
        )
        adv = adversarial_examples(
            system, x, y, attack, threat, generator=torch.Generator().manual_seed(s.seed)
        )
        pred, decided = clf.predict(adv), system.predict(adv)
        fooled = correct & (pred != y)
        evaded = (decided != y) & (decided != models.REJECT)
        det, outcomes = _scored(system, x, adv, pred == y, keep=fooled, evaded=evaded)
        rows.append(
            SweepRow(
                sigma,
                float((pred == y).float().mean()),
                int(fooled.sum()),
                det,
                evasion_rate=float(evaded.float().mean()),
                outcomes=outcomes,
            )
        )
        st.bar.advance(task)
    return AwareSweep(system.threshold, tuple(rows))


def _combined_clean(
    clf: models.Classifier, detector: Detector, val: Split, test: Split
) -> dict[str, OperatingPoint]:
    """Clean test accuracy of classifier + detector at threshold 0.5 and at 5% FPR on validation."""
    out = {}
    for name, system in (
        ("threshold_0.5", DetectedClassifier(clf, detector, 0.5)),
        ("fpr_0.05", DetectedClassifier.calibrated(clf, detector, val.x, fpr=0.05)),
    ):
        pred = system.predict(test.x)
        out[name] = OperatingPoint(
            threshold=system.threshold,
            accuracy=float((pred == test.y).float().mean()),
            rejected=float((pred == models.REJECT).float().mean()),
        )
    return out


def dynamic_phase(st: State, star: dict[str, float]) -> tuple[DynamicResult, dict[str, Detector]]:
    """Fig. 5: the dynamic adversary vs. the static and the dynamically trained detector."""
    s = st.settings
    eps = star["bim-linf"]
    static = st.detectors[("bim-linf", eps, s.layer)]
    threat, step = ThreatModel("linf", eps), s.dyn_alpha * s.linf_unit
    task = st.bar.add("dynamic adversary", 4 * len(s.sigmas) + s.dyn_epochs)
    static_rows = _sweep(st, static, threat, step, task)
    dynamic = static.copy()  # dynamic adversary training starts from the static detector
    log = train_dynamic_detector(
        dynamic,
        st.splits["dynamic"].x,
        st.splits["dynamic"].y,
        threat,
        val=(st.splits["val"].x, st.splits["val"].y),
        config=_config(s, s.dyn_epochs),
        steps=s.dyn_steps,
        step_size=step,
        val_sigmas=s.dyn_val_sigmas,
        progress=lambda e, loss, v: st.bar.advance(task),
    )
    dynamic_rows = _sweep(st, dynamic, threat, step, task)
    # after the paper's sweeps and training, so that their numbers stay exactly as they were
    aware = {
        name: _aware_sweep(st, det, threat, step, task)
        for name, det in (("static", static), ("dynamic", dynamic))
    }
    combined = {
        name: _combined_clean(st.clf, det, st.splits["val"], st.splits["test"])
        for name, det in (("static", static), ("dynamic", dynamic))
    }
    result = DynamicResult(
        eps,
        step,
        s.dyn_steps,
        s.layer,
        static_rows,
        log,
        dynamic_rows,
        combined,
        aware=aware,
        aware_fpr=DEPLOYED_FPR,
        aware_kappa=DynamicAdversary.kappa,
    )
    return result, {"static detector": static, "dynamic detector": dynamic}


def curves_phase(st: State, detectors: dict[str, Detector]) -> CurvesResult:
    """Security curves: undefended vs. detector-defended (5% FPR); static BIM and adaptive attacks."""
    s, clf = st.settings, st.clf
    val, test = st.splits["val"], st.splits["test"]
    systems: dict[str, models.Classifier] = {"undefended": clf}
    for name, det in detectors.items():
        systems[name] = DetectedClassifier.calibrated(clf, det, val.x, fpr=DEPLOYED_FPR, name=name)
    grid = [k * s.linf_unit for k in s.grid]
    specs = [
        AttackSpec(BIM(steps=10, step_size=s.linf_unit), "linf", grid, name="static BIM"),
        AttackSpec(PGD(steps=20, loss="margin"), "linf", grid, name="PGD (sees the reject score)"),
    ]
    specs += [  # threshold-aware: the hinge objective aims below each system's deployed threshold
        AttackSpec(
            DynamicAdversary(sigma=sig, steps=20, detector_loss="hinge"),
            "linf",
            grid,
            name=f"dynamic σ={sig:g} (threshold-aware)",
        )
        for sig in s.curve_sigmas
    ]
    task = st.bar.add("security curves", 1)
    ev = evaluate(systems, (test.x[: s.n_curve], test.y[: s.n_curve]), specs, batch_size=128, seed=s.seed)
    st.bar.advance(task)
    out: dict[str, dict[str, CurveSummary]] = {}
    for model in systems:
        curves = {spec.label: ev.curve(model, spec.label) for spec in specs}
        curves["worst case"] = ev.worst_case(model, "linf")
        steps = {spec.label: _status_steps(ev, model, spec.label) for spec in specs}
        # over the attacks the evaluation's worst case took (its own self-check attacks included)
        steps["worst case"] = worst_status(
            [_status_steps(ev, model, a) for a in curves["worst case"].attacks]
        )
        out[model] = {
            name: CurveSummary(
                c, _auc(c.epsilons, c.defended), status=np.stack([st for _, st in steps[name]], axis=1)
            )
            for name, c in curves.items()
        }
    return CurvesResult((0.0, *grid), (0, *s.grid), out)


def _status_steps(ev: Evaluation, model: str, attack: str) -> list[tuple[float, np.ndarray]]:
    """Per-image status (correct / rejected / misclassified) of one curve at each epsilon.

    The same per-image outcomes the evaluation's curves are the fractions of (the bootstrap
    resamples them)."""
    cols = ev.clean_columns[model]
    table = ev.attack_columns.get((model, attack), {})
    steps = [(e, c) for e, c in table.items() if math.isfinite(e) and e > 0]
    return cumulative_status(clean_status(cols["prediction"], cols["label"]), steps)


def _auc(eps: list[float], values: list[float]) -> float:
    area = sum((e1 - e0) * (v0 + v1) / 2 for e0, e1, v0, v1 in zip(eps, eps[1:], values, values[1:]))
    return area / (eps[-1] - eps[0]) if len(eps) > 1 else values[0]


def _timed(timings: dict[str, float], name: str, phase: Callable[[], T]) -> T:
    """Run ``phase`` and record its wall-clock seconds under ``name``."""
    t0 = time.perf_counter()
    out = phase()
    timings[name] = round(time.perf_counter() - t0, 1)
    return out


def reproduce(
    settings: Settings,
    clf: models.Classifier,
    bar: ProgressBar = NULL_PROGRESS,
    *,
    data: tuple[Dataset, Dataset] | None = None,
    classifier: dict[str, Any] | None = None,
) -> DetectorResults:
    """Run every phase on ``clf`` (``mnist-cnn``, or the CIFAR ResNet with ``data`` = its
    training and test sets); returns the results (examples, timings and intervals included).
    ``classifier``: what to record about the classifier (how it was trained or loaded)."""
    splits = _data(settings, clf.device, data)
    st = State(settings, clf, splits, bar, {}, {}, {})
    clean = _accuracy(clf, splits["test"].x, splits["test"].y)
    advs = adversaries(settings)
    timings: dict[str, float] = {}
    static = _timed(timings, "static", lambda: static_phase(st, advs))
    star = {a.key: _eps_star(static, a.key) for a in advs}
    depth = _timed(timings, "depth", lambda: depth_phase(st, advs, star))
    fig3, fig4 = _timed(timings, "generalisation", lambda: generalisation_phase(st, advs, star))
    dynamic, detectors = _timed(timings, "dynamic", lambda: dynamic_phase(st, star))
    curves = _timed(timings, "curves", lambda: curves_phase(st, detectors))
    results = DetectorResults(
        settings=settings,
        clean_accuracy=clean,
        training=dict(st.results.get("training", {})),
        layer_selection=st.layer_selection,
        static=static,
        eps_star=star,
        depth=depth,
        fig3=fig3,
        fig4=fig4,
        dynamic=dynamic,
        curves=curves,
        timings=timings,
        examples=_examples(st, advs, star),
        classifier=dict(classifier or {}),
    )
    return _timed(timings, "intervals", lambda: with_intervals(results))


def _examples(st: State, advs: list[Adversary], star: dict[str, float]) -> tuple[Example, ...]:
    """A few clean / adversarial pairs per adversary at epsilon* (for the report's image grid)."""
    x = st.splits["test"].x
    return tuple(
        Example(a.label, x[:4].cpu(), st.adversarial[(a.key, star[a.key])]["test"][:4].cpu()) for a in advs
    )
