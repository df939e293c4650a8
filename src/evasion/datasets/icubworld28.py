"""iCubWorld28: the real robot images of Melis et al. 2017, read from the public release as it unpacks.

The release (Pasquale et al., "Teaching iCub to recognize objects using deep CNNs", MLIS 2015;
https://robotology.github.io/iCubWorld, 128x128 version on Mendeley Data, doi:10.17632/3n2vh9rdxd.1,
file ``iCubWorld28_128x128.zip``) holds 28 objects, 7 categories x 4 instances, each shown to the
robot on 4 days, with a train and a test acquisition per object and day (~150 frames each, about
26 k training and 25 k test images in all), in this layout::

    <root>/train/day1/cup/cup1/00000001.ppm ...
    <root>/{train,test}/day{1,2,3,4}/<category>/<category>{1,2,3,4}/*.ppm

categories ``cup``, ``dishwashing-detergent``, ``laundry-detergent``, ``plate``, ``soap``,
``sponge``, ``sprayer``; images are 128x128 RGB crops around the object, PPM files. Sources for
the layout: the loader of the paper's own authors in ``pralab/secml``
(``src/secml/data/loader/c_dataloader_icubworld.py``: ``{train,test}/day1..4/<category>/<instance>``,
128x128, "the 3rd object of each category" for iCubWorld7, day4 by default), ``bahramlavi/iCubCode``
(``iCub_main.py``: the Fig. 5-style subsets on day4, train/ vs test/ folders of one day) and the
iCubWorld web page (28 objects, 7 categories, 4 days, 8 acquisitions per object). ``<root>`` may
also be the folder the zip was unpacked into (``iCubWorld28_128x128/`` one level down).

The paper's protocol (:class:`ReleaseSource`): **iCubWorld7** is the third instance of each
category (7 classes), **iCubWorld28** all 28 instances; a split trains on ``train/dayD`` and tests
on ``test/dayD`` of the same day (the release's own split), on "the first 100 examples per class"
(first in file-name order) of each; Fig. 5 uses day4.

:func:`check_icubworld28_layout` checks the folders and every image header it will read, quickly
(no decoding), and names what is missing. :func:`load_icubworld28` decodes with Pillow (the
``evasion[zoo]`` extra the iCub pipeline needs anyway) in a few threads, center-crops non-square
images and resizes to ``size`` (128, the size of ``icub-sim`` and of the release itself), and
hashes the **full content** of every file it reads (sha256 of each file's bytes, then of the
ordered list with the relative paths and the size): the bytes are read for decoding anyway, so the
hash costs one pass of sha256 (~1 s per 10 k images) and keys the deep-feature cache exactly.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ConfigError, DataError, MissingFileError
from .base import Dataset
from .readers import missing_dependency

__all__ = [
    "CATEGORIES",
    "DAYS",
    "ICUBWORLD7_INSTANCE",
    "INSTANCES",
    "LEVELS",
    "PAPER_PER_CLASS",
    "QUICK_PER_CLASS",
    "RELEASE_SPLITS",
    "LayoutError",
    "ReleaseSource",
    "check_icubworld28_layout",
    "day_split",
    "fig5_rows",
    "load_icubworld28",
    "set_names",
]

#: the 7 categories, in the release's (alphabetical) folder order
CATEGORIES = (
    "cup",
    "dishwashing-detergent",
    "laundry-detergent",
    "plate",
    "soap",
    "sponge",
    "sprayer",
)
#: instance numbers: folders ``<category>1`` .. ``<category>4``
INSTANCES = (1, 2, 3, 4)
#: acquisition days (``meta["session"]`` is the index 0..3)
DAYS = ("day1", "day2", "day3", "day4")
#: the release's own split of every acquisition
RELEASE_SPLITS = ("train", "test")
#: label sets: one class per object (28) or per category (7)
LEVELS = ("instance", "category")
#: iCubWorld7, the paper's reduced set: this instance of each category (secml's default)
ICUBWORLD7_INSTANCE = 3
#: "the first 100 examples per class" of the paper's security evaluation
PAPER_PER_CLASS = 100
#: per class and acquisition in a ``--quick`` run
QUICK_PER_CLASS = 20
_SUFFIXES = frozenset({".ppm", ".png", ".jpg", ".jpeg", ".bmp"})
_VERSION = 1  # bump when decoding or resizing changes (the content hash keys cached features)
_EXPECTED = "{train,test}/day{1..4}/<category>/<category>{1..4}/*.ppm"


class LayoutError(DataError):
    """A ``--data`` folder that is not the iCubWorld28 release: a usage error (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class _Acquisition:
    """One folder of frames: the release split, day index, category index, instance and files."""

    split: str
    day: int
    category: int
    instance: int
    files: tuple[Path, ...]


# ------------------------------------------------------------------------------------------- layout
def _release_root(root: str | os.PathLike[str]) -> Path:
    """``root`` if it holds train/ and test/, else its one sub-folder that does (the unpacked zip)."""
    p = Path(root).expanduser()
    if not p.exists():
        raise MissingFileError(f"iCubWorld28 folder {str(p)!r} does not exist")
    if not p.is_dir():
        raise LayoutError(f"iCubWorld28 path {str(p)!r} is a file; expected the folder holding {_EXPECTED}")
    if all((p / s).is_dir() for s in RELEASE_SPLITS):
        return p
    inner = [
        d
        for d in sorted(p.iterdir())
        if d.is_dir() and not d.name.startswith((".", "__")) and all((d / s).is_dir() for s in RELEASE_SPLITS)
    ]
    if len(inner) == 1:
        return inner[0]
    missing = [s for s in RELEASE_SPLITS if not (p / s).is_dir()]
    raise LayoutError(
        f"iCubWorld28 folder {str(p)!r} has no {' and no '.join(s + '/' for s in missing)} folder; "
        f"expected the release layout {_EXPECTED}"
    )


def _image_files(folder: Path) -> list[Path]:
    """The frames of one acquisition folder, sorted by name; any other visible file is an error."""
    files, other = [], []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith("."):  # .DS_Store, macOS ._ files
                continue
            if e.is_file() and Path(e.name).suffix.lower() in _SUFFIXES:
                files.append(Path(e.path))
            else:
                other.append(e.name)
    if other:
        raise LayoutError(
            f"iCubWorld28 folder {str(folder)!r} holds {sorted(other)[0]!r}, which is not an image "
            f"({', '.join(sorted(_SUFFIXES))}); expected only the frames of one acquisition"
        )
    if not files:
        raise LayoutError(f"iCubWorld28 folder {str(folder)!r} holds no images (expected *.ppm frames)")
    return sorted(files, key=lambda f: f.name)


def _check_choice(values: Iterable[int] | None, valid: Sequence[int], what: str) -> tuple[int, ...]:
    chosen = tuple(valid) if values is None else tuple(values)
    if (
        not chosen
        or any(isinstance(v, bool) or v not in valid for v in chosen)
        or len(set(chosen)) < len(chosen)
    ):
        raise ConfigError(f"{what} must be distinct values among {list(valid)}, got {list(chosen)!r}")
    return tuple(sorted(chosen))


def _check_first(first: int | None) -> int | None:
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or first < 1):
        raise ConfigError(f"first (images per acquisition) must be a positive integer or None, got {first!r}")
    return first


def _scan(
    root: str | os.PathLike[str],
    days: Iterable[int] | None = None,
    instances: Iterable[int] | None = None,
    splits: Iterable[str] = RELEASE_SPLITS,
    first: int | None = None,
) -> tuple[Path, list[_Acquisition]]:
    """Every expected acquisition folder and its (first ``first``) frames, or a :class:`LayoutError`."""
    top = _release_root(root)
    day_idx = _check_choice(days, range(len(DAYS)), "days (0 = day1 .. 3 = day4)")
    inst = _check_choice(instances, INSTANCES, "instances")
    first = _check_first(first)
    out = []
    for split in splits:
        if split not in RELEASE_SPLITS:
            raise ConfigError(f"unknown release split {split!r}; valid: {', '.join(RELEASE_SPLITS)}")
        for d in day_idx:
            day = top / split / DAYS[d]
            if not day.is_dir():
                raise LayoutError(
                    f"iCubWorld28 folder {str(top)!r} has no {split}/{DAYS[d]}/ (expected {split}/day1 .. day4)"
                )
            for c, category in enumerate(CATEGORIES):
                if not (day / category).is_dir():
                    raise LayoutError(
                        f"iCubWorld28 folder {str(day)!r} has no category folder {category}/ "
                        f"(expected the 7 categories {', '.join(CATEGORIES)})"
                    )
                for i in inst:
                    folder = day / category / f"{category}{i}"
                    if not folder.is_dir():
                        raise LayoutError(
                            f"iCubWorld28 folder {str(day / category)!r} has no instance folder "
                            f"{category}{i}/ (expected {category}1 .. {category}4)"
                        )
                    files = _image_files(folder)
                    out.append(_Acquisition(split, d, c, i, tuple(files[:first] if first else files)))
    return top, out


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise missing_dependency(
            "pillow", "zoo", "reading the iCubWorld28 images", "or: pip install pillow"
        ) from None
    return Image


def check_icubworld28_layout(
    root: str | os.PathLike[str],
    *,
    days: Iterable[int] | None = None,
    instances: Iterable[int] | None = None,
    first: int | None = None,
) -> None:
    """Raise a one-line :class:`DataError` unless ``root`` is the iCubWorld28 release (fast).

    Checks that ``{train,test}/<day>/<category>/<category><i>/`` exist for the ``days`` (indices,
    default all four) and ``instances`` (default 1-4), that each holds images and nothing else,
    and that the header of each image to be read (the first ``first`` per folder; default all)
    is one Pillow can open. A wrong layout is a :class:`LayoutError` (exit code 2), a missing
    folder a :class:`~evasion.errors.MissingFileError`. Pixels are not decoded here.
    """
    _, acquisitions = _scan(root, days, instances, RELEASE_SPLITS, first)
    image = _pil()
    for acq in acquisitions:
        for f in acq.files:
            try:
                image.open(f).close()  # open() parses the header (and fails on a non-image)
            except (OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"iCubWorld28 image {str(f)!r} cannot be read: {exc}") from None


# ------------------------------------------------------------------------------------------- loading
def _decode(path: Path, size: int) -> tuple[npt.NDArray[np.uint8], str]:
    """An image's RGB pixels, center-cropped to a square and resized to ``size``, and its bytes' sha256."""
    image = _pil()
    try:
        raw = path.read_bytes()
        with image.open(io.BytesIO(raw)) as im:
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"iCubWorld28 image {str(path)!r} cannot be decoded: {exc}") from None
    w, h = rgb.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        rgb = rgb.crop((left, top, left + s, top + s))
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), hashlib.sha256(raw).hexdigest()


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def load_icubworld28(
    root: str | os.PathLike[str],
    *,
    level: str = "instance",
    size: int = 128,
    instances: Iterable[int] | None = None,
    days: Iterable[int] | None = None,
    splits: Iterable[str] = RELEASE_SPLITS,
    first: int | None = None,
) -> Dataset:
    """The release's images as a :class:`Dataset` (both of its splits, marked in ``meta["split"]``).

    ``level``: "instance" (classes ``cup1`` .. ``sprayer4``) or "category" (the 7 categories).
    ``instances`` (1-4) and ``days`` (indices 0-3) select folders; ``first`` keeps the first
    frames of each acquisition folder in file-name order (the paper's "first 100 examples per
    class"). Images come in split, day, category, instance, frame order.

    ``meta``: ``session`` (day index, LongTensor), ``split`` ("train"/"test" per image, a numpy
    array), ``category``, ``instance`` (1-4), ``frame`` (LongTensors), ``files`` (relative
    paths), ``sha256`` (content hash of the files read, with ``size``), ``root``, ``level``.
    """
    if level not in LEVELS:
        raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ConfigError(f"size must be an integer >= 8, got {size!r}")
    top, acquisitions = _scan(root, days, instances, tuple(splits), first)
    inst = _check_choice(instances, INSTANCES, "instances")
    if level == "instance":
        classes = [f"{c}{i}" for c in CATEGORIES for i in inst]
        label_of = {(c, i): c * len(inst) + k for c in range(len(CATEGORIES)) for k, i in enumerate(inst)}
    else:
        classes = list(CATEGORIES)
        label_of = {(c, i): c for c in range(len(CATEGORIES)) for i in inst}
    files = [f for a in acquisitions for f in a.files]
    pixels = np.empty((len(files), size, size, 3), dtype=np.uint8)
    digest = hashlib.sha256(f"icubworld28 v{_VERSION} size {size}".encode())
    with ThreadPoolExecutor(_threads()) as pool:  # Pillow decodes outside the GIL
        for k, (f, (arr, file_hash)) in enumerate(zip(files, pool.map(lambda f: _decode(f, size), files))):
            pixels[k] = arr
            digest.update(f"{f.relative_to(top).as_posix()}:{file_hash};".encode())
    per_image: dict[str, list[int]] = {k: [] for k in ("y", "session", "category", "instance", "frame")}
    split: list[str] = []
    for a in acquisitions:
        n = len(a.files)
        per_image["y"] += [label_of[(a.category, a.instance)]] * n
        per_image["session"] += [a.day] * n
        per_image["category"] += [a.category] * n
        per_image["instance"] += [a.instance] * n
        per_image["frame"] += list(range(n))
        split += [a.split] * n
    scaled = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
    del pixels
    scaled /= np.float32(255)
    x = torch.from_numpy(scaled)
    meta: dict[str, object] = {
        **{k: torch.tensor(v, dtype=torch.long) for k, v in per_image.items() if k != "y"},
        "split": np.asarray(split, dtype="<U5"),
        "files": [f.relative_to(top).as_posix() for f in files],
        "sha256": digest.hexdigest(),
        "root": str(top),
        "level": level,
        "source": "iCubWorld28 release",
    }
    y = torch.tensor(per_image["y"], dtype=torch.long)
    return Dataset(x, y, classes, "icubworld28", "all", meta)


# --------------------------------------------------------------------- the paper's protocol (icub.py)
@dataclass(frozen=True)
class ReleaseSource:
    """Where `evasion reproduce icub --data` reads its sets: the release folder and how much of it.

    ``first``: frames per class, acquisition day and release split (the paper: 100); ``days``:
    day indices to read (a run with ``splits`` session splits uses the last ``splits`` days).
    """

    root: str
    first: int | None = PAPER_PER_CLASS
    days: tuple[int, ...] = (0, 1, 2, 3)

    @classmethod
    def for_run(cls, root: str, first: int | None, splits: int) -> ReleaseSource:
        """The source of a run averaging ``splits`` day splits (day4, then day3 ...; Fig. 5: day4)."""
        if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= len(DAYS):
            raise ConfigError(f"splits must be an integer in [1, {len(DAYS)}], got {splits!r}")
        return cls(str(root), _check_first(first), tuple(range(len(DAYS) - splits, len(DAYS))))

    def check(self) -> None:
        """:func:`check_icubworld28_layout` on exactly the folders and images a run reads."""
        check_icubworld28_layout(self.root, days=self.days, first=self.first)

    def load(self, name: str) -> Dataset:
        """``icubworld7`` (the third instance of each category) or ``icubworld28`` (all 28 objects)."""
        base = name.removesuffix("-quick")
        if base not in ("icubworld7", "icubworld28"):
            raise ConfigError(f"unknown iCubWorld set {name!r}; valid: icubworld7, icubworld28")
        instances = (ICUBWORLD7_INSTANCE,) if base == "icubworld7" else INSTANCES
        return load_icubworld28(self.root, instances=instances, days=self.days, first=self.first)


def set_names(main: str, fine: str | None) -> tuple[str, str | None, str]:
    """The ``main``, ``fine`` and ``baseline`` set names of a run on the release (keeps ``-quick``).

    The 7-object set is iCubWorld7, the finer one iCubWorld28 (if the run has one), and Fig. 5
    runs on the largest set it has."""
    suffix = "-quick" if main.endswith("quick") else ""
    seven, all28 = f"icubworld7{suffix}", f"icubworld28{suffix}" if fine else None
    return seven, all28, all28 or seven


def day_split(
    session: torch.Tensor, split: npt.NDArray[Any], day: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(train, test)`` row indices of one day: the release's train/ and test/ folders of it."""
    on_day = np.asarray(session) == day
    train = np.flatnonzero(on_day & (split == "train")).astype(np.int64)
    test = np.flatnonzero(on_day & (split == "test")).astype(np.int64)
    if not len(train) or not len(test):
        raise ConfigError(f"no images of {DAYS[day] if 0 <= day < len(DAYS) else day} were loaded")
    return train, test


def fig5_rows(
    z: torch.Tensor, y: torch.Tensor, session: torch.Tensor, split: npt.NDArray[Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fig. 5's data: the last day's rows, with a "session" that is 1 on test/ and 0 on train/.

    The baseline takes the highest session as its test set, so it trains on ``train/day4`` and
    tests on ``test/day4``, as the paper did."""
    train, test = day_split(session, split, int(session.max()))
    rows = torch.from_numpy(np.concatenate([train, test]))
    flag = torch.cat([torch.zeros(len(train), dtype=torch.long), torch.ones(len(test), dtype=torch.long)])
    return z[rows], y[rows], flag
