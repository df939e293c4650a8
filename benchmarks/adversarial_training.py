"""What adversarial training buys on mnist5k: clean and worst-case robust accuracy, and its cost.

Trains ``mnist-cnn`` on the mnist5k train split with each recipe of :mod:`evasion.training`
(standard, fgsm, fgsm-rs, pgd with 10 steps, trades with beta 6; the same epochs, batch size,
learning rate and epsilon warm-up for all), then measures on the test split:

* clean accuracy (all test images);
* worst-case robust accuracy at L∞ 0.3 on ``--samples`` test images (a fixed random sample: the
  files are sorted by class): a sample counts as robust only if none of APGD-CE, APGD-DLR
  (``--apgd-steps`` steps, ``--restarts`` restarts), PGD-40 on the margin loss and FGSM breaks it. The other
  attacks of the default config, DeepFool and C&W, are L2 minimum-norm attacks and do not enter
  an L∞ worst case.
* training wall time and CPU time (one torch thread). The machine may be shared: wall times are
  noisy, CPU times less so; compare ratios, not absolute numbers.

Options: ``--subsets 1000,2000`` adds PGD training on N training images (what more data
buys); ``--art`` adds ART's ``AdversarialTrainerMadryPGD`` on the same data, epochs and eps.

    python benchmarks/adversarial_training.py            # ~30-40 min CPU on one core
    python benchmarks/adversarial_training.py --quick    # 2 epochs on 1000 images, small evaluation
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from evasion import datasets
from evasion.attacks import APGD, FGSM, PGD
from evasion.datasets.base import Dataset
from evasion.models.architectures import small
from evasion.models.classifier import Classifier
from evasion.models.zoo import MNIST_CNN_PGD
from evasion.threat_model import ThreatModel
from evasion.training import AdversarialTrainer, TrainConfig

RESULTS = Path(__file__).parent / "results"
EPSILON = 0.3

#: recipe name in the table -> TrainConfig fields on top of the shared ones
RECIPES: dict[str, dict[str, Any]] = {
    "standard": {"recipe": "none", "epsilon": 0.0, "warmup_epochs": 0.0},
    "fgsm": {"recipe": "fgsm", "adv_weight": 0.5},
    "fgsm-rs": {"recipe": "fgsm-rs", "rs_step": 1.25, "schedule": "cyclic"},
    "pgd-10": {"recipe": "pgd", "steps": 10},
    "trades": {"recipe": "trades", "beta": 6.0, "steps": 10},
}


def shared(epochs: int) -> dict[str, Any]:
    """The fields every recipe shares: the zoo's mnist-cnn-pgd recipe at ``epochs``."""
    base = {k: v for k, v in MNIST_CNN_PGD.items() if k not in ("recipe", "steps")}
    base.update(epochs=epochs, warmup_epochs=epochs / 4, num_threads=1)
    return base


def worst_case(
    clf: Classifier, x: torch.Tensor, y: torch.Tensor, steps: int, restarts: int
) -> dict[str, float]:
    """Robust accuracy per attack and over all of them (a sample any attack breaks is lost)."""
    threat = ThreatModel("linf", EPSILON)
    attacks = {
        "apgd-ce": APGD(steps=steps, loss="ce", restarts=restarts),
        "apgd-dlr": APGD(steps=steps, loss="dlr", restarts=restarts),
        "pgd-40-margin": PGD(steps=40, loss="margin"),
        "fgsm": FGSM(),
    }
    broken = torch.zeros(len(y), dtype=torch.bool)
    out: dict[str, float] = {}
    for name, attack in attacks.items():
        result = attack(clf, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
        out[name] = result.robust_accuracy
        broken |= result.success.cpu()
    out["worst_case"] = 1.0 - float(broken.float().mean())
    return out


def train_one(config: TrainConfig, train: Dataset) -> tuple[Classifier, float, float, list[dict[str, Any]]]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = AdversarialTrainer(config).fit(small.mnist_cnn(0), train)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    clf = Classifier(result.classifier.module, 10, input_shape=(1, 28, 28), name=config.recipe)
    return clf, wall, cpu, result.log()["events"]


def art_row(
    train: Dataset, epochs: int, batch_size: int, lr: float
) -> tuple[Classifier, float, float] | None:
    """ART's AdversarialTrainerMadryPGD on the same data (eps on the [0, 1] scale of the data)."""
    try:
        from art.defences.trainer import AdversarialTrainerMadryPGD
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    torch.manual_seed(0)
    net = small.mnist_cnn(0)
    estimator = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=lr),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    trainer = AdversarialTrainerMadryPGD(
        estimator, nb_epochs=epochs, batch_size=batch_size, eps=EPSILON, eps_step=0.075, max_iter=10
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trainer.fit(train.x.numpy(), train.y.numpy())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Classifier(net.eval(), 10, input_shape=(1, 28, 28), name="art-madry-pgd"), wall, cpu


def sample(data: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` images drawn with a fixed shuffle (mnist5k's files are sorted by class)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[:n].sort().values)


def row(
    name: str, clf: Classifier, test: Dataset, n: int, args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    clean = float(clf.predict(test.x).eq(test.y).float().mean())
    attacked = sample(test, n, seed=1)
    robust = worst_case(clf, attacked.x, attacked.y, args.apgd_steps, args.restarts)
    entry = {
        "recipe": name,
        "clean_accuracy": clean,
        **{f"robust_{k}": v for k, v in robust.items()},
        **extra,
    }
    print(json.dumps(entry), flush=True)
    return entry


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Adversarial training on mnist5k (mnist-cnn, L∞ 0.3)",
        "",
        f"{s['train_samples']} training images, {s['epochs']} epochs, batch {s['batch_size']}, Adam lr {s['lr']}, "
        f"epsilon warm-up over {s['epochs'] / 4:g} epochs; worst case over APGD-CE and APGD-DLR "
        f"({s['apgd_steps']} steps, {s['restarts']} restarts), PGD-40 (margin) and FGSM on "
        f"{s['samples']} test images (fixed random sample); clean accuracy on all {s['test_samples']}. One torch thread; "
        f"{'quick mode; ' if s['quick'] else ''}the machine may be shared, so wall times are noisy "
        "(CPU times are steadier).",
        "",
        "| recipe | train images | clean acc | worst-case robust acc @0.3 | APGD-CE | APGD-DLR | wall s | CPU s | events |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['recipe']} | {r['train_images']} | {r['clean_accuracy']:.3f} | {r['robust_worst_case']:.3f} | "
            f"{r['robust_apgd-ce']:.3f} | {r['robust_apgd-dlr']:.3f} | {r['wall_seconds']:.0f} | "
            f"{r['cpu_seconds']:.0f} | {len(r.get('events', []))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs on 1000 images; 100 test images, APGD 20x1")
    p.add_argument("--epochs", type=int, help="default 12 (quick: 2)")
    p.add_argument("--samples", type=int, help="test images attacked (default 500, quick 100)")
    p.add_argument("--apgd-steps", type=int, help="default 100 (quick 20)")
    p.add_argument("--restarts", type=int, help="default 5 (quick 1)")
    p.add_argument(
        "--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ", ".join(RECIPES)
    )
    p.add_argument(
        "--subsets", default="", help="also PGD-train on N images (fixed random sample), e.g. 1000,2000"
    )
    p.add_argument("--art", action="store_true", help="add ART's AdversarialTrainerMadryPGD")
    p.add_argument(
        "--out", type=Path, help="results file stem (default benchmarks/results/adversarial_training)"
    )
    args = p.parse_args()
    epochs = args.epochs or (2 if args.quick else 12)
    args.samples = args.samples or (100 if args.quick else 500)
    args.apgd_steps = args.apgd_steps or (20 if args.quick else 100)
    args.restarts = args.restarts or (1 if args.quick else 5)
    torch.set_num_threads(1)
    train, test = datasets.load("mnist5k", split="train"), datasets.load("mnist5k", split="test")
    if args.quick:
        train = sample(train, 1000)
    base = shared(epochs)
    rows = []
    for name in [r for r in args.recipes.split(",") if r]:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
        config = TrainConfig(**{**base, **RECIPES[name]})
        clf, wall, cpu, events = train_one(config, train)
        rows.append(
            row(
                name,
                clf,
                test,
                args.samples,
                args,
                train_images=len(train),
                wall_seconds=wall,
                cpu_seconds=cpu,
                events=events,
            )
        )
    for n in [int(v) for v in args.subsets.split(",") if v]:
        config = TrainConfig(**{**base, **RECIPES["pgd-10"]})
        clf, wall, cpu, events = train_one(config, sample(train, n))
        rows.append(
            row(
                "pgd-10",
                clf,
                test,
                args.samples,
                args,
                train_images=n,
                wall_seconds=wall,
                cpu_seconds=cpu,
                events=events,
            )
        )
    if args.art:
        art = art_row(train, epochs, base["batch_size"], base["lr"])
        if art is not None:
            clf, wall, cpu = art
            rows.append(
                row(
                    "ART MadryPGD",
                    clf,
                    test,
                    args.samples,
                    args,
                    train_images=len(train),
                    wall_seconds=wall,
                    cpu_seconds=cpu,
                )
            )
    report = {
        "settings": {
            "quick": args.quick,
            "epochs": epochs,
            "batch_size": base["batch_size"],
            "lr": base["lr"],
            "train_samples": len(train),
            "test_samples": len(test),
            "samples": args.samples,
            "apgd_steps": args.apgd_steps,
            "restarts": args.restarts,
            "epsilon": EPSILON,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "rows": rows,
    }
    stem = args.out or RESULTS / ("adversarial_training" + ("-quick" if args.quick else ""))
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
