"""The iCubWorld28 reader on synthetic folders in the release's exact layout, and `reproduce icub --data`."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evasion.cli.main import main
from evasion.datasets import icubworld28 as icw
from evasion.errors import ConfigError, DataError, MissingFileError
from evasion.experiments import icub

PIL = pytest.importorskip("PIL.Image")


def _colour(category: int, instance: int, day: int, frame: int) -> tuple[int, int, int]:
    """A colour per class (category hue, instance brightness), shifted a little by day and frame."""
    return (20 + 30 * category + day, 40 + 45 * instance - frame, 200 - 25 * category + 3 * day)


def _write_release(root: Path, frames: int = 2, px: int = 8, days: int = 4) -> Path:
    """``root/{train,test}/day*/<category>/<category><i>/0000000k.ppm`` with tiny images."""
    for split in icw.RELEASE_SPLITS:
        for d in range(days):
            for c, category in enumerate(icw.CATEGORIES):
                for i in icw.INSTANCES:
                    folder = root / split / f"day{d + 1}" / category / f"{category}{i}"
                    folder.mkdir(parents=True)
                    for k in range(frames):
                        PIL.new("RGB", (px, px), _colour(c, i, d, k)).save(folder / f"{k + 1:08d}.ppm")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_release(tmp_path_factory.mktemp("icw") / "iCubWorld28", frames=3)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A one-frame release to damage."""
    return _write_release(tmp_path / "small", frames=1, px=4)


def test_reads_classes_sessions_splits_and_pixels(release: Path) -> None:
    ds = icw.load_icubworld28(release, size=16)
    assert ds.classes[:5] == ["cup1", "cup2", "cup3", "cup4", "dishwashing-detergent1"]
    assert len(ds.classes) == 28 and ds.classes[-1] == "sprayer4"
    assert len(ds) == 2 * 4 * 28 * 3 and ds.x.shape[1:] == (3, 16, 16)
    session, split = ds.meta["session"], ds.meta["split"]
    assert isinstance(session, torch.Tensor) and session.dtype == torch.long
    assert isinstance(split, np.ndarray)
    assert sorted(set(session.tolist())) == [0, 1, 2, 3]
    assert (split == "train").sum() == (split == "test").sum() == len(ds) // 2
    files = ds.meta["files"]
    assert isinstance(files, list)
    for k in (0, 100, 371, len(ds) - 1):  # labels, days, splits and pixels agree with the files
        s, day, category, instance, name = files[k].split("/")
        assert s == split[k] and day == f"day{int(session[k]) + 1}" and instance == ds.classes[int(ds.y[k])]
        c, i, frame = icw.CATEGORIES.index(category), int(instance[-1]), int(name[:8]) - 1
        expected = torch.tensor(_colour(c, i, int(session[k]), frame), dtype=torch.float32) / 255
        assert torch.allclose(ds.x[k].mean(dim=(1, 2)), expected, atol=1e-6)  # a flat image resizes flat
    assert isinstance(ds.meta["sha256"], str) and len(ds.meta["sha256"]) == 64


def test_levels_and_selections(release: Path) -> None:
    fine = icw.load_icubworld28(release, size=8)
    coarse = icw.load_icubworld28(release, level="category", size=8)
    assert coarse.classes == list(icw.CATEGORIES)
    assert torch.equal(coarse.y, fine.y // 4) and torch.equal(coarse.x, fine.x)
    seven = icw.load_icubworld28(release, size=8, instances=[3], days=[3], first=2, splits=["test"])
    assert seven.classes == [f"{c}3" for c in icw.CATEGORIES]
    assert len(seven) == 7 * 2 and set(seven.meta["session"].tolist()) == {3}  # type: ignore[attr-defined]
    assert set(seven.meta["split"].tolist()) == {"test"}  # type: ignore[attr-defined]
    assert seven.meta["frame"].tolist() == [0, 1] * 7  # type: ignore[attr-defined]
    # the paper's sets through the source the experiment uses: day4 and day3 for two splits
    source = icw.ReleaseSource.for_run(str(release), 2, splits=2)
    assert source.days == (2, 3)
    assert source.load("icubworld7-quick").classes == seven.classes
    assert len(source.load("icubworld28")) == 28 * 2 * 2 * 2
    with pytest.raises(ConfigError, match="level"):
        icw.load_icubworld28(release, level="object")
    with pytest.raises(ConfigError, match="instances"):
        icw.load_icubworld28(release, instances=[5])
    with pytest.raises(ConfigError, match="unknown iCubWorld set"):
        source.load("icub-sim")


def test_content_hash_follows_the_bytes(tmp_path: Path) -> None:
    root = _write_release(tmp_path / "r", frames=1, px=4, days=4)
    first = icw.load_icubworld28(root, size=8, days=[0]).meta["sha256"]
    assert icw.load_icubworld28(root, size=8, days=[0]).meta["sha256"] == first
    assert icw.load_icubworld28(root, size=16, days=[0]).meta["sha256"] != first  # other pixels
    PIL.new("RGB", (4, 4), (1, 2, 3)).save(root / "train/day1/soap/soap2/00000001.ppm")  # same size
    assert icw.load_icubworld28(root, size=8, days=[0]).meta["sha256"] != first


def test_the_unpacked_zip_folder_and_non_square_images(tmp_path: Path) -> None:
    _write_release(tmp_path / "iCubWorld28_128x128", frames=1, px=4, days=4)
    icw.check_icubworld28_layout(tmp_path)  # the folder the zip was unpacked into
    odd = tmp_path / "iCubWorld28_128x128/test/day2/plate/plate1/00000001.ppm"
    image = PIL.new("RGB", (12, 6), (0, 0, 0))
    image.paste((255, 255, 255), (3, 0, 9, 6))  # a white centre square between black margins
    image.save(odd)
    ds = icw.load_icubworld28(tmp_path, size=8, days=[1], splits=["test"])
    k = ds.meta["files"].index("test/day2/plate/plate1/00000001.ppm")  # type: ignore[attr-defined]
    assert float(ds.x[k].min()) == 1.0  # center-cropped to the white square, then resized


def _rm(path: Path) -> None:
    shutil.rmtree(path)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda r: _rm(r / "test/day3"), "no test/day3/"),
        (lambda r: _rm(r / "test"), "no test/ folder"),
        (lambda r: _rm(r / "train/day1/soap"), "no category folder soap/"),
        (lambda r: _rm(r / "train/day2/sponge/sponge2"), "no instance folder sponge2/"),
        (lambda r: (r / "test/day4/cup/cup1/00000001.ppm").unlink(), "cup1' holds no images"),
        (
            lambda r: (r / "train/day1/cup/cup3/notes.txt").write_text("x"),
            "'notes.txt', which is not an image",
        ),
        (lambda r: (r / "train/day1/cup/cup3/sub").mkdir(), "'sub', which is not an image"),
        (
            lambda r: (r / "test/day2/sprayer/sprayer4/00000001.ppm").write_bytes(b"not a picture"),
            "sprayer4/00000001.ppm' cannot be read",
        ),
    ],
)
def test_wrong_layouts_are_one_line_errors_naming_what_is_missing(small: Path, damage, expected) -> None:  # type: ignore[no-untyped-def]
    damage(small)
    with pytest.raises(DataError) as info:
        icw.check_icubworld28_layout(small)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_missing_folder_file_and_truncated_image(small: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="does not exist"):
        icw.check_icubworld28_layout(tmp_path / "nowhere")
    (tmp_path / "file.zip").write_bytes(b"PK")
    with pytest.raises(icw.LayoutError, match="is a file"):
        icw.check_icubworld28_layout(tmp_path / "file.zip")
    bad = small / "train/day4/cup/cup1/00000001.ppm"
    bad.write_bytes(bad.read_bytes()[:-10])  # the header parses, the pixels do not
    icw.check_icubworld28_layout(small, days=[0])  # only the folders a run reads are checked
    with pytest.raises(DataError, match=r"cup1/00000001\.ppm' cannot be decoded"):
        icw.load_icubworld28(small, days=[3])


def test_day_split_and_fig5_rows_use_one_days_train_and_test_folders() -> None:
    session = torch.tensor([3, 3, 3, 2, 2, 3])
    split = np.array(["train", "test", "test", "train", "test", "train"])
    train, test = icw.day_split(session, split, 3)
    assert train.tolist() == [0, 5] and test.tolist() == [1, 2]
    z, y = torch.arange(6.0)[:, None], torch.arange(6)
    fz, fy, flag = icw.fig5_rows(z, y, session, split)
    assert fy.tolist() == [0, 5, 1, 2] and flag.tolist() == [0, 0, 1, 1] and fz[:, 0].tolist() == [0, 5, 1, 2]
    with pytest.raises(ConfigError, match="no images of day2"):
        icw.day_split(session, split, 1)
    assert icw.set_names("icub-sim", "icub-sim-fine") == ("icubworld7", "icubworld28", "icubworld28")
    assert icw.set_names("icub-sim-quick", None) == ("icubworld7-quick", None, "icubworld7-quick")


def _tiny_extractor() -> nn.Module:
    """A linear stand-in for EfficientNet-Lite0 (3x4x4 average colours of a 128x128 image)."""
    return nn.Sequential(nn.AvgPool2d(32), nn.Flatten())


def test_cli_refuses_a_wrong_layout_before_any_computation(
    small: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the experiment started")

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the layout passed: the experiment would start here

    monkeypatch.setattr(icub, "run_experiment", never)
    _rm(small / "test/day4/laundry-detergent")
    assert main(["reproduce", "icub", "--quick", "--data", str(small)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no category folder laundry-detergent/" in err and "\n" not in err
    assert main(["reproduce", "icub", "--data", str(small / "absent")]) == 2
    # a missing day the run does not read is no error (quick: day4 only); the full run needs day3
    _write_release(small / "fresh", frames=1, px=4)
    _rm(small / "fresh/train/day3")
    monkeypatch.setattr(icub, "run_experiment", stop)
    assert main(["reproduce", "icub", "--quick", "--data", str(small / "fresh")]) == 130
    assert main(["reproduce", "icub", "--splits", "2", "--data", str(small / "fresh")]) == 2
    assert "no train/day3/" in capsys.readouterr().err


def test_reproduce_icub_quick_on_the_release_layout(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reproduce icub --quick --data` end to end: iCubWorld7, train/day4 vs test/day4 (tiny sizes)."""
    monkeypatch.setattr(icub, "default_extractor", _tiny_extractor)
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path / "cache"))
    tiny = replace(
        icub.QUICK,
        baseline_repeats=2,
        samples=4,
        epsilons=(0.1,),
        steps=1,
        sensitivity_samples=2,
        sensitivity_steps=1,
        sticker_samples=1,
        sticker_epsilons=(1.0,),
        sticker_models=("SVM-adv",),
        example_epsilons=(0.1,),
    )
    monkeypatch.setattr(icub, "QUICK", tiny)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        code = main(
            ["reproduce", "icub", "--quick", "--threads", "1", "--data", str(release), "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    results = json.loads((out / "icub-results.json").read_text())
    settings = results["settings"]
    assert settings["data"] == str(release) and settings["data_per_class"] == icw.QUICK_PER_CLASS
    assert (settings["main"], settings["fine"], settings["baseline"]) == (
        "icubworld7-quick",
        None,
        "icubworld7-quick",
    )
    info = results["sets"]["7 objects"]
    assert info["dataset"] == "icubworld7-quick" and info["classes"] == 7
    assert info["images"] == 7 * 3 * 2  # day4 only: all 3 frames of each class in train/ and in test/
    split = info["splits"][0]
    assert split["test_session"] == 3 and split["train"] == split["test"] == 7 * 3  # train/day4, test/day4
    assert results["baseline"]["set"] == "7 objects" and results["baseline"]["sizes"][-1] == 7
    assert "linear_svm_all_classes" not in results["acceptance"]  # no rendered viewpoints to hold out
    assert "icubworld7-quick" in (out / "icub-report.html").read_text()


def test_the_28_instance_set_of_a_two_day_run(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVASION_CACHE", str(tmp_path))
    source = icw.ReleaseSource.for_run(str(release), icw.PAPER_PER_CLASS, splits=2)
    data = icub.load_set("", "icubworld28", 0, _tiny_extractor(), source=source)
    assert (
        data.label == "28 instances"
        and data.classes[-1] == "sprayer4"
        and data.z.shape == (28 * 3 * 2 * 2, 48)
    )
    assert data.split is not None and data.linear is None
    for day in (3, 2):  # the splits fit on train/dayD and test on test/dayD
        train, test = icw.day_split(data.session, data.split, day)
        assert len(train) == len(test) == 28 * 3
        assert torch.equal(torch.bincount(data.y[train]), torch.full((28,), 3))
    _, y, flag = icw.fig5_rows(data.z, data.y, data.session, data.split)  # Fig. 5: day4 only
    assert len(y) == 28 * 3 * 2 and flag.sum() == 28 * 3
