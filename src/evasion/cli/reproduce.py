"""`evasion reproduce NAME`: re-run a paper's experiments and write an HTML report.

The experiments (:mod:`evasion.experiments`) return records and write nothing; this module parses
their options, shows progress, writes the JSON results and the report, and prints a summary. An
experiment is imported only when it runs, so `evasion --help` stays fast and needs none of the
optional extras an experiment uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._validation import integer
from .common import environment, pick_device, progress, write_json

if TYPE_CHECKING:  # the experiments are imported only when one runs (`evasion --help` stays fast)
    from ..experiments.detector_records import AcceptanceItem

__all__ = ["EXPERIMENTS", "Experiment", "add_parser"]


@dataclass(frozen=True)
class Experiment:
    """A `reproduce` sub-command: its one-line description, its options and its runner."""

    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce",
        help="re-run a paper's experiments and write an HTML report",
        description="Re-run the experiments of a reference paper. --quick runs a reduced version (CI-sized).",
    )
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    exp.required = True
    for name, experiment in EXPERIMENTS.items():
        sp = exp.add_parser(name, help=experiment.description, description=experiment.description)
        experiment.add_arguments(sp)
        sp.set_defaults(func=experiment.run)


# -- detector: Metzen et al. 2017 -------------------------------------------------------------------
def _detector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced run: CI-sized on mnist (under 3 minutes on 2 cores), a smoke run with --data",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/detector[-cifar][-quick])"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, log lines only")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="run on CIFAR-10 with the paper's ResNet-32: PATH is the folder of the python batches "
        "(cifar-10-batches-py/ or its parent). " + _CIFAR_TIME,
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --data: the ResNet-32 state dict to attack (e.g. OUT/resnet32-cifar.pt of an earlier "
        "run, or `evasion train resnet32-cifar`'s file) instead of training one",
    )


#: what a CPU-only user should expect from `--data` (see benchmarks/results/detector_reproduce.md)
_CIFAR_TIME = (
    "Without --weights the ResNet-32 is first trained here (45,000 images, 50 epochs; --quick: 5,000 "
    "images, 3 epochs) and saved as OUT/resnet32-cifar.pt. CPU only: one training epoch on 1,000 images "
    "took 54 s on one thread (a busy 2-core machine; a quiet core is faster), so training alone takes "
    "~1.5 days on one thread, and the full run (30+ detectors, 13,000 images attacked per adversary) "
    "days more; --quick about an hour; use --device cuda, or train once and pass --weights."
)


def _run_detector(args: argparse.Namespace) -> int:
    """Run on mnist-cnn (or CIFAR-10 with --data), write results.json and report.html, print the checks."""
    from .. import models
    from ..errors import ConfigError
    from ..experiments import detector
    from ..experiments.detector_report import acceptance, render

    out = args.out or Path("runs") / ("detector" if args.data is None else "detector-cifar")
    out = out.with_name(out.name + "-quick") if args.quick and args.out is None else out
    device = pick_device(args.device)
    started = time.perf_counter()
    if args.data is None:
        if args.weights is not None:
            raise ConfigError("--weights needs --data (the mnist run attacks the zoo's mnist-cnn)")
        settings = replace(detector.QUICK if args.quick else detector.FULL, seed=args.seed)
        clf, data, info = models.load("mnist-cnn", device=device), None, None
    else:  # validated and read before anything long starts
        settings = replace(detector.CIFAR_QUICK if args.quick else detector.CIFAR_FULL, seed=args.seed)
        data = detector.load_cifar10(args.data)
        if args.weights is not None and not args.weights.is_file():
            raise ConfigError(f"--weights {str(args.weights)!r} is not a file")
        detector.check_sizes(settings, data)
    with progress(args.quiet) as bar:
        if data is not None:
            clf, info = detector.cifar_classifier(
                settings, data[0], device, weights=args.weights, save=out / "resnet32-cifar.pt", bar=bar
            )
        results = detector.reproduce(settings, clf, bar, data=data, classifier=info)
    seconds = round(time.perf_counter() - started, 1)
    items = acceptance(results)
    record = {
        **results.to_dict(),
        "seconds": seconds,
        "environment": environment(device),
        "acceptance": [item.to_dict() for item in items],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", record)
    render(results, seconds).write(out / "report.html")
    print(f"detector reproduction ({settings.name}) in {seconds:.0f} s -> {out}/report.html")
    return _verdicts(items)


def _verdicts(items: list[AcceptanceItem]) -> int:
    """Print one line per item; exit code 1 only if a check of this code failed (an error).

    A finding of the paper that does not hold here is a scientific result, printed as
    ``[finding does not hold]``, and the command still succeeds (exit code 0)."""
    for item in items:
        print(f"  [{item.label}] {item.text}")
    errors = [item for item in items if item.error]
    if errors:
        print(
            f"evasion: error: {len(errors)} check(s) of this code failed (see [ERROR] above); "
            "the numbers are not trustworthy",
            file=sys.stderr,
        )
        return 1
    return 0


# -- icub: Melis et al. 2017 ------------------------------------------------------------------------
def _icub_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI-sized run: 7 objects, 1 split, few images")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/icub[-quick])")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, targets and attacks")
    parser.add_argument("--samples", type=int, default=None, help="attacked test images per split")
    parser.add_argument("--steps", type=int, default=None, help="attack steps per budget")
    parser.add_argument("--splits", type=int, default=None, help="session splits to average (1-4)")
    parser.add_argument(
        "--calibrate",
        choices=("out-of-fold", "sessions"),
        default="out-of-fold",
        help="how the conservative '+5%% FNR' thresholds are set: out-of-fold (default, the paper's "
        "validation set: k-fold scores of the training images) or sessions (leave-one-acquisition-session-out "
        "scores, so the thresholds see a new session's drift); the report's session-drift table shows both",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        default=None,
        help="run on the real iCubWorld28 release unpacked at PATH (iCubWorld28_128x128.zip, "
        "https://robotology.github.io/iCubWorld, Mendeley Data doi:10.17632/3n2vh9rdxd.1), laid out as "
        "PATH/{train,test}/day{1..4}/<category>/<category>{1..4}/*.ppm; checked before anything runs. "
        "The paper's protocol: iCubWorld7 (instance 3 of each category) and iCubWorld28, fit on "
        "train/dayD and tested on test/dayD (day4, then day3 ...), the first 100 images per class "
        "(20 with --quick); Fig. 5 on day4. On 2 CPU cores: the icub-sim run time plus roughly "
        "10-15 min (estimate; features are cached after the first run), about 4 GB of memory",
    )
    _jobs_argument(parser)


def _jobs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        metavar="N",
        default=None,
        help="worker processes that attack the session splits (Fig. 6) side by side, one torch thread "
        "each; the numbers do not depend on it (default: the torch threads, i.e. --threads, so 2 on a "
        "2-core machine; 1 attacks in this process)",
    )


def _size(args: argparse.Namespace, key: str, default: int, maximum: int | None = None) -> int:
    """A size option (``--samples``, ``--steps``, ``--splits``): checked, or ``default`` if not given."""
    value = getattr(args, key)
    return default if value is None else integer(value, f"--{key}", minimum=1, maximum=maximum)


def _run_icub(args: argparse.Namespace) -> int:
    """Run the iCub pipeline, write icub-results.json and icub-report.html, print the findings."""
    import torch

    from ..experiments import icub
    from ..experiments.icub_report import acceptance, findings, interpret, render

    base = icub.QUICK if args.quick else icub.FULL
    settings = replace(
        base,
        seed=args.seed,
        samples=_size(args, "samples", base.samples),
        steps=_size(args, "steps", base.steps),
        splits=_size(args, "splits", base.splits, maximum=4),
        calibrate=args.calibrate,
    )
    jobs = (
        torch.get_num_threads()
        if args.jobs is None
        else integer(args.jobs, "--jobs", minimum=1, maximum=os.cpu_count() or 1)
    )
    if args.data is not None:  # the real release: its layout checked before any computation
        from ..datasets import icubworld28

        per_class = icubworld28.QUICK_PER_CLASS if args.quick else icubworld28.PAPER_PER_CLASS
        settings = replace(settings, data=str(args.data), data_per_class=per_class)
        icubworld28.ReleaseSource.for_run(str(args.data), per_class, settings.splits).check()
    out = args.out or Path("runs") / ("icub-quick" if args.quick else "icub")
    results = icub.run_experiment(settings, log=print, jobs=jobs)
    lines = interpret(results)
    data = {**results.to_dict(), "acceptance": acceptance(results).to_dict(), "interpretation": lines}
    out.mkdir(parents=True, exist_ok=True)
    (out / "icub-results.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    report = render(results).write(out / "icub-report.html")
    print(f"report: {report}")
    return _verdicts(findings(results))


#: experiment name -> how to run it
EXPERIMENTS: dict[str, Experiment] = {
    "icub": Experiment(
        "Melis et al. 2017: iCub deep features + SVM with reject, max-confidence evasion, stickers",
        _icub_arguments,
        _run_icub,
    ),
    "detector": Experiment(
        "Metzen et al. 2017: detector subnetworks, dynamic adversaries, dynamic training",
        _detector_arguments,
        _run_detector,
    ),
}
