"""`evaluate()`: run a plan of cells on an engine, through an optional store, into an `Evaluation`.

The library does no I/O itself: a *sink* (``evasion.store.RunStore``) says which cells are
already committed, loads them and commits new ones; a *progress* callback receives
:class:`ProgressEvent` s (the CLI draws them as bars). Engines only decide where cells run
(``evasion.engines``: ``LocalEngine`` in this process, ``RayEngine`` as Ray tasks). Without an
engine the plan runs in order in this process (:func:`~evasion.evaluation.plan.run_in_order`,
the very loop ``LocalEngine`` wraps): the default needs nothing from ``engines/``, which sits
above this package, so there is no import cycle. The protocols live in :mod:`.protocols`; they
are re-exported here for existing imports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor, nn

from .. import _validation as check
from .._validation import check_images
from ..datasets.base import Dataset
from ..errors import ConfigError, InputError, UnknownNameError
from ..models.classifier import Classifier, as_classifier
from .plan import Context, Task, check_mask_rows, default_threads, make_plan, run_in_order
from .protocols import Emit, Engine, Load, ProgressEvent, Setup, Sink
from .records import SOURCES, Cell, CellOutput
from .result import Evaluation, Example
from .spec import AttackSpec, CertifySpec
from .suite import self_check_specs, suites

__all__ = [
    "Emit",
    "Engine",
    "Load",
    "ProgressEvent",
    "Setup",
    "Sink",
    "certification_plan",
    "data_fingerprint",
    "evaluate",
    "fingerprint",
]


# -- inputs ------------------------------------------------------------------------------------
def _models(models: Classifier | nn.Module | Mapping[str, nn.Module], x: Tensor) -> dict[str, Classifier]:
    if isinstance(models, nn.Module):
        clf = as_classifier(models, x[:1])
        return {clf.name: clf}
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("models must be a Classifier or a non-empty mapping name -> Classifier")
    out = {}
    for name, m in models.items():
        if not isinstance(name, str) or not name or "|" in name:
            raise ConfigError(f"model names must be non-empty strings without '|', got {name!r}")
        out[name] = as_classifier(m, x[:1])
    return out


def _data(data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, str, list[str]]:
    if isinstance(data, Dataset):
        return data.x, data.y, f"{data.name}/{data.split}", list(data.classes)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise InputError("data must be a Dataset or a pair of tensors (x, y)")
        if x.dim() < 2 or y.shape != (x.shape[0],):
            raise InputError(f"data: x {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
        return x.detach().cpu().float(), y.detach().cpu().long(), "tensors", []
    raise InputError(f"data must be a Dataset or a pair of tensors (x, y), got {type(data).__name__}")


def _specs(attacks: AttackSpec | Sequence[AttackSpec]) -> dict[str, AttackSpec]:
    items = [attacks] if isinstance(attacks, AttackSpec) else list(attacks)
    if not items:
        raise ConfigError("give at least one AttackSpec")
    out: dict[str, AttackSpec] = {}
    for s in items:
        if not isinstance(s, AttackSpec):
            raise ConfigError(f"attacks must be AttackSpec objects, got {type(s).__name__}")
        if str(s.name) in out:
            raise ConfigError(f"two attacks are named {s.name!r}; give them distinct names")
        if "|" in str(s.name):
            raise ConfigError(f"attack names cannot contain '|', got {s.name!r}")
        out[str(s.name)] = s
    return out


def _weight_bytes(t: Tensor) -> bytes:
    """A tensor's bytes on the CPU; floats narrower than 32 bits (float16, bfloat16, float8) as
    float32 values, so equal weights hash equally whatever their dtype and device."""
    t = t.detach().cpu()
    if t.is_floating_point() and t.element_size() < 4:
        t = t.float()
    return t.contiguous().numpy().tobytes()


def fingerprint(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers (a store refuses results of another model).

    Works for weights on any device and in any dtype; float32 CPU weights hash their raw bytes.
    """
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(_weight_bytes(t))
    return h.hexdigest()[:16]


def data_fingerprint(x: Tensor, y: Tensor) -> str:
    """A digest of the evaluated inputs and labels (CPU tensors)."""
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def certification_plan(
    certify: CertifySpec | Sequence[CertifySpec] | None,
    clfs: Mapping[str, Classifier],
    specs: Mapping[str, AttackSpec],
    x: Tensor,
) -> tuple[dict[str, CertifySpec], dict[str, list[tuple[str, tuple[float, ...]]]]]:
    """The certification specs by name, and per model the (name, epsilons) to certify.

    Refused before anything runs: an unknown model, two specs of one name, a model the bounds
    cannot describe (the layer is named), a spec with no epsilon to certify. ``specs``: the
    attacks by name (their grids give the default epsilons). The CLI calls it before it opens
    the run folder, so that a model that cannot be certified writes nothing."""
    items = [] if certify is None else [certify] if isinstance(certify, CertifySpec) else list(certify)
    out: dict[str, CertifySpec] = {}
    for c in items:
        if not isinstance(c, CertifySpec):
            raise ConfigError(f"certify must hold CertifySpec objects, got {type(c).__name__}")
        if c.name in out:
            raise ConfigError(f"two certifications are named {c.name!r}: one per method and norm")
        out[c.name] = c
    unknown = sorted({m for c in out.values() for m in c.models or ()} - set(clfs))
    if unknown:
        raise UnknownNameError("model of a certification's models", unknown[0], list(clfs))
    plan: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for model, clf in clfs.items():
        mine = [c for c in out.values() if c.applies_to(model)]
        if not mine:
            continue
        from ..verification.layers import extract_layers

        try:
            extract_layers(clf, x[:1].to(clf.device))
        except ConfigError as exc:
            raise ConfigError(
                f"model {model!r} cannot be certified ({', '.join(c.name for c in mine)}): {exc}"
            ) from None
        for c in mine:
            grid = c.epsilons
            if grid is None:
                attacked = [
                    s for s in specs.values() if s.norm == c.norm and not s.targeted and s.applies_to(model)
                ]
                grid = tuple(sorted({e for s in attacked for e in s.grid}))
            if not grid:
                raise ConfigError(
                    f"certification {c.name!r} of model {model!r}: no untargeted {c.norm} attack runs on it "
                    "to take the epsilons from; give the CertifySpec epsilons"
                )
            plan.setdefault(model, []).append((c.name, tuple(grid)))
    return out, plan


class ExamplePicker:
    """Keeps, per model and attack, the first samples broken, at the smallest epsilon that broke them."""

    def __init__(self, pool: int = 32, per_attack: int = 6):
        self.pool, self.per_attack = pool, per_attack
        self._best: dict[tuple[str, str, int], tuple[float, Tensor, int, float]] = {}

    def add(self, out: CellOutput) -> None:
        cell = out.cell
        if cell.kind != "budget" or out.adversarial is None or not len(out.indices):
            return
        cols, first = out.columns, int(out.columns["index"][0])
        for j, index in enumerate(out.indices.tolist()):
            if index >= self.pool:
                break
            row = index - first
            if not cols["success"][row] or SOURCES[int(cols["source"][row])] in ("inherited", "peer"):
                continue
            key = (cell.model, cell.attack, index)
            if key not in self._best or cell.epsilon < self._best[key][0]:
                point = out.adversarial[j].clone()
                self._best[key] = (
                    cell.epsilon,
                    point,
                    int(cols["prediction"][row]),
                    float(cols["confidence"][row]),
                )

    def examples(self, x: Tensor, y: Tensor, clean: Mapping[str, Mapping[str, np.ndarray]]) -> list[Example]:
        out: list[Example] = []
        taken: dict[tuple[str, str], int] = {}
        for (model, attack, index), (eps, point, pred, conf) in sorted(self._best.items()):
            c = clean.get(model)
            if c is None or taken.get((model, attack), 0) >= self.per_attack:
                continue
            taken[(model, attack)] = taken.get((model, attack), 0) + 1
            row = int(np.searchsorted(c["index"], index))
            out.append(
                Example(
                    model,
                    attack,
                    eps,
                    index,
                    int(y[index]),
                    int(c["prediction"][row]),
                    float(c["confidence"][row]),
                    pred,
                    conf,
                    x[index].clone(),
                    point,
                )
            )
        return out


def evaluate(
    models: Classifier | nn.Module | Mapping[str, nn.Module],
    data: Dataset | tuple[Tensor, Tensor],
    attacks: AttackSpec | Sequence[AttackSpec] | None = None,
    *,
    epsilons: Mapping[str, Sequence[float]] | None = None,
    self_check: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    progress: Callable[[ProgressEvent], None] | None = None,
    store: Sink | None = None,
    engine: Engine | None = None,
    reuse_minimal_norms: bool = True,
    certify: CertifySpec | Sequence[CertifySpec] | None = None,
) -> Evaluation:
    """Security evaluation curves of ``models`` on ``data`` under ``attacks``.

    Each model is evaluated as it is (a classifier with a reject option gets reject semantics).
    ``attacks``: the attack specs; ``None`` runs each model's default suite
    (:func:`~evasion.evaluation.suite.default_suite`: adapted to its defence) over ``epsilons``
    (norm -> grid; default :data:`~evasion.evaluation.suite.DEFAULT_EPSILONS`). ``self_check``:
    per norm, re-attack the points every attack left unbroken with a different, longer attack
    started from their best points; the worst case includes what it breaks, and a check flags
    the norm when it breaks more than 1% of the samples (the attacks were too weak).
    With a ``store`` (e.g. ``evasion.store.RunStore(path)``), committed cells are read back
    instead of recomputed and every new cell is committed as soon as it is done, so an
    interrupted evaluation resumes where it stopped. ``engine``: where cells run (default: this
    process). ``reuse_minimal_norms``: fixed-budget attacks first try the points of minimum-norm
    attacks of the same norm (re-verified). ``certify``: verification methods
    (:class:`~evasion.evaluation.spec.CertifySpec`, e.g. ``CertifySpec("crown", "linf")``) run at
    the attacks' epsilons; their per-sample proofs are stored per cell like the attacks' and
    :meth:`Evaluation.sandwich` puts them beside the worst case. Returns records, curves and
    attack-failure checks.
    """
    check.integer(batch_size, "batch_size", minimum=1)
    check.integer(seed, "seed")
    x, y, data_name, classes = _data(data)
    clfs = _models(models, x)
    if attacks is None:
        attacks = suites(clfs, epsilons)
    elif epsilons is not None:
        raise ConfigError("epsilons= is for the default suite; with attacks, each AttackSpec has its grid")
    specs = _specs(attacks)
    unknown = sorted({m for s in specs.values() for m in s.models or ()} - set(clfs))
    if unknown:
        raise UnknownNameError("model of an attack's models", unknown[0], list(clfs))
    if self_check:
        specs.update({str(s.name): s for s in self_check_specs(list(specs.values()))})
    for clf in clfs.values():
        check_images(x, input_shape=clf.input_shape, bounds=clf.bounds)
        clf.check_labels(y, len(y))
    bad = check_mask_rows(specs, len(y))
    if bad:
        raise ConfigError(f"the per-input mask of {bad[0]!r} must have one row per sample ({len(y)})")
    targets = {n: s.resolve_targets(y) for n, s in specs.items()}
    certs, cert_plan = certification_plan(certify, clfs, specs, x)
    ctx = Context(clfs, x, y, specs, targets, batch_size, seed, default_threads(), certify=certs)
    tasks = make_plan(list(clfs), list(specs.values()), len(y), batch_size, reuse_minimal_norms, cert_plan)
    infos = [s.info(y) for s in specs.values()]
    setup = Setup(
        data_name,
        len(y),
        {n: fingerprint(m) for n, m in clfs.items()},
        infos,
        batch_size,
        seed,
        classes,
        [t.key for t in tasks],
        data_fingerprint(x, y),
        [c.info() for c in certs.values()],
    )
    done: set[str] = set()
    if store is not None:
        store.prepare(setup)
        store.save_inputs(x, y)
        done = store.completed()
    run = _Run(tasks, store, done, progress)
    if engine is None:
        run_in_order(tasks, ctx, run.load, run.emit)
    else:
        engine.run(tasks, ctx, run.load, run.emit)
    run.finish()
    finish = getattr(store, "finish", None)  # optional Sink hook: this session has every cell
    if callable(finish):
        finish()
    ev = Evaluation.from_outputs(
        list(clfs),
        infos,
        len(y),
        run.outputs,
        meta={"data": data_name, "seed": seed, "batch_size": batch_size, "classes": classes},
        certifications=[c.info() for c in certs.values()],
    )
    return ev.with_examples(run.picker.examples(x, y, ev.clean_columns))


class _Run:
    """Glue between an engine and the store / progress callback / collected outputs."""

    def __init__(
        self,
        tasks: Sequence[Task],
        store: Sink | None,
        done: set[str],
        progress: Callable[[ProgressEvent], None] | None,
    ):
        self.store, self.done, self.progress = store, done, progress
        self.total, self.count = len(tasks), 0
        self.outputs: list[CellOutput] = []
        self.picker = ExamplePicker()
        groups: dict[str, int] = {}
        for t in tasks:
            groups[_group(t.cell)] = groups.get(_group(t.cell), 0) + 1
        if progress is not None:
            progress(ProgressEvent("start", self.total, 0, groups))

    def load(self, cell: Cell) -> CellOutput | None:
        if self.store is None or cell.key not in self.done:
            return None
        return self.store.load(cell)

    def emit(self, out: CellOutput, cached: bool) -> None:
        if not cached and self.store is not None:
            self.store.commit(out)
        self.picker.add(out)
        self.outputs.append(out.without_points())
        self.count += 1
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    "cell", self.total, self.count, {}, _group(out.cell), out.cell, cached, out.seconds
                )
            )

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent("finish", self.total, self.count))


def _group(cell: Cell) -> str:
    if cell.kind == "certify":
        return f"{cell.model} / certify {cell.attack}"
    return f"{cell.model} / {cell.attack or 'clean'}"
