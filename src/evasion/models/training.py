"""A small deterministic supervised trainer, reused by the zoo, adversarial training and the CLI.

Everything random (shuffling, shift augmentation, dropout, the optional ``perturb`` hook) draws
from RNGs seeded by ``seed`` inside a forked global RNG state, so the same module, data and seed
give the same weights bit-for-bit on the same machine, and the caller's RNG is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..datasets.base import Dataset
from ..errors import ConfigError
from .classifier import eval_mode

__all__ = ["Perturb", "Progress", "accuracy", "random_shift", "train_classifier"]

#: ``progress(epoch, mean_loss)`` called after each epoch (epochs count from 1)
Progress = Callable[[int, float], None]
#: ``perturb(module, x, y) -> x'`` replaces each training batch (e.g. by adversarial examples)
Perturb = Callable[[nn.Module, Tensor, Tensor], Tensor]


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Shift each image by a random integer offset in ``[-max_shift, max_shift]`` (zero fill)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator).to(x.device)
    padded = F.pad(x, (max_shift, max_shift, max_shift, max_shift)).permute(0, 2, 3, 1)
    rows = (torch.arange(h, device=x.device)[None, :] + max_shift - offsets[0][:, None])[:, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + max_shift - offsets[1][:, None])[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``None``: leave torch's setting), then restore.

    One thread makes CPU training reproducible across machines with different core counts and
    avoids the large slowdowns of OpenMP threads on oversubscribed CPUs (parallel test workers).
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"num_threads must be a positive integer or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_hyperparameters(epochs: int, lr: float, batch_size: int, augment_shift: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(augment_shift, int) or augment_shift < 0:
        raise ConfigError(f"augment_shift must be a non-negative integer, got {augment_shift!r}")


def train_classifier(
    module: nn.Module,
    train: Dataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    augment_shift: int = 0,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    perturb: Perturb | None = None,
    num_threads: int | None = None,
) -> nn.Module:
    """Train ``module`` (logits out) on ``train`` with Adam, cross-entropy and a cosine learning rate.

    ``augment_shift`` shifts images by up to that many pixels; ``perturb`` (if given) maps each
    (augmented) batch to the inputs actually trained on, which is how adversarial training plugs
    in. ``num_threads`` fixes torch's CPU thread count for the run (one makes CPU results independent of the core count and avoids OpenMP slowdowns on busy CPUs). The
    module is moved to ``device`` (default: where its parameters are) and returned in eval mode,
    ready for :class:`~evasion.models.Classifier`.
    """
    _check_hyperparameters(epochs, lr, batch_size, augment_shift)
    if len(train) == 0:
        raise ConfigError(f"training set {train.name!r} is empty")
    dev = torch.device(device) if device is not None else next((p.device for p in module.parameters()), None)
    dev = dev or torch.device("cpu")
    module.to(dev)
    steps = epochs * -(-len(train) // batch_size)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    forked = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), _threads(num_threads):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for epoch in range(1, epochs + 1):
            loss = _train_epoch(
                module, train, optimizer, schedule, generator, batch_size, augment_shift, perturb, dev
            )
            if progress is not None:
                progress(epoch, loss)
    return module.eval()


def _train_epoch(
    module: nn.Module,
    train: Dataset,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    batch_size: int,
    augment_shift: int,
    perturb: Perturb | None,
    device: torch.device,
) -> float:
    """One pass over a seeded permutation of ``train``; returns the mean training loss."""
    order = torch.randperm(len(train), generator=generator)
    total, count = 0.0, 0
    for start in range(0, len(train), batch_size):
        index = order[start : start + batch_size]
        x = random_shift(train.x[index], augment_shift, generator).to(device)
        y = train.y[index].to(device)
        if perturb is not None:
            module.eval()
            x = perturb(module, x, y).detach()
        module.train()
        loss = F.cross_entropy(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += float(loss.detach()) * len(index)
        count += len(index)
    return total / count


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 1024) -> float:
    """Fraction of ``dataset`` that ``model`` classifies correctly (model run in eval mode)."""
    if len(dataset) == 0:
        raise ConfigError(f"dataset {dataset.name!r} is empty")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = 0
    with eval_mode(model):
        for x, y in dataset.batches(batch_size):
            correct += int((model(x.to(device)).argmax(dim=1) == y.to(device)).sum())
    return correct / len(dataset)
