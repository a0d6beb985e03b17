"""The multi-camera wrapper for any MuJoCo-based Gymnasium env (:mod:`envs.wrappers`)."""

from __future__ import annotations

import copy
import doctest
import importlib.util
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

import envs
from envs import wrappers
from envs.cameras import CameraSpec
from envs.wrappers import MultiCameraWrapper, default_cameras
from kp3d import geometry

GROUND_TRUTH_SHAPES = {  # C cameras, J keypoints
    "keypoints_world": lambda C, J: (J, 3),
    "keypoints_pixels": lambda C, J: (C, J, 2),
    "keypoints_depth": lambda C, J: (C, J),
    "keypoints_visible": lambda C, J: (C, J),
    "camera_intrinsics": lambda C, J: (C, 3, 3),
    "camera_extrinsics": lambda C, J: (C, 4, 4),
}


def cheap_rendering(env: gym.Env) -> gym.Env:
    """No shadow maps and no multisampling (with Gymnasium's defaults, 4096x4096 shadow maps and
    4x MSAA, a software-rendered step takes ~0.3 s instead of ~0.01 s); must precede the first
    render. The properties tested here do not depend on image quality."""
    quality = env.unwrapped.model.vis.quality
    quality.shadowsize = 0
    quality.offsamples = 0
    return env


@pytest.fixture(params=["HalfCheetah-v5", "Ant-v5"])
def wrapped(request):
    env = cheap_rendering(MultiCameraWrapper(gym.make(request.param), size=(48, 64)))
    yield env
    env.close()


def test_observation_space(wrapped) -> None:
    space = wrapped.observation_space
    assert isinstance(space, gym.spaces.Dict)
    assert sorted(space) == ["cam_view0", "cam_view1", "cam_view2", "state"]
    for name in ("cam_view0", "cam_view1", "cam_view2"):
        assert space[name] == gym.spaces.Box(0, 255, (48, 64, 3), np.uint8)
    assert space["state"] == wrapped.env.observation_space
    assert wrapped.action_space == wrapped.env.action_space


def test_observations_and_ground_truth(wrapped) -> None:
    observation, info = wrapped.reset(seed=0)
    C, J = len(wrapped.cameras), len(wrapped.keypoint_names)
    assert C == 3
    assert wrapped.unwrapped.model.nbody - 1 == J
    for _ in range(2):
        assert wrapped.observation_space.contains(observation)
        for key, shape in GROUND_TRUTH_SHAPES.items():
            assert info[key].shape == shape(C, J), key
        assert info["keypoints_visible"].dtype == bool
        # The images show something: the robot and the floor, not an empty frame.
        for name in ("cam_view0", "cam_view1", "cam_view2"):
            assert observation[name].std() > 5, name
        # The pixels are the projections of the keypoints with the step's matrices.
        pixels, depth = geometry.project(
            info["keypoints_world"], info["camera_intrinsics"], info["camera_extrinsics"]
        )
        np.testing.assert_allclose(info["keypoints_pixels"], pixels)
        np.testing.assert_allclose(info["keypoints_depth"], depth)
        observation, reward, _, _, info = wrapped.step(wrapped.action_space.sample())
        assert "x_position" in info  # the wrapped env's own info is kept
        assert isinstance(reward, float)
    # The wrapped env's observation is the state, unchanged.
    np.testing.assert_array_equal(observation["state"], wrapped.unwrapped._get_obs())


def test_observations_share_no_memory(wrapped) -> None:
    first, _ = wrapped.reset(seed=0)
    kept = {key: value.copy() for key, value in first.items()}
    wrapped.step(wrapped.action_space.sample())
    wrapped.step(wrapped.action_space.sample())
    for key, value in first.items():
        np.testing.assert_array_equal(value, kept[key], err_msg=key)


def test_default_cameras_track_the_moving_robot(wrapped) -> None:
    model, data = wrapped.unwrapped.model, wrapped.unwrapped.data
    torso = model.body("torso").id
    assert all(spec.kind == "tracking" and spec.body == "torso" for spec in wrapped.cameras.specs)
    assert wrapped.cameras.moving == (True, True, True)
    _, info = wrapped.reset(seed=1)
    previous = info["camera_extrinsics"]
    offset = geometry.camera_centers(previous) - data.subtree_com[torso]
    start = data.subtree_com[torso].copy()
    action = np.ones(wrapped.action_space.shape)
    for step in range(15):
        _, _, _, _, info = wrapped.step(action if step % 4 < 2 else -action)
        extrinsics = info["camera_extrinsics"]
        # The cameras move with the robot's centre of mass and keep their orientation.
        assert np.abs(extrinsics - previous).max() > 1e-6
        # (MuJoCo's GL camera is float32.)
        np.testing.assert_allclose(extrinsics[:, :3, :3], previous[:, :3, :3], atol=1e-6)
        np.testing.assert_allclose(
            geometry.camera_centers(extrinsics) - data.subtree_com[torso], offset, atol=1e-5
        )
        # So the torso stays near the image centre.
        torso_pixels = info["keypoints_pixels"][:, 0]
        assert np.all(np.abs(torso_pixels - [32, 24]) < [16, 12]), torso_pixels
        assert info["keypoints_visible"][:, 0].any()
        previous = extrinsics
    assert np.linalg.norm(data.subtree_com[torso] - start) > 0.01


def test_sb3_check_env_passes_without_warnings(wrapped) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(wrapped)
    assert [str(w.message) for w in caught] == []


def test_render_tiles_the_last_views(wrapped) -> None:
    assert wrapped.render() is None
    observation, _ = wrapped.reset(seed=0)
    tiled = wrapped.render()
    assert tiled.shape == (48, 3 * 64, 3) and tiled.dtype == np.uint8
    np.testing.assert_array_equal(tiled[:, 64:128], observation["cam_view1"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_and_misshapen_actions_are_refused(wrapped, bad: float) -> None:
    """As kp3d's own envs refuse them (Ant-v5 itself returns NaN rewards for a NaN action)."""
    wrapped.reset(seed=0)
    state = wrapped.unwrapped.data.qpos.copy()
    action = np.zeros(wrapped.action_space.shape, np.float32)
    action[1] = bad
    with pytest.raises(ValueError, match="action must be finite"):
        wrapped.step(action)
    with pytest.raises(ValueError, match=r"action must have shape \(\d+,\); got \(3,\)"):
        wrapped.step(np.zeros(3))
    np.testing.assert_array_equal(wrapped.unwrapped.data.qpos, state)  # nothing was simulated
    wrapped.step(np.zeros(wrapped.action_space.shape, np.float32))  # still usable


def test_out_of_range_actions_are_clipped(wrapped) -> None:
    space = wrapped.action_space
    wrapped.reset(seed=0)
    twin = copy.deepcopy(wrapped)
    rng = np.random.default_rng(0)
    for _ in range(3):
        action = rng.uniform(-5, 5, space.shape).astype(np.float32)
        clipped = np.clip(action, space.low, space.high)
        assert not np.array_equal(action, clipped)
        observation, reward, *_ = wrapped.step(action)
        np.testing.assert_array_equal(wrapped.unwrapped.data.ctrl, clipped)
        expected, expected_reward, *_ = twin.step(clipped)
        np.testing.assert_array_equal(observation["state"], expected["state"])
        assert reward == expected_reward
    # Valid actions reach the wrapped env unchanged, in their own precision.
    action = rng.uniform(space.low, space.high).astype(np.float64)
    wrapped.step(action)
    np.testing.assert_array_equal(wrapped.unwrapped.data.ctrl, action)
    twin.close()


def test_outer_wrappers_reach_the_cameras() -> None:
    env = gym.wrappers.RecordEpisodeStatistics(
        cheap_rendering(MultiCameraWrapper(gym.make("HalfCheetah-v5"), size=32))
    )
    try:
        cameras = env.get_wrapper_attr("cameras")
        assert cameras.names == ("view0", "view1", "view2")
        assert env.get_wrapper_attr("keypoint_names")[0] == "torso"
        env.reset(seed=0)
        assert cameras.intrinsics.shape == (3, 3, 3)
    finally:
        env.close()


def test_custom_cameras_and_keypoints() -> None:
    env = cheap_rendering(
        MultiCameraWrapper(
            gym.make("HalfCheetah-v5"),
            size=(40, 56),
            keypoint_bodies=["torso", "ffoot"],
            cameras=[
                CameraSpec.named("side", mjcf_name="track"),
                CameraSpec.free("overview", lookat=(0, 0, 0.5), distance=5.0),
            ],
        )
    )
    try:
        observation, info = env.reset(seed=0)
        assert sorted(observation) == ["cam_overview", "cam_side", "state"]
        assert observation["cam_side"].shape == (40, 56, 3)
        assert env.keypoint_names == ("torso", "ffoot")
        np.testing.assert_array_equal(env.skeleton, np.zeros((0, 2)))  # ffoot is no child of torso
        assert info["keypoints_world"].shape == (2, 3)
        assert env.cameras.moving == (True, False)  # HalfCheetah's "track" camera follows it
    finally:
        env.close()


def test_dict_observations_keep_their_keys() -> None:
    env = cheap_rendering(MultiCameraWrapper(DictObservationEnv(), size=32))
    try:
        assert sorted(env.observation_space) == ["cam_view0", "cam_view1", "cam_view2", "height"]
        observation, _ = env.reset(seed=0)
        assert env.observation_space.contains(observation)
        # The model's first body has no free joint: the default cameras look at it from fixed
        # places.
        assert env.cameras.moving == (False, False, False)
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"keys \['cam_view0'\] clash"):
        MultiCameraWrapper(DictObservationEnv(key="cam_view0"))


def test_default_cameras_for_fixed_and_free_roots() -> None:
    cheetah = gym.make("HalfCheetah-v5").unwrapped.model
    specs = default_cameras(cheetah, count=4)
    assert [spec.azimuth for spec in specs] == [90.0, 180.0, 270.0, 360.0]
    assert {spec.kind for spec in specs} == {"tracking"}
    fixed = DictObservationEnv().model
    assert {spec.kind for spec in default_cameras(fixed)} == {"free"}


def test_docstring_example() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    (test,) = [t for t in finder.find(MultiCameraWrapper, globs={}) if t.examples]
    runner.run(test)
    assert runner.failures == 0


def test_non_mujoco_env_is_rejected() -> None:
    with pytest.raises(
        TypeError,
        match=r"MuJoCo-based env.*`model` \(mujoco.MjModel\).*"
        r"CartPoleEnv",
    ):
        MultiCameraWrapper(gym.make("CartPole-v1"))


def test_bad_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="image size must be positive"):
        MultiCameraWrapper(gym.make("HalfCheetah-v5"), size=(0, 64))


@pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is not None, reason="metaworld is installed"
)
def test_make_metaworld_without_metaworld() -> None:
    with pytest.raises(ImportError, match=r"kp3d\[metaworld\]"):
        envs.make_metaworld("hammer-v3")


def test_metaworld_cameras_are_valid() -> None:
    assert [spec.name for spec in wrappers.METAWORLD_CAMERAS] == ["left", "front", "right"]
    assert all(spec.kind == "free" for spec in wrappers.METAWORLD_CAMERAS)


class DictObservationEnv(gym.Env):
    """A minimal MuJoCo env with a Dict observation and a fixed (non-free) root body."""

    XML = """
<mujoco>
  <worldbody>
    <geom type="plane" size="1 1 0.1"/>
    <body name="slider" pos="0 0 0.2">
      <joint name="lift" type="hinge" axis="0 0 1"/>
      <geom type="box" size="0.1 0.1 0.1" rgba="0.8 0.2 0.2 1"/>
    </body>
  </worldbody>
  <actuator><motor joint="lift"/></actuator>
</mujoco>"""

    def __init__(self, key: str = "height") -> None:
        self.model = mujoco.MjModel.from_xml_string(self.XML)
        self.data = mujoco.MjData(self.model)
        self.key = key
        self.observation_space = gym.spaces.Dict({key: gym.spaces.Box(-10, 10, (1,), np.float64)})
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def _observation(self) -> dict[str, np.ndarray]:
        return {self.key: self.data.qpos[:1].copy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)
        return self._observation(), {}

    def step(self, action):
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data)
        return self._observation(), 0.0, False, False, {}
