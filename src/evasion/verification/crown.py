"""CROWN: backward linear bound propagation (Zhang et al. 2018), with optional optimised slopes.

A lower bound of ``c · f(x)`` over the input set is found by carrying the row ``c`` backwards
through the network: an affine layer is transposed exactly, a ReLU is replaced by a linear
relaxation chosen by the sign of the coefficient (the chord above an unstable neuron, a line
``alpha * z`` with ``alpha`` in [0, 1] below it; CROWN's adaptive choice ``alpha = 1 if u > -l``,
or ``alpha`` optimised by gradient ascent as in alpha-CROWN, every choice being sound), and the
final linear function of the input is minimised in closed form over the input set:

- L∞ ball ∩ box: the set is a box, the minimum is exact (``A·mid - |A|·rad``);
- L2 ball ∩ box: the larger of the dual-norm bound ``A·x - eps·||A||_2`` and the bound over the
  enclosing box ``[max(x - eps, lo), min(x + eps, hi)]`` (both hold on the intersection).

MaxPool is relaxed linearly as in DeepPoly: below by the input with the largest lower bound,
above by that input when its lower bound beats every other upper bound in the window, else by the
constant ``max u``. Pre-activation bounds of each ReLU come from CROWN on the sub-network before it,
for the neurons IBP leaves unstable, intersected with the IBP bounds; a layer with more unstable
neurons than a cost budget allows keeps its IBP bounds (sound, looser: one dense backward pass per
unstable neuron is what makes full CROWN infeasible on large conv layers). Before the first ReLU of
an L∞ problem IBP is already exact and is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import Layer, diagonal, ibp_layer

__all__ = ["BUDGET", "Domain", "LinearBounds", "backward_bound", "concretize", "relu_bounds"]

#: floats one chunk of backward passes may hold at its widest layer (~256 MB)
CHUNK_ELEMENTS = 1 << 26
#: default cost cap of tightening one ReLU layer: unstable neurons x widest earlier layer, per sample
BUDGET = 1 << 23


@dataclass(frozen=True)
class Domain:
    """The input set: ``||x' - x|| <= eps`` in ``norm`` intersected with the box ``[lower, upper]``.

    ``lower``/``upper`` are already the box ∩ ``[x - eps, x + eps]`` (exactly the set for L∞)."""

    x: Tensor
    lower: Tensor
    upper: Tensor
    norm: str
    eps: float


def concretize(a: Tensor, bias: Tensor, dom: Domain) -> Tensor:
    """Lower bound ``(N, S)`` of ``a · x' + bias`` over the domain, for ``a`` of shape ``(N, S, *x)``."""
    n, s = a.shape[:2]
    af = a.reshape(n, s, -1)
    mid = ((dom.upper + dom.lower) / 2).reshape(n, -1, 1)
    rad = ((dom.upper - dom.lower) / 2).reshape(n, -1, 1)
    out = torch.bmm(af, mid).squeeze(2) - torch.bmm(af.abs(), rad).squeeze(2)
    if dom.norm == "l2":
        ball = torch.bmm(af, dom.x.reshape(n, -1, 1)).squeeze(2) - dom.eps * af.norm(dim=2)
        out = torch.maximum(out, ball)
    return out + bias


def _affine_back(layer: Layer, a: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``(a·M, a·c)`` for the affine layer ``z -> M z + c``; ``a`` is ``(N, S, *out)``."""
    m, (n, s) = layer.module, a.shape[:2]
    if isinstance(m, nn.Linear):
        bias = a @ m.bias if m.bias is not None else a.new_zeros(n, s)
        return a @ m.weight, bias
    if isinstance(m, nn.Flatten):
        return a.reshape(n, s, *in_shape), a.new_zeros(n, s)
    if not isinstance(m, (nn.Conv2d, nn.AvgPool2d)):
        scale, shift = diagonal(m, a.reshape(n * s, *a.shape[2:]))
        return a * scale.unsqueeze(0), (a * shift.unsqueeze(0)).flatten(2).sum(2)
    flat = a.reshape(n * s, *a.shape[2:])
    if isinstance(m, nn.Conv2d) and not isinstance(m.padding, str):
        out_hw, in_hw = flat.shape[-2:], in_shape[-2:]
        pad = [
            in_hw[i]
            - ((out_hw[i] - 1) * m.stride[i] - 2 * m.padding[i] + m.dilation[i] * (m.kernel_size[i] - 1) + 1)
            for i in range(2)
        ]
        back = F.conv_transpose2d(flat, m.weight, None, m.stride, m.padding, tuple(pad), m.groups, m.dilation)
    else:  # AvgPool2d and string padding: the transpose by autograd
        with torch.enable_grad():
            z = torch.zeros((n * s, *in_shape), dtype=a.dtype, device=a.device, requires_grad=True)
            (back,) = torch.autograd.grad(m(z), z, flat, create_graph=torch.is_grad_enabled())
    const = layer.forward(torch.zeros((1, *in_shape), dtype=a.dtype, device=a.device))
    return back.reshape(n, s, *in_shape), (a * const.unsqueeze(0)).flatten(2).sum(2)


def _relu_back(a: Tensor, lower: Tensor, upper: Tensor, alpha: Tensor | None) -> tuple[Tensor, Tensor]:
    """ReLU relaxation: chord above unstable neurons, ``alpha * z`` below (adaptive when None)."""
    unstable = (lower < 0) & (upper > 0)
    active = lower >= 0
    width = (upper - lower).clamp(min=1e-12)
    up_slope = torch.where(unstable, upper / width, active.to(a.dtype))
    up_bias = torch.where(unstable, -upper * lower / width, torch.zeros_like(lower))
    if alpha is None:
        lo_slope = torch.where(unstable, (upper > -lower).to(a.dtype), active.to(a.dtype)).unsqueeze(1)
    else:
        lo_slope = torch.where(unstable.unsqueeze(1), alpha, active.to(a.dtype).unsqueeze(1))
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    new = pos * lo_slope + neg * up_slope.unsqueeze(1)
    return new, (neg * up_bias.unsqueeze(1)).flatten(2).sum(2)


def _windows(m: nn.MaxPool2d, t: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, list[int]]:
    """``(N, C, K, L)`` pooling windows of ``t`` padded with -inf, and the padding used."""
    pair = nn.modules.utils._pair
    k, st, p, d = pair(m.kernel_size), pair(m.stride), pair(m.padding), pair(m.dilation)
    need = [(out_hw[i] - 1) * st[i] + d[i] * (k[i] - 1) + 1 for i in range(2)]
    right = [max(p[i], need[i] - t.shape[2 + i] - p[i]) for i in range(2)]
    pads = [p[1], right[1], p[0], right[0]]
    padded = F.pad(t, pads, value=float("-inf"))
    cols = F.unfold(padded, k, dilation=d, stride=st)
    n, c = t.shape[:2]
    if cols.shape[2] != out_hw[0] * out_hw[1]:
        raise ConfigError(f"cannot relax MaxPool2d {m}: {cols.shape[2]} windows for an output of {out_hw}")
    return cols.reshape(n, c, k[0] * k[1], -1), pads


def _maxpool_back(m: nn.MaxPool2d, a: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """DeepPoly MaxPool relaxation: ``x_j* <= max <= x_j*`` (dominant) or ``<= max u`` (else)."""
    (n, s), out_hw = a.shape[:2], (a.shape[-2], a.shape[-1])
    lw, pads = _windows(m, lower, out_hw)
    uw, _ = _windows(m, upper, out_hw)
    best = lw.argmax(dim=2, keepdim=True)  # (N, C, 1, L)
    others = uw.scatter(2, best, float("-inf")).amax(dim=2)
    dominant = lw.gather(2, best).squeeze(2) >= others
    umax = uw.amax(dim=2)
    af = a.reshape(n, s, *lw.shape[1:2], -1)  # (N, S, C, L)
    pos, neg = af.clamp(min=0), af.clamp(max=0)
    coef = pos + neg * dominant.unsqueeze(1)
    bias = (neg * (~dominant).unsqueeze(1) * umax.unsqueeze(1)).flatten(2).sum(2)
    onehot = torch.zeros_like(lw).scatter_(2, best, 1.0)  # (N, C, K, L)
    cols = (onehot.unsqueeze(1) * coef.unsqueeze(3)).reshape(n * s, -1, lw.shape[-1])
    pair = nn.modules.utils._pair
    hw = (lower.shape[2] + pads[2] + pads[3], lower.shape[3] + pads[0] + pads[1])
    img = F.fold(cols, hw, pair(m.kernel_size), dilation=pair(m.dilation), stride=pair(m.stride))
    img = img[:, :, pads[2] : pads[2] + lower.shape[2], pads[0] : pads[0] + lower.shape[3]]
    return img.reshape(n, s, *lower.shape[1:]), bias


def backward_bound(
    layers: list[Layer],
    spec: Tensor,
    bounds: list[tuple[Tensor, Tensor]],
    dom: Domain,
    alphas: dict[int, Tensor] | None = None,
) -> Tensor:
    """Lower bound ``(N, S)`` of ``spec · layers(x')`` over the domain.

    ``spec`` is ``(N, S, *out)``; ``bounds[i]`` are sound bounds of layer ``i``'s input (those of
    ReLU and MaxPool inputs are used); ``alphas[i]`` optional lower slopes of ReLU ``i``.
    """
    a, bias = spec, spec.new_zeros(spec.shape[:2])
    for i in reversed(range(len(layers))):
        layer, (lo, hi) = layers[i], bounds[i]
        if layer.kind == "affine":
            a, b = _affine_back(layer, a, tuple(lo.shape[1:]))
        elif layer.kind == "relu":
            a, b = _relu_back(a, lo, hi, None if alphas is None else alphas.get(i))
        else:
            assert isinstance(layer.module, nn.MaxPool2d)
            a, b = _maxpool_back(layer.module, a, lo, hi)
        bias = bias + b
    return concretize(a, bias, dom)


def _tighten(
    layers: list[Layer], bounds: list[tuple[Tensor, Tensor]], lo: Tensor, hi: Tensor, dom: Domain, budget: int
) -> tuple[Tensor, Tensor, bool]:
    """CROWN bounds of the unstable neurons of ``layers``' output, intersected with ``[lo, hi]``."""
    n = lo.shape[0]
    unstable = ((lo < 0) & (hi > 0)).reshape(n, -1)
    count = int(unstable.sum(1).max())
    if count == 0:
        return lo, hi, True
    widest = max([b[0][0].numel() for b in bounds] + [lo[0].numel()])
    if count * widest > budget:
        return lo, hi, False
    order = unstable.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :count]
    valid = unstable.gather(1, order)
    chunk = max(1, CHUNK_ELEMENTS // (2 * n * widest))
    lf, hf = lo.reshape(n, -1).clone(), hi.reshape(n, -1).clone()
    for start in range(0, count, chunk):
        idx = order[:, start : start + chunk]
        k = idx.shape[1]
        spec = lo.new_zeros(n, 2 * k, lf.shape[1])
        rows = torch.arange(k, device=lo.device).expand(n, k)
        spec[torch.arange(n).unsqueeze(1), rows, idx] = 1.0
        spec[torch.arange(n).unsqueeze(1), rows + k, idx] = -1.0
        bound = backward_bound(layers, spec.reshape(n, 2 * k, *lo.shape[1:]), bounds, dom)
        ok = valid[:, start : start + k]
        new_lo = torch.where(ok, torch.maximum(lf.gather(1, idx), bound[:, :k]), lf.gather(1, idx))
        new_hi = torch.where(ok, torch.minimum(hf.gather(1, idx), -bound[:, k:]), hf.gather(1, idx))
        lf = lf.scatter(1, idx, new_lo)
        hf = hf.scatter(1, idx, new_hi)
    return lf.reshape(lo.shape), hf.reshape(hi.shape), True


@dataclass(frozen=True)
class LinearBounds:
    """Bounds of every layer's input (``bounds[i]``) and the output's interval; ``crown_layers``
    lists the ReLUs whose pre-activation bounds CROWN tightened (the others kept IBP's)."""

    bounds: list[tuple[Tensor, Tensor]]
    output: tuple[Tensor, Tensor]
    crown_layers: tuple[str, ...]
    ibp_layers: tuple[str, ...]


def _ibp_exact(prefix: list[Layer], dom: Domain) -> bool:
    """IBP is exact on an L∞ box through per-channel scalings and at most one mixing affine layer."""
    mixing = [
        la
        for la in prefix
        if la.kind != "affine" or isinstance(la.module, (nn.Linear, nn.Conv2d, nn.AvgPool2d))
    ]
    return dom.norm == "linf" and len(mixing) <= 1 and all(la.kind == "affine" for la in prefix)


def relu_bounds(layers: list[Layer], dom: Domain, *, budget: int = BUDGET) -> LinearBounds:
    """Sound bounds of each layer's input: IBP, tightened by CROWN before every ReLU.

    A ReLU layer is tightened when (its unstable neurons) x (the widest layer before it) is at most
    ``budget`` (the cost of the dense backward passes); otherwise it keeps the IBP bounds."""
    lo, hi = dom.lower, dom.upper
    bounds: list[tuple[Tensor, Tensor]] = []
    crown: list[str] = []
    ibp: list[str] = []
    for i, layer in enumerate(layers):
        if layer.kind == "relu" and i > 0 and not _ibp_exact(layers[:i], dom):
            lo, hi, done = _tighten(layers[:i], bounds, lo, hi, dom, budget)
            (crown if done else ibp).append(layer.name)
        bounds.append((lo, hi))
        lo, hi = ibp_layer(layer, lo, hi)
    return LinearBounds(bounds, (lo, hi), tuple(crown), tuple(ibp))
