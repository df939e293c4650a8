"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017): ONE perturbation for a dataset.

:class:`Universal` fits a single image-agnostic perturbation ``v`` on a set of images: it visits
the images in a random order (from the generator) and, for each image that ``v`` does not fool
yet, adds the minimal perturbation that sends ``x + v`` across the nearest decision boundary
(the library's :class:`~evasion.attacks.DeepFool`), then projects ``v`` back onto the L∞ or L2
ball of radius ``epsilon``. It stops when the fooling rate on the fitting images reaches
``fooling`` or after ``passes`` passes, and returns the ``v`` of the best pass (with dense L∞
steps a pass can undo the previous one's gains). It is not a per-sample :class:`Attack`: it returns a
:class:`UniversalPerturbation` record.

**Fooling rate.** The fraction of images whose *predicted* label changes when ``v`` is added:
``k(clip(x + v)) != k(x)``, measured against the model's clean predictions, not against the true
labels (an image the model already gets wrong is fooled only if its prediction moves; ART
compares with the labels passed in). A move to ``REJECT`` is not a fooling (the defence caught
it), and images the model rejects when clean are left out. Report it on *held-out* images
(:func:`fooling_rate`), not on the images ``v`` was fitted on.

**Budget.** ``epsilon`` is on the data's own scale (images in [0, 1]: L∞ 0.1 is 25.5 grey
levels), never on a 0-255 scale; an L∞ budget wider than the input range is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import fraction, integer, positive
from ..errors import ConfigError, InputError
from ..models.classifier import REJECT, Classifier, as_classifier
from ..perturbations import norm as perturbation_norm
from ..perturbations import project
from ..threat_model import ThreatModel
from .base import default_generator
from .deepfool import DeepFool

__all__ = ["Universal", "UniversalPerturbation", "fooling_rate"]


@dataclass(frozen=True)
class UniversalPerturbation:
    """One perturbation for a dataset, and how well it fools the model it was fitted on.

    Attributes:
        perturbation: ``v``, shaped like one image, ``||v|| <= epsilon``: the ``v`` of the pass
            with the highest fooling rate on the fitting images.
        norm, epsilon: the budget it respects.
        fooling_rate: on the fitting images, of the returned ``v``.
        history: the fitting-set fooling rate after each pass.
        passes: passes made over the fitting images.
        forwards, backwards: model evaluations and class-gradient computations used to fit it.
        config: the :class:`Universal` settings and the number of fitting images.
    """

    perturbation: Tensor
    norm: str
    epsilon: float
    fooling_rate: float
    history: tuple[float, ...]
    passes: int
    forwards: int
    backwards: int
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    def apply(self, x: Tensor, bounds: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """``clip(x + v)`` for a batch ``x`` (the box is the model's input range)."""
        v = self.perturbation.to(x.device, x.dtype)
        return (x + v).clamp(bounds[0], bounds[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm,
            "epsilon": self.epsilon,
            "fooling_rate": self.fooling_rate,
            "history": list(self.history),
            "passes": self.passes,
            "forwards": self.forwards,
            "backwards": self.backwards,
            "achieved_norm": float(perturbation_norm(self.perturbation[None], self.norm)[0]),
            "config": dict(self.config),
        }


def _fooled(model: Classifier, x: Tensor, v: Tensor, clean: Tensor, batch_size: int = 512) -> Tensor:
    """Whether ``clip(x + v)`` changes each clean prediction (a move to REJECT does not count)."""
    lo, hi = model.bounds
    pred = model.predict((x + v).clamp(lo, hi), batch_size=batch_size)
    return (pred != clean) & (pred != REJECT)


def fooling_rate(model: nn.Module, x: Tensor, perturbation: Tensor | UniversalPerturbation) -> float:
    """Fraction of ``x`` whose predicted label changes when the perturbation is added.

    Measured against the model's own clean predictions (not labels); images it rejects when clean
    are left out, and a change to REJECT is not counted as fooled.
    """
    clf = as_classifier(model, x)
    x = clf.check_inputs(x)
    v = perturbation.perturbation if isinstance(perturbation, UniversalPerturbation) else perturbation
    if not isinstance(v, Tensor) or tuple(v.shape) != tuple(x.shape[1:]):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise InputError(f"the perturbation has shape {shape}, the images {tuple(x.shape[1:])}")
    v = v.to(x.device, x.dtype)
    clean = clf.predict(x)
    keep = clean != REJECT
    if not bool(keep.any()):
        raise InputError("the model rejects every clean image: no fooling rate to measure")
    return float(_fooled(clf, x[keep], v, clean[keep]).float().mean())


@dataclass(frozen=True)
class Universal:
    """Configuration of the universal-perturbation search (Moosavi-Dezfooli et al. 2017, Alg. 1).

    Args:
        norm: ``"linf"`` or ``"l2"``.
        epsilon: the radius ``xi`` of the ball ``v`` is projected onto, on the data's scale.
        fooling: stop once this fraction of the fitting images is fooled (the paper's ``1 - delta``).
        passes: the most passes over the fitting images.
        deepfool_steps, overshoot: the inner DeepFool's settings.
        batch_size: unfooled images are sent to DeepFool this many at a time (all at the current
            ``v``); their steps are then added to ``v`` one after another, each followed by the
            projection, as in the paper's loop. ``1`` is the paper's exact sequential algorithm.
    """

    norm: str = "linf"
    epsilon: float = 0.1
    fooling: float = 0.8
    passes: int = 5
    deepfool_steps: int = 10
    overshoot: float = 0.02
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"universal perturbations support the linf and l2 norms, got {self.norm!r}")
        positive(self.epsilon, "epsilon")
        fraction(self.fooling, "fooling", open_low=True)
        integer(self.passes, "passes", minimum=1)
        integer(self.deepfool_steps, "deepfool_steps", minimum=1)
        positive(self.overshoot, "overshoot", allow_zero=True)
        integer(self.batch_size, "batch_size", minimum=1)

    def __call__(
        self, model: nn.Module, x: Tensor, *, generator: torch.Generator | None = None
    ) -> UniversalPerturbation:
        """Fit one perturbation on the images ``x`` (labels are not needed: clean predictions are)."""
        clf = as_classifier(model, x)
        x = clf.check_inputs(x).detach()
        lo, hi = clf.bounds
        if self.norm == "linf" and self.epsilon > hi - lo:
            raise ConfigError(
                f"epsilon {self.epsilon} exceeds the input range {clf.bounds}: budgets are on the data's own scale"
            )
        gen = default_generator(generator)
        with torch.no_grad():
            clean = clf.predict(x)
        x, clean = x[clean != REJECT], clean[clean != REJECT]
        if x.shape[0] == 0:
            raise InputError("the model rejects every clean image: nothing to fit a perturbation on")
        v = torch.zeros_like(x[0])
        inner = DeepFool(steps=self.deepfool_steps, overshoot=self.overshoot)
        threat = ThreatModel(self.norm, math.inf, bounds=clf.bounds)
        fwd = bwd = 0
        history: list[float] = []
        best, best_rate = v.clone(), 0.0
        for _ in range(self.passes):
            order = torch.randperm(x.shape[0], generator=gen).to(x.device)
            for idx in order.split(self.batch_size):
                v, f, b = self._visit(clf, x[idx], clean[idx], v, inner, threat)
                fwd, bwd = fwd + f, bwd + b
            fooled = _fooled(clf, x, v, clean)
            fwd += int(x.shape[0])
            rate = float(fooled.float().mean())
            history.append(rate)
            if rate > best_rate:  # a pass can undo the last one's gains: keep the best v
                best, best_rate = v.clone(), rate
            if rate >= self.fooling:
                break
        return UniversalPerturbation(
            perturbation=best.detach().cpu(),
            norm=self.norm,
            epsilon=float(self.epsilon),
            fooling_rate=best_rate,
            history=tuple(history),
            passes=len(history),
            forwards=fwd,
            backwards=bwd,
            config={
                **{k: getattr(self, k) for k in self.__dataclass_fields__},
                "fit_images": int(x.shape[0]),
            },
        )

    def _visit(
        self, clf: Classifier, xb: Tensor, cb: Tensor, v: Tensor, inner: DeepFool, threat: ThreatModel
    ) -> tuple[Tensor, int, int]:
        """One chunk of the inner loop: DeepFool steps for the unfooled images, each then projected."""
        lo, hi = clf.bounds
        with torch.no_grad():
            pushed = (xb + v).clamp(lo, hi)
            pred = clf.decide(clf(pushed))
        fwd = int(xb.shape[0])
        todo = pred == cb
        if not bool(todo.any()):
            return v, fwd, 0
        res = inner(clf, pushed[todo], cb[todo], threat=threat)
        steps = (res.adversarial - pushed[todo]).detach()
        zero = torch.zeros_like(v)[None]
        for step in steps[res.success]:
            # v <- P_{p, xi}(v + dv): the projection onto the ball around 0 (the box is applied to x + v)
            v = project((v + step)[None], zero, self.epsilon, self.norm, zero - (hi - lo), zero + (hi - lo))[
                0
            ]
        return v, fwd + int(res.forwards.sum()), int(res.backwards.sum())
