"""Norm maths, one pure function per job: norms, exact projections, steepest ascent, random starts.

Every attack uses these. Conventions: inputs are batched ``(N, ...)``; norms and budgets are per
sample; ``epsilon`` is a number or a tensor of shape ``(N,)``; ``lower``/``upper`` are tensors the
shape of ``x`` (``ThreatModel.box_for`` builds them, with the mask folded in as
``lower == upper == x``), and ``x`` itself lies inside the box.

Projections are exact: the result is the closest point (in the norm's own Euclidean sense) of the
intersection of the epsilon-ball around ``x`` with the box. For L∞ that intersection is a box; for
L2 the scale of the (box-capped) perturbation is the root of a monotone piecewise quadratic, found
exactly in a few sort-free iterations (one sort per sample where they do not settle); for L1 the
intersection is solved in closed form after sorting (the capped generalisation of the
sorting-based simplex projection of Duchi et al. 2008). :class:`BallBox` precomputes what an
iterative attack's projections onto one set share.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .errors import ConfigError, UnknownNameError

__all__ = [
    "BallBox",
    "direction",
    "norm",
    "project",
    "project_box",
    "random_start",
]

_TINY = 1e-12


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """A budget as a ``(N, 1)`` column on ``like``'s device."""
    n = like.shape[0]
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype).reshape(-1, 1).expand(n, 1)
    return torch.full((n, 1), float(value), device=like.device, dtype=like.dtype)


def norm(delta: Tensor, p: str) -> Tensor:
    """Per-sample norm of a perturbation batch ``(N, ...)`` -> ``(N,)``."""
    flat = _flat(delta)
    if p == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if p == "l2":
        return flat.norm(p=2, dim=1)
    if p == "l1":
        return flat.abs().sum(dim=1)
    if p == "l0":
        return _pixels(delta != 0).sum(dim=1).to(delta.dtype)
    raise UnknownNameError("norm", p, ["linf", "l2", "l1", "l0"])


def _pixels(changed: Tensor) -> Tensor:
    """``(N, pixels)``: whether any channel of each pixel is set.

    L0 counts *pixels*: for images ``(N, C, H, W)`` a pixel is all ``C`` channels at one
    ``(h, w)`` position (an attacker who changes one colour of a pixel pays as much as one who
    changes all three, as in Su et al.'s one-pixel attack and JSMA); any other shape counts
    coordinates.
    """
    if changed.dim() == 4:
        return changed.any(dim=1).reshape(changed.shape[0], -1)
    return _flat(changed)


def project_box(x_adv: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Clip to the per-pixel box (masked-out pixels have ``lower == upper``)."""
    return torch.maximum(torch.minimum(x_adv, upper), lower)


def project(
    x_adv: Tensor, x: Tensor, epsilon: float | Tensor, p: str, lower: Tensor, upper: Tensor
) -> Tensor:
    """Closest point to ``x_adv`` in ``{x' : ||x' - x||_p <= epsilon, lower <= x' <= upper}``.

    Exact for every norm (L0: keeps the ``epsilon`` pixels, all channels of each, whose change
    buys the most).
    """
    if not isinstance(epsilon, Tensor) and math.isinf(epsilon):
        return project_box(x_adv, lower, upper)
    if p == "linf":
        eps = _per_sample(epsilon, x).reshape((-1,) + (1,) * (x.dim() - 1))
        return torch.maximum(
            torch.minimum(x_adv, torch.minimum(upper, x + eps)), torch.maximum(lower, x - eps)
        )
    d = _flat(x_adv - x)
    # room to move in the direction of each coordinate's sign, >= 0 because x lies in the box
    cap = torch.where(d > 0, _flat(upper - x), _flat(x - lower)).clamp_min(0.0)
    a = d.abs()
    eps = _per_sample(epsilon, x)
    if p == "l2":
        mag = _project_l2_magnitudes(a, cap, eps)
    elif p == "l1":
        mag = _project_l1_magnitudes(a, cap, eps)
    elif p == "l0":
        mag = _project_l0_magnitudes(a, cap, eps, x.shape)
    else:
        raise UnknownNameError("norm", p, ["linf", "l2", "l1", "l0"])
    return x + (torch.sign(d) * mag).reshape(x.shape)


class BallBox:
    """The epsilon-ball around ``x`` intersected with the box, ready for many projections.

    An iterative attack projects onto the same set at every step; this computes once what
    :func:`project` would recompute every time (the L∞ bounds ``max(lower, x - eps)`` and
    ``min(upper, x + eps)``; the room ``upper - x`` and ``x - lower`` for L2 / L1 / L0), so the
    L∞ projection is a single clamp. ``project(z, rows)`` equals
    ``project(z, x[rows], epsilon, p, lower[rows], upper[rows])`` bit for bit; ``rows=None`` is
    the whole batch (no gather at all).
    """

    def __init__(self, x: Tensor, epsilon: float, p: str, lower: Tensor, upper: Tensor) -> None:
        if p not in ("linf", "l2", "l1", "l0"):
            raise UnknownNameError("norm", p, ["linf", "l2", "l1", "l0"])
        self.x, self.epsilon, self.p = x, float(epsilon), p
        if math.isinf(self.epsilon) or p == "linf":
            if math.isinf(self.epsilon):
                lo, hi = lower, upper
            else:
                eps = _per_sample(self.epsilon, x).reshape((-1,) + (1,) * (x.dim() - 1))
                lo, hi = torch.maximum(lower, x - eps), torch.minimum(upper, x + eps)
            # ``max(min(z, hi), lo)`` == ``clamp(z, lo, hi)`` once ``hi >= lo`` (as in ``project``,
            # ``lo`` wins where an input lies a rounding error outside its box)
            self._lo, self._hi = lo, torch.maximum(hi, lo)
        else:
            self._up, self._down = (upper - x).clamp_min(0.0), (x - lower).clamp_min(0.0)

    def project(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        """Closest point to ``z`` in the set (rows ``rows`` of the batch; ``None``: all rows)."""
        if math.isinf(self.epsilon) or self.p == "linf":
            lo, hi = (self._lo, self._hi) if rows is None else (self._lo[rows], self._hi[rows])
            return torch.clamp(z, lo, hi)
        x = self.x if rows is None else self.x[rows]
        up, down = (self._up, self._down) if rows is None else (self._up[rows], self._down[rows])
        d = _flat(z - x)
        cap = torch.where(d > 0, _flat(up), _flat(down))
        a = d.abs()
        eps = _per_sample(self.epsilon, x)
        if self.p == "l2":
            mag = _project_l2_magnitudes(a, cap, eps)
        elif self.p == "l1":
            mag = _project_l1_magnitudes(a, cap, eps)
        else:
            mag = _project_l0_magnitudes(a, cap, eps, x.shape)
        return x + (torch.sign(d) * mag).reshape(x.shape)


#: iterations of the L2 scale solver before the rows it has not settled fall back to the sort
_L2_ITERATIONS = 16


def _project_l2_magnitudes(a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
    """|delta_i| = min(a_i s, cap_i) with the largest s in [0, 1] such that ||delta||_2 <= eps.

    ``g(s) = sum_i min(a_i s, cap_i)^2`` is increasing and piecewise quadratic. From
    ``s_0 = eps / ||a||`` (below the root) each iteration freezes the coordinates saturated at
    ``s_k`` and solves the quadratic ``C_k + A_k s^2 = eps^2`` of that piece; the piece's quadratic
    lies above ``g`` right of ``s_k``, so ``s_k`` rises monotonically to the root and reaches it
    exactly once the saturated set stops growing (typically 2-3 iterations, no sort). Where the box
    cannot bind, the first iteration saturates nothing and ``s = eps / ||a||`` is the answer. Rows
    not settled after ``_L2_ITERATIONS`` take the exact sort-based solution.
    """
    clipped = torch.minimum(a, cap)
    inside = clipped.square().sum(1, keepdim=True) <= eps.square()
    if bool(inside.all()):
        return clipped
    a2, c2, e2 = a.square(), cap.square(), eps.square()
    one = torch.ones_like(eps)
    s = torch.where(inside, one, eps / a2.sum(1, keepdim=True).sqrt().clamp_min(_TINY)).clamp(max=1.0)
    count: Tensor | None = None  # saturated coordinates per row at the previous iterate
    moving: Tensor | None = ~inside  # rows whose saturated set grew in the last iteration
    for _ in range(_L2_ITERATIONS):
        sat = a * s >= cap
        now = sat.sum(1, keepdim=True)
        if count is not None:
            moving = now != count
            if not bool(moving.any()):  # the same piece as before: every s is its root
                moving = None
                break
        c = torch.where(sat, c2, 0.0).sum(1, keepdim=True)  # saturated: contribute cap_i^2
        rest = torch.where(sat, 0.0, a2).sum(1, keepdim=True)  # still scaling: a_i^2 s^2
        s = torch.where(inside, one, ((e2 - c).clamp_min(0) / rest.clamp_min(_TINY)).sqrt().clamp(max=1.0))
        count = now
    mag = torch.minimum(a * s, cap)
    if moving is not None:  # rows the iteration has not settled: the exact sort
        rows = moving[:, 0].nonzero()[:, 0]
        mag[rows] = _project_l2_magnitudes_sorted(a[rows], cap[rows], eps[rows])
    return torch.where(inside, clipped, mag)


def _project_l2_magnitudes_sorted(a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
    """The same solution by one sort of the breakpoints per row (the fallback and the reference)."""
    clipped = torch.minimum(a, cap)
    inside = clipped.square().sum(1, keepdim=True) <= eps.square()
    # coordinate i saturates (|delta_i| = cap_i) once s >= t_i = cap_i / a_i
    t = torch.where(a > 0, cap / a.clamp_min(_TINY), torch.full_like(a, math.inf))
    ts, order = torch.sort(t, dim=1)
    a2 = torch.gather(a.square(), 1, order)
    c2 = torch.gather(torch.where(a > 0, cap.square(), torch.zeros_like(cap)), 1, order)
    sat = torch.cumsum(c2, 1)  # squared norm of the saturated coordinates at s = ts[k]
    # sum of a_i^2 still unsaturated after breakpoint k, as suffix sums: ``total - cumsum`` loses
    # all precision in float32 once most of the mass has saturated
    suffix = torch.flip(torch.cumsum(torch.flip(a2, [1]), 1), [1])
    free = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], 1)
    g = sat + free * torch.where(torch.isinf(ts), torch.zeros_like(ts), ts).square()
    k = (g <= eps.square()).sum(1, keepdim=True)  # breakpoints passed before the root
    idx = (k - 1).clamp_min(0)
    c_k = torch.where(k > 0, torch.gather(sat, 1, idx), torch.zeros_like(eps))
    a_k = torch.where(k > 0, torch.gather(free, 1, idx), suffix[:, :1])
    s = ((eps.square() - c_k).clamp_min(0) / a_k.clamp_min(_TINY)).sqrt().clamp(0.0, 1.0)
    return torch.where(inside, clipped, torch.minimum(a * s, cap))


def _sum_relu(sorted_vals: Tensor, suffix: Tensor, tau: Tensor) -> Tensor:
    """sum_i max(v_i - tau, 0) for every tau, given v sorted ascending and its suffix sums."""
    n = sorted_vals.shape[1]
    pos = torch.searchsorted(sorted_vals, tau, right=True)  # number of v_i <= tau
    above = suffix.gather(1, pos.clamp_max(n)) if n else torch.zeros_like(tau)
    return above - (n - pos).to(tau.dtype) * tau


def _project_l1_magnitudes(a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
    """|delta_i| = clip(a_i - tau, 0, cap_i) with the smallest tau >= 0 giving ||delta||_1 <= eps."""
    clipped = torch.minimum(a, cap)
    inside = clipped.sum(1, keepdim=True) <= eps
    if bool(inside.all()):
        return clipped
    b = a - cap  # below this threshold coordinate i is saturated at cap_i
    a_s, _ = torch.sort(a, dim=1)
    b_s, _ = torch.sort(b, dim=1)
    zero = torch.zeros_like(a[:, :1])
    suf_a = torch.cat([torch.flip(torch.cumsum(torch.flip(a_s, [1]), 1), [1]), zero], 1)
    suf_b = torch.cat([torch.flip(torch.cumsum(torch.flip(b_s, [1]), 1), [1]), zero], 1)
    # h(tau) = sum relu(a - tau) - sum relu(b - tau) is piecewise linear with kinks at a_i and b_i
    cand, _ = torch.sort(torch.cat([a, b, zero], 1).clamp_min(0.0), dim=1)
    h = _sum_relu(a_s, suf_a, cand) - _sum_relu(b_s, suf_b, cand)
    j = ((h >= eps).sum(1, keepdim=True) - 1).clamp(0, cand.shape[1] - 2)
    t0, t1 = cand.gather(1, j), cand.gather(1, j + 1)
    h0, h1 = h.gather(1, j), h.gather(1, j + 1)
    slope = (h0 - h1).clamp_min(_TINY)
    tau = torch.where(h1 >= eps, t1, t0 + (h0 - eps).clamp_min(0) * (t1 - t0) / slope)
    mag = torch.minimum((a - tau).clamp_min(0.0), cap)
    return torch.where(inside, clipped, mag)


def _project_l0_magnitudes(a: Tensor, cap: Tensor, eps: Tensor, shape: torch.Size) -> Tensor:
    """Keep the k = floor(eps) pixels whose (box-clipped) change reduces the distance most.

    A kept pixel moves every channel to its box-clipped target; its gain is the sum of its
    channels' gains, so ranking pixels by that sum gives the closest point exactly.
    """
    clipped = torch.minimum(a, cap)
    gain = a.square() - (a - clipped).square()
    if len(shape) == 4:  # (N, C*H*W) -> per-pixel gain (N, H*W), channels summed
        gain = gain.reshape(shape).sum(dim=1).reshape(shape[0], -1)
    k = eps.floor().clamp(0, gain.shape[1]).long()
    ranks = torch.argsort(torch.argsort(gain, dim=1, descending=True, stable=True), dim=1)
    keep = ranks < k
    if len(shape) == 4:
        keep = keep.reshape(shape[0], 1, shape[2], shape[3]).expand(shape).reshape(shape[0], -1)
    return torch.where(keep, clipped, torch.zeros_like(clipped))


def direction(grad: Tensor, p: str, *, free: Tensor | None = None, l1_fraction: float = 0.01) -> Tensor:
    """Steepest-ascent direction of unit norm ``p`` for a gradient batch.

    ``free`` (bool, like ``grad``) restricts the direction to coordinates that can still move;
    for L1 the direction is the sign of the top ``l1_fraction`` of coordinates by ``|grad|``
    (the L1-steepest step moves a single coordinate; spreading it over a few is the standard
    remedy, as in SLIDE and APGD-L1), scaled to unit L1 norm.
    """
    if free is not None:
        grad = torch.where(free, grad, torch.zeros_like(grad))
    if p == "linf":
        return torch.sign(grad)
    flat = _flat(grad)
    if p == "l2":
        return grad / flat.norm(dim=1).clamp_min(_TINY).reshape((-1,) + (1,) * (grad.dim() - 1))
    if p == "l1":
        if not 0.0 < l1_fraction <= 1.0:
            raise ConfigError(f"l1_fraction must be in (0, 1], got {l1_fraction}")
        k = max(1, round(l1_fraction * flat.shape[1]))
        top = flat.abs().topk(k, dim=1)
        mask = torch.zeros_like(flat).scatter_(1, top.indices, 1.0) * (top.values[:, -1:] > 0)
        out = torch.sign(flat) * mask
        return (out / out.abs().sum(1, keepdim=True).clamp_min(_TINY)).reshape(grad.shape)
    raise UnknownNameError("norm for gradient steps", p, ["linf", "l2", "l1"])


def random_start(
    x: Tensor,
    epsilon: float | Tensor,
    p: str,
    lower: Tensor,
    upper: Tensor,
    generator: torch.Generator | None = None,
    *,
    radius: Literal["volume", "uniform"] = "volume",
) -> Tensor:
    """A point drawn uniformly from the epsilon-ball around ``x``, then clipped into the box.

    Clipping only shrinks the perturbation, so the point stays inside the ball; pixels with
    ``lower == upper`` (masked out) stay at ``x``.

    ``radius`` (L2 only): ``"volume"`` draws uniformly from the ball's volume, which in ``d``
    dimensions puts almost every point at distance ~``epsilon`` (``P(r <= t eps) = t^d``);
    ``"uniform"`` draws a uniformly random direction at a distance uniform in ``[0, epsilon]``
    (torchattacks' PGD-L2 start). Attacks start with ``"uniform"``: on mnist-cnn, PGD-L2 with 10
    or 40 steps breaks 1-1.5 % more of the test set from it than from a volume-uniform start,
    which sits on the sphere in a random direction the steps must first undo. Both draw the same
    random numbers in the same order (only the radius is transformed differently).
    """
    n, dims = x.shape[0], _flat(x).shape[1]
    eps = _per_sample(epsilon, x)
    if bool(torch.isinf(eps).any()):
        raise ConfigError("a random start needs a finite epsilon")
    if radius not in ("volume", "uniform"):
        raise ConfigError(f"radius must be 'volume' or 'uniform', got {radius!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)

    if p == "linf":
        delta = (2 * rand(n, dims) - 1) * eps
    elif p == "l2":
        g = randn(n, dims)
        u = rand(n, 1)
        r = u if radius == "uniform" else u ** (1.0 / dims)
        delta = g / g.norm(dim=1, keepdim=True).clamp_min(_TINY) * r * eps
    elif p == "l1":
        # uniform in the L1 ball: Dirichlet(1, ..., 1) weights over dims + 1 slots, random signs
        e = -torch.log(rand(n, dims + 1).clamp_min(1e-30))
        w = (e / e.sum(1, keepdim=True))[:, :dims]
        signs = torch.where(rand(n, dims) < 0.5, -1.0, 1.0).to(x.dtype)
        delta = w * signs * eps
    else:
        raise UnknownNameError("norm for random starts", p, ["linf", "l2", "l1"])
    return project_box(x + delta.reshape(x.shape), lower, upper)
