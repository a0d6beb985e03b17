"""Envs can be pickled and deep-copied, and a copy behaves as the original from then on.

MuJoCo's rendering objects (``MjvCamera``, ``MjvScene``, ``MjrContext``...) cannot be pickled:
the classes that own them drop them and build them again (:class:`envs.cameras.Cameras`,
:class:`envs.rendering.MultiViewRenderer`, :class:`envs.wrappers.MultiCameraWrapper`).
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs
from envs.cameras import Cameras

COPIES: dict[str, Callable[[gym.Env], gym.Env]] = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda env: pickle.loads(pickle.dumps(env)),
}

ENVS: dict[str, Callable[[], gym.Env]] = {
    "Reach": lambda: gym.make("kp3d/Reach-v0", size=48),
    "Push": lambda: gym.make("kp3d/Push-v0", size=48),
    "Reach-state": lambda: gym.make("kp3d/Reach-v0", obs_mode="state"),
    "wrapped-Reacher-v5": lambda: envs.MultiCameraWrapper(gym.make("Reacher-v5"), size=48),
    "wrapped-InvertedPendulum-v5": lambda: envs.MultiCameraWrapper(
        gym.make("InvertedPendulum-v5"), size=48
    ),
}


def assert_same_step(a: tuple, b: tuple, what: str) -> None:
    observation_a, reward_a, *ends_a, info_a = a
    observation_b, reward_b, *ends_b, info_b = b
    if isinstance(observation_a, dict):
        assert observation_a.keys() == observation_b.keys()
        for key in observation_a:
            np.testing.assert_array_equal(observation_a[key], observation_b[key], err_msg=what)
    else:
        np.testing.assert_array_equal(observation_a, observation_b, err_msg=what)
    assert reward_a == reward_b, what
    assert ends_a == ends_b, what
    for key in ("keypoints_world", "keypoints_pixels", "keypoints_visible", "camera_extrinsics"):
        np.testing.assert_array_equal(info_a[key], info_b[key], err_msg=f"{what}: {key}")


def as_step(reset: tuple) -> tuple:
    observation, info = reset
    return observation, 0.0, False, False, info


@pytest.mark.parametrize("how", sorted(COPIES))
@pytest.mark.parametrize("name", sorted(ENVS))
def test_a_copy_continues_as_the_original(name: str, how: str) -> None:
    env = ENVS[name]()
    try:
        env.reset(seed=3)
        env.action_space.seed(3)
        for _ in range(4):
            env.step(env.action_space.sample())
        if isinstance(env.unwrapped, envs.MultiCameraMujocoEnv):
            env.unwrapped.render_views()  # a renderer with its GL context exists, in any mode
        twin = COPIES[how](env)
        assert twin.unwrapped is not env.unwrapped
        assert twin.unwrapped.data is not env.unwrapped.data
        actions = [env.action_space.sample() for _ in range(6)]
        for step, action in enumerate(actions):
            assert_same_step(env.step(action), twin.step(action), f"{name}, step {step}")
        # The random generators were copied too: the next (unseeded) episodes start alike.
        assert_same_step(as_step(env.reset()), as_step(twin.reset()), f"{name}, reset")
        # And the copy is independent: stepping only the original changes only the original.
        before = twin.unwrapped.data.qpos.copy()
        env.step(actions[0])
        np.testing.assert_array_equal(twin.unwrapped.data.qpos, before)
        twin.close()
    finally:
        env.close()


@pytest.mark.parametrize("how", sorted(COPIES))
def test_envs_copy_before_reset_and_without_rendering(how: str) -> None:
    for make in (lambda: gym.make("kp3d/MultiReach-v0", size=32), ENVS["wrapped-Reacher-v5"]):
        env = make()
        twin = COPIES[how](env)
        assert_same_step(as_step(env.reset(seed=1)), as_step(twin.reset(seed=1)), "reset")
        env.close()
        twin.close()


def test_cameras_copy_their_matrices_and_mujoco_cameras() -> None:
    env = gym.make("kp3d/Ant-v0", size=32)  # tracking cameras: matrices that move
    try:
        env.reset(seed=0)
        env.step(env.action_space.sample())
        cameras: Cameras = env.unwrapped.cameras
        for how, copier in COPIES.items():
            twin = copier(cameras)
            assert twin.names == cameras.names and twin.moving == cameras.moving, how
            np.testing.assert_array_equal(twin.intrinsics, cameras.intrinsics)
            np.testing.assert_array_equal(twin.extrinsics, cameras.extrinsics)
            np.testing.assert_array_equal(
                twin.scaled_intrinsics(96, 64), cameras.scaled_intrinsics(96, 64)
            )
            for index in range(len(cameras)):
                a, b = cameras.mjv_camera(index), twin.mjv_camera(index)
                assert (a.type, a.trackbodyid, a.distance) == (b.type, b.trackbodyid, b.distance)
                np.testing.assert_array_equal(a.lookat, b.lookat)
    finally:
        env.close()


def test_a_copied_renderer_draws_the_same_views() -> None:
    env = gym.make("kp3d/Push-v0", size=40)
    try:
        env.reset(seed=2)
        renderer = env.unwrapped.renderer
        twin = copy.deepcopy(renderer)
        assert twin is not renderer
        np.testing.assert_array_equal(twin.render(env.unwrapped.data), env.unwrapped.render_views())
        twin.close()
    finally:
        env.close()


class PlainPendulum(gym.Env):
    """A MuJoCo env with no pickling of its own: copies copy its model and data."""

    XML = """
<mujoco>
  <worldbody>
    <geom type="plane" size="1 1 0.1"/>
    <body name="pole" pos="0 0 0.5">
      <joint name="hinge" type="hinge" axis="0 1 0"/>
      <geom type="capsule" fromto="0 0 0 0 0 0.5" size="0.05"/>
    </body>
  </worldbody>
  <actuator><motor joint="hinge" ctrlrange="-1 1"/></actuator>
</mujoco>"""

    def __init__(self) -> None:
        self.model = mujoco.MjModel.from_xml_string(self.XML)
        self.data = mujoco.MjData(self.model)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def _observation(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[0] = self.np_random.uniform(-0.5, 0.5)
        mujoco.mj_forward(self.model, self.data)
        return self._observation(), {}

    def step(self, action):
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=5)
        return self._observation(), -abs(float(self.data.qpos[0])), False, False, {}


@pytest.mark.parametrize("how", sorted(COPIES))
def test_wrapped_env_without_pickling_of_its_own(how: str) -> None:
    env = envs.MultiCameraWrapper(PlainPendulum(), size=32)
    try:
        env.reset(seed=0)
        env.step(np.ones(1, np.float32))
        twin = COPIES[how](env)
        assert twin.unwrapped.data is twin._data  # bound to the copied env's own data
        for action in (np.ones(1, np.float32), -np.ones(1, np.float32)):
            assert_same_step(env.step(action), twin.step(action), how)
        assert_same_step(as_step(env.reset()), as_step(twin.reset()), f"{how}, reset")
    finally:
        env.close()
