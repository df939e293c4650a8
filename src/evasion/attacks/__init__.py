"""Attacks: one shared gradient loop, minimum-norm attacks, and a registry by name.

Every attack is an immutable configuration called as
``attack(model, x, y, *, threat, target=None, generator=None) -> AttackResult``.
"""

from __future__ import annotations

from ..errors import UnknownNameError
from .apgd import APGD
from .base import Attack, AttackResult, Problem
from .bim import BIM
from .cw import CarliniWagnerL2
from .deepfool import DeepFool
from .fgsm import FGSM
from .iterative import IterativeAttack
from .loop import LoopSettings, run_loop
from .losses import LOSSES, LossObjective, Objective, ObjectiveValue
from .mifgsm import MIFGSM
from .pgd import PGD

__all__ = [
    "APGD",
    "BIM",
    "FGSM",
    "LOSSES",
    "MIFGSM",
    "PGD",
    "REGISTRY",
    "Attack",
    "AttackResult",
    "CarliniWagnerL2",
    "DeepFool",
    "IterativeAttack",
    "LoopSettings",
    "LossObjective",
    "Objective",
    "ObjectiveValue",
    "Problem",
    "get",
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
    }
    key = aliases.get(key, key)
    if key not in REGISTRY:
        raise UnknownNameError("attack", name, list(REGISTRY))
    return REGISTRY[key]


for _cls in (FGSM, BIM, PGD, MIFGSM, APGD, DeepFool, CarliniWagnerL2):
    register(_cls)
