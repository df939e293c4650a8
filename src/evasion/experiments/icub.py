"""`evasion reproduce icub`: Melis et al. 2017, "Is Deep Learning Safe for Robot Vision?".

The iCub pipeline on simulated robot-eye views (``icub-sim``): EfficientNet-Lite0 deep features
with one-vs-all SVM heads (linear, RBF, RBF with the reject option = SVM-adv, and SVM-adv with the
conservative "+5% FNR" threshold), attacked end to end through the network (pixels) with the
maximum-confidence evasion. The report holds the paper's Fig. 5 (accuracy vs. number of objects),
Fig. 6 (security curves, error-generic and error-specific, averaged over session splits), Fig. 7
(adversarial images, the sticker attack), the deep-feature sensitivity of Sect. 5, and a written
interpretation generated from the numbers. Features for fitting are cached per dataset checksum.

``--quick`` (CI-sized): the 7-object quick set, one split, few images and steps.
:func:`run_experiment` returns an :class:`~evasion.experiments.icub_records.IcubResults` and writes
nothing; `evasion reproduce icub` writes the report and the JSON.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from .. import datasets
from ..attacks.max_confidence import MaxConfidence, minimum_budget, sticker_mask
from ..datasets.icub_sim import split_indices
from ..datasets.icubworld28 import ReleaseSource, day_split, fig5_rows, set_names
from ..defenses.reject import ThresholdReject, calibrate_threshold
from ..errors import ConfigError
from ..evaluation import AttackSpec, Evaluation, evaluate
from ..evaluation.curves import clean_status, cumulative_status
from ..evaluation.sensitivity import PAPER_EPSILON, feature_sensitivity
from ..models.architectures.efficientnet_lite import Conv2dSame
from ..models.classifier import REJECT, Classifier
from ..models.deep_features import DeepFeatureClassifier, default_extractor, extract_features
from ..models.heads import (
    PAPER_C_GRID,
    PAPER_GAMMA_GRID,
    Head,
    LinearSVMHead,
    RBFSVMHead,
    one_vs_all_cv,
    out_of_fold_scores,
)
from ..runtime import keep_freed_memory
from ..threat_model import ThreatModel
from .icub_records import (
    CALIBRATIONS,
    CurvePoints,
    DriftRow,
    ExampleFacts,
    FigureImage,
    Figures,
    FitFacts,
    IcubResults,
    LinearCheck,
    ModelFacts,
    SensitivityResult,
    SetInfo,
    Settings,
    SkippedExamples,
    SplitFacts,
    StickerStudy,
)
from .icub_report import average_curves, baseline_curve

__all__ = [
    "FULL",
    "MODELS",
    "QUICK",
    "IcubResults",
    "SetData",
    "Settings",
    "SplitJob",
    "SplitModels",
    "SplitRun",
    "attack_network",
    "pick_round_robin",
    "run_experiment",
    "run_split",
    "session_scores",
    "split_job",
]

#: the four classifiers of the paper's Fig. 6, in plotting order
MODELS = ("SVM", "SVM-RBF", "SVM-adv", "SVM-adv +5% FNR")


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
    samples=100,
    fine_samples=100,
    epsilons=(0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5),
    steps=10,
    cv_per_class=25,
    sensitivity_samples=28,
    sensitivity_steps=10,
    sticker_samples=7,
    sticker_epsilons=(0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0),
    sticker_models=("SVM", "SVM-adv"),
    example_epsilons=(0.05, 0.1, 0.2, 0.5),
    batch_size=16,  # EfficientNet-Lite0 at 128 px, one thread per worker: ~14 ms/image vs ~18 at 32
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
    linear: LinearCheck | None = None  # the linear SVM on all the dataset's classes, if asked
    split: np.ndarray | None = None  # the iCubWorld28 release's "train"/"test" per image (real data)


@dataclass
class SplitModels:
    """The four classifiers fit on one session split, with the facts about them."""

    data: SetData
    train: np.ndarray
    test: np.ndarray
    models: dict[str, Classifier]
    target: int
    facts: FitFacts

    def pick(self, rows: np.ndarray, n: int, seed: int) -> np.ndarray:
        """``n`` of ``rows``, spread over the classes (round robin in a seeded order)."""
        return pick_round_robin(self.data.y, rows, n, seed, len(self.data.classes))

    def attacked(self, n: int, seed: int, train: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` test (or training) images, their labels and error-specific targets."""
        rows = self.pick(self.train if train else self.test, n, seed)
        y = self.data.y[rows]
        c = len(self.data.classes)
        target = torch.where(y == self.target, (self.target + 1) % c, torch.full_like(y, self.target))
        return self.data.x[rows], y, target


def pick_round_robin(y: Tensor, rows: np.ndarray, n: int, seed: int, classes: int | np.ndarray) -> np.ndarray:
    """``n`` of ``rows`` (sorted), taken round robin over ``classes`` (a count or the labels) in a
    seeded order, so every class is represented as evenly as ``rows`` allow."""
    rng = np.random.default_rng(seed)
    labels = y[rows].numpy()
    queues = [list(rng.permutation(rows[labels == c])) for c in rng.permutation(classes)]
    out: list[int] = []
    while len(out) < min(n, len(rows)):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop()))
    return np.asarray(sorted(out), dtype=np.int64)


def run_experiment(
    settings: Settings, log: Callable[[str], None] = lambda _: None, *, jobs: int = 1
) -> IcubResults:
    """Everything but the files: the results, figures' images included (``log``: progress lines).

    ``jobs`` > 1 attacks the session splits (Fig. 6, most of the run's time) in that many worker
    processes of one torch thread each: the same models, images and seeds, so the same numbers as
    one process, faster on a CPU where one thread per process uses the cores better than two
    threads on the small, shrinking batches of an attack.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    clock = _Clock(log)
    source = (
        ReleaseSource.for_run(settings.data, settings.data_per_class, settings.splits)
        if settings.data
        else None
    )
    if source:  # the real release: iCubWorld7 and iCubWorld28, as the paper
        main, fine, base_name = set_names(settings.main, settings.fine)
        settings = replace(settings, main=main, fine=fine, baseline=base_name)
    if settings.calibrate not in CALIBRATIONS:
        raise ConfigError(f"calibrate must be one of {', '.join(CALIBRATIONS)}, got {settings.calibrate!r}")
    if source and settings.calibrate == "sessions":  # the release trains each split on one day
        raise ConfigError(
            "--calibrate sessions needs several training sessions; with --data each split trains on one day"
        )
    extractor = default_extractor()
    sets = [load_set("7 objects", settings.main, 7, extractor, linear_check=True, source=source)]
    if settings.fine:
        sets.append(load_set("", settings.fine, 0, extractor, source=source))
    network, network_diff = attack_network(extractor, sets[0].x[:8])
    clock.lap("data and deep features")
    base = next(s for s in sets if s.name == settings.baseline)
    fig5 = (
        (base.z, base.y, base.session)
        if base.split is None
        else fig5_rows(base.z, base.y, base.session, base.split)
    )
    baseline = baseline_curve(*fig5, base.label, settings.baseline_repeats, settings.seed)
    clock.lap("baseline accuracy vs. number of objects (Fig. 5)")
    first: SplitModels | None = None
    infos, curves = {}, {}
    workers = max(1, min(jobs, settings.splits * len(sets)))
    with _split_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        # every split's job first (fits are cheap), so the workers start at once
        pending: list[tuple[SetData, list[tuple[SplitModels, SplitJob, Future[SplitRun] | None]]]] = []
        for data in sets:
            samples = settings.samples if data is sets[0] else settings.fine_samples
            fits = []
            for s in range(settings.splits):
                fitted = fit_split(data, 3 - s, settings, s, network)
                first = first or fitted
                job = split_job(fitted, settings, samples, s)
                fits.append((fitted, job, pool.submit(run_split, job) if pool else None))
            pending.append((data, fits))
        assert first is not None  # Sect. 5 and Fig. 7 on the first split: a job of their own, last
        late_job = pool.submit(_late_phases, first, settings, network) if pool else None
        for data, fits in pending:
            per_split = []
            for fitted, job, future in fits:
                done = future.result() if future is not None else run_split(job)
                log(done.line)
                per_split.append((_split_facts(fitted, job, done), done.curves))
            infos[data.label] = SetInfo(
                tuple(facts for facts, _ in per_split),
                data.name,
                len(data.classes),
                len(data.y),
                data.sha256,
                data.render_seconds,
            )
            curves[data.label] = average_curves(
                [c for _, c in per_split], resamples=settings.resamples, seed=settings.seed
            )
            clock.lap(f"security curves, {data.label} (Fig. 6{f', {workers} processes' if pool else ''})")
        late = late_job.result() if late_job is not None else _late_phases(first, settings, network)
    sensitivity, examples, figures = late.sensitivity, late.examples, late.figures
    for what, seconds in late.seconds.items():
        clock.record(what, seconds, in_worker=late_job is not None)
    clock.finish()
    return IcubResults(
        settings,
        clock.laps,
        infos,
        curves,
        baseline,
        sensitivity,
        examples,
        sets[0].linear,
        figures,
        network_max_abs_diff=network_diff,
    )


@dataclass(frozen=True)
class _Late:
    """Sect. 5 and Fig. 7 (on the first split), and their wall seconds."""

    sensitivity: SensitivityResult
    examples: ExampleFacts | SkippedExamples
    figures: Figures | None
    seconds: dict[str, float]


def _late_phases(first: SplitModels, settings: Settings, network: nn.Module) -> _Late:
    """The deep-feature sensitivity and the adversarial examples, timed (run anywhere: a worker too)."""
    start = time.perf_counter()
    sensitivity = _sensitivity(first, settings, network)
    mid = time.perf_counter()
    examples, figures = _examples(first, settings)
    seconds = {
        "deep-feature sensitivity (Sect. 5)": mid - start,
        "adversarial examples and stickers (Fig. 7)": time.perf_counter() - mid,
    }
    return _Late(sensitivity, examples, figures, seconds)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (``bn(conv(x)) == conv'(x)``)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(
        bn.running_var + bn.eps
    )
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).detach())
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + shift).detach())


class _PaddedConv(nn.Conv2d):
    """A strided TF-"same" convolution without its input copy: for even input sizes (the odd pixel
    of padding goes bottom/right), a kernel grown by zero rows/columns on the top/left with
    symmetric padding computes exactly the same sums; odd sizes pad symmetrically anyway."""

    def __init__(self, conv: Conv2dSame) -> None:
        k, s = conv.kernel_size[0], conv.stride[0]
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            k + 1,
            stride=s,
            padding=(k - s + 1) // 2,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        self.odd = conv  # odd input sizes: the original (its padding is symmetric there)
        with torch.no_grad():
            self.weight.copy_(torch.nn.functional.pad(conv.weight, (1, 0, 1, 0)))
            if conv.bias is not None:
                assert self.bias is not None
                self.bias.copy_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            return self.odd(x)
        return super().forward(x)


def _unpaddable(m: nn.Module) -> bool:
    """A TF-"same" convolution :class:`_PaddedConv` computes exactly: stride 2, odd square kernel."""
    return (
        isinstance(m, Conv2dSame)
        and m.dynamic_padding
        and m.kernel_size[0] == m.kernel_size[1]
        and m.kernel_size[0] % 2 == 1
        and m.stride == (2, 2)
        and m.dilation == (1, 1)
    )


def attack_network(extractor: nn.Module, probe: Tensor, tolerance: float = 1e-3) -> tuple[nn.Module, float]:
    """A faster copy of the frozen feature network for the attacks, and its largest feature difference.

    Every BatchNorm that directly follows a convolution (registration order, same width) is folded
    into it, strided TF-"same" convolutions compute their padding inside the convolution
    (:class:`_PaddedConv`: no padded copy of the input, ~3% faster), and the weights go
    channels-last: the same function (up to float rounding), about twice as fast forward and
    backward on a CPU (EfficientNet-Lite0, 128x128). The copy is checked
    on ``probe`` images; if its features differ from the original's by more than ``tolerance``
    (a pairing that is not a real conv -> BN), the original is returned instead.
    """
    fused = copy.deepcopy(extractor).eval()
    for parent in list(fused.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, bn) in itertools.pairwise(children):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.num_features == conv.out_channels
                and bn.track_running_stats
            ):
                _fold(conv, bn)
                setattr(parent, name, nn.Identity())
    for parent in list(fused.modules()):  # strided TF-"same" convolutions without the pad copy
        for name, child in list(parent.named_children()):
            if _unpaddable(child):
                assert isinstance(child, Conv2dSame)
                setattr(parent, name, _PaddedConv(child))
    for p in fused.parameters():
        p.requires_grad_(False)
        if p.dim() == 4:  # convolution weights channels-last: faster depthwise/pointwise convs on a CPU
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        diff = float((fused(probe) - extractor.eval()(probe)).abs().max())
    return (fused, diff) if diff <= tolerance else (extractor, 0.0)


def _children_cpu() -> float:
    """CPU seconds of this process's ended (and waited-for) children: the split workers."""
    t = os.times()
    return t.children_user + t.children_system


class _Clock:
    """Wall-clock seconds per phase (and this process's CPU seconds, robust on a shared machine)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.laps: dict[str, float] = {}
        self.start = self.last = time.perf_counter()
        self.cpu_start = self.cpu_last = time.process_time()
        self.children = _children_cpu()  # worker processes' CPU counts once they have ended

    def lap(self, what: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[what] = round(now - self.last, 1)
        self.log(
            f"[{now - self.start:7.1f}s] {what}: {now - self.last:.1f}s wall, {cpu - self.cpu_last:.1f}s CPU"
        )
        self.last, self.cpu_last = now, cpu

    def record(self, what: str, seconds: float, in_worker: bool) -> None:
        """A phase timed elsewhere (``in_worker``: in a worker process, beside the splits)."""
        self.laps[what] = round(seconds, 1)
        where = " (in a worker process, beside the splits)" if in_worker else ""
        self.log(f"{' ' * 11}{what}: {seconds:.1f}s wall{where}")
        if not in_worker:
            self.last, self.cpu_last = time.perf_counter(), time.process_time()

    def finish(self) -> None:
        self.laps["total"] = round(time.perf_counter() - self.start, 1)
        self.laps["total CPU"] = round(
            time.process_time() - self.cpu_start + _children_cpu() - self.children, 1
        )
        self.laps["torch threads"] = torch.get_num_threads()


def load_set(
    label: str,
    name: str,
    keep: int,
    extractor: nn.Module,
    linear_check: bool = False,
    source: ReleaseSource | None = None,
) -> SetData:
    """A dataset (rendered on first use), its first ``keep`` classes (0: all) and their features.

    ``linear_check``: also measure the linear SVM's clean accuracy on *all* the dataset's classes,
    for a held-out session and for held-out viewpoints (the issue's acceptance check; icub-sim only).
    ``source``: read ``name`` from the real iCubWorld28 release instead.
    """
    ds = datasets.load(name, "all") if source is None else source.load(name)
    z = extract_features(extractor, ds.x, cache_key=str(ds.meta["sha256"]))
    session = ds.meta["session"]
    assert isinstance(session, Tensor)
    linear = None
    if linear_check and "yaw" in ds.meta:  # held-out viewpoints need the rendered views' yaw
        meta = {"session": session.numpy(), "yaw": np.asarray(ds.meta["yaw"])}
        accuracy = {}
        for mode in ("session", "view"):
            tr, te = split_indices(meta, mode)
            head = LinearSVMHead().fit(z[tr], ds.y[tr])
            accuracy[mode] = float((head(z[te]).argmax(1) == ds.y[te]).float().mean())
        linear = LinearCheck(name, accuracy["session"], accuracy["view"], len(ds.classes))
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
        linear,
        split=None if source is None else np.asarray(ds.meta["split"])[rows.numpy()],
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
    if data.split is None:
        train, test = split_indices({"session": data.session.numpy()}, "session", [test_session])
    else:  # the real release: train/ and test/ of the same day, as the paper
        train, test = day_split(data.session, data.split, test_session)
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
    oof = out_of_fold_scores(heads["SVM-adv"], z_tr, y_tr, seed=settings.seed)
    s_tr = data.session[train]
    by_session = session_scores(heads["SVM-adv"], z_tr, y_tr, s_tr) if len(s_tr.unique()) > 1 else None
    thetas = {"out-of-fold": calibrate_threshold(oof, y_tr, 0.05)}
    if by_session is not None:
        thetas["sessions"] = calibrate_threshold(by_session, y_tr, 0.05)
    elif settings.calibrate == "sessions":
        raise ConfigError(
            "calibrate 'sessions' needs at least 2 training sessions; this split trains on one "
            f"(session {int(s_tr[0])})"
        )
    theta = thetas[settings.calibrate]
    nets = {
        k: DeepFeatureClassifier(h, extractor, class_names=data.classes, name=k) for k, h in heads.items()
    }
    models: dict[str, Classifier] = {
        "SVM": nets["SVM"],
        "SVM-RBF": nets["SVM-RBF"],
        "SVM-adv": ThresholdReject(nets["SVM-adv"], 0.0, name="SVM-adv"),
        "SVM-adv +5% FNR": ThresholdReject(nets["SVM-adv"], theta, name="SVM-adv +5% FNR"),
    }
    fit_seconds = round(time.perf_counter() - start, 1)
    facts = {}
    for name, model in models.items():
        head = heads["SVM-adv" if name.startswith("SVM-adv") else name]
        scores = head(z_te)
        if isinstance(model, ThresholdReject):
            scores = model.with_reject(scores)
        pred = model.decide(scores)
        facts[name] = ModelFacts(
            c=head.c_,
            gamma=head.gamma_,  # None for the linear kernel
            support_vectors=head.support_vectors,
            clean_accuracy=float((pred == y_te).float().mean()),
            clean_rejected=float((pred == REJECT).float().mean()),
            sklearn_max_abs_diff=float(
                (head.sklearn_decision_function(z_te) - head(z_te).double()).abs().max()
            ),
            theta=model.theta.tolist() if isinstance(model, ThresholdReject) else None,
        )
    scores_te = heads["SVM-adv"](z_te).double()
    drift = []
    for label, th in [("SVM-adv", torch.zeros(())), *((f"+5% FNR ({k})", t) for k, t in thetas.items())]:
        sessions = {test_session: reject_rates(scores_te, y_te, th)}
        if by_session is not None:
            for k in s_tr.unique().tolist():
                rows = s_tr == k
                sessions[int(k)] = reject_rates(by_session[rows], y_tr[rows], th)
        attacked = label == "SVM-adv" or label == f"+5% FNR ({settings.calibrate})"
        drift.append(
            DriftRow(
                label, attacked, dict(sorted(sessions.items())), reject_rates(oof, y_tr, th), test_session
            )
        )
    target = int(np.random.default_rng(settings.seed + index).integers(len(data.classes)))
    fit = FitFacts(test_session, len(train), len(test), fit_seconds, facts, tuple(drift), settings.calibrate)
    return SplitModels(data, train, test, models, target, fit)


def reject_rates(scores: Tensor, y: Tensor, theta: Tensor | float) -> tuple[float, float]:
    """Clean (accuracy, rejection) of the reject rule ``max_k (f_k - theta_k) <= 0`` on class scores."""
    shifted = scores.double() - torch.as_tensor(theta, dtype=torch.float64)
    best = shifted.max(1)
    rejected = best.values <= 0
    correct = ~rejected & (best.indices == y)
    return float(correct.double().mean()), float(rejected.double().mean())


def session_scores(head: Head, z: Tensor, y: Tensor, session: Tensor) -> Tensor:
    """Decision values ``(N, c)`` of every sample from a copy of ``head`` fit on the *other* sessions.

    Leave one acquisition session out, with the fitted head's hyperparameters: a validation set
    that, unlike random folds, shows what a new session does to the scores (the session drift).
    """
    out = torch.zeros(len(y), head.num_classes, dtype=torch.float64)
    for k in session.unique().tolist():
        held = session == k
        if len(y[~held].unique()) < head.num_classes:
            raise ConfigError(f"session {k} holds the only images of some class: cannot leave it out")
        part = head.fresh().fit(z[~held], y[~held])
        out[held] = part(z[held]).double()
    return out


@dataclass(frozen=True)
class SplitJob:
    """What a worker needs to attack one split: its four models and its attacked images."""

    label: str
    models: dict[str, Classifier]
    x: Tensor
    y: Tensor
    target: Tensor
    rows: list[int]
    settings: Settings
    split: int


@dataclass(frozen=True)
class SplitRun:
    """A split's security curves, its queries, and how long the attack took."""

    curves: dict[str, dict[str, CurvePoints]]
    queries: dict[str, tuple[int, int]]
    seconds: float
    line: str  # the progress line for the log


def split_job(fitted: SplitModels, settings: Settings, samples: int, split: int) -> SplitJob:
    """The attack of one split (its images picked as the paper's protocol), ready to run anywhere."""
    rows = fitted.pick(fitted.test, samples, settings.seed + split)
    x, y, target = fitted.attacked(samples, settings.seed + split)
    return SplitJob(fitted.data.label, fitted.models, x, y, target, [int(r) for r in rows], settings, split)


def run_split(job: SplitJob) -> SplitRun:
    """Error-generic and error-specific max-confidence curves of the four models on one split."""
    settings = job.settings
    specs = [
        AttackSpec(_max_confidence(settings), "l2", settings.epsilons, name="error-generic"),
        AttackSpec(
            _max_confidence(settings),
            "l2",
            settings.epsilons,
            name="error-specific",
            targeted=True,
            targets=job.target,
        ),
    ]
    start, cpu = time.perf_counter(), time.process_time()
    # the paper's protocol: its own attack only (a self-check would re-attack every survivor with APGD
    # through EfficientNet-Lite0, minutes per split on a CPU; `evasion evaluate` runs it by default)
    ev = evaluate(
        job.models,
        (job.x, job.y),
        specs,
        batch_size=settings.batch_size,
        seed=settings.seed + job.split,
        self_check=False,
    )
    seconds = time.perf_counter() - start
    line = (
        f"  {job.label}, split {job.split + 1}: {len(job.y)} images x {len(MODELS)} models x 2 attacks in "
        f"{seconds:.1f}s wall, {time.process_time() - cpu:.1f}s CPU ({torch.get_num_threads()} threads)"
    )
    queries = {f"{m}|{s.label}": ev.queries(m, s.label) for m in job.models for s in specs}
    return SplitRun(_curves(ev, list(job.models), [s.label for s in specs]), queries, seconds, line)


def _split_facts(fitted: SplitModels, job: SplitJob, done: SplitRun) -> SplitFacts:
    return SplitFacts(
        fitted.facts,
        attack_seconds=round(done.seconds, 1),
        attacked=len(job.y),
        target=fitted.data.classes[fitted.target],
        queries=done.queries,
        rows=job.rows,
    )


#: whether this worker process keeps freed memory (:func:`~evasion.runtime.keep_freed_memory`)
WORKER_ALLOCATOR: bool | None = None


def _worker_start() -> None:
    """One torch thread, and freed activation buffers kept for reuse: without it every
    forward+backward of EfficientNet-Lite0 page-faults its memory anew (~4,800 minor faults);
    measured 6% less CPU per split (benchmarks/results/icub_reproduce.md)."""
    global WORKER_ALLOCATOR
    torch.set_num_threads(1)
    WORKER_ALLOCATOR = keep_freed_memory()


def worker_allocator() -> bool | None:
    """What :func:`_worker_start` applied in this process (None: not a worker)."""
    return WORKER_ALLOCATOR


@contextlib.contextmanager
def _split_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for the splits (spawned: no forked thread pools; see :func:`_worker_start`),
    shut down, pending jobs cancelled, on the way out."""
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start
    )
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def _max_confidence(settings: Settings) -> MaxConfidence:
    """The attack of the security curves (early stop: a point broken at d_max stays broken)."""
    return MaxConfidence(steps=settings.steps, early_stop=True, tolerance=1e-4)


def _curves(ev: Evaluation, models: list[str], attacks: list[str]) -> dict[str, dict[str, CurvePoints]]:
    out: dict[str, dict[str, CurvePoints]] = {}
    for attack in attacks:
        for model in models:
            c = ev.curve(model, attack)
            out.setdefault(attack, {})[model] = CurvePoints(
                list(c.epsilons),
                list(c.accuracy),
                list(c.rejected),
                list(c.defended),
                list(c.misclassified),
                status=_status(ev, model, attack),
            )
    return out


def _status(ev: Evaluation, model: str, attack: str) -> list[list[int]]:
    """Per attacked image and epsilon (0 first): 0 correct, 1 rejected, 2 misclassified."""
    clean = ev.clean_columns[model]
    steps = ev.attack_columns.get((model, attack), {})
    table = cumulative_status(
        clean_status(clean["prediction"], clean["label"]), [(e, c) for e, c in steps.items() if e > 0]
    )
    return np.stack([status for _, status in table], 1).astype(int).tolist()


def _sensitivity(first: SplitModels, settings: Settings, extractor: nn.Module) -> SensitivityResult:
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
    paper = {"random": (0.022, 0.002), "adversarial": (2.386, 0.386)}
    return SensitivityResult(record, "SVM", "training images of split 1", paper)


def _label(model: Classifier, pred: int) -> str:
    return "reject" if pred == REJECT else model.class_names[pred]


def _examples(
    first: SplitModels, settings: Settings
) -> tuple[ExampleFacts | SkippedExamples, Figures | None]:
    """Fig. 7: error-specific examples for growing d_max on SVM-adv, minimal ones, stickers."""
    model = first.models["SVM-adv"]
    x, y, target = first.attacked(len(first.test), settings.seed + 200)
    keep = (model.predict(x) == y).nonzero()[:, 0]
    if keep.numel() == 0:
        return SkippedExamples("SVM-adv classifies no test image correctly"), None
    i = int(keep[0])
    x0, y0, t0 = x[i : i + 1], y[i : i + 1], target[i : i + 1]
    rows = [FigureImage(0.0, x0[0], _label(model, int(y0)))]
    for eps in settings.example_epsilons:
        r = MaxConfidence(steps=settings.steps, early_stop=False)(
            model, x0, y0, threat=ThreatModel("l2", eps, targeted=True), target=t0
        )
        rows.append(FigureImage(eps, r.adversarial[0].cpu(), _label(model, int(r.predictions[0]))))
    grids = {
        "whole image": sorted({*settings.epsilons, *settings.example_epsilons}),
        "sticker": list(settings.sticker_epsilons),
    }
    mask = sticker_mask(x0.shape, 48, 40, 32, 48)
    attack = MaxConfidence(steps=settings.steps, early_stop=True)
    minimal = {
        name: minimum_budget(attack, model, x0, y0, norm="l2", epsilons=grids[name], mask=m, target=t0)
        for name, m in (("whole image", None), ("sticker", mask))
    }
    images = {
        name: FigureImage(float(mb.epsilons[0]), mb.adversarial[0], _label(model, int(mb.predictions[0])))
        for name, mb in minimal.items()
    }
    true, goal = first.data.classes[int(y0)], first.data.classes[int(t0)]
    figures = Figures(tuple(rows), x0[0], images, mask, true, goal)
    facts = ExampleFacts(
        true,
        goal,
        tuple((r.epsilon, r.prediction) for r in rows),
        {name: im.epsilon for name, im in images.items()},
        _sticker_study(first, settings, mask, grids),
    )
    return facts, figures


def _sticker_study(
    first: SplitModels, settings: Settings, mask: Tensor, grids: dict[str, list[float]]
) -> StickerStudy:
    """Minimum d_max per image, whole image vs. sticker, error-generic (``inf``: not evaded)."""
    x, y, _ = first.attacked(settings.sticker_samples, settings.seed + 300)
    attack = MaxConfidence(steps=settings.steps, early_stop=True)
    found: dict[str, list[float]] = {}
    for model_name in settings.sticker_models:
        model = first.models[model_name]
        for where, m in (("whole image", None), ("sticker", mask)):
            mb = minimum_budget(attack, model, x, y, norm="l2", epsilons=grids[where], mask=m)
            found[f"{model_name}|{where}"] = [float(e) for e in mb.epsilons]
    return StickerStudy(int(mask.sum()), float(mask.float().mean()), grids, found)
