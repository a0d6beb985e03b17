"""Meta-World through kp3d's cameras (:func:`envs.make_metaworld`).

Meta-World 3.x pins ``mujoco==3.3.0``: these tests run in the virtualenv that ``make
test-metaworld`` builds (and are skipped where Meta-World is not installed). Meta-World's own
scripted policies solve its tasks; through the wrapper they must succeed exactly as often, episode
for episode, as on the unwrapped envs with the same seeds: the wrapper renders and reports ground
truth without changing the simulation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import envs

metaworld = pytest.importorskip("metaworld")
policies = pytest.importorskip("metaworld.policies")

POLICIES = {
    "reach-v3": "SawyerReachV3Policy",
    "push-v3": "SawyerPushV3Policy",
    "drawer-open-v3": "SawyerDrawerOpenV3Policy",
}
EPISODES = 3
SEED = 7


def run_policy(
    env: gym.Env, policy: Any, state: Callable[[Any], np.ndarray], episodes: int
) -> list[tuple[bool, int, list[float]]]:
    """Per episode: success, steps to success (or the episode's length) and the rewards."""
    results = []
    observation, _ = env.reset(seed=SEED)
    for episode in range(episodes):
        if episode:
            observation, _ = env.reset()
        rewards: list[float] = []
        success = False
        while not success:
            action = policy.get_action(state(observation))
            observation, reward, terminated, truncated, info = env.step(action)
            rewards.append(float(reward))
            success = bool(info["success"])
            if terminated or truncated:
                break
        results.append((success, len(rewards), rewards))
    return results


@pytest.mark.parametrize("task", sorted(POLICIES))
def test_scripted_policies_succeed_as_often_through_the_wrapper(task: str) -> None:
    policy = getattr(policies, POLICIES[task])()
    plain = gym.make("Meta-World/MT1", env_name=task, seed=SEED)
    wrapped = envs.make_metaworld(task, size=48, seed=SEED)
    try:
        expected = run_policy(plain, policy, lambda observation: observation, EPISODES)
        got = run_policy(wrapped, policy, lambda observation: observation["state"], EPISODES)
        # Meta-World's scripted policies solve these tasks.
        assert sum(success for success, _, _ in expected) >= EPISODES - 1, expected
        assert [(s, n) for s, n, _ in got] == [(s, n) for s, n, _ in expected]
        # The same trajectories: the wrapper changes nothing in the simulation.
        assert [r for _, _, r in got] == [r for _, _, r in expected]
    finally:
        plain.close()
        wrapped.close()


def test_wrapped_metaworld_observations_and_ground_truth() -> None:
    env = envs.make_metaworld("hammer-v3", size=48, seed=0)
    try:
        observation, info = env.reset(seed=0)
        assert sorted(observation) == ["cam_front", "cam_left", "cam_right", "state"]
        # (Meta-World's own state is not always inside its space: its goal bounds are zeros.)
        for name in ("cam_front", "cam_left", "cam_right"):
            assert env.observation_space[name].contains(observation[name])
            assert observation[name].std() > 5, name  # the table and the robot are in view
        count = len(env.keypoint_names)
        assert info["keypoints_pixels"].shape == (3, count, 2)
        assert info["keypoints_visible"].any()
        observation, _, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
        assert "success" in info  # Meta-World's own info is kept
        with pytest.raises(ValueError, match="finite"):
            env.step(np.full(env.action_space.shape, np.nan, np.float32))
    finally:
        env.close()
