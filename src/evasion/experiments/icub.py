"""`evasion reproduce icub`: Melis et al. 2017, "Is Deep Learning Safe for Robot Vision?".

The iCub pipeline on simulated robot-eye views (``icub-sim``): EfficientNet-Lite0 deep features
with one-vs-all SVM heads (linear, RBF, RBF with the reject option = SVM-adv, and SVM-adv with the
conservative "+5% FNR" threshold), attacked end to end through the network (pixels) with the
maximum-confidence evasion. The report holds the paper's Fig. 5 (accuracy vs. number of objects),
Fig. 6 (security curves, error-generic and error-specific, averaged over session splits), Fig. 7
(adversarial images, the sticker attack), the deep-feature sensitivity of Sect. 5, and a written
interpretation generated from the numbers. Features for fitting are cached per dataset checksum.

``--quick`` (CI-sized): the 7-object quick set, one split, few images and steps.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import datasets
from ..attacks.max_confidence import MaxConfidence, minimum_budget, sticker_mask
from ..datasets.icub_sim import split_indices
from ..defenses.reject import ThresholdReject, calibrate_threshold
from ..errors import ConfigError
from ..evaluation import AttackSpec, Evaluation, evaluate
from ..evaluation.sensitivity import PAPER_EPSILON, feature_sensitivity
from ..models.classifier import REJECT, Classifier
from ..models.deep_features import DeepFeatureClassifier, default_extractor, extract_features
from ..models.heads import (
    PAPER_C_GRID,
    PAPER_GAMMA_GRID,
    LinearSVMHead,
    RBFSVMHead,
    one_vs_all_cv,
    out_of_fold_scores,
)
from ..threat_model import ThreatModel
from .icub_report import acceptance, average_curves, baseline_curve, interpret, write_report

__all__ = [
    "FULL",
    "MODELS",
    "QUICK",
    "SetData",
    "Settings",
    "SplitModels",
    "add_arguments",
    "run",
    "run_experiment",
]

#: the four classifiers of the paper's Fig. 6, in plotting order
MODELS = ("SVM", "SVM-RBF", "SVM-adv", "SVM-adv +5% FNR")


@dataclass(frozen=True)
class Settings:
    """The size of a run (the full run and ``--quick`` differ only in these numbers)."""

    main: str  # dataset of the 7-object set (its first 7 classes)
    fine: str | None  # finer-grained set (all its classes), or None
    baseline: str  # dataset of Fig. 5 (accuracy vs. number of objects)
    baseline_repeats: int
    splits: int  # session splits averaged (test session 3, then 2, 1, 0)
    samples: int  # attacked test images per split, 7-object set
    fine_samples: int
    epsilons: tuple[float, ...]  # L2 budgets of the curves (pixels in [0, 1])
    steps: int
    cv_per_class: int  # training samples per class used to choose C and gamma (0 = all)
    sensitivity_samples: int
    sensitivity_steps: int
    sticker_samples: int
    sticker_epsilons: tuple[float, ...]
    sticker_models: tuple[str, ...]
    example_epsilons: tuple[float, ...]
    batch_size: int = 32
    seed: int = 0


QUICK = Settings(
    main="icub-sim-quick",
    fine=None,
    baseline="icub-sim-quick",
    baseline_repeats=10,
    splits=1,
    samples=7,
    fine_samples=0,
    epsilons=(0.05, 0.1, 0.2, 0.4),
    steps=5,
    cv_per_class=0,
    sensitivity_samples=7,
    sensitivity_steps=5,
    sticker_samples=2,
    sticker_epsilons=(0.5, 1.0, 2.0, 4.0),
    sticker_models=("SVM-adv",),
    example_epsilons=(0.1, 0.2, 0.4),
)
FULL = Settings(
    main="icub-sim",
    fine="icub-sim-fine",
    baseline="icub-sim-fine",
    baseline_repeats=20,
    splits=2,
    samples=14,
    fine_samples=14,
    epsilons=(0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5),
    steps=10,
    cv_per_class=25,
    sensitivity_samples=28,
    sensitivity_steps=10,
    sticker_samples=7,
    sticker_epsilons=(0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    sticker_models=("SVM", "SVM-adv"),
    example_epsilons=(0.05, 0.1, 0.2, 0.5),
)


@dataclass
class SetData:
    """One object set: images, labels, sessions, cached deep features."""

    label: str
    name: str
    x: Tensor
    y: Tensor
    classes: list[str]
    session: Tensor
    z: Tensor
    sha256: str
    render_seconds: float | None


@dataclass
class SplitModels:
    """The four classifiers fit on one session split, with the facts about them."""

    data: SetData
    train: np.ndarray
    test: np.ndarray
    models: dict[str, Classifier]
    target: int
    facts: dict[str, Any] = field(default_factory=dict)

    def pick(self, rows: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` of ``rows``, spread over the classes (round robin in a seeded order)."""
        rng = np.random.default_rng(seed)
        y = self.data.y[rows].numpy()
        queues = [list(rng.permutation(rows[y == c])) for c in rng.permutation(len(self.data.classes))]
        out: list[int] = []
        while len(out) < min(n, len(rows)):
            for q in queues:
                if q and len(out) < n:
                    out.append(int(q.pop()))
        return np.asarray(sorted(out), dtype=np.int64)

    def attacked(self, n: int, seed: int, train: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` test (or training) images, their labels and error-specific targets."""
        rows = self.pick(self.train if train else self.test, n, seed)
        y = self.data.y[rows]
        c = len(self.data.classes)
        target = torch.where(y == self.target, (self.target + 1) % c, torch.full_like(y, self.target))
        return self.data.x[rows], y, target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI-sized run: 7 objects, 1 split, few images")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/icub[-quick])")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, targets and attacks")
    parser.add_argument("--samples", type=int, default=None, help="attacked test images per split")
    parser.add_argument("--steps", type=int, default=None, help="attack steps per budget")
    parser.add_argument("--splits", type=int, default=None, help="session splits to average (1-4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    """CLI entry point: run, write the report and the results JSON, print a summary."""
    settings = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("samples", "steps", "splits") if getattr(args, k) is not None}
    for key, value in overrides.items():
        if value < 1 or (key == "splits" and value > 4):
            raise ConfigError(f"--{key} must be {'1-4' if key == 'splits' else '>= 1'}, got {value}")
    settings = replace(settings, seed=args.seed, **overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = args.out or Path("runs") / ("icub-quick" if args.quick else "icub")
    results, figures = run_experiment(settings, log=print)
    out.mkdir(parents=True, exist_ok=True)
    (out / "icub-results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    report = write_report(results, figures, out / "icub-report.html")
    print(f"report: {report}")
    for line in results["interpretation"]:
        print(f"- {line}")
    return 0


def run_experiment(
    settings: Settings, log: Callable[[str], None] = lambda _: None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything but the files: returns the JSON-able results and the figures' images."""
    clock = _Clock(log)
    extractor = default_extractor()
    linear: dict[str, Any] = {"dataset": settings.main}
    sets = [load_set("7 objects", settings.main, 7, extractor, linear)]
    if settings.fine:
        sets.append(load_set("", settings.fine, 0, extractor))
    clock.lap("data and deep features")
    results: dict[str, Any] = {"settings": asdict(settings), "timing": clock.laps, "sets": {}, "curves": {}}
    base = next(s for s in sets if s.name == settings.baseline)
    results["baseline"] = baseline_curve(
        base.z, base.y, base.session, base.label, settings.baseline_repeats, settings.seed
    )
    clock.lap("baseline accuracy vs. number of objects (Fig. 5)")
    first: SplitModels | None = None
    for data in sets:
        samples = settings.samples if data is sets[0] else settings.fine_samples
        per_split = []
        for s in range(settings.splits):
            fitted = fit_split(data, 3 - s, settings, s, extractor)
            first = first or fitted
            per_split.append(_security(fitted, settings, samples, s, log))
        results["sets"][data.label] = {
            "splits": [p["facts"] for p in per_split],
            "dataset": data.name,
            "classes": len(data.classes),
            "images": len(data.y),
            "sha256": data.sha256,
            "render_seconds_per_view": data.render_seconds,
        }
        results["curves"][data.label] = average_curves([p["curves"] for p in per_split])
        clock.lap(f"security curves, {data.label} (Fig. 6)")
    assert first is not None
    results["sensitivity"] = _sensitivity(first, settings, extractor)
    clock.lap("deep-feature sensitivity (Sect. 5)")
    results["examples"], figures = _examples(first, settings)
    clock.lap("adversarial examples and stickers (Fig. 7)")
    results["acceptance"] = {**acceptance(results), "linear_svm_all_classes": linear}
    results["interpretation"] = interpret(results)
    clock.finish()
    return results, figures


class _Clock:
    """Wall-clock seconds per phase (and this process's CPU seconds, robust on a shared machine)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.laps: dict[str, float] = {}
        self.start = self.last = time.perf_counter()
        self.cpu_start = self.cpu_last = time.process_time()

    def lap(self, what: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[what] = round(now - self.last, 1)
        self.log(
            f"[{now - self.start:7.1f}s] {what}: {now - self.last:.1f}s wall, {cpu - self.cpu_last:.1f}s CPU"
        )
        self.last, self.cpu_last = now, cpu

    def finish(self) -> None:
        self.laps["total"] = round(time.perf_counter() - self.start, 1)
        self.laps["total CPU"] = round(time.process_time() - self.cpu_start, 1)
        self.laps["torch threads"] = torch.get_num_threads()


def load_set(
    label: str, name: str, keep: int, extractor: nn.Module, accuracy: dict[str, Any] | None = None
) -> SetData:
    """A dataset (rendered on first use), its first ``keep`` classes (0: all) and their features.

    ``accuracy``: filled with the linear SVM's clean accuracy on *all* the dataset's classes, for
    a held-out session and for held-out viewpoints (the issue's acceptance check).
    """
    ds = datasets.load(name, "all")
    z = extract_features(extractor, ds.x, cache_key=str(ds.meta["sha256"]))
    session = ds.meta["session"]
    assert isinstance(session, Tensor)
    if accuracy is not None:
        meta = {"session": session.numpy(), "yaw": np.asarray(ds.meta["yaw"])}
        for mode in ("session", "view"):
            tr, te = split_indices(meta, mode)
            head = LinearSVMHead().fit(z[tr], ds.y[tr])
            accuracy[f"split by {mode}"] = float((head(z[te]).argmax(1) == ds.y[te]).float().mean())
        accuracy["classes"] = len(ds.classes)
    rows = torch.arange(len(ds.y)) if not keep else (ds.y < keep).nonzero()[:, 0]
    classes = ds.classes[:keep] if keep else ds.classes
    seconds = ds.meta.get("render_seconds_per_view")
    return SetData(
        label or f"{len(classes)} instances",
        name,
        ds.x[rows],
        ds.y[rows],
        list(classes),
        session[rows],
        z[rows],
        str(ds.meta["sha256"]),
        float(seconds) if isinstance(seconds, (int, float)) else None,
    )


def _cv_rows(y: Tensor, per_class: int, seed: int) -> np.ndarray:
    if not per_class:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    return np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    )


def fit_split(
    data: SetData, test_session: int, settings: Settings, index: int, extractor: nn.Module
) -> SplitModels:
    """Fit SVM, SVM-RBF, SVM-adv and SVM-adv +5% FNR on the sessions other than ``test_session``."""
    train, test = split_indices({"session": data.session.numpy()}, "session", [test_session])
    z_tr, y_tr, z_te, y_te = data.z[train], data.y[train], data.z[test], data.y[test]
    cv = _cv_rows(y_tr, settings.cv_per_class, settings.seed + index)
    start = time.perf_counter()
    grid_lin = one_vs_all_cv(z_tr[cv], y_tr[cv], PAPER_C_GRID, (None,), seed=settings.seed)
    grid_rbf = one_vs_all_cv(z_tr[cv], y_tr[cv], PAPER_C_GRID, PAPER_GAMMA_GRID, seed=settings.seed)
    heads = {
        "SVM": LinearSVMHead().fit(z_tr, y_tr, cv=grid_lin),
        "SVM-RBF": RBFSVMHead().fit(z_tr, y_tr, cv=grid_rbf),
        "SVM-adv": RBFSVMHead(cv_threshold=0.0).fit(z_tr, y_tr, cv=grid_rbf),
    }
    theta = calibrate_threshold(
        out_of_fold_scores(heads["SVM-adv"], z_tr, y_tr, seed=settings.seed), y_tr, 0.05
    )
    nets = {
        k: DeepFeatureClassifier(h, extractor, class_names=data.classes, name=k) for k, h in heads.items()
    }
    models: dict[str, Classifier] = {
        "SVM": nets["SVM"],
        "SVM-RBF": nets["SVM-RBF"],
        "SVM-adv": ThresholdReject(nets["SVM-adv"], 0.0, name="SVM-adv"),
        "SVM-adv +5% FNR": ThresholdReject(nets["SVM-adv"], theta, name="SVM-adv +5% FNR"),
    }
    facts: dict[str, Any] = {
        "test_session": test_session,
        "train": len(train),
        "test": len(test),
        "fit_seconds": round(time.perf_counter() - start, 1),
        "models": {},
    }
    for name, model in models.items():
        head = heads["SVM-adv" if name.startswith("SVM-adv") else name]
        scores = head(z_te)
        if isinstance(model, ThresholdReject):
            scores = model.with_reject(scores)
        pred = model.decide(scores)
        facts["models"][name] = {
            "C": head.c,
            "gamma": getattr(head, "gamma", None),
            "support_vectors": head.support_vectors,
            "clean_accuracy": float((pred == y_te).float().mean()),
            "clean_rejected": float((pred == REJECT).float().mean()),
            "sklearn_max_abs_diff": float(
                (head.sklearn_decision_function(z_te) - head(z_te).double()).abs().max()
            ),
            "theta": model.theta.tolist() if isinstance(model, ThresholdReject) else None,
        }
    target = int(np.random.default_rng(settings.seed + index).integers(len(data.classes)))
    return SplitModels(data, train, test, models, target, facts)


def _security(
    fitted: SplitModels, settings: Settings, samples: int, split: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Error-generic and error-specific max-confidence curves of the four models on one split."""
    x, y, target = fitted.attacked(samples, settings.seed + split)
    kw: dict[str, Any] = {"steps": settings.steps, "early_stop": True, "tolerance": 1e-4}
    specs = [
        AttackSpec(MaxConfidence(**kw), "l2", settings.epsilons, name="error-generic"),
        AttackSpec(
            MaxConfidence(**kw), "l2", settings.epsilons, name="error-specific", targeted=True, targets=target
        ),
    ]
    start = time.perf_counter()
    ev = evaluate(fitted.models, (x, y), specs, batch_size=settings.batch_size, seed=settings.seed + split)
    seconds = time.perf_counter() - start
    log(
        f"  {fitted.data.label}, split {split + 1}: {len(y)} images x {len(MODELS)} models x 2 attacks in {seconds:.1f}s"
    )
    facts = {
        **fitted.facts,
        "attack_seconds": round(seconds, 1),
        "attacked": len(y),
        "target": fitted.data.classes[fitted.target],
    }
    facts["queries"] = {f"{m}|{s.label}": list(ev.queries(m, s.label)) for m in fitted.models for s in specs}
    return {"facts": facts, "curves": _curves(ev, list(fitted.models), [s.label for s in specs])}


def _curves(
    ev: Evaluation, models: list[str], attacks: list[str]
) -> dict[str, dict[str, dict[str, list[float]]]]:
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for attack in attacks:
        for model in models:
            c = ev.curve(model, attack)
            out.setdefault(attack, {})[model] = {
                "epsilons": list(c.epsilons),
                "accuracy": list(c.accuracy),
                "rejected": list(c.rejected),
                "defended": list(c.defended),
                "misclassified": list(c.misclassified),
            }
    return out


def _sensitivity(first: SplitModels, settings: Settings, extractor: nn.Module) -> dict[str, Any]:
    """Sect. 5: deep-feature shift of adversarial vs. random perturbations of equal input norm."""
    x, y, _ = first.attacked(settings.sensitivity_samples, settings.seed + 100, train=True)
    attack = MaxConfidence(steps=settings.sensitivity_steps, early_stop=False, tolerance=None)
    record = feature_sensitivity(
        extractor,
        first.models["SVM"],
        x,
        y,
        epsilon=PAPER_EPSILON,
        attack=attack,
        batch_size=settings.batch_size,
    )
    return {
        **record.to_dict(),
        "model": "SVM",
        "images": "training images of split 1",
        "paper": {"random": [0.022, 0.002], "adversarial": [2.386, 0.386]},
    }


def _label(model: Classifier, pred: int) -> str:
    return "reject" if pred == REJECT else model.class_names[pred]


def _examples(first: SplitModels, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fig. 7: error-specific examples for growing d_max on SVM-adv, minimal ones, stickers."""
    model = first.models["SVM-adv"]
    x, y, target = first.attacked(len(first.test), settings.seed + 200)
    keep = (model.predict(x) == y).nonzero()[:, 0]
    if keep.numel() == 0:
        return {"skipped": "SVM-adv classifies no test image correctly"}, {}
    i = int(keep[0])
    x0, y0, t0 = x[i : i + 1], y[i : i + 1], target[i : i + 1]
    rows: list[dict[str, Any]] = [{"epsilon": 0.0, "image": x0[0], "prediction": _label(model, int(y0))}]
    for eps in settings.example_epsilons:
        r = MaxConfidence(steps=settings.steps, early_stop=False)(
            model, x0, y0, threat=ThreatModel("l2", eps, targeted=True), target=t0
        )
        rows.append(
            {
                "epsilon": eps,
                "image": r.adversarial[0].cpu(),
                "prediction": _label(model, int(r.predictions[0])),
            }
        )
    grids = {
        "whole image": sorted({*settings.epsilons, *settings.example_epsilons}),
        "sticker": settings.sticker_epsilons,
    }
    mask = sticker_mask(x0.shape, 48, 40, 32, 48)
    attack = MaxConfidence(steps=settings.steps, early_stop=True)
    minimal = {
        name: minimum_budget(attack, model, x0, y0, norm="l2", epsilons=grids[name], mask=m, target=t0)
        for name, m in (("whole image", None), ("sticker", mask))
    }
    figures: dict[str, Any] = {
        "sequence": rows,
        "original": x0[0],
        "minimal": {},
        "mask": mask,
        "true": first.data.classes[int(y0)],
        "target": first.data.classes[int(t0)],
    }
    facts: dict[str, Any] = {
        "true": figures["true"],
        "target": figures["target"],
        "sequence": [{"epsilon": r["epsilon"], "prediction": r["prediction"]} for r in rows],
    }
    for name, mb in minimal.items():
        figures["minimal"][name] = {
            "epsilon": float(mb.epsilons[0]),
            "image": mb.adversarial[0],
            "prediction": _label(model, int(mb.predictions[0])),
        }
        facts[f"min_dmax_{name}"] = float(mb.epsilons[0])
    facts["sticker"] = _sticker_study(first, settings, mask, grids)
    return facts, figures


def _sticker_study(
    first: SplitModels, settings: Settings, mask: Tensor, grids: dict[str, Any]
) -> dict[str, Any]:
    """Minimum d_max per image, whole image vs. sticker, error-generic (``inf``: not evaded)."""
    x, y, _ = first.attacked(settings.sticker_samples, settings.seed + 300)
    attack = MaxConfidence(steps=settings.steps, early_stop=True)
    out: dict[str, Any] = {
        "mask_pixels": int(mask.sum()),
        "mask_fraction": float(mask.float().mean()),
        "grids": {k: list(v) for k, v in grids.items()},
    }
    for model_name in settings.sticker_models:
        model = first.models[model_name]
        for where, m in (("whole image", None), ("sticker", mask)):
            mb = minimum_budget(attack, model, x, y, norm="l2", epsilons=grids[where], mask=m)
            out[f"{model_name}|{where}"] = [float(e) for e in mb.epsilons]
    return out
