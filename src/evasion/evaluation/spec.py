"""`AttackSpec`: one attack of an evaluation, with its norm, its epsilon grid and its goal."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .. import _validation as check
from ..attacks.base import Attack, Stepped
from ..errors import ConfigError
from ..threat_model import ThreatModel

__all__ = ["AttackSpec", "CertifyInfo", "CertifySpec", "SpecInfo", "check_epsilons", "is_black_box"]

Targets = Tensor | Callable[[Tensor], Tensor]
#: ``"attack"``: an attack the user (or the default suite) chose; ``"self-check"``: the re-attack
#: of the points every attack of its norm left unbroken (added by ``evaluate``)
Role = Literal["attack", "self-check"]


def check_epsilons(values: object, where: str = "epsilons") -> tuple[float, ...]:
    """A non-empty grid of finite, non-negative numbers -> sorted, unique, starting with 0.0."""
    return check.epsilon_grid(values, where)


def default_name(attack: Attack, norm: str) -> str:
    """``"<attack>-<norm>"`` (``"cw-l2"``, not ``"cw-l2-l2"``)."""
    return attack.name if attack.name.endswith(f"-{norm}") else f"{attack.name}-{norm}"


def is_black_box(attack: Attack) -> bool:
    """Whether an attack does without the target model's gradients (``Attack.black_box``)."""
    return bool(attack.black_box)


@dataclass(frozen=True)
class AttackSpec:
    """An attack to run in an evaluation, over an epsilon grid of one norm.

    Args:
        attack: the configured attack (e.g. ``attacks.PGD(steps=50)``).
        norm: the threat model's norm (``"linf"``, ``"l2"``, ...).
        epsilons: the budgets; sorted, de-duplicated, and ``0.0`` (the clean accuracy) is added.
            A minimum-norm attack runs once without a budget and the grid reads its results.
        name: the label in curves, records and reports (default ``"<attack>-<norm>"``).
        targeted, targets: a targeted threat, with one target class per input (a tensor
            ``(N,)``) or a function ``targets(y) -> (N,)``.
        mask: the pixels the attacker may change (a "sticker"): ``(H, W)``, ``(C, H, W)`` or one
            mask per input ``(N, C, H, W)``.
        warm_start: start each epsilon from the previous epsilon's points (iterative attacks
            with more than one step). Off by default: without it every cell is exactly the
            independent run of its batch restricted to the samples still unbroken (each sample
            keeps the random start an independent run would give it), so the curve is provably
            at least as strong as attacking each epsilon independently, sample by sample. A
            warm start converges faster on dense grids but can end weaker on some samples.
        warm_steps: steps of the warm-started epsilons (after the first): a warm-started
            sample continues an optimisation that already ran at the smaller budget, so fewer
            steps may suffice (``None``: the attack's own ``steps``).
        models: names of the models this attack runs on (``None``: every model of the
            evaluation), e.g. a detector-aware attack only on the detector-defended model.
        after: names of attacks of the same norm this one runs after, AutoAttack-style: at each
            epsilon it attacks only the samples none of them broke, and records theirs as
            broken (source ``"peer"``), so its curve is the worst case of the cascade so far.
            Much cheaper than independent runs when the earlier attacks break most points.
        start_from_peers: start each sample at the best point (highest reject-aware margin) of
            the attacks it runs ``after`` and of its own previous epsilon, as the self-check
            does, instead of a random or warm start: a later attack of a cascade then continues
            where the earlier ones got closest (e.g. a detector-aware objective from the points
            a class-margin attack found).
        role: ``"self-check"`` for the re-attack ``evaluate`` adds per norm (not for users):
            it runs after every untargeted attack of its norm, from their best points.
    """

    attack: Attack
    norm: str
    epsilons: Sequence[float]
    name: str | None = None
    targeted: bool = False
    targets: Targets | None = field(default=None, compare=False)
    mask: Tensor | None = field(default=None, compare=False)
    warm_start: bool = False
    warm_steps: int | None = None
    models: Sequence[str] | None = None
    after: Sequence[str] = ()
    role: Role = "attack"
    start_from_peers: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.attack, Attack):
            raise ConfigError(f"attack must be an evasion attack, got {type(self.attack).__name__}")
        norm = ThreatModel(self.norm, 0.0).norm
        if norm not in self.attack.norms:
            raise ConfigError(
                f"{type(self.attack).__name__} does not support the {norm} norm; "
                f"supported: {', '.join(self.attack.norms)}"
            )
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "epsilons", check_epsilons(self.epsilons, f"epsilons of {self.label!r}"))
        name = self.name if self.name is not None else default_name(self.attack, norm)
        if not isinstance(name, str) or not name.strip() or name == "clean":
            raise ConfigError(f"an attack name must be a non-empty string other than 'clean', got {name!r}")
        object.__setattr__(self, "name", name)
        for flag in ("targeted", "warm_start", "start_from_peers"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.targeted and self.targets is None:
            raise ConfigError(f"attack {name!r} is targeted: give targets (a tensor or a function of y)")
        if not self.targeted and self.targets is not None:
            raise ConfigError(f"attack {name!r} has targets but targeted=False")
        if self.targets is not None and not (isinstance(self.targets, Tensor) or callable(self.targets)):
            raise ConfigError(
                f"targets must be a tensor or a function of y, got {type(self.targets).__name__}"
            )
        if self.mask is not None:
            ThreatModel(norm, 0.0, mask=self.mask)  # validates dtype and shape
        if self.models is not None:
            if isinstance(self.models, str) or not all(isinstance(m, str) and m for m in self.models):
                raise ConfigError(
                    f"models of attack {name!r} must be a list of model names, got {self.models!r}"
                )
            if not self.models:
                raise ConfigError(f"attack {name!r} runs on no model (models is empty)")
            object.__setattr__(self, "models", tuple(self.models))
        if isinstance(self.after, str) or not all(isinstance(a, str) and a for a in self.after):
            raise ConfigError(f"after of attack {name!r} must be a list of attack names, got {self.after!r}")
        object.__setattr__(self, "after", tuple(self.after))
        if name in self.after:
            raise ConfigError(f"attack {name!r} cannot run after itself")
        if self.start_from_peers and not self.after:
            raise ConfigError(
                f"attack {name!r} starts from its peers' points but runs after no attack (after=[])"
            )
        if self.role not in ("attack", "self-check"):
            raise ConfigError(f"role must be 'attack' or 'self-check', got {self.role!r}")
        if self.warm_steps is not None:
            check.integer(self.warm_steps, "warm_steps", minimum=1)
            if not isinstance(self.attack, Stepped):
                raise ConfigError(
                    f"warm_steps needs an attack with a `steps` parameter, not {self.attack.name}"
                )

    @property
    def label(self) -> str:
        return self.name if self.name is not None else default_name(self.attack, self.norm)

    def applies_to(self, model: str) -> bool:
        """Whether this attack runs on ``model`` (see ``models``)."""
        return self.models is None or model in self.models

    @property
    def minimum_norm(self) -> bool:
        return bool(self.attack.minimum_norm)

    @property
    def black_box(self) -> bool:
        return is_black_box(self.attack)

    @property
    def grid(self) -> tuple[float, ...]:
        """The positive epsilons (the budgets actually attacked)."""
        return tuple(e for e in self.epsilons if e > 0)

    def uses_warm_start(self) -> bool:
        """Whether later epsilons start from the previous one's points (multi-step attacks)."""
        stepped = isinstance(self.attack, Stepped) and self.attack.steps > 1
        return self.warm_start and not self.minimum_norm and stepped

    def warm_attack(self) -> Attack:
        """The attack run on warm-started epsilons (``warm_steps`` steps)."""
        if self.warm_steps is None or not self.uses_warm_start():
            return self.attack
        return self.attack.replace(steps=self.warm_steps)

    def resolve_targets(self, y: Tensor) -> Tensor | None:
        """The target class of every input (``None`` for an untargeted spec)."""
        if not self.targeted or self.targets is None:
            return None
        t = (
            self.targets(y)
            if callable(self.targets) and not isinstance(self.targets, Tensor)
            else self.targets
        )
        if not isinstance(t, Tensor) or t.shape != y.shape:
            raise ConfigError(f"targets of {self.name!r} must be a tensor shaped like y {tuple(y.shape)}")
        return t.to(torch.int64)

    def info(self, y: Tensor | None = None) -> SpecInfo:
        """The plain description stored with the results (no attack object needed to read them)."""
        return SpecInfo(
            name=str(self.name),
            norm=self.norm,
            epsilons=tuple(self.epsilons),
            attack=self.attack.describe(),
            kind=self.attack.name,
            minimum_norm=self.minimum_norm,
            targeted=self.targeted,
            black_box=self.black_box,
            fingerprint=self.fingerprint(y),
            models=tuple(self.models or ()),
            role=self.role,
            after=tuple(self.after),
            start_from_peers=self.start_from_peers,
        )

    def fingerprint(self, y: Tensor | None = None) -> str:
        """A digest of everything that changes this spec's results (not the epsilon grid)."""
        h = hashlib.sha256()
        for part in (
            self.attack.describe(),
            self.norm,
            self.targeted,
            self.uses_warm_start(),
            self.warm_steps,
        ):
            h.update(repr(part).encode())
        if self.models is not None or self.role != "attack" or self.after:  # older runs keep their digests
            h.update(repr((tuple(self.models or ()), self.role, tuple(self.after))).encode())
        if self.start_from_peers:
            h.update(b"start_from_peers")
        for t in (self.mask, None if y is None else self.resolve_targets(y)):
            if t is not None:
                h.update(repr(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class SpecInfo:
    """What an evaluation records about an attack spec: enough to read and report its results."""

    name: str
    norm: str
    epsilons: tuple[float, ...]
    attack: str
    kind: str
    minimum_norm: bool = False
    targeted: bool = False
    black_box: bool = False
    fingerprint: str = ""
    models: tuple[str, ...] = ()  # empty: every model
    role: str = "attack"
    after: tuple[str, ...] = ()
    start_from_peers: bool = False

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm,
            "epsilons": list(self.epsilons),
            "attack": self.attack,
            "kind": self.kind,
            "minimum_norm": self.minimum_norm,
            "targeted": self.targeted,
            "black_box": self.black_box,
            "fingerprint": self.fingerprint,
            "models": list(self.models),
            "role": self.role,
            "after": list(self.after),
            "start_from_peers": self.start_from_peers,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpecInfo:
        return cls(
            **{
                **d,
                "epsilons": tuple(float(e) for e in d["epsilons"]),
                "models": tuple(d.get("models", ())),
                "after": tuple(d.get("after", ())),
            }
        )


@dataclass(frozen=True)
class CertifySpec:
    """A verification method (:func:`evasion.verification.certify`) run beside the attacks.

    It proves, per sample, that no adversarial example exists in the ball (a lower bound on the
    robust accuracy, where the attacks give the upper bound); ``evaluate`` stores one cell per
    model x epsilon x batch and the report draws the band between the bounds ("unknown").

    Args:
        method: ``"ibp"``, ``"crown"`` or ``"milp"`` (exact; small ReLU networks, L∞ only).
        norm: the threat model's norm (``"linf"``, ``"l2"``).
        epsilons: the budgets to certify (``None``: every epsilon of the model's untargeted
            attacks of this norm, so that each certified number has an attacked one beside it).
        models: names of the models to certify (``None``: every model of the evaluation).
        time_limit: MILP seconds per sample (a timeout is "unknown", never "robust").
        alpha_steps: optimised CROWN slopes (alpha-CROWN; 0: CROWN's adaptive slopes).
        falsify: APGD steps the MILP tries before solving (0: none).
    """

    method: str
    norm: str
    epsilons: Sequence[float] | None = None
    models: Sequence[str] | None = None
    time_limit: float = 30.0
    alpha_steps: int = 0
    falsify: int = 50

    def __post_init__(self) -> None:
        from ..verification.certificate import METHOD_NORMS, METHODS

        if self.method not in METHODS:
            raise ConfigError(
                f"unknown verification method {self.method!r}; choose from {', '.join(METHODS)}"
            )
        norm = ThreatModel(self.norm, 0.0).norm
        if norm not in METHOD_NORMS[self.method]:
            raise ConfigError(
                f"verification method {self.method!r} cannot certify the {norm} norm; "
                f"it certifies {', '.join(METHOD_NORMS[self.method])}"
            )
        object.__setattr__(self, "norm", norm)
        if self.epsilons is not None:
            grid = tuple(e for e in check_epsilons(self.epsilons, f"epsilons of {self.name!r}") if e > 0)
            if not grid:
                raise ConfigError(f"certification {self.name!r} has no positive epsilon")
            object.__setattr__(self, "epsilons", grid)
        if self.models is not None:
            if isinstance(self.models, str) or not all(isinstance(m, str) and m for m in self.models):
                raise ConfigError(
                    f"models of {self.name!r} must be a list of model names, got {self.models!r}"
                )
            object.__setattr__(self, "models", tuple(self.models))
        if isinstance(self.time_limit, bool) or not isinstance(self.time_limit, (int, float)):
            raise ConfigError(
                f"time_limit of {self.name!r} must be a number of seconds, got {self.time_limit!r}"
            )
        if not self.time_limit > 0:
            raise ConfigError(f"time_limit of {self.name!r} must be > 0, got {self.time_limit!r}")
        object.__setattr__(self, "time_limit", float(self.time_limit))
        check.integer(self.alpha_steps, "alpha_steps", minimum=0)
        check.integer(self.falsify, "falsify", minimum=0)

    @property
    def name(self) -> str:
        """``"<method>-<norm>"``, e.g. ``"crown-linf"`` (the name its cells are stored under)."""
        return f"{self.method}-{self.norm}"

    def applies_to(self, model: str) -> bool:
        return self.models is None or model in self.models

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``certify`` that change this method's results."""
        if self.method == "milp":
            return {"time_limit": self.time_limit, "falsify": self.falsify}
        if self.method == "crown":
            return {"alpha_steps": self.alpha_steps}
        return {}

    def fingerprint(self) -> str:
        """A digest of everything that changes the certificates (not the epsilons)."""
        return hashlib.sha256(
            repr((self.method, self.norm, sorted(self.options().items()))).encode()
        ).hexdigest()[:16]

    def info(self) -> CertifyInfo:
        return CertifyInfo(self.name, self.method, self.norm, self.fingerprint(), self.options())


@dataclass(frozen=True)
class CertifyInfo:
    """What an evaluation records about a certification: enough to read its cells back."""

    name: str
    method: str
    norm: str
    fingerprint: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "norm": self.norm,
            "fingerprint": self.fingerprint,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CertifyInfo:
        return cls(
            str(d["name"]),
            str(d["method"]),
            str(d["norm"]),
            str(d.get("fingerprint", "")),
            dict(d.get("options", {})),
        )
