"""Run envs: camera layouts, extrinsics in the observation for moving cameras, wrapper order."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.vec_env import VecNormalize, VecTransposeImage

from agents.environment import (
    EXTRINSICS_KEY,
    CameraMatricesObservation,
    build_vec_env,
    camera_layout,
)


def test_layouts_of_fixed_moving_and_state_envs() -> None:
    reach = camera_layout("kp3d/Reach-v0")
    assert reach is not None and reach.names == ("front", "side", "top")
    assert reach.intrinsics.shape == (3, 3, 3) and reach.extrinsics.shape == (3, 4, 4)
    assert not reach.any_moving and reach.image_size == (64, 64)
    ant = camera_layout("kp3d/Ant-v0")
    assert ant is not None and ant.any_moving
    assert camera_layout("kp3d/Reach-v0", {"obs_mode": "state"}) is None


@pytest.mark.filterwarnings("ignore:.*(infinity|different from the unwrapped)")
def test_moving_cameras_put_this_step_s_extrinsics_in_the_observation() -> None:
    env = CameraMatricesObservation(gym.make("kp3d/Ant-v0"))
    observation, info = env.reset(seed=0)
    assert env.observation_space[EXTRINSICS_KEY].shape == (3, 4, 4)
    np.testing.assert_allclose(observation[EXTRINSICS_KEY], info["camera_extrinsics"], atol=1e-6)
    first = observation[EXTRINSICS_KEY]
    for _ in range(5):
        observation, _, _, _, info = env.step(env.action_space.sample())
    assert observation[EXTRINSICS_KEY].dtype == np.float32
    np.testing.assert_allclose(observation[EXTRINSICS_KEY], info["camera_extrinsics"], atol=1e-6)
    assert not np.allclose(observation[EXTRINSICS_KEY], first)  # the cameras followed the ant
    check_env(env, skip_render_check=True)
    env.close()


def test_training_and_evaluation_envs_have_the_same_wrappers() -> None:
    layout = camera_layout("kp3d/Reach-v0")
    train = build_vec_env("kp3d/Reach-v0", {}, 2, 0, layout, normalize_reward=True)
    evaluation = build_vec_env(
        "kp3d/Reach-v0", {}, 1, 1, layout, normalize_reward=True, training=False
    )
    for env in (train, evaluation):
        assert isinstance(env, VecTransposeImage) and isinstance(env.venv, VecNormalize)
        assert env.observation_space["cam_front"].shape == (3, 64, 64)
    assert train.venv.norm_reward and not evaluation.venv.norm_reward
    assert not evaluation.venv.training
    train.close()
    evaluation.close()
