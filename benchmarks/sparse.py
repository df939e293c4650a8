"""Sparse (L0) attacks: the one-pixel attack and JSMA beside torchattacks and ART.

    python benchmarks/sparse.py --quick     # small samples: ~40 min on a busy 2-core machine
    python benchmarks/sparse.py             # 30 images, 30 generations: about an hour, quiet machine

**One-pixel** (untargeted, d = 1, 3, 5 pixels): success rate on correctly classified test images
of ``mnist-cnn`` on ``mnist5k``, of ``digits-cnn`` on ``digits`` (8x8: 64 pixels, where a few
pixels weigh enough for small budgets to separate the libraries) and of a linear SVM on EfficientNet-Lite0 features of
``icub-sim-quick`` (the robot-vision pipeline of ``experiments/icub.py``, trained on three
acquisition sessions, attacked on the fourth). Every library runs differential evolution with
the same population and generations: ``evasion.attacks.OnePixel(population=P,
generations=G)``, torchattacks' ``OnePixel(popsize=P, steps=G)`` and ART's ``PixelAttack(th=d,
max_iter=G)`` (ART fixes its population at ``400 // (d (2 + C))`` genes-sized groups, i.e. about
400: ``P`` is 400 wherever ART runs). Queries are counted the same way for all three (images
through the model, by a counting wrapper, including each library's success checks) and reported
as the median and maximum per image. The iCub model costs an EfficientNet forward per query
(~15 images/s on the shared CPU), so it gets few images and a small population; ART does not
run there unless ``--icub-art`` (its fixed ~400-candidate population alone would take most of an
hour).

**JSMA** (targeted, random target per image, gamma = 14.5 % of the pixels as in Papernot et al.):
success rate and the median / mean share of pixels changed on the successful images, for
``evasion.attacks.JSMA`` with the paper's direction (``"increase"``, theta = +1) and the default
``"both"``, beside ART's ``SaliencyMapMethod(theta=1, gamma=0.145)``.

Scoring is the same for every library: one fresh forward on the returned points; a sample counts
as broken when it is misclassified (targeted: classified as its target), lies in [0, 1] and
changes at most the allowed number of pixels (a pixel = all its channels). Wall times are
recorded with the load average; on a shared machine they are indicative only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evasion import ThreatModel, datasets, models
from evasion.attacks import JSMA, OnePixel
from evasion.models.classifier import Classifier
from evasion.perturbations import norm as perturbation_norm

RESULTS = Path(__file__).resolve().parent / "results"
Runner = Callable[[Tensor, Tensor], Tensor]


class Counting(nn.Module):
    """Passes images to a classifier and counts them (the queries a library made)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model
        self.images = 0
        self.input_shape = model.input_shape
        self.num_classes = model.num_classes
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        self.images += int(x.shape[0])
        return self.model(x)


# -- data and models --------------------------------------------------------------------------------
def correctly_classified(model: Classifier, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    keep = (model.predict(x) == y).nonzero().squeeze(1)[:n]
    return x[keep].contiguous(), y[keep].contiguous()


def mnist(
    n: int, model_name: str = "mnist-cnn", data_name: str = "mnist5k"
) -> tuple[Classifier, Tensor, Tensor]:
    """``mnist-cnn`` and ``n`` correctly classified images of a fixed shuffle of mnist5k test
    (or another zoo model and its dataset: ``digits-cnn`` on ``digits``)."""
    model = models.load(model_name).eval()
    data = datasets.load(data_name, split="test")
    order = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(0))
    x, y = correctly_classified(model, data.x[order[: 2 * n + 20]], data.y[order[: 2 * n + 20]], n)
    return model, x, y


def icub(n: int) -> tuple[Classifier, Tensor, Tensor]:
    """A linear SVM on EfficientNet-Lite0 features of icub-sim-quick (sessions 0-2), and ``n``
    correctly classified images of session 3, one per class in turn."""
    from evasion.datasets.icub_sim import split_indices
    from evasion.models.deep_features import DeepFeatureClassifier, default_extractor, extract_features
    from evasion.models.heads import LinearSVMHead

    ds = datasets.load("icub-sim-quick", "all")
    extractor = default_extractor()
    z = extract_features(extractor, ds.x, cache_key=str(ds.meta["sha256"]))
    session = ds.meta["session"]
    assert isinstance(session, Tensor)
    train, test = split_indices({"session": session.numpy()}, "session", [3])
    head = LinearSVMHead().fit(z[train], ds.y[train])
    model = DeepFeatureClassifier(head, extractor, class_names=ds.classes, name="icub-svm")
    x, y = ds.x[test], ds.y[test]
    rows = torch.argsort(_round_robin(y), stable=True)
    x, y = correctly_classified(model, x[rows], y[rows], n)
    return model, x, y


def _round_robin(y: Tensor) -> Tensor:
    """Rank of each label among its class (so that sorting by it cycles through the classes)."""
    rank = torch.zeros_like(y)
    for c in y.unique():
        idx = (y == c).nonzero().squeeze(1)
        rank[idx] = torch.arange(len(idx))
    return rank


# -- runners -----------------------------------------------------------------------------------------
def onepixel_runner(library: str, model: Counting, d: int, population: int, generations: int) -> Runner:
    """A peer's one-pixel attack on one image batch (``evasion`` runs in :func:`run_onepixel`)."""
    if library == "torchattacks":
        import torchattacks

        ta = torchattacks.OnePixel(
            model, pixels=d, steps=generations, popsize=population, inf_batch=population
        )
        return lambda x, y: ta(x, y)
    if library == "art":
        from art.attacks.evasion import PixelAttack

        est = _art_estimator(model)
        art_attack = PixelAttack(est, th=d, es=1, max_iter=generations, targeted=False)

        def run_art(x: Tensor, y: Tensor) -> Tensor:
            return torch.from_numpy(art_attack.generate(x.numpy(), y.numpy())).to(x.dtype)

        return run_art
    raise ValueError(library)


def _art_estimator(model: nn.Module) -> Any:
    from art.estimators.classification import PyTorchClassifier

    shape = tuple(getattr(model, "input_shape", None) or ())
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=int(getattr(model, "num_classes", 10)),
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def pixels_changed(adv: Tensor, x: Tensor) -> Tensor:
    return perturbation_norm(adv - x, "l0")


def score(
    model: Classifier, x: Tensor, y: Tensor, adv: Tensor, budget: float, target: Tensor | None = None
) -> dict[str, Any]:
    """Success (fresh forward, in the box, within ``budget`` pixels) and the pixels changed."""
    adv = adv.detach().to(x.dtype).reshape(x.shape)
    pred = model.predict(adv)
    hit = (pred == target) if target is not None else (pred != y)
    px = pixels_changed(adv, x)
    inside = (px <= budget) & (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
    ok = hit & inside
    share = px[ok] / (x[0].numel() // x.shape[1])
    return {
        "success_rate": float(ok.float().mean()),
        "outside_budget": int((hit & ~inside).sum()),
        "median_pixels_changed_pct": float(share.median() * 100) if bool(ok.any()) else math.nan,
        "mean_pixels_changed_pct": float(share.mean() * 100) if bool(ok.any()) else math.nan,
    }


def run_onepixel(
    label: str,
    model: Classifier,
    x: Tensor,
    y: Tensor,
    libraries: list[str],
    pixels: list[int],
    population: int,
    generations: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    rows = []
    for d in pixels:
        for lib in libraries:
            counting = Counting(model)
            start = time.perf_counter()
            if lib == "evasion":  # all images in one batched call; its forwards are its queries
                attack = OnePixel(population=population, generations=generations)
                gen = torch.Generator().manual_seed(0)
                victim = Classifier(
                    counting, model.num_classes, input_shape=model.input_shape, name=model.name
                )
                result = attack(victim, x, y, threat=ThreatModel("l0", d), generator=gen)
                adv, per_image = result.adversarial, result.forwards.tolist()
                assert sum(per_image) == counting.images, "forwards are the queries the model saw"
            else:  # one image at a time, so that queries are counted per image
                runner = onepixel_runner(lib, counting, d, population, generations)
                advs, per_image = [], []
                for i in range(len(x)):
                    before = counting.images
                    advs.append(runner(x[i : i + 1], y[i : i + 1]))
                    per_image.append(counting.images - before)
                adv = torch.cat(advs)
            seconds = time.perf_counter() - start
            row = {
                "dataset": label,
                "pixels": d,
                "library": lib,
                "images": len(x),
                "population": population,
                "generations": generations,
                **score(model, x, y, adv, d),
                "median_queries": statistics.median(per_image),
                "max_queries": max(per_image),
                "seconds": round(seconds, 1),
                "load": os.getloadavg(),
            }
            rows.append(row)
            log(
                f"{label} d={d} {lib:12s} success {row['success_rate']:.3f}  queries median "
                f"{row['median_queries']:.0f} max {row['max_queries']}  {seconds:.0f} s  load {os.getloadavg()[0]:.1f}"
            )
    return rows


def run_jsma(
    model: Classifier, x: Tensor, y: Tensor, art: bool, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    gamma = 0.145
    g = torch.Generator().manual_seed(1)
    target = (y + torch.randint(1, 10, y.shape, generator=g)) % 10
    budget = math.floor(gamma * x[0].numel())
    rows = []
    configs: list[tuple[str, str, Runner]] = []
    for direction in ("increase", "both"):
        attack = JSMA(direction=direction, gamma=gamma)
        threat = ThreatModel("l0", math.inf, targeted=True)

        def run(xb: Tensor, yb: Tensor, attack: JSMA = attack, threat: ThreatModel = threat) -> Tensor:
            return attack(model, xb, yb, threat=threat, target=target).adversarial

        configs.append(("evasion", f"JSMA(direction={direction!r})", run))
    if art:
        from art.attacks.evasion import SaliencyMapMethod

        sm = SaliencyMapMethod(_art_estimator(model), theta=1.0, gamma=gamma, batch_size=len(x))
        onehot = np.eye(10, dtype=np.float32)[target.numpy()]

        def run_art(xb: Tensor, yb: Tensor) -> Tensor:
            return torch.from_numpy(sm.generate(xb.numpy(), onehot)).to(xb.dtype)

        configs.append(("art", "SaliencyMapMethod(theta=1, gamma=0.145)", run_art))
    for lib, name, runner in configs:
        start = time.perf_counter()
        adv = runner(x, y)
        seconds = time.perf_counter() - start
        row = {
            "library": lib,
            "attack": name,
            "images": len(x),
            "max_pixels": budget,
            **score(model, x, y, adv, budget, target),
            "seconds": round(seconds, 1),
            "load": os.getloadavg(),
        }
        rows.append(row)
        log(
            f"JSMA {name:40s} success {row['success_rate']:.3f}  median pixels "
            f"{row['median_pixels_changed_pct']:.2f}%  {seconds:.0f} s  load {os.getloadavg()[0]:.1f}"
        )
    return rows


# -- report ------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.1f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Sparse (L0) attacks: one-pixel and JSMA",
        "",
        f"Generated by `{report.get('command', 'python benchmarks/sparse.py')}` on {report['date']} "
        f"(torch {report['torch']}, torchattacks {report['versions'].get('torchattacks')}, "
        f"ART {report['versions'].get('art')}; CPU threads {report['threads']}). "
        f"Load average at start {report['load_start'][0]:.1f}, at end {report['load_end'][0]:.1f} "
        "(a shared machine: wall times are indicative only).",
        "",
        "## One-pixel attack (untargeted): success rate on correctly classified images",
        "",
        "Same population and generations in every library; queries = images through the model "
        "(counted by a wrapper), per attacked image. A success counts only if it changes at most d "
        "pixels (all channels of a pixel count once) and stays in [0, 1].",
        "",
        "| data | d | library | images | population x generations | success | median / max queries | time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["onepixel"]:
        lines.append(
            f"| {r['dataset']} | {r['pixels']} | {r['library']} | {r['images']} | "
            f"{r['population']} x {r['generations']} | {r['success_rate'] * 100:.1f}% | "
            f"{r['median_queries']:.0f} / {r['max_queries']} | {r['seconds']:.0f} |"
        )
        if r["outside_budget"]:
            lines[-1] += f" ({r['outside_budget']} adversarial points outside the budget, not credited)"
    lines += [
        "",
        "## JSMA (targeted, random targets, at most 14.5 % of the pixels) on mnist-cnn",
        "",
        "| library | attack | images | success | median % pixels changed | mean % pixels changed | time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["jsma"]:
        lines.append(
            f"| {r['library']} | {r['attack']} | {r['images']} | {r['success_rate'] * 100:.1f}% | "
            f"{_fmt(r['median_pixels_changed_pct'])} | {_fmt(r['mean_pixels_changed_pct'])} | {r['seconds']:.0f} |"
        )
    lines += ["", "Settings: " + json.dumps(report["settings"])]
    if "earlier_run" in report:
        old = report["earlier_run"]
        lines.append(
            f"The rows of the parts skipped in that run come from an earlier run "
            f"(`{old.get('command', 'python benchmarks/sparse.py')}`) on {old['date']} "
            f"(load average {old['load_start'][0]:.1f} at start, {old['load_end'][0]:.1f} at end; "
            f"settings {json.dumps(old['settings'])})."
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small samples and budgets")
    p.add_argument("--mnist-images", type=int)
    p.add_argument("--icub-images", type=int)
    p.add_argument("--jsma-images", type=int)
    p.add_argument("--generations", type=int, help="one-pixel generations on mnist")
    p.add_argument("--icub-population", type=int)
    p.add_argument("--icub-generations", type=int)
    p.add_argument("--icub-art", action="store_true", help="also run ART's PixelAttack on icub (slow)")
    p.add_argument("--skip", action="append", default=[], choices=["mnist", "digits", "icub", "jsma"])
    p.add_argument("--out", default="sparse", help="result file stem under benchmarks/results")
    p.add_argument(
        "--append", action="store_true", help="keep the rows of an earlier run of the skipped parts"
    )
    args = p.parse_args(argv)
    quick = args.quick
    settings: dict[str, Any] = {
        "mnist_images": args.mnist_images or (10 if quick else 30),
        "icub_images": args.icub_images or (3 if quick else 5),
        "jsma_images": args.jsma_images or (30 if quick else 100),
        "population": 400,
        "generations": args.generations or (5 if quick else 30),
        "icub_population": args.icub_population or (50 if quick else 100),
        "icub_generations": args.icub_generations or (2 if quick else 5),
        "pixels": [1, 3, 5],
    }
    torch.manual_seed(0)
    np.random.seed(0)
    warnings.filterwarnings("ignore")

    def log(msg: str) -> None:
        print(msg, flush=True)

    versions = {}
    for mod in ("torchattacks", "art"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    libs = [lib for lib in ("evasion", "torchattacks", "art") if lib == "evasion" or versions.get(lib)]
    report: dict[str, Any] = {
        "quick": quick,
        "command": " ".join(["python benchmarks/sparse.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "versions": versions,
        "settings": settings,
        "load_start": os.getloadavg(),
        "onepixel": [],
        "jsma": [],
    }
    if "mnist" not in args.skip or "jsma" not in args.skip:
        model, x, y = mnist(max(settings["mnist_images"], settings["jsma_images"]))
        if "mnist" not in args.skip:
            n = settings["mnist_images"]
            report["onepixel"] += run_onepixel(
                "mnist5k / mnist-cnn",
                model,
                x[:n],
                y[:n],
                libs,
                settings["pixels"],
                settings["population"],
                settings["generations"],
                log,
            )
        if "jsma" not in args.skip:
            n = settings["jsma_images"]
            report["jsma"] = run_jsma(model, x[:n], y[:n], "art" in libs, log)
    if "digits" not in args.skip:  # 64 pixels: small enough for few pixels to matter at small budgets
        n = settings["mnist_images"]
        model, x, y = mnist(n, "digits-cnn", "digits")
        report["onepixel"] += run_onepixel(
            "digits / digits-cnn (8x8)",
            model,
            x,
            y,
            libs,
            settings["pixels"],
            settings["population"],
            settings["generations"],
            log,
        )
    if "icub" not in args.skip:
        model, x, y = icub(settings["icub_images"])
        icub_libs = [lib for lib in libs if lib != "art" or args.icub_art]
        pop = 400 if args.icub_art else settings["icub_population"]
        report["onepixel"] += run_onepixel(
            "icub-sim-quick / EfficientNet-Lite0 + linear SVM",
            model,
            x,
            y,
            icub_libs,
            settings["pixels"],
            pop,
            settings["icub_generations"],
            log,
        )
    report["load_end"] = os.getloadavg()
    earlier = RESULTS / f"{args.out}.json"
    if args.append and earlier.is_file():  # rows of the parts skipped now come from the earlier run
        old = json.loads(earlier.read_text())
        done = {r["dataset"] for r in report["onepixel"]}
        report["onepixel"] = [r for r in old["onepixel"] if r["dataset"] not in done] + report["onepixel"]
        report["jsma"] = report["jsma"] or old["jsma"]
        report["earlier_run"] = {
            k: old.get(k) for k in ("command", "date", "settings", "load_start", "load_end")
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / f"{args.out}.md").write_text(markdown(report))
    log(f"wrote {RESULTS / (args.out + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
