"""`_cache.load_or_train`: one checksummed cache for zoo models and trained defences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evasion import _cache
from evasion.errors import ConfigError


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    return tmp_path


def _trainer(calls: list[int], value: float = 1.0):
    def train() -> _cache.Payload:
        calls.append(1)
        return {"w": torch.full((3,), value), "threshold": value}

    return train


def test_trains_once_then_loads_with_the_sidecar_facts(tmp_cache: Path) -> None:
    calls: list[int] = []
    first, cached = _cache.load_or_train(
        "things", "k1", _trainer(calls), identity={"key": "k1"}, meta=lambda p: {"t": p["threshold"]}
    )
    assert not cached and calls == [1]
    again, cached = _cache.load_or_train("things", "k1", _trainer(calls), identity={"key": "k1"})
    assert cached and calls == [1] and torch.equal(again["w"], first["w"])
    meta = json.loads((tmp_cache / "things" / "k1.json").read_text())
    assert (
        meta["key"] == "k1"
        and meta["t"] == 1.0
        and meta["sha256"] == _cache.sha256_file(tmp_cache / "things" / "k1.pt")
    )
    _, cached = _cache.load_or_train("things", "k1", _trainer(calls), identity={"key": "k1"}, refresh=True)
    assert not cached and calls == [1, 1]


def test_another_identity_or_a_failed_check_retrains_with_a_warning() -> None:
    calls: list[int] = []
    _cache.load_or_train("things", "m", _trainer(calls), identity={"recipe": {"epochs": 1}})
    with pytest.warns(RuntimeWarning, match="another recipe .stale.; retraining"):
        _cache.load_or_train("things", "m", _trainer(calls), identity={"recipe": {"epochs": 2}})

    def refuse(payload: _cache.Payload) -> None:
        raise ValueError("weights of another shape")

    with pytest.warns(RuntimeWarning, match="cannot be read .ValueError: weights of another shape"):
        _cache.load_or_train("things", "m", _trainer(calls), identity={"recipe": {"epochs": 2}}, check=refuse)
    assert calls == [1, 1, 1]


def test_a_cache_that_cannot_be_written_only_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(_cache, "atomic_write_bytes", read_only)
    with pytest.warns(RuntimeWarning, match="cannot write the cache entry"):
        payload, cached = _cache.load_or_train("things", "ro", _trainer([], 2.0), identity={"key": "ro"})
    assert not cached and payload["threshold"] == 2.0


def test_names_must_be_short_lower_case_keys() -> None:
    with pytest.raises(ConfigError, match="short lower-case"):
        _cache.entry_paths("things", "../escape")
    assert _cache.digest({"b": 1, "a": 2}) == _cache.digest({"a": 2, "b": 1})
    assert len(_cache.digest("x")) == 24
