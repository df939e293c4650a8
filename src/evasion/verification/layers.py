"""A model as the flat list of layers bound propagation walks through, or a clear refusal.

Bounds are only sound for the function the list describes, so the list must be exactly the
model's forward pass. Three kinds of containers are opened:

- an evasion :class:`~evasion.models.Classifier` (without a reject option): its normalisation, then
  its module;
- an ``nn.Sequential`` (its forward is the plain loop over its children);
- any other module with children, *if* tracing one forward pass shows that its forward is a plain
  chain of its children: each child called with the previous child's output (the very same tensor,
  not modified in place in between) and the module returning the last child's output. The
  architectures of ``models/architectures/small.py`` (``mnist-cnn``, ``digits-mlp``, ``digits-cnn``)
  are such chains. A forward that adds, reshapes or applies a function between children (a residual
  block, ``torch.flatten(x, 1)``, ``F.relu``) breaks the chain and is refused with the module's name.

Leaves must be one of the supported layer types (exact type, so that a subclass with its own
forward is not mistaken for its base); anything else is a :class:`~evasion.errors.ConfigError`
naming the layer, e.g. ``cannot bound layer 'features.3' (GELU)``. Layers are always taken in their
eval-mode semantics: BatchNorm uses its running statistics, Dropout is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.classifier import Classifier, Normalize, eval_mode

__all__ = ["SUPPORTED", "Layer", "affine", "diagonal", "extract_layers"]

_AFFINE: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.Flatten,
    nn.AvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    Normalize,
)
_IDENTITY: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
#: the layer types bound propagation accepts (by exact type)
SUPPORTED: tuple[type[nn.Module], ...] = (*_AFFINE, nn.ReLU, nn.MaxPool2d, *_IDENTITY)


@dataclass(frozen=True)
class Layer:
    """One step of the forward pass: ``kind`` is "affine", "relu" or "maxpool"."""

    name: str
    module: nn.Module
    kind: str

    def forward(self, x: Tensor) -> Tensor:
        """The layer's eval-mode output (BatchNorm on running statistics)."""
        if self.kind == "affine":
            return affine(self.module, x)
        return self.module(x)


def affine(module: nn.Module, x: Tensor) -> Tensor:
    """Apply an affine layer in eval semantics."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = diagonal(module, x)
        return x * scale + shift
    return module(x)


def diagonal(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of a per-channel affine layer (BatchNorm in eval, Normalize), broadcastable to x."""
    if isinstance(module, Normalize):
        std, mean = module.std.to(x.dtype), module.mean.to(x.dtype)
        return 1.0 / std, -mean / std
    assert isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))
    assert module.running_mean is not None and module.running_var is not None
    scale = torch.rsqrt(module.running_var.to(x.dtype) + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean.to(x.dtype) * scale
    if module.bias is not None:
        shift = shift + module.bias
    shape = [1, -1] + [1] * (x.dim() - 2)
    return scale.reshape(shape), shift.reshape(shape)


def _refuse(name: str, module: nn.Module, why: str = "") -> ConfigError:
    supported = ", ".join(sorted({t.__name__ for t in SUPPORTED}))
    why = f": {why}" if why else ""
    return ConfigError(
        f"cannot bound layer {name or '<model>'!r} ({type(module).__name__}){why}; "
        f"bound propagation supports {supported} and sequential containers of them"
    )


def _leaf(name: str, module: nn.Module) -> list[Layer]:
    kind = type(module)
    if kind in _IDENTITY:
        return []
    if kind is nn.ReLU:
        return [Layer(name, module, "relu")]
    if kind is nn.MaxPool2d:
        assert isinstance(module, nn.MaxPool2d)
        if module.return_indices:
            raise _refuse(name, module, "return_indices=True")
        return [Layer(name, module, "maxpool")]
    if kind is nn.Conv2d:
        assert isinstance(module, nn.Conv2d)
        if module.padding_mode != "zeros":
            raise _refuse(name, module, f"padding_mode={module.padding_mode!r} (only 'zeros')")
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        assert isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))
        if module.running_mean is None or module.running_var is None:
            raise _refuse(name, module, "no running statistics (track_running_stats=False)")
    if kind in _AFFINE:
        return [Layer(name, module, "affine")]
    raise _refuse(name, module)


def _join(prefix: str, child: str) -> str:
    return f"{prefix}.{child}" if prefix else child


def _trace_chain(name: str, module: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, Tensor]]:
    """The children ``module``'s forward calls on ``x``, with their inputs, if it is a plain chain."""
    calls: list[dict[str, Any]] = []
    handles = []
    for child_name, child in module.named_children():

        def pre(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], n: str = child_name) -> None:
            ok = len(args) == 1 and not kwargs and isinstance(args[0], Tensor)
            inp = args[0] if ok else None
            calls.append(
                {"name": n, "module": m, "ok": ok, "input": inp, "version": getattr(inp, "_version", -1)}
            )

        def post(m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            call = next(c for c in reversed(calls) if c["module"] is m and "output" not in c)
            call["output"] = out
            call["out_version"] = out._version if isinstance(out, Tensor) else -1

        handles.append(child.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(child.register_forward_hook(post))
    try:
        with torch.no_grad(), eval_mode(module):
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    why = "its forward is not a plain chain of its submodules (compute between them, branches or skips)"
    prev: object = x
    version = x._version
    for call in calls:
        if not call["ok"] or call["input"] is not prev or call["version"] != version:
            raise _refuse(name, module, why)
        prev, version = call.get("output"), call.get("out_version", -1)
    if not calls or out is not prev or not isinstance(out, Tensor) or out._version != version:
        raise _refuse(name, module, why)
    return [(_join(name, c["name"]), c["module"], c["input"].detach().clone()) for c in calls]


def _flatten(name: str, module: nn.Module, x: Tensor) -> tuple[list[Layer], Tensor]:
    """Layers of ``module`` on the example input ``x``, and the module's output on it."""
    if isinstance(module, Classifier):
        if module.rejects or type(module).forward is not Classifier.forward:
            raise _refuse(name, module, "a classifier with a reject option or its own forward")
        pre, x = _flatten(_join(name, "preprocess"), module.preprocess, x)
        body, x = _flatten(_join(name, "module"), module.module, x)
        return pre + body, x
    if type(module).forward is nn.Sequential.forward:
        layers: list[Layer] = []
        for child_name, child in module.named_children():
            sub, x = _flatten(_join(name, child_name), child, x)
            layers += sub
        return layers, x
    if not any(True for _ in module.children()):
        leaf = _leaf(name, module)
        with torch.no_grad(), eval_mode(module):
            return leaf, (leaf[0].forward(x) if leaf else x)
    layers = []
    for child_name, child, child_x in _trace_chain(name, module, x):
        sub, x = _flatten(child_name, child, child_x)
        layers += sub
    return layers, x


def extract_layers(model: nn.Module, example: Tensor) -> list[Layer]:
    """The model's forward pass as a flat list of supported layers (traced on ``example[:1]``).

    Raises ConfigError naming the first layer or module that cannot be bounded.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers, _ = _flatten("", model, example[:1].detach())
    return layers


def ibp_layer(layer: Layer, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Interval bounds of one layer's output for inputs in ``[lower, upper]`` (elementwise)."""
    m = layer.module
    if layer.kind in ("relu", "maxpool") or isinstance(m, (nn.Flatten, nn.AvgPool2d)):
        return m(lower), m(upper)  # monotone non-decreasing
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        if isinstance(m, nn.Linear):
            c, r = F.linear(mid, m.weight, m.bias), F.linear(rad, m.weight.abs())
        else:
            c = m(mid)
            r = F.conv2d(rad, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
        return c - r, c + r
    scale, shift = diagonal(m, lower)
    a, b = lower * scale + shift, upper * scale + shift
    return torch.minimum(a, b), torch.maximum(a, b)
