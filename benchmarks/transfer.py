"""Benchmark: attacks without the victim's gradients (substitute, transfer, universal) on MNIST.

Writes ``benchmarks/results/transfer.json`` and ``.md`` (and ``transfer.svg``, the heat map):

1. **substitute**: Papernot et al.'s substitute attack on each victim (default ``mnist-cnn`` and
   ``mnist-cnn-distilled``) with labels only: 150 held-out seed images (the first test images after a seeded shuffle),
   6 rounds of Jacobian augmentation (lambda 0.1), i.e. 4,800 label queries to train the
   substitute; then FGSM, PGD and MI-FGSM examples crafted on the substitute at L∞ 0.1 / 0.2 /
   0.3 are sent to the victim (the next ``--samples`` test images; one more label query each to
   verify, reported apart). Agreement = substitute's label equals the victim's on those images.
2. **matrix**: transfer success of MI-FGSM (L∞ 0.3 and 0.1) among the zoo models of input shape
   1x28x28 that are cached (or ``--models``), plus an ensemble row (mean logits of all of them);
   success counted on the samples each target classifies correctly.
3. **universal**: one perturbation per budget fitted on mnist-cnn with ``--fit`` training images;
   fooling rate (against clean predictions) on the held-out test images, L∞ and L2, and the same
   perturbation's fooling rate on the other same-shape models.

Run under ``nice -n 10``; the load average is recorded (wall times are indicative only).

    EVASION_CACHE=/work/.evcache nice -n 10 python benchmarks/transfer.py [--samples 500] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from evasion import ThreatModel, datasets, models
from evasion.access import Victim
from evasion.attacks import FGSM, MIFGSM, PGD, Attack
from evasion.attacks.substitute import Substitute
from evasion.attacks.universal import Universal, fooling_rate
from evasion.evaluation.transfer import transferability
from evasion.models.classifier import Classifier

RESULTS = Path(__file__).parent / "results"
SHAPE = (1, 28, 28)


def _cached_models() -> list[str]:
    """Zoo models of input shape 1x28x28 whose weights are already cached (no first-use training)."""
    from evasion._cache import cache_dir

    folder = cache_dir("models")
    names = [m.name for m in models.list_models() if tuple(m.input_shape) == SHAPE]
    return [n for n in names if (folder / f"{n}.pt").exists()]


def _transfer_attacks() -> dict[str, Attack]:
    return {"fgsm": FGSM(), "pgd": PGD(steps=20), "mifgsm": MIFGSM(steps=10)}


def substitute_section(
    victims: list[str], seeds: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> list[dict[str, Any]]:
    """Train one substitute per victim (labels only), then every transfer attack at every epsilon."""
    rows = []
    for name in victims:
        victim_model = models.load(name)
        start = time.perf_counter()
        report = Substitute(transfer=MIFGSM(steps=10)).run(
            victim_model,
            x,
            y,
            threat=ThreatModel("linf", 0.3),
            seeds=seeds,
            generator=torch.Generator().manual_seed(0),
        )
        seconds = time.perf_counter() - start
        sub = report.training.model
        clean = victim_model.predict(x)
        row: dict[str, Any] = {
            "victim": name,
            "victim_clean_accuracy": float((clean == y).float().mean()),
            "training_label_queries": report.training_queries,
            "agreement": report.agreement,
            "substitute_accuracy": float((sub.predict(x) == y).float().mean()),
            "rounds": [list(r) for r in report.training.rounds],
            "seconds_train_and_attack": round(seconds, 1),
            "headline_mifgsm_linf_0.3": report.transfer_success,
            "queries_median_per_sample": float(report.result.forwards.float().median()),
            "queries_max_per_sample": int(report.result.forwards.max()),
            "results": [],
        }
        ok = clean == y
        for eps in (0.1, 0.2, 0.3):
            for aname, attack in _transfer_attacks().items():
                victim = Victim(victim_model, view="labels")
                adv = attack.replace(early_stop=False)(
                    sub, x, y, threat=ThreatModel("linf", eps), generator=torch.Generator().manual_seed(0)
                ).adversarial
                pred = victim.labels(adv)
                fooled = pred != y
                row["results"].append(
                    {
                        "attack": aname,
                        "epsilon": eps,
                        "transfer_success": float(fooled.float().mean()),
                        "transfer_success_on_correct": float(fooled[ok].float().mean()),
                        "verification_queries": victim.queries,
                    }
                )
        rows.append(row)
        print(
            f"substitute {name}: agreement {report.agreement:.3f}, MI-FGSM 0.3 {report.transfer_success:.3f}",
            flush=True,
        )
    return rows


def matrix_section(names: list[str], x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    out = []
    for eps in (0.1, 0.3):
        m = transferability(names, names, (x, y), MIFGSM(steps=10), eps, ensemble=len(names) > 1)
        out.append(m.to_dict())
        if eps == 0.3:
            (RESULTS / "transfer.svg").write_text(m.heatmap_svg("MI-FGSM L∞ 0.3: transfer success"))
        print(f"matrix eps {eps}: {m.success}", flush=True)
    return out


def universal_section(
    names: list[str], fit: torch.Tensor, held_out: torch.Tensor, passes: int, budgets: dict[str, list[float]]
) -> list[dict[str, Any]]:
    source = models.load("mnist-cnn")
    others: dict[str, Classifier] = {n: models.load(n) for n in names if n != "mnist-cnn"}
    rows = []
    for norm, epsilons in budgets.items():
        for eps in epsilons:
            start = time.perf_counter()
            u = Universal(norm=norm, epsilon=eps, fooling=0.95, passes=passes)(
                source, fit, generator=torch.Generator().manual_seed(0)
            )
            rows.append(
                {
                    "norm": norm,
                    "epsilon": eps,
                    "fit_fooling_rate": u.fooling_rate,
                    "held_out_fooling_rate": fooling_rate(source, held_out, u),
                    "passes": u.passes,
                    "history": list(u.history),
                    "forwards": u.forwards,
                    "backwards": u.backwards,
                    "seconds": round(time.perf_counter() - start, 1),
                    "transfer": {n: fooling_rate(m, held_out, u) for n, m in others.items()},
                }
            )
            print(f"universal {norm} {eps}: held-out {rows[-1]['held_out_fooling_rate']:.3f}", flush=True)
    return rows


def _markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [
        "# Black-box transfer: substitute model, transferability matrix, universal perturbation",
        "",
        f"mnist5k; {cfg['samples']} attacked test images; load average at start {cfg['load_start']}, "
        f"at end {cfg['load_end']} (2 shared cores: wall times are indicative only). "
        "`python benchmarks/transfer.py` " + " ".join(cfg["argv"]),
        "",
    ]
    if cfg.get("skipped_sections_from_run"):
        prev = cfg["skipped_sections_from_run"]
        lines += [
            f"Skipped sections kept from the run `{' '.join(prev.get('argv', [])) or '(defaults)'}` "
            f"(load average at start {prev.get('load_start')}, at end {prev.get('load_end')}).",
            "",
        ]
    lines += [
        "## Substitute attack (labels only)",
        "",
        "Seeds: the first 150 test images after a seeded shuffle (held out from the attacked images); 6 rounds of Jacobian "
        "augmentation, lambda 0.1 (-0.1 for the first 3 augmentations, then +0.1, as in the reference tutorial), 10 epochs per round: "
        "4,800 label queries train the substitute (architecture: the zoo's MNIST CNN, fresh weights). "
        "Verification: one label query per attacked image (not an attacker cost). "
        "Success = victim wrong on the example (all images); on-correct = among the images the victim classifies correctly.",
        "",
        "| victim | clean acc. | training queries | agreement | attack | L∞ eps | success | success on correct |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in res["substitute"]:
        for r in row["results"]:
            lines.append(
                f"| {row['victim']} | {row['victim_clean_accuracy']:.3f} | {row['training_label_queries']} | "
                f"{row['agreement']:.3f} | {r['attack']} | {r['epsilon']} | {r['transfer_success']:.3f} | "
                f"{r['transfer_success_on_correct']:.3f} |"
            )
    lines += [
        "",
        "Substitute training per round (training points, agreement with the victim's labels on them):",
        "",
    ]
    for row in res["substitute"]:
        lines.append(
            f"- {row['victim']}: {row['rounds']} ({row['seconds_train_and_attack']} s train + attack)"
        )
    for m in res["matrix"]:
        c = m["config"]
        lines += [
            "",
            f"## Transfer matrix: {c['attack']}, {c['norm']} eps {c['epsilon']}",
            "",
            "Rows: crafted on; columns: evaluated on; success among the samples the target classifies correctly "
            f"(counts {m['counts']}). Diagonal = white-box success.",
            "",
            "| crafted on \\ evaluated on | " + " | ".join(m["targets"]) + " |",
            "| --- |" + " --- |" * len(m["targets"]),
        ]
        for name, row in zip(m["sources"], m["success"]):
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += [
        "",
        "![transfer heat map](transfer.svg)",
        "",
        "## Universal perturbation (fitted on mnist-cnn)",
        "",
        f"Fitted on {res['config']['fit']} training images; fooling rate = prediction changes w.r.t. the "
        "model's own clean prediction, on the held-out test images; transfer = the same perturbation on the other models.",
        "",
    ]
    others = list(res["universal"][0]["transfer"]) if res["universal"] else []
    lines += [
        "| norm | eps | passes | fit fooling | held-out fooling | " + " | ".join(others) + " |",
        "| --- | --- | --- | --- | --- |" + " --- |" * len(others),
    ]
    for r in res["universal"]:
        lines.append(
            f"| {r['norm']} | {r['epsilon']} | {r['passes']} | {r['fit_fooling_rate']:.3f} | "
            f"{r['held_out_fooling_rate']:.3f} | "
            + " | ".join(f"{r['transfer'][n]:.3f}" for n in others)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500, help="attacked / held-out test images")
    parser.add_argument(
        "--fit", type=int, default=300, help="training images the universal perturbation is fitted on"
    )
    parser.add_argument("--passes", type=int, default=3, help="universal-perturbation passes")
    parser.add_argument("--victims", default="mnist-cnn,mnist-cnn-distilled")
    parser.add_argument(
        "--models", default="", help="comma-separated 1x28x28 models (default: the cached ones)"
    )
    parser.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: substitute,matrix,universal"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = [round(v, 2) for v in os.getloadavg()]
    # the files are sorted by class: shuffle (seeded) before taking seeds, attacked and fitting images
    test, train = datasets.load("mnist5k", "test").shuffled(0), datasets.load("mnist5k", "train").shuffled(0)
    seeds = test.x[:150]
    x, y = test.x[150 : 150 + args.samples], test.y[150 : 150 + args.samples]
    names = [n for n in args.models.split(",") if n] or _cached_models()
    skip = set(args.skip.split(","))
    budgets = {"linf": [0.1, 0.2, 0.3], "l2": [2.0, 4.0, 6.0]}
    if args.quick:
        budgets = {"linf": [0.1], "l2": [2.0]}
    res: dict[str, Any] = {"config": {}, "substitute": [], "matrix": [], "universal": []}
    merged_from: dict[str, Any] = {}
    previous = RESULTS / "transfer.json"
    if skip - {""} and previous.exists():  # a skipped section keeps its last results
        old = json.loads(previous.read_text())
        res.update({k: old.get(k, []) for k in ("substitute", "matrix", "universal") if k in skip})
        merged_from = old.get("config", {})
    if "substitute" not in skip:
        res["substitute"] = substitute_section([v for v in args.victims.split(",") if v], seeds, x, y)
    if "matrix" not in skip:
        res["matrix"] = matrix_section(names, x, y)
    if "universal" not in skip:
        res["universal"] = universal_section(names, train.x[: args.fit], x, args.passes, budgets)
    res["config"] = {
        "samples": int(x.shape[0]),
        "fit": args.fit,
        "models": names,
        "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "threads": torch.get_num_threads(),
        "argv": sys.argv[1:],
        "skipped_sections_from_run": merged_from,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transfer.json").write_text(json.dumps(res, indent=2))
    (RESULTS / "transfer.md").write_text(_markdown(res))
    print(f"wrote {RESULTS / 'transfer.md'}")


if __name__ == "__main__":
    main()
