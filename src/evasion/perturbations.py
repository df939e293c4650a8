"""Norm maths, one pure function per job: norms, exact projections, steepest ascent, random starts.

Every attack uses these. Conventions: inputs are batched ``(N, ...)``; norms and budgets are per
sample; ``epsilon`` is a number or a tensor of shape ``(N,)``; ``lower``/``upper`` are tensors the
shape of ``x`` (``ThreatModel.box_for`` builds them, with the mask folded in as
``lower == upper == x``), and ``x`` itself lies inside the box.

Projections are exact: the result is the closest point (in the norm's own Euclidean sense) of the
intersection of the epsilon-ball around ``x`` with the box. For L∞ that intersection is a box; for
L2 and L1 the intersection is solved in closed form after one sort per sample (the L1 case is the
capped generalisation of the sorting-based simplex projection of Duchi et al. 2008).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import ConfigError, UnknownNameError

__all__ = [
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


def _project_l2_magnitudes(a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
    """|delta_i| = min(a_i s, cap_i) with the largest s in [0, 1] such that ||delta||_2 <= eps."""
    clipped = torch.minimum(a, cap)
    inside = clipped.square().sum(1, keepdim=True) <= eps.square()
    if bool(inside.all()):
        return clipped
    # coordinate i saturates (|delta_i| = cap_i) once s >= t_i = cap_i / a_i
    t = torch.where(a > 0, cap / a.clamp_min(_TINY), torch.full_like(a, math.inf))
    ts, order = torch.sort(t, dim=1)
    a2 = torch.gather(a.square(), 1, order)
    c2 = torch.gather(torch.where(a > 0, cap.square(), torch.zeros_like(cap)), 1, order)
    sat = torch.cumsum(c2, 1)  # squared norm of the saturated coordinates at s = ts[k]
    free = a2.sum(1, keepdim=True) - torch.cumsum(a2, 1)  # sum of a_i^2 still unsaturated
    g = sat + free * torch.where(torch.isinf(ts), torch.zeros_like(ts), ts).square()
    k = (g <= eps.square()).sum(1, keepdim=True)  # breakpoints passed before the root
    idx = (k - 1).clamp_min(0)
    c_k = torch.where(k > 0, torch.gather(sat, 1, idx), torch.zeros_like(eps))
    a_k = torch.where(k > 0, torch.gather(free, 1, idx), a2.sum(1, keepdim=True))
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
) -> Tensor:
    """A point drawn uniformly from the epsilon-ball around ``x``, then clipped into the box.

    Clipping only shrinks the perturbation, so the point stays inside the ball; pixels with
    ``lower == upper`` (masked out) stay at ``x``.
    """
    n, dims = x.shape[0], _flat(x).shape[1]
    eps = _per_sample(epsilon, x)
    if bool(torch.isinf(eps).any()):
        raise ConfigError("a random start needs a finite epsilon")
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)

    if p == "linf":
        delta = (2 * rand(n, dims) - 1) * eps
    elif p == "l2":
        g = randn(n, dims)
        radius = rand(n, 1) ** (1.0 / dims)
        delta = g / g.norm(dim=1, keepdim=True).clamp_min(_TINY) * radius * eps
    elif p == "l1":
        # uniform in the L1 ball: Dirichlet(1, ..., 1) weights over dims + 1 slots, random signs
        e = -torch.log(rand(n, dims + 1).clamp_min(1e-30))
        w = (e / e.sum(1, keepdim=True))[:, :dims]
        signs = torch.where(rand(n, dims) < 0.5, -1.0, 1.0).to(x.dtype)
        delta = w * signs * eps
    else:
        raise UnknownNameError("norm for random starts", p, ["linf", "l2", "l1"])
    return project_box(x + delta.reshape(x.shape), lower, upper)
