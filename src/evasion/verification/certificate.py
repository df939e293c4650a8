"""``certify``: a lower bound on each sample's classification margin over the threat's ball.

The margin ``f_y(x') - max_{k != y} f_k(x')`` stays positive over the whole ball iff no adversarial
example exists there. Each method bounds its minimum from below (``margin_lower``); a sample is
certified when the bound is positive and the clean input is classified correctly:

- ``ibp``: interval bounds, the last Linear layer folded into the margin (cheap, loose);
- ``crown``: the specification ``e_y - e_k`` carried backwards for each ``k`` (the margin is bounded
  directly, not from logit intervals), taking the better of it and IBP's bound for each ``k``;
- ``milp``: the exact minimum by mixed-integer programming (:mod:`.milp`), with a status per sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError, UnknownNameError
from ..models.classifier import Classifier, as_classifier
from ..threat_model import ThreatModel
from .crown import BUDGET, Domain, LinearBounds, backward_bound, relu_bounds
from .layers import Layer, extract_layers

__all__ = ["METHODS", "METHOD_NORMS", "Certificate", "certify", "class_margins", "domain_for"]

METHODS: tuple[str, ...] = ("ibp", "crown", "milp")
#: the norms each method can certify
METHOD_NORMS: dict[str, tuple[str, ...]] = {"ibp": ("linf", "l2"), "crown": ("linf", "l2"), "milp": ("linf",)}
_NORMS = METHOD_NORMS


@dataclass(frozen=True)
class Certificate:
    """What ``certify`` proved, per sample.

    ``certified[i]``: the clean input is classified correctly and ``margin_lower[i] > 0``.
    ``status``/``counterexample`` (``milp`` only): "robust", "not-robust" (with an adversarial point
    re-checked by a fresh prediction) or "unknown" (time limit, or a solver point that did not
    re-check); ``margin_upper`` is the margin at the best point found (the clean margin when none),
    ``sample_seconds`` the time each sample took.
    """

    method: str
    threat: ThreatModel
    certified: Tensor
    margin_lower: Tensor
    clean_correct: Tensor
    seconds: float
    status: tuple[str, ...] | None = None
    counterexample: tuple[Tensor | None, ...] | None = None
    margin_upper: Tensor | None = None
    sample_seconds: Tensor | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def certified_accuracy(self) -> float:
        """Fraction of samples proved robust (a lower bound on the true robust accuracy)."""
        return float(self.certified.double().mean())

    def __len__(self) -> int:
        return int(self.certified.shape[0])


def domain_for(x: Tensor, threat: ThreatModel) -> Domain:
    """The ball ∩ box (∩ mask) of the threat around each sample, as a :class:`Domain`."""
    lo, hi = threat.box_for(x)
    lower = torch.maximum(lo, x - threat.epsilon)
    upper = torch.minimum(hi, x + threat.epsilon)
    return Domain(x, torch.minimum(lower, x), torch.maximum(upper, x), threat.norm, threat.epsilon)


def _spec(y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Rows ``e_y - e_k`` for every ``k != y``: ``(N, K-1, K)``, and the ``k`` of each row."""
    n = y.shape[0]
    others = torch.stack([torch.tensor([k for k in range(num_classes) if k != int(t)]) for t in y.cpu()])
    others = others.to(y.device)
    spec = torch.zeros(n, num_classes - 1, num_classes, device=y.device)
    spec.scatter_(2, y.reshape(n, 1, 1).expand(n, num_classes - 1, 1), 1.0)
    spec.scatter_(2, others.unsqueeze(2), -1.0)
    return spec, others


def _optimise(
    layers: list[Layer], spec: Tensor, lb: LinearBounds, dom: Domain, steps: int, best: Tensor
) -> Tensor:
    """alpha-CROWN: lower ReLU slopes optimised by Adam; every iterate's bound is sound, keep the best."""
    alphas: dict[int, Tensor] = {}
    for i, layer in enumerate(layers):
        if layer.kind == "relu":
            lo, hi = lb.bounds[i]
            init = (hi > -lo).to(spec.dtype).unsqueeze(1).expand(-1, spec.shape[1], *lo.shape[1:])
            alphas[i] = init.clone().requires_grad_(True)
    opt = torch.optim.Adam(list(alphas.values()), lr=0.1)
    with torch.enable_grad():
        for _ in range(steps):
            bound = backward_bound(
                layers, spec, lb.bounds, dom, {i: a.clamp(0, 1) for i, a in alphas.items()}
            )
            best = torch.maximum(best, bound.detach())
            opt.zero_grad()
            (-bound.sum()).backward()
            opt.step()
    return best


def class_margins(
    layers: list[Layer],
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    *,
    alpha_steps: int = 0,
    budget: int = BUDGET,
) -> tuple[Tensor, Tensor, LinearBounds]:
    """CROWN lower bounds of ``f_y - f_k`` ``(N, K-1)``, the ``k`` of each column, and all layer bounds."""
    dom = domain_for(x, threat)
    lb = relu_bounds(layers, dom, budget=budget)
    num_classes = lb.output[0].shape[1]
    spec, others = _spec(y, num_classes)
    spec = spec.to(x.dtype)
    crown = backward_bound(layers, spec, lb.bounds, dom)
    if alpha_steps > 0:
        crown = _optimise(layers, spec, lb, dom, alpha_steps, crown)
    from .bounds import ibp_class_margins

    ibp = ibp_class_margins(layers, dom.lower, dom.upper, y).gather(1, others)
    return torch.maximum(crown, ibp), others, lb


def _check(method: str, threat: object, num_classes: int) -> ThreatModel:
    if method not in METHODS:
        raise UnknownNameError("verification method", method, list(METHODS))
    if not isinstance(threat, ThreatModel):
        raise ConfigError(f"threat must be an evasion.ThreatModel, got {type(threat).__name__}")
    if threat.norm not in _NORMS[method]:
        raise ConfigError(
            f"method {method!r} cannot certify the {threat.norm} norm; it certifies {', '.join(_NORMS[method])}"
            + (" (L2 would need a quadratic constraint)" if method == "milp" else "")
        )
    if math.isinf(threat.epsilon):
        raise ConfigError("certify needs a finite epsilon")
    if threat.targeted:
        raise ConfigError("certify proves untargeted robustness; use a threat with targeted=False")
    if num_classes < 2:
        raise ConfigError("certify needs a model with at least two classes")
    return threat


def certify(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    threat: ThreatModel,
    method: str = "ibp",
    batch_size: int = 64,
    alpha_steps: int = 0,
    budget: int = BUDGET,
    time_limit: float = 30.0,
    exact: bool = False,
    falsify: int = 50,
) -> Certificate:
    """Certify ``model`` on ``(x, y)`` against ``threat`` with ``method`` ("ibp", "crown" or "milp").

    ``alpha_steps`` > 0 optimises CROWN's lower ReLU slopes (alpha-CROWN); ``budget`` caps the cost of
    tightening a ReLU layer by CROWN (unstable neurons x widest earlier layer; above it: IBP bounds); ``time_limit`` is the
    MILP's per-sample limit in seconds (a timeout is "unknown", never "robust"); ``exact`` makes the
    MILP solve every rival class, so that ``margin_lower``/``margin_upper`` bracket the exact margin;
    ``falsify`` steps of APGD look for counterexamples before the MILP (faster "not-robust").
    """
    clf: Classifier = as_classifier(model, x)
    x = clf.check_inputs(x)
    y = clf.check_labels(y, x.shape[0])
    threat = _check(method, threat, clf.num_classes)
    start = time.perf_counter()
    layers = extract_layers(model if not isinstance(model, Classifier) else clf, x)
    correct = clf.predict(x) == y
    if method == "milp":
        from .milp import certify_milp

        res = certify_milp(
            clf,
            layers,
            x,
            y,
            threat,
            time_limit=time_limit,
            budget=budget,
            exact=exact,
            falsify=0 if exact else falsify,
        )
        certified = correct.cpu() & torch.tensor([s == "robust" for s in res.status], dtype=torch.bool)
        return Certificate(
            method, threat, certified, res.margin_lower, correct.cpu(), time.perf_counter() - start,
            res.status, res.counterexample, res.margin_upper, res.seconds, res.notes,
        )  # fmt: skip
    margins: list[Tensor] = []
    notes: set[str] = set()
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            if method == "ibp":
                from .bounds import ibp_class_margins

                dom = domain_for(xb, threat)
                per_class = ibp_class_margins(layers, dom.lower, dom.upper, yb)
                margins.append(per_class.scatter(1, yb.reshape(-1, 1), float("inf")).min(dim=1).values)
                continue
            m, _, lb = class_margins(layers, xb, yb, threat, alpha_steps=alpha_steps, budget=budget)
            margins.append(m.min(dim=1).values)
            notes.update(
                f"layer {name!r}: IBP pre-activation bounds (CROWN over budget)" for name in lb.ibp_layers
            )
    margin = torch.cat(margins).detach()
    return Certificate(
        method,
        threat,
        correct & (margin > 0),
        margin,
        correct,
        time.perf_counter() - start,
        notes=tuple(sorted(notes)),
    )
