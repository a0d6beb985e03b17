"""The differences between the MuJoCo releases kp3d supports (``mujoco>=3.3,<5``), in one place.

Three things that kp3d uses changed after MuJoCo 3.3 (which Meta-World 3.x pins):

* whether a camera is orthographic: ``MjModel.cam_orthographic`` (0/1) in 3.3, replaced by
  ``MjModel.cam_projection`` (an ``mjtProjection``) later;
* ``mujoco.mj_multiRay``: later releases take a ``normal`` output array (or ``None``) between
  ``dist`` and ``nray``; 3.3 has no such argument;
* ``mujoco.mjv_updateCamera`` on a tracking camera: 3.3 moves the camera's look-at point only 20%
  of the way to the tracked body's centre of mass per call (a smoothing filter for viewers), so
  each call places the camera somewhere else; later releases put it there at once.

The first two are detected from the installed ``mujoco`` itself (the model's fields, the
function's signature), not from its version number; the third is made exact on every release
(see :func:`update_camera`). Nothing else in :mod:`envs` calls these functions or reads these
fields directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np


def camera_is_orthographic(model: Any, camera_id: int) -> bool:
    """Whether MJCF camera ``camera_id`` of ``model`` has an orthographic projection."""
    projection = getattr(model, "cam_projection", None)
    if projection is None:  # MuJoCo 3.3
        return bool(model.cam_orthographic[camera_id])
    return int(projection[camera_id]) != 0  # mjPROJ_PERSPECTIVE is 0


@functools.lru_cache(maxsize=4)
def multi_ray_takes_normal(function: Callable[..., Any]) -> bool:
    """Whether a ``mj_multiRay`` binding has the ``normal`` argument (read from its signature,
    the first line of the pybind docstring)."""
    signature = (function.__doc__ or "").split("\n", 1)[0]
    return "normal:" in signature


def multi_ray(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    point: np.ndarray,
    directions: np.ndarray,
    geomgroup: np.ndarray | None,
    flg_static: bool,
    bodyexclude: int,
    geomid: np.ndarray,
    dist: np.ndarray,
    nray: int,
    cutoff: float,
) -> None:
    """``mujoco.mj_multiRay`` without surface normals, on every supported MuJoCo release.

    Arguments as ``mj_multiRay``'s: ``nray`` rays from ``point`` along ``directions``
    (``(nray * 3,)``); the hit geom ids and distances are written into ``geomid`` and ``dist``.
    """
    function = mujoco.mj_multiRay
    arguments = [model, data, point, directions, geomgroup, flg_static, bodyexclude, geomid, dist]
    if multi_ray_takes_normal(function):
        arguments.append(None)  # no surface normals wanted (MuJoCo 3.3 has no such argument)
    function(*arguments, nray, cutoff)


_TRACKING = int(mujoco.mjtCamera.mjCAMERA_TRACKING)


def update_camera(
    model: mujoco.MjModel, data: mujoco.MjData, camera: mujoco.MjvCamera, scene: mujoco.MjvScene
) -> None:
    """``mujoco.mjv_updateCamera`` with a tracking camera exactly on its body on every release.

    A tracking camera looks at the tracked body's subtree centre of mass: its ``lookat`` is set
    there first, so that 3.3's filter (which moves ``lookat`` a fraction of the remaining way)
    has nothing left to smooth, and every call for one state places the camera identically.
    """
    if camera.type == _TRACKING:
        camera.lookat[:] = data.subtree_com[camera.trackbodyid]
    mujoco.mjv_updateCamera(model, data, camera, scene)
