"""Benchmark: randomized smoothing and IBP certified training on mnist5k (lower bounds beside attacks).

Four measurements, written to ``benchmarks/results/smoothing.json`` (and ``.md``):

1. **curve**: certified accuracy of the *smoothed* classifier vs. L2 radius (Cohen et al.'s
   CERTIFY, n0 = 100, ``--n`` draws, alpha 0.001) for sigma 0.25 and 0.5, base models
   ``mnist-cnn-noise-0.25`` / ``-0.5`` (Gaussian-noise trained), on the first ``--images`` test images.
2. **attack**: PGD (L2) through Monte-Carlo noise on the smoothed classifier (sigma 0.25) at a few
   radii, judged by PREDICT: how many samples it breaks, and how many of those were certified at
   a larger radius (must be 0: the certificate's soundness, up to alpha).
3. **speed**: CERTIFY with n = 100,000 per image (batched) vs. the pure forward passes of the same
   number of inputs through the same model in the same batch size: the ratio (1 = the cost is the
   forward passes and nothing else).
4. **ibp**: the IBP-trained zoo model ``mnist-cnn-ibp`` at L∞ 0.1 on the whole mnist5k test split:
   clean accuracy, certified accuracy by ``certify(method="ibp")`` (logit intervals), IBP with the
   margin specification (last layer folded in, as in training), ``certify(method="crown")``, and the
   accuracy under PGD (the upper bound): ``certified <= true robust <= attacked``.

CPU defaults are small (``--images 100 --n 10000``); on a GPU use ``--device cuda --images 500
--n 100000`` (Cohen et al.'s setting). Run under ``nice``; the load average is recorded.

    python benchmarks/smoothing.py [--images 100] [--n 10000] [--timing-images 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from evasion import ThreatModel
from evasion.attacks import PGD
from evasion.datasets import load as load_dataset
from evasion.models import load as load_model
from evasion.training.certified import ibp_certified_accuracy
from evasion.verification import certify
from evasion.verification.smoothing import SmoothedClassifier, attack_smoothed, certified_accuracy_curve

RESULTS = Path(__file__).parent / "results"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
ALPHA = 0.001


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def curve(
    sigma: float, x: torch.Tensor, y: torch.Tensor, n: int, batch: int, device: torch.device
) -> dict[str, Any]:
    """Certified accuracy vs. radius of the sigma-smoothed noise-trained model."""
    model = load_model(f"mnist-cnn-noise-{sigma:g}", device=device)
    smoothed = SmoothedClassifier(model, sigma, batch_size=batch)
    start = time.perf_counter()
    cert = smoothed.certify(x, 100, n, ALPHA, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    with torch.no_grad():
        base = float((model(x.to(device)).argmax(1).cpu() == y).double().mean())
    return {
        "sigma": sigma,
        "images": len(y),
        "n0": 100,
        "n": n,
        "alpha": ALPHA,
        "base_clean_accuracy": base,
        "abstained": float(cert.abstained.double().mean()),
        "curve": certified_accuracy_curve(cert, y, RADII),
        "median_radius_of_correct": float(cert.radius[cert.certified(y)].median())
        if bool(cert.certified(y).any())
        else 0.0,
        "seconds": round(seconds, 2),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "_certificate": cert,
    }


def attack(
    x: torch.Tensor, y: torch.Tensor, cert: Any, device: torch.device, batch: int
) -> list[dict[str, Any]]:
    """PGD through noise on the sigma-0.25 smoothed classifier; certified-but-broken must be 0."""
    model = load_model("mnist-cnn-noise-0.25", device=device)
    smoothed = SmoothedClassifier(model, 0.25, batch_size=batch)
    rows = []
    for eps in (0.25, 0.5, 1.0):
        start = time.perf_counter()
        res = attack_smoothed(
            smoothed, x, y, epsilon=eps, samples=32, steps=20, n=1_000, alpha=ALPHA,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        covered = cert.certified(y, eps) & (cert.radius > eps)
        rows.append(
            {
                "epsilon": eps,
                "images": len(y),
                "certified_at_eps": int(covered.sum()),
                "broken": int(res.broken.sum()),
                "attacked_accuracy": float((res.prediction == y).double().mean()),
                "certified_accuracy": float(covered.double().mean()),
                "broken_but_certified": int((res.broken & covered).sum()),
                "seconds": round(time.perf_counter() - start, 2),
                "load_average": [round(v, 2) for v in os.getloadavg()],
            }
        )
    return rows


def speed(x: torch.Tensor, n: int, batch: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """CERTIFY (n0 = 100, n) vs. the pure forward passes of the same inputs in the same batches.

    Interleaved (certify, forward, certify, forward ...) ``repeats`` times, medians reported: on a
    shared machine single timings swing. The noise draws alone are timed too (what certify adds).
    """
    model = load_model("mnist-cnn-noise-0.25", device=device)
    smoothed = SmoothedClassifier(model, 0.25, batch_size=batch)
    total = x.shape[0] * (100 + n)
    fixed = x[:1].to(device).expand(batch, *x.shape[1:]).contiguous()
    smoothed.certify(x[:1], 10, 2 * batch, ALPHA)  # warm-up

    def timed(run: Any) -> float:
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        return time.perf_counter() - start

    def forward() -> None:
        with torch.no_grad():
            for first in range(0, total, batch):
                model(fixed[: min(batch, total - first)]).argmax(1)

    def noise() -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        for first in range(0, total, batch):
            torch.randn((min(batch, total - first), *x.shape[1:]), generator=gen, device=device)

    runs: dict[str, list[float]] = {"certify": [], "forward": [], "noise": []}
    for r in range(repeats):
        gen = torch.Generator().manual_seed(r)
        runs["certify"].append(timed(lambda g=gen: smoothed.certify(x, 100, n, ALPHA, g)))
        runs["forward"].append(timed(forward))
        runs["noise"].append(timed(noise))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "images": x.shape[0],
        "n": n,
        "batch_size": batch,
        "repeats": repeats,
        "forwards": total,
        "certify_seconds": round(med["certify"], 3),
        "forward_seconds": round(med["forward"], 3),
        "noise_seconds": round(med["noise"], 3),
        "ratio": round(med["certify"] / med["forward"], 3),
        "ratios": [round(c / f, 3) for c, f in zip(runs["certify"], runs["forward"], strict=True)],
        "forwards_per_second": round(total / med["forward"]),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def ibp(device: torch.device, crown: bool) -> dict[str, Any]:
    """The IBP-trained zoo model at L-inf 0.1 on the mnist5k test split: the sandwich."""
    test = load_dataset("mnist5k", split="test")
    model = load_model("mnist-cnn-ibp", device=device)
    x, y = test.x.to(device), test.y.to(device)
    threat = ThreatModel("linf", 0.1)
    out: dict[str, Any] = {"epsilon": 0.1, "images": len(test)}
    start = time.perf_counter()
    clean, elided = ibp_certified_accuracy(model.module, test, 0.1)
    out["clean_accuracy"] = clean
    out["ibp_margin_spec"] = {"certified_accuracy": elided, "seconds": round(time.perf_counter() - start, 2)}
    methods = ("ibp", "crown") if crown else ("ibp",)
    for method in methods:
        cert = certify(model, x, y, threat=threat, method=method)
        out[method] = {"certified_accuracy": cert.certified_accuracy, "seconds": round(cert.seconds, 2)}
    start = time.perf_counter()
    pgd = PGD(steps=40, restarts=2)(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
    out["pgd40x2"] = {
        "robust_accuracy": pgd.robust_accuracy,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return out


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Randomized smoothing and IBP certified training (mnist5k)",
        "",
        f"Machine: {m['cpus']} CPUs, torch threads {m['torch_threads']}, device {m['device']}; load average "
        f"(1, 5, 15 min) at the start / end of the last run {m['load_average']} / {m['load_average_after']} "
        "(each section's JSON has the load average when it ended). Timings on a loaded machine swing.",
        "",
        "Certified numbers are proofs about the *smoothed* classifier g (with probability 1 - alpha), "
        "not about the base model.",
        "",
    ]
    if results.get("curves"):
        c0 = results["curves"][0]
        lines += [
            f"## Certified accuracy vs. L2 radius (n0 = 100, n = {c0['n']:,}, alpha = {ALPHA}, "
            f"{c0['images']} test images)",
            "",
            "| sigma | base clean | abstain | " + " | ".join(f"r={r:g}" for r in RADII) + " | seconds |",
            "| --- | --- | --- | " + " | ".join("---" for _ in RADII) + " | --- |",
        ]
        for c in results["curves"]:
            accs = " | ".join(f"{a:.3f}" for _, a in c["curve"])
            lines.append(
                f"| {c['sigma']:g} | {c['base_clean_accuracy']:.3f} | {c['abstained']:.3f} | {accs} | {c['seconds']} |"
            )
        largest = ", ".join(
            f"{c['sigma']:g}: {c['sigma'] * stats.norm.ppf(c['alpha'] ** (1 / c['n'])):.3f}"
            for c in results["curves"]
        )
        lines += [
            "",
            f"With n draws no radius above sigma * Phi^-1(alpha^(1/n)) can be certified "
            f"(sigma {largest}): "
            "larger n certifies larger radii.",
            "",
        ]
    if results.get("attack"):
        lines += [
            "## PGD through Monte-Carlo noise on the smoothed classifier (sigma 0.25)",
            "",
            "20 steps, 32 draws per step; the points are judged by PREDICT (n = 1,000). "
            "'broken but certified' counts samples certified at a radius above epsilon that the attack "
            "broke: it must be 0.",
            "",
            "| L2 eps | certified acc. | attacked acc. (upper bound) | broken | broken but certified | seconds |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in results["attack"]:
            lines.append(
                f"| {r['epsilon']:g} | {r['certified_accuracy']:.3f} | {r['attacked_accuracy']:.3f} | "
                f"{r['broken']} | {r['broken_but_certified']} | {r['seconds']} |"
            )
        lines.append("")
    if results.get("speed"):
        s = results["speed"]
        lines += [
            "## Speed: CERTIFY with n = 100,000 per image vs. pure forward passes",
            "",
            f"{s['images']} image(s), {s['forwards']:,} forwards in batches of {s['batch_size']:,}, medians of "
            f"{s['repeats']} interleaved runs: certify {s['certify_seconds']} s, forward only "
            f"{s['forward_seconds']} s (of which the noise draws would be {s['noise_seconds']} s), "
            f"**ratio {s['ratio']}** (per run: {s['ratios']}; {s['forwards_per_second']:,} forwards/s; "
            f"load average {s['load_average']}).",
            "",
        ]
    if results.get("ibp"):
        b = results["ibp"]
        lines += [
            f"## mnist-cnn-ibp at L-inf 0.1 ({b['images']} mnist5k test images)",
            "",
            "| measure | accuracy | seconds |",
            "| --- | --- | --- |",
            f"| clean | {b['clean_accuracy']:.3f} | |",
            f"| certified, certify(method='ibp') (logit intervals) | {b['ibp']['certified_accuracy']:.3f} | "
            f"{b['ibp']['seconds']} |",
            f"| certified, IBP with the margin specification | {b['ibp_margin_spec']['certified_accuracy']:.3f} | "
            f"{b['ibp_margin_spec']['seconds']} |",
        ]
        if "crown" in b:
            lines.append(
                f"| certified, certify(method='crown') | {b['crown']['certified_accuracy']:.3f} | {b['crown']['seconds']} |"
            )
        lines += [f"| PGD 40 steps x 2 restarts (upper bound) | {b['pgd40x2']['robust_accuracy']:.3f} | "
                  f"{b['pgd40x2']['seconds']} |", ""]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100, help="test images for the curves")
    p.add_argument("--n", type=int, default=10_000, help="Monte-Carlo draws per image for the curves")
    p.add_argument("--attack-images", type=int, default=50)
    p.add_argument("--timing-images", type=int, default=1, help="images certified with n = 100,000")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing runs (medians reported)")
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["curve", "attack", "speed", "ibp", "crown"],
        help="sections not to run (those of an earlier results file at --out are kept)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "smoothing.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    test = load_dataset("mnist5k", split="test")
    # sections not run this time are kept from an earlier results file
    results: dict[str, Any] = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    if "curve" not in args.skip:
        x, y = test.x[: args.images], test.y[: args.images]
        results["curves"] = [curve(s, x, y, args.n, args.batch_size, device) for s in (0.25, 0.5)]
        if "attack" not in args.skip:
            k = min(args.attack_images, args.images)
            cert = results["curves"][0]["_certificate"]
            sub = type(cert)(**{f: getattr(cert, f)[:k] if isinstance(getattr(cert, f), torch.Tensor)
                               else getattr(cert, f) for f in cert.__dataclass_fields__})  # fmt: skip
            results["attack"] = attack(x[:k], y[:k], sub, device, args.batch_size)
        for c in results["curves"]:
            del c["_certificate"]
    if "speed" not in args.skip:
        results["speed"] = speed(test.x[: args.timing_images], 100_000, args.batch_size, device, args.repeats)
    if "ibp" not in args.skip:
        results["ibp"] = ibp(device, crown="crown" not in args.skip)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "device": str(device),
        "load_average": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(results) + "\n", encoding="utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
