"""What `evaluate()` talks to: where outputs go (`Sink`), where cells run (`Engine`), progress.

These protocols keep ``evaluation/`` free of storage and execution: ``evasion.store`` implements
:class:`Sink`, ``evasion.engines`` implements :class:`Engine` (``LocalEngine``, ``RayEngine``),
and nothing here imports either. Without an engine, ``evaluate()`` runs the plan in order in
this process (:func:`evasion.evaluation.plan.run_in_order`, the loop ``LocalEngine`` wraps), so
the default needs no import from the layer above.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from torch import Tensor

from .plan import Context, Emit, Load, Task
from .records import Cell, CellOutput
from .spec import CertifyInfo, SpecInfo

__all__ = ["Emit", "Engine", "Load", "ProgressEvent", "ProgressKind", "Setup", "Sink"]

#: ``"start"`` (before the first cell), ``"cell"`` (one cell done) or ``"finish"``
ProgressKind = Literal["start", "cell", "finish"]


@dataclass(frozen=True)
class ProgressEvent:
    """``kind="start"`` (``groups``: cells per model/attack), ``"cell"`` (one cell done, ``cached``
    when read from the store) or ``"finish"``."""

    kind: ProgressKind
    total: int
    done: int
    groups: Mapping[str, int] = field(default_factory=dict)
    group: str = ""
    cell: Cell | None = None
    cached: bool = False
    seconds: float = 0.0

    @property
    def description(self) -> str:
        return self.cell.describe() if self.cell is not None else self.kind


@dataclass(frozen=True)
class Setup:
    """What a store checks before it accepts results: same data, models, specs and batching."""

    data: str
    samples: int
    models: dict[str, str]  # name -> fingerprint
    specs: list[SpecInfo]
    batch_size: int
    seed: int
    classes: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)  # keys of the cells this invocation needs
    data_fingerprint: str = ""
    certify: list[CertifyInfo] = field(default_factory=list)  # certification methods (verification)


class Sink(Protocol):
    """Where cell outputs go (``evasion.store.RunStore`` implements it)."""

    def prepare(self, setup: Setup) -> None: ...
    def save_inputs(self, x: Tensor, y: Tensor) -> None: ...
    def completed(self) -> set[str]: ...
    def load(self, cell: Cell) -> CellOutput: ...
    def commit(self, output: CellOutput) -> None: ...


class Engine(Protocol):
    """Runs tasks; calls ``emit`` once per task with its output (``cached`` if loaded)."""

    def run(self, tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None: ...
