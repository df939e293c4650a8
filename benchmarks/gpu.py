"""Attack speed on a GPU: `evasion` against the GPU limit and torchattacks, fp32 and bfloat16.

    python benchmarks/gpu.py                      # CUDA when present, else a small CPU run
    python benchmarks/gpu.py --device cpu --quick

PGD-L∞, 40 steps, batch 256, on three models: ``mnist-cnn`` (zoo weights, mnist5k test images),
``resnet32-cifar`` and ``efficientnet-lite0`` (architectures with seeded random weights on seeded
random images of their input shape: the speed of a forward+backward does not depend on what the
weights learned, and nothing can be downloaded here). The limit is what any gradient attack must
spend: ``steps x (forward + backward w.r.t. the input) + 1 forward`` on the same batch.

Rows: ``evasion-full`` (every step on every sample, as the peers do: the like-for-like speed),
``evasion`` (its defaults: a sample stops once misclassified) and ``torchattacks`` (its PGD,
when installed), each as seconds and ratio to the limit measured next to it; interleaved
repetitions (limit, evasion-full, evasion, torchattacks), medians reported. A ``bf16`` row runs
evasion-full on the model cast to bfloat16 (iterates stay float32; the classifier casts its
input in and its scores out) against the bfloat16 limit.

GPU timing: ``torch.cuda.synchronize()`` before every clock read, one warm-up run per row.
Results go to ``benchmarks/results/gpu.json`` / ``gpu.md`` (or ``--out``), with the card named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import evasion
from evasion import ThreatModel, attacks
from evasion.models.classifier import Classifier

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = 40


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def limit(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> None:
    """``steps`` forward+backward passes w.r.t. the input, then one forward (the verification)."""
    for _ in range(steps):
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xg).float(), y, reduction="sum")
        torch.autograd.grad(loss, xg)
    with torch.no_grad():
        model(x)


def load_model(name: str, device: torch.device, batch: int) -> tuple[Classifier, Tensor, Tensor, float]:
    """The model (eval mode, on ``device``), one batch, and the L∞ budget used on it."""
    g = torch.Generator().manual_seed(0)
    if name == "mnist-cnn":
        clf = evasion.models.load("mnist-cnn", device=device)
        data = evasion.datasets.load("mnist5k", split="test")
        order = torch.randperm(len(data.y), generator=g)[:batch]
        return clf, data.x[order].to(device), data.y[order].to(device), 0.1
    if name == "resnet32-cifar":
        from evasion.models.architectures.resnet_cifar import resnet32_cifar

        clf = Classifier(resnet32_cifar(seed=0).eval(), 10, input_shape=(3, 32, 32), name=name).to(device)
        shape = (3, 32, 32)
    else:
        clf = evasion.models.load("efficientnet-lite0", pretrained=False, device=device)
        shape = (3, 224, 224)
    x = torch.rand((batch, *shape), generator=g).to(device)
    with torch.no_grad():
        y = clf.predict(x)  # attack the model's own decisions: every sample starts correct
    return clf, x, y, 8 / 255


def bench_model(
    name: str, device: torch.device, batch: int, repeats: int, log: Callable[[str], None], low_precision: bool
) -> dict[str, Any]:
    clf, x, y, eps = load_model(name, device, batch)
    threat = ThreatModel("linf", eps)
    alpha = 2.5 * eps / STEPS
    full = attacks.PGD(steps=STEPS, step_size=alpha, early_stop=False)
    default = attacks.PGD(steps=STEPS, step_size=alpha)
    bf16 = Classifier(
        _cast(clf.module, torch.bfloat16),
        clf.num_classes,
        input_shape=clf.input_shape,
        preprocess=clf.preprocess,
        name=f"{name}-bf16",
    )
    rows: dict[str, Callable[[], Any]] = {
        "limit": lambda: limit(clf, x, y, STEPS),
        "evasion-full": lambda: full(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(0)),
        "evasion": lambda: default(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(0)),
    }
    if low_precision:
        rows["limit-bf16"] = lambda: limit(bf16, x, y, STEPS)
        rows["evasion-full-bf16"] = lambda: full(
            bf16, x, y, threat=threat, generator=torch.Generator().manual_seed(0)
        )
    try:
        import torchattacks

        torch.manual_seed(0)
        peer = torchattacks.PGD(clf, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        rows["torchattacks"] = lambda: peer(x, y)
    except ImportError:
        log("torchattacks is not installed: its row is skipped")
    for fn in rows.values():  # warm-up (cuDNN autotuning, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(repeats):
        for key, fn in rows.items():
            times[key].append(timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "batch": batch,
        "epsilon": round(eps, 5),
        "seconds": {k: round(v, 4) for k, v in med.items()},
    }
    out["ratio"] = {
        k: round(v / (med["limit-bf16"] if k.endswith("bf16") else med["limit"]), 3)
        for k, v in med.items()
        if not k.startswith("limit")
    }
    r = full(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    out["robust_accuracy"] = {"evasion-full": round(r.robust_accuracy, 4)}
    if low_precision:
        rb = full(bf16, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
        out["robust_accuracy"]["evasion-full-bf16"] = round(rb.robust_accuracy, 4)
        out["bf16_inside_budget"] = bool(float(rb.norms.max()) <= eps * (1 + 1e-4))
    log(
        f"{name}: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in med.items())
        + " | ratios "
        + json.dumps(out["ratio"])
    )
    return out


def _cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype)


def security_curve(device: torch.device, samples: int, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The PGD-L∞ security curve benchmark (benchmarks/security_curve.py) on ``device``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import security_curve as sc

    model = evasion.models.load("mnist-cnn", device=device)
    data = evasion.datasets.load("mnist5k", split="test")
    data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:samples])
    sc.run_evasion(model, data.subset(torch.arange(min(64, samples))))  # warm-up
    t_ev, acc_ev = sc.run_evasion(model, data)
    out: dict[str, Any] = {"samples": samples, "evasion_seconds": round(t_ev, 2), "evasion_accuracy": acc_ev}
    try:
        t_peer, acc_peer = sc.run_torchattacks(model, data)
        out.update(
            torchattacks_seconds=round(t_peer, 2),
            torchattacks_accuracy=acc_peer,
            ratio=round(t_ev / t_peer, 3),
        )
    except ImportError:
        pass
    log(
        f"security curve ({samples} images, 8 eps): "
        + json.dumps({k: v for k, v in out.items() if "accuracy" not in k})
    )
    return out


def render(result: dict[str, Any]) -> str:
    lines = [
        f"# GPU benchmark: {result['device_name']}",
        "",
        f"PGD-L∞ {STEPS} steps, batch {result['batch']}, medians of {result['repeats']} interleaved repetitions; "
        f"torch {result['torch']}; ratio = time / (steps x fwd+bwd + 1 fwd) of the same model and dtype.",
        "",
        "| model | limit s | evasion-full | evasion (early stop) | torchattacks | bf16 limit s | evasion-full bf16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in result["models"].items():
        if "error" in m:
            lines.append(f"| {name} | error: {m['error']} |  |  |  |  |  |")
            continue
        s, r = m["seconds"], m["ratio"]

        def cell(k: str, s: dict[str, float] = s, r: dict[str, float] = r) -> str:
            return f"{s[k]:.3f} s ({r[k]:.2f}x)" if k in r else "n/a"

        lines.append(
            f"| {name} | {s['limit']:.3f} | {cell('evasion-full')} | {cell('evasion')} | {cell('torchattacks')} "
            f"| {s.get('limit-bf16', float('nan')):.3f} | {cell('evasion-full-bf16')} |"
        )
    sc = result.get("security_curve")
    if sc:
        lines += [
            "",
            f"Security curve (mnist-cnn, {sc['samples']} images, 8 epsilons, PGD-20): evasion "
            f"{sc['evasion_seconds']} s"
            + (
                f", torchattacks {sc['torchattacks_seconds']} s, ratio {sc['ratio']}" if "ratio" in sc else ""
            ),
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mnist-cnn", "resnet32-cifar", "efficientnet-lite0"])
    parser.add_argument("--curve-samples", type=int, default=1000, help="0 skips the security curve")
    parser.add_argument(
        "--quick", action="store_true", help="batch 32, 1 repetition, small models, 100 curve images"
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 rows on the CPU too (slow there)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from evasion.runtime import resolve_device

    device = resolve_device(args.device)
    assert device is not None
    if args.quick:
        args.batch, args.repeats, args.curve_samples = 32, 1, 100
        args.models = [m for m in args.models if m != "efficientnet-lite0"]
    torch.backends.cudnn.benchmark = device.type == "cuda"

    def log(msg: str) -> None:
        print(msg, flush=True)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": name,
        "batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "models": {},
    }
    for model in args.models:
        try:
            result["models"][model] = bench_model(
                model, device, args.batch, args.repeats, log, low_precision=device.type == "cuda" or args.bf16
            )
        except Exception as exc:  # one model's failure must not lose the others' numbers
            result["models"][model] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{model}: {type(exc).__name__}: {exc}")
    if args.curve_samples:
        try:
            result["security_curve"] = security_curve(device, args.curve_samples, log)
        except Exception as exc:
            result["security_curve_error"] = f"{type(exc).__name__}: {exc}"
            log(f"security curve: {type(exc).__name__}: {exc}")
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu" if device.type == "cuda" else "gpu-cpu-part"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
