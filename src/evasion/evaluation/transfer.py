"""Transferability: do adversarial examples crafted on one model fool another?

:func:`transferability` crafts examples on every *source* model (white-box, with any attack of
the library) and measures how often they fool every *target* model, a
:class:`TransferMatrix` of success rates (rows: crafted on, columns: evaluated on). With
``ensemble=True`` one more row is crafted on the ensemble of all sources: the attack sees the
mean of their logits (Liu et al. 2017; Dong et al. 2018 pair it with MI-FGSM), which transfers
better than any single source.

**What a success rate means here.** Entry ``(i, j)`` is the fraction of the samples that target
``j`` classifies correctly on clean inputs whose example crafted on source ``i`` target ``j``
misclassifies (a rejection by a reject option is not an evasion). Samples the target already
gets wrong are left out of its column, so a weak target does not look fooled; the denominators
are in :attr:`TransferMatrix.counts`. The diagonal (source = target) is the white-box success
rate of the attack on that model, restricted the same way.

Iterative attacks run without early stopping (``early_stop=False``): an example that stops as
soon as it crosses the source's decision boundary barely crosses it and rarely transfers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import integer, positive
from ..attacks.base import Attack
from ..attacks.iterative import IterativeAttack
from ..datasets.base import Dataset
from ..errors import ConfigError, InputError
from ..models.classifier import REJECT, Classifier
from ..threat_model import ThreatModel

__all__ = ["MeanLogits", "TransferMatrix", "check_attack", "transferability"]

ModelLike = Classifier | str


@dataclass(frozen=True)
class TransferMatrix:
    """Success rates of examples crafted on ``sources`` (rows) against ``targets`` (columns).

    Attributes:
        sources: row names (the source models, then ``"ensemble(a+b+...)"`` if asked for).
        targets: column names.
        success: ``success[i][j]``: fraction of the samples target ``j`` classifies correctly whose
            example crafted on source ``i`` fools target ``j`` (NaN where ``counts[j]`` is 0).
        counts: per target, the samples it classifies correctly (the denominator of its column).
        clean_accuracy: per target, its accuracy on the clean samples.
        config: what produced the matrix (attack, norm, epsilon, samples, ensemble, seed).
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    success: tuple[tuple[float, ...], ...]
    counts: tuple[int, ...]
    clean_accuracy: tuple[float, ...]
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.sources), len(self.targets)

    def rate(self, source: str, target: str) -> float:
        """The success rate of examples crafted on ``source`` against ``target``."""
        for names, name, kind in ((self.sources, source, "source"), (self.targets, target, "target")):
            if name not in names:
                raise InputError(f"unknown {kind} {name!r}; {kind}s: {', '.join(names)}")
        return self.success[self.sources.index(source)][self.targets.index(target)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "targets": list(self.targets),
            "success": [list(row) for row in self.success],
            "counts": list(self.counts),
            "clean_accuracy": list(self.clean_accuracy),
            "config": dict(self.config),
        }

    def heatmap_svg(self, title: str = "") -> str:
        """The matrix as an annotated heat map (SVG markup; needs matplotlib)."""
        from ..reports.plots import figure, heatmap, to_svg

        fig, ax = figure(1.3 + 1.0 * len(self.targets), 1.0 + 0.7 * len(self.sources))
        heatmap(
            ax,
            self.success,
            self.sources,
            self.targets,
            xlabel="evaluated on (target)",
            ylabel="crafted on (source)",
            title=title
            or f"transfer success, {self.config.get('norm', '')} eps {self.config.get('epsilon', '')}",
        )
        return to_svg(fig)


class MeanLogits(nn.Module):
    """The mean of several models' logits: the ensemble a transfer attacker crafts examples on."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ConfigError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def _resolve(models: Sequence[ModelLike] | ModelLike, kind: str) -> list[tuple[str, Classifier]]:
    """Classifiers (zoo names loaded) with their names; a one-line error for anything else."""
    from ..models.zoo import load

    items = [models] if isinstance(models, (str, Classifier)) else list(models)
    if not items:
        raise ConfigError(f"transferability needs at least one {kind} model")
    out: list[tuple[str, Classifier]] = []
    for m in items:
        if isinstance(m, str):
            out.append((m, load(m)))
        elif isinstance(m, Classifier):
            out.append((m.name, m))
        else:
            raise ConfigError(
                f"{kind} models must be evasion Classifiers or zoo names, got {type(m).__name__}"
            )
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(
            f"{kind} model names must be unique, {dup[0]!r} appears twice (set Classifier.name)"
        )
    return out


def _data(data: Dataset | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(data, Dataset):
        return data.x, data.y
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0], data[1]
    raise InputError(
        f"data must be an evasion Dataset or a pair (x, y) of tensors, got {type(data).__name__}"
    )


def _check_compatible(models: list[tuple[str, Classifier]], x: Tensor) -> tuple[float, float]:
    """All models take the data's input shape and share one input range."""
    bounds = models[0][1].bounds
    for name, m in models:
        if m.input_shape is not None and tuple(m.input_shape) != tuple(x.shape[1:]):
            raise InputError(
                f"model {name!r} takes inputs of shape {tuple(m.input_shape)}, the data has {tuple(x.shape[1:])}"
            )
        if m.bounds != bounds:
            raise InputError(
                f"model {name!r} has input bounds {m.bounds}, model {models[0][0]!r} has {bounds}"
            )
    return bounds


def _fools(model: Classifier, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Whether each prediction is wrong and not a rejection (on CPU)."""
    pred = model.predict(x, batch_size=batch_size).cpu()
    return (pred != y) & (pred != REJECT)


def check_attack(attack: Attack, eps: float) -> float:
    """A fixed-budget attack and a budget ``> 0`` (the budget as float); a one-line error otherwise."""
    if not isinstance(attack, Attack):
        raise ConfigError(f"attack must be an evasion Attack, got {type(attack).__name__}")
    if attack.minimum_norm:
        raise ConfigError(f"{type(attack).__name__} is a minimum-norm attack; transfer needs a fixed budget")
    return positive(eps, "eps")


def transferability(
    sources: Sequence[ModelLike] | ModelLike,
    targets: Sequence[ModelLike] | ModelLike,
    data: Dataset | tuple[Tensor, Tensor],
    attack: Attack,
    eps: float,
    *,
    norm: str = "linf",
    ensemble: bool = False,
    seed: int = 0,
    batch_size: int = 256,
) -> TransferMatrix:
    """Success rates of ``attack`` examples crafted on each source against each target.

    Args:
        sources, targets: :class:`Classifier` objects or zoo names (loaded with
            :func:`evasion.models.load`); names must be unique within each list.
        data: a :class:`Dataset` or ``(x, y)`` with true labels.
        attack: any fixed-budget attack of the library (MI-FGSM transfers best); iterative attacks
            run with ``early_stop=False``.
        eps: the budget, ``> 0``, on the models' input scale; ``norm``: its norm.
        ensemble: add one row crafted on the mean logits of all sources.
        seed: every source's attack starts from a generator seeded with it (so the diagonal
            equals a direct call of the attack with ``torch.Generator().manual_seed(seed)``).
    """
    eps = check_attack(attack, eps)
    integer(seed, "seed", minimum=0)
    integer(batch_size, "batch_size", minimum=1)
    if not isinstance(ensemble, bool):
        raise ConfigError(f"ensemble must be True or False, got {ensemble!r}")
    src, tgt = _resolve(sources, "source"), _resolve(targets, "target")
    x, y = _data(data)
    if x.shape[0] == 0:
        raise InputError("data is empty")
    bounds = _check_compatible(src + tgt, x)
    threat = ThreatModel(norm, eps, bounds=bounds)
    if isinstance(attack, IterativeAttack) and attack.early_stop:
        attack = attack.replace(early_stop=False)
    x, y = x.detach().cpu(), y.detach().cpu().long()
    correct = [m.predict(x, batch_size=batch_size).cpu() == y for _, m in tgt]
    crafters = list(src)
    if ensemble:
        first = src[0][1]
        mean = Classifier(
            MeanLogits([m for _, m in src]), first.num_classes, input_shape=tuple(x.shape[1:]), bounds=bounds
        )
        crafters.append((f"ensemble({'+'.join(n for n, _ in src)})", mean))
    rows: list[tuple[float, ...]] = []
    for _, model in crafters:
        adv = _craft(attack, model, x, y, threat, seed, batch_size)
        row = []
        for (_, target), ok in zip(tgt, correct):
            fooled = _fools(target, adv, y, batch_size)
            row.append(float(fooled[ok].float().mean()) if bool(ok.any()) else float("nan"))
        rows.append(tuple(row))
    return TransferMatrix(
        sources=tuple(n for n, _ in crafters),
        targets=tuple(n for n, _ in tgt),
        success=tuple(rows),
        counts=tuple(int(ok.sum()) for ok in correct),
        clean_accuracy=tuple(float(ok.float().mean()) for ok in correct),
        config={
            "attack": attack.describe(),
            "norm": threat.norm,
            "epsilon": eps,
            "samples": int(x.shape[0]),
            "ensemble": ensemble,
            "seed": seed,
            "success_on": "samples each target classifies correctly",
        },
    )


def _craft(
    attack: Attack, model: Classifier, x: Tensor, y: Tensor, threat: ThreatModel, seed: int, batch_size: int
) -> Tensor:
    """Adversarial examples crafted white-box on ``model`` (one generator for the whole data)."""
    gen = torch.Generator().manual_seed(seed)
    parts = [
        attack(model, xb, yb, threat=threat, generator=gen).adversarial.cpu()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    ]
    return torch.cat(parts)
