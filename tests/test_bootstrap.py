"""Bootstrap intervals: coverage on a known mean, pairing, strata, verdicts and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from evasion.errors import InputError
from evasion.evaluation.bootstrap import Interval, bootstrap, bootstrap_columns, verdict


def test_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    p, hits, trials = 0.3, 0, 200
    for t in range(trials):
        x = (rng.random(120) < p).astype(float)
        iv = bootstrap(np.mean, x, resamples=400, seed=t)
        hits += iv.contains(p)
    assert 0.88 <= hits / trials <= 0.99  # nominal 0.95; the percentile method is slightly liberal


def test_width_shrinks_like_one_over_sqrt_n() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap(np.mean, rng.random(100), seed=0)
    large = bootstrap(np.mean, rng.random(1600), seed=0)
    assert 2.5 < small.width / large.width < 6.0  # sqrt(16) = 4


def test_paired_resampling_keeps_the_pairing() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(200)
    b = a + 0.01  # always 0.01 above: a paired difference has no sampling noise at all
    iv = bootstrap(lambda u, v: float(np.mean(v - u)), a, b, seed=0)
    assert iv.low == pytest.approx(0.01) and iv.high == pytest.approx(0.01)
    # resampled independently, the same difference would be drowned in noise (sanity of the test)
    unpaired = bootstrap(np.mean, b, seed=1).width
    assert unpaired > 0.05


def test_strata_keep_their_size() -> None:
    x = np.r_[np.zeros(30), np.ones(10)]
    groups = np.r_[np.zeros(30), np.ones(10)]
    iv = bootstrap(np.mean, x, strata=groups, seed=0)
    assert iv.low == iv.high == pytest.approx(0.25)  # each stratum is constant: no variation left
    assert bootstrap(np.mean, x, seed=0).width > 0.1


def test_columns_match_the_scalar_bootstrap_and_are_deterministic() -> None:
    rng = np.random.default_rng(3)
    m = (rng.random((80, 4)) < np.array([0.9, 0.6, 0.3, 0.1])).astype(float)
    cols = bootstrap_columns(m, seed=5)
    assert [c.estimate for c in cols] == pytest.approx(m.mean(0).tolist())
    assert all(c.low <= c.estimate <= c.high for c in cols)
    assert cols == bootstrap_columns(m, seed=5)
    one = bootstrap(np.mean, m[:, 1], seed=5)
    assert one.low == pytest.approx(cols[1].low, abs=0.03) and one.high == pytest.approx(
        cols[1].high, abs=0.03
    )


def test_verdicts() -> None:
    assert verdict(Interval(0.5, 0.2, 0.8), 0.1) == "holds"
    assert verdict(Interval(0.5, 0.2, 0.8), 0.9) == "does not hold"
    assert verdict(Interval(0.5, 0.2, 0.8), 0.5) == "inconclusive"
    assert verdict(Interval(0.5, 0.2, 0.8), 0.9, above=False) == "holds"
    assert verdict(Interval(0.5, 0.2, 0.8), 0.1, above=False) == "does not hold"


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        ([[]], {}, "empty"),
        ([[1.0, float("nan")]], {}, "NaN"),
        ([[1.0, 2.0], [1.0]], {}, "one row per sample"),
        ([[1.0, 2.0]], {"level": 1.5}, "level"),
        ([[1.0, 2.0]], {"resamples": 1}, "resamples"),
        ([[1.0, 2.0]], {"strata": [0]}, "strata"),
    ],
)
def test_bad_input_is_named(arrays: list[list[float]], kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        bootstrap(np.mean, *arrays, **kwargs)  # type: ignore[arg-type]
