"""Interval bound propagation (IBP): sound elementwise bounds of a network over a box of inputs.

IBP pushes the box ``[lower, upper]`` through the layers one at a time (Gowal et al. 2018): an
affine layer maps the centre and the radius (``|W|`` times the radius), monotone layers (ReLU,
MaxPool, AvgPool, Flatten) map the two corners. Cheap (two forward passes) and differentiable with
respect to the model's parameters, which is what IBP certified training needs; loose on deep nets.
CROWN (:mod:`.crown`) is the tighter, costlier bound.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from .layers import Layer, extract_layers, ibp_layer

__all__ = ["ibp_bounds", "ibp_class_margins", "ibp_through", "margin_lower_from_bounds"]


def _check_box(lower: Tensor, upper: Tensor) -> None:
    if not isinstance(lower, Tensor) or not isinstance(upper, Tensor):
        raise InputError("lower and upper must be tensors")
    if lower.shape != upper.shape:
        raise InputError(f"lower and upper differ in shape: {tuple(lower.shape)} vs {tuple(upper.shape)}")
    if lower.dim() < 2 or lower.shape[0] == 0:
        raise InputError(f"bounds must be a non-empty batch (N, ...), got shape {tuple(lower.shape)}")
    if not bool(torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise InputError("lower and upper must be finite")
    if bool((lower > upper).any()):
        raise InputError("lower must be <= upper everywhere")


def ibp_through(layers: list[Layer], lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Interval bounds after ``layers`` for inputs in ``[lower, upper]``."""
    for layer in layers:
        lower, upper = ibp_layer(layer, lower, upper)
    return lower, upper


def ibp_bounds(model: nn.Module, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise lower and upper bounds of the model's logits for every input in ``[lower, upper]``.

    ``model`` is an evasion ``Classifier`` (its normalisation included) or a module made of
    supported layers (see :mod:`.layers`); an unsupported layer is a ConfigError naming it. The
    result is differentiable w.r.t. the model's parameters (IBP training); layers are taken in eval
    semantics whatever the model's mode.
    """
    _check_box(lower, upper)
    layers = extract_layers(model, lower)
    return ibp_through(layers, lower, upper)


def margin_lower_from_bounds(lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """Lower bound of ``f_y - max_{k != y} f_k`` from logit intervals: ``l_y - max_{k != y} u_k``."""
    if lower.shape[1] < 2:
        raise InputError("a margin needs at least two classes")
    ly = lower.gather(1, y.reshape(-1, 1)).squeeze(1)
    others = upper.scatter(1, y.reshape(-1, 1), float("-inf"))
    return ly - others.max(dim=1).values


#: elements of the (samples, classes, features) weight differences materialised at once
_ELIDE_CHUNK = 2**24


def ibp_class_margins(layers: list[Layer], lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """IBP lower bounds of ``f_y - f_k`` per class ``(N, K)`` (0 in column ``y``).

    The better of two sound bounds: ``l_y - u_k`` from the logit intervals, and, when the last
    layer is a ``Linear`` on flat features, the margin ``(w_y - w_k) . h + b_y - b_k`` bounded over
    the interval of the penultimate features ``h`` (the last layer folded into the
    specification, as IBP training does; usually much tighter).
    """
    if not layers:
        raise InputError("a margin needs at least one layer")
    h_lo, h_hi = ibp_through(layers[:-1], lower, upper)
    lo, hi = ibp_layer(layers[-1], h_lo, h_hi)
    if lo.shape[1] < 2:
        raise InputError("a margin needs at least two classes")
    col = y.reshape(-1, 1)
    margins = lo.gather(1, col) - hi
    last = layers[-1].module
    if isinstance(last, nn.Linear) and h_lo.dim() == 2:
        w = last.weight.to(h_lo.dtype)
        centre, radius = (h_hi + h_lo) / 2, (h_hi - h_lo) / 2
        wc = centre @ w.T  # (N, K): (w_y - w_k) . c = wc_y - wc_k
        folded = wc.gather(1, col) - wc
        if last.bias is not None:
            b = last.bias.to(h_lo.dtype)
            folded = folded + (b[y][:, None] - b[None, :])
        n, k, h = len(y), w.shape[0], w.shape[1]
        step = max(1, _ELIDE_CHUNK // max(1, k * h))
        spread = torch.cat(
            [
                torch.einsum(
                    "nkh,nh->nk", (w[y[i : i + step]][:, None, :] - w[None]).abs(), radius[i : i + step]
                )
                for i in range(0, n, step)
            ]
        )
        margins = torch.maximum(margins, folded - spread)
    return margins.scatter(1, col, 0.0)
