"""`evaluate()`: run a plan of cells on an engine, through an optional store, into an `Evaluation`.

The library does no I/O itself: a *sink* (``evasion.store.RunStore``) says which cells are
already committed, loads them and commits new ones; a *progress* callback receives
:class:`ProgressEvent` s (the CLI draws them as bars). Engines only decide where cells run: the
local engine runs them in plan order in this process, ``evasion.engines.RayEngine`` as Ray tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_images
from ..datasets.base import Dataset
from ..errors import ConfigError, InputError
from ..models.classifier import Classifier, as_classifier
from .plan import (
    Context,
    Product,
    Task,
    check_mask_rows,
    default_threads,
    dependents,
    execute,
    make_plan,
    replay,
)
from .records import SOURCES, Cell, CellOutput
from .result import Evaluation, Example
from .spec import AttackSpec, SpecInfo

__all__ = ["Engine", "LocalEngine", "ProgressEvent", "Setup", "Sink", "evaluate"]

Load = Callable[[Cell], "CellOutput | None"]
Emit = Callable[[CellOutput, bool], None]


@dataclass(frozen=True)
class ProgressEvent:
    """``kind="start"`` (``groups``: cells per model/attack), ``"cell"`` (one cell done, ``cached``
    when read from the store) or ``"finish"``."""

    kind: str
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


class LocalEngine:
    """Runs the tasks in plan order in this process, dropping products nobody needs any more."""

    def run(self, tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None:
        products: dict[str, Product] = {}
        remaining = dependents(tasks)
        for task in tasks:
            args = [products.get(k) if k else None for k in (task.state, task.search)] + [
                products[h] for h in task.hints
            ]
            stored = load(task.cell)
            if stored is not None:
                product = replay(task, ctx, stored, args[0])
                emit(stored, True)
            else:
                out, product = execute(task, ctx, *args)
                emit(out, False)
            if remaining[task.key]:
                products[task.key] = product
            for k in task.needs:
                remaining[k] -= 1
                if remaining[k] == 0:
                    products.pop(k, None)


# -- inputs ------------------------------------------------------------------------------------
def _models(models: Classifier | nn.Module | Mapping[str, nn.Module], x: Tensor) -> dict[str, Classifier]:
    if isinstance(models, nn.Module):
        clf = as_classifier(models, x[:1])
        return {clf.name: clf}
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("models must be a Classifier or a non-empty mapping name -> Classifier")
    out = {}
    for name, m in models.items():
        if not isinstance(name, str) or not name or "|" in name:
            raise ConfigError(f"model names must be non-empty strings without '|', got {name!r}")
        out[name] = as_classifier(m, x[:1])
    return out


def _data(data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, str, list[str]]:
    if isinstance(data, Dataset):
        return data.x, data.y, f"{data.name}/{data.split}", list(data.classes)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise InputError("data must be a Dataset or a pair of tensors (x, y)")
        if x.dim() < 2 or y.shape != (x.shape[0],):
            raise InputError(f"data: x {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
        return x.detach().cpu().float(), y.detach().cpu().long(), "tensors", []
    raise InputError(f"data must be a Dataset or a pair of tensors (x, y), got {type(data).__name__}")


def _specs(attacks: AttackSpec | Sequence[AttackSpec]) -> dict[str, AttackSpec]:
    items = [attacks] if isinstance(attacks, AttackSpec) else list(attacks)
    if not items:
        raise ConfigError("give at least one AttackSpec")
    out: dict[str, AttackSpec] = {}
    for s in items:
        if not isinstance(s, AttackSpec):
            raise ConfigError(f"attacks must be AttackSpec objects, got {type(s).__name__}")
        if str(s.name) in out:
            raise ConfigError(f"two attacks are named {s.name!r}; give them distinct names")
        if "|" in str(s.name):
            raise ConfigError(f"attack names cannot contain '|', got {s.name!r}")
        out[str(s.name)] = s
    return out


def fingerprint(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers (a store refuses results of another model)."""
    import hashlib

    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.float().numpy().tobytes()
        )
    return h.hexdigest()[:16]


def data_fingerprint(x: Tensor, y: Tensor) -> str:
    import hashlib

    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ExamplePicker:
    """Keeps, per model and attack, the first samples broken, at the smallest epsilon that broke them."""

    def __init__(self, pool: int = 32, per_attack: int = 6):
        self.pool, self.per_attack = pool, per_attack
        self._best: dict[tuple[str, str, int], tuple[float, Tensor, int, float]] = {}

    def add(self, out: CellOutput) -> None:
        cell = out.cell
        if cell.kind != "budget" or out.adversarial is None or not len(out.indices):
            return
        cols, first = out.columns, int(out.columns["index"][0])
        for j, index in enumerate(out.indices.tolist()):
            if index >= self.pool:
                break
            row = index - first
            if not cols["success"][row] or SOURCES[int(cols["source"][row])] == "inherited":
                continue
            key = (cell.model, cell.attack, index)
            if key not in self._best or cell.epsilon < self._best[key][0]:
                point = out.adversarial[j].clone()
                self._best[key] = (
                    cell.epsilon,
                    point,
                    int(cols["prediction"][row]),
                    float(cols["confidence"][row]),
                )

    def examples(self, x: Tensor, y: Tensor, clean: Mapping[str, Mapping[str, np.ndarray]]) -> list[Example]:
        out: list[Example] = []
        taken: dict[tuple[str, str], int] = {}
        for (model, attack, index), (eps, point, pred, conf) in sorted(self._best.items()):
            c = clean.get(model)
            if c is None or taken.get((model, attack), 0) >= self.per_attack:
                continue
            taken[(model, attack)] = taken.get((model, attack), 0) + 1
            row = int(np.searchsorted(c["index"], index))
            out.append(
                Example(
                    model,
                    attack,
                    eps,
                    index,
                    int(y[index]),
                    int(c["prediction"][row]),
                    float(c["confidence"][row]),
                    pred,
                    conf,
                    x[index].clone(),
                    point,
                )
            )
        return out


def evaluate(
    models: Classifier | nn.Module | Mapping[str, nn.Module],
    data: Dataset | tuple[Tensor, Tensor],
    attacks: AttackSpec | Sequence[AttackSpec],
    *,
    batch_size: int = 256,
    seed: int = 0,
    progress: Callable[[ProgressEvent], None] | None = None,
    store: Sink | None = None,
    engine: Engine | None = None,
    reuse_minimal_norms: bool = True,
) -> Evaluation:
    """Security evaluation curves of ``models`` on ``data`` under ``attacks``.

    Each model is evaluated as it is (a classifier with a reject option gets reject semantics).
    With a ``store`` (e.g. ``evasion.store.RunStore(path)``), committed cells are read back
    instead of recomputed and every new cell is committed as soon as it is done, so an
    interrupted evaluation resumes where it stopped. ``engine``: where cells run (default: this
    process). ``reuse_minimal_norms``: fixed-budget attacks first try the points of minimum-norm
    attacks of the same norm (re-verified). Returns records, curves and attack-failure checks.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    x, y, data_name, classes = _data(data)
    clfs = _models(models, x)
    specs = _specs(attacks)
    for clf in clfs.values():
        check_images(x, input_shape=clf.input_shape, bounds=clf.bounds)
        clf.check_labels(y, len(y))
    bad = check_mask_rows(specs, len(y))
    if bad:
        raise ConfigError(f"the per-input mask of {bad[0]!r} must have one row per sample ({len(y)})")
    targets = {n: s.resolve_targets(y) for n, s in specs.items()}
    ctx = Context(clfs, x, y, specs, targets, batch_size, seed, default_threads())
    tasks = make_plan(list(clfs), list(specs.values()), len(y), batch_size, reuse_minimal_norms)
    infos = [s.info(y) for s in specs.values()]
    setup = Setup(
        data_name,
        len(y),
        {n: fingerprint(m) for n, m in clfs.items()},
        infos,
        batch_size,
        seed,
        classes,
        [t.key for t in tasks],
        data_fingerprint(x, y),
    )
    done: set[str] = set()
    if store is not None:
        store.prepare(setup)
        store.save_inputs(x, y)
        done = store.completed()
    run = _Run(tasks, store, done, progress)
    (engine or LocalEngine()).run(tasks, ctx, run.load, run.emit)
    run.finish()
    ev = Evaluation.from_outputs(
        list(clfs),
        infos,
        len(y),
        run.outputs,
        meta={"data": data_name, "seed": seed, "batch_size": batch_size},
    )
    ev.examples.extend(run.picker.examples(x, y, ev.clean_columns))
    return ev


class _Run:
    """Glue between an engine and the store / progress callback / collected outputs."""

    def __init__(
        self,
        tasks: Sequence[Task],
        store: Sink | None,
        done: set[str],
        progress: Callable[[ProgressEvent], None] | None,
    ):
        self.store, self.done, self.progress = store, done, progress
        self.total, self.count = len(tasks), 0
        self.outputs: list[CellOutput] = []
        self.picker = ExamplePicker()
        groups: dict[str, int] = {}
        for t in tasks:
            groups[_group(t.cell)] = groups.get(_group(t.cell), 0) + 1
        if progress is not None:
            progress(ProgressEvent("start", self.total, 0, groups))

    def load(self, cell: Cell) -> CellOutput | None:
        if self.store is None or cell.key not in self.done:
            return None
        return self.store.load(cell)

    def emit(self, out: CellOutput, cached: bool) -> None:
        if not cached and self.store is not None:
            self.store.commit(out)
        self.picker.add(out)
        self.outputs.append(out.without_points())
        self.count += 1
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    "cell", self.total, self.count, {}, _group(out.cell), out.cell, cached, out.seconds
                )
            )

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent("finish", self.total, self.count))


def _group(cell: Cell) -> str:
    return f"{cell.model} / {cell.attack or 'clean'}"
