"""Substitute-model attack: labels only, every query counted, no gradient of the victim ever."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evasion.access import Victim
from evasion.attacks.substitute import Substitute, _augment, train_substitute
from evasion.errors import ConfigError, InputError
from evasion.models.classifier import Classifier
from evasion.threat_model import ThreatModel

SMALL = {"seeds": 12, "rounds": 3, "epochs": 2, "architecture": "digits-mlp", "transfer": "fgsm"}


class NoGradients(nn.Module):
    """A linear victim that fails on any gradient request and counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)
        with torch.no_grad():
            self.net.weight.copy_(torch.randn(10, 64, generator=torch.Generator().manual_seed(3)))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.requires_grad:
            raise RuntimeError("the victim was asked for a gradient")
        self.seen += int(x.shape[0])
        return self.net(x.flatten(1))


def _victim() -> tuple[Classifier, NoGradients]:
    inner = NoGradients()
    return Classifier(inner, 10, input_shape=(1, 8, 8), name="no-grad"), inner


def _data(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_runs_against_a_victim_that_refuses_gradients_and_counts_every_query(one_thread) -> None:
    model, inner = _victim()
    x, y = _data()
    attack = Substitute(**SMALL)
    report = attack.run(
        model, x, y, threat=ThreatModel("linf", 0.2), generator=torch.Generator().manual_seed(0)
    )
    res = report.result
    assert res.access == "transfer" and Substitute.black_box
    # 12 seeds doubled twice; then 8 clean labels (the seeds' labels are reused) and 20 verifications
    assert report.training_queries == 12 * 2**2 == 48
    assert report.verification_queries == (20 - 12) + 20
    assert report.total_queries == inner.seen == int(res.forwards.sum())
    # per sample: a seed carries its 4 training points plus its verification; the others 2
    assert res.forwards[:12].tolist() == [5] * 12 and res.forwards[12:].tolist() == [2] * 8
    assert int(res.backwards.sum()) == 0
    # success is the victim's verdict on the returned points, inside ball and box
    assert torch.equal(res.predictions, model.predict(res.adversarial))
    assert torch.equal(res.success, res.predictions != y)
    assert float((res.adversarial - x).abs().max()) <= 0.2 + 1e-6
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    assert report.agreement == pytest.approx(float(res.stats["substitute_agrees"].float().mean()))


def test_called_like_every_attack_and_deterministic_under_the_generator(one_thread) -> None:
    model, _ = _victim()
    x, y = _data()
    attack = Substitute(**SMALL)
    runs = [
        attack(model, x, y, threat=ThreatModel("l2", 1.0), generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].adversarial, runs[1].adversarial)
    assert torch.equal(runs[0].forwards, runs[1].forwards)
    assert float(runs[0].norms.max()) <= 1.0 + 1e-5


def test_separate_seed_set_is_charged_apart(one_thread) -> None:
    model, inner = _victim()
    x, y = _data(10)
    seeds = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    report = Substitute(**SMALL).run(model, x, y, threat=ThreatModel("linf", 0.1), seeds=seeds)
    assert report.training_queries == 6 * 4
    assert report.result.forwards.tolist() == [2] * 10  # clean label + verification
    assert report.total_queries == inner.seen == report.training_queries + int(report.result.forwards.sum())


def test_jacobian_augmentation_makes_the_examples_transfer(one_thread) -> None:
    """On a linear victim, a substitute grown by augmentation transfers far better than one
    trained on the seeds alone, and both beat random sign noise of the same size."""
    model, _ = _victim()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(100, 1, 8, 8, generator=g)
    y = model.predict(x)
    threat = ThreatModel("linf", 0.15)
    noise = (x + 0.15 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 1)
    noise_rate = float((model.predict(noise) != y).float().mean())
    rates = {}
    for rounds in (1, 3):
        attack = Substitute(
            architecture="digits-mlp", transfer="fgsm", seeds=40, rounds=rounds, epochs=10, batch_size=16
        )
        rates[rounds] = attack(model, x, y, threat=threat).success_rate
    assert rates[3] > rates[1] + 0.2 and rates[3] > noise_rate + 0.3
    assert rates[3] > 0.8


def test_train_substitute_counts_one_query_per_training_point() -> None:
    model, _ = _victim()
    seeds = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    victim = Victim(model, view="labels")
    trained = train_substitute(victim, seeds, architecture="digits-mlp", rounds=4, epochs=1)
    assert victim.queries == trained.queries == 10 * 2**3
    assert trained.queries_per_seed.tolist() == [8] * 10
    assert [n for n, _ in trained.rounds] == [10, 20, 40, 80]
    assert torch.equal(trained.seed_labels, model.predict(seeds))


def test_jacobian_augmentation_steps_along_the_sign_of_the_label_logit_gradient() -> None:
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.full((3, 1, 8, 8), 0.5)
    labels = torch.tensor([0, 4, 9])
    new = _augment(lin, x, labels, 0.1, 0.0, 1.0)
    expected = 0.5 + 0.1 * lin[1].weight[labels].sign().reshape(3, 1, 8, 8)
    assert torch.allclose(new, expected)
    flipped = _augment(lin, x, labels, -0.1, 0.0, 1.0)  # the periodic sign flip
    assert torch.allclose(flipped - 0.5, -(expected - 0.5))


def test_bad_input_is_a_one_line_error() -> None:
    model, _ = _victim()
    x, y = _data(4)
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(
        InputError, match=r"takes inputs of shape \(1, 28, 28\), the data has \(1, 8, 8\)"
    ) as info:
        Substitute(architecture="mnist-cnn", seeds=4, rounds=1, epochs=1)(model, x, y, threat=threat)
    assert "\n" not in str(info.value)
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(100, 10))
    with pytest.raises(InputError, match="does not take inputs of shape") as info:
        Substitute(architecture=wrong, seeds=4, rounds=1, epochs=1)(model, x, y, threat=threat)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown substitute architecture"):
        Substitute(architecture="resnet", seeds=4, rounds=1, epochs=1)(model, x, y, threat=threat)
    with pytest.raises(ConfigError, match="seeds"):
        Substitute(seeds=0)
    with pytest.raises(ConfigError, match="lmbda"):
        Substitute(lmbda=-0.1)
    with pytest.raises(ConfigError, match="white-box fixed-budget"):
        Substitute(transfer="deepfool")
