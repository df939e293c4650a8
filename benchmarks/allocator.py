"""What keeping freed memory (``evasion.runtime.keep_freed_memory``) does to attack speed on a CPU.

    python benchmarks/allocator.py                 # batch 256: FGSM, PGD-L∞ 40, APGD-CE; 2 rounds

glibc hands large freed blocks back to the OS, so an attack that allocates the same activations
and gradients every step page-faults them anew. Each round runs one child process with glibc's
defaults and one with ``keep_freed_memory()`` (interleaved: default, kept, default, kept), each
timing the limit (forward+backward w.r.t. the input), ``evasion`` in full mode and torchattacks on
``mnist-cnn`` (the settings of ``benchmarks/attacks.py``), and counting minor page faults.
Results: ``benchmarks/results/allocator.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def child(mode: str, batch: int, keys: list[str], repeats: int) -> dict[str, Any]:
    """One process: time every attack (medians of ``repeats``) with or without kept memory."""
    import torch

    from evasion import runtime

    applied = runtime.keep_freed_memory() if mode == "kept" else False
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _peers
    import attacks as bench

    torch.set_num_threads(2)
    model, x, y = bench.load_data(batch)
    out: dict[str, Any] = {"mode": mode, "applied": applied, "attacks": {}}
    for key in keys:
        cfg = _peers.CONFIGS[key]
        runs = {lib: _peers.make_runner(lib, cfg, model, batch) for lib in ("evasion-full", "torchattacks")}
        for run in runs.values():
            run(x[:2], y[:2])
        times: dict[str, list[float]] = {k: [] for k in runs}
        limits, forwards = [], []
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(repeats):
            limits.append(bench.limit_seconds(model, x, y))
            forwards.append(bench.forward_seconds(model, x))
            for lib, run in runs.items():
                _peers.seed_everything(0)
                start = time.perf_counter()
                run(x, y)
                times[lib].append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        unit = cfg.steps * statistics.median(limits) + statistics.median(forwards)
        out["attacks"][key] = {
            "limit_ms": 1e3 * statistics.median(limits),
            "seconds": {k: statistics.median(v) for k, v in times.items()},
            "ratio": {k: statistics.median(v) / unit for k, v in times.items()},
            "minor_faults": faults,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--attacks", nargs="+", default=["fgsm", "pgd-linf-40", "apgd-ce"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("default", "kept"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.attacks, args.repeats)))
        return 0
    runs = []
    load = [round(v, 2) for v in os.getloadavg()]
    for _ in range(args.rounds):
        for mode in ("default", "kept"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
            ]
            proc = subprocess.run(
                [*cmd, "--attacks", *args.attacks], capture_output=True, text=True, check=True
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    result = {
        "batch": args.batch,
        "load_before": load,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allocator.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Keeping freed memory: attack speed on the CPU",
        "",
        f"mnist-cnn, batch {args.batch}, 2 threads, medians of {args.repeats} repetitions per process; "
        f"rounds interleaved (default, kept, ...); load average before {load}, after {result['load_after']}.",
        "Cell: seconds / ratio to the limit (steps x forward+backward + 1 forward, measured in the same process) / "
        "minor page faults of the whole attack's repetitions.",
        "",
        "| attack | round | mode | limit ms | evasion-full | torchattacks | faults |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs):
        for key, a in r["attacks"].items():
            s, q = a["seconds"], a["ratio"]
            lines.append(
                f"| {key} | {i // 2 + 1} | {r['mode']} | {a['limit_ms']:.1f} | {s['evasion-full']:.3f} s / "
                f"{q['evasion-full']:.2f}x | {s['torchattacks']:.3f} s / {q['torchattacks']:.2f}x | {a['minor_faults']:,} |"
            )
    (RESULTS / "allocator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
