"""The base class of every kp3d environment: model, cameras, rendering, ground truth, observations.

A task subclass holds only its MJCF file name, its cameras and keypoints, and the task logic
(:meth:`MultiCameraMujocoEnv.reset_task`, :meth:`~MultiCameraMujocoEnv.task_reward`,
:meth:`~MultiCameraMujocoEnv.is_success`, :meth:`~MultiCameraMujocoEnv.task_state`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from importlib import resources
from typing import Any, ClassVar, Literal

import gymnasium as gym
import mujoco
import numpy as np

from envs.cameras import Cameras, CameraSpec
from envs.keypoints import Keypoints, KeypointSpec
from envs.observations import STATE_KEY, camera_key
from envs.rendering import MultiViewRenderer, tile_views

ObsMode = Literal["pixels", "state"]
OBS_MODES: tuple[str, ...] = ("pixels", "state")


def asset_path(file_name: str) -> str:
    """Absolute path of an MJCF file shipped in ``envs/assets``."""
    path = resources.files("envs") / "assets" / file_name
    if not path.is_file():
        raise FileNotFoundError(f"no asset {file_name!r} in envs/assets")
    return str(path)


def validate_action(action: Any, space: gym.spaces.Box) -> np.ndarray:
    """An action as every kp3d env takes it: the right shape, finite, clipped into ``space``.

    Args:
        action: anything ``np.asarray`` turns into numbers.
        space: the env's ``Box`` action space.

    Returns:
        The action as float64, clipped to ``[space.low, space.high]``.

    Raises:
        ValueError: when the shape is not the space's, or a value is NaN or infinite.
    """
    action = np.asarray(action, dtype=np.float64)
    if action.shape != space.shape:
        raise ValueError(f"action must have shape {space.shape}; got {action.shape}")
    if not np.isfinite(action).all():
        raise ValueError(f"action must be finite; got {action}")
    # np.minimum/np.maximum: np.clip's dispatch costs more than the work on a few numbers.
    return np.minimum(np.maximum(action, space.low), space.high)


class MultiCameraMujocoEnv(gym.Env, abc.ABC):
    """A MuJoCo task seen by several calibrated cameras, with ground-truth keypoints.

    **Observation** (``obs_mode="pixels"``, the default): a ``Dict`` with one key per camera,
    ``cam_<name>``: ``Box(0, 255, (H, W, 3), uint8)``, and ``state``: bounded float32
    proprioception (robot joint positions and velocities only: objects and targets must be seen).
    With ``obs_mode="state"`` the observation is the task's full low-dimensional state as a float32
    ``Box`` clipped to ``±state_limit`` (100: metres and rad/s that these tasks never reach) and
    nothing is rendered (the state-based upper-bound baseline).

    **Info** of every ``reset`` and ``step``: the task's reward components (step only),
    ``is_success``, ``keypoints_world (J, 3)``, ``keypoints_pixels (C, J, 2)``,
    ``keypoints_depth (C, J)``, ``keypoints_visible (C, J)`` (inside the image, in front of the
    camera and not occluded), ``camera_intrinsics (C, 3, 3)`` and ``camera_extrinsics (C, 4, 4)``
    (world→camera at this step; they change every step for moving cameras). The ``keypoints_*``
    entries are computed only when read, from a snapshot of the step: the info is a
    :class:`envs.ground_truth.GroundTruthInfo`, a ``dict`` to every reader.

    **Cameras**: ``env.unwrapped.cameras`` (a :class:`envs.cameras.Cameras`). Pixels and matrices
    follow :mod:`kp3d.geometry` (OpenCV axes; pixel (0, 0) is the top-left corner of the top-left
    pixel).

    **Occlusion** of keypoints: see :class:`envs.keypoints.Keypoints`.

    Args:
        cameras: camera specs, or names picking among the task's default cameras and the MJCF's
            named cameras; ``None`` for the task's defaults.
        size: image size, an int (square) or ``(height, width)``.
        obs_mode: ``"pixels"`` or ``"state"``.
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns the views side by side).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    xml_file: ClassVar[str]
    frame_skip: ClassVar[int] = 5
    default_cameras: ClassVar[tuple[CameraSpec, ...]] = ()
    robot_joints: ClassVar[tuple[str, ...]] = ()
    max_joint_velocity: ClassVar[float] = 20.0
    state_limit: ClassVar[float] = 100.0
    keypoints: ClassVar[tuple[KeypointSpec, ...]] = ()
    limbs: ClassVar[tuple[tuple[str, str], ...]] = ()
    max_episode_steps: ClassVar[int] = 100
    normalising_length: ClassVar[float | None] = None
    """A length (m) of the scene that keypoint errors are divided by (PCK at a per-env length,
    linear-probe landmark errors), like the inter-ocular distance of face landmarks; each task
    says what it chose. ``None``: not defined, errors are reported in metres only."""
    learned_keypoints: ClassVar[int] = 8
    """How many keypoints an unsupervised keypoint learner should have for this task: more than
    its moving parts, so that each can get one (see :func:`perception_defaults`)."""

    def __init__(
        self,
        cameras: Sequence[CameraSpec | str] | None = None,
        size: int | Sequence[int] = 64,
        obs_mode: ObsMode = "pixels",
        render_mode: str | None = None,
    ) -> None:
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}; got {obs_mode!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}; "
                f"got {render_mode!r}"
            )
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.model = self.load_model()
        self.data = mujoco.MjData(self.model)
        self.cameras = Cameras(self.model, self._resolve_cameras(cameras), size)
        self._renderer: MultiViewRenderer | None = None
        self._last_images: np.ndarray | None = None
        self._setup_keypoints()
        self._setup_proprioception()
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.dt)}

        low, high = self.model.actuator_ctrlrange.T.astype(np.float32)
        self.action_space = gym.spaces.Box(low=low, high=high, dtype=np.float32)
        if obs_mode == "state":
            mujoco.mj_forward(self.model, self.data)
            size_state = np.asarray(self.task_state()).shape
            self.observation_space = gym.spaces.Box(
                -self.state_limit, self.state_limit, size_state, np.float32
            )
        else:
            height, width = self.cameras.height, self.cameras.width
            spaces: dict[str, gym.Space] = {
                camera_key(name): gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
                for name in self.cameras.names
            }
            low_state, high_state = self.proprioception_bounds()
            spaces[STATE_KEY] = gym.spaces.Box(
                low_state.astype(np.float32), high_state.astype(np.float32), dtype=np.float32
            )
            self.observation_space = gym.spaces.Dict(spaces)

    # -- task interface (override in subclasses) --------------------------------------------------
    def load_model(self) -> mujoco.MjModel:
        """The task's model (default: ``envs/assets/<xml_file>``)."""
        return mujoco.MjModel.from_xml_path(asset_path(self.xml_file))

    @abc.abstractmethod
    def reset_task(self) -> None:
        """Randomise the start state with ``self.np_random`` (after ``mj_resetData``)."""

    @abc.abstractmethod
    def task_state(self) -> np.ndarray:
        """The full low-dimensional state (``obs_mode="state"``), fixed length."""

    @abc.abstractmethod
    def task_reward(self, action: np.ndarray) -> tuple[float, dict[str, float]]:
        """Reward of the transition just simulated and its named components."""

    @abc.abstractmethod
    def is_success(self) -> bool:
        """Whether the task is solved in the current state."""

    def is_terminated(self) -> bool:
        """Whether the episode ends (e.g. the robot fell); default never."""
        return False

    def proprioception(self) -> np.ndarray:
        """Positions and velocities of ``robot_joints``, within :meth:`proprioception_bounds`."""
        qpos = self.data.qpos[self._proprio_qpos]
        if self._any_wrap:
            qpos = np.where(self._proprio_wrap, (qpos + np.pi) % (2 * np.pi) - np.pi, qpos)
        state = np.concatenate([qpos, self.data.qvel[self._proprio_dof]]).astype(np.float32)
        # np.minimum/np.maximum: np.clip's dispatch costs more than the work on a few numbers.
        return np.minimum(np.maximum(state, self._proprio_low), self._proprio_high)

    def proprioception_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of :meth:`proprioception`."""
        return self._proprio_low, self._proprio_high

    # -- set-up -----------------------------------------------------------------------------------
    def _resolve_cameras(
        self, cameras: Sequence[CameraSpec | str] | None
    ) -> tuple[CameraSpec, ...]:
        if cameras is None:
            if not self.default_cameras:
                raise ValueError(f"{type(self).__name__} has no default cameras; pass cameras=")
            return tuple(self.default_cameras)
        if isinstance(cameras, (str, CameraSpec)):
            cameras = [cameras]
        by_name = {spec.name: spec for spec in self.default_cameras}
        mjcf_names = [self.model.camera(i).name for i in range(self.model.ncam)]
        resolved = []
        for camera in cameras:
            if isinstance(camera, CameraSpec):
                resolved.append(camera)
            elif isinstance(camera, str) and camera in by_name:
                resolved.append(by_name[camera])
            elif isinstance(camera, str) and camera in mjcf_names:
                resolved.append(CameraSpec.named(camera))
            else:
                valid = sorted(set(by_name) | set(mjcf_names))
                raise ValueError(
                    f"unknown camera {camera!r}; valid names: {valid}, or a CameraSpec"
                )
        return tuple(resolved)

    def _setup_keypoints(self) -> None:
        self.keypoint_set = Keypoints.from_specs(self.model, self.keypoints, self.limbs)
        self.keypoint_names: tuple[str, ...] = self.keypoint_set.names
        self.keypoint_instances: np.ndarray = self.keypoint_set.instances
        self.skeleton: np.ndarray = self.keypoint_set.skeleton

    def _setup_proprioception(self) -> None:
        model = self.model
        qpos, dof, wrap, low, high = [], [], [], [], []
        for name in self.robot_joints:
            joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            if joint < 0:
                raise ValueError(f"robot joint {name!r} is not in the model")
            kind = int(model.jnt_type[joint])  # pybind enums do not compare equal to np.int32
            if kind not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
                raise ValueError(
                    f"robot joint {name!r} is not a hinge or slide joint: override "
                    "proprioception() and proprioception_bounds() for it"
                )
            qpos.append(model.jnt_qposadr[joint])
            dof.append(model.jnt_dofadr[joint])
            if model.jnt_limited[joint]:
                lo, hi = model.jnt_range[joint]
                # Soft joint limits let a joint pass its range slightly: allow for that.
                margin = 0.05 * (hi - lo)
                low.append(lo - margin)
                high.append(hi + margin)
                wrap.append(False)
            elif kind == mujoco.mjtJoint.mjJNT_HINGE:
                low.append(-np.pi)
                high.append(np.pi)
                wrap.append(True)
            else:
                raise ValueError(f"slide joint {name!r} needs a range to bound the state")
        count = len(qpos)
        velocity = np.full(count, self.max_joint_velocity)
        self._proprio_qpos = np.array(qpos, dtype=np.int64)
        self._proprio_dof = np.array(dof, dtype=np.int64)
        self._proprio_wrap = np.array(wrap, dtype=bool)
        self._any_wrap = bool(self._proprio_wrap.any())
        self._proprio_low = np.concatenate([low, -velocity]).astype(np.float32)
        self._proprio_high = np.concatenate([high, velocity]).astype(np.float32)

    # -- gymnasium API ----------------------------------------------------------------------------
    @property
    def dt(self) -> float:
        """Seconds of simulated time per env step."""
        return float(self.model.opt.timestep * self.frame_skip)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.reset_task()
        mujoco.mj_forward(self.model, self.data)
        self.cameras.update(self.data)
        info = self.keypoint_set.deferred_ground_truth(
            self.data, self.cameras, {"is_success": bool(self.is_success())}
        )
        return self._observation(), info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        ctrl = validate_action(action, self.action_space)
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        # mj_step leaves positions of bodies from before its last integration: recompute them so
        # that images, ground truth and proprioception describe the same state.
        mujoco.mj_forward(self.model, self.data)
        if self.cameras.any_moving:
            self.cameras.update(self.data, only_moving=True)
        reward, components = self.task_reward(ctrl)
        info = self.keypoint_set.deferred_ground_truth(
            self.data, self.cameras, {**components, "is_success": bool(self.is_success())}
        )
        return self._observation(), float(reward), bool(self.is_terminated()), False, info

    def render(self) -> np.ndarray | None:
        """The camera views side by side, ``(H, C * W, 3)`` uint8 (``render_mode="rgb_array"``)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        images = self._last_images if self._last_images is not None else self.render_views()
        return tile_views(images)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()

    # -- rendering and ground truth ---------------------------------------------------------------
    @property
    def renderer(self) -> MultiViewRenderer:
        """The env's renderer, created on first use (so that building an env needs no GL)."""
        if self._renderer is None:
            self._renderer = MultiViewRenderer(self.model, self.cameras)
        return self._renderer

    def render_views(self) -> np.ndarray:
        """``(C, H, W, 3)`` uint8 images of the current state from every camera."""
        return self.renderer.render(self.data)

    def scene_depth(self) -> float:
        """Mean camera-frame depth (m) of the ground-truth keypoints over every camera, in the
        current state: the ``mean_depth`` a 3D keypoint learner should assume."""
        return float(np.mean(self.ground_truth()["keypoints_depth"]))

    def render_background(self) -> np.ndarray:
        """``(C, H, W, 3)`` uint8 images of the *empty scene* from every camera: the current
        views without the robot and the objects (every body that can move, mocap targets
        included), as :meth:`render_views` would show them. Keypoint autoencoders weight their
        reconstruction towards what differs from it (:mod:`kp3d.reconstruction`)."""
        return self.renderer.render_background(self.data)

    def ground_truth(self) -> dict[str, np.ndarray]:
        """Ground-truth keypoints and camera matrices of the current state (see class docstring)."""
        return self.keypoint_set.ground_truth(self.data, self.cameras)

    def state_observation(self) -> np.ndarray:
        """The observation of ``obs_mode="state"`` for the current state, in either mode (e.g. for
        a state-based policy acting in an env that renders)."""
        state = np.asarray(self.task_state(), dtype=np.float32)
        return np.clip(state, -self.state_limit, self.state_limit)

    def _observation(self) -> Any:
        if self.obs_mode == "state":
            self._last_images = None
            return self.state_observation()
        images = self.render_views()
        self._last_images = images
        observation = {camera_key(name): images[i] for i, name in enumerate(self.cameras.names)}
        observation[STATE_KEY] = self.proprioception()
        return observation


def perception_defaults(env_id: str, env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hyperparameters of a keypoint learner that depend on the task, as the task suggests them.

    Args:
        env_id: a registered kp3d id.
        env_kwargs: keyword arguments of ``gymnasium.make`` (e.g. other ``cameras``).

    Returns:
        ``{"num_keypoints": the task's learned_keypoints, "mean_depth": its scene depth (m) at a
        reset with seed 0, rounded to cm}``, and ``"coordinate_channels": True`` for a scene
        of several identical instances (its keypoints have more than one ``instance``).
        Identical objects look the same to a convolution's small receptive field; the pixel
        coordinates let a keypoint tell them apart by where they are (on
        ``kp3d/MultiReach-v0`` they take the targets' held-out R² from below 0 to above 0.95;
        BENCHMARKS.md)."""
    kwargs = {**(env_kwargs or {}), "obs_mode": "state"}  # no images needed: no GL context
    env = gym.make(env_id, **kwargs)
    try:
        env.reset(seed=0)
        base = env.unwrapped
        if not isinstance(base, MultiCameraMujocoEnv):
            raise ValueError(f"{env_id} is not a kp3d environment")
        suggested: dict[str, Any] = {
            "num_keypoints": int(base.learned_keypoints),
            "mean_depth": round(base.scene_depth(), 2),
        }
        if len(set(base.keypoint_instances)) > 1:
            suggested["coordinate_channels"] = True
        return suggested
    finally:
        env.close()
