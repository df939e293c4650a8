"""The measurements behind the iCub run's speed choices (`evasion reproduce icub`, issue 14).

    python benchmarks/icub_speed.py            # network timings (~2 min)
    python benchmarks/icub_speed.py --split    # + one 16-image split, glibc defaults vs kept memory (~2 min)

1. Forward+backward w.r.t. the input of the attacked network (BatchNorm-folded, channels-last
   EfficientNet-Lite0, 128 px icub-sim-quick views), ms per image, for 1 and 2 torch threads and
   batches of 4, 16 and 32: why the splits run in one-thread workers at batch 16.
2. The same network with the strided TF-"same" convolutions padding by an input copy (the
   original) vs inside the convolution (``_PaddedConv``), interleaved repetitions.
3. ``--split``: one 16-image split (7 objects, test session 3, the full settings) attacked by two
   child processes side by side, one with glibc's defaults and one with
   ``runtime.keep_freed_memory()``: CPU seconds of each.
Results: ``benchmarks/results/icub_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _fwd_bwd(net: Any, x: Any) -> float:
    import torch

    xg = x.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    torch.autograd.grad(net(xg).square().sum(), xg)
    return time.perf_counter() - start


def network(repeats: int) -> dict[str, Any]:
    import torch

    from evasion import datasets
    from evasion.experiments import icub
    from evasion.models.architectures.efficientnet_lite import Conv2dSame
    from evasion.models.deep_features import default_extractor

    x = datasets.load("icub-sim-quick", "all").x[:32].clone()
    net, _ = icub.attack_network(default_extractor(), x[:8])
    out: dict[str, Any] = {"per_image_ms": {}}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (4, 16, 32):
            _fwd_bwd(net, x[:batch])
            t = [_fwd_bwd(net, x[:batch]) for _ in range(repeats)]
            out["per_image_ms"][f"{threads} threads, batch {batch}"] = 1e3 * statistics.median(t) / batch
    torch.set_num_threads(1)
    padded = _with_pad_copies(net, Conv2dSame)
    times: dict[str, list[float]] = {"pad copy": [], "inside the convolution": []}
    for _ in range(4 * repeats):  # interleaved
        times["pad copy"].append(_fwd_bwd(padded, x[:16]))
        times["inside the convolution"].append(_fwd_bwd(net, x[:16]))
    out["padding_ms_per_image_1_thread_batch_16"] = {
        k: 1e3 * statistics.median(v) / 16 for k, v in times.items()
    }
    with torch.no_grad():
        out["padding_max_abs_diff"] = float((padded(x[:4]) - net(x[:4])).abs().max())
    return out


def _with_pad_copies(net: Any, conv_same: type) -> Any:
    """A copy of ``net`` whose ``_PaddedConv`` modules run their original (pad-copying) convolution."""
    import copy

    from evasion.experiments import icub

    twin = copy.deepcopy(net)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, icub._PaddedConv):
                assert isinstance(child.odd, conv_same)
                setattr(parent, name, child.odd)
    return twin


def split_child(mode: str) -> dict[str, Any]:
    """One 16-image split, timed in CPU seconds (run in a child process)."""
    from dataclasses import replace

    import torch

    from evasion import runtime
    from evasion.experiments import icub
    from evasion.models.deep_features import default_extractor

    applied = runtime.keep_freed_memory() if mode == "kept" else False
    torch.set_num_threads(1)
    settings = replace(icub.FULL, samples=16)
    extractor = default_extractor()
    data = icub.load_set("7 objects", settings.main, 7, extractor)
    net, _ = icub.attack_network(extractor, data.x[:8])
    job = icub.split_job(icub.fit_split(data, 3, settings, 0, net), settings, 16, 0)
    cpu = time.process_time()
    icub.run_split(job)
    return {"mode": mode, "applied": applied, "cpu_seconds": time.process_time() - cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--split", action="store_true", help="also the 16-image split A/B (two processes)")
    parser.add_argument("--child", choices=("default", "kept"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(split_child(args.child)))
        return 0
    result: dict[str, Any] = {"load_before": [round(v, 2) for v in os.getloadavg()]}
    result["network"] = network(args.repeats)
    if args.split:  # side by side: both see the same machine
        procs = [
            subprocess.Popen([sys.executable, __file__, "--child", m], stdout=subprocess.PIPE, text=True)
            for m in ("default", "kept")
        ]
        result["split"] = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "icub_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    net = result["network"]
    lines = [
        "# Speed choices of the iCub run (EfficientNet-Lite0, 128 px, forward+backward w.r.t. the input)",
        "",
        f"Load average before {result['load_before']}, after {result['load_after']}; medians of {args.repeats} repetitions.",
        "",
        "| threads, batch | ms per image |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in net["per_image_ms"].items()),
        "",
        "Strided TF-'same' convolutions, 1 thread, batch 16, interleaved: "
        + ", ".join(f"{k} {v:.2f} ms/image" for k, v in net["padding_ms_per_image_1_thread_batch_16"].items())
        + f" (max |feature difference| {net['padding_max_abs_diff']:.1e}).",
    ]
    for r in result.get("split", []):
        lines.append(f"\n16-image split, one thread, {r['mode']} allocator: {r['cpu_seconds']:.1f} CPU s")
    (RESULTS / "icub_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
