"""`Dataset`: the record every loader returns (float images in [0, 1], int64 labels, class names)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["Dataset"]


@dataclass(frozen=True)
class Dataset:
    """Images ``x`` (N, C, H, W) float32 in [0, 1], labels ``y`` (N,) int64, and class names.

    ``meta`` holds loader-specific facts (source file, checksum, sessions ...).
    """

    x: Tensor
    y: Tensor
    classes: list[str]
    name: str = "data"
    split: str = "all"
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise DataError(f"dataset {self.name!r}: images must be (N, C, H, W), got {tuple(self.x.shape)}")
        if self.x.dtype != torch.float32:
            raise DataError(f"dataset {self.name!r}: images must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise DataError(
                f"dataset {self.name!r}: labels must be int64 of shape ({self.x.shape[0]},), "
                f"got {self.y.dtype} {tuple(self.y.shape)}"
            )
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise DataError(f"dataset {self.name!r}: labels outside [0, {len(self.classes)})")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: Tensor | Sequence[int] | slice) -> Dataset:
        """The samples at ``index`` (a slice, indices or a boolean mask), same classes."""
        if isinstance(index, slice):
            x, y = self.x[index], self.y[index]
        else:
            idx = torch.as_tensor(index)
            x, y = self.x[idx], self.y[idx]
        return Dataset(x, y, list(self.classes), self.name, self.split, dict(self.meta))

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples, in file order: often sorted by class (see :meth:`sample`)."""
        return self.subset(slice(0, n))

    def shuffled(self, seed: int = 0) -> Dataset:
        """Every sample, in a fixed random order drawn from ``seed`` (files are often sorted by class).

        The order that ``[data] shuffle = true`` evaluates (``shuffle_seed`` is ``seed``)."""
        generator = torch.Generator().manual_seed(seed)
        return self.subset(torch.randperm(len(self), generator=generator))

    def sample(self, n: int, seed: int = 0) -> Dataset:
        """``n`` samples drawn without replacement, in random order: ``shuffled(seed).head(n)``.

        The same inputs as a config's ``[data] shuffle = true, shuffle_seed = seed, samples = n``."""
        self._check_count("sample", n)
        return self.shuffled(seed).head(n)

    def stratified(self, n: int, seed: int = 0) -> Dataset:
        """``n`` samples in which each class has its share (equal shares for balanced classes).

        Shares are proportional to the class counts (largest remainder; the rule of the embedded
        datasets' train/test split), the members of each class are drawn from ``seed``, and the
        result comes in a random order, so its own ``head`` is not sorted by class either."""
        from .embedded import stratified_split  # embedded imports this module

        self._check_count("stratified", n)
        _, chosen = stratified_split(self.y.numpy(), n, seed)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.subset(torch.from_numpy(chosen)[order])

    def _check_count(self, what: str, n: int) -> None:
        """Refuse a subset size that is not an integer in ``[1, len(self)]``."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self):
            raise ConfigError(
                f"dataset {self.name!r} ({self.split}): {what}(n) needs 1 <= n <= {len(self)} samples, got {n!r}"
            )

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]
