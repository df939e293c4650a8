"""What the Ray engine costs per cell, and what a cell moves: the inputs of docs/scaling.md.

    python benchmarks/ray_engine.py              # 400 images, ~70 cells, local vs Ray 1 and 2 workers
    python benchmarks/ray_engine.py --images 200

One evaluation (``mnist-cnn``, FGSM and PGD-L∞ 10 steps at 4 budgets, 1 torch thread per cell,
no self-check) run four ways, interleaved once: the local engine; Ray with one worker; Ray with two
workers; the local engine writing a store. It reports:

* per-cell overhead of Ray: ``(Ray, 1 worker - local) / cells``, after Ray has started (the
  start-up itself is timed apart);
* the speed-up of 2 workers over 1 (this machine has 2 cores);
* bytes per cell: the pickled task, the pickled cell output (what comes back to the driver), and
  the context shipped once (models and data);
* the store's write cost per cell and rows per second (local with store - local without).

Ray's own processes share the 2 cores with the workers, so the numbers are upper bounds for a
cluster node; the machine's load average is recorded. Results: ``benchmarks/results/ray_engine.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from evasion import attacks, datasets, evaluate, models
from evasion.evaluation import AttackSpec
from evasion.evaluation.plan import Context, Emit, Load, Task, run_in_order

RESULTS = Path(__file__).resolve().parent / "results"
GRID = [0.05, 0.1, 0.2, 0.3]


class Measuring:
    """The local engine, recording pickled sizes of what a distributed engine would move."""

    def __init__(self) -> None:
        self.task_bytes: list[int] = []
        self.output_bytes: list[int] = []
        self.context_bytes = 0
        self.rows = 0

    def run(self, tasks: Sequence[Task], ctx: Context, load: Load, emit: Emit) -> None:
        self.context_bytes = len(pickle.dumps(ctx))
        self.task_bytes = [len(pickle.dumps(t)) for t in tasks]

        def measured(out: Any, reused: bool) -> None:
            self.output_bytes.append(len(pickle.dumps(out)))
            self.rows += len(out.indices)
            emit(out, reused)

        run_in_order(tasks, ctx, load, measured)


def specs() -> list[AttackSpec]:
    return [AttackSpec(attacks.FGSM(), "linf", GRID), AttackSpec(attacks.PGD(steps=10), "linf", GRID)]


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    from evasion.engines.ray import RayEngine
    from evasion.store import RunStore

    model = models.load("mnist-cnn")
    data = datasets.load("mnist5k", split="test")
    data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.images])
    load_before = [round(v, 2) for v in os.getloadavg()]
    common = {"batch_size": args.batch, "self_check": False}

    evaluate({"m": model}, data, specs(), **common)  # warm-up: first-call costs are not the store's
    measuring = Measuring()
    _, ev_local = timed(lambda: evaluate({"m": model}, data, specs(), engine=measuring, **common))
    cells = len(measuring.output_bytes)
    local_runs, store_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(3):  # interleaved: local, store, local, store, ...
            local_runs.append(timed(lambda: evaluate({"m": model}, data, specs(), **common))[0])
            run = Path(tmp) / f"run{k}"
            store_runs.append(
                timed(lambda run=run: evaluate({"m": model}, data, specs(), store=RunStore(run), **common))[0]
            )
    t_local, t_store = statistics.median(local_runs), statistics.median(store_runs)
    t_init1, _ = timed(lambda: ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False))
    t_ray1, ev_ray1 = timed(
        lambda: evaluate({"m": model}, data, specs(), engine=RayEngine(threads=1), **common)
    )
    ray.shutdown()
    t_init2, _ = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
    t_ray2, _ = timed(lambda: evaluate({"m": model}, data, specs(), engine=RayEngine(threads=1), **common))
    ray.shutdown()
    same = ev_local.curve("m", "pgd-linf").accuracy == ev_ray1.curve("m", "pgd-linf").accuracy
    rows = measuring.rows  # per-sample rows the store writes
    result = {
        "task": f"mnist-cnn, {args.images} mnist5k test images, batch {args.batch}, FGSM + PGD-10 at {GRID}",
        "cells": cells,
        "seconds": {
            "local": round(t_local, 2),
            "local_with_store": round(t_store, 2),
            "ray_init_1_cpu": round(t_init1, 2),
            "ray_1_worker": round(t_ray1, 2),
            "ray_init_2_cpus": round(t_init2, 2),
            "ray_2_workers": round(t_ray2, 2),
        },
        "ray_overhead_ms_per_cell": round(1000 * (t_ray1 - t_local) / cells, 1),
        "ray_2_over_1_speedup": round(t_ray1 / t_ray2, 2),
        "store_ms_per_cell": round(1000 * (t_store - t_local) / cells, 1),
        "store_rows_per_second": round(rows / (t_store - t_local)) if t_store > t_local else None,
        "bytes": {
            "context_once": measuring.context_bytes,
            "task_median": int(statistics.median(measuring.task_bytes)),
            "cell_output_median": int(statistics.median(measuring.output_bytes)),
            "cell_output_max": max(measuring.output_bytes),
        },
        "records_identical_local_vs_ray": bool(same),
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "ray": ray.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_engine.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Ray engine: cost per cell and bytes moved",
        "",
        f"{result['task']}: {cells} cells, one torch thread per cell; load average before {load_before}, "
        f"after {result['load_average_after']}; Ray {ray.__version__}.",
        "",
        "| measure | value |",
        "|---|---|",
        *[f"| {k} s | {v} |" for k, v in result["seconds"].items()],
        f"| Ray overhead per cell (1 worker - local, median) | {result['ray_overhead_ms_per_cell']} ms |",
        f"| 2 workers vs 1 | {result['ray_2_over_1_speedup']}x |",
        f"| store write per cell (median of 3 interleaved pairs) | {result['store_ms_per_cell']} ms "
        f"({result['store_rows_per_second'] or 'below the noise'} rows/s) |",
        f"| context shipped once (models + data) | {result['bytes']['context_once']:,} B |",
        f"| task, median | {result['bytes']['task_median']:,} B |",
        f"| cell output, median / max | {result['bytes']['cell_output_median']:,} / {result['bytes']['cell_output_max']:,} B |",
        f"| records identical, local vs Ray | {same} |",
    ]
    (args.out / "ray_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
