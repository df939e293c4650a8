"""Adversarial training: equivalences with standard training, the inner attack's constraints,
resume after a kill, modes and BatchNorm statistics, catastrophic-overfitting handling, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from evasion import datasets
from evasion.attacks import PGD, CarliniWagnerL2
from evasion.datasets.base import Dataset
from evasion.errors import ConfigError, EvasionError, InputError
from evasion.models.architectures import small
from evasion.models.classifier import Classifier
from evasion.models.training import train_classifier
from evasion.training import AdversarialTrainer, CheckpointDir, TrainConfig, collapsed, distill
from evasion.training.trainer import EpochRecord

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return datasets.load("digits", split="train").head(256)


@pytest.fixture(scope="module")
def digits_val() -> Dataset:
    return datasets.load("digits", split="test").head(64)


class BNNet(nn.Module):
    """conv-BatchNorm-ReLU-dropout-fc for 1x8x8: exercises modes, BN statistics and dropout RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(h.flatten(1)))


def bn_net(seed: int = 0) -> BNNet:
    return small.seeded(BNNet, seed)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def config(**changes: object) -> TrainConfig:
    base: dict[str, object] = {"epochs": 1, "lr": 5e-3, "batch_size": 64, "seed": 3, "epsilon": 0.1}
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


# -- equivalences with standard training --------------------------------------------------------
@pytest.mark.parametrize("recipe", ["none", "fgsm", "fgsm-rs", "pgd", "trades"])
def test_zero_epsilon_is_standard_training_bit_for_bit(recipe, digits, digits_val):
    standard = train_classifier(bn_net(), digits, epochs=2, lr=5e-3, batch_size=64, seed=3)
    cfg = config(recipe=recipe, epsilon=0.0, epochs=2)
    trained = AdversarialTrainer(cfg).fit(bn_net(), digits, digits_val).classifier.module
    assert same_weights(trained, standard)


def test_trades_with_beta_zero_is_standard_training(digits):
    # a model without BatchNorm: the adversarial forward pass runs, but its term weighs 0
    standard = train_classifier(small.digits_mlp(0), digits, epochs=1, lr=5e-3, batch_size=64, seed=3)
    trained = AdversarialTrainer(config(recipe="trades", beta=0.0)).fit(small.digits_mlp(0), digits)
    assert same_weights(trained.classifier.module, standard)
    moved = AdversarialTrainer(config(recipe="trades", beta=1.0)).fit(small.digits_mlp(0), digits)
    assert not same_weights(moved.classifier.module, standard)


def test_adversarial_training_changes_the_weights_and_is_deterministic(digits):
    runs = [AdversarialTrainer(config(recipe="pgd", steps=3)).fit(bn_net(), digits) for _ in range(2)]
    standard = train_classifier(bn_net(), digits, epochs=1, lr=5e-3, batch_size=64, seed=3)
    assert same_weights(runs[0].classifier.module, runs[1].classifier.module)
    assert not same_weights(runs[0].classifier.module, standard)


# -- the inner maximisation ---------------------------------------------------------------------
class Recorder(nn.Module):
    """Wraps a module and records every input with the mode it was seen in."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.training, x.detach().clone()))
        return self.inner(x)


@pytest.mark.parametrize(
    ("recipe", "norm", "eps"),
    [
        ("pgd", "linf", 0.2),
        ("fgsm", "linf", 0.2),
        ("fgsm-rs", "linf", 0.2),
        ("trades", "linf", 0.2),
        ("pgd", "l2", 1.5),
    ],
)
def test_inner_attack_iterates_stay_in_ball_and_box(recipe, norm, eps, digits, digits_val):
    cfg = config(recipe=recipe, norm=norm, epsilon=eps, steps=4, batch_size=100)
    net = Recorder(bn_net())
    AdversarialTrainer(cfg).fit(net, digits, digits_val if recipe == "fgsm-rs" else None)
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(cfg.seed))
    clean = [digits.x[order[s : s + cfg.batch_size]] for s in range(0, len(digits), cfg.batch_size)]
    per_batch = 2 if recipe in ("fgsm", "trades") else 1  # training forward passes per batch
    p = float("inf") if norm == "linf" else 2.0
    trained, checked = 0, 0
    for training, x in net.seen:
        if training:
            trained += 1
            continue
        if trained == per_batch * len(clean):  # after the last batch: the validation passes
            break
        # the attack of batch b runs in eval mode before batch b's training forward passes
        distance = (x - clean[trained // per_batch]).flatten(1).norm(p=p, dim=1)
        assert float(distance.max()) <= eps + 1e-5
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        checked += 1
    assert trained == per_batch * len(clean) and checked >= len(clean)


def test_inner_attack_sees_eval_mode_and_batchnorm_stats_are_not_polluted(digits):
    net = Recorder(bn_net())
    result = AdversarialTrainer(config(recipe="pgd", steps=5)).fit(net, digits)
    batches = -(-len(digits) // 64)
    # one training forward per batch updates the statistics; the 6 attack passes per batch do not
    assert int(net.inner.bn.num_batches_tracked) == batches
    assert sum(training for training, _ in net.seen) == batches
    assert sum(not training for training, _ in net.seen) == batches * 6  # 5 steps, 1 final check
    assert result.history[0].loss > 0


def test_trainer_leaves_the_module_in_the_mode_it_found(digits):
    for modes in ("train", "eval", "mixed"):
        net = bn_net()
        net.train(modes != "eval")
        if modes == "mixed":
            net.bn.eval()
        before = [m.training for m in net.modules()]
        AdversarialTrainer(config(recipe="trades", steps=2)).fit(net, digits.head(64))
        assert [m.training for m in net.modules()] == before


def test_any_attack_can_be_the_inner_maximisation(digits):
    attack = PGD(steps=2, loss="margin", early_stop=False, keep="last")
    a = AdversarialTrainer(config(recipe="pgd"), attack).fit(bn_net(), digits)
    b = AdversarialTrainer(config(recipe="pgd", steps=2)).fit(bn_net(), digits)
    assert not same_weights(a.classifier.module, b.classifier.module)  # the margin loss was used


# -- checkpoints and resume ---------------------------------------------------------------------
class Killer(nn.Module):
    """Raises at the n-th training forward pass: a crash in the middle of an epoch."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise KeyboardInterrupt("simulated kill")
        return self.inner(x)


@pytest.mark.parametrize("recipe", ["pgd", "trades"])
def test_resume_after_a_kill_gives_the_same_weights(recipe, digits, tmp_path):
    cfg = config(recipe=recipe, epochs=3, steps=2, schedule="cyclic", warmup_epochs=1.5)
    full = AdversarialTrainer(cfg, checkpoints=CheckpointDir(tmp_path / "a")).fit(Killer(bn_net(), 0), digits)
    folder = CheckpointDir(tmp_path / "b")
    per_epoch = -(-len(digits) // 64) * (2 if recipe == "trades" else 1)
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2
        AdversarialTrainer(cfg, checkpoints=folder).fit(Killer(bn_net(), per_epoch + 2), digits)
    assert folder.epochs() == [1]
    again = AdversarialTrainer(cfg, checkpoints=folder).fit(Killer(bn_net(seed=9), 0), digits)
    assert again.resumed_from == 1 and [r.epoch for r in again.history] == [1, 2, 3]
    assert same_weights(again.classifier.module, full.classifier.module)
    assert folder.epochs() == [2, 3]  # keeps the newest two
    done = AdversarialTrainer(cfg, checkpoints=folder).fit(Killer(bn_net(seed=5), 0), digits)
    assert done.resumed_from == 3 and same_weights(done.classifier.module, full.classifier.module)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(digits, tmp_path):
    cfg = config(recipe="fgsm", epochs=2)
    folder = CheckpointDir(tmp_path / "c", keep=5)
    full = AdversarialTrainer(cfg, checkpoints=folder).fit(bn_net(), digits)
    folder.file(2).write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable checkpoint"):
        again = AdversarialTrainer(cfg, checkpoints=folder).fit(bn_net(), digits)
    assert again.resumed_from == 1 and same_weights(again.classifier.module, full.classifier.module)


def test_checkpoint_of_another_architecture_names_the_keys(digits, tmp_path):
    folder = CheckpointDir(tmp_path / "d")
    AdversarialTrainer(config(recipe="none", epsilon=0.0), checkpoints=folder).fit(
        small.digits_mlp(0), digits
    )
    with pytest.raises(
        ConfigError,
        match=r"another architecture: keys only in the checkpoint \(6\): fc1.bias, .*fc3.bias.*only in the model \(9\): bn.bias",
    ):
        AdversarialTrainer(config(recipe="none", epsilon=0.0), checkpoints=folder).fit(bn_net(), digits)
    with pytest.raises(ConfigError, match=r"another training configuration .*lr"):
        AdversarialTrainer(config(recipe="none", epsilon=0.0, lr=1e-2), checkpoints=folder).fit(
            small.digits_mlp(0), digits
        )


# -- catastrophic overfitting ---------------------------------------------------------------------
def test_collapse_rule():
    assert collapsed(0.6, 0.05, 0.7, 0.2)
    assert not collapsed(None, 0.0, 0.3, 0.2)  # nothing to compare with yet, a small gap
    assert collapsed(None, 0.1, 0.7, 0.2)  # robust to FGSM only, from the start
    assert not collapsed(0.6, 0.5, 0.7, 0.2)  # a small dip
    assert not collapsed(0.6, 0.05, 0.1, 0.2)  # both fell: not the FGSM-only signature


def test_catastrophic_overfitting_is_detected_logged_and_rolled_back(
    digits, digits_val, tmp_path, monkeypatch
):
    # the check's numbers are forced: robust 0.5 after epoch 1, then PGD collapses at epoch 2
    # while FGSM accuracy stays high
    numbers = {1: (0.5, 0.6), 2: (0.02, 0.8), 3: (0.5, 0.6)}

    def fake_validate(self, clf, val, record: EpochRecord) -> None:
        record.val_clean = 0.9
        record.val_robust, record.val_fgsm = numbers[record.epoch]

    monkeypatch.setattr(AdversarialTrainer, "_validate", fake_validate)
    folder = CheckpointDir(tmp_path / "e", keep=5)
    cfg = config(recipe="fgsm-rs", epochs=3)
    result = AdversarialTrainer(cfg, checkpoints=folder).fit(bn_net(), digits, digits_val)
    assert result.stopped_early and [r.epoch for r in result.history] == [1, 2]
    (event,) = result.events
    assert event["event"] == "catastrophic_overfitting" and event["epoch"] == 2
    epoch1 = torch.load(folder.file(1), weights_only=True)["model"]
    assert all(torch.equal(v, epoch1[k]) for k, v in result.classifier.module.state_dict().items())
    # a rerun resumes from the stopped checkpoint and does not train on
    again = AdversarialTrainer(cfg, checkpoints=folder).fit(bn_net(), digits, digits_val)
    assert again.stopped_early and len(again.history) == 2


def _tiny_mnist_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def test_real_catastrophic_overfitting_is_detected_without_the_guard():
    # a single FGSM step from x itself (no random start) at L-inf 0.3 on MNIST, no early stopping:
    # the model learns to defend against FGSM only (FGSM accuracy climbs, PGD accuracy stays near 0)
    data = datasets.load("mnist5k", split="train")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    val, train = data.subset(order[:128].sort().values), data.subset(order[128:1128].sort().values)
    cfg = TrainConfig(
        recipe="fgsm-rs",
        epsilon=0.3,
        epochs=8,
        lr=2e-3,
        batch_size=64,
        schedule="constant",
        warmup_epochs=1.0,
        rs_init=0.0,
        check_size=128,
        check_steps=5,
        stop_on_overfit=False,
    )
    result = AdversarialTrainer(cfg).fit(small.seeded(_tiny_mnist_cnn, 0), train, val)
    assert not result.stopped_early and len(result.history) == 8  # the guard is off: it trains on
    assert result.events, [(r.val_robust, r.val_fgsm) for r in result.history]
    event = result.events[0]
    assert event["event"] == "catastrophic_overfitting" and "logged only" in event["action"]
    record = result.history[event["epoch"] - 1]
    assert record.val_fgsm is not None and record.val_robust is not None
    assert record.val_fgsm - record.val_robust >= 0.2 and record.val_robust < 0.15


def test_single_step_variants_stay_in_their_balls(digits):
    # rs_init / rs_clip off Wong et al.'s values take the trainer's own single step
    x, y = digits.x[:32], digits.y[:32]
    clf = Classifier(small.digits_mlp(0), 10, input_shape=(1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    clipped = AdversarialTrainer(config(recipe="fgsm-rs", rs_init=1.5, rs_step=1.0))
    x_adv = clipped.single_step_points(clf, x, y, 0.1, gen)
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert float((x_adv - x).abs().amax(dim=(1, 2, 3)).min()) > 0.09  # the step reaches the ball's edge
    nfgsm = AdversarialTrainer(config(recipe="fgsm-rs", rs_init=2.0, rs_step=1.0, rs_clip=False))
    x_far = nfgsm.single_step_points(clf, x, y, 0.1, gen)
    assert float((x_far - x).abs().max()) <= 0.3 + 1e-6 and x_far.min() >= 0 and x_far.max() <= 1
    assert float((x_far - x).abs().max()) > 0.1 + 1e-3  # N-FGSM is not projected back
    # the variants keep the old identity at their defaults (cached zoo models, checkpoints)
    assert "rs_init" not in config().fingerprint() and config(rs_init=2.0).fingerprint()["rs_init"] == 2.0


def test_fgsm_rs_check_measures_pgd_and_fgsm_accuracy(digits, digits_val):
    result = AdversarialTrainer(config(recipe="fgsm-rs", check_size=32, check_steps=3)).fit(
        bn_net(), digits, digits_val
    )
    (record,) = result.history
    assert record.val_robust is not None and record.val_fgsm is not None
    assert 0 <= record.val_robust <= 1 and 0 <= record.val_fgsm <= 1
    assert record.val_clean is not None and 0 <= record.val_clean <= 1


# -- distillation ----------------------------------------------------------------------------------
def test_distilled_student_has_large_logits(digits):
    cfg = config(recipe="none", epsilon=0.0, temperature=50.0, epochs=20)
    teacher, student = distill(lambda: small.digits_mlp(0), digits, cfg)
    x = digits.x[:32]
    plain_net = train_classifier(small.digits_mlp(0), digits, epochs=2, lr=5e-3, batch_size=64, seed=3)
    with torch.no_grad():
        plain = plain_net(x)
        distilled = student.classifier(x)
    # trained at T and deployed at T = 1: logits grow with T, the softmax saturates
    assert float(distilled.std()) > 3 * float(plain.std())
    assert not same_weights(teacher.classifier.module, student.classifier.module)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"recipe": "madry"}, "unknown recipe 'madry'"),
        ({"epsilon": -0.1}, "epsilon must be >= 0"),
        ({"norm": "l7"}, "unknown norm"),
        ({"schedule": "zigzag"}, "unknown schedule"),
        ({"adv_weight": 1.5}, "adv_weight must be in"),
        ({"epochs": 0}, "epochs must be a positive integer"),
    ],
)
def test_bad_config(changes, message):
    with pytest.raises(EvasionError, match=message):  # ConfigError, UnknownNameError
        config(**changes)


def test_an_attack_that_cannot_run_in_the_norm_is_refused():
    with pytest.raises(ConfigError, match="cannot run in the linf norm"):
        AdversarialTrainer(config(recipe="pgd"), CarliniWagnerL2())
    with pytest.raises(ConfigError, match="takes no attack"):
        AdversarialTrainer(config(recipe="trades"), PGD())


def test_bad_data(digits):
    trainer = AdversarialTrainer(config(recipe="pgd"))
    with pytest.raises(ConfigError, match="is empty"):
        trainer.fit(bn_net(), digits.head(0))
    with pytest.raises(ConfigError, match="single class"):
        trainer.fit(bn_net(), digits.subset(digits.y == 3))
    with pytest.raises(ConfigError, match="beyond the data range"):
        AdversarialTrainer(config(recipe="pgd", epsilon=1.5)).fit(bn_net(), digits)
    with pytest.raises(InputError, match="model expects"):
        trainer.fit(Classifier(small.mnist_cnn(0), 10, input_shape=(1, 28, 28)), digits)


def test_zoo_lists_the_robust_models_with_their_first_use_time():
    from evasion import models

    infos = {i.name: i for i in models.list_models()}
    for name in ("mnist-cnn-pgd", "mnist-cnn-distilled"):
        info = infos[name]
        assert info.dataset == "mnist5k" and info.input_shape == (1, 28, 28)
        assert "on 2 cores" in info.source and info.architecture is not None
        assert set(info.architecture().state_dict()) == set(small.mnist_cnn(0).state_dict())
