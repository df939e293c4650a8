"""What adversarial training buys on mnist5k: clean and worst-case robust accuracy, and its cost.

Trains ``mnist-cnn`` on the mnist5k train split with each recipe of :mod:`evasion.training`
(standard, fgsm, fgsm-rs as Wong et al. give it and as it holds on this data, pgd with 10 steps
with Adam and with fgsm-rs's SGD schedule, trades with beta 6; the same epochs, batch size and
epsilon warm-up for all), then measures on the test split:

* clean accuracy (all test images);
* worst-case robust accuracy at L∞ 0.3 on ``--samples`` test images (a fixed random sample: the
  files are sorted by class): a sample counts as robust only if none of APGD-CE, APGD-DLR
  (``--apgd-steps`` steps, ``--restarts`` restarts), the default config's L∞ attacks (APGD-T on 2
  runner-up classes, APGD on the margin loss of its self-check), PGD-40 on the margin loss and
  FGSM breaks it. The default config's DeepFool and C&W are L2 minimum-norm attacks and do not
  enter an L∞ worst case.
* training wall time and CPU time (one torch thread) and ``os.getloadavg()`` before each row. The
  machine may be shared: wall times are noisy, CPU times less so; compare ratios.

Options: ``--subsets 1000,2000`` adds ``--subset-recipe`` training on N images (what more data
buys); ``--art`` adds ART's ``AdversarialTrainerMadryPGD``; ``--device cuda`` trains and attacks
on a GPU (accuracies; the times are then not the acceptance's 2-core times); ``--no-eval`` measures
training time and clean accuracy only.

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
    # Wong et al.'s step 1.25 eps from a start in the eps-ball, with the shared Adam settings:
    # catastrophic overfitting within 4 epochs on mnist5k (the guard rolls back and stops)
    "fgsm-rs-wong": {"recipe": "fgsm-rs", "rs_step": 1.25, "schedule": "cyclic"},
    # what holds on mnist5k (GPU sweep, see docs/training.md): a start in the 1.5 eps-ball, a step
    # of eps, projected back to the eps-ball; SGD at a cyclic peak of 0.1 (Adam at 2e-3 overfits)
    "fgsm-rs": {
        "recipe": "fgsm-rs",
        "rs_step": 1.0,
        "rs_init": 1.5,
        "optimizer": "sgd",
        "lr": 0.1,
        "schedule": "cyclic",
    },
    # the same with 20 epochs (still under 1/3 of pgd-10's time: 2 passes a batch against 11)
    "fgsm-rs-e20": {
        "recipe": "fgsm-rs",
        "rs_step": 1.0,
        "rs_init": 1.5,
        "optimizer": "sgd",
        "lr": 0.1,
        "schedule": "cyclic",
        "epochs": 20,
        "warmup_epochs": 5.0,
    },
    "pgd-10": {"recipe": "pgd", "steps": 10},
    # PGD with fgsm-rs's optimizer and schedule: the fair comparison for fgsm-rs
    "pgd-10-sgd": {"recipe": "pgd", "steps": 10, "optimizer": "sgd", "lr": 0.1, "schedule": "cyclic"},
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
    """Robust accuracy per attack and over all of them (a sample any attack breaks is lost).

    APGD-CE and APGD-DLR (``steps`` x ``restarts``), the default config's L∞ attacks at ``steps``
    (APGD-T: targeted DLR at the 2 runner-up classes; APGD on the margin, the self-check's loss),
    PGD-40 on the margin and FGSM.
    """
    threat = ThreatModel("linf", EPSILON)
    attacks = {
        "apgd-ce": APGD(steps=steps, loss="ce", restarts=restarts),
        "apgd-dlr": APGD(steps=steps, loss="dlr", restarts=restarts),
        "apgd-t": APGD(steps=steps, loss="dlr", targets=2),
        "apgd-margin": APGD(steps=steps, loss="margin"),
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


def train_one(config: TrainConfig, train: Dataset, device: torch.device) -> tuple[Classifier, dict[str, Any]]:
    """Train a fresh ``mnist-cnn``: (classifier, wall / CPU seconds, load averages, events, log)."""
    load_before = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = AdversarialTrainer(config).fit(small.mnist_cnn(0).to(device), train)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    clf = Classifier(result.classifier.module.eval(), 10, input_shape=(1, 28, 28), name=config.recipe)
    facts = {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "events": result.log()["events"],
        "val_robust_per_epoch": [r.val_robust for r in result.history],
        "epochs_run": len(result.history),
    }
    return clf, facts


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
    """One table row: clean accuracy on all of ``test``, the worst case on ``n`` of its images."""
    device = clf.device
    clean = float(clf.predict(test.x.to(device)).cpu().eq(test.y).float().mean())
    entry: dict[str, Any] = {"recipe": name, "clean_accuracy": clean}
    if not args.no_eval:
        attacked = sample(test, n, seed=1)
        robust = worst_case(clf, attacked.x.to(device), attacked.y.to(device), args.apgd_steps, args.restarts)
        entry.update({f"robust_{k}": v for k, v in robust.items()})
    entry.update(extra)
    print(json.dumps({k: v for k, v in entry.items() if k != "val_robust_per_epoch"}), flush=True)
    return entry


def flags_run(args: argparse.Namespace, stem: Path) -> None:
    """``evasion evaluate`` (default suites, self-check) of the zoo's robust and distilled models.

    The acceptance: no attack-failure flag fires on ``mnist-cnn-pgd`` and its worst-case curve
    falls smoothly to <= 5% at a large epsilon; on ``mnist-cnn-distilled`` the gradient-masking
    flags fire (its white-box numbers are not to be trusted).
    """
    import tempfile

    from evasion.build import build
    from evasion.config import parse_config
    from evasion.evaluation import evaluate
    from evasion.reports.evaluation_report import masking_flags
    from evasion.store import RunStore

    grid = [0.1, 0.2, 0.3, 0.4, 0.5]
    raw = {
        "run": {"name": "adversarial-training-flags", "seed": 0, "batch_size": 200},
        "data": {"name": "mnist5k", "split": "test", "samples": args.samples, "shuffle": True},
        "models": [{"name": "mnist-cnn-pgd"}, {"name": "mnist-cnn-distilled"}],
        "epsilons": {"linf": grid},
    }
    config = parse_config(raw, source="benchmarks/adversarial_training.py --flags")
    device = torch.device(args.device)
    load_before = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    clfs, data, specs = build(config, device)
    with tempfile.TemporaryDirectory() as folder, RunStore(folder, config_text=config.to_toml()) as store:
        evaluate(clfs, data, specs, self_check=True, batch_size=200, seed=0, store=store)
        ev = store.evaluation(examples=False)
    models = {}
    for model in ev.models:
        worst = ev.worst_case(model, "linf")
        models[model] = {
            "worst_case": dict(zip([f"{e:g}" for e in worst.epsilons], worst.accuracy)),
            "flags": [c.to_dict() for c in ev.checks if c.model == model],
            "masking_flags": masking_flags(ev, model),
        }
    report = {
        "settings": {
            "samples": ev.samples,
            "epsilons": grid,
            "attacks": sorted({str(s.name) for s in specs}),
            "device": str(device),
            "torch": torch.__version__,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "wall_seconds": time.perf_counter() - wall0,
            "cpu_seconds": time.process_time() - cpu0,
        },
        "models": models,
    }
    lines = [
        "# Attack-failure checks on the robust and the distilled zoo models",
        "",
        f"`evasion evaluate` machinery (default suites, self-check) on {ev.samples} mnist5k test images, L∞ "
        f"grid {grid}; load average before {', '.join(f'{v:.2f}' for v in load_before)}.",
        "",
        "| model | " + " | ".join(f"eps {e:g}" for e in [0.0, *grid]) + " | flags | gradient masking |",
        "|---|" + "---|" * (len(grid) + 3),
    ]
    for model, entry in models.items():
        codes = sorted({f["code"] for f in entry["flags"]})
        lines.append(
            f"| {model} | "
            + " | ".join(f"{v:.3f}" for v in entry["worst_case"].values())
            + f" | {', '.join(codes) or 'none'} | {', '.join(entry['masking_flags']) or 'none'} |"
        )
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _num(r: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    value = r.get(key)
    return "n/a" if value is None else format(value, fmt)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Adversarial training on mnist5k (mnist-cnn, L∞ 0.3)",
        "",
        f"{s['train_samples']} training images, {s['epochs']} epochs, batch {s['batch_size']}, Adam lr {s['lr']} "
        f"unless the recipe says otherwise, epsilon warm-up over {s['epochs'] / 4:g} epochs, device "
        f"{s['device']}; worst case over APGD-CE and APGD-DLR ({s['apgd_steps']} steps, {s['restarts']} "
        f"restarts), APGD-T (2 targets) and APGD-margin ({s['apgd_steps']} steps), PGD-40 (margin) and FGSM "
        f"on {s['samples']} test images (fixed random sample); clean accuracy on all {s['test_samples']}. "
        f"{'Quick mode. ' if s['quick'] else ''}One torch thread on CPU; the machine may be shared, so wall "
        f"times are noisy (CPU times are steadier; the load averages are recorded per row). Load average "
        f"at the start: {', '.join(f'{v:.2f}' for v in s['loadavg'])}.",
        "",
        "| recipe | train images | clean acc | worst-case robust acc @0.3 | APGD-CE | APGD-DLR | APGD-T | "
        "wall s | CPU s | load (1 min) | events |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        load = r.get("loadavg_before")
        lines.append(
            f"| {r['recipe']} | {r['train_images']} | {r['clean_accuracy']:.3f} | "
            f"{_num(r, 'robust_worst_case')} | {_num(r, 'robust_apgd-ce')} | {_num(r, 'robust_apgd-dlr')} | "
            f"{_num(r, 'robust_apgd-t')} | {_num(r, 'wall_seconds', '.0f')} | {_num(r, 'cpu_seconds', '.0f')} | "
            f"{'n/a' if load is None else format(load[0], '.2f')} | {len(r.get('events', []))} |"
        )
    return "\n".join(lines) + "\n"


def _write(stem: Path, report: dict[str, Any]) -> None:
    """Write the JSON and markdown results (after every row: a killed run keeps what it measured)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))


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
    p.add_argument("--subset-recipe", default="pgd-10", help="the recipe of the --subsets rows")
    p.add_argument("--art", action="store_true", help="add ART's AdversarialTrainerMadryPGD")
    p.add_argument("--device", default="cpu", help="cpu (default: the timings of the acceptance), cuda")
    p.add_argument("--no-eval", action="store_true", help="clean accuracy and training time only")
    p.add_argument(
        "--out", type=Path, help="results file stem (default benchmarks/results/adversarial_training)"
    )
    p.add_argument(
        "--flags",
        action="store_true",
        help="only: evasion evaluate's checks on mnist-cnn-pgd and mnist-cnn-distilled (--samples images, default 200)",
    )
    args = p.parse_args()
    if args.flags:
        args.samples = args.samples or 200
        torch.set_num_threads(1)
        flags_run(args, args.out or RESULTS / "adversarial_training_flags")
        return
    epochs = args.epochs or (2 if args.quick else 12)
    args.samples = args.samples or (100 if args.quick else 500)
    args.apgd_steps = args.apgd_steps or (20 if args.quick else 100)
    args.restarts = args.restarts or (1 if args.quick else 5)
    device = torch.device(args.device)
    torch.set_num_threads(1)
    train, test = datasets.load("mnist5k", split="train"), datasets.load("mnist5k", split="test")
    if args.quick:
        train = sample(train, 1000)
    base = shared(epochs)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
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
            "evaluated": not args.no_eval,
            "epsilon": EPSILON,
            "device": str(device),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "recipes": {k: v for k, v in RECIPES.items() if k in args.recipes.split(",")},
        },
        "rows": rows,
    }
    stem = args.out or RESULTS / ("adversarial_training" + ("-quick" if args.quick else ""))
    jobs = [(name, train) for name in args.recipes.split(",") if name]
    jobs += [(args.subset_recipe, sample(train, int(n))) for n in args.subsets.split(",") if n]
    for name, data in jobs:
        if name not in RECIPES:
            raise SystemExit(f"unknown recipe {name!r}; valid: {', '.join(RECIPES)}")
        config = TrainConfig(**{**base, **RECIPES[name]})
        clf, facts = train_one(config, data, device)
        rows.append(row(name, clf, test, args.samples, args, train_images=len(data), **facts))
        _write(stem, report)
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
                    loadavg_before=list(os.getloadavg()),
                )
            )
    _write(stem, report)
    print(markdown(report))


if __name__ == "__main__":
    main()
