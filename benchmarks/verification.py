"""Verification: soundness, the order of the bounds, the attack gap, and speed.

    python benchmarks/verification.py            # the acceptance settings (lead's run, ~1-2 h on 2 cores)
    python benchmarks/verification.py --quick    # 30 images, small time limits, 50 CNN images

Models: ``mlp-2x64`` (784-64-64-10 ReLU MLP trained here on the mnist5k train split, 10 epochs,
seed 0) and the zoo's ``mnist-cnn`` (MaxPool: IBP and CROWN only, the MILP does not encode it).
Images: the first ``--images`` of the mnist5k test split.

* **Soundness**: every sample certified by IBP, CROWN or MILP is attacked by every attack of the
  toolkit that applies to an L∞ ball (default parameters; DeepFool's minimal points count when
  inside the ball) and by ``--random`` random points of the ball (half uniform, half corners);
  one broken certified sample is a soundness failure. Every MILP counterexample is re-checked
  (fresh prediction, inside the ball).
* **Order** per sample: IBP margin bound <= CROWN <= exact MILP margin (``exact=True`` on
  ``--order-images`` images), violations counted.
* **Attack gap** (MLP, three epsilons): exact robust accuracy by MILP (robust / not-robust /
  unknown at the per-sample time limit) against evasion's default suite with its self-check
  (``evasion.evaluate``), and torchattacks' AutoAttack (standard) when installed; the samples
  the MILP shows breakable that an attack left unbroken are named.
* **Speed**: CROWN on ``mnist-cnn`` over ``--cnn-images`` images; MILP seconds per sample.

Every result records ``os.getloadavg()``: the machine may be shared, read times with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import evasion
from evasion import attacks, datasets, models
from evasion.evaluation.curves import MISCLASSIFIED, worst_status
from evasion.models.classifier import Classifier
from evasion.models.training import train_classifier
from evasion.verification import Certificate, certify
from evasion.verification.certificate import domain_for

RESULTS = Path(__file__).parent / "results"
#: attacks that do not apply to an L∞ ball on a plain classifier, and why
SKIPPED = {
    "cw-l2": "L2 only",
    "dynamic": "needs a detector",
    "substitute": "transfer attack (trains a surrogate): not run here",
    "onepixel": "L0",
    "jsma": "L0",
}


def train_mlp(seed: int = 0) -> Classifier:
    """The 2x64 ReLU MLP, trained on mnist5k's train split (deterministic under the seed)."""
    torch.manual_seed(seed)
    body = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    train = datasets.load("mnist5k", split="train")
    train_classifier(body, train, epochs=10, lr=1e-3, batch_size=128, seed=seed)
    return Classifier(body.eval(), 10, input_shape=(1, 28, 28), name="mlp-2x64")


def _broken(model: Classifier, x: Tensor, y: Tensor, adv: Tensor, eps: float) -> Tensor:
    """Misclassified by a fresh prediction and inside the ball (float slack 1e-6)."""
    inside = (adv - x).flatten(1).abs().amax(1) <= eps + 1e-6
    inside &= (adv >= 0).flatten(1).all(1) & (adv <= 1).flatten(1).all(1)
    return (model.predict(adv) != y) & inside


def attack_all(model: Classifier, x: Tensor, y: Tensor, eps: float, random_points: int) -> dict[str, Tensor]:
    """Per attack: which samples it breaks (and the random points of the ball)."""
    threat = evasion.ThreatModel("linf", eps)
    out: dict[str, Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    for name, cls in sorted(attacks.REGISTRY.items()):
        if name in SKIPPED or "linf" not in getattr(cls, "norms", ()):
            continue
        runs = {name: cls()}
        if name == "apgd":
            runs["apgd-dlr"] = attacks.APGD(loss="dlr")
            runs["apgd-t"] = attacks.APGD(loss="dlr", targets=3)
        for label, attack in runs.items():
            res = attack(
                model,
                x,
                y,
                threat=threat if not attack.minimum_norm else threat.with_epsilon(float("inf")),
                generator=gen,
            )
            out[label] = _broken(model, x, y, res.adversarial.detach(), eps)
    dom = domain_for(x, threat)
    hit = torch.zeros(x.shape[0], dtype=torch.bool)
    for i in range(random_points):
        u = torch.rand(x.shape, generator=gen)
        z = dom.lower + (dom.upper - dom.lower) * (u if i % 2 else (u < 0.5).to(x.dtype))
        hit |= _broken(model, x, y, z, eps)
    out[f"random-{random_points}"] = hit
    return out


def soundness(
    model: Classifier, x: Tensor, y: Tensor, eps: float, certs: dict[str, Certificate], random_points: int
) -> dict[str, Any]:
    """Attack the samples any method certified; count certified samples an attack broke."""
    union = torch.zeros(x.shape[0], dtype=torch.bool)
    for cert in certs.values():
        union |= cert.certified
    idx = union.nonzero().flatten()
    row: dict[str, Any] = {"epsilon": eps, "certified": {m: int(c.certified.sum()) for m, c in certs.items()}}
    if idx.numel() == 0:
        row.update(broken_certified={}, attacks=[])
        return row
    broken = attack_all(model, x[idx], y[idx], eps, random_points)
    row["attacks"] = sorted(broken)
    row["broken_certified"] = {
        m: [
            int(idx[j])
            for j in range(idx.numel())
            if bool(c.certified[idx[j]]) and any(bool(b[j]) for b in broken.values())
        ]
        for m, c in certs.items()
    }
    milp = certs.get("milp")
    if milp is not None and milp.counterexample is not None:
        bad = [
            i for i, adv in enumerate(milp.counterexample)
            if adv is not None and not bool(_broken(model, x[i : i + 1], y[i : i + 1], adv[None], eps)[0])
        ]  # fmt: skip
        row["counterexamples"] = sum(a is not None for a in milp.counterexample)
        row["counterexamples_not_adversarial"] = bad
    return row


def evasion_suite(model: Classifier, x: Tensor, y: Tensor, grid: list[float]) -> dict[float, Tensor]:
    """Per epsilon: the samples evasion's default suite (and its self-check) breaks."""
    ev = evasion.evaluate(model, (x, y), epsilons={"linf": grid}, seed=0)
    name = ev.models[0]
    names = [s.name for s in ev.specs.values() if s.norm == "linf" and not s.targeted and s.applies_to(name)]
    steps = worst_status([ev._steps(name, a) for a in names])
    return {float(e): torch.from_numpy(np.asarray(st) == MISCLASSIFIED) for e, st in steps if e > 0}


def autoattack(model: Classifier, x: Tensor, y: Tensor, eps: float) -> Tensor | None:
    try:
        import torchattacks
    except ImportError:
        return None
    aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    return _broken(model, x, y, aa(x, y).detach(), eps)


def gap(
    model: Classifier, x: Tensor, y: Tensor, grid: list[float], time_limit: float, random_points: int
) -> list[dict[str, Any]]:
    rows = []
    suite = evasion_suite(model, x, y, grid)
    for eps in grid:
        threat = evasion.ThreatModel("linf", eps)
        certs = {
            m: certify(model, x, y, threat=threat, method=m, time_limit=time_limit)
            for m in ("ibp", "crown", "milp")
        }
        milp = certs["milp"]
        assert milp.status is not None and milp.sample_seconds is not None
        breakable = torch.tensor([s == "not-robust" for s in milp.status])
        robust = torch.tensor([s == "robust" for s in milp.status])
        attacked = {"evasion": suite[eps], "autoattack": autoattack(model, x, y, eps)}
        row: dict[str, Any] = {
            "epsilon": eps,
            "n": int(x.shape[0]),
            "certified_ibp": float(certs["ibp"].certified.float().mean()),
            "certified_crown": float(certs["crown"].certified.float().mean()),
            "exact_robust": float(robust.float().mean()),
            "milp_unknown": int((~robust & ~breakable).sum()),
            "milp_seconds": _stats(milp.sample_seconds),
            "milp_notes": list(milp.notes),
            "crown_seconds": certs["crown"].seconds,
        }
        for who, broken in attacked.items():
            if broken is None:
                row[who] = None
                continue
            row[who] = {
                "accuracy": float((~broken).float().mean()),
                "missed": (breakable & ~broken).nonzero().flatten().tolist(),
                "broke_milp_robust": (robust & broken).nonzero().flatten().tolist(),
            }
        row["soundness"] = soundness(model, x, y, eps, certs, random_points)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)  # soundness too: a killed run keeps it
    return rows


def order(
    model: Classifier, x: Tensor, y: Tensor, eps: float, exact_milp: bool, time_limit: float
) -> dict[str, Any]:
    threat = evasion.ThreatModel("linf", eps)
    ibp = certify(model, x, y, threat=threat, method="ibp")
    crown = certify(model, x, y, threat=threat, method="crown")
    row: dict[str, Any] = {
        "epsilon": eps,
        "n": int(x.shape[0]),
        "ibp_above_crown": int((ibp.margin_lower > crown.margin_lower + 1e-6).sum()),
        "mean_margin_ibp": float(ibp.margin_lower.mean()),
        "mean_margin_crown": float(crown.margin_lower.mean()),
    }
    if exact_milp:
        milp = certify(model, x, y, threat=threat, method="milp", exact=True, time_limit=time_limit)
        assert milp.margin_upper is not None and milp.status is not None
        solved = milp.margin_upper - milp.margin_lower <= 1e-3  # the exact margin bracketed
        row["crown_above_exact"] = int(((crown.margin_lower > milp.margin_upper + 1e-5) & solved).sum())
        row["exact_solved"] = int(solved.sum())
        row["mean_margin_exact"] = float(milp.margin_upper[solved].mean()) if bool(solved.any()) else None
    return row


def _stats(t: Tensor) -> dict[str, float]:
    v = t.double()
    return {
        "median": float(v.median()),
        "p90": float(v.quantile(0.9)),
        "max": float(v.max()),
        "total": float(v.sum()),
    }


def cnn(n_images: int, grid: list[float], random_points: int, sound_images: int) -> dict[str, Any]:
    model = models.load("mnist-cnn")
    test = datasets.load("mnist5k", split="test")
    x, y = test.x[:n_images], test.y[:n_images]
    out: dict[str, Any] = {"images": n_images, "rows": []}
    for eps in grid:
        threat = evasion.ThreatModel("linf", eps)
        load = os.getloadavg()
        ibp = certify(model, x, y, threat=threat, method="ibp")
        crown = certify(model, x, y, threat=threat, method="crown")
        row = {
            "epsilon": eps,
            "loadavg": list(load),
            "certified_ibp": ibp.certified_accuracy,
            "certified_crown": crown.certified_accuracy,
            "ibp_seconds": ibp.seconds,
            "crown_seconds": crown.seconds,
            "crown_per_image_ms": 1000 * crown.seconds / n_images,
            "ibp_above_crown": int((ibp.margin_lower > crown.margin_lower + 1e-6).sum()),
            "notes": list(crown.notes),
        }
        k = min(sound_images, n_images)
        row["soundness"] = soundness(
            model, x[:k], y[:k], eps, {"ibp": _take(ibp, k), "crown": _take(crown, k)}, random_points
        )
        out["rows"].append(row)
        print(json.dumps(row, default=str), flush=True)
    return out


def _take(cert: Certificate, k: int) -> Certificate:
    from dataclasses import replace

    return replace(
        cert,
        certified=cert.certified[:k],
        margin_lower=cert.margin_lower[:k],
        clean_correct=cert.clean_correct[:k],
    )


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "# Verification benchmark",
        "",
        f"Settings: {json.dumps(s)}; load average at start {res['loadavg_start']}, at end {res['loadavg_end']}.",
        f"MLP clean accuracy (mnist5k test, all images): {_fmt(res.get('mlp_clean_accuracy'))}.",
        "",
        "## The sandwich and the attack gap (mlp-2x64, L∞)",
        "",
        "certified (IBP, CROWN) <= exact robust (MILP) <= attacked (evasion's default suite, AutoAttack).",
        "",
        "| eps | certified IBP | certified CROWN | exact (MILP) | MILP unknown | evasion attacked | AutoAttack | evasion missed | AutoAttack missed | MILP s/sample (median / p90 / max) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res.get("gap", []):
        ev, aa, ms = r["evasion"], r["autoattack"], r["milp_seconds"]
        lines.append(
            f"| {r['epsilon']:g} | {r['certified_ibp']:.3f} | {r['certified_crown']:.3f} | {r['exact_robust']:.3f} "
            f"| {r['milp_unknown']} | {ev['accuracy']:.3f} | {_fmt(aa and aa['accuracy'])} | {ev['missed'] or 'none'} "
            f"| {(aa['missed'] or 'none') if aa else 'n/a'} | {ms['median']:.2f} / {ms['p90']:.2f} / {ms['max']:.2f} |"
        )
    lines += ["", "Samples an attack broke although the MILP proved them robust (must be empty): "]
    lines += [
        f"- eps {r['epsilon']:g}: evasion {r['evasion']['broke_milp_robust']}, "
        f"AutoAttack {r['autoattack']['broke_milp_robust'] if r['autoattack'] else 'n/a'}"
        for r in res.get("gap", [])
    ]
    lines += [
        "",
        "## Soundness",
        "",
        "| model | eps | certified (per method) | attacks run | certified samples broken | MILP counterexamples not adversarial |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    sound = [("mlp-2x64", r["soundness"]) for r in res.get("gap", [])] + [
        ("mnist-cnn", r["soundness"]) for r in res.get("cnn", {}).get("rows", [])
    ]
    for name, r in sound:
        lines.append(
            f"| {name} | {r['epsilon']:g} | {r['certified']} | {len(r['attacks'])} | {r['broken_certified']} "
            f"| {r.get('counterexamples_not_adversarial', 'n/a')} (of {r.get('counterexamples', 0)}) |"
        )
    if sound:
        lines += [
            "",
            f"Attacks: {', '.join(sound[0][1]['attacks'])}. Not run: "
            + "; ".join(f"{k} ({v})" for k, v in SKIPPED.items())
            + ".",
        ]
    lines += [
        "",
        "## Order per sample (IBP <= CROWN <= exact)",
        "",
        "| model | eps | n | IBP > CROWN | CROWN > exact | exact solved | mean margin IBP / CROWN / exact |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res.get("order", []):
        lines.append(
            f"| mlp-2x64 | {r['epsilon']:g} | {r['n']} | {r['ibp_above_crown']} | {r.get('crown_above_exact', 'n/a')} "
            f"| {r.get('exact_solved', 'n/a')} | {r['mean_margin_ibp']:.3f} / {r['mean_margin_crown']:.3f} / {_fmt(r.get('mean_margin_exact'))} |"
        )
    for r in res.get("cnn", {}).get("rows", []):
        lines.append(
            f"| mnist-cnn | {r['epsilon']:g} | {res['cnn']['images']} | {r['ibp_above_crown']} | n/a | n/a | n/a |"
        )
    if "cnn" in res:
        lines += [
            "",
            f"## Speed: mnist-cnn, {res['cnn']['images']} images",
            "",
            "| eps | certified IBP | certified CROWN | IBP s | CROWN s | CROWN ms/image | load average | notes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in res["cnn"]["rows"]:
            lines.append(
                f"| {r['epsilon']:g} | {r['certified_ibp']:.3f} | {r['certified_crown']:.3f} | {r['ibp_seconds']:.1f} "
                f"| {r['crown_seconds']:.1f} | {r['crown_per_image_ms']:.0f} | {[round(v, 2) for v in r['loadavg']]} | {'; '.join(r['notes']) or ''} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small settings (a look, not the acceptance)")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--epsilons", default="0.02,0.04,0.06")
    p.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per sample")
    p.add_argument("--random", type=int, default=1000, help="random points of the ball per certified sample")
    p.add_argument("--order-images", type=int, default=30)
    p.add_argument("--cnn-images", type=int, default=1000)
    p.add_argument("--cnn-epsilons", default="0.01,0.02")
    p.add_argument(
        "--cnn-sound-images", type=int, default=200, help="mnist-cnn images attacked for soundness"
    )
    p.add_argument("--no-cnn", action="store_true")
    p.add_argument(
        "--only-cnn",
        action="store_true",
        help="only the mnist-cnn part (CROWN speed, soundness): verification-cnn.*",
    )
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.quick:
        a.images, a.time_limit, a.random, a.order_images, a.cnn_images, a.cnn_sound_images = (
            30,
            10.0,
            100,
            10,
            50,
            20,
        )
    torch.set_num_threads(a.threads)
    grid = [float(e) for e in a.epsilons.split(",")]
    res: dict[str, Any] = {"settings": vars(a), "loadavg_start": list(os.getloadavg())}
    start = time.perf_counter()
    if not a.only_cnn:
        mlp = train_mlp()
        test = datasets.load("mnist5k", split="test")
        res["mlp_clean_accuracy"] = float((mlp.predict(test.x) == test.y).float().mean())
        x, y = test.x[: a.images], test.y[: a.images]
        res["gap"] = gap(mlp, x, y, grid, a.time_limit, a.random)
        res["order"] = [
            order(mlp, x[: a.order_images], y[: a.order_images], e, True, a.time_limit) for e in grid
        ]
    if not a.no_cnn:
        res["cnn"] = cnn(
            a.cnn_images, [float(e) for e in a.cnn_epsilons.split(",")], a.random, a.cnn_sound_images
        )
    res["loadavg_end"] = list(os.getloadavg())
    res["seconds"] = time.perf_counter() - start
    name = "verification-quick" if a.quick else "verification"
    name = "verification-cnn" if a.only_cnn else name
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
    (RESULTS / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
