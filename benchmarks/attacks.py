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

``textbook`` is a plain FGSM / PGD loop written in ``_peers`` outside every library (random start,
gradient, sign or unit step, clamp): the floor for a loop that does nothing but the attack's
arithmetic.

Timings on a shared machine are noisy: every repetition runs the libraries interleaved
(limit, A, B, C, D, E, limit for each attack), each ratio divides by the limit measured next to
it, and the tables report medians over the repetitions. The machine's load average is recorded.

The issue's limit is timed on the clean batch. The model's own speed depends on its input (on this
CPU, mnist-cnn's forward+backward takes 3-14 % longer at points of the L∞ 0.1 ball than on the
clean digits, 80 % of whose pixels are exact zeros: :func:`input_dependence`, in the results), so
an attack's loop cannot reach that limit however little it adds. Each library's
ratio is therefore also given against the limit timed at *its own returned points* right after its
run ("at points"), and, per repetition, against torchattacks' time in the same repetition
("paired"). Like every CLI command, the script keeps freed memory in the process
(``evasion.runtime.keep_freed_memory``; ``--default-allocator`` turns that off), which speeds up
evasion and torchattacks alike (``benchmarks/allocator.py``).
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
from evasion.perturbations import BallBox
from evasion.runtime import keep_freed_memory

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_ATTACKS = ("fgsm", "pgd-linf-10", "pgd-l2-10", "apgd-ce")
#: images in the mnist5k test split, the most one batch can take
MAX_BATCH = 1000
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


def points_limit(model: nn.Module, adv: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(forward+backward, forward) seconds at a library's returned points, put back into [0, 1]
    (minimum-norm attacks return unprojected points; non-finite entries take the clean pixel)."""
    pts = adv.detach().to(x.dtype).reshape(x.shape)
    pts = torch.where(torch.isfinite(pts), pts, x).clamp(0.0, 1.0).contiguous()
    return limit_seconds(model, pts, y), forward_seconds(model, pts)


def input_dependence(
    model: nn.Module, x: Tensor, y: Tensor, epsilon: float = 0.1, rounds: int = 7
) -> dict[str, float]:
    """How much the model's forward+backward time depends on its input: the clean batch against
    points drawn uniformly in the L∞ ball of ``epsilon`` and at its corners (``x +- epsilon``,
    where PGD-L∞ iterates live), both put back into [0, 1]; timed interleaved, ``rounds`` times."""
    g = torch.Generator().manual_seed(0)
    uniform = (x + epsilon * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    corner = (x + epsilon * torch.randn(x.shape, generator=g).sign()).clamp(0, 1)
    times: dict[str, list[float]] = {"clean": [], "uniform": [], "corner": []}
    for _ in range(rounds):
        for name, pts in (("clean", x), ("uniform", uniform), ("corner", corner)):
            times[name].append(limit_seconds(model, pts, y))
    out = {f"{k}_ms": 1e3 * _median(v) for k, v in times.items()}
    for k in ("uniform", "corner"):  # paired per round: the clean batch was timed right before
        out[f"{k}_over_clean"] = _median([a / b for a, b in zip(times[k], times["clean"])])
    out["clean_zero_fraction"] = float((x == 0).float().mean())
    return out


def l2_projection_cost(model: nn.Module, x: Tensor, y: Tensor, rounds: int = 21) -> dict[str, float]:
    """Time of one exact L2 ball ∩ box projection (``perturbations.BallBox``, what evasion's PGD-L2
    runs every step) against rescale-into-the-ball-then-clamp (torchattacks' step, not the
    projection), on a real step's point: the textbook PGD-L2 10 endpoint plus one more step."""
    cfg = CONFIGS["pgd-l2-10"]
    run = _peers.make_runner(_peers.TEXTBOOK, cfg, model, len(y))
    assert run is not None and cfg.step_size is not None
    _peers.seed_everything(0)
    xk = run(x, y).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xk), y, reduction="sum"), xk)
    z = (xk + cfg.step_size * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)).detach()
    ball = BallBox(x, cfg.epsilon, "l2", torch.zeros_like(x), torch.ones_like(x))

    def rescale_clamp() -> Tensor:
        return (x + _peers.rescale_into_l2_ball(z - x, cfg.epsilon)).clamp(0.0, 1.0)

    times: dict[str, list[float]] = {"exact": [], "rescale_clamp": []}
    for _ in range(rounds):
        for name, fn in (("exact", lambda: ball.project(z)), ("rescale_clamp", rescale_clamp)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    unit = limit_seconds(model, x, y, repeats=5)
    out = {f"{k}_ms": 1e3 * _median(v) for k, v in times.items()}
    out["exact_over_forward_backward"] = out["exact_ms"] / (1e3 * unit)
    out["forward_backward_ms"] = 1e3 * unit
    return out


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
    kept_memory: bool = False,
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
        "kept_memory": kept_memory,
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
        report.setdefault("input_dependence", {})[str(batch)] = input_dependence(model, x, y)
        if "pgd-l2-10" in attacks:
            report.setdefault("l2_projection", {})[str(batch)] = l2_projection_cost(model, x, y)
        for run in runners.values():
            if run is not None:
                _peers.seed_everything(0)
                run(x[:2], y[:2])
        times: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
        ratios: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
        points: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
        paired: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
        verified: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
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
                forward_at: dict[str, float] = {}
                for lib in libs:
                    run = runners[key, lib]
                    if run is None or (key, lib) in skipped:
                        continue
                    _peers.seed_everything(0)
                    start = time.perf_counter()
                    adv = run(x, y)
                    seconds = time.perf_counter() - start
                    at_points = points_limit(model, adv, x, y)
                    measured.append((lib, seconds))
                    forward_at[lib] = at_points[1]
                    points[key, lib].append(seconds / (cfg.steps * at_points[0] + at_points[1]))
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
                reference = dict(measured).get("torchattacks")
                for lib, seconds in measured:
                    if reference is not None:
                        paired[key, lib].append(seconds / reference)
                        # torchattacks returns its points unchecked: its time to a verified
                        # result adds the forward at those points (evasion's results include it)
                        verified[key, lib].append(seconds / (reference + forward_at["torchattacks"]))
                    times[key, lib].append(seconds)
                    ratios[key, lib].append(seconds / (cfg.steps * unit + fwd))
                    log(
                        f"batch {batch} rep {rep + 1}/{repeats} {key:12s} {lib:13s} {seconds:8.3f} s "
                        f"ratio {ratios[key, lib][-1]:6.2f} at points {points[key, lib][-1]:6.2f}  "
                        f"(limit {unit * 1e3:.1f} ms, load {os.getloadavg()[0]:.1f})"
                    )
            report["rows"] = [r for r in report["rows"] if r["batch"] != batch] + _rows(
                batch,
                attacks,
                libs,
                runners,
                times,
                ratios,
                scores,
                limits,
                forwards,
                points,
                paired,
                verified,
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
    points: dict[tuple[str, str], list[float]],
    paired: dict[tuple[str, str], list[float]],
    verified: dict[tuple[str, str], list[float]],
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
                    ratio_at_points=_median(points[key, lib]),
                    ratio_at_points_all=points[key, lib],
                    paired_to_torchattacks=_median(paired[key, lib]),
                    paired_to_torchattacks_all=paired[key, lib],
                    paired_to_verified_torchattacks=_median(verified[key, lib]),
                    paired_to_verified_torchattacks_all=verified[key, lib],
                    limit_ms=1e3 * _median(limits[key]),
                    forward_ms=1e3 * _median(forwards[key]),
                    limit_ms_all=[1e3 * v for v in limits[key]],
                    forward_ms_all=[1e3 * v for v in forwards[key]],
                    robust_accuracy=s.robust_accuracy,
                    median_norm=s.median_norm,
                    max_norm=s.max_norm,
                    outside_budget=s.outside_budget,
                )
            rows.append(row)
    return rows


def _spread(row: dict[str, Any], key: str) -> str:
    values = row.get(f"{key}_all") or []
    med = row.get(key, math.nan)
    if len(values) < 2:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, checked on the medians (no verdict where a row is missing).

    Speed: ``evasion-full`` (DeepFool: ``evasion``) at most ``GOAL`` x the limit and at most
    torchattacks' ratio in the same run; both also read at the returned points and as the
    paired per-repetition time ratio to torchattacks. Strength: robust accuracy no higher than the
    strongest peer's, in samples.
    """
    out = []
    by = {(r["batch"], r["attack"], r["library"]): r for r in report["rows"] if r.get("available")}
    for batch in sorted({r["batch"] for r in report["rows"]}):
        for key in report["configs"]:
            ev = by.get((batch, key, "evasion"))
            full = by.get((batch, key, "evasion-full")) or ev
            if ev is None or full is None:
                continue
            peers = [by[batch, key, p] for p in _peers.PEERS if (batch, key, p) in by]
            ta = by.get((batch, key, "torchattacks"))
            book = by.get((batch, key, _peers.TEXTBOOK))
            goal = GOAL_DEEPFOOL if key == "deepfool" else GOAL_GRADIENT
            strongest = min((p["robust_accuracy"] for p in peers), default=math.inf)
            # in samples: robust accuracies are fractions of the same batch
            behind = round(batch * (max(ev["robust_accuracy"], full["robust_accuracy"]) - strongest))
            strength = "at least as strong" if behind <= 0 else f"WEAKER by {behind} sample(s) of {batch}"
            parts = [f"{'evasion-full' if full is not ev else 'evasion'} {_spread(full, 'ratio')}x the limit"]
            verdict = full["ratio"] <= goal
            if ta is not None:
                verdict = verdict and full["ratio"] <= ta["ratio"]
                parts.append(
                    f"torchattacks {ta['ratio']:.2f}x; paired time / torchattacks "
                    f"{_spread(full, 'paired_to_torchattacks')}, / torchattacks + its check "
                    f"{_spread(full, 'paired_to_verified_torchattacks')}"
                )
            if book is not None:
                parts.append(f"textbook {book['ratio']:.2f}x")
            at = full.get("ratio_at_points", math.nan)
            at_ta = ta.get("ratio_at_points", math.nan) if ta is not None else math.nan
            parts.append(
                f"at the returned points {at:.2f}x"
                + (f" (torchattacks {at_ta:.2f}x)" if not math.isnan(at_ta) else "")
                + f" -> {'met' if at <= goal and not at > at_ta else 'NOT met'}"
            )
            out.append(
                f"batch {batch} {key} (goal <= {goal}x and <= torchattacks): "
                f"{'met' if verdict else 'NOT met'}: " + "; ".join(parts) + "; robust accuracy "
                f"{ev['robust_accuracy']:.3f}/{full['robust_accuracy']:.3f} vs best peer {strongest:.3f} -> {strength}"
            )
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], intro: str = "") -> list[str]:
    """A markdown table (after an optional introductory line), followed by a blank line."""
    out = [intro, ""] if intro else []
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _cells(
    report: dict[str, Any],
    libs: Sequence[str],
    rows: dict[tuple[str, str], dict[str, Any]],
    cell: Callable[[str, str, dict[str, Any] | None], str],
) -> list[list[str]]:
    """One table row per attack, one cell per library (``cell(attack, library, row or None)``)."""
    return [
        [CONFIGS[key].title]
        + [
            cell(key, lib, r if (r := rows.get((key, lib))) is not None and r.get("available") else None)
            for lib in libs
        ]
        for key in report["configs"]
    ]


def _main_cell(key: str, lib: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return "= evasion" if lib == "evasion-full" and key == "deepfool" else "n/a"
    flag = f" ({r['outside_budget']} outside eps)" if r["outside_budget"] else ""
    return f"{r['ratio']:.2f}x / {r['images_per_s']:.0f} / {r['robust_accuracy']:.3f}{flag}"


def _paired_cell(key: str, lib: str, r: dict[str, Any] | None) -> str:
    if r is None or "ratio_at_points" not in r:
        return "n/a"
    return (
        f"{r['ratio_at_points']:.2f}x / {_spread(r, 'paired_to_torchattacks')} / "
        f"{_spread(r, 'paired_to_verified_torchattacks')}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables (ratio, images/s, robust accuracy per library; the paired
    readings; the model's input dependence and the L2 projection's cost)."""
    libs = [lib for lib in LIBRARIES if any(r["library"] == lib for r in report["rows"])]
    lines = [
        "# Attack benchmark: evasion vs torchattacks, foolbox, ART",
        "",
        f"Model mnist-cnn, {report['data']}; torch {report['torch']}, {report['threads']} threads, "
        f"{report['repeats']} repetition(s), medians; freed memory "
        f"{'kept (keep_freed_memory)' if report.get('kept_memory') else 'returned (default allocator)'}. Peers: "
        + ", ".join(f"{k} {v or 'not installed'}" for k, v in report["peers"].items())
        + ".",
        "",
        "Cell: ratio to the limit (steps x forward+backward + 1 forward) / images per second / "
        "robust accuracy. "
        "`evasion`: defaults (early stop); `evasion-full`: early_stop=False (C&W abort_early=False), "
        "every step taken as in the peers.",
        "",
    ]
    header = ["attack", *libs]
    for batch in sorted({r["batch"] for r in report["rows"]}):
        rows = {(r["attack"], r["library"]): r for r in report["rows"] if r["batch"] == batch}
        limit = next((r["limit_ms"] for r in rows.values() if r.get("available")), math.nan)
        fwd = next((r.get("forward_ms", math.nan) for r in rows.values() if r.get("available")), math.nan)
        lines += [f"## batch {batch} (forward+backward {limit:.1f} ms, forward {fwd:.1f} ms)", ""]
        lines += _table(header, _cells(report, libs, rows, _main_cell))
        if any("ratio_at_points" in r for r in rows.values()):
            lines += _table(
                header,
                _cells(report, libs, rows, _paired_cell),
                "Ratio to the limit timed at each library's own returned points / time paired with "
                "torchattacks' in each repetition (median, min-max) / the same with torchattacks "
                "charged the forward that checks its points (evasion's time includes it):",
            )
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
    deps = sorted((report.get("input_dependence") or {}).items(), key=lambda kv: int(kv[0]))
    if deps:
        lines += _table(
            ["batch", "clean (zero pixels)", "uniform in the ball", "corners"],
            [
                [
                    batch,
                    f"{d['clean_ms']:.1f} ms ({100 * d['clean_zero_fraction']:.0f}% zeros)",
                    f"{d['uniform_ms']:.1f} ms ({d['uniform_over_clean']:.3f}x)",
                    f"{d['corner_ms']:.1f} ms ({d['corner_over_clean']:.3f}x)",
                ]
                for batch, d in deps
            ],
            "The model's own speed depends on its input: forward+backward on the clean batch against "
            "points uniform in the L∞ 0.1 ball and at its corners (in [0, 1]), median of 7 interleaved "
            "rounds:",
        )
    projections = sorted((report.get("l2_projection") or {}).items(), key=lambda kv: int(kv[0]))
    if projections:
        lines += _table(
            ["batch", "exact", "rescale + clamp", "exact / forward+backward"],
            [
                [
                    batch,
                    f"{d['exact_ms']:.2f} ms",
                    f"{d['rescale_clamp_ms']:.2f} ms",
                    f"{100 * d['exact_over_forward_backward']:.1f}% of {d['forward_backward_ms']:.1f} ms",
                ]
                for batch, d in projections
            ],
            "PGD-L2's projection: one exact L2 ball ∩ box projection (evasion, every step) against "
            "rescaling into the ball then clamping (torchattacks; not the projection onto the "
            "intersection), at a real step's point, median of 21 rounds:",
        )
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
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's allocator as it is (default: keep freed memory, as every CLI command does)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for attacks.json / attacks.md")
    parser.add_argument("--render", action="store_true", help="only rewrite attacks.md from attacks.json")
    parser.add_argument(
        "--input-dependence",
        action="store_true",
        help="only time the model at clean vs perturbed inputs and the L2 projection, added to the saved attacks.json",
    )
    args = parser.parse_args(argv)
    for name in ("threads", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.batch_sizes is not None and min(args.batch_sizes) < 1:
        parser.error(f"--batch-sizes must be >= 1, got {min(args.batch_sizes)}")
    if args.batch_sizes is not None and max(args.batch_sizes) > MAX_BATCH:
        parser.error(
            f"--batch-sizes must be <= {MAX_BATCH} (the mnist5k test split), got {max(args.batch_sizes)}"
        )
    if args.slow_limit <= 0:
        parser.error(f"--slow-limit must be > 0 seconds, got {args.slow_limit}")
    saved = args.out / "attacks.json"
    if (args.input_dependence or args.render) and not saved.is_file():
        parser.error(
            f"{saved} does not exist: run the benchmark first (--render and --input-dependence read it)"
        )
    if args.input_dependence:  # measure and add to the saved results, keep the rest
        torch.set_num_threads(args.threads)
        if not args.default_allocator:
            keep_freed_memory()
        path = saved
        report = json.loads(path.read_text())
        for batch in args.batch_sizes or sorted({r["batch"] for r in report["rows"]}):
            model, x, y = load_data(batch)
            limit_seconds(model, x, y, repeats=5)
            report.setdefault("input_dependence", {})[str(batch)] = input_dependence(model, x, y)
            report.setdefault("l2_projection", {})[str(batch)] = l2_projection_cost(model, x, y)
            print(
                batch, report["input_dependence"][str(batch)], report["l2_projection"][str(batch)], flush=True
            )
        path.write_text(json.dumps(report, indent=1, default=float) + "\n")
        (args.out / "attacks.md").write_text(markdown(report))
        return 0
    if args.render:
        report = json.loads(saved.read_text())
        (args.out / "attacks.md").write_text(markdown(report))
        print(markdown(report))
        return 0
    repeats = args.repeats or (1 if args.quick else 3)
    batch_sizes = args.batch_sizes or ([64] if args.quick else [64, 256])
    attacks = args.attacks or list(QUICK_ATTACKS if args.quick else CONFIGS)
    torch.set_num_threads(args.threads)
    kept = False if args.default_allocator else keep_freed_memory()
    warnings.filterwarnings("ignore")  # peers' deprecation chatter
    args.out.mkdir(parents=True, exist_ok=True)

    def save(report: dict[str, Any]) -> None:
        (args.out / "attacks.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
        (args.out / "attacks.md").write_text(markdown(report))

    report = run_benchmark(
        batch_sizes,
        attacks,
        args.libraries,
        repeats,
        args.slow_limit,
        lambda s: print(s, flush=True),
        save,
        kept_memory=kept,
    )
    save(report)
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
