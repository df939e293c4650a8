"""benchmarks/attacks.py: its own textbook loops and the ratios it reports.

The script's numbers decide the speed goals of the project, so the reference loop it times
(``textbook``) must be a correct attack and the ratios must be computed from the measured times.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

# appended, not prepended: the scripts folder must not shadow any installed module
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _peers
import attacks as bench
import security_curve
from evasion.models.classifier import Classifier


def _model() -> Classifier:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    return Classifier(body, 3, input_shape=(1, 4, 4))


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 4, 4, generator=g)
    x[:, :, :2] = 0.0  # pixels on the box's edge: the clamp must bind there
    return x, torch.randint(0, 3, (n,), generator=g)


def test_textbook_fgsm_is_the_closed_form_on_a_linear_model() -> None:
    model, (x, y) = _model(), _data()
    run = _peers.make_runner(_peers.TEXTBOOK, _peers.CONFIGS["fgsm"], model, len(y))
    assert run is not None
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xg), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xg)
    torch.testing.assert_close(run(x, y), (x + 0.1 * g.sign()).clamp(0, 1))


@pytest.mark.parametrize("key", ["pgd-linf-10", "pgd-l2-10"])
def test_textbook_pgd_stays_in_the_ball_and_the_box_and_raises_the_loss(key: str) -> None:
    model, (x, y) = _model(), _data()
    cfg = _peers.CONFIGS[key]
    run = _peers.make_runner(_peers.TEXTBOOK, cfg, model, len(y))
    assert run is not None
    _peers.seed_everything(0)
    adv = run(x, y)
    assert adv.min() >= 0 and adv.max() <= 1
    dist = (adv - x).flatten(1).abs().amax(1) if cfg.norm == "linf" else (adv - x).flatten(1).norm(dim=1)
    assert bool((dist <= cfg.epsilon * (1 + 1e-5)).all())
    with torch.no_grad():
        before = nn.functional.cross_entropy(model(x), y)
        after = nn.functional.cross_entropy(model(adv), y)
    assert after > before
    assert _peers.make_runner(_peers.TEXTBOOK, _peers.CONFIGS["apgd-ce"], model, len(y)) is None


def test_the_benchmark_reports_ratios_from_its_own_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    model, (x, y) = _model(), _data(8)
    monkeypatch.setattr(bench, "load_data", lambda batch: (model, x[:batch], y[:batch]))
    libs = ["evasion", "evasion-full", _peers.TEXTBOOK] + (
        ["torchattacks"] if _peers.peer_versions().get("torchattacks") else []
    )
    report = bench.run_benchmark(
        [8], ["fgsm", "pgd-linf-10", "pgd-l2-10"], libs, 2, 600.0, lambda s: None, lambda r: None
    )
    rows = {(r["attack"], r["library"]): r for r in report["rows"]}
    for (key, lib), r in rows.items():
        assert r["available"], (key, lib)
        steps = _peers.CONFIGS[key].steps
        # every ratio is a measured time over a measured limit of the same repetition
        assert len(r["ratio_all"]) == len(r["ratio_at_points_all"]) == 2
        for sec, lim, fwd, ratio in zip(
            r["seconds_all"], r["limit_ms_all"], r["forward_ms_all"], r["ratio_all"]
        ):
            assert ratio == pytest.approx(sec / (steps * lim / 1e3 + fwd / 1e3))
        assert all(v > 0 and math.isfinite(v) for v in r["ratio_at_points_all"])
        if "torchattacks" in libs:
            assert len(r["paired_to_torchattacks_all"]) == 2
            assert r["paired_to_verified_torchattacks"] < r["paired_to_torchattacks"]
        else:
            assert math.isnan(r["paired_to_torchattacks"])
    if "torchattacks" in libs:
        assert rows["fgsm", "torchattacks"]["paired_to_torchattacks"] == 1.0
    dep = report["input_dependence"]["8"]
    assert dep["clean_zero_fraction"] == pytest.approx(float((x == 0).float().mean()))
    assert all(
        dep[k] > 0 for k in ("clean_ms", "uniform_ms", "corner_ms", "uniform_over_clean", "corner_over_clean")
    )
    proj = report["l2_projection"]["8"]
    assert proj["exact_ms"] > 0 and proj["rescale_clamp_ms"] > 0
    assert proj["exact_over_forward_backward"] == pytest.approx(
        proj["exact_ms"] / proj["forward_backward_ms"]
    )
    lines = bench.goals(report)
    assert len(lines) == 3 and all("at the returned points" in line for line in lines)
    text = bench.markdown(report)
    assert "textbook" in text and "returned points" in text and "corners" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--batch-sizes", "64", "0"], "--batch-sizes must be >= 1, got 0"),
        (["--batch-sizes", "5000"], "--batch-sizes must be <= 1000"),
        (["--slow-limit", "0"], "--slow-limit must be > 0 seconds"),
        (["--render"], "does not exist: run the benchmark first"),
        (["--input-dependence"], "does not exist: run the benchmark first"),
    ],
)
def test_the_benchmark_names_bad_arguments(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--samples", "0"], "--samples must be in [1, 1000]"),
        (["--samples", "1001"], "--samples must be in [1, 1000]"),
        (["--threads", "-1"], "--threads must be >= 1, got -1"),
    ],
)
def test_the_security_curve_benchmark_names_bad_arguments(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "curve.json"
    with pytest.raises(SystemExit) as exit_info:
        security_curve.main([*argv, "--out", str(out)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
