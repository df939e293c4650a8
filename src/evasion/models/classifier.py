"""`Classifier`: the one model type attacks, defences and evaluations talk to."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_images, check_labels
from ..errors import InputError, ModelError

__all__ = ["REJECT", "Classifier", "Normalize", "as_classifier", "eval_mode"]

#: the prediction of a classifier with a reject option for an input it refuses to classify
REJECT = -1


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode and put back exactly the modes it had (no lasting change)."""
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the preprocessing lives inside the model."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if any(s <= 0 for s in std):
            raise ModelError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """Wrap any ``nn.Module`` that maps images to logits (or discriminant scores).

    The wrapper owns what attacks must know: input ``bounds`` (attacks work in pixel space),
    the ``preprocess`` step (normalisation happens inside), ``num_classes`` and ``class_names``.
    It validates inputs (:meth:`check_inputs`), and runs the wrapped module in eval mode without
    changing the module's own mode or device. It is an ``nn.Module`` returning logits, so it can
    be handed to torchattacks, foolbox or ART unchanged.

    **Reject option.** A subclass with ``rejects = True`` returns ``num_classes + 1`` scores: the
    class scores followed by a *reject score*; :meth:`decide` returns :data:`REJECT` (-1) where the
    reject score is the largest. Any reject rule fits this form (the SVM-adv rule "reject if
    max_k f_k <= theta" is a constant reject score theta; a detector's "reject if p_adv > t" is
    ``max_k z_k + logit(p_adv) - logit(t)``), it stays differentiable, and attacks see it: an input
    that ends up rejected is not an evasion, so adaptive attacks push away from the reject score.
    """

    #: whether the last score column is a reject score and :meth:`decide` can return REJECT
    rejects: bool = False

    def __init__(
        self,
        module: nn.Module,
        num_classes: int,
        *,
        input_shape: Sequence[int] | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        preprocess: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        name: str | None = None,
        compile: bool = False,
    ):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ModelError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(f"num_classes must be a positive integer, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ModelError(f"class_names has {len(class_names)} names for {num_classes} classes")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ModelError(f"bounds must satisfy lower < upper, got {bounds}")
        self.module = module
        self.preprocess = preprocess if preprocess is not None else nn.Identity()
        self.num_classes = num_classes
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.bounds = (lo, hi)
        self.class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.name = name or type(module).__name__
        #: run the module through ``torch.compile`` (see :meth:`use_compile`)
        self.compiled = False
        if compile:
            self.use_compile()

    # -- compilation -------------------------------------------------------------------------
    def use_compile(self, enabled: bool = True) -> Classifier:
        """Run the module through ``torch.compile`` from the next forward on (``enabled=False``: eager).

        A faster forward+backward lowers the cost of every attack step. Compilation happens at
        the first forward (seconds to minutes); where it fails (no C++ compiler, an operation
        torch cannot compile), a ``RuntimeWarning`` names the reason and the model runs eagerly.
        While forward hooks are attached to the module (a detector reading a layer), the eager
        module runs, so the hooks always fire.
        """
        if not isinstance(enabled, bool):
            raise ModelError(f"compile must be True or False, got {enabled!r}")
        self.compiled = enabled
        self.__dict__.pop("_compiled_fn", None)
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_compiled_fn", None)  # compiled code does not pickle (Ray workers recompile)
        return state

    def _run_module(self, z: Tensor) -> Tensor:
        if self.compiled and not _has_forward_hooks(self.module):
            fn: Callable[[Tensor], Tensor] | None = self.__dict__.get("_compiled_fn")
            if fn is None:
                fn = torch.compile(self.module)
                self.__dict__["_compiled_fn"] = fn  # not a registered submodule: no state_dict keys
            try:
                return fn(z)
            except Exception as exc:  # any compiler failure: warn once, then run eagerly
                reason = (str(exc).strip().splitlines() or [""])[0][:200]
                warnings.warn(
                    f"torch.compile failed for model {self.name!r} ({type(exc).__name__}: {reason}); "
                    "running it eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.use_compile(False)
        return self.module(z)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``(N, num_classes)`` for pixel-space inputs ``x``.

        Mixed precision: inputs stay float32 (the threat model's maths, projections and
        norms are float32); they are cast to the module's dtype (e.g. bfloat16) on the way in,
        and the scores come back as float32, so losses and margins are computed in float32.
        """
        with eval_mode(self.module), eval_mode(self.preprocess):
            out = self._run_module(self.module_input(x))
        return self.check_scores(out).float() if _low_precision(out) else self.check_scores(out)

    def module_input(self, x: Tensor) -> Tensor:
        """``x`` preprocessed, and cast to the module's dtype when that is bfloat16 or float16."""
        z = self.preprocess(x)
        dtype = _floating_dtype(self.module)
        # only narrower floats are cast to; a float64 module keeps its own handling of float32 input
        return z.to(dtype) if dtype in _LOW_PRECISION and z.dtype != dtype else z

    @property
    def num_scores(self) -> int:
        """Columns of the output: ``num_classes``, plus one reject score for a reject option."""
        return self.num_classes + int(self.rejects)

    def check_scores(self, out: object) -> Tensor:
        """Check that a module's output is ``(N, num_scores)``; a clear ModelError otherwise."""
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != self.num_scores:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(
                f"model {self.name!r} returned {shape}, expected logits of shape (N, {self.num_scores})"
            )
        return out

    def decide(self, scores: Tensor) -> Tensor:
        """Predicted class per row of scores (``REJECT`` where the reject score is the largest)."""
        pred = scores.argmax(dim=1)
        if self.rejects:
            pred = torch.where(pred == self.num_classes, torch.full_like(pred, REJECT), pred)
        return pred

    def class_scores(self, scores: Tensor) -> Tensor:
        """The class columns of ``scores`` (drops the reject score, if any)."""
        return scores[:, : self.num_classes]

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Predicted labels (int64) for a batch, computed without gradients in chunks."""
        x = self.check_inputs(x)
        return torch.cat([self.decide(self(chunk)) for chunk in x.split(batch_size)])

    @torch.no_grad()
    def scores(self, x: Tensor, batch_size: int = 1024) -> Tensor:
        """Class scores for a batch without gradients, in chunks."""
        x = self.check_inputs(x)
        return torch.cat([self(chunk) for chunk in x.split(batch_size)])

    # -- facts -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def check_inputs(self, x: object) -> Tensor:
        """Validate an image batch (type, rank, channels, finite, in bounds) and move it to the device."""
        checked = check_images(x, input_shape=self.input_shape, bounds=self.bounds)
        return checked.to(self.device)

    def check_labels(self, y: object, n: int) -> Tensor:
        return check_labels(y, n, self.num_classes).to(self.device)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, bounds={self.bounds}"


def _has_forward_hooks(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _floating_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter (``None`` without one)."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return None


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _low_precision(t: object) -> bool:
    return isinstance(t, Tensor) and t.dtype in _LOW_PRECISION


def as_classifier(model: nn.Module, x: Tensor | None = None) -> Classifier:
    """Return ``model`` if it is a :class:`Classifier`, else wrap a plain module that returns logits.

    A plain module must be in eval mode (a module in training mode would give batch-dependent,
    random outputs); the number of classes is read from one forward pass on ``x[:1]``.
    """
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model must be an evasion Classifier or a torch.nn.Module, got {type(model).__name__}"
        )
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ModelError(
            f"model is in training mode (module {training[0]!r}); call model.eval() first "
            "or wrap it in evasion.models.Classifier, which runs it in eval mode"
        )
    if x is None or not isinstance(x, Tensor):
        raise InputError("cannot infer the number of classes of a plain module without an input batch")
    device = next((p.device for p in model.parameters()), x.device)
    dtype = _floating_dtype(model) or x.dtype
    with torch.no_grad():
        out = model(x[:1].to(device, dtype if x.is_floating_point() else x.dtype))
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(f"model returned {shape}, expected logits of shape (N, num_classes)")
    return Classifier(model, int(out.shape[1]), input_shape=tuple(x.shape[1:]))
