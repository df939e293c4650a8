"""How the commands fare when another CPU-bound process shares the machine, before and after the
thread policy of :mod:`evasion.runtime`.

    python benchmarks/load.py                    # full: main job + reproduce icub --quick (1 h or more on 2 cores)
    python benchmarks/load.py --jobs evaluate --hogs python
    python benchmarks/load.py --smoke            # tiny sizes, proves the script works (~5 min quiet)

For each job (``evaluate``: the main job, ``evasion evaluate`` on the embedded default;
``icub``: ``evasion reproduce icub --quick``), each thread policy (``before``: ``--threads N``
with N the CPUs this process may use, i.e. torch's old default of every core and no adaptation;
``after``: the new default) and each neighbour (``none``; ``python``: a pure-Python busy loop,
one core; ``torch``: a matmul loop on as many torch threads as CPUs), the job runs once in a child
process into a fresh folder (no resume) with the neighbour started two seconds before it. Models,
datasets and features come from the cache (``EVASION_CACHE`` is passed on), so warm it first
(one run of each job). Recorded per run: wall and CPU seconds, the 1-minute load average before
and after, the exit code. Written: ``benchmarks/results/load.json`` and ``load.md`` with the
ratio loaded/alone per job, policy and neighbour (``--smoke``: ``load-smoke.*``).
Run it on an otherwise quiet machine: the point is the ratio, and other jobs distort it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
JOBS = ("evaluate", "icub")
HOGS = ("none", "python", "torch")
POLICIES = ("before", "after")

#: the smoke test's evaluation: one model, one attack, 8 images, no self-check
SMOKE_CONFIG = """\
[run]
name = "load-smoke"
batch_size = 8
self_check = false
device = "cpu"

[data]
name = "mnist5k"
split = "test"
samples = 8

[[models]]
name = "mnist-cnn"

[[attacks]]
attack = "pgd"
norm = "linf"
epsilons = [0.1, 0.3]
params = { steps = 5 }
"""

HOG_CODE = {
    "python": "while True: pass",
    "torch": (
        "import torch\n"
        "torch.set_num_threads({cpus})\n"
        "a = torch.randn(512, 512)\n"
        "while True: a = torch.tanh(a @ a.T / 512)\n"
    ),
}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _command(job: str, policy: str, out: Path, smoke: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "evasion.cli.main"]
    if policy == "before":
        cmd += ["--threads", str(_cpus())]
    if job == "evaluate":
        cmd += ["evaluate", *([str(smoke)] if smoke else []), "--out", str(out), "--no-report", "--quiet"]
    else:
        cmd += ["reproduce", "icub", "--quick", "--out", str(out)]
        cmd += ["--samples", "2", "--steps", "2"] if smoke else []
    return cmd


def _start_hog(kind: str) -> subprocess.Popen[bytes] | None:
    if kind == "none":
        return None
    code = HOG_CODE[kind].format(cpus=_cpus())
    hog = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(2.0)  # running (and visible to the job's load measurement) before the job starts
    return hog


def _stop_hog(hog: subprocess.Popen[bytes] | None) -> None:
    if hog is not None:
        os.killpg(hog.pid, signal.SIGTERM)
        hog.wait(timeout=10)


def measure(job: str, policy: str, hog_kind: str, workdir: Path, smoke: Path | None) -> dict[str, Any]:
    """One run of ``job`` under ``policy`` beside ``hog_kind``: its timings as a JSON-able dict."""
    out = Path(tempfile.mkdtemp(prefix=f"{job}-{policy}-{hog_kind}-", dir=workdir))
    cmd = _command(job, policy, out, smoke)
    env = {k: v for k, v in os.environ.items() if k != "EVASION_THREADS"}  # the policy decides
    hog = _start_hog(hog_kind)
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_before, t0 = _load(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        _stop_hog(hog)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {
        "job": job,
        "policy": policy,
        "neighbour": hog_kind,
        "command": " ".join(["evasion", *cmd[3:]]),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_before": load_before,
        "load_after": _load(),
        "exit_code": proc.returncode,
    }
    print(json.dumps(row), flush=True)
    return row


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """job -> policy -> neighbour -> wall time beside it / wall time alone."""
    alone = {(r["job"], r["policy"]): r["wall_seconds"] for r in rows if r["neighbour"] == "none"}
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        base = alone.get((r["job"], r["policy"]))
        if r["neighbour"] != "none" and base:
            table.setdefault(r["job"], {}).setdefault(r["policy"], {})[r["neighbour"]] = round(
                r["wall_seconds"] / base, 2
            )
    return table


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Commands beside another CPU-bound process",
        "",
        f"`python benchmarks/load.py{' --smoke' if report['smoke'] else ''}` on {report['machine']['cpus']} CPUs "
        f"(torch {report['machine']['torch']}, {report['date']}). `before`: `--threads "
        f"{report['machine']['cpus']}` (every core, no adaptation: the old default); `after`: the "
        "default thread policy (free CPUs, one inter-op thread, re-checked between cells). "
        "Neighbours: `python` = a pure-Python busy loop, `torch` = a matmul loop on every core.",
        "",
        "| job | policy | neighbour | wall s | CPU s | load before | load after | vs alone |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    table = report["ratios"]
    for r in report["runs"]:
        ratio = table.get(r["job"], {}).get(r["policy"], {}).get(r["neighbour"])
        vs = "1.00" if r["neighbour"] == "none" else ("-" if ratio is None else f"{ratio:.2f}")
        failed = "" if r["exit_code"] == 0 else f" (exit {r['exit_code']})"
        lines.append(
            f"| {r['job']} | {r['policy']} | {r['neighbour']} | {r['wall_seconds']:.1f}{failed} | "
            f"{r['cpu_seconds']:.1f} | {r['load_before']:.2f} | {r['load_after']:.2f} | {vs} |"
        )
    lines += [
        "",
        "Acceptance (issue 15): beside a CPU-bound process, within 2.5x of the time alone (`after`).",
    ]
    return "\n".join(lines) + "\n"


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"load.py: unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", default=",".join(JOBS), help="comma list of: evaluate, icub")
    ap.add_argument("--hogs", default="python,torch", help="neighbours besides none: python, torch")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma list of: before, after")
    ap.add_argument("--smoke", action="store_true", help="tiny config and icub sizes: proves the script runs")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for load.json and load.md")
    args = ap.parse_args(argv)
    jobs = _choices(args.jobs, JOBS, "job")
    hogs = ["none", *_choices(args.hogs, HOGS[1:], "neighbour")]
    policies = _choices(args.policies, POLICIES, "policy")
    import torch  # only for its version (the jobs run in child processes)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="evasion-load-") as tmp:
        work = Path(tmp)
        smoke = None
        if args.smoke:
            smoke = work / "smoke.toml"
            smoke.write_text(SMOKE_CONFIG)
        for job in jobs:
            for policy in policies:
                for hog in hogs:
                    rows.append(measure(job, policy, hog, work, smoke))
    report = {
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": _cpus(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": rows,
        "ratios": ratios(rows),
    }
    stem = "load-smoke" if args.smoke else "load"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
