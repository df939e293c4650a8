"""Attacks: one shared gradient loop, minimum-norm attacks, and a registry by name.

Every attack is an immutable configuration called as
``attack(model, x, y, *, threat, target=None, generator=None) -> AttackResult``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ..errors import ConfigError, UnknownNameError
from .apgd import APGD
from .base import Attack, AttackResult, Problem
from .bim import BIM
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .dynamic import DynamicAdversary
from .fgsm import FGSM
from .iterative import IterativeAttack
from .jsma import JSMA
from .loop import LoopSettings, run_loop
from .losses import LOSSES, LossObjective, Objective, ObjectiveValue
from .max_confidence import MaxConfidence
from .mifgsm import MIFGSM
from .noise import Noise
from .one_pixel import OnePixel
from .pgd import PGD
from .square import Square
from .substitute import Substitute
from .universal import Universal, UniversalPerturbation

__all__ = [
    "APGD",
    "BIM",
    "FGSM",
    "JSMA",
    "LOSSES",
    "MIFGSM",
    "PGD",
    "REGISTRY",
    "Attack",
    "AttackResult",
    "CarliniWagnerL2",
    "DeepFool",
    "DynamicAdversary",
    "IterativeAttack",
    "LoopSettings",
    "LossObjective",
    "MaxConfidence",
    "Noise",
    "Objective",
    "ObjectiveValue",
    "OnePixel",
    "Problem",
    "Square",
    "Substitute",
    "Universal",
    "UniversalPerturbation",
    "get",
    "make",
    "parameters",
    "register",
    "run_loop",
]

#: attack classes by their short name (the CLI and config files use these names)
REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Add an attack class under ``cls.name`` (usable as a decorator)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"an attack named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Attack]:
    """The attack class registered as ``name`` (case-insensitive, '-' and '_' equivalent)."""
    key = name.lower().replace("_", "-")
    aliases = {
        "pgd-linf": "pgd",
        "pgd-l2": "pgd",
        "mi-fgsm": "mifgsm",
        "cw": "cw-l2",
        "carlini-wagner": "cw-l2",
        "one-pixel": "onepixel",
    }
    key = aliases.get(key, key)
    if key not in REGISTRY:
        raise UnknownNameError("attack", name, list(REGISTRY))
    return REGISTRY[key]


def parameters(cls: type[Attack]) -> dict[str, tuple[type, Any]]:
    """The configurable parameters of an attack class: name -> (type, default)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, Any]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints.get(f.name, str)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if args and (typing.get_origin(hint) in (typing.Union, types.UnionType)) else hint
        out[f.name] = (base if isinstance(base, type) else str, f.default)
    return out


def _convert(cls: type[Attack], key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if kind is bool:
            if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(value)
            return value.lower() in {"true", "1", "yes"}
        if kind in (int, float):
            return kind(value)
    except ValueError:
        raise ConfigError(
            f"{cls.__name__} parameter {key}={value!r} is not a valid {kind.__name__}"
        ) from None
    return value


def make(name: str, **params: Any) -> Attack:
    """Build a registered attack from its name and parameters (strings are converted by type).

    Unknown parameters are an error that lists the valid ones.
    """
    cls = get(name)
    valid = parameters(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for attack {cls.name!r}; valid: {', '.join(sorted(valid))}"
        )
    converted = {k: _convert(cls, k, v, valid[k][0]) for k, v in params.items()}
    try:
        return cls(**converted)
    except TypeError as exc:  # a value of the wrong type reached the dataclass
        raise ConfigError(f"bad parameters for attack {cls.name!r}: {exc}") from None


for _cls in (FGSM, BIM, PGD, MIFGSM, APGD, DeepFool, CarliniWagnerL2):
    register(_cls)
register(MaxConfidence)
register(DynamicAdversary)
register(Noise)
register(Square)
register(Substitute)
register(OnePixel)
register(JSMA)
