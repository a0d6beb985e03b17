"""The frame buffer keeps the most recent frames, including across the wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer

from agents.buffers import FrameBuffer, FrameReplayBuffer


def _buffer(capacity: int) -> FrameBuffer:
    space = spaces.Dict(
        {
            "cam_a": spaces.Box(0, 255, (3, 2, 2), np.uint8),
            "camera_extrinsics": spaces.Box(-np.inf, np.inf, (1, 4, 4), np.float32),
        }
    )
    return FrameBuffer(space, capacity, seed=0)


def _frames(start: int, count: int) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + count)
    return {
        "cam_a": np.broadcast_to(ids[:, None, None, None], (count, 3, 2, 2)).astype(np.uint8),
        "camera_extrinsics": np.broadcast_to(ids[:, None, None, None], (count, 1, 4, 4)).astype(
            np.float32
        ),
    }


def _stored(buffer: FrameBuffer) -> list[int]:
    return sorted(buffer.frames["cam_a"][: len(buffer), 0, 0, 0].tolist())


def test_wrap_around_keeps_every_frame_of_the_batch() -> None:
    buffer = _buffer(10)
    buffer.add(_frames(0, 7))
    buffer.add(_frames(7, 6))  # 3 frames fit before the end, 3 go to the start
    assert len(buffer) == 10
    assert _stored(buffer) == list(range(3, 13))
    # Images and extrinsics of one frame stay together.
    np.testing.assert_array_equal(
        buffer.frames["cam_a"][:, 0, 0, 0], buffer.frames["camera_extrinsics"][:, 0, 0, 0]
    )


def test_a_batch_larger_than_the_buffer_keeps_its_last_frames() -> None:
    buffer = _buffer(4)
    buffer.add(_frames(0, 3))
    buffer.add(_frames(3, 9))
    assert _stored(buffer) == [8, 9, 10, 11]


def test_samples_come_from_stored_frames_only() -> None:
    buffer = _buffer(100)
    buffer.add(_frames(50, 5))
    batch = buffer.sample(64)
    assert batch["cam_a"].shape == (64, 3, 2, 2) and batch["cam_a"].dtype == np.uint8
    assert set(batch["cam_a"][:, 0, 0, 0].tolist()) <= set(range(50, 55))
    assert buffer.nbytes == 100 * (12 + 16 * 4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        _buffer(3).sample(1)
    with pytest.raises(ValueError, match="lacks"):
        _buffer(3).add({"cam_a": np.zeros((1, 3, 2, 2), np.uint8)})
    with pytest.raises(ValueError, match="capacity"):
        _buffer(0)


# -- the replay buffer that stores each frame once ------------------------------------------------


def _replay_pair(capacity: int, n_envs: int) -> tuple[FrameReplayBuffer, DictReplayBuffer]:
    space = spaces.Dict(
        {
            "cam_a": spaces.Box(0, 255, (2, 2, 3), np.uint8),
            "state": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        }
    )
    actions = spaces.Box(-1.0, 1.0, (1,), np.float32)
    return (
        FrameReplayBuffer(capacity, space, actions, device="cpu", n_envs=n_envs),
        DictReplayBuffer(capacity, space, actions, device="cpu", n_envs=n_envs),
    )


def _observation(ids: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "cam_a": np.broadcast_to(ids[:, None, None, None] % 256, (len(ids), 2, 2, 3)).astype(
            np.uint8
        ),
        "state": np.stack([ids, -ids], axis=1).astype(np.float32),
    }


@pytest.mark.parametrize("n_envs", [1, 3])
def test_replay_samples_equal_those_of_sb3_s_buffer(n_envs: int) -> None:
    """Episodes of different lengths (ends marked by SB3's final observations, some cut by the
    time limit), through two wrap-arounds: every sampled transition equals the one SB3's
    DictReplayBuffer returns for the same index."""
    ours, theirs = _replay_pair(capacity=24 * n_envs, n_envs=n_envs)
    rng = np.random.default_rng(0)
    counter = np.arange(n_envs) * 1000
    current = _observation(counter)
    for _ in range(60):
        following_ids = counter + 1
        done = rng.random(n_envs) < 0.15
        truncated = done & (rng.random(n_envs) < 0.5)
        # The final observation of an ended episode differs from the next episode's first.
        next_ids = np.where(done, following_ids + 500, following_ids)
        next_obs = _observation(next_ids)
        infos = [{"TimeLimit.truncated": bool(t)} for t in truncated]
        action = rng.uniform(-1, 1, (n_envs, 1)).astype(np.float32)
        reward = rng.normal(size=n_envs).astype(np.float32)
        for buffer in (ours, theirs):
            buffer.add(
                {k: v.copy() for k, v in current.items()},
                {k: v.copy() for k, v in next_obs.items()},
                action,
                reward,
                done.astype(np.float32),
                infos,
            )
        counter = np.where(done, following_ids + 10_000, following_ids)  # reset: new ids
        current = _observation(counter)
    valid = np.array([i for i in range(ours.buffer_size) if i != ours.pos])
    for seed in range(3):
        np.random.seed(seed)
        a = ours._get_samples(valid)
        np.random.seed(seed)
        b = theirs._get_samples(valid)
        for key in ("cam_a", "state"):
            torch.testing.assert_close(a.observations[key], b.observations[key])
            torch.testing.assert_close(a.next_observations[key], b.next_observations[key])
        for name in ("actions", "rewards", "dones"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name))
    # Samples never include the slot whose next observation is not stored.
    drawn: list[np.ndarray] = []
    get_samples = ours._get_samples
    ours._get_samples = lambda indices, env=None: drawn.append(indices) or get_samples(indices, env)
    assert ours.full and len(ours.sample(500).actions) == 500
    assert ours.pos not in drawn[0] and len(set(drawn[0].tolist())) == ours.buffer_size - 1


def test_replay_buffer_bytes_per_transition() -> None:
    """Reach-like episodes of 100 steps: 1 + 1/100 observations per transition."""
    ours, _ = _replay_pair(capacity=1000, n_envs=1)
    observation = _observation(np.zeros(1, np.int64))
    for step in range(1000):
        done = np.array([(step + 1) % 100 == 0], np.float32)
        ours.add(observation, observation, np.zeros((1, 1)), np.zeros(1), done, [{}])
    per_observation = sum(a[0, 0].nbytes for a in ours.observations.values())
    finals = sum(v.nbytes for final in ours.finals.values() for v in final.values())
    assert len(ours.finals) == 10
    assert finals == 10 * per_observation
    assert (ours.nbytes - ours.actions.nbytes - 3 * ours.rewards.nbytes) / 1000 <= (
        1.05 * per_observation
    )
    with pytest.raises(ValueError, match="at least 2"):
        _replay_pair(capacity=1, n_envs=1)
