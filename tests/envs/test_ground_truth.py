"""Ground truth on demand (:mod:`envs.ground_truth`): computed when read, exact whenever read."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs
from envs.ground_truth import DEFERRED_KEYS, GroundTruthInfo

GROUND_TRUTH_KEYS = (*DEFERRED_KEYS, "camera_intrinsics", "camera_extrinsics")


@pytest.fixture
def ray_casts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the occlusion ray caster (one per camera per computation)."""
    calls: list[int] = []
    real = mujoco.mj_multiRay

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    counting.__doc__ = real.__doc__  # its signature, for envs.compat
    monkeypatch.setattr(mujoco, "mj_multiRay", counting)
    return calls


def test_ground_truth_is_computed_only_when_read(ray_casts: list[int]) -> None:
    env = gym.make("kp3d/Reach-v0", obs_mode="state")
    try:
        env.reset(seed=0)
        # (Gymnasium's passive env checker compares the infos of the reset and the first two
        # steps, which reads them.)
        for _ in range(2):
            env.step(env.action_space.sample())
        casts = len(ray_casts)
        infos = [env.step(env.action_space.sample())[-1] for _ in range(20)]
        assert len(ray_casts) == casts  # nothing read, nothing cast
        # The camera matrices are there at once; reading them casts nothing.
        assert infos[-1]["camera_extrinsics"].shape == (3, 4, 4)
        assert "keypoints_visible" in infos[-1] and len(infos[-1]) == len(infos[0])
        assert len(ray_casts) == casts
        infos[-1]["keypoints_visible"]
        assert len(ray_casts) == casts + 3  # one ray bundle per camera, for this info only
        infos[-1]["keypoints_pixels"], infos[-1]["keypoints_world"]
        assert len(ray_casts) == casts + 3
    finally:
        env.close()


def wrapped_ant() -> gym.Env:
    return envs.MultiCameraWrapper(gym.make("Ant-v5"), size=48)


@pytest.mark.parametrize("make", [lambda: gym.make("kp3d/Ant-v0", size=48), wrapped_ant])
def test_ground_truth_read_late_equals_the_steps_own(make) -> None:
    """Infos read after the env moved on (further steps, a reset) give their own step's values,
    those that an immediate, eager computation gives (occluded keypoints included)."""
    env = make()
    try:
        base = env.unwrapped
        keypoints = getattr(base, "keypoint_set", None) or env.keypoints
        env.action_space.seed(0)
        records = [env.reset(seed=0)[1]]
        eager = [keypoints.ground_truth(base.data, env.get_wrapper_attr("cameras"))]
        for _ in range(25):
            records.append(env.step(env.action_space.sample())[-1])
            eager.append(keypoints.ground_truth(base.data, env.get_wrapper_attr("cameras")))
        env.reset(seed=1)
        env.step(env.action_space.sample())
        hidden = 0
        for step, (info, expected) in enumerate(zip(records, eager, strict=True)):
            for key in GROUND_TRUTH_KEYS:
                np.testing.assert_array_equal(info[key], expected[key], err_msg=f"{step} {key}")
            hidden += int((~expected["keypoints_visible"]).sum())
        assert hidden > 0  # the occlusion rays were put to the test
    finally:
        env.close()


def test_the_info_is_a_dict_to_every_reader(ray_casts: list[int]) -> None:
    env = gym.make("kp3d/Push-v0", obs_mode="state")
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(env.action_space.sample())
        assert isinstance(info, dict)
        assert {"is_success", *GROUND_TRUTH_KEYS} <= set(info.keys())
        assert any(key.startswith("reward_") for key in info)
        assert len(info) == len(set(info))

        fresh = lambda: env.step(env.action_space.sample())[-1]  # noqa: E731
        for merge in (
            lambda d: {**d},
            dict,
            lambda d: d.copy(),
            copy.copy,
            lambda d: pickle.loads(pickle.dumps(d)),
        ):
            info = fresh()
            expected = env.unwrapped.ground_truth()
            assert isinstance(info, GroundTruthInfo)
            merged = merge(info)
            assert type(merged) is dict
            assert merged.keys() == info.keys()
            for key in GROUND_TRUTH_KEYS:
                np.testing.assert_array_equal(merged[key], expected[key], err_msg=key)
        # A deep copy (SB3's DummyVecEnv deep-copies every info) stays deferred, and shares no
        # array with the original.
        info = fresh()
        casts = len(ray_casts)
        twin = copy.deepcopy(info)
        assert len(ray_casts) == casts
        assert isinstance(twin, GroundTruthInfo)
        np.testing.assert_array_equal(twin["keypoints_pixels"], info["keypoints_pixels"])
        assert len(ray_casts) == casts + len(env.unwrapped.cameras)  # computed once for both
        assert not np.shares_memory(twin["keypoints_pixels"], info["keypoints_pixels"])
        # get(), pop(), iteration, repr.
        info = fresh()
        assert info.get("keypoints_depth") is not None and info.get("nope", 3) == 3
        assert info.pop("keypoints_world").shape == (len(env.unwrapped.keypoint_names), 3)
        assert "keypoints_world" not in info
        assert "keypoints_visible" in repr(fresh())
        assert set(iter(fresh())) >= set(GROUND_TRUTH_KEYS)
        # A value set by the caller before reading is kept.
        info = fresh()
        info["keypoints_pixels"] = "mine"
        assert info["keypoints_pixels"] == "mine" and info["keypoints_depth"].ndim == 2
    finally:
        env.close()


def test_vectorised_envs_report_exact_ground_truth_of_every_step(ray_casts: list[int]) -> None:
    """Through SB3's DummyVecEnv (deep-copied infos, and a reset inside the episode's last
    step before its info is read), with nothing computed until read."""
    steps = 100  # kp3d/Reach-v0's episode length: the last step resets the env
    vec_env = envs.make_vec_env(
        "kp3d/Reach-v0", 1, seed=5, vectorization="dummy", env_kwargs={"obs_mode": "state"}
    )
    reference = gym.make("kp3d/Reach-v0", obs_mode="state")
    try:
        vec_env.reset()
        reference.reset(seed=5)
        rng = np.random.default_rng(0)
        actions = rng.uniform(-1, 1, (steps, 1, 2)).astype(np.float32)
        infos = []
        for action in actions:
            _, _, dones, step_infos = vec_env.step(action)
            infos.append(step_infos[0])
        assert dones[0] and "terminal_observation" in infos[-1]
        assert len(ray_casts) <= 3 * 3  # the passive env checker's reads only (see above)
        expected = []
        for action in actions:
            reference.step(action[0])
            expected.append(reference.unwrapped.ground_truth())
        for step, (info, truth) in enumerate(zip(infos, expected, strict=True)):
            for key in GROUND_TRUTH_KEYS:
                np.testing.assert_array_equal(info[key], truth[key], err_msg=f"{step} {key}")
    finally:
        vec_env.close()
        reference.close()
