"""Time `evasion reproduce EXPERIMENT [--quick]` and keep its numbers.

    python benchmarks/reproduce.py detector            # full run (under 30 minutes on 2 cores)
    python benchmarks/reproduce.py icub --quick        # CI-sized run (under 3 minutes)

Runs the command in a child process and records its wall time, CPU seconds and peak resident
memory, the machine's load average before and after, and the run's own ``results.json``
(acceptance checks included), in ``benchmarks/results/reproduce-<experiment>[-quick].json``.
The report of the run is left in ``--out`` (default: a folder under ``/tmp``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RESULT_FILES = {"detector": "results.json", "icub": "icub-results.json"}
QUIET = {"detector"}  # experiments with progress bars to turn into log lines


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run(experiment: str, quick: bool, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run the reproduction once; its timings and results as a JSON-able dict."""
    cmd = [sys.executable, "-m", "evasion.cli.main", "reproduce", experiment, "--out", str(out)]
    cmd += (["--quick"] if quick else []) + (["--quiet"] if experiment in QUIET else []) + extra
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before, t0 = _load(), time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # progress as it comes (the log of a long run), and kept
            lines.append(line.rstrip("\n"))
            print(line, end="", flush=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")
    results_file = out / RESULT_FILES[experiment]
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    return {
        "command": " ".join(["evasion", *cmd[3:]]),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
        "peak_rss_mib": round(after.ru_maxrss / 1024, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "stdout": lines[-40:],
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=sorted(RESULT_FILES))
    parser.add_argument("--quick", action="store_true", help="the CI-sized run")
    parser.add_argument("--out", type=Path, help="report folder (default: /tmp/evasion-reproduce-...)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON record goes")
    args, extra = parser.parse_known_args(argv)
    name = f"reproduce-{args.experiment}{'-quick' if args.quick else ''}"
    out = args.out or Path("/tmp") / f"evasion-{name}"
    record = run(args.experiment, args.quick, out, extra)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(
        f"{record['command']}: {record['wall_seconds']:.0f} s wall, {record['cpu_seconds']:.0f} CPU s, "
        f"peak {record['peak_rss_mib']:.0f} MiB (load {record['load_average_before']} -> "
        f"{record['load_average_after']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
