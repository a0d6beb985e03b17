"""Make any MuJoCo-based Gymnasium env (and Meta-World's tasks) multi-camera."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from envs.base import validate_action
from envs.cameras import Cameras, CameraSpec, parse_size
from envs.keypoints import Keypoints
from envs.observations import STATE_KEY, camera_key
from envs.rendering import MultiViewRenderer, tile_views

_MOVING_ROOT_JOINTS = (mujoco.mjtJoint.mjJNT_FREE, mujoco.mjtJoint.mjJNT_SLIDE)
# The pipeline stages that place bodies, geoms, sites, cameras and lights from the positions.
_POSITION_STAGES = (mujoco.mj_kinematics, mujoco.mj_comPos, mujoco.mj_camlight)


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


def _copy_simulation_state(
    model: mujoco.MjModel, source: mujoco.MjData, target: mujoco.MjData
) -> None:
    """Give ``target`` the integration state of ``source`` (everything the next ``mj_step``
    starts from), and the positions that depend on it."""
    spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, source, state, spec)
    mujoco.mj_setState(model, target, state, spec)
    for stage in _POSITION_STAGES:
        stage(model, target)


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

    Actions are checked as kp3d's own envs check them (:func:`envs.base.validate_action`): a wrong
    shape or a NaN/infinite value raises ``ValueError``, values outside a ``Box`` action space are
    clipped into it before the wrapped env sees them (valid actions reach it unchanged).

    The wrapper can be pickled and deep-copied. A copy continues from the same simulation state:
    when the wrapped env rebuilds itself on copying (Gymnasium's MuJoCo envs are re-made from their
    constructor arguments, Meta-World's reload their model), the wrapper binds to the rebuilt
    model and data and gives them its saved simulation state (``mjData``) and the wrapped env's
    random generator; anything else the wrapped env keeps is copied as the wrapped env copies it.

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
        model, data = _mujoco_parts(env)
        parse_size(size)
        specs = tuple(cameras) if cameras is not None else default_cameras(model)
        self._keypoint_bodies = None if keypoint_bodies is None else tuple(keypoint_bodies)
        self._bind(model, data, specs, size)
        self._last_images: np.ndarray | None = None
        height, width = self.cameras.height, self.cameras.width
        spaces: dict[str, gym.Space] = {
            camera_key(name): gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
            for name in self.cameras.names
        }
        inner = env.observation_space
        inner_spaces = (
            dict(inner.spaces) if isinstance(inner, gym.spaces.Dict) else {STATE_KEY: inner}
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

    def _bind(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        specs: Sequence[CameraSpec],
        size: int | Sequence[int],
    ) -> None:
        self._model, self._data = model, data
        self.cameras = Cameras(model, specs, size)
        self.keypoints = Keypoints.from_bodies(model, self._keypoint_bodies)
        self._renderer: MultiViewRenderer | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Kept apart: the wrapped env may rebuild itself without them (see __setstate__).
        state["_wrapped_np_random"] = getattr(self.env.unwrapped, "_np_random", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        np_random = state.pop("_wrapped_np_random")
        self.__dict__.update(state)
        model, data = _mujoco_parts(self.env)
        if data is self._data:
            return  # the wrapped env was copied with its own model and data
        # The wrapped env was rebuilt (fresh model and data): bind to them, give them the saved
        # simulation state and random generator, and place the cameras for that state.
        saved = self._data
        computed = self.cameras.computed
        self._bind(model, data, self.cameras.specs, (self.cameras.height, self.cameras.width))
        _copy_simulation_state(model, saved, data)
        if np_random is not None:
            self.env.unwrapped.np_random = np_random
        if computed:
            self.cameras.update(data)

    def _renderer_or_new(self) -> MultiViewRenderer:
        if self._renderer is None:
            self._renderer = MultiViewRenderer(self._model, self.cameras)
        return self._renderer

    def _wrap(self, observation: Any, info: dict[str, Any], full_update: bool) -> tuple[Any, dict]:
        # Gymnasium's MujocoEnv leaves body positions from before the last integration substep;
        # recompute the position-dependent quantities (only) so that images and ground truth show
        # the state the observation describes. The next mj_step recomputes them anyway.
        for stage in _POSITION_STAGES:
            stage(self._model, self._data)
        if full_update or self.cameras.any_moving:
            self.cameras.update(self._data, only_moving=not full_update)
        images = self._renderer_or_new().render(self._data)
        self._last_images = images
        wrapped = {camera_key(name): images[i] for i, name in enumerate(self.cameras.names)}
        if isinstance(observation, dict):
            wrapped.update(observation)
        else:
            wrapped[STATE_KEY] = observation
        return wrapped, self.keypoints.deferred_ground_truth(self._data, self.cameras, info)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(seed=seed, options=options)
        return self._wrap(observation, info, full_update=True)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        space = self.action_space
        if isinstance(space, gym.spaces.Box):
            given = np.asarray(action)
            # Floats keep their precision, so that valid actions reach the env unchanged.
            floating = np.issubdtype(given.dtype, np.floating)
            action = validate_action(given, space).astype(given.dtype if floating else space.dtype)
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
    ``mujoco==3.3.0``, so install it in an environment of its own: ``make test-metaworld`` builds
    one (``.venv-metaworld``) and runs the env tests and Meta-World's scripted policies there.

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
