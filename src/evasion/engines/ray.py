"""`RayEngine`: the cells of an evaluation as Ray tasks, on a local instance or a cluster.

Each cell (model x attack x epsilon x batch) is one task; a cell's dependencies (the previous
epsilon of its chain, the minimum-norm searches it reuses) are passed as object references, so
Ray runs independent chains in parallel and orders dependent cells by itself. Outputs come back
to the driver, which commits them to the store as they finish; cells already committed are
replayed (cheaply) instead of recomputed. The tasks run exactly the code of the local engine with
the driver's number of torch threads, so both engines give identical records.

Ray is an optional extra (``pip install 'evasion[distributed]'``); on a cluster every worker
needs ``evasion`` installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import ConfigError, MissingDependencyError
from ..evaluation.plan import Context, Emit, Load, Task, dependents, execute, replay
from ..evaluation.records import CellOutput

__all__ = ["RayEngine", "import_ray"]


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "distributed", "--engine ray") from None
    return ray


def _execute(task: Task, ctx: Context, *deps: Any) -> tuple[CellOutput, Any]:
    return execute(task, ctx, *deps)


def _replay(task: Task, ctx: Context, out: CellOutput, state: Any) -> Any:
    ctx.use_threads()
    return replay(task, ctx, out, state)


class RayEngine:
    """Run cells as Ray tasks.

    Args:
        address: a Ray cluster address (``"auto"``, ``"ray://host:10001"``); ``None`` starts (or
            joins) a local instance.
        num_cpus: CPUs of a local instance (default: all).
        cpus_per_task: CPUs reserved per cell.
        threads: torch threads per task; default: the driver's, which keeps the records
            identical to the local engine's bit for bit (fewer threads per task avoid
            oversubscribing the cores when several tasks run at once, at that price).
        gpus_per_task: GPUs reserved per cell; default (``None``): 1 when any evaluated model
            is on a CUDA device (so Ray places each cell on a worker with a GPU and never two
            on one GPU), else 0. Fractions share a GPU between cells (e.g. 0.25).
        shutdown: shut Ray down after the run if this engine started it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        cpus_per_task: float = 1.0,
        threads: int | None = None,
        gpus_per_task: float | None = None,
        shutdown: bool = False,
    ):
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_task, self.threads, self.shutdown = cpus_per_task, threads, shutdown
        self.gpus_per_task = gpus_per_task
        for name, value in (("cpus_per_task", cpus_per_task), ("gpus_per_task", gpus_per_task)):
            if value is None and name == "gpus_per_task":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")

    def resources(self, ctx: Context) -> dict[str, float]:
        """What each cell asks Ray for: CPUs, and GPUs when the models live on CUDA."""
        gpus = self.gpus_per_task
        if gpus is None:
            gpus = 1.0 if any(m.device.type == "cuda" for m in ctx.models.values()) else 0.0
        return {"num_cpus": self.cpus_per_task, "num_gpus": gpus}

    def _init(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.address:
            ray.init(address=self.address, **kwargs)
        else:
            ray.init(num_cpus=self.num_cpus, **kwargs)
        return True

    def run(self, tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None:
        ray = import_ray()
        started = self._init(ray)
        try:
            self._run(ray, tasks, ctx, load, emit)
        finally:
            if started and self.shutdown:
                ray.shutdown()

    def _run(self, ray: Any, tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None:
        asks = self.resources(ctx)
        run_cell = ray.remote(**asks, num_returns=2, max_retries=0)(_execute)
        redo = ray.remote(**asks, max_retries=0)(_replay)
        if self.threads is not None:
            ctx = replace(ctx, threads=self.threads)
        ctx_ref = ray.put(ctx)
        products: dict[str, Any] = {}
        pending: dict[Any, Task] = {}
        remaining = dependents(tasks)
        for task in tasks:
            deps = [products.get(k) if k else None for k in (task.state, task.search)]
            deps += [products[h] for h in (*task.hints, *task.peers)]
            stored = load(task.cell)
            if stored is not None:
                products[task.key] = redo.remote(task, ctx_ref, stored, deps[0])
                emit(stored, True)
            else:
                out_ref, products[task.key] = run_cell.remote(task, ctx_ref, *deps)
                pending[out_ref] = task
            for k in task.needs:  # Ray keeps an object alive while a task that needs it is pending
                remaining[k] -= 1
                if remaining[k] == 0:
                    products.pop(k, None)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                emit(ray.get(ref), False)
