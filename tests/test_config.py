"""TOML configs: the embedded default, validation that names the key and the value, round trips."""

from __future__ import annotations

import pytest
import tomllib

from evasion.config import Config, default_config_text, load_config, parse_config
from evasion.errors import ConfigError, UnknownNameError

BASE = {
    "data": {"name": "digits", "samples": 10},
    "models": [{"name": "digits-mlp"}],
    "epsilons": {"linf": [0.1, 0.05]},
    "attacks": [{"attack": "pgd", "norm": "linf", "params": {"steps": 3}}],
}


def with_(**changes: object) -> dict:
    raw = {k: (list(v) if isinstance(v, list) else dict(v)) for k, v in BASE.items()}  # type: ignore[call-overload]
    raw.update(changes)
    return raw


def test_default_config_is_the_main_job():
    config = load_config()
    assert isinstance(config, Config)
    assert config.models[0].name == "mnist-cnn"
    assert config.data.name == "mnist5k" and config.data.split == "test"
    # no [[attacks]]: every model gets the default suite of its defence over these grids
    assert config.attacks == ()
    assert set(config.epsilons) == {"linf", "l2"} and max(config.epsilons["linf"]) == 0.3
    assert config.run.self_check is True
    assert [m.defense for m in config.models] == ["", "reject", "detector"]
    assert "[[attacks]]" in default_config_text()  # the commented example of a table


def test_resolved_config_round_trips():
    config = load_config()
    again = parse_config(tomllib.loads(config.to_toml()))
    assert (again.run, again.data, again.models, again.attacks) == (
        config.run,
        config.data,
        config.models,
        config.attacks,
    )


def test_defaults_and_names_are_resolved():
    config = parse_config(with_())
    (attack,) = config.attacks
    assert attack.name == "pgd-linf" and attack.epsilons == (0.05, 0.1)
    assert config.run.batch_size == 256 and config.models[0].model == "digits-mlp"


@pytest.mark.parametrize(
    "raw, words",
    [
        (with_(attacks=[{"attack": "pgd", "norm": "linf", "stpes": 3}]), ["attacks[0]", "stpes"]),
        (with_(attacks=[{"attack": "pgd", "norm": "linf", "params": {"stpes": 3}}]), ["attacks[0]", "stpes"]),
        (with_(run={"batch_size": 0}), ["run.batch_size", "0"]),
        (with_(run={"seed": "one"}), ["run.seed", "'one'"]),
        (with_(run={"colour": "red"}), ["run.colour"]),
        (with_(data={"name": "digits", "split": "val"}), ["data.split", "val"]),
        (with_(epsilons={"linf": [0.1, -0.1]}), ["epsilons.linf[1]", "-0.1"]),
        (with_(epsilons={"linf": [0.1, float("inf")]}), ["epsilons.linf[1]", "inf"]),
        (with_(epsilons={"linf": [0.1, float("nan")]}), ["epsilons.linf[1]", "nan"]),
        (with_(epsilons={"linf": []}), ["epsilons.linf", "empty"]),
        (with_(attacks=[{"attack": "pgd", "norm": "l2"}]), ["attacks[0]", "l2 grid"]),
        (with_(attacks=[{"attack": "cw-l2", "norm": "linf", "epsilons": [0.1]}]), ["attacks[0]", "linf"]),
        (with_(attacks=[{"attack": "pgd", "norm": "linf", "params": {"steps": "x"}}]), ["steps", "'x'"]),
        (with_(attacks=[{"norm": "linf"}]), ["attacks[0].attack", "missing"]),
        (with_(models=[]), ["models"]),
        (with_(models=[{"model": "digits-mlp"}]), ["models[0].name"]),
        (with_(models=[{"name": "a"}, {"name": "a"}]), ["two models", "'a'"]),
        (with_(surprise=1), ["surprise"]),
        (with_(attacks=[{"attack": "pgd", "norm": "linf", "target": -1}]), ["attacks[0].target", "-1"]),
        (with_(attacks=[{"attack": "pgd", "norm": "linf", "patch": [1, 2]}]), ["attacks[0].patch"]),
    ],
)
def test_bad_configs_name_the_key_and_the_value(raw, words):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    for word in words:
        assert word in message, message


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid attacks"):
        parse_config(with_(attacks=[{"attack": "pgdd", "norm": "linf"}]))
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.norm"):
        parse_config(with_(attacks=[{"attack": "pgd", "norm": "l7"}]))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)
