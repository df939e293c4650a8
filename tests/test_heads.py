"""SVM heads keep the caller's hyper-parameters and store the chosen ones in ``c_`` / ``gamma_``."""

from __future__ import annotations

import pytest
import torch

from evasion.errors import ConfigError
from evasion.models.heads import LinearSVMHead, RBFSVMHead, RLSHead

C_GRID = (0.1, 1.0, 10.0)
GAMMA_GRID = (0.01, 1.0)


def _blobs(seed: int, n: int = 12, d: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, d, generator=g)
    y = torch.arange(classes).repeat_interleave(n)
    return centres[y] + 0.3 * torch.randn(len(y), d, generator=g), y


def test_fit_stores_the_chosen_values_without_overwriting_the_callers():
    x, y = _blobs(0)
    lin = LinearSVMHead(c_grid=C_GRID).fit(x, y)
    assert lin.c is None and lin.cv is not None
    assert (lin.c_, lin.gamma_) == lin.cv.best() and lin.c_ in C_GRID and lin.gamma_ is None
    rbf = RBFSVMHead(c_grid=C_GRID, gamma_grid=GAMMA_GRID).fit(x, y)
    assert rbf.c is None and rbf.gamma is None and rbf.cv is not None
    assert (rbf.c_, rbf.gamma_) == rbf.cv.best() and rbf.gamma_ in GAMMA_GRID
    # the exported decision function uses the chosen gamma
    assert torch.allclose(rbf(x.double()), rbf.sklearn_decision_function(x), atol=1e-8)
    half = RBFSVMHead(1.0, gamma_grid=GAMMA_GRID).fit(x, y)  # C given, gamma chosen
    assert half.c == half.c_ == 1.0 and half.gamma is None and half.gamma_ in GAMMA_GRID
    given = RBFSVMHead(10.0, 0.5).fit(x, y)  # nothing to choose: no cross-validation
    assert given.cv is None and (given.c, given.gamma) == (given.c_, given.gamma_) == (10.0, 0.5)


def test_a_second_fit_chooses_again_and_fresh_copies_keep_the_chosen_values():
    head = RBFSVMHead(c_grid=C_GRID, gamma_grid=GAMMA_GRID).fit(*_blobs(0))
    first = head.cv
    head.fit(*_blobs(1))
    assert head.cv is not first and (head.c_, head.gamma_) == head.cv.best()
    copy = head.fresh()
    assert not copy.fitted and (copy.c, copy.gamma) == (head.c_, head.gamma_)
    assert LinearSVMHead(2.0).fresh().c == 2.0  # an unfitted head copies what it was given


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearSVMHead(0.0),
        lambda: LinearSVMHead(float("nan")),
        lambda: RBFSVMHead(1.0, -1.0),
        lambda: RBFSVMHead(cv_threshold=float("inf")),
        lambda: RLSHead(0.0),
    ],
)
def test_bad_hyper_parameters_are_refused(make):
    with pytest.raises(ConfigError):
        make()
