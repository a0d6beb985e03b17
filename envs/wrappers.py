"""Make any MuJoCo-based Gymnasium env (and Meta-World's tasks) multi-camera."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.cameras import Cameras, CameraSpec, MultiViewRenderer, parse_size, tile_views
from envs.keypoints import Keypoints

_MOVING_ROOT_JOINTS = (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_SLIDE)


def _mujoco_parts(env: gym.Env) -> tuple[mujoco.MjModel, mujoco.MjData]:
    base = env.unwrapped
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if not isinstance(model, mujoco.MjModel) or not isinstance(data, mujoco.MjData):
        raise TypeError(
            f"MultiCameraWrapper needs a MuJoCo-based env whose unwrapped env has `model` "
            f"(mujoco.MjModel) and `data` (mujoco.MjData), like Gymnasium's MujocoEnv; "
            f"got {type(base).__name__}"
        )
    return model, data


def default_cameras(model: mujoco.MjModel, count: int = 3) -> tuple[CameraSpec, ...]:
    """``count`` free cameras evenly spaced in azimuth around the scene, 30° above it.

    When the model's first body moves freely (a free joint or slide joints, as in Ant or
    HalfCheetah), the cameras track that body; otherwise they look at the model's centre.
    """
    root = 1 if model.nbody > 1 else 0
    root_joints = [int(model.jnt_type[j]) for j in range(model.njnt) if model.jnt_bodyid[j] == root]
    moving = any(kind in _MOVING_ROOT_JOINTS for kind in root_joints)
    distance = 1.6 * float(model.stat.extent) if not moving else 4.0 * _body_size(model, root)
    specs = []
    for i in range(count):
        azimuth = 90.0 + 360.0 * i / count
        if moving:
            specs.append(
                CameraSpec.tracking(
                    f"view{i}",
                    body=model.body(root).name,
                    distance=distance,
                    azimuth=azimuth,
                    elevation=-30.0,
                )
            )
        else:
            specs.append(
                CameraSpec.free(
                    f"view{i}",
                    lookat=tuple(model.stat.center),
                    distance=distance,
                    azimuth=azimuth,
                    elevation=-30.0,
                )
            )
    return tuple(specs)


def _body_size(model: mujoco.MjModel, body: int) -> float:
    """A length scale of a body's subtree (its farthest geom extent), at least 0.1 m."""
    subtree = {body}
    for b in range(body + 1, model.nbody):
        if model.body_parentid[b] in subtree:
            subtree.add(b)
    sizes = [
        model.geom_rbound[g] + np.linalg.norm(model.body_pos[model.geom_bodyid[g]])
        for g in range(model.ngeom)
        if model.geom_bodyid[g] in subtree
    ]
    return max([0.1, *sizes])


class MultiCameraWrapper(gym.Wrapper):
    """Turns a MuJoCo-based Gymnasium env into kp3d's multi-camera interface.

    The observation becomes a ``Dict`` with ``cam_<name>: Box(0, 255, (H, W, 3), uint8)`` per camera
    and ``state``: the wrapped env's own observation (its keys are kept when it is a ``Dict``).
    ``info`` gains the ground truth of :class:`envs.keypoints.Keypoints` (by default every body's
    origin, limbs from parent to child) and the camera matrices of the step.

    The cameras are reachable as ``wrapper.cameras`` (or ``env.get_wrapper_attr("cameras")`` from
    outer wrappers).

    Args:
        env: a MuJoCo-based env (``env.unwrapped.model`` / ``.data``), e.g. ``gym.make("Ant-v5")``.
        cameras: camera specs; ``None`` for :func:`default_cameras`.
        size: image size, int or ``(height, width)``.
        keypoint_bodies: bodies whose origins are the ground-truth keypoints; ``None`` for all.

    Example:
        >>> import gymnasium as gym, envs
        >>> env = envs.MultiCameraWrapper(gym.make("HalfCheetah-v5"), size=64)
        >>> obs, info = env.reset(seed=0)
        >>> sorted(obs), info["keypoints_pixels"].shape
        (['cam_view0', 'cam_view1', 'cam_view2', 'state'], (3, 7, 2))
    """

    def __init__(
        self,
        env: gym.Env,
        cameras: Sequence[CameraSpec] | None = None,
        size: int | Sequence[int] = 64,
        keypoint_bodies: Sequence[str] | None = None,
    ) -> None:
        super().__init__(env)
        self._model, self._data = _mujoco_parts(env)
        parse_size(size)
        specs = tuple(cameras) if cameras is not None else default_cameras(self._model)
        self.cameras = Cameras(self._model, specs, size)
        self.keypoints = Keypoints.from_bodies(self._model, keypoint_bodies)
        self._renderer: MultiViewRenderer | None = None
        self._last_images: np.ndarray | None = None
        height, width = self.cameras.height, self.cameras.width
        spaces: dict[str, gym.Space] = {
            f"cam_{name}": gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
            for name in self.cameras.names
        }
        inner = env.observation_space
        inner_spaces = (
            dict(inner.spaces) if isinstance(inner, gym.spaces.Dict) else {"state": inner}
        )
        clash = sorted(set(spaces) & set(inner_spaces))
        if clash:
            raise ValueError(f"the wrapped env's observation keys {clash} clash with camera keys")
        self.observation_space = gym.spaces.Dict({**spaces, **inner_spaces})

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self.keypoints.names

    @property
    def skeleton(self) -> np.ndarray:
        return self.keypoints.skeleton

    def _renderer_or_new(self) -> MultiViewRenderer:
        if self._renderer is None:
            self._renderer = MultiViewRenderer(self._model, self.cameras)
        return self._renderer

    def _wrap(self, observation: Any, info: dict[str, Any], full_update: bool) -> tuple[Any, dict]:
        # Gymnasium's MujocoEnv leaves body positions from before the last integration substep;
        # recompute the position-dependent quantities (only) so that images and ground truth show
        # the state the observation describes. The next mj_step recomputes them anyway.
        for stage in (mujoco.mj_kinematics, mujoco.mj_comPos, mujoco.mj_camlight):
            stage(self._model, self._data)
        if full_update or self.cameras.any_moving:
            self.cameras.update(self._data, only_moving=not full_update)
        images = self._renderer_or_new().render(self._data)
        self._last_images = images
        wrapped = {f"cam_{name}": images[i] for i, name in enumerate(self.cameras.names)}
        if isinstance(observation, dict):
            wrapped.update(observation)
        else:
            wrapped["state"] = observation
        return wrapped, {**info, **self.keypoints.ground_truth(self._data, self.cameras)}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(seed=seed, options=options)
        return self._wrap(observation, info, full_update=True)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        observation, info = self._wrap(observation, info, full_update=False)
        return observation, reward, terminated, truncated, info

    def render_background(self) -> np.ndarray:
        """``(C, H, W, 3)`` uint8 views of the empty scene (no body that can move), as
        :meth:`envs.base.MultiCameraMujocoEnv.render_background`."""
        return self._renderer_or_new().render_background(self._data)

    def render(self) -> np.ndarray | None:
        """The camera views side by side, ``(H, C * W, 3)`` uint8."""
        images = self._last_images
        return None if images is None else tile_views(images)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()


METAWORLD_CAMERAS = (
    CameraSpec.free("left", lookat=(0.0, 0.65, 0.1), distance=1.3, azimuth=30.0, elevation=-30.0),
    CameraSpec.free("front", lookat=(0.0, 0.65, 0.1), distance=1.3, azimuth=90.0, elevation=-35.0),
    CameraSpec.free("right", lookat=(0.0, 0.65, 0.1), distance=1.3, azimuth=150.0, elevation=-30.0),
)
"""Default views of Meta-World's table (the Sawyer stands at y = 0, the table is centred near
y = 0.65)."""


def make_metaworld(
    task_name: str,
    cameras: Sequence[CameraSpec] | None = None,
    size: int | Sequence[int] = 64,
    seed: int | None = None,
    **kwargs: Any,
) -> MultiCameraWrapper:
    """A Meta-World v3 task (e.g. ``"hammer-v3"``, ``"door-open-v3"``) with kp3d's cameras.

    Needs the ``metaworld`` extra (``pip install "kp3d[metaworld]"``). Meta-World 3.x pins
    ``mujoco==3.3``, so install it in an environment of its own.

    Args:
        task_name: a Meta-World v3 environment name.
        cameras: camera specs; default :data:`METAWORLD_CAMERAS`.
        size: image size.
        seed: seed of the task distribution (Meta-World's ``seed`` argument).
        **kwargs: passed on to ``gymnasium.make("Meta-World/MT1", ...)``.
    """
    try:
        import metaworld
    except ImportError as error:
        raise ImportError(
            "make_metaworld needs Meta-World, an optional extra: pip install 'kp3d[metaworld]'. "
            "Meta-World 3.x pins mujoco==3.3, so install it in a separate virtual environment."
        ) from error
    names = sorted(getattr(metaworld, "ALL_V3_ENVIRONMENTS", {}))
    if names and task_name not in names:
        raise ValueError(f"unknown Meta-World task {task_name!r}; available: {names}")
    env = gym.make("Meta-World/MT1", env_name=task_name, seed=seed, **kwargs)
    return MultiCameraWrapper(env, cameras=cameras or METAWORLD_CAMERAS, size=size)
