"""The plan of an evaluation: its cells in a valid order, with what each one depends on.

Per model: the clean predictions of every batch first; then, per norm, the minimum-norm attacks
(one unbounded search per batch, then their budgets) so that the fixed-budget attacks of the same
norm can skip samples those already broke; then the fixed-budget attacks, epsilons ascending,
each epsilon depending on the previous one of the same attack and batch (broken stays broken,
warm starts); last, the model's certification cells (one per method x epsilon x batch, each
independent of every other cell). Engines may run independent cells in any order; results do not depend on it.
:func:`run_in_order` runs them one after the other in this process (what ``evaluate()`` does
without an engine; ``evasion.engines.LocalEngine`` is that loop as an engine object).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.classifier import Classifier
from .compute import (
    Batch,
    ChainState,
    SearchResult,
    advance,
    cell_seed,
    initial_state,
    run_budget,
    run_certify,
    run_clean,
    run_search,
    search_result,
)
from .records import Cell, CellOutput
from .spec import AttackSpec, CertifySpec

__all__ = ["Context", "Emit", "Load", "Task", "execute", "make_plan", "replay", "run_in_order"]

Product = Any  # a clean CellOutput, a ChainState or a SearchResult
#: an engine asks whether a cell is stored (its output, or ``None`` to compute it) ...
Load = Callable[[Cell], "CellOutput | None"]
#: ... and hands every output back, ``cached`` when it was loaded rather than computed
Emit = Callable[[CellOutput, bool], None]


@dataclass(frozen=True)
class Task:
    """A cell and the keys of the tasks whose products it needs."""

    cell: Cell
    state: str | None = None  # the previous state of the chain (the clean cell for the first epsilon)
    search: str | None = None  # a minimum-norm spec's own unbounded search
    hints: tuple[str, ...] = ()  # searches of other minimum-norm specs of the same norm
    peers: tuple[str, ...] = ()  # self-check: the same epsilon and batch under the norm's other attacks

    @property
    def key(self) -> str:
        return self.cell.key

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(k for k in (self.state, self.search, *self.hints, *self.peers) if k is not None)


@dataclass
class Context:
    """Everything a task needs besides its dependencies (shipped once to remote workers)."""

    models: dict[str, Classifier]
    x: Tensor
    y: Tensor
    specs: dict[str, AttackSpec]
    targets: dict[str, Tensor | None]
    batch_size: int
    seed: int
    threads: int = 0
    driver: int = field(default_factory=os.getpid)  # the process that made the context
    certify: dict[str, CertifySpec] = field(default_factory=dict)  # certification specs by name

    def batch(self, cell: Cell) -> Batch:
        start = cell.batch * self.batch_size
        stop = min(start + self.batch_size, int(self.x.shape[0]))
        x, y = self.x[start:stop], self.y[start:stop]
        spec = self.specs.get(cell.attack)
        if spec is None or cell.kind in ("clean", "certify"):
            return Batch(cell.batch, start, x, y)
        t = self.targets.get(cell.attack)
        mask = spec.mask
        if mask is not None and mask.dim() == 4 and mask.shape[0] == int(self.x.shape[0]) > 1:
            mask = mask[start:stop]
        return Batch(cell.batch, start, x, y, None if t is None else t[start:stop], mask)

    def use_threads(self) -> None:
        """Workers (other processes) use as many torch threads as the driver; in the driver the
        count is left alone, so the command's thread policy (:mod:`evasion.runtime`) may adapt it."""
        if self.threads and os.getpid() != self.driver and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def _reusable(spec: AttackSpec) -> bool:
    return not spec.targeted and spec.mask is None


def make_plan(
    models: Sequence[str],
    specs: Sequence[AttackSpec],
    n: int,
    batch_size: int,
    reuse_minimal: bool = True,
    certify: Mapping[str, Sequence[tuple[str, Sequence[float]]]] | None = None,
) -> list[Task]:
    """All tasks of an evaluation, dependencies before dependents.

    ``certify``: per model, ``(certification name, epsilons)`` pairs; one independent task per
    epsilon and batch, after the model's attacks."""
    batches = range(math.ceil(n / batch_size))
    tasks: list[Task] = []
    for model in models:
        clean = {b: Cell("clean", model, "", 0.0, b) for b in batches}
        tasks += [Task(c) for c in clean.values()]
        mine = [s for s in specs if s.applies_to(model)]
        norms = list(dict.fromkeys(s.norm for s in mine))
        for norm in norms:
            group = [s for s in mine if s.norm == norm and s.role == "attack"]
            checks = [s for s in mine if s.norm == norm and s.role == "self-check"]
            minimum = [s for s in group if s.minimum_norm]
            searches = {
                s.name: {b: Cell("search", model, str(s.name), math.inf, b) for b in batches} for s in minimum
            }
            for s in minimum:
                tasks += [Task(searches[s.name][b], state=clean[b].key) for b in batches]
            for s in minimum + _cascade_order([s for s in group if not s.minimum_norm]):
                previous = {b: clean[b].key for b in batches}
                donors = (  # a black-box attack takes no white-box attack's points
                    [m for m in minimum if m is not s and _reusable(m)]
                    if reuse_minimal and _reusable(s) and not s.black_box
                    else []
                )
                before = [p for p in group if p.name in s.after]
                for eps in s.grid:
                    for b in batches:
                        cell = Cell("budget", model, str(s.name), eps, b)
                        own = searches[s.name][b].key if s.minimum_norm else None
                        hints = () if s.minimum_norm else tuple(searches[m.name][b].key for m in donors)
                        peers = tuple(
                            Cell("budget", model, str(p.name), eps, b).key for p in before if eps in p.grid
                        )
                        tasks.append(Task(cell, state=previous[b], search=own, hints=hints, peers=peers))
                        previous[b] = cell.key
            tasks += _self_check_tasks(model, checks, group, batches)
        for name, grid in (certify or {}).get(model, ()):
            tasks += [Task(Cell("certify", model, name, float(e), b)) for e in grid for b in batches]
    return tasks


def _cascade_order(specs: Sequence[AttackSpec]) -> list[AttackSpec]:
    """``specs`` with every attack after those it names in ``after`` (otherwise in given order)."""
    placed: list[AttackSpec] = []
    pending = list(specs)
    names = {s.name for s in specs}
    while pending:
        for s in pending:
            if all(a in {p.name for p in placed} or a not in names for a in s.after):
                placed.append(s)
                pending.remove(s)
                break
        else:
            raise ConfigError(
                f"the attacks' `after` lists form a cycle: {', '.join(str(s.name) for s in pending)}"
            )
    return placed


def _self_check_tasks(
    model: str, checks: Sequence[AttackSpec], group: Sequence[AttackSpec], batches: range
) -> list[Task]:
    """The self-check of a norm: at each epsilon, after every untargeted attack of the norm that
    has that epsilon (its peers), on the points none of them broke."""
    tasks = []
    # white-box peers only: a point only a black-box attack broke must stay visible as such
    # (the black-box-beats-white-box check), so the self-check attacks it itself
    untargeted = [s for s in group if not s.targeted and s.mask is None and not s.black_box]
    for check in checks:
        previous: dict[int, str | None] = dict.fromkeys(batches)
        for eps in check.grid:
            peers = [s for s in untargeted if eps in s.grid]
            if not peers:  # no attack of this model has this epsilon: nothing to re-check
                continue
            for b in batches:
                cell = Cell("budget", model, str(check.name), eps, b)
                keys = tuple(Cell("budget", model, str(p.name), eps, b).key for p in peers)
                state = previous[b] or Cell("clean", model, "", 0.0, b).key
                tasks.append(Task(cell, state=state, peers=keys))
                previous[b] = cell.key
    return tasks


def dependents(tasks: Sequence[Task]) -> Counter[str]:
    """How many tasks need each task's product (products can be dropped when it reaches 0)."""
    return Counter(k for t in tasks for k in t.needs)


def _state(product: Product, batch: Batch) -> ChainState:
    if isinstance(product, CellOutput):  # the clean cell: epsilon 0
        return initial_state(product, batch)
    assert isinstance(product, ChainState)
    return product


def execute(
    task: Task, ctx: Context, state: Product = None, search: Product = None, *deps: Product
) -> tuple[CellOutput, Product]:
    """Compute one task; returns its output (to store) and its product (for dependents).

    ``deps``: the products of ``task.hints`` followed by those of ``task.peers``."""
    ctx.use_threads()
    cell = task.cell
    batch = ctx.batch(cell)
    model = ctx.models[cell.model]
    if cell.kind == "clean":
        out = run_clean(model, batch, cell)
        return out, out.without_points()
    if cell.kind == "certify":  # nothing depends on a certification
        return run_certify(model, ctx.certify[cell.attack], batch, cell), None
    spec = ctx.specs[cell.attack]
    chain = _state(state, batch)
    seed = cell_seed(ctx.seed, cell)
    if cell.kind == "search":
        out = run_search(model, spec, batch, cell, chain, seed=seed)
        return out, search_result(out, batch)
    hints, peers = deps[: len(task.hints)], deps[len(task.hints) :]
    found = [h for h in hints if isinstance(h, SearchResult)]
    own = search if isinstance(search, SearchResult) else None
    if task.peers:
        states = [_state(p, batch) for p in peers]
        out = run_budget(model, spec, batch, cell, chain, seed=seed, hints=found, peers=states)
    else:
        out = run_budget(model, spec, batch, cell, chain, seed=seed, hints=found, search=own)
    return out, advance(chain, out, batch)


def replay(task: Task, ctx: Context, out: CellOutput, state: Product = None) -> Product:
    """The product of a task from its stored output (no attack is run)."""
    cell = task.cell
    if cell.kind == "clean":
        return out.without_points()
    if cell.kind == "certify":
        return None
    batch = ctx.batch(cell)
    if cell.kind == "search":
        return search_result(out, batch)
    return advance(_state(state, batch), out, batch)


def run_in_order(tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None:
    """Run the tasks in plan order in this process, dropping products nobody needs any more."""
    products: dict[str, Product] = {}
    remaining = dependents(tasks)
    for task in tasks:
        args = [products.get(k) if k else None for k in (task.state, task.search)] + [
            products[h] for h in (*task.hints, *task.peers)
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


def default_threads() -> int:
    return torch.get_num_threads() or (os.cpu_count() or 1)


def check_mask_rows(specs: Mapping[str, AttackSpec], n: int) -> list[str]:
    """Names of specs whose per-input mask does not have one row per sample."""
    bad = []
    for name, spec in specs.items():
        m = spec.mask
        if m is not None and m.dim() == 4 and m.shape[0] not in (1, n):
            bad.append(name)
    return bad
