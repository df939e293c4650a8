"""Bootstrap confidence intervals over attacked images, and verdicts decided on them.

A reproduction attacks a sample of test images; every number it reports (an accuracy at one
budget, the area under a security curve, the gap between two defences) would move with another
sample. :func:`bootstrap` resamples the *images* with replacement (jointly across every array it is
given, so paired comparisons keep their pairing, and within strata such as session splits when
asked) and returns the percentile interval of any statistic. :func:`verdict` turns an interval and
a threshold into "holds" / "does not hold" / "inconclusive", the way a paper's finding should be
judged on a few hundred images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import InputError

__all__ = ["Interval", "Verdict", "bootstrap", "bootstrap_columns", "verdict"]

Verdict = Literal["holds", "does not hold", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the original sample) and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    resamples: int = 0
    n: int = 0

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "resamples": self.resamples,
            "n": self.n,
        }

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _indices(n: int, resamples: int, strata: npt.ArrayLike | None, seed: int) -> npt.NDArray[np.int64]:
    """(resamples, n) row indices; with ``strata``, every stratum keeps its own size."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    groups = np.asarray(strata)
    if groups.shape != (n,):
        raise InputError(f"strata must have one entry per sample ({n}), got shape {groups.shape}")
    out = np.empty((resamples, n), dtype=np.int64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[:, rows] = rows[rng.integers(0, len(rows), size=(resamples, len(rows)))]
    return out


def _check(arrays: Sequence[npt.ArrayLike], resamples: int, level: float) -> list[npt.NDArray[Any]]:
    if not arrays:
        raise InputError("bootstrap needs at least one array of per-sample values")
    out = [np.asarray(a, dtype=float) for a in arrays]
    n = out[0].shape[0] if out[0].ndim else 0
    if n < 1:
        raise InputError("bootstrap needs at least one sample (got an empty array)")
    for a in out:
        if a.ndim == 0 or a.shape[0] != n:
            raise InputError(
                f"every array must have one row per sample ({n}); got shapes {[x.shape for x in out]}"
            )
        if not np.isfinite(a).all():
            raise InputError("bootstrap got NaN or infinite per-sample values")
    if not 0.0 < level < 1.0:
        raise InputError(f"level must lie in (0, 1), got {level}")
    if resamples < 10:
        raise InputError(f"resamples must be >= 10, got {resamples}")
    return out


def bootstrap(
    statistic: Callable[..., float],
    *arrays: npt.ArrayLike,
    resamples: int = 2000,
    level: float = 0.95,
    strata: npt.ArrayLike | None = None,
    seed: int = 0,
) -> Interval:
    """Percentile interval of ``statistic(*arrays)`` over resampled rows (images).

    All ``arrays`` share their first dimension (one row per image) and are resampled with the
    same indices, so ``statistic`` may compare them (a paired difference of two defences on the
    same images). ``strata`` (one label per row, e.g. the session split) resamples within each
    label. Deterministic under ``seed``.
    """
    data = _check(arrays, resamples, level)
    n = data[0].shape[0]
    estimate = float(statistic(*data))
    idx = _indices(n, resamples, strata, seed)
    values = np.array([float(statistic(*(a[i] for a in data))) for i in idx])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), level, resamples, n)


def bootstrap_columns(
    values: npt.ArrayLike,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    strata: npt.ArrayLike | None = None,
    seed: int = 0,
) -> list[Interval]:
    """Interval of each column's mean of an (images, points) matrix, e.g. a security curve.

    Rows are resampled jointly, so the band is the one of the whole curve's sampling noise at
    each point (vectorised: one gather per resample, no Python loop over points)."""
    (m,) = _check([values], resamples, level)
    if m.ndim != 2:
        raise InputError(f"bootstrap_columns needs an (images, points) matrix, got shape {m.shape}")
    idx = _indices(m.shape[0], resamples, strata, seed)
    means = m[idx].mean(axis=1)  # (resamples, points)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    est = m.mean(axis=0)
    return [
        Interval(float(e), float(lo), float(hi), level, resamples, m.shape[0])
        for e, lo, hi in zip(est, low, high, strict=True)
    ]


def verdict(interval: Interval, threshold: float, *, above: bool = True) -> Verdict:
    """Decide a finding "statistic > threshold" (``above``) or "< threshold" on its interval.

    Holds when the whole interval lies on the claimed side, does not hold when it lies wholly on
    the other side, and is inconclusive when the interval straddles the threshold.
    """
    low, high = (interval.low, interval.high) if above else (-interval.high, -interval.low)
    t = threshold if above else -threshold
    if low > t:
        return "holds"
    if high < t:
        return "does not hold"
    return "inconclusive"
