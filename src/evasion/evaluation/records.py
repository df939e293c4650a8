"""The units of an evaluation: cells (what is computed), their outputs, and per-sample records.

A *cell* is one model x attack x epsilon x batch (or the clean predictions of one model x batch,
or the unbounded search of a minimum-norm attack). Its output holds one row per sample of the
batch, in columns (numpy arrays), and the adversarial points it found, so that a store can
commit it atomically and an evaluation can be rebuilt from stored cells alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch import Tensor

__all__ = [
    "ATTACK_COLUMNS",
    "CERTIFY_COLUMNS",
    "CERTIFY_STATUSES",
    "CLEAN_COLUMNS",
    "SOURCES",
    "Cell",
    "CellKind",
    "CellOutput",
    "CleanRecord",
    "Record",
    "Source",
    "columns_of",
    "empty_columns",
]

#: how a record's point was obtained
#: (``"peer"``: a self-check record of a point another attack of the norm broke at this epsilon)
Source = Literal["clean", "attack", "inherited", "min-norm", "projected", "search", "peer"]
#: the sources in the order of their stored integer codes
SOURCES: tuple[Source, ...] = ("clean", "attack", "inherited", "min-norm", "projected", "search", "peer")

#: what a cell computes: clean predictions, a minimum-norm attack without a budget, an attack
#: at one epsilon, or a certification (a proof of robustness per sample) at one epsilon
CellKind = Literal["clean", "search", "budget", "certify"]

#: per-sample columns of an attack cell and their numpy dtypes
ATTACK_COLUMNS: dict[str, Any] = {
    "index": np.int64,  # position of the sample in the evaluated data
    "label": np.int64,
    "prediction": np.int64,  # fresh prediction on the returned point (-1 = REJECT)
    "success": np.bool_,  # the evaluator's verdict: fresh prediction is an evasion, inside the budget
    "norm_value": np.float64,  # ||x_adv - x|| in the spec's norm
    "confidence": np.float64,  # softmax probability of the predicted column
    "forwards": np.int64,
    "backwards": np.int64,
    "source": np.int8,  # index into SOURCES
    "reported_success": np.bool_,  # what the attack itself claimed
    "in_budget": np.bool_,  # inside the epsilon-ball and the box
    "zero_grad": np.int64,  # steps whose input gradient was all zero
    "nonfinite_grad": np.int64,  # steps whose input gradient had NaN/inf
    "improving": np.bool_,  # the objective was still rising over the last steps
    "minimal_norm": np.float64,  # minimum-norm attacks: smallest perturbation found (inf: none; nan: n/a)
}

#: per-sample columns of a clean cell
CLEAN_COLUMNS: dict[str, Any] = {
    "index": np.int64,
    "label": np.int64,
    "prediction": np.int64,
    "confidence": np.float64,
    "repeat_prediction": np.int64,  # a second identical call (randomness check)
    "score_change": np.float64,  # largest score difference between the two calls
}


#: the MILP's per-sample verdicts, in the order of their stored codes (-1: no MILP, no status)
CERTIFY_STATUSES: tuple[str, ...] = ("robust", "not-robust", "unknown")

#: per-sample columns of a certification cell (``evasion.verification.certify`` on one batch)
CERTIFY_COLUMNS: dict[str, Any] = {
    "index": np.int64,
    "label": np.int64,
    "certified": np.bool_,  # clean prediction correct and margin_lower > 0: proved robust
    "clean_correct": np.bool_,
    "margin_lower": np.float64,  # lower bound of f_y - max_{k != y} f_k over the ball
    "margin_upper": np.float64,  # milp: the margin at the best point found (nan: other methods)
    "status": np.int8,  # milp: index into CERTIFY_STATUSES (-1: other methods)
    "seconds": np.float64,  # milp: time spent on the sample (nan: other methods)
}


def columns_of(kind: str) -> dict[str, Any]:
    """The per-sample columns of a cell of ``kind``."""
    return CLEAN_COLUMNS if kind == "clean" else CERTIFY_COLUMNS if kind == "certify" else ATTACK_COLUMNS


def empty_columns(spec: dict[str, Any], n: int) -> dict[str, np.ndarray]:
    """Zero-filled columns for ``n`` rows (NaN for the minimal norm)."""
    cols = {k: np.zeros(n, dtype=t) for k, t in spec.items()}
    if "minimal_norm" in cols:
        cols["minimal_norm"].fill(math.nan)
    return cols


@dataclass(frozen=True, order=True)
class Cell:
    """One unit of work. ``kind``: ``"clean"``, ``"search"`` (a minimum-norm attack without a
    budget, ``epsilon = inf``), ``"budget"`` (an attack at one epsilon) or ``"certify"`` (a
    verification method at one epsilon; ``attack`` is its name, e.g. ``"crown-linf"``)."""

    kind: CellKind
    model: str
    attack: str
    epsilon: float
    batch: int

    @property
    def key(self) -> str:
        return f"{self.kind}|{self.model}|{self.attack}|{self.epsilon!r}|{self.batch}"

    def describe(self) -> str:
        if self.kind == "clean":
            return f"{self.model}: clean, batch {self.batch}"
        eps = "unbounded" if math.isinf(self.epsilon) else f"eps {self.epsilon:g}"
        what = f"certify {self.attack}" if self.kind == "certify" else self.attack
        return f"{self.model}: {what} {eps}, batch {self.batch}"


@dataclass
class CellOutput:
    """What one cell produced: per-sample columns, and the adversarial points it computed.

    ``indices``/``adversarial`` hold only the rows this cell computed itself (points inherited
    from a smaller epsilon are not repeated); the clean input stands for every other row.
    """

    cell: Cell
    columns: dict[str, np.ndarray]
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    adversarial: Tensor | None = None
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.columns["index"])

    def without_points(self) -> CellOutput:
        """The same output without the adversarial tensor (what evaluations keep in memory)."""
        return CellOutput(self.cell, self.columns, self.indices, None, self.seconds)


@dataclass(frozen=True, slots=True)
class Record:
    """One sample under one attack at one epsilon (``epsilon = inf``: a minimum-norm search)."""

    model: str
    attack: str
    norm: str
    epsilon: float
    index: int
    label: int
    prediction: int
    success: bool
    norm_value: float
    rejected: bool
    forwards: int
    backwards: int
    confidence: float
    source: Source
    minimal_norm: float | None  # minimum-norm attacks only


@dataclass(frozen=True, slots=True)
class CleanRecord:
    """One sample's clean prediction by one model."""

    model: str
    index: int
    label: int
    prediction: int
    confidence: float
    rejected: bool
    repeat_prediction: int
    score_change: float
