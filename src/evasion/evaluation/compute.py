"""Computing one cell: clean predictions, a minimum-norm search, or an attack at one epsilon.

Every function here is pure (inputs in, a :class:`CellOutput` out) so that the local and the Ray
engine run exactly the same code, and a stored output can stand in for a computed one. The
helpers return what they computed (a :class:`Computed` part: rows, verified points, costs) and
one function turns the parts into the cell's columns. The per-chain state that links the
epsilons of one attack (which samples are broken, where to warm start) is rebuilt from outputs
by :func:`advance`, whether they were just computed or loaded.

Efficiency rules (Melis et al.'s security evaluation curve, computed honestly and cheaply):

* a sample broken at epsilon stays broken at every larger epsilon of the same norm: it is not
  attacked again, its record points to the earlier adversarial point (inside the larger ball);
* the attack warm-starts from the previous epsilon's points (iterative attacks);
* a sample whose minimal perturbation (from a minimum-norm attack of the same norm) fits in the
  budget is tested with that point first: projected onto the ball and re-checked by a fresh
  prediction, never trusted blindly;
* every returned point is re-verified by the evaluator (fresh prediction, inside ball and box).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ..attacks.base import AttackResult, RandomStarting, Traceable
from ..attacks.losses import attacker_view, margin
from ..models.classifier import REJECT, Classifier
from ..perturbations import norm as perturbation_norm
from ..perturbations import project, random_start
from ..threat_model import ThreatModel
from .records import (
    ATTACK_COLUMNS,
    CERTIFY_COLUMNS,
    CERTIFY_STATUSES,
    CLEAN_COLUMNS,
    SOURCES,
    Cell,
    CellOutput,
    Source,
    empty_columns,
)
from .spec import AttackSpec, CertifySpec

__all__ = [
    "Batch",
    "ChainState",
    "Computed",
    "SearchResult",
    "advance",
    "cell_seed",
    "initial_state",
    "run_budget",
    "run_certify",
    "run_clean",
    "run_search",
    "search_result",
]

_SRC = {name: i for i, name in enumerate(SOURCES)}

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class Batch:
    """The inputs of one batch (CPU tensors) and, per spec, its targets and mask."""

    index: int
    start: int
    x: Tensor
    y: Tensor
    targets: Tensor | None = None
    mask: Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.n, dtype=np.int64)


@dataclass(frozen=True)
class ChainState:
    """Per-sample state of one model x attack x batch chain after its largest epsilon so far."""

    epsilon: float
    broken: Tensor
    points: Tensor  # the breaking point where broken, else the last point (warm start)
    prediction: Tensor
    confidence: Tensor
    norm_value: Tensor


@dataclass(frozen=True)
class SearchResult:
    """A minimum-norm attack's unbounded result: smallest perturbation norm and point per sample."""

    minimal: Tensor
    points: Tensor


def cell_seed(seed: int, cell: Cell) -> int:
    """The seed of a cell's generator, from (seed, model, attack, epsilon, batch) only."""
    digest = hashlib.sha256(f"{seed}|{cell.key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# -- verification ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The evaluator's own reading of returned points (CPU tensors, one entry per point)."""

    prediction: Tensor
    success: Tensor
    confidence: Tensor
    norm_value: Tensor
    in_budget: Tensor

    def subset(self, keep: Tensor) -> Verdict:
        return Verdict(
            self.prediction[keep],
            self.success[keep],
            self.confidence[keep],
            self.norm_value[keep],
            self.in_budget[keep],
        )


def _confidence(model: Classifier, scores: Tensor, prediction: Tensor) -> Tensor:
    column = torch.where(prediction == REJECT, torch.full_like(prediction, scores.shape[1] - 1), prediction)
    return torch.softmax(scores.double(), dim=1).gather(1, column[:, None])[:, 0]


def verify(
    model: Classifier, x: Tensor, points: Tensor, y: Tensor, target: Tensor | None, threat: ThreatModel
) -> Verdict:
    """Fresh prediction on ``points`` and whether they respect the threat model (CPU results)."""
    dev = model.device
    xd, pd = x.to(dev), points.to(dev, x.dtype)
    with torch.no_grad():
        scores = model(pd)
        pred = model.decide(scores)
    lower, upper = threat.box_for(xd)
    size = perturbation_norm(pd - xd, threat.norm)
    tol = 1e-6 + 1e-5 * (threat.epsilon if math.isfinite(threat.epsilon) else 0.0)
    flat_ok = ((pd >= lower - 1e-6) & (pd <= upper + 1e-6)).flatten(1).all(1)
    in_budget = flat_ok & (size <= threat.epsilon + tol)
    yd = y.to(dev)
    hit = (pred == target.to(dev)) if target is not None else (pred != yd) & (pred != REJECT)
    return Verdict(
        pred.cpu(),
        (hit & in_budget).cpu(),
        _confidence(model, scores, pred).cpu(),
        size.double().cpu(),
        in_budget.cpu(),
    )


# -- clean -------------------------------------------------------------------------------------
def run_clean(model: Classifier, batch: Batch, cell: Cell) -> CellOutput:
    """Clean predictions, computed twice: a model whose outputs change between identical calls
    makes every number random (the first attack-failure check)."""
    start = time.perf_counter()
    x = batch.x.to(model.device)
    with torch.no_grad():
        first, second = model(x), model(x)
    pred, again = model.decide(first), model.decide(second)
    cols = empty_columns(CLEAN_COLUMNS, batch.n)
    cols["index"][:] = batch.indices
    cols["label"][:] = batch.y.numpy()
    cols["prediction"][:] = pred.cpu().numpy()
    cols["repeat_prediction"][:] = again.cpu().numpy()
    cols["confidence"][:] = _confidence(model, first, pred).cpu().numpy()
    cols["score_change"][:] = (first - second).abs().amax(1).double().cpu().numpy()
    return CellOutput(cell, cols, seconds=time.perf_counter() - start)


def initial_state(clean: CellOutput, batch: Batch) -> ChainState:
    """The state at epsilon 0: samples the clean input already breaks are broken."""
    pred = torch.from_numpy(clean.columns["prediction"].copy())
    if batch.targets is not None:
        broken = pred == batch.targets
    else:
        broken = (pred != batch.y) & (pred != REJECT)
    return ChainState(
        0.0,
        broken,
        batch.x.clone(),
        pred,
        torch.from_numpy(clean.columns["confidence"].copy()),
        torch.zeros(batch.n, dtype=torch.float64),
    )


# -- attack cells --------------------------------------------------------------------------------
def _threat(model: Classifier, spec: AttackSpec, epsilon: float, mask: Tensor | None) -> ThreatModel:
    return ThreatModel(spec.norm, epsilon, bounds=model.bounds, mask=mask, targeted=spec.targeted)


def _rows(mask: Tensor | None, rows: Tensor, n: int) -> Tensor | None:
    """The per-input mask of ``rows`` (a shared mask is returned as it is)."""
    return (
        mask[rows.to(mask.device)]
        if mask is not None and mask.dim() == 4 and mask.shape[0] == n > 1
        else mask
    )


def _call(
    model: Classifier,
    spec: AttackSpec,
    batch: Batch,
    rows: Tensor,
    epsilon: float,
    seed: int,
    init: Tensor | None,
) -> AttackResult:
    """Run the spec's attack on ``rows`` of the batch (with an objective trace when it can).

    Without a warm start, a random start is drawn for the *whole* batch and then restricted to
    ``rows``: each sample starts where an independent run of the batch would start it, whichever
    other samples are still being attacked.
    """
    attack = spec.attack if init is None else spec.warm_attack()
    if isinstance(attack, Traceable) and not attack.trace:
        attack = attack.replace(trace=True)
    threat = _threat(model, spec, epsilon, _rows(batch.mask, rows, batch.n))
    target = None if batch.targets is None else batch.targets[rows]
    generator = torch.Generator().manual_seed(seed)
    if init is None and isinstance(attack, RandomStarting) and attack.random_start and math.isfinite(epsilon):
        full = _threat(model, spec, epsilon, batch.mask)
        lower, upper = full.box_for(batch.x)
        init = random_start(batch.x, epsilon, spec.norm, lower, upper, generator, radius="uniform")[rows]
    result = attack(
        model, batch.x[rows], batch.y[rows], threat=threat, target=target, generator=generator, init=init
    )
    return result.cpu()


def _improving(result: AttackResult) -> Tensor:
    """Samples still running at the last step whose objective rose over the last 10% of steps."""
    trace = result.loss_trace
    n = len(result)
    if trace is None or trace.shape[0] < 4:
        return torch.zeros(n, dtype=torch.bool)
    trace = trace.double().cpu()
    ran_all = torch.isfinite(trace[-1]) & ~result.success.cpu()
    k = max(1, (trace.shape[0] - 1) // 10)
    filled = torch.nan_to_num(trace, nan=-math.inf)
    head, tail = filled[:-k].amax(0), filled[-k:].amax(0)
    total = filled.amax(0) - trace[0]
    return ran_all & (tail - head > 0.05 * total.abs()) & (tail - head > 1e-6)


@dataclass(frozen=True)
class Computed:
    """Rows of a batch that a cell computed itself: their points, the evaluator's verdict on
    them, how they were obtained, what they cost and what the attack claimed (``reported``).
    ``extra``: further per-row columns (gradient diagnostics, minimal norms)."""

    rows: Tensor
    points: Tensor
    verdict: Verdict
    source: Source
    forwards: Tensor
    backwards: Tensor
    reported: Tensor
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)


def _start_columns(batch: Batch, state: ChainState) -> Columns:
    """Columns where every sample broken earlier is recorded as inherited."""
    cols = empty_columns(ATTACK_COLUMNS, batch.n)
    cols["index"][:] = batch.indices
    cols["label"][:] = batch.y.numpy()
    cols["prediction"][:] = state.prediction.numpy()
    cols["confidence"][:] = state.confidence.numpy()
    cols["norm_value"][:] = state.norm_value.numpy()
    cols["success"][:] = state.broken.numpy()
    cols["reported_success"][:] = state.broken.numpy()
    cols["in_budget"][:] = True
    cols["source"][:] = _SRC["inherited"]
    return cols


def _columns(batch: Batch, state: ChainState, parts: Sequence[Computed], **whole: np.ndarray) -> Columns:
    """A cell's columns: the chain's state for every row, the ``whole`` columns given, then the
    rows each part computed."""
    cols = _start_columns(batch, state)
    for key, values in whole.items():
        cols[key][:] = values
    for part in parts:
        r, v = part.rows.numpy(), part.verdict
        cols["prediction"][r] = v.prediction.numpy()
        cols["success"][r] = v.success.numpy()
        cols["confidence"][r] = v.confidence.numpy()
        cols["norm_value"][r] = v.norm_value.numpy()
        cols["in_budget"][r] = v.in_budget.numpy()
        cols["forwards"][r] = part.forwards.numpy()
        cols["backwards"][r] = part.backwards.numpy()
        cols["source"][r] = _SRC[part.source]
        cols["reported_success"][r] = part.reported.numpy()
        for key, values in part.extra.items():
            cols[key][r] = values
    return cols


def _try_hints(
    model: Classifier, spec: AttackSpec, batch: Batch, epsilon: float, todo: Tensor, hints: list[SearchResult]
) -> tuple[Computed, Tensor] | None:
    """Rows whose minimal perturbation fits in ``epsilon``, projected and re-checked: the part
    whose projected points break the model, and the rows where they did not (one forward each)."""
    if not hints or spec.targeted or spec.mask is not None:
        return None
    minimal = torch.stack([h.minimal for h in hints])  # (H, n)
    best = minimal.argmin(0)
    fits = todo & (minimal.amin(0) <= epsilon)
    rows = fits.nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    candidates = torch.stack([h.points for h in hints])[best[rows], rows]
    threat = _threat(model, spec, epsilon, None)
    x = batch.x[rows]
    lower, upper = threat.box_for(x)
    points = project(candidates, x, epsilon, spec.norm, lower, upper)
    v = verify(model, x, points, batch.y[rows], None, threat)
    ok = v.success
    ones = torch.ones(int(ok.sum()), dtype=torch.int64)
    part = Computed(rows[ok], points[ok], v.subset(ok), "min-norm", ones, torch.zeros_like(ones), ok[ok])
    return part, rows[~ok]


def run_budget(
    model: Classifier,
    spec: AttackSpec,
    batch: Batch,
    cell: Cell,
    state: ChainState,
    *,
    seed: int,
    hints: list[SearchResult] | None = None,
    search: SearchResult | None = None,
    peers: Sequence[ChainState] = (),
) -> CellOutput:
    """One attack at one epsilon on the samples of a batch that are not broken yet.

    ``search`` (minimum-norm specs): project the unbounded result instead of attacking.
    ``hints``: unbounded results of minimum-norm attacks of the same norm, tried first.
    ``peers`` (the self-check): the states of the norm's other attacks at this epsilon; only
    the samples none of them broke are attacked, from their best point among the peers'.
    """
    start = time.perf_counter()
    if search is not None:
        projected = _project_search(model, spec, batch, cell.epsilon, state, search)
        found: list[Computed] = [] if projected is None else [projected]
        source = np.where(state.broken.numpy(), _SRC["inherited"], _SRC["projected"])
        cols = _columns(batch, state, found, source=source, minimal_norm=search.minimal.numpy())
        return _output(cell, cols, found, start)
    parts = []
    todo = ~state.broken
    if peers:
        taken = _peer_part(state, peers)
        if taken is not None:
            parts.append(taken)
            todo[taken.rows] = False
    extra = torch.zeros(batch.n, dtype=torch.int64)  # forwards spent on hints that failed
    hinted = _try_hints(model, spec, batch, cell.epsilon, todo, hints or [])
    if hinted is not None:
        part, failed = hinted
        parts.append(part)
        extra[failed] = 1
        todo[part.rows] = False
    rows = todo.nonzero()[:, 0]
    if rows.numel():
        if spec.role == "self-check" or (spec.start_from_peers and peers):
            init: Tensor | None = _best_start(model, batch, rows, [state, *peers])
            extra[rows] += len(peers) + 1
        else:
            init = state.points[rows] if spec.uses_warm_start() and state.epsilon > 0 else None
        parts.append(_attack_rows(model, spec, batch, cell.epsilon, rows, seed, init, extra[rows]))
    return _output(cell, _columns(batch, state, parts), parts, start)


def _peer_part(state: ChainState, peers: Sequence[ChainState]) -> Computed | None:
    """Rows that an attack this one runs after (a peer) broke at this epsilon, recorded as the
    first such peer's point and verdict (source ``"peer"``; nothing is recomputed)."""
    broken = torch.stack([p.broken for p in peers])  # (P, n)
    rows = (broken.any(0) & ~state.broken).nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    first = broken[:, rows].float().argmax(0)  # the first peer that broke each row

    def take(field: str) -> Tensor:
        return torch.stack([getattr(p, field) for p in peers])[first, rows]

    zeros = torch.zeros(len(rows), dtype=torch.int64)
    ones = torch.ones(len(rows), dtype=torch.bool)
    verdict = Verdict(take("prediction"), ones, take("confidence"), take("norm_value"), ones)
    points = take("points")
    return Computed(rows, points, verdict, "peer", zeros, zeros, verdict.success)


def _best_start(model: Classifier, batch: Batch, rows: Tensor, states: Sequence[ChainState]) -> Tensor:
    """Per row, the candidate point (one per state) with the highest reject-aware margin."""
    y = batch.y[rows].to(model.device)
    best_x, best_v = None, None
    for st in states:
        if st.epsilon <= 0:  # the clean input: no better than a start at x itself
            continue
        z = st.points[rows]
        with torch.no_grad():
            scores = model(z.to(model.device))
            v = margin(attacker_view(model, scores, y, None), y, None).cpu()
        if best_x is None or best_v is None:
            best_x, best_v = z.clone(), v
            continue
        better = v > best_v
        best_x[better], best_v = z[better], torch.where(better, v, best_v)
    return batch.x[rows].clone() if best_x is None else best_x


def _project_search(
    model: Classifier, spec: AttackSpec, batch: Batch, eps: float, state: ChainState, search: SearchResult
) -> Computed | None:
    """A minimum-norm attack at a budget: its unbounded points projected onto the ball, re-checked."""
    rows = (~state.broken & torch.isfinite(search.minimal)).nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    threat = _threat(model, spec, eps, _rows(batch.mask, rows, batch.n))
    x = batch.x[rows]
    lower, upper = threat.box_for(x)
    points = project(search.points[rows], x, eps, spec.norm, lower, upper)
    target = None if batch.targets is None else batch.targets[rows]
    v = verify(model, x, points, batch.y[rows], target, threat)
    ones = torch.ones(len(rows), dtype=torch.int64)
    return Computed(rows, points, v, "projected", ones, torch.zeros_like(ones), v.success)


def _gradient_diagnostics(result: AttackResult) -> dict[str, np.ndarray]:
    """Per-row columns from the attack's own statistics, and whether it was still improving."""
    out = {
        key: result.stats[stat].cpu().numpy()
        for key, stat in (("zero_grad", "zero_grad_steps"), ("nonfinite_grad", "nonfinite_grad_steps"))
        if stat in result.stats
    }
    out["improving"] = _improving(result).numpy()
    return out


def _attack_rows(
    model: Classifier,
    spec: AttackSpec,
    batch: Batch,
    eps: float,
    rows: Tensor,
    seed: int,
    init: Tensor | None,
    spent: Tensor,
) -> Computed:
    """Run the attack on ``rows`` and re-verify its points (``spent``: forwards already spent)."""
    result = _call(model, spec, batch, rows, eps, seed, init)
    threat = _threat(model, spec, eps, _rows(batch.mask, rows, batch.n))
    target = None if batch.targets is None else batch.targets[rows]
    v = verify(model, batch.x[rows], result.adversarial, batch.y[rows], target, threat)
    return Computed(
        rows,
        result.adversarial,
        v,
        "attack",
        result.forwards + 1 + spent,
        result.backwards,
        result.success,
        _gradient_diagnostics(result),
    )


def _output(cell: Cell, cols: Columns, parts: Sequence[Computed], start: float) -> CellOutput:
    """The cell's output: its columns and the points it computed, sorted by sample index."""
    first = int(cols["index"][0]) if len(cols["index"]) else 0
    if parts:
        local = torch.cat([p.rows for p in parts])
        order = local.argsort()
        indices = (local[order].numpy() + first).astype(np.int64)
        adversarial: Tensor | None = torch.cat([p.points.detach().cpu() for p in parts])[order].contiguous()
    else:
        indices, adversarial = np.zeros(0, dtype=np.int64), None
    return CellOutput(cell, cols, indices, adversarial, time.perf_counter() - start)


def run_search(
    model: Classifier, spec: AttackSpec, batch: Batch, cell: Cell, state: ChainState, *, seed: int
) -> CellOutput:
    """A minimum-norm attack without a budget on the samples the clean input does not break."""
    start = time.perf_counter()
    minimal = np.where(state.broken.numpy(), 0.0, math.inf)
    rows = (~state.broken).nonzero()[:, 0]
    if rows.numel() == 0:
        return _output(cell, _columns(batch, state, [], minimal_norm=minimal), [], start)
    result = _call(model, spec, batch, rows, math.inf, seed, None)
    threat = _threat(model, spec, math.inf, _rows(batch.mask, rows, batch.n))
    target = None if batch.targets is None else batch.targets[rows]
    v = verify(model, batch.x[rows], result.adversarial, batch.y[rows], target, threat)
    # the verified norm of the unprojected point (the attack's own claim is re-checked)
    found = torch.where(v.success, v.norm_value, torch.full_like(v.norm_value, math.inf))
    part = Computed(
        rows,
        result.adversarial,
        v,
        "search",
        result.forwards + 1,
        result.backwards,
        result.success,
        {"minimal_norm": found.numpy()},
    )
    return _output(cell, _columns(batch, state, [part], minimal_norm=minimal), [part], start)


def search_result(out: CellOutput, batch: Batch) -> SearchResult:
    """The unbounded result of a search cell (the clean input where nothing was stored)."""
    points = batch.x.clone()
    if out.adversarial is not None and len(out.indices):
        points[torch.from_numpy(out.indices - batch.start)] = out.adversarial.to(points.dtype)
    return SearchResult(torch.from_numpy(out.columns["minimal_norm"].copy()), points)


def advance(state: ChainState, out: CellOutput, batch: Batch) -> ChainState:
    """The chain's state after ``out`` (computed or loaded): broken stays broken."""
    cols = out.columns
    points = state.points.clone()
    if out.adversarial is not None and len(out.indices):
        points[torch.from_numpy(out.indices - batch.start)] = out.adversarial.to(points.dtype)
    return replace(
        state,
        epsilon=out.cell.epsilon,
        broken=state.broken | torch.from_numpy(cols["success"].copy()),
        points=points,
        prediction=torch.from_numpy(cols["prediction"].copy()),
        confidence=torch.from_numpy(cols["confidence"].copy()),
        norm_value=torch.from_numpy(cols["norm_value"].copy()),
    )


# -- certification cells -------------------------------------------------------------------------
def run_certify(model: Classifier, spec: CertifySpec, batch: Batch, cell: Cell) -> CellOutput:
    """Certify one batch at the cell's epsilon (:func:`evasion.verification.certify`).

    The columns hold what was proved per sample; a MILP's counterexamples (re-checked adversarial
    points) are the cell's points, so the store keeps them like an attack's."""
    from ..verification import certificate

    start = time.perf_counter()
    threat = ThreatModel(spec.norm, cell.epsilon, bounds=model.bounds)
    cert = certificate.certify(
        model, batch.x.to(model.device), batch.y.to(model.device), threat=threat, method=spec.method,
        **spec.options(),
    )  # fmt: skip
    cols = empty_columns(CERTIFY_COLUMNS, batch.n)
    cols["index"][:] = batch.indices
    cols["label"][:] = batch.y.numpy()
    cols["certified"][:] = cert.certified.cpu().numpy()
    cols["clean_correct"][:] = cert.clean_correct.cpu().numpy()
    cols["margin_lower"][:] = cert.margin_lower.detach().double().cpu().numpy()
    cols["margin_upper"].fill(math.nan)
    cols["seconds"].fill(math.nan)
    cols["status"].fill(-1)
    rows: list[int] = []
    points: list[Tensor] = []
    if cert.status is not None:
        cols["status"][:] = [CERTIFY_STATUSES.index(s) for s in cert.status]
        if cert.margin_upper is not None:
            cols["margin_upper"][:] = cert.margin_upper.detach().double().cpu().numpy()
        if cert.sample_seconds is not None:
            cols["seconds"][:] = cert.sample_seconds.double().cpu().numpy()
        for i, point in enumerate(cert.counterexample or ()):
            if point is not None:
                rows.append(i)
                points.append(point.detach().cpu().reshape(batch.x.shape[1:]).to(batch.x.dtype))
    out = CellOutput(cell, cols, seconds=time.perf_counter() - start)
    if rows:
        out.indices = (np.asarray(rows, dtype=np.int64) + batch.start).astype(np.int64)
        out.adversarial = torch.stack(points).contiguous()
    return out
