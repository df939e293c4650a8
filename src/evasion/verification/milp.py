"""Exact verification of small ReLU networks as a mixed-integer linear program (Tjeng et al. 2019).

For each rival class ``k`` the program minimises ``f_y(x') - f_k(x')`` over the L∞ ball ∩ box. A ReLU
``a = max(z, 0)`` with pre-activation bounds ``l < 0 < u`` (CROWN's, widened by a hair for float
rounding) is encoded exactly with one binary ``d``: ``a >= z, a >= 0, a <= u d, a <= z - l (1 - d)``;
a stable ReLU (bounds of one sign) is linear and needs no binary. Consecutive affine layers are
composed into one dense matrix (float64). Solved by ``scipy.optimize.milp`` (HiGHS).

Per sample: rivals CROWN already excludes are skipped (unless ``exact``); the others are solved
in order of CROWN's bound, stopping at the first counterexample. A counterexample is re-checked
by a fresh prediction of the model; one that does not re-check makes the sample "unknown", as
does the per-sample time limit. "robust" needs the solver's dual bound above ``TOL`` for every
rival: an unproven sample is never called robust.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor

from ..errors import ConfigError
from ..models.classifier import Classifier
from ..threat_model import ThreatModel
from .layers import Layer

__all__ = ["TOL", "MilpResult", "certify_milp", "dense_blocks"]

#: margins within TOL of zero are not called robust (solver feasibility tolerance)
TOL = 1e-6
#: the largest dense matrix (entries) the MILP builds from one block of affine layers
MAX_ENTRIES = 20_000_000


@dataclass(frozen=True)
class MilpResult:
    status: tuple[str, ...]
    margin_lower: Tensor
    margin_upper: Tensor
    counterexample: tuple[Tensor | None, ...]
    seconds: Tensor
    notes: tuple[str, ...]


def _dense(block: list[Layer], in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(W, b, out_shape)`` of a chain of affine layers, in float64."""
    size = int(np.prod(in_shape))
    mods = [Layer(la.name, copy.deepcopy(la.module).to("cpu", torch.float64), la.kind) for la in block]
    with torch.no_grad():
        zero = torch.zeros((1, *in_shape), dtype=torch.float64)
        for la in mods:
            zero = la.forward(zero)
        if size * zero.numel() > MAX_ENTRIES:
            names = ", ".join(la.name for la in block)
            raise ConfigError(
                f"network too large for milp: layers {names} make a {zero.numel()}x{size} matrix"
            )
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *in_shape)
        for la in mods:
            basis = la.forward(basis)
    w = (basis.reshape(size, -1) - zero.reshape(1, -1)).T.numpy()
    return w, zero.reshape(-1).numpy(), tuple(zero.shape[1:])


def dense_blocks(layers: list[Layer], in_shape: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """The network as ``(W, b, index of the ReLU after it or -1)`` blocks; MaxPool is refused."""
    blocks: list[tuple[np.ndarray, np.ndarray, int]] = []
    run: list[Layer] = []
    shape = in_shape
    for i, layer in enumerate([*layers, None]):
        if layer is not None and layer.kind == "affine":
            run.append(layer)
            continue
        if layer is not None and layer.kind != "relu":
            raise ConfigError(
                f"milp cannot encode layer {layer.name!r} ({type(layer.module).__name__}); it supports affine "
                "layers and ReLU (use method='crown' for this model)"
            )
        w, b, shape = (
            _dense(run, shape) if run else (np.eye(int(np.prod(shape))), np.zeros(int(np.prod(shape))), shape)
        )
        blocks.append((w, b, i if layer is not None else -1))
        run = []
    return blocks


@dataclass
class _Program:
    """Variables (input, then per ReLU layer its activations and one binary per unstable neuron)."""

    lo: list[np.ndarray]
    hi: list[np.ndarray]
    integ: list[np.ndarray]
    rows: list[sparse.csr_matrix]
    r_lo: list[np.ndarray]
    r_hi: list[np.ndarray]
    n_vars: int

    def add(self, mat: sparse.csr_matrix, lo: np.ndarray, hi: np.ndarray) -> None:
        self.rows.append(mat)
        self.r_lo.append(lo)
        self.r_hi.append(hi)

    def constraint(self) -> LinearConstraint:
        full = [
            sparse.hstack([r, sparse.csr_matrix((r.shape[0], self.n_vars - r.shape[1]))]) for r in self.rows
        ]
        if not full:
            return LinearConstraint(sparse.csr_matrix((0, self.n_vars)), np.zeros(0), np.zeros(0))
        return LinearConstraint(
            sparse.vstack(full).tocsr(), np.concatenate(self.r_lo), np.concatenate(self.r_hi)
        )


def _relu_rows(
    prog: _Program, w: np.ndarray, b: np.ndarray, prev: tuple[int, int], lo: np.ndarray, up: np.ndarray
) -> int:
    """Encode ``a = relu(W h + b)`` given pre-activation bounds; returns the first column of ``a``."""
    m = w.shape[0]
    unstable, active = (lo < 0) & (up > 0), lo >= 0
    ui = np.flatnonzero(unstable)
    a0, d0 = prog.n_vars, prog.n_vars + m
    prog.n_vars += m + ui.size
    prog.lo += [np.where(active, lo, 0.0), np.zeros(ui.size)]
    prog.hi += [np.maximum(up, 0.0), np.ones(ui.size)]
    prog.integ += [np.zeros(m), np.ones(ui.size)]
    n = prog.n_vars

    def rows(idx: np.ndarray, with_w: bool, d_coef: np.ndarray | None) -> sparse.csr_matrix:
        k = idx.size
        mat = sparse.csr_matrix((np.ones(k), (np.arange(k), a0 + idx)), shape=(k, n))
        if with_w:
            wh = sparse.hstack([sparse.csr_matrix((k, prev[0])), sparse.csr_matrix(w[idx])])
            mat = mat - sparse.hstack([wh, sparse.csr_matrix((k, n - wh.shape[1]))]).tocsr()
        if d_coef is not None:
            cols = d0 + np.searchsorted(ui, idx)
            mat = mat + sparse.csr_matrix((d_coef, (np.arange(k), cols)), shape=(k, n))
        return mat.tocsr()

    ai = np.flatnonzero(active)
    if ai.size:  # a - W h = b
        prog.add(rows(ai, True, None), b[ai], b[ai])
    if ui.size:  # a - W h >= b;  a - up d <= 0;  a - W h - lo d <= b - lo
        inf = np.full(ui.size, np.inf)
        prog.add(rows(ui, True, None), b[ui], inf)
        prog.add(rows(ui, False, -up[ui]), -inf, np.zeros(ui.size))
        prog.add(rows(ui, True, -lo[ui]), -inf, b[ui] - lo[ui])
    return a0


def _build(
    blocks: list[tuple[np.ndarray, np.ndarray, int]],
    lo: np.ndarray,
    hi: np.ndarray,
    pre: dict[int, tuple[np.ndarray, np.ndarray]],
) -> tuple[_Program, tuple[int, int]]:
    """The constraints shared by every rival of one sample; returns them and the last layer's columns."""
    prog = _Program([lo], [hi], [np.zeros(lo.size)], [], [], [], lo.size)
    prev = (0, lo.size)
    for w, b, relu in blocks[:-1]:
        low, up = pre[relu]
        slack = 1e-6 * (1 + np.abs(low) + np.abs(up))  # float32 bounds of a float64 program
        prev = (_relu_rows(prog, w, b, prev, low - slack, up + slack), w.shape[0])
    return prog, prev


def _solve(
    prog: _Program,
    cons: LinearConstraint,
    c: np.ndarray,
    const: float,
    limit: float,
    cap: float | None = None,
) -> tuple[float, float, np.ndarray | None]:
    """``(lower bound, objective at the best point, best point)`` of ``min c·v + const``.

    With ``cap``: only decide whether some point has ``c·v + const <= cap`` (a feasibility problem,
    which HiGHS settles much faster than the minimum): infeasible proves the lower bound ``cap``.
    """
    constraints = [cons]
    if cap is not None:
        constraints.append(LinearConstraint(c.reshape(1, -1), -np.inf, cap - const))
    res = milp(
        np.zeros_like(c) if cap is not None else c,
        integrality=np.concatenate(prog.integ),
        bounds=Bounds(np.concatenate(prog.lo), np.concatenate(prog.hi)),
        constraints=constraints,
        options={"time_limit": max(limit, 1e-3), "disp": False, "mip_rel_gap": 1e-6},
    )
    point = res.x if res.x is not None else None
    value = float(c @ point) + const if point is not None else np.inf
    dual = getattr(res, "mip_dual_bound", None)
    if cap is not None:  # infeasible: no point at or below the cap
        return (cap if res.status == 2 else -np.inf), value, point
    if res.status == 0:  # optimal: the dual bound is the optimum up to the gap
        lower = float(dual) + const if dual is not None and np.isfinite(dual) else value
        return min(lower, value), value, point
    # infeasible (the bounds were wrong: prove nothing) or time limit (the dual bound still holds)
    if res.status != 2 and dual is not None and np.isfinite(dual):
        return float(dual) + const, value, point
    return -np.inf, value, point


def _falsify(clf: Classifier, x: Tensor, y: Tensor, threat: ThreatModel, steps: int) -> list[Tensor | None]:
    """Adversarial points an APGD attack finds (re-checked by a fresh prediction, inside the ball)."""
    if steps <= 0:
        return [None] * x.shape[0]
    from ..attacks import APGD

    gen = torch.Generator(device=x.device).manual_seed(0)
    res = APGD(steps=steps, loss="margin")(clf, x, y, threat=threat, generator=gen)
    adv = res.adversarial.detach()
    dom_lo, dom_hi = threat.box_for(x)
    inside = ((adv - x).flatten(1).abs().amax(1) <= threat.epsilon) & (adv >= dom_lo).flatten(1).all(1)
    inside &= (adv <= dom_hi).flatten(1).all(1)
    broken = (clf.predict(adv) != y) & inside
    return [adv[i].clone() if bool(broken[i]) else None for i in range(x.shape[0])]


def _margin(clf: Classifier, x: Tensor, y: int) -> float:
    with torch.no_grad():
        out = clf(x)[0, : clf.num_classes]
    rival = out.clone()
    rival[y] = -torch.inf
    return float(out[y] - rival.max())


def certify_milp(
    clf: Classifier,
    layers: list[Layer],
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    time_limit: float,
    budget: int,
    exact: bool = False,
    falsify: int = 50,
) -> MilpResult:
    """Exact verification per sample (see the module docstring); ``exact`` solves every rival.

    ``falsify``: steps of an APGD attack (margin loss) run first; a sample it breaks (re-checked,
    inside the ball) is "not-robust" without a MILP (0: none; ignored with ``exact``)."""
    from .certificate import class_margins, domain_for

    if time_limit <= 0:
        raise ConfigError(f"time_limit must be > 0 seconds, got {time_limit}")
    blocks = dense_blocks(layers, tuple(x.shape[1:]))
    found = _falsify(clf, x, y, threat, falsify)
    status: list[str] = []
    lowers: list[float] = []
    uppers: list[float] = []
    points: list[Tensor | None] = []
    seconds: list[float] = []
    falsified = 0
    start = time.perf_counter()
    for i in range(x.shape[0]):
        if i:
            seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        xi, yi = x[i : i + 1], int(y[i])
        with torch.no_grad():
            margins, others, lb = class_margins(layers, xi, y[i : i + 1], threat, budget=budget)
        crown = margins[0].double().cpu().numpy()
        upper, point = _margin(clf, xi, yi), None
        if upper < 0 or found[i] is not None:  # misclassified clean, or an attack's point re-checked
            adv = xi[0].clone() if upper < 0 else found[i]
            assert adv is not None
            status.append("not-robust")
            lowers.append(float(crown.min()))
            uppers.append(_margin(clf, adv[None], yi))
            points.append(adv)
            falsified += int(upper >= 0)
            continue
        dom = domain_for(xi, threat)
        lo, hi = (t.reshape(-1).double().cpu().numpy() for t in (dom.lower, dom.upper))
        pre = {
            j: (b[0].reshape(-1).double().cpu().numpy(), b[1].reshape(-1).double().cpu().numpy())
            for j, b in enumerate(lb.bounds)
        }
        prog, (last0, last_n) = _build(blocks, lo, hi, pre)
        cons = prog.constraint()
        w, b, _ = blocks[-1]
        best = crown.copy()
        state = "robust"
        for col in np.argsort(crown):
            if (crown[col] > TOL and not exact) or (exact and crown[col] >= upper):
                continue  # proved by CROWN; or (exact) cannot be the minimising rival
            k = int(others[0, col])
            left = time_limit - (time.perf_counter() - start)
            if left <= 0:
                state = "unknown"
                break
            c = np.zeros(prog.n_vars)
            c[last0 : last0 + last_n] = w[yi] - w[k]
            const = float(b[yi] - b[k])
            low, value, sol = _solve(prog, cons, c, const, left, cap=None if exact else TOL)
            for attempt in range(2):
                if sol is not None and value < upper:  # re-check the solver's point by a fresh prediction
                    cand = torch.from_numpy(sol[: lo.size]).to(x.device, x.dtype).reshape(xi.shape)
                    cand = torch.minimum(torch.maximum(cand, dom.lower), dom.upper)
                    real = _margin(clf, cand, yi)
                    if real < upper:
                        upper, point = real, cand[0]
                left = time_limit - (time.perf_counter() - start)
                if attempt or exact or sol is None or upper < 0 or left <= 0:
                    break
                # a point at the cap that does not re-check (a tie, rounding): find the minimum
                low, value, sol = _solve(prog, cons, c, const, left)
            best[col] = max(best[col], low - (TOL if exact else 0.0))
            if upper < 0 and not exact:
                break
            if best[col] <= 0 and not (point is not None and upper < 0):
                state = "unknown"
        if point is not None and upper < 0:
            state = "not-robust"
        elif bool((best <= 0).any()):
            state = "unknown"
        status.append(state)
        lowers.append(float(best.min()))
        uppers.append(upper)
        points.append(point if state == "not-robust" else None)
    if x.shape[0]:
        seconds.append(time.perf_counter() - start)
    notes = (
        (f"{falsified} counterexample(s) found by the APGD falsifier before the MILP",) if falsified else ()
    )
    return MilpResult(
        tuple(status),
        torch.tensor(lowers, dtype=x.dtype),
        torch.tensor(uppers, dtype=x.dtype),
        tuple(points),
        torch.tensor(seconds, dtype=torch.float64),
        notes,
    )
