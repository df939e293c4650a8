"""Attack speed and strength: `evasion` against torchattacks, foolbox and ART on one CPU model.

    python benchmarks/attacks.py            # 3 repetitions, batches of 64 and 256 (tens of minutes)
    python benchmarks/attacks.py --quick    # 1 repetition, batch 64, FGSM / PGD / APGD

Model ``mnist-cnn`` (0.42 M parameters) on images of ``mnist5k`` (test split, a fixed shuffle:
the file is sorted by class). The unit is the physical limit of a gradient attack: one forward
plus one backward pass w.r.t. the input on the same batch (``autograd.grad`` of the summed
cross-entropy). For every library and attack the script reports images per second, the ratio
``time / (steps x forward+backward + 1 forward)`` (``steps``: the maximum, i.e. DeepFool's 50
iterations and the 100 Adam steps of C&W; the one forward, without a graph, is the check of the
returned points every honest result needs: the issue's limit) and the robust accuracy reached,
scored the same way for every library by one fresh forward on the returned points (see
``_peers.score``). Peers that return their last iterate unchecked are credited with that forward
too.

Settings, the same in every library (see ``_peers.CONFIGS``): L∞ budget 0.1 and L2 budget 2.0
(MNIST; an undefended CNN keeps ~0 % accuracy at the usual 0.3 / 3.0, which would hide any
difference in strength); PGD / BIM step 2.5 eps / steps with a random start; APGD-CE 100 steps,
1 restart; DeepFool 50 iterations, 10 candidates, overshoot 0.02, scored at L2 2.0; C&W-L2
5 binary-search rounds x 20 Adam steps = 100 steps from c = 1, learning rate 0.01 (torchattacks
has no binary search: one run of 100 steps at c = 1), scored at L2 2.0.

``evasion`` is reported twice: with its defaults (a sample stops once it is misclassified,
``keep="best"``; C&W aborts a round once its loss stalls) and as ``evasion-full``
(``early_stop=False``, C&W ``abort_early=False``): every step is taken, as in the peers, so that
ratio is the like-for-like speed comparison.

Timings on a shared machine are noisy: every repetition runs the libraries interleaved
(limit, A, B, C, D, E, limit for each attack), each ratio divides by the limit measured next to
it, and the tables report medians over the repetitions. The machine's load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _peers  # the script's folder is on sys.path when run as `python benchmarks/attacks.py`
import evasion
from _peers import CONFIGS, LIBRARIES, Runner

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_ATTACKS = ("fgsm", "pgd-linf-10", "pgd-l2-10", "apgd-ce")
#: the issue's goals: ratio to the limit for evasion-full (gradient attacks) and evasion (DeepFool)
GOAL_GRADIENT, GOAL_DEEPFOOL = 1.05, 1.3


def limit_seconds(model: nn.Module, x: Tensor, y: Tensor, repeats: int = 3) -> float:
    """Median time of one forward + backward w.r.t. the input (the unit of every ratio)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        torch.autograd.grad(loss, xg)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_seconds(model: nn.Module, x: Tensor, repeats: int = 3) -> float:
    """Median time of one forward without a graph (the check of the returned points)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_data(batch: int) -> tuple[nn.Module, Tensor, Tensor]:
    """The model in eval mode and the first ``batch`` images of a fixed shuffle of mnist5k test."""
    model = evasion.models.load("mnist-cnn").eval()
    data = evasion.datasets.load("mnist5k", split="test")
    order = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(0))[:batch]
    return model, data.x[order].contiguous(), data.y[order].contiguous()


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_benchmark(
    batch_sizes: Sequence[int],
    attacks: Sequence[str],
    libraries: Sequence[str],
    repeats: int,
    slow_limit: float,
    log: Callable[[str], None],
    save: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Time every (attack, library) pair interleaved; returns (and saves as it goes) the results."""
    versions = _peers.peer_versions()
    notes: list[str] = []
    libs = []
    for lib in libraries:
        if lib in _peers.PEERS and versions.get(lib) is None:
            notes.append(f"{lib} is not installed (or fails to import): skipped")
            log(f"note: {notes[-1]}")
            continue
        libs.append(lib)
    report: dict[str, Any] = {
        "model": "mnist-cnn",
        "data": "mnist5k test, fixed shuffle (seed 0)",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "torch": torch.__version__,
        "evasion": getattr(evasion, "__version__", "?"),
        "peers": versions,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "configs": {k: asdict(CONFIGS[k]) for k in attacks},
        "notes": notes,
        "load_average": [],
        "rows": [],
    }
    for batch in batch_sizes:
        model, x, y = load_data(batch)
        runners: dict[tuple[str, str], Runner | None] = {}
        for key in attacks:
            for lib in libs:
                try:
                    runners[key, lib] = _peers.make_runner(lib, CONFIGS[key], model, batch)
                except Exception as exc:  # a peer whose attack cannot be built is reported, not fatal
                    runners[key, lib] = None
                    notes.append(f"{lib} {key}: could not be built ({type(exc).__name__}: {exc})")
        # warm-up: the model, then every runner on two images (first-call costs stay out of the timings)
        limit_seconds(model, x, y, repeats=5)
        for run in runners.values():
            if run is not None:
                _peers.seed_everything(0)
                run(x[:2], y[:2])
        times: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
        ratios: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
        scores: dict[tuple[str, str], _peers.Score] = {}
        limits: dict[str, list[float]] = {k: [] for k in attacks}
        forwards: dict[str, list[float]] = {k: [] for k in attacks}
        skipped: set[tuple[str, str]] = set()
        for rep in range(repeats):
            report["load_average"].append({"batch": batch, "repetition": rep, "load": os.getloadavg()})
            for key in attacks:
                cfg = CONFIGS[key]
                before = limit_seconds(model, x, y)
                fwd_before = forward_seconds(model, x)
                measured: list[tuple[str, float]] = []
                for lib in libs:
                    run = runners[key, lib]
                    if run is None or (key, lib) in skipped:
                        continue
                    _peers.seed_everything(0)
                    start = time.perf_counter()
                    adv = run(x, y)
                    seconds = time.perf_counter() - start
                    measured.append((lib, seconds))
                    if (key, lib) not in scores:
                        scores[key, lib] = _peers.score(model, x, y, adv, cfg, library=lib)
                    if seconds > slow_limit and rep + 1 < repeats:
                        skipped.add((key, lib))
                        notes.append(
                            f"batch {batch} {lib} {key}: {seconds:.0f} s > --slow-limit, not repeated"
                        )
                after = limit_seconds(model, x, y)
                unit = _median([before, after])
                fwd = _median([fwd_before, forward_seconds(model, x)])
                limits[key].append(unit)
                forwards[key].append(fwd)
                for lib, seconds in measured:
                    times[key, lib].append(seconds)
                    ratios[key, lib].append(seconds / (cfg.steps * unit + fwd))
                    log(
                        f"batch {batch} rep {rep + 1}/{repeats} {key:12s} {lib:13s} {seconds:8.3f} s "
                        f"ratio {ratios[key, lib][-1]:6.2f}  (limit {unit * 1e3:.1f} ms, load {os.getloadavg()[0]:.1f})"
                    )
            report["rows"] = [r for r in report["rows"] if r["batch"] != batch] + _rows(
                batch, attacks, libs, runners, times, ratios, scores, limits, forwards
            )
            save(report)
    return report


def _rows(
    batch: int,
    attacks: Sequence[str],
    libs: Sequence[str],
    runners: dict[tuple[str, str], Runner | None],
    times: dict[tuple[str, str], list[float]],
    ratios: dict[tuple[str, str], list[float]],
    scores: dict[tuple[str, str], _peers.Score],
    limits: dict[str, list[float]],
    forwards: dict[str, list[float]],
) -> list[dict[str, Any]]:
    rows = []
    for key in attacks:
        for lib in libs:
            row: dict[str, Any] = {"batch": batch, "attack": key, "library": lib}
            if runners[key, lib] is None or not times[key, lib]:
                row["available"] = False
            else:
                t = _median(times[key, lib])
                s = scores[key, lib]
                row.update(
                    available=True,
                    seconds=t,
                    seconds_all=times[key, lib],
                    images_per_s=batch / t,
                    ratio=_median(ratios[key, lib]),
                    ratio_all=ratios[key, lib],
                    limit_ms=1e3 * _median(limits[key]),
                    forward_ms=1e3 * _median(forwards[key]),
                    robust_accuracy=s.robust_accuracy,
                    median_norm=s.median_norm,
                    max_norm=s.max_norm,
                    outside_budget=s.outside_budget,
                )
            rows.append(row)
    return rows


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, checked on the medians (no verdict where a row is missing)."""
    out = []
    by = {(r["batch"], r["attack"], r["library"]): r for r in report["rows"] if r.get("available")}
    for batch in sorted({r["batch"] for r in report["rows"]}):
        for key in report["configs"]:
            ev = by.get((batch, key, "evasion"))
            full = by.get((batch, key, "evasion-full")) or ev
            if ev is None or full is None:
                continue
            peers = [by[batch, key, p] for p in _peers.PEERS if (batch, key, p) in by]
            goal = GOAL_DEEPFOOL if key == "deepfool" else GOAL_GRADIENT
            fastest = min((p["ratio"] for p in peers), default=math.inf)
            strongest = min((p["robust_accuracy"] for p in peers), default=math.inf)
            speed = full["ratio"] <= goal and full["ratio"] <= fastest
            # in samples: robust accuracies are fractions of the same batch
            behind = round(batch * (max(ev["robust_accuracy"], full["robust_accuracy"]) - strongest))
            strength = "at least as strong" if behind <= 0 else f"WEAKER by {behind} sample(s) of {batch}"
            out.append(
                f"batch {batch} {key}: ratio {full['ratio']:.2f} (goal <= {goal}, fastest peer "
                f"{fastest:.2f}) -> {'met' if speed else 'NOT met'}; robust accuracy "
                f"{ev['robust_accuracy']:.3f}/{full['robust_accuracy']:.3f} vs best peer {strongest:.3f} -> "
                f"{strength}"
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    """The results as a markdown table (ratio, images/s, robust accuracy per library)."""
    libs = [lib for lib in LIBRARIES if any(r["library"] == lib for r in report["rows"])]
    lines = [
        "# Attack benchmark: evasion vs torchattacks, foolbox, ART",
        "",
        f"Model mnist-cnn, {report['data']}; torch {report['torch']}, {report['threads']} threads, "
        f"{report['repeats']} repetition(s), medians. Peers: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in report["peers"].items())
        + ".",
        "",
        "Cell: ratio to the limit (steps x forward+backward + 1 forward) / images per second / "
        "robust accuracy. "
        "`evasion`: defaults (early stop); `evasion-full`: early_stop=False (C&W abort_early=False), "
        "every step taken as in the peers.",
        "",
    ]
    for batch in sorted({r["batch"] for r in report["rows"]}):
        rows = {(r["attack"], r["library"]): r for r in report["rows"] if r["batch"] == batch}
        limit = next((r["limit_ms"] for r in rows.values() if r.get("available")), math.nan)
        fwd = next((r.get("forward_ms", math.nan) for r in rows.values() if r.get("available")), math.nan)
        lines += [f"## batch {batch} (forward+backward {limit:.1f} ms, forward {fwd:.1f} ms)", ""]
        lines.append("| attack | " + " | ".join(libs) + " |")
        lines.append("|---|" + "---|" * len(libs))
        for key in report["configs"]:
            cells = []
            for lib in libs:
                r = rows.get((key, lib))
                if r is None or not r.get("available"):
                    cells.append("= evasion" if lib == "evasion-full" and key == "deepfool" else "n/a")
                    continue
                flag = f" ({r['outside_budget']} outside eps)" if r["outside_budget"] else ""
                cells.append(
                    f"{r['ratio']:.2f}x / {r['images_per_s']:.0f} / {r['robust_accuracy']:.3f}{flag}"
                )
            lines.append(f"| {CONFIGS[key].title} | " + " | ".join(cells) + " |")
        lines.append("")
    norms = [
        r
        for r in report["rows"]
        if r.get("available") and CONFIGS[r["attack"]].minimum_norm and not math.isnan(r["median_norm"])
    ]
    if norms:
        lines += ["Median L2 norm of the successful minimum-norm perturbations (before projection):", ""]
        for r in norms:
            lines.append(f"- batch {r['batch']} {r['attack']} {r['library']}: {r['median_norm']:.3f}")
        lines.append("")
    lines += ["## Goals", ""] + [f"- {g}" for g in goals(report)] + [""]
    loads = [f"{a['load'][0]:.1f}" for a in report["load_average"]]
    lines += [
        f"Load average (1 min) at the start of each repetition: {', '.join(loads)} on {report['cpu_count']} CPUs.",
        "",
    ]
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, batch 64, FGSM/PGD/APGD")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 3, quick 1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 64 256 (quick 64)")
    parser.add_argument("--attacks", nargs="+", choices=list(CONFIGS), default=None)
    parser.add_argument("--libraries", nargs="+", choices=list(LIBRARIES), default=list(LIBRARIES))
    parser.add_argument(
        "--slow-limit",
        type=float,
        default=600.0,
        help="a call slower than this many seconds is not repeated (default 600)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for attacks.json / attacks.md")
    parser.add_argument("--render", action="store_true", help="only rewrite attacks.md from attacks.json")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads((args.out / "attacks.json").read_text())
        (args.out / "attacks.md").write_text(markdown(report))
        print(markdown(report))
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    batch_sizes = args.batch_sizes or ([64] if args.quick else [64, 256])
    attacks = args.attacks or list(QUICK_ATTACKS if args.quick else CONFIGS)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # peers' deprecation chatter
    args.out.mkdir(parents=True, exist_ok=True)

    def save(report: dict[str, Any]) -> None:
        (args.out / "attacks.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
        (args.out / "attacks.md").write_text(markdown(report))

    report = run_benchmark(
        batch_sizes, attacks, args.libraries, repeats, args.slow_limit, lambda s: print(s, flush=True), save
    )
    save(report)
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
