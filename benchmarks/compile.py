"""What ``torch.compile`` buys an attack on the CPU: eager vs compiled, per model.

    python benchmarks/compile.py                  # mnist-cnn, resnet32-cifar, efficientnet-lite0
    python benchmarks/compile.py --models mnist-cnn --batch 64

For each model: the compile time (first forward+backward, which triggers compilation), the
forward+backward time w.r.t. the input (the unit every attack step pays) eager and compiled, and
PGD-L∞ 10 steps (every step taken) eager and compiled, as medians of interleaved repetitions
(eager, compiled, eager, ...). The gain is eager time / compiled time; the number of PGD runs a
compilation must serve before it pays for itself is ``compile_seconds / (eager - compiled)``.
Weights: mnist-cnn from the zoo, the others seeded random (speed does not depend on them).
Results: ``benchmarks/results/compile.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import evasion
from evasion import ThreatModel, attacks
from evasion.models.classifier import Classifier

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> Classifier:
    if name == "mnist-cnn":
        return evasion.models.load("mnist-cnn")
    if name == "resnet32-cifar":
        from evasion.models.architectures.resnet_cifar import resnet32_cifar

        return Classifier(resnet32_cifar(seed=0).eval(), 10, input_shape=(3, 32, 32), name=name)
    return evasion.models.load("efficientnet-lite0", pretrained=False)


def fwd_bwd(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> None:
    xg = x.detach().clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(clf(xg), y, reduction="sum"), xg)


def bench(name: str, batch: int, repeats: int) -> dict[str, Any]:
    eager = load(name)
    shape = eager.input_shape or (1, 28, 28)
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0))
    y = eager.predict(x)
    compiled = copy.deepcopy(eager).use_compile()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fwd_bwd(compiled, x, y)
    compile_seconds = time.perf_counter() - start
    fallback = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    pgd = attacks.PGD(steps=10, early_stop=False)
    threat = ThreatModel("linf", 8 / 255)
    runs = {
        "fwd_bwd_eager": lambda: fwd_bwd(eager, x, y),
        "fwd_bwd_compiled": lambda: fwd_bwd(compiled, x, y),
        "pgd10_eager": lambda: pgd(eager, x, y, threat=threat),
        "pgd10_compiled": lambda: pgd(compiled, x, y, threat=threat),
    }
    for fn in runs.values():
        fn()  # warm-up: the compiled PGD path may recompile for the attack's shapes
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    saved = med["pgd10_eager"] - med["pgd10_compiled"]
    return {
        "batch": batch,
        "compile_seconds": round(compile_seconds, 1),
        "fell_back": fallback[0] if fallback else None,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "gain_fwd_bwd": round(med["fwd_bwd_eager"] / med["fwd_bwd_compiled"], 3),
        "gain_pgd10": round(med["pgd10_eager"] / med["pgd10_compiled"], 3),
        "pgd10_runs_to_pay_back": round(compile_seconds / saved, 1) if saved > 0 else None,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# torch.compile on the CPU",
        "",
        f"torch {result['torch']}, {result['threads']} threads, load average before {result['load_before']}, "
        f"after {result['load_after']}; medians of {result['repeats']} interleaved repetitions.",
        "",
        "| model | batch | compile s | fwd+bwd eager / compiled (gain) | PGD-10 eager / compiled (gain) | PGD runs to pay back |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        if "error" in r:
            lines.append(f"| {name} | | error: {r['error']} | | | |")
            continue
        s = r["seconds"]
        lines.append(
            f"| {name} | {r['batch']} | {r['compile_seconds']} | {s['fwd_bwd_eager']:.3f} / "
            f"{s['fwd_bwd_compiled']:.3f} s ({r['gain_fwd_bwd']}x) | {s['pgd10_eager']:.2f} / "
            f"{s['pgd10_compiled']:.2f} s ({r['gain_pgd10']}x) | {r['pgd10_runs_to_pay_back'] or 'never'} |"
        )
        if r["fell_back"]:
            lines.append(f"|  | | fell back to eager: {r['fell_back']} | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mnist-cnn", "resnet32-cifar", "efficientnet-lite0"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "models": {},
    }
    for name in args.models:
        batch = min(args.batch, 16) if name == "efficientnet-lite0" else args.batch
        try:
            result["models"][name] = bench(name, batch, args.repeats)
        except Exception as exc:  # keep the other models' numbers
            result["models"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        result["models"][name]["load_average"] = [round(v, 2) for v in os.getloadavg()]
        print(name, json.dumps(result["models"][name]), flush=True)
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    old = args.out / "compile.json"
    if old.exists():  # keep the rows of the models not measured this time (each with its own load)
        kept = json.loads(old.read_text()).get("models", {})
        result["models"] = {
            **{k: v for k, v in kept.items() if k not in result["models"]},
            **result["models"],
        }
    (args.out / "compile.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "compile.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
