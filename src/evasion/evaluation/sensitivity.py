"""Deep-feature sensitivity (Melis et al. 2017, Sect. 5, "Why are deep nets fooled?").

For each image, a random and an adversarial perturbation with the *same* input L2 norm; how far
does each move the image in deep-feature space? The paper measured 0.022 +- 0.002 (random) vs
2.386 +- 0.386 (adversarial) at an input distance of 10 (pixels in 0..255): the feature mapping
is stable in random directions and very unstable along the adversarial one, which is why
re-training only the classifier on top of the features can mitigate, not fix, the problem.

Beyond the paper's two columns this module measures a third, the *worst case*: the direction of
the same input norm that moves the features most (a power iteration on the extractor's Jacobian,
:func:`worst_case_perturbation`). To first order a random unit direction moves the features by
``||J||_F / sqrt(d)`` (root mean square) and the worst one by ``sigma_max(J)``, so the
worst-case/random ratio is ``sqrt(d / stable rank(J))``: at most ``sqrt(d)`` (``d``: input
dimension; up to ``sqrt(pi d / 2)`` with mean instead of root-mean-square random distances).
Features can be taken from any named layer (:func:`layer_extractor`) and compared raw,
L2-normalised per image, or rescaled to a given mean norm (:data:`NORMALIZATIONS`).

No I/O here: :func:`feature_sensitivity` returns a :class:`FeatureSensitivity` record; the two
steps it chains (:func:`perturb`, :func:`feature_distances`) are public so that one set of
perturbations can be measured at many layers and normalisations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..attacks.base import Attack
from ..attacks.max_confidence import MaxConfidence
from ..errors import ConfigError, InputError
from ..models.classifier import Classifier, eval_mode
from ..models.deep_features import LayerFeatures
from ..threat_model import ThreatModel

__all__ = [
    "NORMALIZATIONS",
    "PAPER_ADVERSARIAL",
    "PAPER_EPSILON",
    "PAPER_RANDOM",
    "FeatureSensitivity",
    "Perturbations",
    "feature_distances",
    "feature_sensitivity",
    "layer_extractor",
    "perturb",
    "random_perturbation",
    "worst_case_perturbation",
]

#: the paper's input distance, 10 on the 0..255 scale, in [0, 1] pixel units
PAPER_EPSILON = 10.0 / 255.0
#: the paper's feature distances (mean, std) at that input distance (AlexNet fc7, 4,096-d)
PAPER_RANDOM = (0.022, 0.002)
PAPER_ADVERSARIAL = (2.386, 0.386)

#: ``none``: raw features; ``l2``: each feature vector scaled to norm ``norm_to`` (a sphere);
#: ``rescale``: all features multiplied by one number so that the clean images' mean norm is
#: ``norm_to`` (distances in units of the mean feature norm; ratios unchanged)
NORMALIZATIONS = ("none", "l2", "rescale")


def _std(t: Tensor) -> float:
    return float(t.std()) if t.numel() > 1 else 0.0


@dataclass(frozen=True)
class FeatureSensitivity:
    """Per-image deep-feature distances caused by random and adversarial input perturbations.

    ``worst_case`` (optional): the distances along the direction that moves the features most.
    ``feature_norms`` are the clean features' norms *after* the normalisation ``normalize``.
    """

    epsilon: float
    input_norms: Tensor
    random: Tensor
    adversarial: Tensor
    feature_norms: Tensor
    worst_case: Tensor | None = None
    layer: str = "output"
    normalize: str = "none"
    feature_dim: int = 0
    input_dim: int = 0

    @property
    def random_mean(self) -> float:
        return float(self.random.mean())

    @property
    def random_std(self) -> float:
        return _std(self.random)

    @property
    def adversarial_mean(self) -> float:
        return float(self.adversarial.mean())

    @property
    def adversarial_std(self) -> float:
        return _std(self.adversarial)

    @property
    def ratio(self) -> float:
        """Mean adversarial over mean random feature distance (the paper: about 108)."""
        return self.adversarial_mean / self.random_mean if self.random_mean > 0 else math.inf

    @property
    def worst_case_ratio(self) -> float | None:
        """Mean worst-case over mean random feature distance (to first order at most about ``sqrt(input_dim)``)."""
        if self.worst_case is None:
            return None
        return float(self.worst_case.mean()) / self.random_mean if self.random_mean > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epsilon": self.epsilon,
            "samples": int(self.random.numel()),
            "input_norm_mean": float(self.input_norms.mean()),
            "random_mean": self.random_mean,
            "random_std": self.random_std,
            "adversarial_mean": self.adversarial_mean,
            "adversarial_std": self.adversarial_std,
            "ratio": self.ratio,
            "feature_norm_mean": float(self.feature_norms.mean()),
            "layer": self.layer,
            "normalize": self.normalize,
            "feature_dim": self.feature_dim,
            "input_dim": self.input_dim,
        }
        if self.worst_case is not None:
            out["worst_case_mean"] = float(self.worst_case.mean())
            out["worst_case_std"] = _std(self.worst_case)
            out["worst_case_ratio"] = self.worst_case_ratio
        return out


@dataclass(frozen=True)
class Perturbations:
    """Clean images and their perturbed copies, all at the same per-image input L2 norm.

    ``worst_case`` belongs to the extractor it was computed for (see :func:`worst_case_perturbation`).
    """

    epsilon: float
    x: Tensor
    adversarial: Tensor
    random: Tensor
    input_norms: Tensor
    worst_case: Tensor | None = None


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape((-1,) + (1,) * (like.dim() - 1))


def _scaled_to_norm(
    x: Tensor, direction: Tensor, radius: Tensor, bounds: tuple[float, float], iterations: int
) -> Tensor:
    """``clamp(x + s * direction)`` with ``s`` per sample such that the step has norm ``radius``.

    ``direction`` has unit norm per sample; clipping to the box would shorten the step, so ``s``
    is found by bisection (exact unless the box cannot hold a step that long).
    """
    n = x.shape[0]
    r = radius.to(x.device, x.dtype).reshape(-1)

    def norm_at(scale: Tensor) -> Tensor:
        moved = (x + _per_sample(scale, x) * direction).clamp(*bounds)
        return (moved - x).reshape(n, -1).norm(dim=1)

    lo, hi = torch.zeros_like(r), r.clone()
    while bool((norm_at(hi) < r).any()) and bool((hi < 1e6).all()):
        hi = torch.where(norm_at(hi) < r, hi * 2, hi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        short = norm_at(mid) < r
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return (x + _per_sample(hi, x) * direction).clamp(*bounds)


def _unit(t: Tensor) -> Tensor:
    return t / _per_sample(t.reshape(t.shape[0], -1).norm(dim=1).clamp_min(1e-12), t)


def random_perturbation(
    x: Tensor,
    radius: Tensor,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    iterations: int = 40,
) -> Tensor:
    """Points ``x + delta`` in the box with ``||delta||_2 == radius`` per sample, random direction.

    The direction is Gaussian (uniform on the sphere); clipping to the box would shorten it, so
    the scale is found by bisection such that the clipped perturbation has exactly the asked norm
    (when the box allows).
    """
    g = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return _scaled_to_norm(x, _unit(g), radius, bounds, iterations)


def layer_extractor(extractor: nn.Module, layer: str | None = None, pool: bool = True) -> nn.Module:
    """``extractor`` itself (``layer=None``) or the output of its named submodule ``layer``.

    Convolutional maps are average-pooled over space (``pool=True``, as the iCub pipeline pools
    its features) or flattened. An unknown name raises :class:`~evasion.errors.UnknownNameError`
    listing the valid ones (the names of ``extractor.named_modules()``). ``extractor`` must not
    itself be a :class:`LayerFeatures` (its capture would swallow the inner one): pass its model.
    """
    if layer is not None and isinstance(extractor, LayerFeatures):
        raise ConfigError(
            f"the extractor is already the features of layer {extractor.layer!r}; "
            "pass its underlying model (extractor.model) to measure another layer"
        )
    return extractor if layer is None else LayerFeatures(extractor, layer, pool=pool)


def _features(extractor: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    device = next((p.device for p in extractor.parameters()), x.device)
    with torch.no_grad(), eval_mode(extractor):
        return torch.cat([extractor(b.to(device)).flatten(1).double().cpu() for b in x.split(batch_size)])


def worst_case_perturbation(
    extractor: nn.Module,
    x: Tensor,
    radius: Tensor,
    *,
    steps: int = 10,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> Tensor:
    """Points at input distance ``radius`` whose features move (locally) the most, per sample.

    A power iteration on ``J^T J`` (``J``: the extractor's Jacobian), made nonlinear: from a
    random direction, the next direction is the gradient of ``||f(x + delta) - f(x)||^2``, and
    the step is rescaled to ``radius`` inside the box. For a linear extractor ``W`` it converges
    to the top right singular vector, a feature shift of ``sigma_max(W) * radius``; for a network
    it is a local search, a lower bound on the worst case (another attack may move the features
    further). The best iterate per sample is returned.
    """
    if steps < 1:
        raise ConfigError(f"worst-case steps must be >= 1, got {steps}")
    start = random_perturbation(x, radius, bounds, generator)
    device = next((p.device for p in extractor.parameters()), x.device)
    out = []
    with eval_mode(extractor):
        for xb, sb, rb in zip(x.split(batch_size), start.split(batch_size), radius.split(batch_size)):
            out.append(_power_iteration(extractor, xb.to(device), sb.to(device), rb, steps, bounds))
    return torch.cat(out).to(x.device, x.dtype)


def _power_iteration(
    f: nn.Module, x: Tensor, start: Tensor, radius: Tensor, steps: int, bounds: tuple[float, float]
) -> Tensor:
    with torch.no_grad():
        z0 = f(x).flatten(1)
    point = start
    best = start
    best_d = torch.full((x.shape[0],), -1.0, device=x.device)
    for i in range(steps + 1):
        delta = (point - x).detach().requires_grad_(True)
        d2 = (f(x + delta).flatten(1) - z0).pow(2).sum(dim=1)
        better = d2.detach() > best_d
        best = torch.where(_per_sample(better, x), point, best)
        best_d = torch.where(better, d2.detach(), best_d)
        if i == steps:
            break
        (grad,) = torch.autograd.grad(d2.sum(), delta)
        flat = grad.reshape(x.shape[0], -1).norm(dim=1)
        direction = torch.where(_per_sample(flat > 0, x), _unit(grad), _unit(delta.detach()))
        point = _scaled_to_norm(x, direction, radius, bounds, 30).detach()
    return best.detach()


def perturb(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float = PAPER_EPSILON,
    attack: Attack | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> Perturbations:
    """Adversarial points (``attack`` on ``model`` at L2 budget ``epsilon``) and random points of
    the same per-image input norm.

    ``attack`` defaults to the error-generic :class:`MaxConfidence`, 20 steps, no early stop.
    """
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"epsilon must be a finite number > 0, got {epsilon}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError("feature_sensitivity needs a non-empty batch of images")
    if y.shape[0] != x.shape[0]:
        raise InputError(f"{x.shape[0]} images but {y.shape[0]} labels")
    attack = attack if attack is not None else MaxConfidence(steps=20, early_stop=False, tolerance=None)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    adv = torch.cat(
        [
            attack(model, xb, yb, threat=ThreatModel("l2", epsilon), generator=gen).adversarial.detach().cpu()
            for xb, yb in zip(x.split(batch_size), y.split(batch_size))
        ]
    ).to(x.dtype)
    norms = (adv - x).reshape(x.shape[0], -1).norm(dim=1)
    rnd = random_perturbation(x, norms, model.bounds, gen)
    return Perturbations(float(epsilon), x, adv, rnd, norms)


def _normalized(z: Tensor, how: str, norm_to: float, mean_norm: float) -> Tensor:
    if how == "l2":
        return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12) * norm_to
    if how == "rescale":
        return z * (norm_to / mean_norm) if mean_norm > 0 else z
    return z


def _check_normalization(normalize: str, norm_to: float) -> None:
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    if not math.isfinite(norm_to) or norm_to <= 0:
        raise ConfigError(f"norm_to must be a finite number > 0, got {norm_to}")


def feature_distances(
    extractor: nn.Module,
    perturbations: Perturbations,
    *,
    normalize: str = "none",
    norm_to: float = 1.0,
    layer: str = "output",
    batch_size: int = 32,
) -> FeatureSensitivity:
    """Feature-space L2 distances of each perturbed image from its clean one under ``extractor``.

    ``normalize`` (:data:`NORMALIZATIONS`) is applied to every feature vector before the
    distances; ``layer`` only labels the record (select the layer with :func:`layer_extractor`).
    """
    _check_normalization(normalize, norm_to)
    p = perturbations
    raw = _features(extractor, p.x, batch_size)
    mean_norm = float(raw.norm(dim=1).mean())

    def feats(points: Tensor) -> Tensor:
        return _normalized(_features(extractor, points, batch_size), normalize, norm_to, mean_norm)

    z = _normalized(raw, normalize, norm_to, mean_norm)
    worst = None if p.worst_case is None else (feats(p.worst_case) - z).norm(dim=1)
    return FeatureSensitivity(
        epsilon=p.epsilon,
        input_norms=p.input_norms.double(),
        random=(feats(p.random) - z).norm(dim=1),
        adversarial=(feats(p.adversarial) - z).norm(dim=1),
        feature_norms=z.norm(dim=1),
        worst_case=worst,
        layer=layer,
        normalize=normalize,
        feature_dim=int(z.shape[1]),
        input_dim=int(p.x[0].numel()),
    )


def feature_sensitivity(
    extractor: nn.Module,
    model: Classifier,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float = PAPER_EPSILON,
    attack: Attack | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
    layer: str | None = None,
    pool: bool = True,
    normalize: str = "none",
    norm_to: float = 1.0,
    worst_case_steps: int = 0,
) -> FeatureSensitivity:
    """Deep-feature L2 shift of adversarial vs. equally large random input perturbations.

    ``model`` is the full classifier (extractor + head) the adversarial perturbation is computed
    against, with ``attack`` (default: error-generic :class:`MaxConfidence`, 20 steps, no early
    stop) at L2 budget ``epsilon``. Each random perturbation gets the input norm of the
    adversarial one of the same image, so the two are compared at equal input distance.

    ``layer`` measures the features of a named submodule of ``extractor`` instead of its output
    (``pool``: average-pool convolutional maps); ``normalize`` / ``norm_to``: see
    :data:`NORMALIZATIONS`; ``worst_case_steps > 0`` adds the worst-case direction for those
    features (:func:`worst_case_perturbation`).
    """
    _check_normalization(normalize, norm_to)
    if worst_case_steps < 0:
        raise ConfigError(f"worst_case_steps must be >= 0, got {worst_case_steps}")
    features = layer_extractor(extractor, layer, pool)  # an unknown layer fails before the attack
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    p = perturb(model, x, y, epsilon=epsilon, attack=attack, generator=gen, batch_size=batch_size)
    if worst_case_steps:
        worst = worst_case_perturbation(
            features,
            x,
            p.input_norms,
            steps=worst_case_steps,
            bounds=model.bounds,
            generator=gen,
            batch_size=batch_size,
        )
        p = replace(p, worst_case=worst)
    return feature_distances(
        features, p, normalize=normalize, norm_to=norm_to, layer=layer or "output", batch_size=batch_size
    )
