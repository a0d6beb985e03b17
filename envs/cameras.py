"""Calibrated cameras for MuJoCo scenes (the renderer that draws them is :mod:`envs.rendering`).

A camera is described by a :class:`CameraSpec` (a named ``<camera>`` of the MJCF, a fixed free
camera, or a free camera tracking a body). :class:`Cameras` turns specs into ``mujoco.MjvCamera``
objects and reports exact intrinsics ``(C, 3, 3)`` and world→camera extrinsics ``(C, 4, 4)`` in the
convention of :mod:`kp3d.geometry` (OpenCV: x right, y down, z forward; pixel (0, 0) is the top-left
corner of the top-left pixel).

The matrices are read from the very ``mjvGLCamera`` that MuJoCo renders with: in mono mode MuJoCo
draws the *average* of its two eye cameras (``mjv_averageCamera``), and the frustum of that average
camera, with the width implied by the viewport's aspect ratio, is the projection ``mjr_render``
applies. Deriving the matrices from the camera's ``fovy`` and pose instead costs several pixels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import mujoco
import numpy as np

from envs import compat
from kp3d import geometry

__all__ = [
    "CameraSpec",
    "Cameras",
    "gl_camera_matrices",
    "look_at_free_camera",
    "parse_size",
]

CameraKind = Literal["named", "free", "tracking"]

# The fields of MuJoCo's camera structs, which pybind cannot pickle (Cameras pickles them as these).
_MJV_CAMERA_FIELDS = (
    "type",
    "fixedcamid",
    "trackbodyid",
    "lookat",
    "distance",
    "azimuth",
    "elevation",
    "orthographic",
)
_GL_CAMERA_FIELDS = (
    "pos",
    "forward",
    "up",
    "frustum_center",
    "frustum_width",
    "frustum_bottom",
    "frustum_top",
    "frustum_near",
    "frustum_far",
    "orthographic",
)


def _struct_fields(struct: Any, names: Sequence[str]) -> dict[str, Any]:
    fields = {name: getattr(struct, name) for name in names}
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in fields.items()}


def _new_struct(kind: type, fields: dict[str, Any]) -> Any:
    struct = kind()
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            getattr(struct, name)[:] = value
        else:
            setattr(struct, name, value)
    return struct


@dataclass(frozen=True)
class CameraSpec:
    """What one camera is; build one with :meth:`named`, :meth:`free` or :meth:`tracking`.

    Attributes:
        name: camera name, unique within an env (observation key ``cam_<name>``).
        kind: ``"named"`` (an MJCF ``<camera>``), ``"free"`` (fixed free camera) or ``"tracking"``
            (free camera whose look-at point follows ``body``).
        mjcf_name: the MJCF camera (named cameras only).
        lookat: world point the free camera looks at (free cameras).
        distance: distance from the look-at point, in metres (free and tracking cameras).
        azimuth: degrees, rotation about the world z axis (MuJoCo's ``mjvCamera`` convention).
        elevation: degrees, negative looks down.
        fovy: vertical field of view in degrees (free and tracking cameras; a named camera uses the
            MJCF's ``fovy``).
        body: tracked body (tracking cameras).
    """

    name: str
    kind: CameraKind = "free"
    mjcf_name: str | None = None
    lookat: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: float = 1.0
    azimuth: float = 90.0
    elevation: float = -45.0
    fovy: float = 45.0
    body: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(
                f"camera name must be a non-empty identifier (letters, digits, '_'); "
                f"got {self.name!r}"
            )
        if self.kind not in ("named", "free", "tracking"):
            raise ValueError(
                f"camera kind must be 'named', 'free' or 'tracking'; got {self.kind!r}"
            )
        if self.kind != "named":
            if not self.distance > 0:
                raise ValueError(f"camera {self.name!r}: distance must be > 0; got {self.distance}")
            if not 0 < self.fovy < 180:
                raise ValueError(
                    f"camera {self.name!r}: fovy must be in (0, 180) degrees; got {self.fovy}"
                )
        if self.kind == "tracking" and not self.body:
            raise ValueError(f"tracking camera {self.name!r} needs the body it follows")

    @classmethod
    def named(cls, name: str, mjcf_name: str | None = None) -> CameraSpec:
        """A ``<camera>`` of the MJCF (``mjcf_name`` defaults to ``name``)."""
        return cls(name=name, kind="named", mjcf_name=mjcf_name or name)

    @classmethod
    def free(
        cls,
        name: str,
        lookat: Sequence[float] = (0.0, 0.0, 0.0),
        distance: float = 1.0,
        azimuth: float = 90.0,
        elevation: float = -45.0,
        fovy: float = 45.0,
    ) -> CameraSpec:
        """A fixed free camera (``mjCAMERA_FREE``): orbit parameters around ``lookat``."""
        return cls(
            name=name,
            kind="free",
            lookat=_vec3(lookat, name),
            distance=float(distance),
            azimuth=float(azimuth),
            elevation=float(elevation),
            fovy=float(fovy),
        )

    @classmethod
    def tracking(
        cls,
        name: str,
        body: str,
        distance: float = 3.0,
        azimuth: float = 90.0,
        elevation: float = -30.0,
        fovy: float = 45.0,
    ) -> CameraSpec:
        """A free camera following ``body`` (``mjCAMERA_TRACKING``); its extrinsics move."""
        return cls(
            name=name,
            kind="tracking",
            body=body,
            distance=float(distance),
            azimuth=float(azimuth),
            elevation=float(elevation),
            fovy=float(fovy),
        )


def _vec3(values: Sequence[float], name: str) -> tuple[float, float, float]:
    vector = tuple(float(v) for v in values)
    if len(vector) != 3:
        raise ValueError(f"camera {name!r}: lookat must have 3 values; got {values!r}")
    return vector  # type: ignore[return-value]


def parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int means square images.

    Raises:
        ValueError: unless both sides are positive integers.
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    elif (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
    ):
        height, width = int(size[0]), int(size[1])
    else:
        raise ValueError(f"image size must be an int or a (height, width) pair; got {size!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive; got (height, width) = {(height, width)}")
    return height, width


def gl_camera_matrices(
    gl_camera: mujoco.MjvGLCamera, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact intrinsics and extrinsics of the camera ``mjr_render`` draws with.

    ``mjr_render`` applies ``glFrustum(center ± halfwidth, bottom, top, near, far)`` with
    ``halfwidth = frustum_width / 2`` when the camera sets a width, else
    ``aspect * (top - bottom) / 2`` for the viewport's aspect ratio; the view matrix looks from
    ``pos`` along ``forward`` with ``up`` (:func:`kp3d.geometry.look_at`). In pixels with the
    origin at the top-left corner: ``u = (near * x / z - left) * W / (right - left)`` and
    ``v = (top - near * y_up / z) * H / (top - bottom)``, which gives the pinhole matrix below
    with OpenCV axes (x right, y = -up, z = forward).

    Args:
        gl_camera: the (averaged) GL camera.
        height: viewport height in pixels.
        width: viewport width in pixels.

    Returns:
        ``intrinsics (3, 3)`` and world→camera ``extrinsics (4, 4)``, float64.
    """
    if gl_camera.orthographic:
        raise ValueError("orthographic cameras are not supported: kp3d needs a pinhole model")
    near = gl_camera.frustum_near
    bottom, top = gl_camera.frustum_bottom, gl_camera.frustum_top
    if gl_camera.frustum_width:
        half_width = 0.5 * gl_camera.frustum_width
    else:
        half_width = 0.5 * (width / height) * (top - bottom)
    left = gl_camera.frustum_center - half_width
    intrinsics = np.array(
        [
            [near * width / (2 * half_width), 0.0, -left * width / (2 * half_width)],
            [0.0, near * height / (top - bottom), top * height / (top - bottom)],
            [0.0, 0.0, 1.0],
        ]
    )
    # The view matrix of glFrustum's camera: from pos along forward, with up up in the image.
    position = np.asarray(gl_camera.pos, dtype=np.float64)
    forward = np.asarray(gl_camera.forward, dtype=np.float64)
    extrinsics = geometry.look_at(position, position + forward, gl_camera.up)
    return intrinsics, extrinsics


class Cameras:
    """The calibrated cameras of one MuJoCo model, in the order of their specs.

    Attributes:
        names: camera names.
        height, width: image size in pixels (also :attr:`size`).
        moving: per camera, whether its extrinsics can change from step to step.

    ``repr()`` lists the cameras with their kinds and whether they move, e.g. (Reach)
    ``Cameras(3 cameras, size=(64, 64): front (free, fixed), side (free, fixed), top (named,
    fixed))``.
    """

    def __init__(
        self, model: mujoco.MjModel, specs: Iterable[CameraSpec], size: int | Sequence[int] = 64
    ) -> None:
        specs = tuple(specs)
        if not specs:
            raise ValueError("at least one camera is needed")
        for spec in specs:
            if not isinstance(spec, CameraSpec):
                raise TypeError(f"cameras must be CameraSpec objects; got {spec!r}")
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"camera names must be unique; repeated: {duplicates}")
        self.height, self.width = parse_size(size)
        self.specs = specs
        self.names = tuple(names)
        self._model = model
        self._mjv_cameras = [self._make_mjv_camera(spec) for spec in specs]
        self.moving = tuple(
            self._is_moving(spec, cam) for spec, cam in zip(specs, self._mjv_cameras, strict=True)
        )
        self._scene = mujoco.MjvScene(model, maxgeom=0)
        self._intrinsics = np.zeros((len(specs), 3, 3))
        self._extrinsics = np.zeros((len(specs), 4, 4))
        self._gl_cameras: list[mujoco.MjvGLCamera | None] = [None] * len(specs)
        self._computed = False
        self._any_moving = any(self.moving)
        self._free_fovy = tuple(None if spec.kind == "named" else spec.fovy for spec in specs)

    # -- pickling ---------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # MuJoCo's camera structs and scene cannot be pickled: keep the cameras' fields and build
        # the structs (and an empty scene) again on loading. Deep copies go the same way.
        state = self.__dict__.copy()
        del state["_scene"]
        state["_mjv_cameras"] = [_struct_fields(c, _MJV_CAMERA_FIELDS) for c in self._mjv_cameras]
        state["_gl_cameras"] = [
            None if c is None else _struct_fields(c, _GL_CAMERA_FIELDS) for c in self._gl_cameras
        ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        cameras, gl_cameras = state.pop("_mjv_cameras"), state.pop("_gl_cameras")
        self.__dict__.update(state)
        self._mjv_cameras = [_new_struct(mujoco.MjvCamera, fields) for fields in cameras]
        self._gl_cameras = [
            None if fields is None else _new_struct(mujoco.MjvGLCamera, fields)
            for fields in gl_cameras
        ]
        self._scene = mujoco.MjvScene(self._model, maxgeom=0)

    # -- construction -----------------------------------------------------------------------------
    def _make_mjv_camera(self, spec: CameraSpec) -> mujoco.MjvCamera:
        camera = mujoco.MjvCamera()
        if spec.kind == "named":
            camera_id = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, spec.mjcf_name)
            if camera_id < 0:
                available = [self._model.camera(i).name for i in range(self._model.ncam)]
                raise ValueError(
                    f"camera {spec.name!r}: the model has no <camera name={spec.mjcf_name!r}>; "
                    f"its named cameras are {available}"
                )
            if compat.camera_is_orthographic(self._model, camera_id):
                raise ValueError(f"camera {spec.mjcf_name!r} is orthographic; kp3d needs pinhole")
            camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            camera.fixedcamid = camera_id
            return camera
        camera.lookat[:] = spec.lookat
        camera.distance = spec.distance
        camera.azimuth = spec.azimuth
        camera.elevation = spec.elevation
        if spec.kind == "tracking":
            body_id = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_BODY, spec.body)
            if body_id < 0:
                available = [self._model.body(i).name for i in range(self._model.nbody)]
                raise ValueError(
                    f"tracking camera {spec.name!r}: the model has no body {spec.body!r}; "
                    f"its bodies are {available}"
                )
            camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
            camera.trackbodyid = body_id
        else:
            camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        return camera

    def _is_moving(self, spec: CameraSpec, camera: mujoco.MjvCamera) -> bool:
        if spec.kind == "free":
            return False
        if spec.kind == "tracking":
            return True
        camera_id = camera.fixedcamid
        fixed_mode = int(self._model.cam_mode[camera_id]) == mujoco.mjtCamLight.mjCAMLIGHT_FIXED
        return not (self._model.cam_bodyid[camera_id] == 0 and fixed_mode)

    # -- queries ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        count = f"{len(self)} camera{'s' if len(self) != 1 else ''}"
        cameras = ", ".join(
            f"{spec.name} ({spec.kind}, {'moving' if moving else 'fixed'})"
            for spec, moving in zip(self.specs, self.moving, strict=True)
        )
        return f"{type(self).__name__}({count}, size={self.size}: {cameras})"

    @property
    def size(self) -> tuple[int, int]:
        """Image size in pixels, ``(height, width)`` (read-only)."""
        return self.height, self.width

    def index(self, camera: int | str) -> int:
        """Index of a camera given its index or name (clear error otherwise)."""
        if isinstance(camera, str):
            if camera not in self.names:
                raise ValueError(f"unknown camera {camera!r}; cameras are {list(self.names)}")
            return self.names.index(camera)
        if isinstance(camera, (int, np.integer)) and -len(self) <= camera < len(self):
            return int(camera) % len(self)
        raise ValueError(
            f"camera must be a name in {list(self.names)} or an index in "
            f"[0, {len(self)}); got {camera!r}"
        )

    def free_camera(self, camera: int | str) -> mujoco.MjvCamera | None:
        """The ``mujoco.MjvCamera`` a free or tracking camera renders with; None for a named one.

        Use it with any MuJoCo renderer, e.g. to draw the same view at a larger size. A free
        camera's field of view is the model's ``vis.global_.fovy``, so render it inside
        :meth:`field_of_view`::

            with cameras.field_of_view(i):
                renderer.update_scene(data, cameras.free_camera(i))
            image = renderer.render()

        and use :meth:`scaled_intrinsics` for the matrices at the new size.
        """
        index = self.index(camera)
        if self.specs[index].kind == "named":
            return None
        return self._mjv_cameras[index]

    @contextlib.contextmanager
    def field_of_view(self, camera: int | str) -> Iterator[None]:
        """Within the block, the model's free-camera ``fovy`` is this camera's (restored after)."""
        spec = self.specs[self.index(camera)]
        global_visual = self._model.vis.global_
        saved = global_visual.fovy
        if spec.kind != "named":
            global_visual.fovy = spec.fovy
        try:
            yield
        finally:
            global_visual.fovy = saved

    def mjv_camera(self, camera: int | str) -> mujoco.MjvCamera:
        """The ``mujoco.MjvCamera`` of any camera (``mjCAMERA_FIXED`` for named cameras)."""
        return self._mjv_cameras[self.index(camera)]

    @property
    def intrinsics(self) -> np.ndarray:
        """``(C, 3, 3)`` pinhole matrices (copy)."""
        self._require_update()
        return self._intrinsics.copy()

    @property
    def extrinsics(self) -> np.ndarray:
        """``(C, 4, 4)`` world→camera transforms at the last update (copy)."""
        self._require_update()
        return self._extrinsics.copy()

    @property
    def centres(self) -> np.ndarray:
        """``(C, 3)`` optical centres in world coordinates at the last update (copy)."""
        self._require_update()
        return self._centres.copy()

    @property
    def any_moving(self) -> bool:
        return self._any_moving

    @property
    def computed(self) -> bool:
        """Whether the camera matrices have been computed (by :meth:`update`)."""
        return self._computed

    def _require_update(self) -> None:
        if not self._computed:
            raise RuntimeError("camera matrices are not computed yet: reset the environment first")

    # -- updates ----------------------------------------------------------------------------------
    def update(self, data: mujoco.MjData, only_moving: bool = False) -> None:
        """Recompute the camera matrices for the state in ``data`` (kinematics must be current).

        Args:
            data: the simulation state.
            only_moving: skip cameras whose pose cannot change (after the first update).
        """
        # New arrays at every update, read-only: the ones of earlier updates stay as they were
        # (see snapshot()).
        intrinsics, extrinsics = self._intrinsics.copy(), self._extrinsics.copy()
        for index in range(len(self)):
            if only_moving and self._computed and not self.moving[index]:
                continue
            self.place(data, index, self._scene)
            # mjr_render draws the average of the two eye cameras (mono rendering).
            gl_camera = mujoco.mjv_averageCamera(self._scene.camera[0], self._scene.camera[1])
            self._gl_cameras[index] = gl_camera
            intrinsics[index], extrinsics[index] = gl_camera_matrices(
                gl_camera, self.height, self.width
            )
        centres = geometry.camera_centers(extrinsics)
        for array in (intrinsics, extrinsics, centres):
            array.flags.writeable = False
        self._intrinsics, self._extrinsics, self._centres = intrinsics, extrinsics, centres
        self._computed = True

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(intrinsics, extrinsics, centres)`` of the last update, without copying: read-only
        arrays that later updates replace but never change."""
        self._require_update()
        return self._intrinsics, self._extrinsics, self._centres

    def place(self, data: mujoco.MjData, index: int, scene: mujoco.MjvScene) -> None:
        """Put camera ``index`` into ``scene`` (``mjv_updateCamera``), as ``mjr_render`` draws it.

        Free cameras take their field of view from the model: it is set to the camera's for the
        update, then restored, so that a wrapped env's own renderer is unaffected.
        """
        camera, fovy = self._mjv_cameras[index], self._free_fovy[index]
        if fovy is None:  # a named camera: its own fovy
            compat.update_camera(self._model, data, camera, scene)
            return
        global_visual = self._model.vis.global_
        saved = global_visual.fovy
        global_visual.fovy = fovy
        try:
            compat.update_camera(self._model, data, camera, scene)
        finally:
            global_visual.fovy = saved

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points into every camera.

        Args:
            points_world: ``(N, 3)`` world points.

        Returns:
            ``pixels (C, N, 2)`` and ``depth (C, N)``.
        """
        return geometry.project(
            np.asarray(points_world, dtype=np.float64)[None], self.intrinsics, self.extrinsics
        )

    def scaled_intrinsics(self, height: int, width: int) -> np.ndarray:
        """``(C, 3, 3)`` intrinsics of the same cameras rendered at another image size.

        MuJoCo keeps the vertical field of view and widens or narrows the horizontal one with the
        aspect ratio, so this is not a plain per-axis scaling when the aspect ratio changes.
        """
        self._require_update()
        height, width = parse_size((height, width))
        return np.stack(
            [gl_camera_matrices(camera, height, width)[0] for camera in self._gl_cameras]
        )


def look_at_free_camera(eye: Sequence[float], target: Sequence[float]) -> dict[str, float]:
    """Free-camera parameters (distance, azimuth, elevation) that look from ``eye`` at ``target``.

    Handy to write :meth:`CameraSpec.free` arguments from a camera position.
    """
    offset = np.asarray(target, float) - np.asarray(eye, float)
    distance = float(np.linalg.norm(offset))
    if distance == 0:
        raise ValueError("eye and target must differ")
    azimuth = math.degrees(math.atan2(offset[1], offset[0]))
    elevation = math.degrees(math.asin(offset[2] / distance))
    return {"distance": distance, "azimuth": azimuth, "elevation": elevation}
