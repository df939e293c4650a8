"""`evasion evaluate` with defense = "detector" (built by `evasion.build`): parameters, detection, FPR
calibration, the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from evasion import _cache, build, datasets, defenses, models
from evasion._cache import cache_dir
from evasion.cli.main import main
from evasion.config import Config, ModelConfig, parse_config
from evasion.defenses import static_detector
from evasion.defenses.detected import DetectedClassifier
from evasion.defenses.detector_training import adversarial_examples
from evasion.errors import ConfigError, UnknownNameError
from evasion.models.classifier import REJECT
from evasion.threat_model import ThreatModel

#: tiny training runs: 200 points (+ 50 held out), one epoch
SMALL = {"samples": 200, "epochs": 1}

TOML = """
[data]
name = "mnist5k"
samples = 20

[[models]]
name = "mnist-cnn+detector"
model = "mnist-cnn"
defense = "detector"
defense_params = {params}

[[attacks]]
attack = "dynamic"
norm = "linf"
epsilons = [0.1]
params = {{ steps = 5, sigma = 0.5 }}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A temporary cache folder holding copies of the real cache's mnist-cnn and mnist5k files.

    The detector entries are written there; mnist-cnn is not retrained (it takes a minute).
    """
    models.load("mnist-cnn")  # fill the real cache if needed
    datasets.load("mnist5k")
    real_models, real_data = cache_dir("models"), datasets.cache_dir()
    tmp = tmp_path_factory.mktemp("evasion-cache")
    (tmp / "models").mkdir()
    (tmp / "datasets").mkdir()
    for f in real_models.glob("mnist-cnn.*"):
        shutil.copy(f, tmp / "models" / f.name)
    for f in real_data.glob("mnist5k-*.npz"):
        shutil.copy(f, tmp / "datasets" / f.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVASION_CACHE", str(tmp))
        yield tmp


@pytest.fixture(scope="module")
def clf(cache: Path) -> models.Classifier:
    return models.load("mnist-cnn")


@pytest.fixture(scope="module")
def config(cache: Path) -> Config:
    return parse_config(
        {
            "data": {"name": "mnist5k", "samples": 10},
            "models": [{"name": "mnist-cnn"}],
            "attacks": [{"attack": "fgsm", "norm": "linf", "epsilons": [0.1]}],
        }
    )


def model_config(**params: object) -> ModelConfig:
    return ModelConfig(
        name="mnist-cnn+detector", model="mnist-cnn", defense="detector", defense_params=params
    )


@pytest.fixture(scope="module")
def system(clf: models.Classifier, config: Config) -> DetectedClassifier:
    """The detector-defended mnist-cnn, trained once into the temporary cache."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        defended = build.defend(clf, model_config(**SMALL), config)
    finally:
        torch.set_num_threads(before)
    assert isinstance(defended, DetectedClassifier)
    return defended


pytestmark = pytest.mark.usefixtures("one_thread")


class Retrained(Exception):
    """Raised by a stand-in for the training function: the cache should have been used."""


def _no_training(*args: object, **kwargs: object) -> None:
    raise Retrained("trained although the cache (or a parameter check) should have prevented it")


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "detectors").glob("*.pt"))


def _split(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training points and the held-out validation points, in the order the defence takes them."""
    train = datasets.load("mnist5k", split="train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    tr, va = order[:n], order[n : n + max(10, n // 4)]
    return train.x[tr], train.y[tr], train.x[va], train.y[va]


# -- parameters --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, words",
    [
        ({"layre": "pool1"}, ["unknown defense_params layre", "valid: layer"]),
        ({"samples": 5}, ["defense_params.samples", "5"]),
        ({"samples": 200.5}, ["defense_params.samples", "200.5"]),
        ({"samples": 10**6}, ["defense_params.samples", "1000000", "4000"]),
        ({"epsilon": -0.1}, ["defense_params.epsilon", "-0.1"]),
        ({"epsilon": "big"}, ["defense_params.epsilon", "'big'"]),
        ({"fpr": 1.5}, ["defense_params.fpr", "1.5"]),
        ({"epochs": 0}, ["defense_params.epochs", "0"]),
        ({"epochs": True}, ["defense_params.epochs", "True"]),
        ({"width": 0}, ["defense_params.width", "0"]),
        ({"seed": -1}, ["defense_params.seed", "-1"]),
        ({"layer": ""}, ["defense_params.layer", "''"]),
        ({"attack": "nope"}, ["defense_params.attack", "unknown attack 'nope'", "bim"]),
        ({"attack": "cw-l2"}, ["defense_params.attack", "'cw-l2'", "L∞"]),
    ],
)
def test_bad_defense_params_name_the_key_and_the_value(clf, config, monkeypatch, params, words):
    monkeypatch.setattr(static_detector, "train_static_detector", _no_training)
    with pytest.raises(ConfigError) as info:
        build.defend(clf, model_config(**params), config)
    text = str(info.value)
    assert "\n" not in text and "mnist-cnn+detector" in text, text
    assert all(w in text for w in words), text


def test_bad_defense_params_in_a_config_file_give_one_line_and_exit_2(cache, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOML.format(params="{ fpr = -0.5 }"))
    assert main(["evaluate", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evasion: error:") and "\n" not in err and "defense_params.fpr" in err, err
    assert not (tmp_path / "o").exists()


def test_unknown_layer_lists_the_valid_names(clf, config):
    with pytest.raises(UnknownNameError) as info:
        build.defend(clf, model_config(layer="pool9"), config)
    text = str(info.value)
    assert "unknown layer 'pool9'" in text and "pool1" in text and "conv2" in text, text
    with pytest.raises(ConfigError, match="not a feature map"):  # a flat layer: no paper detector
        build.defend(clf, model_config(layer="fc1"), config)


# -- the trained defence -------------------------------------------------------------------------
def test_rejects_its_adversarial_examples_and_accepts_clean_points(clf, system, cache):
    assert system.name == "mnist-cnn+detector" and system.detector.layer == "pool1" and system.rejects
    assert len(_entries(cache)) == 1
    x, y, x_val, _ = _split()
    params = defenses.parameters("detector", SMALL)
    assert isinstance(params, defenses.DetectorParams)
    assert params.attack == "bim" and params.epsilon == defenses.DetectorParams().epsilon
    attack = static_detector.training_attack(params)
    adv = adversarial_examples(clf, x, y, attack, ThreatModel("linf", params.epsilon))
    assert float((clf.predict(adv) == y).float().mean()) < 0.5, "the training attack should work"
    rejected = float((system.predict(adv) == REJECT).float().mean())
    assert rejected >= 0.9, rejected
    val_fpr = float((system.predict(x_val) == REJECT).float().mean())
    assert val_fpr <= params.fpr + 1e-9, val_fpr  # the calibration, on the held-out points
    test = datasets.load("mnist5k", split="test")
    test_fpr = float((system.predict(test.x[:200]) == REJECT).float().mean())
    assert test_fpr <= params.fpr + 0.1, test_fpr  # and roughly on unseen clean data


def test_second_build_loads_from_the_cache(clf, config, system, cache, monkeypatch):
    monkeypatch.setattr(static_detector, "train_static_detector", _no_training)
    again = build.defend(clf, model_config(**SMALL, layer="pool1"), config)  # explicit default
    assert isinstance(again, DetectedClassifier) and again.threshold == system.threshold
    x = _split()[2]
    assert torch.equal(again(x), system(x))
    assert torch.equal(again.predict(x), system.predict(x))
    with pytest.raises(Retrained):  # another parameter, another entry
        build.defend(clf, model_config(**SMALL, fpr=0.1), config)


def test_evaluate_with_the_dynamic_adversary_uses_the_cached_detector(
    system, cache, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(static_detector, "train_static_detector", _no_training)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TOML.format(params="{ samples = 200, epochs = 1 }"))
    assert main(["evaluate", str(cfg), "--out", str(tmp_path / "run"), "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "mnist-cnn+detector: clean accuracy" in out and "dynamic-linf" in out, out


def test_corrupt_cache_file_is_detected_and_retrained(clf, config, system, cache, monkeypatch):
    (entry,) = _entries(cache)
    good = entry.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    entry.write_bytes(bytes(damaged))
    calls = []
    train = static_detector.train_static_detector
    monkeypatch.setattr(
        static_detector, "train_static_detector", lambda *a, **k: calls.append(1) or train(*a, **k)
    )
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = build.defend(clf, model_config(**SMALL), config)
    assert calls == [1] and entry.read_bytes() != bytes(damaged)
    assert again.threshold == system.threshold  # seeded training: the same detector again
    x = _split()[2]
    assert torch.allclose(again(x), system(x), atol=1e-5)
    sidecar = entry.with_suffix(".json")
    key = {"key": entry.stem}
    assert _cache._read(entry, sidecar, key, "detector", None) is not None
    entry.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert _cache._read(entry, sidecar, key, "detector", None) is None
    entry.write_bytes(good)  # a good file under the wrong key is stale; a missing sidecar is unreadable
    with pytest.warns(RuntimeWarning, match="stale"):
        assert _cache._read(entry, sidecar, {"key": "0" * 24}, "detector", None) is None
    sidecar.unlink()
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert _cache._read(entry, sidecar, key, "detector", None) is None
