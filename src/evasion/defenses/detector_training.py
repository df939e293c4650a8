"""Training detector subnetworks: on a fixed adversary (static) or against a dynamic adversary.

Static training (Metzen et al. Sect. 3.2 / 4.1.1): an adversarial example is generated for every
training point, the clean points (label 0) and their adversarial examples (label 1) form a
balanced binary data set, and only the detector is trained (the classifier is frozen: its
features are computed without gradients) with Adam (lr 1e-4, beta1 0.99, beta2 0.999). After
every epoch the detector is scored on a validation split of clean points and their adversarial
examples, and the best epoch is kept (model selection; the later one on ties).

Dynamic adversary training (Sect. 3.3): adversarial examples are generated on the fly for each
mini-batch by a dynamic adversary whose ``sigma`` is drawn uniformly per batch, each point being
modified with probability 0.5, so the detector learns to resist adversaries that try to fool it.
Its model selection uses the worst validation accuracy of the detector on clean inputs and their
dynamic adversarial examples over a few values of ``sigma``; the latest best epoch is kept.

Everything random draws from generators seeded by ``TrainingConfig.seed`` inside a forked
global RNG state: same data and seed, same detector.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks import Attack, DynamicAdversary
from ..errors import ConfigError, InputError
from ..models.classifier import eval_mode
from ..threat_model import ThreatModel
from .detected import DetectedClassifier
from .detector import Detector

__all__ = [
    "EpochProgress",
    "TrainingConfig",
    "TrainingLog",
    "adversarial_examples",
    "fit_detector",
    "static_examples",
    "train_detector",
    "train_dynamic_detector",
]

#: ``progress(epoch, train_loss, validation_detectability)`` after every epoch (from 1)
EpochProgress = Callable[[int, float, float], None]


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser settings of detector training (defaults: the paper's Adam settings)."""

    epochs: int = 20
    lr: float = 1e-4
    betas: tuple[float, float] = (0.99, 0.999)
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")


@dataclass(frozen=True)
class TrainingLog:
    """What a training run did: per-epoch loss and validation detectability, the epoch kept."""

    train_loss: tuple[float, ...]
    val_detectability: tuple[float, ...]
    best_epoch: int
    seconds: float

    @property
    def best_val_detectability(self) -> float:
        return self.val_detectability[self.best_epoch - 1]

    def to_dict(self) -> dict[str, object]:
        return {
            "train_loss": list(self.train_loss),
            "val_detectability": list(self.val_detectability),
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 2),
        }


def adversarial_examples(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    threat: ThreatModel,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One adversarial example per input (the attack's returned points, on x's device), in batches."""
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out = [
        attack(model, xb, yb, threat=threat, generator=gen).adversarial.to(x.device)
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    ]
    return torch.cat(out)


def static_examples(
    model: torch.nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    attack: Attack,
    threat: ThreatModel,
    *,
    seed: int,
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """The static adversary's examples of the training then the validation points (one generator)."""
    gen = torch.Generator().manual_seed(seed)
    adv = adversarial_examples(model, *train, attack, threat, batch_size=batch_size, generator=gen)
    val_adv = adversarial_examples(model, *val, attack, threat, batch_size=batch_size, generator=gen)
    return adv, val_adv


def _check_pairs(clean: Tensor, adversarial: Tensor, what: str) -> None:
    if not isinstance(clean, Tensor) or not isinstance(adversarial, Tensor):
        raise InputError(f"{what}: clean and adversarial inputs must be tensors")
    if adversarial.shape != clean.shape or clean.shape[0] == 0:
        raise InputError(
            f"{what}: one adversarial example per clean input is needed, got {tuple(adversarial.shape)} "
            f"adversarial for {tuple(clean.shape)} clean"
        )
    if torch.equal(clean, adversarial):
        raise ConfigError(
            f"{what}: no adversarial examples to train on: every 'adversarial' input equals its clean "
            "input (epsilon 0, or an attack that changed nothing)"
        )


def _features(detector: Detector, x: Tensor, batch_size: int = 512) -> Tensor:
    with torch.no_grad():
        return torch.cat([detector.features(xb) for xb in x.to(detector.classifier.device).split(batch_size)])


def _accuracy(detector: Detector, clean_feats: Tensor, adv_feats: Tensor) -> float:
    """Detector accuracy (``p_adv > 0.5``) on a joint set of clean and adversarial features."""
    with torch.no_grad(), eval_mode(detector):
        neg = torch.cat([detector.head(f) <= 0 for f in clean_feats.split(512)])
        pos = torch.cat([detector.head(f) > 0 for f in adv_feats.split(512)])
    return float((neg.sum() + pos.sum()) / (len(neg) + len(pos)))


def _step(detector: Detector, optimizer: torch.optim.Optimizer, feats: Tensor, labels: Tensor) -> float:
    detector.train()
    loss = F.binary_cross_entropy_with_logits(detector.head(feats), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def fit_detector(
    detector: Detector,
    clean: Tensor,
    adversarial: Tensor,
    val_clean: Tensor,
    val_adversarial: Tensor,
    config: TrainingConfig = TrainingConfig(),
    progress: EpochProgress | None = None,
) -> TrainingLog:
    """Train ``detector`` on clean (label 0) vs. adversarial (label 1) inputs; keep the best epoch.

    The classifier's features of all four sets are computed once (it is frozen); the detector
    ends in eval mode with the weights of the epoch of highest validation detectability.
    """
    _check_pairs(clean, adversarial, "training set")
    _check_pairs(val_clean, val_adversarial, "validation set")
    feats = torch.cat([_features(detector, clean), _features(detector, adversarial)])
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adversarial))]).to(feats.device)
    val_c, val_a = _features(detector, val_clean), _features(detector, val_adversarial)

    def epoch(optimizer: torch.optim.Optimizer, gen: torch.Generator) -> float:
        order = torch.randperm(len(feats), generator=gen).to(feats.device)
        total = sum(
            _step(detector, optimizer, feats[idx], labels[idx]) * len(idx)
            for idx in order.split(config.batch_size)
        )
        return total / len(feats)

    return _train_epochs(detector, config, epoch, lambda: _accuracy(detector, val_c, val_a), progress)


def _train_epochs(
    detector: Detector,
    config: TrainingConfig,
    epoch: Callable[[torch.optim.Optimizer, torch.Generator], float],
    validate: Callable[[], float],
    progress: EpochProgress | None,
) -> TrainingLog:
    """Run ``epoch`` ``config.epochs`` times (seeded), validate after each, keep the best weights."""
    started = time.perf_counter()
    optimizer = torch.optim.Adam(detector.net.parameters(), lr=config.lr, betas=config.betas)
    losses: list[float] = []
    scores: list[float] = []
    best, best_state = -1.0, copy.deepcopy(detector.net.state_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        for i in range(1, config.epochs + 1):
            losses.append(epoch(optimizer, gen))
            detector.eval()
            scores.append(validate())
            if scores[-1] >= best:  # ties: the later, longer-trained epoch
                best, best_state = scores[-1], copy.deepcopy(detector.net.state_dict())
            if progress is not None:
                progress(i, losses[-1], scores[-1])
    detector.net.load_state_dict(best_state)
    detector.eval()
    best_epoch = len(scores) - scores[::-1].index(best)
    return TrainingLog(tuple(losses), tuple(scores), best_epoch, time.perf_counter() - started)


def train_detector(
    detector: Detector,
    x: Tensor,
    y: Tensor,
    attack: Attack,
    threat: ThreatModel,
    *,
    val: tuple[Tensor, Tensor],
    config: TrainingConfig = TrainingConfig(),
    batch_size: int = 256,
    progress: EpochProgress | None = None,
) -> TrainingLog:
    """Static training: ``attack`` (on the bare classifier) makes one adversarial example per point.

    ``val`` = (images, labels) of a held-out split, attacked the same way, for model selection.
    """
    if attack is None or threat is None:
        raise ConfigError(
            "training a detector needs an attack and a threat model to make adversarial examples"
        )
    adv, val_adv = static_examples(
        detector.classifier, (x, y), val, attack, threat, seed=config.seed, batch_size=batch_size
    )
    return fit_detector(detector, x, adv, val[0], val_adv, config, progress)


@dataclass(frozen=True)
class _Dynamic:
    """The dynamic adversary used in training: its budget, steps and step size."""

    threat: ThreatModel
    steps: int
    step_size: float | None

    def attack(self, sigma: float) -> DynamicAdversary:
        return DynamicAdversary(
            sigma=sigma, steps=self.steps, step_size=self.step_size, early_stop=False, keep="last"
        )


def _dynamic_batch(
    system: DetectedClassifier,
    adversary: _Dynamic,
    x: Tensor,
    y: Tensor,
    p_modify: float,
    sigma_range: tuple[float, float],
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """A mini-batch where each point is replaced by a dynamic adversarial example with prob. p."""
    lo, hi = sigma_range
    sigma = lo + (hi - lo) * float(torch.rand(1, generator=gen))
    modify = (torch.rand(len(x), generator=gen) < p_modify).to(x.device)
    out = x.clone()
    if bool(modify.any()):
        result = adversary.attack(sigma)(system, x[modify], y[modify], threat=adversary.threat, generator=gen)
        out[modify] = result.adversarial.to(x.device)
    return out, modify.float()


def _dynamic_validation(
    system: DetectedClassifier, adversary: _Dynamic, x: Tensor, y: Tensor, sigmas: Sequence[float]
) -> float:
    """Worst detector accuracy over ``sigmas`` on clean inputs and their dynamic adversarial examples.

    Every adversarial example counts here, not only those that fool the classifier: at large
    sigma few do, and a detector that catches all of them is also the one that catches those.
    """
    detector = system.detector
    clean_ok = detector.logits(x) <= 0
    worst = 1.0
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(0)
        adv = adversarial_examples(system, x, y, adversary.attack(sigma), adversary.threat, generator=gen)
        hits = int(clean_ok.sum()) + int((detector.logits(adv) > 0).sum())
        worst = min(worst, hits / (2 * len(x)))
    return worst


def train_dynamic_detector(
    detector: Detector,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    val: tuple[Tensor, Tensor],
    config: TrainingConfig = TrainingConfig(),
    steps: int = 10,
    step_size: float | None = None,
    p_modify: float = 0.5,
    sigma_range: tuple[float, float] = (0.0, 1.0),
    val_sigmas: Sequence[float] = (0.25, 0.5, 0.75),
    progress: EpochProgress | None = None,
) -> TrainingLog:
    """Dynamic adversary training of ``detector`` (it may start from a statically trained one)."""
    if not 0.0 < p_modify <= 1.0:
        raise ConfigError(f"p_modify must lie in (0, 1], got {p_modify}")
    if not 0.0 <= sigma_range[0] <= sigma_range[1] <= 1.0:
        raise ConfigError(f"sigma_range must satisfy 0 <= low <= high <= 1, got {sigma_range}")
    if threat.epsilon <= 0:
        raise ConfigError("dynamic adversary training needs epsilon > 0 (no adversarial examples otherwise)")
    clf = detector.classifier
    system = DetectedClassifier(clf, detector, 0.5)
    adversary = _Dynamic(threat, steps, step_size)
    x, y = clf.check_inputs(x), clf.check_labels(y, len(x))

    def epoch(optimizer: torch.optim.Optimizer, gen: torch.Generator) -> float:
        order = torch.randperm(len(x), generator=gen).to(x.device)
        total = 0.0
        for idx in order.split(config.batch_size):
            xb, labels = _dynamic_batch(system, adversary, x[idx], y[idx], p_modify, sigma_range, gen)
            total += _step(detector, optimizer, _features(detector, xb), labels) * len(idx)
        return total / len(x)

    def validate() -> float:
        return _dynamic_validation(system, adversary, val[0], val[1], val_sigmas)

    return _train_epochs(detector, config, epoch, validate, progress)
