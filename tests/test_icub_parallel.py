"""`evasion reproduce icub --jobs N`: splits attacked in worker processes give the same numbers."""

from __future__ import annotations

import functools
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from evasion.cli.main import main
from evasion.errors import ConfigError
from evasion.experiments import icub


def _set() -> icub.SetData:
    """Three classes of 3x128x128 images (the size the iCub models take) over four sessions;
    features = a fixed linear map of them."""
    g = torch.Generator().manual_seed(0)
    classes, per, sessions = 3, 12, 4
    centres = torch.rand(classes, 3, 8, 8, generator=g).repeat_interleave(16, 2).repeat_interleave(16, 3)
    y = torch.arange(classes).repeat_interleave(per).repeat(sessions)
    session = torch.arange(sessions).repeat_interleave(per * classes)
    x = (centres[y] + 0.15 * torch.randn(len(y), 3, 128, 128, generator=g)).clamp(0, 1)
    extractor = nn.Sequential(nn.Flatten(), nn.Linear(3 * 128 * 128, 8)).eval()
    with torch.no_grad():
        z = extractor(x)
    data = icub.SetData("3 objects", "synthetic", x, y, ["a", "b", "c"], session, z, "0", None)
    data.extractor = extractor  # type: ignore[attr-defined]
    return data


@pytest.fixture
def small_grids(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = {"c_grid": (1.0, 10.0)}
    monkeypatch.setattr(icub, "PAPER_C_GRID", grid["c_grid"])
    monkeypatch.setattr(icub, "PAPER_GAMMA_GRID", (0.01, 0.1))
    monkeypatch.setattr(icub, "LinearSVMHead", functools.partial(icub.LinearSVMHead, **grid))
    monkeypatch.setattr(
        icub, "RBFSVMHead", functools.partial(icub.RBFSVMHead, gamma_grid=(0.01, 0.1), **grid)
    )


def test_a_split_attacked_in_a_worker_process_gives_the_same_curves(small_grids: None) -> None:
    data = _set()
    settings = replace(icub.QUICK, cv_per_class=6, epsilons=(0.1, 0.3, 1.0), steps=3, batch_size=4)
    jobs = []
    for s in range(2):
        fitted = icub.fit_split(data, 3 - s, settings, s, data.extractor)  # type: ignore[attr-defined]
        jobs.append(icub.split_job(fitted, settings, 6, s))
    here = [icub.run_split(job) for job in jobs]
    with icub._split_pool(2) as pool:
        there = [f.result(timeout=120) for f in [pool.submit(icub.run_split, job) for job in jobs]]
        # the workers started with freed memory kept (glibc: applied), the lead process is untouched
        assert pool.submit(icub.worker_allocator).result(timeout=60) is (sys.platform == "linux")
    assert icub.worker_allocator() is None
    assert "(1 threads)" in there[0].line  # the workers run one torch thread each
    for a, b in zip(here, there):
        assert a.queries == b.queries
        for attack in ("error-generic", "error-specific"):
            for model in icub.MODELS:
                ca, cb = a.curves[attack][model], b.curves[attack][model]
                assert ca.status == cb.status and ca.accuracy == cb.accuracy
    # the attacks did something: some image is broken at the largest budget
    statuses = [s for r in here for c in r.curves["error-generic"].values() for s in c.status or []]
    assert any(row[-1] == 2 for row in statuses)


def test_jobs_are_checked() -> None:
    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        icub.run_experiment(icub.QUICK, jobs=0)
    assert main(["reproduce", "icub", "--quick", "--jobs", "0"]) == 2
