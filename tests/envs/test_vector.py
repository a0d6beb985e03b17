"""Vectorised kp3d environments (:func:`envs.make_vec_env`)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import envs
from envs.vector import START_METHODS

CAMERA_KEYS = ("cam_front", "cam_side", "cam_top")
REPO = Path(__file__).resolve().parents[2]


def check_vec_env(vec_env, n_envs: int, size: int = 64) -> dict[str, np.ndarray]:
    """Reset and step ``vec_env``; returns the first observation."""
    assert vec_env.num_envs == n_envs
    assert isinstance(vec_env.observation_space, gym.spaces.Dict)
    first = vec_env.reset()
    assert sorted(first) == sorted([*CAMERA_KEYS, "state"])
    for key in CAMERA_KEYS:
        assert first[key].shape == (n_envs, size, size, 3) and first[key].dtype == np.uint8
        assert first[key].std() > 5  # rendered, not blank
    assert first["state"].shape == (n_envs, 4)
    actions = np.stack([vec_env.action_space.sample() for _ in range(n_envs)])
    for _ in range(3):
        observation, rewards, dones, infos = vec_env.step(actions)
        assert rewards.shape == (n_envs,) and dones.shape == (n_envs,)
        assert len(infos) == n_envs and infos[0]["keypoints_pixels"].shape == (3, 4, 2)
        assert all(vec_env.observation_space[k].contains(observation[k][0]) for k in observation)
    return first


def test_subproc_and_dummy(request) -> None:
    """Worker processes give what one process gives for the same seed; close() ends them. (One
    test: each worker start imports SB3 and torch, seconds on a small CPU.)"""
    subproc = envs.make_vec_env("kp3d/Reach-v0", n_envs=2, seed=7, vectorization="subproc")
    request.addfinalizer(subproc.close)
    dummy = envs.make_vec_env("kp3d/Reach-v0", n_envs=2, seed=7, vectorization="dummy")
    request.addfinalizer(dummy.close)
    assert isinstance(subproc, SubprocVecEnv) and isinstance(dummy, DummyVecEnv)
    first = check_vec_env(subproc, 2)
    for key, value in check_vec_env(dummy, 2).items():
        np.testing.assert_array_equal(first[key], value, err_msg=key)
    # Env i is seeded with seed + i: different arms and targets, so different images.
    for key in CAMERA_KEYS:
        assert not np.array_equal(first[key][0], first[key][1]), key
    processes = list(subproc.processes)
    assert all(process.is_alive() for process in processes)
    subproc.close()
    assert not any(process.is_alive() for process in processes)
    assert [process.exitcode for process in processes] == [0, 0]


def test_env_kwargs_and_callables(request) -> None:
    vec_env = envs.make_vec_env(
        "kp3d/Reach-v0", n_envs=1, seed=0, vectorization="dummy", env_kwargs={"size": 32}
    )
    request.addfinalizer(vec_env.close)
    check_vec_env(vec_env, 1, size=32)
    from_callable = envs.make_vec_env(
        lambda: gym.make("kp3d/Reach-v0", size=32), n_envs=1, seed=0, vectorization="dummy"
    )
    request.addfinalizer(from_callable.close)
    again = envs.make_vec_env(
        "kp3d/Reach-v0", n_envs=1, seed=0, vectorization="dummy", env_kwargs={"size": 32}
    )
    request.addfinalizer(again.close)
    np.testing.assert_array_equal(from_callable.reset()["cam_top"], again.reset()["cam_top"])


def test_fork_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"start_method must be one of \[.*'spawn'.*\]; got "
        r"'fork' \(fork is unsafe",
    ):
        envs.make_vec_env("kp3d/Reach-v0", n_envs=2, vectorization="subproc", start_method="fork")


def test_unknown_start_method_is_refused() -> None:
    with pytest.raises(ValueError, match="got 'threads'"):
        envs.make_vec_env("kp3d/Reach-v0", n_envs=2, start_method="threads")


def test_default_start_method_is_not_fork() -> None:
    assert "fork" not in START_METHODS
    available = multiprocessing.get_all_start_methods()
    assert any(method in available for method in START_METHODS)


@pytest.mark.parametrize("n_envs", [0, -1])
def test_bad_n_envs(n_envs: int) -> None:
    with pytest.raises(ValueError, match=rf"n_envs must be >= 1; got {n_envs}"):
        envs.make_vec_env("kp3d/Reach-v0", n_envs=n_envs)


def test_bad_vectorization() -> None:
    with pytest.raises(ValueError, match=r"'subproc' or 'dummy'; got 'threads'"):
        envs.make_vec_env("kp3d/Reach-v0", n_envs=2, vectorization="threads")


def test_script_read_from_stdin() -> None:
    """``python - <<EOF`` works: workers cannot run a script without a file again (it used to end
    in FileNotFoundError '<stdin>' in every worker and ConnectionResetError here), so they skip
    it; envs from an id and from a callable defined in the script both start."""
    script = textwrap.dedent(
        """
        import sys

        import gymnasium as gym

        import envs

        by_id = envs.make_vec_env("kp3d/Reach-v0", n_envs=2, seed=0, env_kwargs={"size": 32})
        by_callable = envs.make_vec_env(lambda: gym.make("kp3d/Reach-v0", size=32), seed=0)
        first, again = by_id.reset(), by_callable.reset()
        print("shapes", first["cam_top"].shape, again["cam_top"].shape)
        print("same", bool((first["cam_top"][0] == again["cam_top"][0]).all()))
        print("file", sys.modules["__main__"].__file__)
        by_id.close()
        by_callable.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-"],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MUJOCO_GL": "egl"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == [
        "shapes (2, 32, 32, 3) (1, 32, 32, 3)",
        "same True",
        "file <stdin>",  # restored after the workers started
    ]
