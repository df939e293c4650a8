"""The one-pixel attack: finds a provable one-pixel flip, stays in d pixels ∩ box ∩ mask, and
sees the model only through counted, gradient-free score queries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evasion import ThreatModel
from evasion.attacks import OnePixel
from evasion.attacks.one_pixel import distinct_parents
from evasion.cli.main import main
from evasion.errors import ConfigError, InputError
from evasion.models.classifier import Classifier
from evasion.perturbations import norm

from .conftest import make_tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


class _Watched(nn.Module):
    """Counts the images each forward pass sees and whether gradients were enabled."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.images = 0
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.body(x)


class _PixelWeights(nn.Module):
    """Linear scores ``z_k = b_k + sum_c w_k[c] * x[c, h_k, w_k]``: class k reads one pixel only."""

    def __init__(self, reads: list[tuple[int, int] | None], weights: torch.Tensor, bias: list[float]):
        super().__init__()
        self.reads, self.weights = reads, weights
        self.register_buffer("bias", torch.tensor(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = [
            torch.zeros(len(x)) if r is None else (x[:, :, r[0], r[1]] * self.weights).sum(1)
            for r in self.reads
        ]
        return torch.stack(cols, 1) + self.bias


def _one_pixel_model(channels: int = 1, size: int = 8) -> Classifier:
    """Class 0 unless pixel (5, 2) gets ``x_0 - x_1 + x_2 > 0.8`` (colour) or ``x > 0.5`` (grey)."""
    weights = torch.tensor([1.0, -1.0, 1.0]) if channels == 3 else torch.tensor([1.0])
    bias = [0.8 if channels == 3 else 0.5, 0.0]
    body = _PixelWeights([None, (5, 2)], weights, bias)
    return Classifier(_Watched(body), 2, input_shape=(channels, size, size), name="one-pixel-linear")


def _images(n: int, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 0.3
    x[:, :, 5, 2] = 0.0
    return x


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("seed", range(4))
def test_finds_the_only_pixel_that_flips_the_label_every_time(channels: int, seed: int) -> None:
    model = _one_pixel_model(channels)
    x = _images(6, channels, seed=seed)
    y = torch.zeros(6, dtype=torch.long)
    assert bool((model.predict(x) == 0).all())
    attack = OnePixel(population=50, generations=100)
    r = attack(model, x, y, threat=ThreatModel("l0", 1), generator=torch.Generator().manual_seed(seed))
    assert bool(r.success.all()), r.success
    changed = (r.adversarial != x).any(1)  # (N, H, W)
    assert bool(changed[:, 5, 2].all()) and int(changed.sum()) == 6  # that pixel, and only it
    assert torch.equal(r.norms, torch.ones(6))


def test_changes_at_most_d_pixels_counting_all_channels_once() -> None:
    model = make_tiny_cnn(channels=3, classes=10, size=6)
    x = torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    y = model.predict(x)
    r = OnePixel(population=12, generations=3)(model, x, y, threat=ThreatModel("l0", 2))
    pixels = (r.adversarial != x).any(1).flatten(1).sum(1)
    assert int(pixels.max()) <= 2 and int(pixels.min()) >= 1  # nothing evades cleanly: all attacked
    assert torch.equal(r.norms, pixels.float()) and torch.equal(norm(r.adversarial - x, "l0"), r.norms)
    # ``pixels=`` is capped by the threat's budget
    capped = OnePixel(pixels=5, population=8, generations=1)(model, x, y, threat=ThreatModel("l0", 1))
    assert int((capped.adversarial != x).any(1).flatten(1).sum(1).max()) <= 1


def test_stays_in_the_per_pixel_box_and_the_mask() -> None:
    model = make_tiny_cnn(channels=3, classes=10, size=6)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 6, 6, generator=g)
    y = model.predict(x)
    mask = torch.zeros(6, 3, 6, 6, dtype=torch.bool)
    mask[:, :2, 1:4, 2:5] = True  # a sticker on two of the three channels
    mask[0] = False
    mask[0, 2, 0, 0] = True  # sample 0: a single free coordinate
    lower, upper = (x - 0.1).clamp_min(0), (x + 0.3).clamp_max(1)
    threat = ThreatModel("l0", 3, bounds=(lower, upper), mask=mask)
    r = OnePixel(population=16, generations=4)(model, x, y, threat=threat)
    assert torch.equal(r.adversarial[~mask], x[~mask])
    assert bool((r.adversarial >= lower).all()) and bool((r.adversarial <= upper).all())
    assert int((r.adversarial[0] != x[0]).sum()) <= 1
    assert bool((r.adversarial != x).any()), "the free pixels are used"


def test_targeted_reaches_the_target_through_its_pixel() -> None:
    weights = torch.tensor([1.0])
    body = _PixelWeights([None, (1, 1), (6, 3)], weights, [0.5, 0.0, 0.0])
    model = Classifier(body, 3, input_shape=(1, 8, 8))
    x = _images(5)
    x[:, :, 1, 1] = 0.0
    y = torch.zeros(5, dtype=torch.long)
    target = torch.tensor([2, 1, 2, 1, 2])
    threat = ThreatModel("l0", 1, targeted=True)
    r = OnePixel(population=50, generations=100)(model, x, y, threat=threat, target=target)
    assert bool(r.success.all()) and torch.equal(r.predictions, target)
    changed = (r.adversarial != x).any(1)
    assert bool(changed[target == 2, 6, 3].all()) and bool(changed[target == 1, 1, 1].all())


def test_deterministic_under_the_generator() -> None:
    model = make_tiny_cnn()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = model.predict(x)
    attack = OnePixel(population=10, generations=3)
    runs = [
        attack(model, x, y, threat=ThreatModel("l0", 2), generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert torch.equal(runs[0].forwards, runs[1].forwards)
    assert not torch.equal(runs[0].adversarial, runs[2].adversarial)


@pytest.mark.parametrize("max_queries", [None, 95])
def test_query_counts_are_the_forwards_the_model_saw_without_gradients(max_queries: int | None) -> None:
    model = make_tiny_cnn()
    watched = _Watched(model.module)
    clf = Classifier(watched, 10, input_shape=(1, 8, 8))
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    y = model.predict(x)
    y[:2] = (y[:2] + 1) % 10  # two inputs that are misclassified already: one query each
    attack = OnePixel(population=20, generations=6, max_queries=max_queries, batch_size=50)
    r = attack(clf, x, y, threat=ThreatModel("l0", 1))
    assert int(r.forwards.sum()) == watched.images
    assert int(r.backwards.sum()) == 0 and r.access == "scores" and OnePixel.black_box
    assert not any(watched.grad_enabled), "a score-only attacker never builds a graph"
    assert torch.equal(r.forwards[:2], torch.ones(2, dtype=torch.long))
    budget = attack.budget
    assert budget == (95 if max_queries else 20 * 7 + 2)
    assert int(r.forwards.max()) <= budget
    broken = r.success[2:] & (r.forwards[2:] < budget)  # stopped early on success
    failed = ~r.success[2:]
    assert bool((r.forwards[2:][failed] == 2 + 20 * ((budget - 2) // 20)).all())
    assert bool(broken.any() or failed.all())


def test_distinct_parents() -> None:
    r = distinct_parents(50, 6, torch.Generator().manual_seed(0))
    own = torch.arange(6).expand(50, 6)
    assert r.shape == (3, 50, 6) and int(r.min()) >= 0 and int(r.max()) < 6
    for a, b in ((r[0], r[1]), (r[0], r[2]), (r[1], r[2]), (r[0], own), (r[1], own), (r[2], own)):
        assert not bool((a == b).any())
    # every other member is drawn as r1, about equally often
    counts = torch.bincount((r[0] - own).remainder(6).flatten(), minlength=6)
    assert int(counts[0]) == 0 and int(counts[1:].min()) > 0.7 * 300 / 5


def test_children_replace_parents_only_when_not_worse() -> None:
    model = make_tiny_cnn()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    attack = OnePixel(population=8, generations=1)
    problem = attack.prepare(model, x, model.predict(x), threat=ThreatModel("l0", 2))
    search = attack._setup(problem)
    rows, gen = torch.arange(3), torch.Generator().manual_seed(0)
    genes = attack._random_genes(search, rows, 2, gen)
    fit, _ = search.evaluate(rows, genes)
    new_genes, new_fit, _ = attack._generation(search, rows, genes, fit, gen)
    assert bool((new_fit <= fit).all()) and bool((new_fit < fit).any() or torch.equal(new_genes, genes))
    kept = (new_genes == genes).flatten(2).all(2)
    assert torch.equal(new_fit[kept], fit[kept])
    positions = new_genes[..., 0]
    assert bool((positions >= 0).all()) and bool((positions < 64).all())
    assert bool((new_genes[..., 1:] >= 0).all()) and bool((new_genes[..., 1:] <= 1).all())


def test_bad_input_is_one_clear_error() -> None:
    model = make_tiny_cnn()
    x, y = torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="population must be an integer >= 4"):
        OnePixel(population=3)
    with pytest.raises(ConfigError, match="max_queries must be an integer >= 1"):
        OnePixel(max_queries=0)
    with pytest.raises(ConfigError, match="max_queries=50 is below one population"):
        OnePixel(population=50, max_queries=50)
    with pytest.raises(InputError, match="pixels=65 exceeds the 64 pixels"):
        OnePixel(pixels=65)(model, x, y, threat=ThreatModel("l0", math.inf))
    with pytest.raises(InputError, match="epsilon=100 exceeds the 64 pixels"):
        OnePixel()(model, x, y, threat=ThreatModel("l0", 100))
    with pytest.raises(ConfigError, match="needs a finite epsilon"):
        OnePixel()(model, x, y, threat=ThreatModel("l0", math.inf))
    with pytest.raises(ConfigError, match="does not support the linf norm"):
        OnePixel()(model, x, y, threat=ThreatModel("linf", 0.1))


def test_cli_runs_the_one_pixel_attack(tmp_path: Path) -> None:
    out = tmp_path / "onepixel"
    args = ["attack", "--model", "digits-mlp", "--data", "digits", "-n", "6", "--attack", "onepixel"]
    args += ["--norm", "l0", "--epsilon", "2", "--param", "population=12", "--param", "generations=2"]
    assert main([*args, "--out", str(out), "--save-images", "0", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threat"]["norm"] == "l0" and summary["attack"].startswith("OnePixel(")
    arrays = np.load(out / "adversarial.npz")
    assert arrays["x"].shape == (6, 1, 8, 8) and float(np.abs(arrays["norms"]).max()) <= 2
