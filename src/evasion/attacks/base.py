"""The attack contract: `Attack` (an immutable configuration) -> `AttackResult` (named tensors).

``attack(model, x, y, *, threat, target=None, generator=None)`` validates its inputs once,
runs on the model's device, never modifies ``x`` or the model, and returns an
:class:`AttackResult` whose ``success`` comes from the model's own predictions on the returned
points. Fixed-budget attacks respect ``threat.epsilon``; minimum-norm attacks also report the
smallest perturbation they found in ``minimal_norms``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .._validation import check_targets
from ..errors import ConfigError, InputError
from ..models.classifier import REJECT, Classifier, as_classifier
from ..perturbations import norm as perturbation_norm
from ..threat_model import Norm, ThreatModel

__all__ = [
    "Attack",
    "AttackResult",
    "Problem",
    "RandomStarting",
    "Stepped",
    "Traceable",
    "default_generator",
]


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns, one entry per input sample (all on the model's device).

    Attributes:
        adversarial: the returned points, inside the box, the mask and (fixed-budget) the ball.
        success: the model's prediction on ``adversarial`` is wrong (untargeted; a rejection is
            not an evasion) or equals the target (targeted).
        norms: ``||adversarial - x||`` in the threat model's norm.
        predictions: the model's decision on ``adversarial`` (``REJECT`` = -1 where it refuses).
        forwards, backwards: per-sample forward passes and input-gradient computations.
        minimal_norms: minimum-norm attacks only: the smallest adversarial perturbation found
            before any projection onto ``threat.epsilon`` (``inf`` where none was found).
        loss_trace: ``(steps + 1, N)`` objective per iteration when asked for (NaN once a sample
            has stopped).
        stats: per-sample diagnostics for the attack-failure checks, e.g. ``zero_grad_steps``
            and ``nonfinite_grad_steps`` (steps whose input gradient was all-zero / not finite).
        access: what the attacker was allowed to see (:attr:`Attack.access`): ``"gradients"``,
            ``"scores"``, ``"labels"`` or ``"transfer"``; for the last three ``forwards`` counts
            the queries each sample used on the victim.
    """

    adversarial: Tensor
    success: Tensor
    norms: Tensor
    predictions: Tensor
    forwards: Tensor
    backwards: Tensor
    threat: ThreatModel
    attack: str
    minimal_norms: Tensor | None = None
    loss_trace: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)
    access: str = "gradients"

    def __len__(self) -> int:
        return int(self.adversarial.shape[0])

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples the attack did not break (untargeted: accuracy under attack)."""
        return 1.0 - self.success_rate

    @property
    def queries(self) -> int:
        """Total forward plus backward passes over all samples."""
        return int(self.forwards.sum() + self.backwards.sum())

    def to(self, device: torch.device | str) -> AttackResult:
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device)
            elif isinstance(value, dict):
                value = {k: v.to(device) for k, v in value.items()}
            moved[f.name] = value
        return AttackResult(**moved)

    def cpu(self) -> AttackResult:
        return self.to("cpu")


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh one seeded 0: attacks never touch the global RNG."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


@dataclass
class Problem:
    """One validated attack call: model, clean points, labels, box (mask folded in), RNG."""

    model: Classifier
    x: Tensor
    y: Tensor
    target: Tensor | None
    threat: ThreatModel
    lower: Tensor
    upper: Tensor
    generator: torch.Generator
    #: optional warm start (e.g. the adversarial points found at a smaller epsilon)
    init: Tensor | None = None
    #: the class a *targeted loss* aims at under an untargeted threat (AutoAttack's APGD-T:
    #: the loss pulls towards ``aim``, success is still any wrong class); ``None``: no aim
    aim: Tensor | None = None
    #: coordinates the attacker may move (``None``: all of them); computed once, not per step
    free: Tensor | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        everywhere = self.threat.mask is None and self.threat.scalar_bounds() is not None
        self.free = None if everywhere else self.lower < self.upper

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def loss_target(self) -> Tensor | None:
        """The class the objective's loss is computed towards: the target, else the aim."""
        return self.target if self.target is not None else self.aim

    def success(self, predictions: Tensor, idx: Tensor | None = None) -> Tensor:
        """Whether each prediction is an evasion (rows ``idx`` of the problem)."""
        if self.target is not None:
            t = self.target if idx is None else self.target[idx]
            return predictions == t
        y = self.y if idx is None else self.y[idx]
        return (predictions != y) & (predictions != REJECT)

    def subset(self, idx: Tensor) -> Problem:
        """The same problem restricted to samples ``idx`` (shares the generator)."""
        mask = self.threat.mask
        if mask is not None and mask.dim() == 4 and mask.shape[0] == self.n:
            threat = self.threat.with_mask(mask[idx.to(mask.device)])
        else:
            threat = self.threat
        return Problem(
            self.model,
            self.x[idx],
            self.y[idx],
            None if self.target is None else self.target[idx],
            threat,
            self.lower[idx],
            self.upper[idx],
            self.generator,
            None if self.init is None else self.init[idx],
            None if self.aim is None else self.aim[idx],
        )


class Attack(ABC):
    """Base class of every attack: validation, device placement, the call signature.

    Subclasses are frozen dataclasses (a reusable configuration) that implement :meth:`_run`.
    What an attack can do is declared, never probed: the class variables below say what kind of
    attack it is, and the protocols :class:`Traceable`, :class:`RandomStarting` and
    :class:`Stepped` name the options an evaluator may read or change (``trace``,
    ``random_start``, ``steps``).
    """

    #: short identifier used in registries, reports and the CLI
    name: ClassVar[str] = "attack"
    #: norms the attack can work in
    norms: ClassVar[tuple[Norm, ...]] = ("linf", "l2")
    #: minimum-norm attacks search the smallest perturbation instead of using the whole budget
    minimum_norm: ClassVar[bool] = False
    #: whether ``target=`` is supported (otherwise a targeted threat is a ConfigError)
    supports_targeted: ClassVar[bool] = True
    #: the attack needs no gradient of the attacked model (score-based, decision-based or
    #: transfer): samples it breaks that no white-box attack breaks flag gradient masking
    black_box: ClassVar[bool] = False
    #: the attack's objective sees the reject score of a classifier with a reject option and
    #: pushes away from rejection; otherwise it works on the class scores alone and may end on
    #: a rejected point (which is not an evasion)
    reject_aware: ClassVar[bool] = False
    #: what the attacker sees of the model (:mod:`evasion.access`): ``"gradients"`` (white-box),
    #: ``"scores"``, ``"labels"``, or ``"transfer"`` (a surrogate's gradients, the victim's labels)
    access: ClassVar[str] = "gradients"

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        threat: ThreatModel,
        target: Tensor | int | None = None,
        generator: torch.Generator | None = None,
        init: Tensor | None = None,
    ) -> AttackResult:
        """Attack ``x`` (labels ``y``) under ``threat``.

        ``target``: one class per input (or one int) for a targeted threat. ``generator``: the
        source of randomness (default: a fresh generator seeded 0). ``init``: optional warm
        start, projected onto the threat's ball; iterative attacks start their first run there,
        minimum-norm attacks ignore it.
        """
        problem = self.prepare(model, x, y, threat=threat, target=target, generator=generator)
        if init is not None:
            if not isinstance(init, Tensor) or init.shape != problem.x.shape:
                raise InputError(f"init must be a tensor shaped like x {tuple(problem.x.shape)}")
            if not bool(torch.isfinite(init).all()):
                raise InputError("init contains NaN or infinite values")
            problem.init = init.detach().to(problem.x.device, problem.x.dtype)
        if problem.threat.epsilon == 0 and not self.minimum_norm:
            return self.unchanged(problem)
        with torch.enable_grad():
            return self._run(problem)

    # -- set-up ----------------------------------------------------------------------------
    def prepare(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        threat: ThreatModel,
        target: Tensor | int | None = None,
        generator: torch.Generator | None = None,
    ) -> Problem:
        """Validate everything once and move it to the model's device."""
        if not isinstance(threat, ThreatModel):
            raise ConfigError(f"threat must be an evasion.ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.norms:
            raise ConfigError(
                f"{type(self).__name__} does not support the {threat.norm} norm; supported: {', '.join(self.norms)}"
            )
        if not self.minimum_norm and threat.is_unbounded and self.needs_finite_epsilon():
            raise ConfigError(f"{type(self).__name__} needs a finite epsilon, got inf")
        clf = as_classifier(model, x if isinstance(x, Tensor) else None)
        bounds = threat.scalar_bounds()
        if bounds is not None and (bounds[0] < clf.bounds[0] - 1e-9 or bounds[1] > clf.bounds[1] + 1e-9):
            raise ConfigError(f"threat bounds {bounds} exceed the model's input bounds {clf.bounds}")
        xd = clf.check_inputs(x)
        yd = clf.check_labels(y, xd.shape[0])
        if threat.targeted:
            if not self.supports_targeted:
                raise ConfigError(f"{type(self).__name__} is untargeted only")
            if target is None:
                raise InputError("the threat model is targeted: pass target= (one class per input)")
            tgt: Tensor | None = check_targets(target, yd, clf.num_classes)
        elif target is not None:
            raise InputError("target= was given but the threat model is untargeted (set targeted=True)")
        else:
            tgt = None
        lower, upper = threat.box_for(xd)
        if bool(((xd < lower - 1e-6) | (xd > upper + 1e-6)).any()):
            raise InputError("x lies outside the threat model's bounds (per-pixel box)")
        return Problem(clf, xd, yd, tgt, threat, lower, upper, default_generator(generator))

    def needs_finite_epsilon(self) -> bool:
        return True

    def unchanged(self, problem: Problem) -> AttackResult:
        """The result of an attack that changes nothing (epsilon = 0)."""
        with torch.no_grad():
            preds = problem.model.decide(problem.model(problem.x))
        ones = torch.ones(problem.n, dtype=torch.long, device=problem.x.device)
        return AttackResult(
            adversarial=problem.x.clone(),
            success=problem.success(preds),
            norms=torch.zeros(problem.n, device=problem.x.device, dtype=problem.x.dtype),
            predictions=preds,
            forwards=ones,
            backwards=torch.zeros_like(ones),
            threat=problem.threat,
            attack=self.describe(),
            minimal_norms=None,
            access=self.access,
        )

    def result(
        self,
        problem: Problem,
        adversarial: Tensor,
        predictions: Tensor,
        forwards: Tensor,
        backwards: Tensor,
        *,
        minimal_norms: Tensor | None = None,
        loss_trace: Tensor | None = None,
        stats: dict[str, Tensor] | None = None,
    ) -> AttackResult:
        """Assemble an :class:`AttackResult` (success from the given fresh predictions)."""
        adversarial = adversarial.detach()
        return AttackResult(
            adversarial=adversarial,
            success=problem.success(predictions),
            norms=perturbation_norm(adversarial - problem.x, problem.threat.norm),
            predictions=predictions,
            forwards=forwards,
            backwards=backwards,
            threat=problem.threat,
            attack=self.describe(),
            minimal_norms=minimal_norms,
            loss_trace=loss_trace,
            stats=stats or {},
            access=self.access,
        )

    @abstractmethod
    def _run(self, problem: Problem) -> AttackResult:
        """Run the attack on a validated problem (gradients enabled)."""

    # -- description -----------------------------------------------------------------------
    def describe(self) -> str:
        """``Name(param=value, ...)`` with the non-default parameters."""
        params = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.default is not value and f.default != value:
                params.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(params)})"

    def replace(self, **changes: Any) -> Attack:
        """A copy with some parameters changed (validated again)."""
        return replace(self, **changes)  # type: ignore[type-var]


@runtime_checkable
class Traceable(Protocol):
    """An attack with a ``trace`` option: it can record its objective per step in ``loss_trace``."""

    @property
    def trace(self) -> bool: ...


@runtime_checkable
class RandomStarting(Protocol):
    """An attack with a ``random_start`` option: called without ``init``, it starts at a random
    point of the ball drawn from its generator."""

    @property
    def random_start(self) -> bool: ...


@runtime_checkable
class Stepped(Protocol):
    """An attack with an iteration budget ``steps`` (a warm-started evaluation may shorten it)."""

    @property
    def steps(self) -> int: ...


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Config validation helper: a finite number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """Config validation helper: a number in (0, 1]."""
    check_positive(name, value)
    if value > 1:
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}")


def check_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
