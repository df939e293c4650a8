"""The PGD-L∞ security evaluation curve: `evasion` against torchattacks run epsilon by epsilon.

    python benchmarks/security_curve.py                 # 1,000 images, 8 epsilons, one run of each
    python benchmarks/security_curve.py --main-job      # also time the default `evasion evaluate`
    python benchmarks/security_curve.py --samples 200   # a quick look
    python benchmarks/security_curve.py --repeats 1     # one run of each (default 3, interleaved)

Model ``mnist-cnn`` on the 1,000 ``mnist5k`` test images. Eight budgets evenly spaced up to
0.3, the usual largest L∞ budget on MNIST: 0.0375, 0.075, ..., 0.3. The same attack on both sides:
PGD, 20 steps of 2.5 eps / 20, a uniform random start, cross-entropy loss.

* ``evasion``: :func:`evasion.evaluate` with ``AttackSpec(PGD(steps=20), "linf", grid)``; its
  defaults apply: samples already broken at a smaller epsilon are not attacked again (each cell is
  otherwise the independent run of its batch), a sample stops once misclassified, every returned
  point is re-checked by a fresh prediction.
* ``torchattacks`` (the fastest peer, see ``/work/shared/PEERS.md``): ``torchattacks.PGD`` run
  independently at each epsilon, every step taken on every sample, as its users run it.

Both are scored the same way: one fresh forward of the model on the returned points, budget
checked. Goal: `evasion` needs <= 0.5x the peer's time while its accuracy at each epsilon is no
higher than the peer's + 0.5 percentage points. Results go to ``benchmarks/results/``.

The two sides run interleaved (evasion, torchattacks, evasion, ...) ``--repeats`` times; the time
ratio is the median of the per-repetition ratios, all of which are recorded. Like every CLI
command the script keeps freed memory in the process (``--default-allocator``: not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from evasion import attacks, datasets, evaluate, models
from evasion.evaluation import AttackSpec
from evasion.perturbations import norm as perturbation_norm
from evasion.runtime import keep_freed_memory

GRID = [round(0.0375 * k, 4) for k in range(1, 9)]
STEPS, BATCH = 20, 250
RESULTS = Path(__file__).parent / "results" / "security_curve.json"


def run_evasion(model: models.Classifier, data: datasets.Dataset) -> tuple[float, list[float]]:
    start = time.perf_counter()
    spec = AttackSpec(attacks.PGD(steps=STEPS), "linf", GRID)
    ev = evaluate({"m": model}, data, spec, batch_size=BATCH, self_check=False)  # PGD alone, as torchattacks
    seconds = time.perf_counter() - start
    return seconds, ev.curve("m", "pgd-linf").accuracy[1:]


def run_torchattacks(model: models.Classifier, data: datasets.Dataset) -> tuple[float, list[float]]:
    import torchattacks

    torch.manual_seed(0)
    accuracy, seconds = [], 0.0
    for eps in GRID:
        attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / STEPS, steps=STEPS, random_start=True)
        start = time.perf_counter()
        adversarial = torch.cat([attack(x, y) for x, y in data.batches(BATCH)])
        seconds += time.perf_counter() - start
        accuracy.append(score(model, data, adversarial, eps))
    return seconds, accuracy


def score(model: models.Classifier, data: datasets.Dataset, adversarial: torch.Tensor, eps: float) -> float:
    """Accuracy by one fresh forward; a point outside the budget counts as not adversarial."""
    inside = perturbation_norm(adversarial - data.x, "linf") <= eps + 1e-6
    correct = model.predict(adversarial) == data.y
    return float((correct | ~inside).float().mean())


def main_job() -> dict[str, float]:
    """Wall time and peak memory of the default `evasion evaluate` in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "evasion.cli.main", "evaluate", "--out", f"{tmp}/run", "--quiet"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_seconds": round(wall, 1), "peak_rss_mib": round(max(peak, before) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--main-job", action="store_true", help="also time the default `evasion evaluate`")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side (default 3)")
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (default: keep freed memory)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if not 1 <= args.samples <= 1000:
        parser.error(f"--samples must be in [1, 1000] (the mnist5k test split), got {args.samples}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = False if args.default_allocator else keep_freed_memory()
    model = models.load("mnist-cnn")
    data = datasets.load("mnist5k", split="test")
    data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.samples])
    load_before = os.getloadavg()
    times_evasion: list[float] = []
    times_peer: list[float] = []
    for rep in range(args.repeats):
        t_evasion, acc_evasion = run_evasion(model, data)
        t_peer, acc_peer = run_torchattacks(model, data)
        times_evasion.append(t_evasion)
        times_peer.append(t_peer)
        print(
            f"repetition {rep + 1}/{args.repeats}: evasion {t_evasion:.1f} s, torchattacks {t_peer:.1f} s",
            flush=True,
        )
    ratios = [a / b for a, b in zip(times_evasion, times_peer)]
    ratio = statistics.median(ratios)
    t_evasion, t_peer = statistics.median(times_evasion), statistics.median(times_peer)
    worst_gap = max(a - b for a, b in zip(acc_evasion, acc_peer))
    result = {
        "task": f"PGD-Linf security curve, mnist-cnn, {len(data)} mnist5k test images, {STEPS} steps",
        "epsilons": GRID,
        "evasion": {
            "seconds": round(t_evasion, 2),
            "seconds_all": [round(t, 2) for t in times_evasion],
            "accuracy": acc_evasion,
        },
        "torchattacks": {
            "seconds": round(t_peer, 2),
            "seconds_all": [round(t, 2) for t in times_peer],
            "accuracy": acc_peer,
        },
        "time_ratio": round(ratio, 3),
        "time_ratio_all": [round(r, 3) for r in ratios],
        "kept_memory": kept,
        "max_accuracy_gap_pp": round(100 * worst_gap, 2),
        "goal_met": ratio <= 0.5 and worst_gap <= 0.005,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    if args.main_job:
        result["main_job"] = {**main_job(), "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    print(f"{'epsilon':>8} {'evasion':>8} {'torchattacks':>12}")
    for eps, a, b in zip(GRID, acc_evasion, acc_peer):
        print(f"{eps:8.4f} {a:8.3f} {b:12.3f}")
    print(
        f"time (median of {args.repeats}): evasion {t_evasion:.1f} s, torchattacks {t_peer:.1f} s, "
        f"ratio {ratio:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}; goal <= 0.5)"
    )
    print(f"largest accuracy gap evasion - torchattacks: {100 * worst_gap:+.2f} pp (goal <= +0.5)")
    if "main_job" in result:
        print(f"main job: {result['main_job']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
