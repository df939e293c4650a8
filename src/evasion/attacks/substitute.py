"""Substitute-model attack (Papernot et al. 2017, "Practical black-box attacks against ML").

The attacker sees only the victim's labels (:class:`evasion.access.Victim` with
``view="labels"``). It trains a *substitute* on a small seed set labelled by the victim, grows
the set by Jacobian-based dataset augmentation, crafts white-box examples on the substitute
(FGSM, PGD or MI-FGSM of this library) and sends them to the victim: no gradient of the victim
is ever used.

Jacobian-based augmentation: after each training round ``rho`` (but the last), every training
point ``x`` with victim label ``O(x)`` gets a sibling ``clip(x + lambda_rho * sign(dF_O(x)/dx))``
(``F`` the substitute's logits) whose label is asked from the victim, which doubles the set;
``lambda_rho = -lambda * (-1)^floor(rho / tau)``: the periodic step size of the paper, with the
sign of the reference tutorial (cleverhans' ``mnist_blackbox``: the first ``tau = 3``
augmentations step *against* the label's gradient, towards the decision boundaries). With the
reference tutorial's defaults (150 seeds, 6 rounds, lambda 0.1) the substitute's training costs
``150 * 2^5 = 4,800`` label queries.

**Seeds.** Called like every attack (``attack(victim_model, x, y, threat=...)``), the seed set is
the *first* ``seeds`` images of the batch ``x`` (their victim labels are reused, not asked
twice). :meth:`Substitute.run` also takes a separate seed set (``seeds=`` tensor), e.g. held-out
images, and returns a :class:`SubstituteReport` with the trained substitute.

**Queries.** Every image the victim labels is counted. Per-sample ``forwards`` of the result are
the label queries charged to that sample: for a seed, the queries of all training points
descended from it; for every sample, one for its clean label (unless it is a seed) and one to
verify its adversarial example. With seeds from the batch they add up to the victim's total;
with a separate seed set the training queries are reported on their own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._validation import integer, positive
from ..access import Victim
from ..errors import ConfigError, InputError
from ..models.architectures import small
from ..models.classifier import Classifier
from ..models.training import _threads
from ..threat_model import ThreatModel
from .base import Attack, AttackResult, Problem, default_generator
from .iterative import IterativeAttack

__all__ = ["SmallCNN", "Substitute", "SubstituteReport", "SubstituteTraining", "train_substitute"]

Architecture = str | Callable[[], nn.Module] | nn.Module


class SmallCNN(nn.Module):
    """conv32-pool-conv64-avgpool(4x4)-fc128 for any image size: the fallback substitute."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(4)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * 16, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool2(self.relu2(self.conv2(self.pool1(self.relu1(self.conv1(x))))))
        return self.fc2(self.relu3(self.fc1(self.flatten(h))))


def _mlp(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """flatten-fc128-fc for inputs too small to pool (fewer than 8 x 8 pixels)."""
    size = 1
    for s in shape:
        size *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(size, 128), nn.ReLU(), nn.Linear(128, num_classes))


#: named substitute architectures: builder(num_classes, input shape) and the input shape they take
_NAMED: dict[str, tuple[Callable[[int, tuple[int, ...]], nn.Module], tuple[int, ...] | None]] = {
    "mnist-cnn": (lambda k, s: small.MnistCNN(k), (1, 28, 28)),
    "digits-cnn": (lambda k, s: small.DigitsCNN(k), (1, 8, 8)),
    "digits-mlp": (lambda k, s: small.DigitsMLP(k), (1, 8, 8)),
    "small-cnn": (lambda k, s: SmallCNN(s[0], k), None),
    "mlp": (lambda k, s: _mlp(s, k), None),
}


def _auto(shape: tuple[int, ...]) -> str:
    """The named architecture made for this input shape, else small-cnn (mlp below 8 x 8)."""
    exact = next((k for k, (_, s) in _NAMED.items() if s == shape), None)
    if exact is not None:
        return exact
    return "small-cnn" if len(shape) == 3 and min(shape[1:]) >= 8 else "mlp"


def _build(architecture: Architecture, shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """The substitute's initial module (weights fixed by ``seed``); a one-line error on a shape mismatch."""
    if isinstance(architecture, str):
        key = architecture
        if key == "auto":
            key = _auto(shape)
        if key not in _NAMED:
            raise ConfigError(f"unknown substitute architecture {key!r}; named: auto, {', '.join(_NAMED)}")
        builder, expected = _NAMED[key]
        if expected is not None and expected != shape:
            raise InputError(
                f"substitute architecture {key!r} takes inputs of shape {expected}, the data has {shape}"
            )
        module = small.seeded(lambda: builder(num_classes, shape), seed)
        label = key
    elif isinstance(architecture, nn.Module):
        module, label = copy.deepcopy(architecture), type(architecture).__name__
    elif callable(architecture):
        module, label = small.seeded(architecture, seed), getattr(architecture, "__name__", "substitute")
    else:
        raise ConfigError(
            f"architecture must be a name, an nn.Module or a builder, got {type(architecture).__name__}"
        )
    probe = torch.zeros((2, *shape))
    try:
        with torch.no_grad():
            out = module.eval()(probe)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"substitute architecture {label!r} does not take inputs of shape {shape}: {first}"
        ) from None
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"substitute architecture {label!r} returns {got}, expected (N, {num_classes}) logits"
        )
    return module


@dataclass(frozen=True)
class SubstituteTraining:
    """A substitute trained on a victim's labels, and what it cost.

    Attributes:
        model: the substitute (a :class:`Classifier` in the victim's input range).
        queries: label queries spent on training (one per training point).
        queries_per_seed: per seed image, the queries of the training points descended from it.
        seed_labels: the victim's labels of the seed images.
        rounds: per training round, ``(training points, substitute accuracy on them w.r.t. the victim's labels)``.
    """

    model: Classifier
    queries: int
    queries_per_seed: Tensor
    seed_labels: Tensor
    rounds: tuple[tuple[int, float], ...]


def train_substitute(
    victim: Victim,
    seeds: Tensor,
    *,
    architecture: Architecture = "auto",
    rounds: int = 6,
    lmbda: float = 0.1,
    tau: int = 3,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    num_threads: int | None = 1,
) -> SubstituteTraining:
    """Train a substitute by Jacobian-based dataset augmentation, asking ``victim`` only for labels.

    ``rounds`` training rounds with ``rounds - 1`` augmentations between them; the step is
    ``-lmbda`` for the first ``tau`` augmentations, then ``+lmbda`` for ``tau``, ... (``tau`` = 0:
    always ``-lmbda``). Deterministic under ``generator`` (initial weights and batch order).
    ``num_threads``: torch CPU threads while training (one: a small substitute gains nothing from
    more, and OpenMP threads slow down badly on a busy CPU; ``None`` leaves torch's setting).
    """
    integer(rounds, "rounds", minimum=1)
    lam = positive(lmbda, "lmbda")
    integer(tau, "tau", minimum=0)
    integer(epochs, "epochs", minimum=1)
    positive(lr, "lr")
    integer(batch_size, "batch_size", minimum=1)
    if not isinstance(seeds, Tensor) or seeds.dim() != 4 or seeds.shape[0] == 0:
        raise InputError("the seed set must be a non-empty (N, C, H, W) tensor of images")
    gen = default_generator(generator)
    lo, hi = victim.bounds
    num_classes = victim.num_classes
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    module = _build(architecture, tuple(int(s) for s in seeds.shape[1:]), num_classes, init_seed)
    module = module.to(victim.device)
    data = seeds.detach().to(victim.device)
    labels = victim.labels(data)
    seed_labels = labels.clone()
    origin = torch.arange(data.shape[0], device=data.device)
    history: list[tuple[int, float]] = []
    with _threads(num_threads):
        for rho in range(rounds):
            keep = labels >= 0  # a rejection is no class to learn
            _fit(module, data[keep], labels[keep], epochs, lr, batch_size, gen)
            with torch.no_grad():
                agree = float((module(data).argmax(1) == labels).float().mean())
            history.append((int(data.shape[0]), agree))
            if rho == rounds - 1:
                break
            # the reference tutorial's periodic step: -lambda for the first tau augmentations
            # (away from the label, towards the boundaries), then +lambda, and so on
            sign = 1.0 if tau and (rho // tau) % 2 else -1.0
            new = _augment(module, data, labels, sign * lam, lo, hi)
            labels = torch.cat([labels, victim.labels(new)])
            data, origin = torch.cat([data, new]), torch.cat([origin, origin])
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    clf = Classifier(
        module, num_classes, input_shape=tuple(seeds.shape[1:]), bounds=(lo, hi), name="substitute"
    )
    return SubstituteTraining(
        model=clf,
        queries=int(data.shape[0]),
        queries_per_seed=torch.bincount(origin, minlength=seeds.shape[0]).cpu(),
        seed_labels=seed_labels,
        rounds=tuple(history),
    )


def _fit(
    module: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int, gen: torch.Generator
) -> None:
    """Adam on cross-entropy, batches in an order drawn from ``gen``."""
    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            for idx in torch.randperm(x.shape[0], generator=gen).to(x.device).split(batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
                opt.step()
    module.eval()


def _augment(module: nn.Module, x: Tensor, labels: Tensor, step: float, lo: float, hi: float) -> Tensor:
    """``clip(x + step * sign(d logit_label / dx))`` for every point (the Jacobian row of its label)."""
    out = []
    with torch.enable_grad():
        for xb, yb in zip(x.split(512), labels.clamp_min(0).split(512)):
            xa = xb.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(module(xa).gather(1, yb[:, None]).sum(), xa)
            out.append((xb + step * grad.sign()).clamp(lo, hi).detach())
    return torch.cat(out)


@dataclass(frozen=True)
class SubstituteReport:
    """A substitute attack's outcome beyond the per-sample :class:`AttackResult`.

    ``agreement``: fraction of the attacked images on which the substitute's label equals the
    victim's; ``transfer_success``: the result's success rate (victim wrong on the examples);
    ``training_queries`` (one per training point of the substitute) + ``verification_queries``
    (the victim's clean labels of the attacked images that are not seeds, for the agreement,
    and one label per adversarial example) = ``total_queries`` (the victim's count).
    """

    result: AttackResult
    training: SubstituteTraining
    agreement: float
    training_queries: int
    verification_queries: int
    total_queries: int
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def transfer_success(self) -> float:
        return self.result.success_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "transfer_success": self.transfer_success,
            "training_queries": self.training_queries,
            "verification_queries": self.verification_queries,
            "total_queries": self.total_queries,
            "rounds": [list(r) for r in self.training.rounds],
            "config": dict(self.config),
        }


@dataclass(frozen=True)
class Substitute(Attack):
    """Labels-only transfer attack through a substitute trained by Jacobian augmentation.

    Args:
        architecture: ``"auto"`` (the zoo's small architecture for the data's input shape, else
            ``"small-cnn"``, or ``"mlp"`` for images under 8 x 8), a name (``mnist-cnn``,
            ``digits-cnn``, ``digits-mlp``, ``small-cnn``, ``mlp``), an ``nn.Module`` (copied) or
            a builder ``() -> nn.Module``.
        seeds: seed-set size (the first images of the batch).
        rounds, lmbda, tau: Jacobian augmentation (rounds of training, step, sign-flip period).
        epochs, lr, batch_size: substitute training per round (Adam).
        transfer: the white-box attack run on the substitute: a registered name (``fgsm``,
            ``pgd``, ``mifgsm`` ...) or an :class:`Attack`; iterative attacks run without early
            stopping so that examples go past the substitute's boundary.
    """

    name: ClassVar[str] = "substitute"
    norms = ("linf", "l2")
    access: ClassVar[str] = "transfer"
    black_box: ClassVar[bool] = True
    architecture: Architecture = "auto"
    seeds: int = 150
    rounds: int = 6
    lmbda: float = 0.1
    tau: int = 3
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    transfer: str | Attack = "mifgsm"

    def __post_init__(self) -> None:
        integer(self.seeds, "seeds", minimum=1)
        integer(self.rounds, "rounds", minimum=1)
        positive(self.lmbda, "lmbda")
        integer(self.tau, "tau", minimum=0)
        integer(self.epochs, "epochs", minimum=1)
        positive(self.lr, "lr")
        integer(self.batch_size, "batch_size", minimum=1)
        self.transfer_attack()  # validates the name / the attack once

    def transfer_attack(self) -> Attack:
        """The attack run on the substitute (early stopping off)."""
        if isinstance(self.transfer, Attack):
            attack = self.transfer
        elif isinstance(self.transfer, str):
            from . import make  # the registry imports this module

            attack = make(self.transfer)
        else:
            raise ConfigError(
                f"transfer must be an attack name or an Attack, got {type(self.transfer).__name__}"
            )
        if attack.black_box or attack.minimum_norm:
            raise ConfigError(f"transfer attack {attack.name!r} must be a white-box fixed-budget attack")
        if isinstance(attack, IterativeAttack) and attack.early_stop:
            attack = attack.replace(early_stop=False)
        return attack

    def _run(self, problem: Problem) -> AttackResult:
        return self._attack(problem, None).result

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        threat: ThreatModel,
        target: Tensor | int | None = None,
        seeds: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SubstituteReport:
        """Like calling the attack, with the full report; ``seeds``: a separate seed set."""
        problem = self.prepare(model, x, y, threat=threat, target=target, generator=generator)
        if seeds is not None:
            seeds = problem.model.check_inputs(seeds)
            if seeds.shape[0] == 0:
                raise InputError("the seed set is empty")
        return self._attack(problem, seeds)

    def _attack(self, problem: Problem, seeds: Tensor | None) -> SubstituteReport:
        victim = Victim(problem.model, view="labels")
        n, dev = problem.n, problem.x.device
        own = seeds is None
        seed_x: Tensor = problem.x[: self.seeds] if seeds is None else seeds
        training = train_substitute(
            victim,
            seed_x,
            architecture=self.architecture,
            rounds=self.rounds,
            lmbda=self.lmbda,
            tau=self.tau,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            generator=problem.generator,
        )
        forwards = torch.zeros(n, dtype=torch.long, device=dev)
        clean = torch.empty(n, dtype=torch.long, device=dev)
        k = int(seed_x.shape[0]) if own else 0
        if own:  # the seeds' labels were asked while training: reuse them
            forwards[:k] += training.queries_per_seed.to(dev)
            clean[:k] = training.seed_labels
        if k < n:
            clean[k:] = victim.labels(problem.x[k:])
            forwards[k:] += 1
        sub = training.model
        agrees = sub.predict(problem.x) == clean
        with torch.enable_grad():
            crafted = self.transfer_attack()(
                sub,
                problem.x,
                problem.y,
                threat=problem.threat,
                target=problem.target,
                generator=problem.generator,
            )
        predictions = victim.labels(crafted.adversarial)
        forwards += 1
        result = self.result(
            problem,
            crafted.adversarial,
            predictions,
            forwards,
            torch.zeros_like(forwards),
            stats={"substitute_agrees": agrees, "substitute_fooled": crafted.success},
        )
        verification = victim.queries - training.queries
        return SubstituteReport(
            result=result,
            training=training,
            agreement=float(agrees.float().mean()),
            training_queries=training.queries,
            verification_queries=verification,
            total_queries=victim.queries,
            config={
                "attack": self.describe(),
                "transfer": self.transfer_attack().describe(),
                "seeds": int(seed_x.shape[0]),
            },
        )
