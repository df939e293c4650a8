"""Security evaluation: how accuracy falls as the attacker's budget grows, and can we trust it.

>>> from evasion import attacks, datasets, models
>>> from evasion.evaluation import AttackSpec, evaluate
>>> ev = evaluate(models.load("digits-cnn"), datasets.load("digits").head(100),
...               [AttackSpec(attacks.PGD(steps=20), "linf", [0.05, 0.1, 0.2])])
>>> ev.curve("digits-cnn", "pgd-linf").accuracy          # doctest: +SKIP
>>> ev.worst_case("digits-cnn", "linf").auc()             # doctest: +SKIP
>>> ev.checks                                             # attack-failure flags

No I/O here: pass ``store=evasion.store.RunStore(folder)`` to make it resumable,
``engine=evasion.engines.RayEngine()`` to run the cells elsewhere, and use :mod:`evasion.reports`
to draw it.
"""

from __future__ import annotations

from .checks import CHECKS, Check
from .curves import SecurityCurve
from .engine import evaluate
from .plan import Context, Task
from .protocols import Engine, ProgressEvent, Setup, Sink
from .records import SOURCES, Cell, CellOutput, CleanRecord, Record
from .result import Evaluation, Example
from .spec import AttackSpec, CertifySpec, SpecInfo, check_epsilons
from .transfer import TransferMatrix, transferability

__all__ = [
    "CHECKS",
    "SOURCES",
    "AttackSpec",
    "Cell",
    "CellOutput",
    "CertifySpec",
    "Check",
    "CleanRecord",
    "Context",
    "Engine",
    "Evaluation",
    "Example",
    "ProgressEvent",
    "Record",
    "SecurityCurve",
    "Setup",
    "Sink",
    "SpecInfo",
    "Task",
    "TransferMatrix",
    "check_epsilons",
    "evaluate",
    "transferability",
]
