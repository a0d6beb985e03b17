"""Ground-truth keypoints: world positions, pixels in every camera, and visibility."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

from envs import compat
from envs.cameras import Cameras
from envs.ground_truth import Deferred, GroundTruthInfo
from envs.observations import EXTRINSICS_KEY, INTRINSICS_KEY
from envs.rendering import VISIBLE_GROUPS
from kp3d import geometry

# Rays stop this far short of a keypoint, so that the surface a keypoint lies on does not count as
# occluding it.
_OCCLUSION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class KeypointSpec:
    """A ground-truth keypoint: an MJCF site.

    Attributes:
        name: keypoint name (``keypoint_names`` of the env).
        site: MJCF site whose world position is the keypoint.
        instance: instance id in scenes with several copies of one object kind.
        bodies: extra bodies whose surface counts as this keypoint when deciding visibility. The
            site's own body and its parent always count (a keypoint at a joint lies on both).
    """

    name: str
    site: str
    instance: int = 0
    bodies: tuple[str, ...] = ()


def _body_id(model: mujoco.MjModel, name: str, what: str) -> int:
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
    if body < 0:
        bodies = [model.body(i).name for i in range(model.nbody)]
        raise ValueError(f"{what}: no body {name!r} in the model; bodies are {bodies}")
    return body


class Keypoints:
    """The ground-truth keypoints of a scene, each a site or a body origin.

    **Occlusion** is decided by casting a ray from each camera centre to each keypoint against the
    geoms the renderer draws (``mj_multiRay`` over the same geom groups): a keypoint is occluded
    when the first surface hit lies before it and belongs to a body that does not stand for the
    keypoint (its own body, the parent body, or the extra bodies of its spec). This is the geometry
    the rasteriser samples, at the keypoint's exact sub-pixel position, for microseconds per step
    instead of a second (segmentation) render pass; the tests check it against segmentation
    renders.

    Attributes:
        names: keypoint names ``(J,)``.
        instances: ``(J,)`` instance id of each keypoint.
        skeleton: ``(L, 2)`` keypoint indices of each limb.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        names: Sequence[str],
        *,
        sites: Sequence[int] | None = None,
        bodies: Sequence[int] | None = None,
        instances: Sequence[int] | None = None,
        extra_bodies: Sequence[Sequence[int]] | None = None,
        skeleton: Sequence[tuple[int, int]] = (),
    ) -> None:
        if (sites is None) == (bodies is None):
            raise ValueError("give keypoints as either sites or bodies")
        self._model = model
        self.names = tuple(names)
        count = len(self.names)
        self._sites = None if sites is None else np.asarray(sites, dtype=np.int64)
        self._bodies = None if bodies is None else np.asarray(bodies, dtype=np.int64)
        owner = model.site_bodyid[self._sites] if sites is not None else self._bodies
        self.instances = np.asarray(
            instances if instances is not None else [0] * count, dtype=np.int64
        )
        self.skeleton = np.asarray(skeleton, dtype=np.int64).reshape(-1, 2)
        # stands_for[j, body]: a surface of `body` at keypoint j's pixel is keypoint j itself.
        self._stands_for = np.zeros((count, model.nbody), dtype=bool)
        for j in range(count):
            own = {int(owner[j]), int(model.body_parentid[owner[j]])}
            own.update(int(b) for b in (extra_bodies[j] if extra_bodies else ()))
            own.discard(0)  # the world body (ground) never stands for a keypoint
            self._stands_for[j, sorted(own)] = True
        self._near = float(model.vis.map.znear * model.stat.extent)
        self._geom_bodies = model.geom_bodyid.copy()
        self._keypoint_index = np.arange(count)
        self._geom_ids = np.empty(0, dtype=np.int32)  # ray results, sized on first use
        self._distances = np.empty(0, dtype=np.float64)
        self._groups = np.zeros(6, dtype=np.uint8)
        self._groups[list(VISIBLE_GROUPS)] = 1
        self._scratch: mujoco.MjData | None = None  # for deferred_ground_truth, made on first use

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_scratch": None}  # scratch space: not worth pickling

    @classmethod
    def from_specs(
        cls,
        model: mujoco.MjModel,
        specs: Sequence[KeypointSpec],
        limbs: Sequence[tuple[str, str]] = (),
    ) -> Keypoints:
        """Keypoints at MJCF sites, with limbs given as pairs of keypoint names."""
        sites, extra = [], []
        for spec in specs:
            site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, spec.site)
            if site < 0:
                raise ValueError(f"keypoint {spec.name!r}: no site {spec.site!r} in the model")
            sites.append(site)
            extra.append([_body_id(model, b, f"keypoint {spec.name!r}") for b in spec.bodies])
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"keypoint names must be unique; got {names}")
        index = {name: i for i, name in enumerate(names)}
        unknown = [n for pair in limbs for n in pair if n not in index]
        if unknown:
            raise ValueError(f"limbs name unknown keypoints {unknown}; keypoints are {names}")
        return cls(
            model,
            names,
            sites=sites,
            instances=[s.instance for s in specs],
            extra_bodies=extra,
            skeleton=[(index[a], index[b]) for a, b in limbs],
        )

    @classmethod
    def from_bodies(cls, model: mujoco.MjModel, names: Sequence[str] | None = None) -> Keypoints:
        """Keypoints at body origins (default: every body but the world), limbs parent→child."""
        if names is None:
            ids = list(range(1, model.nbody))
        else:
            ids = [_body_id(model, name, "keypoint") for name in names]
        position = {body: j for j, body in enumerate(ids)}
        skeleton = [
            (position[int(model.body_parentid[b])], j)
            for j, b in enumerate(ids)
            if int(model.body_parentid[b]) in position
        ]
        return cls(
            model, [model.body(b).name or f"body{b}" for b in ids], bodies=ids, skeleton=skeleton
        )

    def __len__(self) -> int:
        return len(self.names)

    def world(self, data: mujoco.MjData) -> np.ndarray:
        """``(J, 3)`` world positions (kinematics in ``data`` must be current)."""
        # Indexing with an index array already copies.
        if self._sites is not None:
            return data.site_xpos[self._sites]
        return data.xpos[self._bodies]

    def ground_truth(self, data: mujoco.MjData, cameras: Cameras) -> dict[str, np.ndarray]:
        """Keypoints and camera matrices of the current state.

        Returns:
            ``keypoints_world (J, 3)``, ``keypoints_pixels (C, J, 2)``, ``keypoints_depth (C, J)``
            (camera-frame z), ``keypoints_visible (C, J)`` bool, ``camera_intrinsics (C, 3, 3)``,
            ``camera_extrinsics (C, 4, 4)``.
        """
        points = self.world(data)
        intrinsics, extrinsics = cameras.intrinsics, cameras.extrinsics
        pixels, depth = geometry.project(points[None], intrinsics, extrinsics)
        visible = self.visibility(data, cameras, points, pixels, depth)
        return {
            "keypoints_world": points,
            "keypoints_pixels": pixels,
            "keypoints_depth": depth,
            "keypoints_visible": visible,
            INTRINSICS_KEY: intrinsics,
            EXTRINSICS_KEY: extrinsics,
        }

    def deferred_ground_truth(
        self, data: mujoco.MjData, cameras: Cameras, info: dict[str, Any] | None = None
    ) -> GroundTruthInfo:
        """``info`` with :meth:`ground_truth` of the current state, whose keypoint entries are
        computed only when read (:class:`envs.ground_truth.GroundTruthInfo`).

        The camera matrices are in the dict at once (they cost two copies). The keypoints are
        computed from a snapshot of the joint and mocap positions, placed by ``mj_kinematics`` in
        a scratch ``mjData`` of this object's own, so they equal :meth:`ground_truth` of this
        state whenever they are read (as long as the model's geometry is not edited meanwhile).
        """
        values = dict(info) if info else {}
        values[INTRINSICS_KEY] = cameras.intrinsics
        values[EXTRINSICS_KEY] = cameras.extrinsics
        compute = functools.partial(
            self._deferred_values,
            (data.qpos.copy(), data.mocap_pos.copy(), data.mocap_quat.copy()),
            cameras.snapshot(),
            (cameras.width, cameras.height),
        )
        return GroundTruthInfo(values, Deferred(compute))

    def _deferred_values(
        self,
        positions: tuple[np.ndarray, np.ndarray, np.ndarray],
        cameras: tuple[np.ndarray, np.ndarray, np.ndarray],
        image_size: tuple[int, int],
    ) -> dict[str, np.ndarray]:
        intrinsics, extrinsics, centres = cameras
        if self._scratch is None:
            self._scratch = mujoco.MjData(self._model)
        scratch = self._scratch
        scratch.qpos[:], scratch.mocap_pos[:], scratch.mocap_quat[:] = positions
        if self._model.nflex:
            mujoco.mj_fwdPosition(self._model, scratch)  # flex vertices too
        else:
            mujoco.mj_kinematics(self._model, scratch)
        points = self.world(scratch)
        pixels, depth = geometry.project(points[None], intrinsics, extrinsics)
        visible = self._visibility(scratch, centres, image_size, points, pixels, depth)
        return {
            "keypoints_world": points,
            "keypoints_pixels": pixels,
            "keypoints_depth": depth,
            "keypoints_visible": visible,
        }

    def visibility(
        self,
        data: mujoco.MjData,
        cameras: Cameras,
        points: np.ndarray,
        pixels: np.ndarray,
        depth: np.ndarray,
    ) -> np.ndarray:
        """``(C, J)``: inside the image, beyond the near plane, and not occluded."""
        image_size = (cameras.width, cameras.height)
        return self._visibility(data, cameras.centres, image_size, points, pixels, depth)

    def _visibility(
        self,
        data: mujoco.MjData,
        centres: np.ndarray,
        image_size: tuple[int, int],
        points: np.ndarray,
        pixels: np.ndarray,
        depth: np.ndarray,
    ) -> np.ndarray:
        inside = ((pixels >= 0) & (pixels < np.array(image_size))).all(axis=-1)
        visible = (depth > self._near) & inside
        count = len(points)
        if count == 0:
            return visible
        offsets = points[None] - centres[:, None]
        lengths = np.sqrt(np.einsum("cjk,cjk->cj", offsets, offsets))
        directions = offsets / np.maximum(lengths, 1e-12)[..., None]
        if self._geom_ids.shape != lengths.shape:
            self._geom_ids = np.empty(lengths.shape, dtype=np.int32)
            self._distances = np.empty(lengths.shape, dtype=np.float64)
        geom_ids, distances = self._geom_ids, self._distances
        for camera, centre in enumerate(centres):
            compat.multi_ray(
                self._model,
                data,
                centre,
                directions[camera].ravel(),
                self._groups,
                True,
                -1,
                geom_ids[camera],
                distances[camera],
                count,
                math.inf,
            )
        # A hit before the keypoint occludes it unless it is a surface of the keypoint itself.
        blocked = (distances < lengths - _OCCLUSION_TOLERANCE) & (geom_ids >= 0)
        if not blocked.any():
            return visible
        hit_bodies = self._geom_bodies[np.maximum(geom_ids, 0)]
        return visible & ~(blocked & ~self._stands_for[self._keypoint_index, hit_bodies])

    def stands_for(self, keypoint: int, body: int) -> bool:
        """Whether a surface of ``body`` seen at the keypoint's pixel shows the keypoint itself."""
        return bool(self._stands_for[keypoint, body])
