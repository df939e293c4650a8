"""What full-mode attacks spend beyond the limit, in measures that load does not distort much.

    python benchmarks/attack_overhead.py                      # batch 64, every attack
    python benchmarks/attack_overhead.py --src /tmp/old/src   # the same for another checkout (A/B)

For each attack run to the end (``early_stop=False``; C&W ``abort_early=False``; DeepFool as it
is) on ``mnist-cnn`` and the benchmark's fixed batch, on one thread:

* **ops per step**: the torch operators (``torch.profiler`` event counts, nested ones included)
  of one attack call, minus ``steps`` x those of one forward+backward and one forward (the
  limit), divided by ``steps``. Counts do not depend on the machine's load.
* **CPU ratio**: process CPU time of the attack over that of the limit (``steps`` x
  forward+backward + 1 forward), each the minimum over ``--repeats`` interleaved runs. CPU time
  is less sensitive to other processes than wall time, not immune to them (shared caches).

``--src`` imports ``evasion`` from another source tree, so two versions can be compared op for
op (run the script once per tree, interleaving the runs). Results go to
``benchmarks/results/attack_overhead.{md,json}`` (or ``--out``) with the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ATTACKS = ("fgsm", "pgd-linf-10", "pgd-linf-40", "pgd-l2-10", "apgd-ce", "cw-l2", "deepfool")


def _attacks(evasion: Any) -> dict[str, tuple[Any, Any, int]]:
    """The benchmark's settings (``_peers.CONFIGS``), every step taken: (attack, threat, steps)."""
    from evasion.attacks import APGD, FGSM, PGD, CarliniWagnerL2, DeepFool

    linf, l2, unbounded = (
        evasion.ThreatModel("linf", 0.1),
        evasion.ThreatModel("l2", 2.0),
        evasion.ThreatModel("l2", math.inf),
    )
    return {
        "fgsm": (FGSM(early_stop=False), linf, 1),
        "pgd-linf-10": (PGD(steps=10, step_size=0.025, early_stop=False), linf, 10),
        "pgd-linf-40": (PGD(steps=40, step_size=0.25 / 40, early_stop=False), linf, 40),
        "pgd-l2-10": (PGD(steps=10, step_size=0.5, early_stop=False), l2, 10),
        "apgd-ce": (APGD(steps=100, loss="ce", early_stop=False), linf, 100),
        "cw-l2": (
            CarliniWagnerL2(
                steps=100, binary_search_steps=1, initial_const=1.0, learning_rate=0.01, abort_early=False
            ),
            unbounded,
            100,
        ),
        "deepfool": (DeepFool(steps=50, candidates=10, overshoot=0.02), unbounded, 50),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=None, help="import evasion from this source tree")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="attack_overhead", help="result file name (without suffix)")
    args = parser.parse_args(argv)
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    import evasion

    torch.set_num_threads(1)
    model = evasion.models.load("mnist-cnn").eval()
    data = evasion.datasets.load("mnist5k", split="test")
    order = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(0))[: args.batch]
    x, y = data.x[order].contiguous(), data.y[order].contiguous()

    def fb() -> None:
        xg = x.detach().clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    def ops(fn: Callable[[], object]) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        return sum(e.count for e in prof.key_averages())

    def cpu(fn: Callable[[], object]) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start

    for _ in range(3):
        fb()
        fwd()
    fb_ops, fwd_ops = ops(fb), ops(fwd)
    rows: dict[str, Any] = {}
    for key in args.attacks:
        attack, threat, steps = _attacks(evasion)[key]

        def run(attack: Any = attack, threat: Any = threat) -> object:
            return attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))

        attack(model, x[:2], y[:2], threat=threat)  # first-call costs stay out
        total = ops(run)
        limits, times = [], []
        for _ in range(args.repeats):
            limits.append(steps * min(cpu(fb) for _ in range(3)) + min(cpu(fwd) for _ in range(3)))
            times.append(cpu(run))
        rows[key] = {
            "steps": steps,
            "ops": total,
            "ops_per_step": (total - steps * fb_ops - fwd_ops) / steps,
            "cpu_s": min(times),
            "limit_cpu_s": min(limits),
            "cpu_ratio": min(times) / min(limits),
        }
        print(
            f"{key:12s} ops/step beyond the limit {rows[key]['ops_per_step']:7.1f}   "
            f"CPU ratio {rows[key]['cpu_ratio']:.3f}  (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    report = {
        "evasion": str(Path(evasion.__file__).resolve().parent),
        "batch": args.batch,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "limit_ops": {"forward_backward": fb_ops, "forward": fwd_ops},
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    lines = [
        f"# Full-mode attack overhead (mnist-cnn, batch {args.batch}, 1 thread)",
        "",
        f"evasion from `{report['evasion']}`; torch {torch.__version__}; limit: forward+backward "
        f"{fb_ops} ops, forward {fwd_ops} ops. Load average {report['load_average'][0]:.1f}.",
        "",
        "| attack | steps | torch ops per step beyond the limit | CPU time / limit |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {r['steps']} | {r['ops_per_step']:.1f} | {r['cpu_ratio']:.3f} |" for k, r in rows.items()
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
