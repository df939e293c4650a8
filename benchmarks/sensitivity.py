"""Deep-feature sensitivity (Melis et al. 2017, Sect. 5) on every feature extractor of the project.

    python benchmarks/sensitivity.py            # the full table (28 images per extractor)
    python benchmarks/sensitivity.py --quick    # a smoke run (7 images, fewer steps, few layers)

The paper's protocol: perturb each image by input L2 = 10 on the 0..255 scale (10/255 here,
pixels in [0, 1]), once along the adversarial direction (the maximum-confidence evasion,
error-generic, against a linear SVM on the extractor's penultimate features, as iCub's pipeline)
and once in a random direction of the same norm, and compare how far the features move (mean and
std over images). A third column, the worst case, is the direction of that norm that moves the
features most (a power iteration on the Jacobian). Features are measured raw, L2-normalised per
image, and rescaled so that the clean images' mean feature norm is 1 (distances in units of the
mean norm; ratios unchanged).

Extractors (same images wherever the input domain allows, seeds fixed):

* EfficientNet-Lite0, ImageNet weights, on icub-sim-quick views at their 128x128 (as `evasion
  reproduce icub`), the penultimate layer and earlier blocks; the same views upsampled to 224x224
  before perturbing (more input dimensions at the same L2); the random-initialised network.
* resnet32-cifar (no bundled weights): randomly initialised, and trained here for a few epochs
  on icub-sim-quick's sessions 0-2 downsampled to 32x32 (standard training, `AdversarialTrainer`
  recipe "none"); the same views at 32x32.
* mnist-cnn (zoo, trained on first use, cached under EVASION_CACHE) and its random
  initialisation, on mnist5k test digits.

Writes ``benchmarks/results/sensitivity.json`` (every record) and ``sensitivity.md`` (the tables);
``--quick`` writes ``sensitivity-quick.*``. No timing claims: wall seconds are recorded with the
load average, for the record only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evasion import datasets
from evasion.attacks.max_confidence import MaxConfidence
from evasion.datasets.base import Dataset
from evasion.evaluation.sensitivity import (
    NORMALIZATIONS,
    PAPER_ADVERSARIAL,
    PAPER_EPSILON,
    PAPER_RANDOM,
    feature_distances,
    layer_extractor,
    perturb,
    worst_case_perturbation,
)
from evasion.experiments.icub import pick_round_robin
from evasion.models import zoo
from evasion.models.architectures.efficientnet_lite import LITE0_STAGES, EfficientNetLite
from evasion.models.architectures.resnet_cifar import resnet32_cifar
from evasion.models.architectures.small import mnist_cnn, seeded
from evasion.models.classifier import Classifier
from evasion.models.deep_features import DeepFeatureClassifier, extract_features
from evasion.models.heads import LinearSVMHead
from evasion.training.trainer import AdversarialTrainer, TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
#: the hand-written reading of the numbers below this line in the .md is kept across re-runs
FINDINGS = "<!-- findings: written by hand, kept when benchmarks/sensitivity.py rewrites the tables -->"


@dataclass(frozen=True)
class Settings:
    images: int
    attack_steps: int
    worst_steps: int
    resnet_epochs: int
    all_layers: bool


FULL = Settings(images=28, attack_steps=10, worst_steps=10, resnet_epochs=30, all_layers=True)
QUICK = Settings(images=7, attack_steps=3, worst_steps=3, resnet_epochs=2, all_layers=False)


@dataclass
class Extractor:
    """A classifier-wrapped network, the layers to measure, and the images it is measured on."""

    name: str
    weights: str
    net: Classifier
    penultimate: str
    layers: list[str]  # earlier layers, measured on the same perturbations (pooled)
    flat_layers: list[str]  # measured flattened too
    data: Dataset  # training images for the SVM head
    x: Tensor  # the images measured
    y: Tensor
    note: str = ""


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _pick(y: Tensor, rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``rows``, round robin over the classes present, in a seeded order."""
    return pick_round_robin(y, rows, n, seed, np.unique(y[rows].numpy()))


def _resized(ds: Dataset, size: int, mode: str) -> Dataset:
    if mode == "area":
        x = F.interpolate(ds.x, size=(size, size), mode="area")
    else:
        x = F.interpolate(ds.x, size=(size, size), mode="bilinear", align_corners=False)
    return replace(ds, x=x.clamp(0, 1).contiguous())


def _icub(settings: Settings) -> tuple[Dataset, Dataset, np.ndarray]:
    """icub-sim-quick: training sessions 0-2, test session 3, the measured rows (from training)."""
    ds = datasets.load("icub-sim-quick", "all")
    session = ds.meta["session"]
    assert isinstance(session, Tensor)
    train_rows = (session != 3).nonzero()[:, 0].numpy()
    test_rows = (session == 3).nonzero()[:, 0].numpy()
    picked = _pick(ds.y, train_rows, settings.images, seed=100)
    train = replace(ds, x=ds.x[train_rows], y=ds.y[train_rows])
    test = replace(ds, x=ds.x[test_rows], y=ds.y[test_rows])
    return train, test, np.searchsorted(train_rows, picked)


def calibrate_batchnorm(clf: Classifier, x: Tensor, batch_size: int = 32) -> Classifier:
    """Set every BatchNorm's running statistics to those of ``x`` (a randomly initialised net).

    Freshly initialised BatchNorm layers hold mean 0, variance 1, which in eval mode lets the
    activations of a deep random network shrink (EfficientNet-Lite0: features of norm ~1e-7) or
    grow layer by layer; with the statistics of real images each layer is normalised as in
    training, which is what "a random network" means for features. Weights are untouched.
    """
    norms = [m for m in clf.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    clf.module.eval()
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over all batches
            m.train()
        for b in x.split(batch_size):
            clf.module(clf.preprocess(b))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    clf.module.eval()
    return clf


def _efficientnet(pretrained: bool) -> Classifier:
    if pretrained:
        clf = zoo.load("efficientnet-lite0")
    else:
        net = seeded(lambda: EfficientNetLite(LITE0_STAGES, num_classes=1000), 0).eval()
        clf = Classifier(net, 1000, input_shape=(3, 224, 224), name="efficientnet-lite0 (random init)")
    return clf


def _train_resnet(
    train: Dataset, test: Dataset, epochs: int, log: Callable[[str], None]
) -> tuple[Classifier, str]:
    """ResNet-32 trained from scratch on icub-sim-quick at 32x32 (standard training)."""
    net = resnet32_cifar(seed=0, num_classes=len(train.classes))
    clf = Classifier(net, len(train.classes), input_shape=(3, 32, 32), name="resnet32-cifar (trained)")
    config = TrainConfig(
        recipe="none",
        epsilon=0.0,
        epochs=epochs,
        lr=2e-3,
        batch_size=16,
        augment_shift=2,
        num_threads=1,
        seed=0,
    )
    t0 = time.perf_counter()
    AdversarialTrainer(config).fit(clf, train)
    with torch.no_grad():
        acc = float((clf(test.x).argmax(1) == test.y).float().mean())
    note = (
        f"trained here: {epochs} epochs of Adam (lr 2e-3, cosine, batch 16, shifts of 2 px) on the "
        f"{len(train.y)} icub-sim-quick views of sessions 0-2 at 32x32; its own test accuracy on "
        f"session 3: {acc:.3f} ({time.perf_counter() - t0:.0f} s)"
    )
    log(note)
    return clf, note


def extractors(settings: Settings, log: Callable[[str], None]) -> list[Extractor]:
    """Every extractor of the project, with its images."""
    train, test, rows = _icub(settings)
    out: list[Extractor] = []
    blocks = [f"module._blocks.{i}" for i in ((0, 2, 4, 7, 10, 15) if settings.all_layers else (4,))]
    flat = ["module._blocks.4", "module._blocks.15"] if settings.all_layers else []
    for pretrained in (True, False):
        net = _efficientnet(pretrained) if pretrained else calibrate_batchnorm(_efficientnet(False), train.x)
        weights = "ImageNet" if pretrained else "random init, BN calibrated"
        out.append(
            Extractor(
                "efficientnet-lite0",
                weights,
                net,
                "module._avg_pooling",
                blocks,
                flat,
                train,
                train.x[rows],
                train.y[rows],
                "icub-sim-quick views, 128x128 (as `reproduce icub`)",
            )
        )
    big = _resized(train, 224, "bilinear")
    out.insert(
        1,
        Extractor(
            "efficientnet-lite0",
            "ImageNet",
            _efficientnet(True),
            "module._avg_pooling",
            [],
            [],
            big,
            big.x[rows],
            big.y[rows],
            "the same views upsampled to 224x224 (bilinear) before perturbing",
        ),
    )
    small_train, small_test = _resized(train, 32, "area"), _resized(test, 32, "area")
    res_layers = (
        ["module.stem", "module.stage1", "module.stage2", "module.stage3"] if settings.all_layers else []
    )
    res_flat = ["module.stage3"] if settings.all_layers else []
    rand = Classifier(resnet32_cifar(seed=0, num_classes=7), 7, input_shape=(3, 32, 32))
    calibrate_batchnorm(rand, small_train.x)
    trained, note = _train_resnet(small_train, small_test, settings.resnet_epochs, log)
    for weights, net, text in (
        ("random init, BN calibrated", rand, ""),
        ("trained on icub-sim-quick 32x32", trained, note),
    ):
        out.append(
            Extractor(
                "resnet32-cifar",
                weights,
                net,
                "module.pool",
                res_layers,
                res_flat,
                small_train,
                small_train.x[rows],
                small_train.y[rows],
                "the same views downsampled to 32x32 (area)" + (f"; {text}" if text else ""),
            )
        )
    mnist = datasets.load("mnist5k", "train")
    mnist_test = datasets.load("mnist5k", "test")
    mrows = _pick(mnist_test.y, np.arange(len(mnist_test.y)), settings.images, seed=100)
    fit_rows = _pick(mnist.y, np.arange(len(mnist.y)), 1000, seed=0)
    mnist_fit = replace(mnist, x=mnist.x[fit_rows], y=mnist.y[fit_rows])
    m_layers = ["module.relu1", "module.relu2", "module.fc1"] if settings.all_layers else []
    m_flat = ["module.relu1", "module.relu2"] if settings.all_layers else []
    for weights, net in (
        ("trained (zoo)", zoo.load("mnist-cnn")),
        ("random init (seed 0)", Classifier(mnist_cnn(seed=0), 10, input_shape=(1, 28, 28))),
    ):
        out.append(
            Extractor(
                "mnist-cnn",
                weights,
                net,
                "module.relu3",
                m_layers,
                m_flat,
                mnist_fit,
                mnist_test.x[mrows],
                mnist_test.y[mrows],
                "mnist5k test digits, 28x28",
            )
        )
    return out


def measure(e: Extractor, settings: Settings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Records for one extractor: every layer x pooling x normalisation on one set of perturbations."""
    t0 = time.perf_counter()
    penultimate = layer_extractor(e.net, e.penultimate)
    z = extract_features(penultimate, e.data.x, batch_size=32)
    shape = tuple(e.data.x.shape[1:])
    clf = DeepFeatureClassifier(LinearSVMHead(1.0), penultimate, input_shape=shape).fit(
        None, e.data.y, features=z
    )
    with torch.no_grad():
        svm_acc = float((clf(e.x).argmax(1) == e.y).float().mean())
    gen = torch.Generator().manual_seed(0)
    attack = MaxConfidence(steps=settings.attack_steps, early_stop=False, tolerance=None)
    pert = perturb(clf, e.x, e.y, epsilon=PAPER_EPSILON, attack=attack, generator=gen, batch_size=16)
    with torch.no_grad():
        evaded = float((clf(pert.adversarial).argmax(1) != e.y).float().mean())
    rows: list[dict[str, Any]] = []
    todo = [(e.penultimate, True)] + [(n, True) for n in e.layers] + [(n, False) for n in e.flat_layers]
    for layer, pool in todo:
        features = layer_extractor(e.net, layer, pool)
        worst = worst_case_perturbation(
            features, e.x, pert.input_norms, steps=settings.worst_steps, generator=gen, batch_size=16
        )
        p = replace(pert, worst_case=worst)
        for how in NORMALIZATIONS:
            record = feature_distances(features, p, normalize=how, layer=layer.removeprefix("module."))
            rows.append(
                {
                    "extractor": e.name,
                    "weights": e.weights,
                    "images": e.note,
                    "penultimate": layer == e.penultimate,
                    "pooled": pool,
                    "svm_accuracy_on_measured": svm_acc,
                    "adversarial_evaded": evaded,
                    "random_relative": record.random_mean / float(record.feature_norms.mean()),
                    **record.to_dict(),
                }
            )
    log(f"{e.name} [{e.weights}, {shape[-1]}px]: {len(todo)} layers in {time.perf_counter() - t0:.0f} s")
    return rows


def _pm(mean: float, std: float) -> str:
    digits = 4 if mean < 0.01 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _row(r: dict[str, Any], label: str) -> str:
    worst = r.get("worst_case_mean", math.nan)
    return (
        f"| {label} | {r['layer']}{'' if r['pooled'] else ' (flat)'} | {r['feature_dim']} | {r['normalize']} "
        f"| {r['feature_norm_mean']:.3g} | {_pm(r['random_mean'], r['random_std'])} "
        f"| {_pm(r['adversarial_mean'], r['adversarial_std'])} | **{r['ratio']:.0f}** "
        f"| {worst:.3g} | {r.get('worst_case_ratio', math.nan):.0f} | {math.sqrt(r['input_dim']):.0f} |"
    )


HEADER = (
    "| extractor (weights, input) | layer | dim | normalised | mean feature norm | random | adversarial "
    "| ratio | power-iteration direction | its ratio | sqrt(d) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def _label(r: dict[str, Any]) -> str:
    size = round(math.sqrt(r["input_dim"] / (1 if r["extractor"] == "mnist-cnn" else 3)))
    return f"{r['extractor']} ({r['weights']}, {size}x{size})"


def markdown(record: dict[str, Any]) -> str:
    rows = record["rows"]
    paper = (
        f"| paper: CaffeNet fc7 (ImageNet, iCubWorld crops) | fc7 | 4096 | none (own norm, not reported) | ? "
        f"| {PAPER_RANDOM[0]} ± {PAPER_RANDOM[1]} | {PAPER_ADVERSARIAL[0]} ± {PAPER_ADVERSARIAL[1]} "
        f"| **{PAPER_ADVERSARIAL[0] / PAPER_RANDOM[0]:.0f}** | | | |"
    )
    lines = [
        f"# Deep-feature sensitivity across extractors{' (quick)' if record['quick'] else ''}",
        "",
        f"`python benchmarks/sensitivity.py{' --quick' if record['quick'] else ''}`: input L2 = 10/255 "
        f"(pixels in [0, 1]), {record['settings']['images']} images per extractor, fixed seeds; "
        f"load average {record['load_average_before']} -> {record['load_average_after']}, "
        f"{record['wall_seconds']:.0f} s wall.",
        "",
        "## Penultimate features, three normalisations",
        "",
        "random / adversarial: feature distance, mean ± std over the images; ratio = adversarial / random "
        "means. Power-iteration direction: the input direction of the same norm found to move the features "
        "most (10 steps of a power iteration on the Jacobian; exact for a linear map, a lower bound on the "
        "worst case for a network). sqrt(d): the first-order ceiling of any such ratio (d = input dimension).",
        "",
        HEADER,
        paper,
    ]
    lines += [_row(r, _label(r)) for r in rows if r["penultimate"]]
    lines += [
        "",
        "## The paper's feature norm each network would need",
        "",
        "The paper reports distances in its own (unreported) fc7 units. Scale-free: a network matches the "
        "paper's random distance if the paper's features had norm 0.022 / (our random / our mean norm), and "
        "its adversarial distance if they had norm 2.386 / (our adversarial / our mean norm); both at once "
        "only if the two norms agree, i.e. if the ratios agree.",
        "",
        "| extractor | random / norm | adversarial / norm | paper norm for 0.022 | paper norm for 2.386 "
        "| disagreement (paper ratio / ours) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["penultimate"] and r["normalize"] == "none" and r["random_mean"] > 0:
            rel_r = r["random_mean"] / r["feature_norm_mean"]
            rel_a = r["adversarial_mean"] / r["feature_norm_mean"]
            lines.append(
                f"| {_label(r)} | {rel_r:.2e} | {rel_a:.3f} | {PAPER_RANDOM[0] / rel_r:.2f} "
                f"| {PAPER_ADVERSARIAL[0] / rel_a:.2f} | {PAPER_ADVERSARIAL[0] / PAPER_RANDOM[0] / r['ratio']:.1f}x |"
            )
    lines += ["", "## Earlier layers (same perturbations)", "", HEADER]
    lines += [_row(r, _label(r)) for r in rows if not r["penultimate"] and r["normalize"] != "rescale"]
    lines += ["", "## Images and heads", ""]
    seen: set[str] = set()
    for r in rows:
        key = _label(r)
        if key not in seen:
            seen.add(key)
            lines.append(
                f"* {key}: {r['images']}; linear SVM (C = 1) on the penultimate features: accuracy "
                f"{r['svm_accuracy_on_measured']:.2f} on the measured images, "
                f"{r['adversarial_evaded']:.2f} misclassified after the attack."
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 7 images, few steps, few layers")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the .md and .json go")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the .json of an earlier run"
    )
    args = parser.parse_args(argv)
    name = "sensitivity-quick" if args.quick else "sensitivity"
    if args.render:
        _write_md(args.results / f"{name}.md", json.loads((args.results / f"{name}.json").read_text()))
        return 0
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    load_before, t0 = _load(), time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    rows: list[dict[str, Any]] = []
    for e in extractors(settings, log):
        rows += measure(e, settings, log)
    record = {
        "quick": args.quick,
        "settings": settings.__dict__,
        "epsilon": PAPER_EPSILON,
        "paper": {"random": PAPER_RANDOM, "adversarial": PAPER_ADVERSARIAL},
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    _write_md(args.results / f"{name}.md", record)
    print(markdown(record))
    return 0


def _write_md(md: Path, record: dict[str, Any]) -> None:
    """The tables, then the hand-written findings of the file being replaced (if any)."""
    old = md.read_text() if md.exists() else ""
    md.write_text(markdown(record) + ("\n" + old[old.index(FINDINGS) :] if FINDINGS in old else ""))


if __name__ == "__main__":
    raise SystemExit(main())
