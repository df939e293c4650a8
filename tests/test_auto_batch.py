"""``batch_size = "auto"``: measured on this machine, recorded in the run, reused on resume."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from evasion.cli.main import main
from evasion.config import RunConfig
from evasion.errors import ConfigError
from evasion.runtime import auto_batch_size

pytestmark = pytest.mark.usefixtures("one_thread")


class Timed(nn.Module):
    """A linear model whose forward sleeps ``fixed + per_image * b**power`` seconds."""

    def __init__(self, fixed: float, per_image: float, power: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.fixed, self.per_image, self.power = fixed, per_image, power

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.fixed + self.per_image * x.shape[0] ** self.power)
        return self.fc(x.flatten(1))


def test_cpu_picks_the_batch_with_the_most_images_per_second() -> None:
    x = torch.rand(1, 1, 2, 2)
    # a fixed cost per call dominates: the largest batch allowed is the fastest per image
    assert auto_batch_size(Timed(0.02, 0.0, 1), x, candidates=(4, 8, 16, 32)) == 32
    assert auto_batch_size(Timed(0.02, 0.0, 1), x, candidates=(4, 8, 16, 32), limit=10) == 8
    # the cost grows faster than the batch: the smallest batch wins
    assert auto_batch_size(Timed(0.0, 2e-5, 2.5), x, candidates=(8, 16, 32, 64)) == 8


def test_config_accepts_auto_and_round_trips() -> None:
    run = RunConfig.parse({"batch_size": "auto"})
    assert run.auto_batch and run.batch_size == RunConfig.batch_size
    assert RunConfig.parse({"batch_size": 64}) == RunConfig(batch_size=64)
    with pytest.raises(ConfigError, match='batch_size must be a positive integer or "auto"'):
        RunConfig.parse({"batch_size": "large"})
    with pytest.raises(ConfigError, match=r"unknown key run\.auto_batch"):
        RunConfig.parse({"auto_batch": True})


TINY = """
[run]
name = "tiny"
batch_size = "auto"

[data]
name = "digits"
samples = 30

[[models]]
name = "digits-mlp"

[[attacks]]
attack = "fgsm"
norm = "linf"
epsilons = [0.05, 0.1]
"""


def _recorded(out: Path) -> int:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        return int(con.execute("SELECT value FROM meta WHERE key = 'batch_size'").fetchone()[0])
    finally:
        con.close()


def test_evaluate_measures_records_and_reuses_the_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out = tmp_path / "c.toml", tmp_path / "run"
    cfg.write_text(TINY)
    calls: list[int] = []

    def fake(model: nn.Module, example: torch.Tensor, **kw: object) -> int:
        calls.append(1)
        return 16 if len(calls) == 1 else 8  # a second measurement would disagree

    monkeypatch.setattr("evasion.cli.evaluate.auto_batch_size", fake)
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert _recorded(out) == 16
    assert "batch_size = 16" in (out / "config.toml").read_text(), "the run keeps the number chosen"
    assert main(["evaluate", str(cfg), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert len(calls) == 1, "a resume reuses the recorded size instead of measuring again"
    other = tmp_path / "run2"
    assert (
        main(["evaluate", str(cfg), "--out", str(other), "--batch-size", "12", "--quiet", "--no-report"]) == 0
    )
    assert _recorded(other) == 12


def test_bad_batch_size_flag_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    assert main(["evaluate", str(cfg), "--out", str(tmp_path / "r"), "--batch-size", "many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size" in err[0]
