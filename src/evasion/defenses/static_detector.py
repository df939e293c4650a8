"""The static-detector recipe (Metzen et al. 2017), shared by `evasion evaluate` and `reproduce detector`.

A detector subnetwork attached to a layer of the classifier is trained on clean points and their
adversarial examples from one fixed attack on the bare classifier (:func:`fit_static_detector`);
as a defence (:func:`make_detector`) its threshold then rejects a fraction ``fpr`` of held-out
clean points. :class:`DetectorParams` are the defence's parameters; their defaults are the
experiment's static detector on ``mnist-cnn`` (BIM L∞ at 0.16 = 2 paper units, the smallest of
0.08/0.16/0.24/0.32 that brings the classifier below 30% accuracy, attached at ``pool1``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .. import _validation as check
from .. import attacks
from ..attacks import Attack
from ..datasets.base import Dataset
from ..errors import ConfigError, UnknownNameError
from ..models.classifier import Classifier
from ..threat_model import ThreatModel
from .base import WHERE, Cache, Payload, TrainingJob
from .detected import DetectedClassifier
from .detector import Detector, threshold_for_fpr
from .detector_training import TrainingConfig, TrainingLog, fit_detector, static_examples

__all__ = [
    "DETECTOR_BATCH_SIZE",
    "DETECTOR_LR",
    "DETECTOR_VERSION",
    "DetectorParams",
    "fit_static_detector",
    "make_detector",
    "train_static_detector",
    "training_attack",
    "training_points",
]

#: optimiser settings of the recipe (Adam, beta1 0.99 as in the paper, a larger lr for 3 epochs)
DETECTOR_LR, DETECTOR_BATCH_SIZE = 1e-3, 64
#: bump when the training procedure changes: cached detectors of older versions are not reused
DETECTOR_VERSION = 1


@dataclass(frozen=True)
class DetectorParams:
    """Parameters of the ``"detector"`` defence, checked on construction."""

    layer: str = "pool1"  # where the detector is attached (the paper's AD(2)-like depth on mnist-cnn)
    attack: str = "bim"  # static attack that makes the training examples (on the bare classifier)
    epsilon: float = 0.16  # its L∞ budget
    samples: int = 1000  # training points of the train split (+ samples // 4 held-out validation points)
    fpr: float = 0.05  # threshold: at most 5% of the clean validation points are rejected
    epochs: int = 3
    width: float = 0.25  # the paper's 96/192/192 channels x 0.25 = 24/48/48
    seed: int = 0  # detector init, data shuffle, attack randomness, mini-batch order

    def __post_init__(self) -> None:
        check.name(self.layer, f"{WHERE}.layer")
        check.name(self.attack, f"{WHERE}.attack")
        width = check.positive(self.width, f"{WHERE}.width")
        if width > 16.0:
            raise ConfigError(f"{WHERE}.width must be in (0, 16], got {self.width!r}")
        values = {
            "epsilon": check.positive(self.epsilon, f"{WHERE}.epsilon"),
            "samples": check.integer(self.samples, f"{WHERE}.samples", minimum=20),
            "fpr": check.fraction(self.fpr, f"{WHERE}.fpr"),
            "epochs": check.integer(self.epochs, f"{WHERE}.epochs", minimum=1),
            "width": width,
            "seed": check.integer(self.seed, f"{WHERE}.seed", minimum=0),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)
        _linf_attack(self.attack)

    @property
    def validation_samples(self) -> int:
        """Held-out clean points (and their adversarial examples) for model selection and the threshold."""
        return max(10, self.samples // 4)


def _linf_attack(name: str) -> type[Attack]:
    """The attack class ``name``, which must have an L∞ version."""
    try:
        cls = attacks.get(name)
    except UnknownNameError as exc:
        raise ConfigError(f"{WHERE}.attack: {exc}") from None
    if "linf" not in cls.norms:
        raise ConfigError(f"{WHERE}.attack {name!r} has no L∞ version; its norms: {', '.join(cls.norms)}")
    return cls


def training_attack(params: DetectorParams) -> Attack:
    """The static attack of the training examples, as the experiment runs it.

    Every step is taken and the last iterate kept (``early_stop=False, keep="last"``), also on
    points the classifier already gets wrong; BIM takes 10 steps of ``epsilon / 2`` (the
    experiment's alpha = 1 paper unit at its eps* of 2 units).
    """
    cls = _linf_attack(params.attack)
    valid = attacks.parameters(cls)
    kwargs: dict[str, Any] = {k: v for k, v in (("early_stop", False), ("keep", "last")) if k in valid}
    if cls.name == "bim":
        kwargs.update(steps=10, step_size=params.epsilon / 2)
    return attacks.make(cls.name, **kwargs)


def training_points(train: Dataset, params: DetectorParams) -> tuple[Tensor, Tensor]:
    """``samples`` training points then the held-out ones, after a shuffle seeded by ``seed``."""
    n, n_val = params.samples, params.validation_samples
    if n + n_val > len(train):
        raise ConfigError(
            f"{WHERE}.samples = {n} needs {n + n_val} images of the train split "
            f"({n} + {n_val} held out), but {train.name} has {len(train)}"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(params.seed))
    return train.x[order[: n + n_val]], train.y[order[: n + n_val]]


def fit_static_detector(
    classifier: Classifier,
    layer: str,
    *,
    width: float,
    seed: int,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: TrainingConfig,
) -> tuple[Detector, TrainingLog]:
    """A new detector on ``layer`` fitted to ``(clean, adversarial)`` pairs; its best epoch on ``val``."""
    detector = Detector.attach(classifier, layer, width=width, seed=seed)
    log = fit_detector(detector, train[0], train[1], val[0], val[1], config)
    return detector, log


def train_static_detector(classifier: Classifier, params: DetectorParams, x: Tensor, y: Tensor) -> Payload:
    """Train a detector on ``x, y`` (``samples`` training points, then the held-out ones).

    The adversarial examples of both come from :func:`training_attack` on the bare classifier;
    the epoch of best validation detectability is kept; the threshold rejects a fraction ``fpr``
    of the clean held-out points. Returns the payload to store: ``state_dict``, ``threshold``,
    ``stats``.
    """
    started = time.perf_counter()
    n = params.samples
    attack, threat = training_attack(params), ThreatModel("linf", params.epsilon)
    adv, val_adv = static_examples(
        classifier, (x[:n], y[:n]), (x[n:], y[n:]), attack, threat, seed=params.seed
    )
    config = TrainingConfig(
        epochs=params.epochs, lr=DETECTOR_LR, batch_size=DETECTOR_BATCH_SIZE, seed=params.seed
    )
    detector, training = fit_static_detector(
        classifier,
        params.layer,
        width=params.width,
        seed=params.seed,
        train=(x[:n], adv),
        val=(x[n:], val_adv),
        config=config,
    )
    p_clean, p_adv = detector.probability(x[n:]), detector.probability(val_adv)
    threshold = threshold_for_fpr(p_clean, params.fpr)
    stats = {
        "val_fpr": float((p_clean > threshold).float().mean()),
        "val_detection_rate": float((p_adv > threshold).float().mean()),
        "val_classifier_accuracy": float((classifier.predict(val_adv) == y[n:]).float().mean()),
        "train_seconds": round(time.perf_counter() - started, 2),
        "training": training.to_dict(),
    }
    state = {k: v.detach().cpu().clone() for k, v in detector.net.state_dict().items()}
    return {"state_dict": state, "threshold": threshold, "stats": stats}


def _load(detector: Detector, payload: Payload) -> float:
    """Load a payload into ``detector``; its threshold. Raises if it does not fit."""
    detector.net.load_state_dict(payload["state_dict"])
    threshold = payload["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, float) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold {threshold!r} is not a probability")
    return threshold


def _summary(payload: Payload) -> str:
    s = payload["stats"]
    return (
        f"{s['val_detection_rate']:.3f} of the held-out adversarial examples detected, "
        f"{s['val_fpr']:.3f} of the clean ones rejected"
    )


def make_detector(
    classifier: Classifier,
    train: Dataset,
    params: DetectorParams,
    *,
    label: str | None = None,
    cache: Cache | None = None,
) -> DetectedClassifier:
    """Metzen et al.'s detector subnetwork on a layer of the model: flagged inputs are rejected.

    Trained on ``samples`` points of ``train`` (a fixed seeded shuffle) and their adversarial
    examples, its threshold set for the false-positive rate ``fpr`` on ``samples // 4`` further
    held-out clean points (:func:`train_static_detector`). ``cache`` (see
    :class:`~evasion.defenses.base.TrainingJob`) may load an earlier training run instead.
    """
    attack = training_attack(params)
    detector = Detector.attach(classifier, params.layer, width=params.width, seed=params.seed)
    x, y = training_points(train, params)
    device_x, device_y = x.to(classifier.device), y.to(classifier.device)
    job = TrainingJob(
        folder="detectors",
        version=DETECTOR_VERSION,
        classifier=classifier,
        data=(x, y),
        params=asdict(params),
        attack=repr(attack),
        what=f"detector of {label or classifier.name!r}",
        detail=f"{params.samples} points, {attack.name}",
        run=lambda: train_static_detector(classifier, params, device_x, device_y),
        check=lambda payload: _load(detector, payload),
        describe=lambda payload: {"threshold": payload["threshold"], **payload["stats"]},
        summary=_summary,
    )
    threshold = _load(detector, cache(job) if cache is not None else job.run())
    detector.eval()
    return DetectedClassifier(classifier, detector, threshold, name=label)
