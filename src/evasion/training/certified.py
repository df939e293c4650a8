"""IBP certified training (Gowal et al. 2018): train so that interval bounds prove robustness.

The loss mixes the clean cross-entropy with the cross-entropy of the *worst-case logits* that
interval bound propagation gives for the L∞ ball of ``epsilon`` around each training image:

    loss = kappa * CE(f(x), y) + (1 - kappa) * CE(z_worst(x, epsilon), y),

``z_worst_k = -(lower bound of f_y - f_k)`` (and 0 for ``k = y``). When the model's last layer is
``Linear``, it is folded into the margins ``f_y - f_k`` before they are bounded (Gowal et al.'s
elision: tighter than subtracting logit intervals); otherwise the logit intervals are used. The
bounds are :mod:`evasion.verification`'s IBP, which takes any model it can bound (a Classifier
with its normalisation, sequential chains of Linear, Conv2d, ReLU, pooling, BatchNorm in eval
semantics) and names any layer it cannot.

The schedule follows Gowal et al.: clean warm-up, then ``epsilon`` ramps linearly from 0 while
``kappa`` ramps from 1 to ``kappa_end`` (0.5), then both stay; Adam with the learning rate
divided by 10 at 60% and 85% of the steps. Training at an ``epsilon`` larger than the one to be
certified (e.g. 0.2 for 0.1) gives the best certified accuracy at the smaller one. Everything
random draws from generators seeded by ``seed`` inside a forked global RNG: same module, data
and config give the same weights bit-for-bit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..datasets.base import Dataset
from ..errors import ConfigError, InputError
from ..models.training import _threads, random_shift
from ._checks import check_counts, check_finite

logger = logging.getLogger(__name__)

__all__ = [
    "MNIST_IBP",
    "MNIST_NOISE",
    "IBPConfig",
    "IBPEpoch",
    "IBPResult",
    "first_use_module",
    "ibp_certified_accuracy",
    "ibp_loss",
    "ibp_margins",
    "mnist_ibp_cnn",
    "train_ibp",
]


@dataclass(frozen=True)
class IBPConfig:
    """Hyperparameters of IBP training (every field is part of the identity of cached weights).

    Args:
        epsilon: the L∞ training budget (train above the budget you will certify).
        epochs, lr, batch_size, seed, weight_decay: the usual (Adam).
        warmup_epochs: clean training (``epsilon = 0``, ``kappa = 1``) before the ramp.
        ramp_epochs: epochs over which ``epsilon`` grows linearly to its value and ``kappa``
            falls linearly from 1 to ``kappa_end`` (per optimizer step).
        kappa_end: the final weight of the clean loss (Gowal et al.: 0.5).
        augment_shift: random shifts of up to this many pixels (zero fill).
        bounds: the valid input box; the ball is intersected with it.
        num_threads: torch CPU threads for the run (``None``: leave the setting alone).
    """

    epsilon: float = 0.2
    epochs: int = 40
    lr: float = 1e-3
    batch_size: int = 50
    seed: int = 0
    weight_decay: float = 0.0
    warmup_epochs: float = 2.0
    ramp_epochs: float = 20.0
    kappa_end: float = 0.5
    augment_shift: int = 0
    bounds: tuple[float, float] = (0.0, 1.0)
    num_threads: int | None = 1

    def __post_init__(self) -> None:
        check_counts(self, ("epochs", "batch_size"))
        for name in ("epsilon", "lr", "weight_decay", "warmup_epochs", "ramp_epochs", "kappa_end"):
            check_finite(name, getattr(self, name), positive=False)
        if self.lr == 0:
            raise ConfigError("lr must be > 0, got 0")
        if self.kappa_end > 1:
            raise ConfigError(f"kappa_end must be in [0, 1], got {self.kappa_end!r}")
        lo, hi = float(self.bounds[0]), float(self.bounds[1])
        if not lo < hi:
            raise ConfigError(f"bounds must satisfy lower < upper, got {self.bounds}")
        object.__setattr__(self, "bounds", (lo, hi))
        if self.epsilon > hi - lo:
            raise ConfigError(f"epsilon {self.epsilon} is beyond the data range {self.bounds}")
        if self.num_threads is not None and (
            isinstance(self.num_threads, bool)
            or not isinstance(self.num_threads, int)
            or self.num_threads < 1
        ):
            raise ConfigError(f"num_threads must be a positive integer or None, got {self.num_threads!r}")

    def schedule(self, step: int, steps_per_epoch: int) -> tuple[float, float]:
        """``(epsilon, kappa)`` at optimizer step ``step`` (0-based)."""
        warm = self.warmup_epochs * steps_per_epoch
        ramp = self.ramp_epochs * steps_per_epoch
        if step < warm:
            frac = 0.0
        else:
            frac = 1.0 if ramp == 0 else min(1.0, (step - warm + 1) / ramp)
        return self.epsilon * frac, 1.0 - (1.0 - self.kappa_end) * frac

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description (stored in the zoo's sidecar)."""
        out = asdict(self)
        out["bounds"] = list(self.bounds)
        out["recipe"] = "ibp"
        return out


def ibp_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon: float,
    bounds: tuple[float, float],
    *,
    elide: bool = True,
) -> Tensor:
    """``(N, K)`` lower bounds of ``f_y - f_k`` over the L∞ ball of ``epsilon`` ∩ box (0 at ``k = y``).

    With ``elide`` and a model whose last layer is ``Linear``, the margins ``(w_y - w_k) . h + b_y -
    b_k`` are bounded over the interval of the penultimate activations ``h`` (tighter); otherwise
    they are ``l_y - u_k`` from the logit intervals. Differentiable in the model's parameters; a
    sound certificate: the sample is robust when every entry but the ``y``-th is positive.
    """
    from ..verification.bounds import ibp_through  # lazy: the verification package imports models
    from ..verification.layers import extract_layers

    lower = (x - epsilon).clamp(*bounds)
    upper = (x + epsilon).clamp(*bounds)
    layers = extract_layers(model, lower)
    last = layers[-1].module if layers else None
    if elide and isinstance(last, nn.Linear):  # bound (w_y - w_k) . h over the penultimate box
        lo, hi = ibp_through(layers[:-1], lower, upper)
        centre, radius = (hi + lo) / 2, (hi - lo) / 2
        diff_w = last.weight[y][:, None, :] - last.weight[None, :, :]  # (N, K, H)
        margins = torch.einsum("nkh,nh->nk", diff_w, centre) - torch.einsum(
            "nkh,nh->nk", diff_w.abs(), radius
        )
        if last.bias is not None:
            margins = margins + last.bias[y][:, None] - last.bias[None, :]
        return margins
    lo, hi = ibp_through(layers, lower, upper)
    return (lo.gather(1, y[:, None]) - hi).scatter(1, y[:, None], 0.0)


def ibp_loss(
    model: nn.Module, x: Tensor, y: Tensor, epsilon: float, kappa: float, bounds: tuple[float, float]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, clean CE, worst-case CE)`` of one batch (the worst case is skipped at ``epsilon = 0``)."""
    clean = F.cross_entropy(model(x), y)
    if epsilon <= 0 or kappa >= 1:
        return clean, clean, clean.detach()
    robust = F.cross_entropy(-ibp_margins(model, x, y, epsilon, bounds), y)
    return kappa * clean + (1 - kappa) * robust, clean, robust


@torch.no_grad()
def ibp_certified_accuracy(
    model: nn.Module,
    data: Dataset,
    epsilon: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 500,
) -> tuple[float, float]:
    """``(clean accuracy, IBP-certified accuracy at L∞ epsilon)`` of ``model`` on ``data``."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        correct = certified = 0
        for x, y in data.batches(batch_size):
            ok = model(x).argmax(1) == y
            margins = ibp_margins(model, x, y, epsilon, bounds).scatter(1, y[:, None], math.inf)
            correct += int(ok.sum())
            certified += int((ok & (margins.min(1).values > 0)).sum())
    finally:
        for m in training:
            m.training = True
    return correct / len(data), certified / len(data)


@dataclass
class IBPEpoch:
    """One epoch: mean losses, epsilon and kappa at its end, seconds."""

    epoch: int
    loss: float
    clean_loss: float
    robust_loss: float
    epsilon: float
    kappa: float
    seconds: float


@dataclass
class IBPResult:
    """The trained module (eval mode) and the per-epoch log."""

    module: nn.Module
    history: list[IBPEpoch] = field(default_factory=list)


def train_ibp(
    module: nn.Module,
    train: Dataset,
    config: IBPConfig,
    *,
    progress: Callable[[IBPEpoch], None] | None = None,
) -> IBPResult:
    """Train ``module`` (logits out; layers bound propagation supports) with IBP on ``train``."""
    if not isinstance(config, IBPConfig):
        raise ConfigError(f"config must be an IBPConfig, got {type(config).__name__}")
    if not isinstance(module, nn.Module):
        raise ConfigError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if len(train) == 0:
        raise ConfigError(f"the training set {train.name!r} is empty")
    lo, hi = config.bounds
    if float(train.x.min()) < lo - 1e-6 or float(train.x.max()) > hi + 1e-6:
        raise InputError(f"the training set has values outside the bounds {config.bounds}")
    with torch.random.fork_rng(devices=[]), _threads(config.num_threads):
        torch.manual_seed(config.seed)
        return _fit(module, train, config, progress)


def _fit(
    module: nn.Module, train: Dataset, c: IBPConfig, progress: Callable[[IBPEpoch], None] | None
) -> IBPResult:
    per_epoch = -(-len(train) // c.batch_size)
    total = c.epochs * per_epoch
    optimizer = torch.optim.Adam(module.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [int(0.6 * total), int(0.85 * total)], gamma=0.1
    )
    generator = torch.Generator().manual_seed(c.seed)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    result = IBPResult(module)
    step = 0
    for epoch in range(1, c.epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(train), generator=generator)
        sums = torch.zeros(3, dtype=torch.float64)
        eps, kappa = 0.0, 1.0
        module.train()
        for start in range(0, len(train), c.batch_size):
            index = order[start : start + c.batch_size]
            x = random_shift(train.x[index], c.augment_shift, generator).to(device)
            y = train.y[index].to(device)
            eps, kappa = c.schedule(step, per_epoch)
            loss, clean, robust = ibp_loss(module, x, y, eps, kappa, c.bounds)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            parts = torch.stack([loss.detach(), clean.detach(), robust.detach()]).double().cpu()
            sums += parts * len(index)
        loss_mean, clean_mean, robust_mean = (sums / len(train)).tolist()
        seconds = round(time.perf_counter() - started, 3)
        record = IBPEpoch(epoch, loss_mean, clean_mean, robust_mean, eps, kappa, seconds)
        result.history.append(record)
        if progress is not None:
            progress(record)
    module.eval()
    return result


def mnist_ibp_cnn(seed: int = 0) -> nn.Sequential:
    """Wong & Kolter's "small" CNN for 1x28x28 (conv16-conv32 stride 2, fc100; 166,406 parameters).

    An ``nn.Sequential`` ending in ``Linear`` (so IBP training folds the last layer into the
    margins); small enough for CROWN and IBP to be tight after certified training.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )


# -- first-use zoo models (evasion.models.zoo registers them) --------------------------------------
#: ``mnist-cnn-ibp``: Gowal et al.'s schedule at L∞ 0.2 (certified at 0.1) on the mnist5k train split
MNIST_IBP = IBPConfig(epsilon=0.2, epochs=40, lr=1e-3, batch_size=50, warmup_epochs=2.0, ramp_epochs=20.0)
#: ``mnist-cnn-noise-<sigma>``: Gaussian-noise training of the same CNN for randomized smoothing
MNIST_NOISE: dict[str, Any] = {"epochs": 15, "lr": 2e-3, "batch_size": 50, "seed": 0}


def first_use_module(name: str, recipe: str, *, sigma: float = 0.0, retrain: bool = False) -> nn.Module:
    """:func:`mnist_ibp_cnn` trained on first use on mnist5k (``recipe`` "ibp" or "noise"), cached.

    Stored under ``models/<name>`` in the evasion cache with its sha256 and the recipe as identity
    (a changed recipe retrains); seeded, one CPU thread. "ibp" uses :data:`MNIST_IBP`, "noise"
    :data:`MNIST_NOISE` with noise level ``sigma``.
    """
    from .._cache import load_or_train  # lazy: keeps the training recipes free of cache I/O
    from ..datasets import load as load_dataset
    from ..models.training import accuracy
    from .noise import train_noise

    if recipe == "ibp":
        identity: dict[str, Any] = MNIST_IBP.fingerprint()
    elif recipe == "noise":
        identity = {"recipe": "noise", "sigma": float(sigma), **MNIST_NOISE}
    else:
        raise ConfigError(f"unknown first-use recipe {recipe!r}; valid: ibp, noise")
    modules: list[nn.Module] = []
    facts: dict[str, Any] = {}

    def load(state: dict[str, Any]) -> None:
        module = mnist_ibp_cnn(0)
        module.load_state_dict(state)
        modules.append(module.eval())

    def train() -> dict[str, Any]:
        logger.info("training %r on first use (mnist5k, %s; a few minutes on 2 cores)", name, recipe)
        data, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
        start = time.perf_counter()
        module = mnist_ibp_cnn(0)
        if recipe == "ibp":
            train_ibp(module, data, MNIST_IBP, progress=lambda r: logger.info("%r: %s", name, r))
            clean, certified = ibp_certified_accuracy(module, test, 0.1)
            facts.update(test_accuracy=clean, ibp_certified_accuracy_linf_0_1=certified)
        else:
            train_noise(
                module,
                data,
                sigma=sigma,
                progress=lambda e, loss: logger.info("%r: epoch %d, loss %.4f", name, e, loss),
                **MNIST_NOISE,
            )
            facts.update(test_accuracy=accuracy(module, test))
        facts.update(name=name, train_seconds=round(time.perf_counter() - start, 2))
        modules.append(module.eval())
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    load_or_train(
        "models",
        name,
        train,
        identity={"recipe": {"architecture": "mnist_ibp_cnn", "dataset": "mnist5k", **identity}},
        meta=lambda _: facts,
        what=f"{name!r} model",
        check=load,
        refresh=retrain,
    )
    return modules[-1]
