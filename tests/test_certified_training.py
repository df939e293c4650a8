"""IBP certified training and Gaussian-noise training: sound margins, schedule, determinism, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from evasion.datasets.base import Dataset
from evasion.errors import ConfigError, InputError
from evasion.models import Classifier
from evasion.models.training import train_classifier
from evasion.models.zoo import model_info
from evasion.training.certified import (
    IBPConfig,
    ibp_certified_accuracy,
    ibp_loss,
    ibp_margins,
    mnist_ibp_cnn,
    train_ibp,
)
from evasion.training.noise import gaussian_perturb, train_noise
from evasion.verification.bounds import ibp_bounds, margin_lower_from_bounds


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def blobs(n: int, seed: int) -> Dataset:
    """10 classes of 8x8 images: fixed random prototypes plus uniform noise of +-0.05."""
    protos = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = (protos[y] + (torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1) * 0.05).clamp(0, 1)
    return Dataset(x, y, [str(i) for i in range(10)], name="blobs")


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return blobs(400, 1), blobs(200, 2)


def test_schedule_warms_up_then_ramps_epsilon_and_kappa() -> None:
    config = IBPConfig(epsilon=0.2, epochs=10, warmup_epochs=1.0, ramp_epochs=2.0, kappa_end=0.5)
    per_epoch = 10
    assert config.schedule(0, per_epoch) == (0.0, 1.0)
    assert config.schedule(9, per_epoch) == (0.0, 1.0)  # clean warm-up: the first epoch
    eps, kappa = config.schedule(19, per_epoch)  # halfway through the ramp
    assert eps == pytest.approx(0.1) and kappa == pytest.approx(0.75)
    assert config.schedule(29, per_epoch) == pytest.approx((0.2, 0.5))
    assert config.schedule(500, per_epoch) == pytest.approx((0.2, 0.5))


def test_margins_are_sound_and_the_elided_bound_is_tighter() -> None:
    model = mlp().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=gen)
    y = model(x).argmax(1)
    eps = 0.05
    elided = ibp_margins(model, x, y, eps, (0.0, 1.0))
    plain = ibp_margins(model, x, y, eps, (0.0, 1.0), elide=False)
    lower, upper = ibp_bounds(model, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
    assert torch.allclose(
        plain.scatter(1, y[:, None], math.inf).min(1).values, margin_lower_from_bounds(lower, upper, y)
    )
    wrapped = ibp_margins(Classifier(model, 10, input_shape=(1, 8, 8)), x, y, eps, (0.0, 1.0))
    assert torch.allclose(wrapped, elided)
    assert torch.equal(elided.gather(1, y[:, None]), torch.zeros(8, 1))
    assert bool((elided >= plain - 1e-5).all()) and bool((elided > plain + 1e-3).any())
    # 2000 random points of the ball ∩ box: every margin f_y - f_k stays above the bound
    for _ in range(4):
        delta = (torch.rand(500, *x.shape, generator=gen) * 2 - 1) * eps
        points = (x + delta).clamp(0, 1)
        logits = model(points.flatten(0, 1)).view(500, 8, 10)
        true = logits.gather(2, y.view(1, 8, 1).expand(500, 8, 1)) - logits
        assert bool((true.min(0).values >= elided - 1e-5).all())


def test_loss_mixes_clean_and_worst_case_and_is_differentiable() -> None:
    model = mlp()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    loss, clean, robust = ibp_loss(model, x, y, 0.1, 0.75, (0.0, 1.0))
    assert float(loss.detach()) == pytest.approx(
        0.75 * float(clean.detach()) + 0.25 * float(robust), rel=1e-6
    )
    assert float(robust) > float(clean)  # the worst case in the ball is worse than the centre
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    only_clean, c2, _ = ibp_loss(mlp(), x, y, 0.0, 0.5, (0.0, 1.0))
    assert torch.equal(only_clean, c2)


def test_ibp_training_certifies_what_standard_training_does_not(digits: tuple) -> None:  # type: ignore[type-arg]
    train, test = digits
    config = IBPConfig(epsilon=0.1, epochs=15, batch_size=40, lr=1e-2, warmup_epochs=1, ramp_epochs=7)
    module = mlp(1)
    gen_state = torch.get_rng_state()
    result = train_ibp(module, train, config)
    assert torch.equal(gen_state, torch.get_rng_state())
    assert len(result.history) == 15 and result.history[-1].epsilon == pytest.approx(0.1)
    assert result.history[-1].kappa == pytest.approx(0.5) and not result.module.training
    assert result.history[0].epsilon == 0.0 and result.history[0].robust_loss == result.history[0].clean_loss
    clean, certified = ibp_certified_accuracy(result.module, test, 0.05)
    plain = train_classifier(mlp(1), train, epochs=15, lr=1e-2, batch_size=40, seed=0)
    plain_clean, plain_certified = ibp_certified_accuracy(plain, test, 0.05)
    assert clean > 0.95 and plain_clean > 0.95 and certified > 0.8
    assert certified > plain_certified + 0.3


def test_ibp_training_is_deterministic(digits: tuple) -> None:  # type: ignore[type-arg]
    config = IBPConfig(epsilon=0.1, epochs=2, batch_size=40, warmup_epochs=0, ramp_epochs=1)
    a = train_ibp(mlp(1), digits[0], config).module.state_dict()
    b = train_ibp(mlp(1), digits[0], config).module.state_dict()
    c = train_ibp(mlp(1), digits[0], replace(config, seed=1)).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_noise_training_is_seeded_and_noisy(digits: tuple) -> None:  # type: ignore[type-arg]
    train, _ = digits
    perturb = gaussian_perturb(0.5, seed=3)
    x = torch.full((200, 1, 8, 8), 0.5)
    noisy = perturb(nn.Identity(), x, torch.zeros(200, dtype=torch.long))
    assert float((noisy - x).std()) == pytest.approx(0.5, rel=0.05)
    assert torch.equal(noisy, gaussian_perturb(0.5, seed=3)(nn.Identity(), x, torch.zeros(200)))
    small = train.subset(torch.arange(300))
    a = train_noise(mlp(2), small, sigma=0.25, epochs=1, lr=1e-3, batch_size=50, seed=0)
    b = train_noise(mlp(2), small, sigma=0.25, epochs=1, lr=1e-3, batch_size=50, seed=0)
    c = train_classifier(mlp(2), small, epochs=1, lr=1e-3, batch_size=50, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_zoo_entries_use_the_certifiable_architecture() -> None:
    for name in ("mnist-cnn-ibp", "mnist-cnn-noise-0.25", "mnist-cnn-noise-0.5"):
        info = model_info(name)
        assert info.dataset == "mnist5k" and info.input_shape == (1, 28, 28)
        assert info.architecture is not None
        assert set(info.architecture().state_dict()) == set(mnist_ibp_cnn(0).state_dict())
    assert sum(p.numel() for p in mnist_ibp_cnn(0).parameters()) == 166_406


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": -0.1}, "epsilon must be >= 0"),
        ({"epsilon": 2.0}, "beyond the data range"),
        ({"kappa_end": 1.5}, "kappa_end must be in"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"ramp_epochs": float("nan")}, "ramp_epochs must be a finite number"),
        ({"bounds": (1.0, 0.0)}, "bounds must satisfy"),
    ],
)
def test_bad_ibp_config(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IBPConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_training_input(digits: tuple) -> None:  # type: ignore[type-arg]
    train, _ = digits
    with pytest.raises(ConfigError, match="config must be an IBPConfig"):
        train_ibp(mlp(), train, {"epsilon": 0.1})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="outside the bounds"):
        train_ibp(mlp(), train, IBPConfig(bounds=(0.0, 0.5), epsilon=0.1))
    with pytest.raises(ConfigError, match="cannot bound layer"):
        ibp_margins(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.GELU()),
            torch.rand(2, 1, 8, 8),
            torch.tensor([0, 1]),
            0.1,
            (0.0, 1.0),
        )
    with pytest.raises(ConfigError, match="sigma must be"):
        train_noise(mlp(), train, sigma=0.0, epochs=1, lr=1e-3, batch_size=50, seed=0)


def test_adversarial_trainer_runs_the_ibp_recipe(digits: tuple) -> None:  # type: ignore[type-arg]
    from evasion.attacks import PGD
    from evasion.training import AdversarialTrainer, TrainConfig

    train, test = digits
    config = TrainConfig(
        recipe="ibp", epsilon=0.1, epochs=15, lr=1e-2, batch_size=40, warmup_epochs=7, num_threads=1
    )
    result = AdversarialTrainer(config).fit(mlp(1), train)
    module = result.classifier.module
    clean, certified = ibp_certified_accuracy(module, test, 0.05)
    assert clean > 0.95 and certified > 0.8
    assert result.history[-1].epsilon == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="ibp trains against L-inf balls only"):
        AdversarialTrainer(TrainConfig(recipe="ibp", epsilon=0.5, norm="l2"))
    with pytest.raises(ConfigError, match="takes no attack"):
        AdversarialTrainer(config, PGD())
