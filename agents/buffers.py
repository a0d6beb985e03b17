"""Buffers of observation frames: a ring of frames for unsupervised perception updates
(:class:`FrameBuffer`), and SAC's replay buffer storing each frame once
(:class:`FrameReplayBuffer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize


class FrameBuffer:
    """Keeps the most recent ``capacity`` frames (observation entries, e.g. camera images and
    camera extrinsics) and samples uniform batches of them.

    Frames are stored with their observation space's dtype (``uint8`` images: 36 KB per frame for
    3 cameras at 64x64). Writing past the end wraps around to the start and keeps every frame of
    the batch (the reference implementation drops the part that does not fit). A batch larger
    than the capacity keeps its last ``capacity`` frames.

    Args:
        observation_space: the entries to store, e.g. ``{"cam_front": Box(0, 255, (3, 64, 64),
            uint8), "camera_extrinsics": Box(-inf, inf, (3, 4, 4), float32)}``.
        capacity: number of frames kept.
        seed: seed of the sampling generator.

    Example:
        >>> space = spaces.Dict({"cam": spaces.Box(0, 255, (2,), np.uint8)})
        >>> buffer = FrameBuffer(space, capacity=3)
        >>> buffer.add({"cam": np.array([[1, 1], [2, 2]], np.uint8)})
        >>> buffer.add({"cam": np.array([[3, 3], [4, 4]], np.uint8)})
        >>> len(buffer), sorted(buffer.frames["cam"][:, 0].tolist())
        (3, [2, 3, 4])
    """

    def __init__(self, observation_space: spaces.Dict, capacity: int, seed: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1; got {capacity}")
        if not observation_space.spaces:
            raise ValueError("a FrameBuffer needs at least one observation entry to store")
        self.capacity = int(capacity)
        self.frames: dict[str, np.ndarray] = {
            key: np.zeros((self.capacity, *space.shape), dtype=space.dtype)
            for key, space in observation_space.spaces.items()
        }
        self.position = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Memory held by the stored arrays, in bytes."""
        return sum(array.nbytes for array in self.frames.values())

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append a batch of frames.

        Args:
            batch: for every stored key, ``(N, *shape)`` frames (other keys are ignored).

        Raises:
            ValueError: for a missing key or batches of different lengths.
        """
        missing = sorted(set(self.frames) - set(batch))
        if missing:
            raise ValueError(f"batch lacks {missing}; the buffer stores {sorted(self.frames)}")
        lengths = {len(batch[key]) for key in self.frames}
        if len(lengths) != 1:
            raise ValueError(f"all entries of a batch must have one length; got {lengths}")
        (count,) = lengths
        keep = min(count, self.capacity)
        # Split the write where it passes the end of the arrays: nothing is dropped at the seam.
        first = min(keep, self.capacity - self.position)
        for key, array in self.frames.items():
            values = np.asarray(batch[key])[count - keep :]
            array[self.position : self.position + first] = values[:first]
            array[: keep - first] = values[first:]
        self.position = (self.position + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` frames drawn uniformly (with replacement) from those stored.

        Raises:
            ValueError: if the buffer is empty.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty FrameBuffer")
        indices = self.rng.integers(0, self.size, size=batch_size)
        return {key: array[indices] for key, array in self.frames.items()}


class FrameReplayBuffer(DictReplayBuffer):
    """SB3's ``DictReplayBuffer`` that stores every observation once.

    SB3 keeps each transition's observation and next observation (its ``optimize_memory_usage``
    does not support Dict observations): two copies of every image. Here the next observation of
    a transition is the observation stored in the next slot, except where an episode ended: then
    the final observation (SB3's ``terminal_observation``, whose successor in the slot is the
    next episode's first) is kept beside it until its slot is overwritten. With ``L``-step
    episodes that is ``1 + 1/L`` observations per transition (1.01 for Reach), against 2.

    As in SB3's memory-optimised ``ReplayBuffer``, writing a transition also writes its next
    observation into the next slot, so once the buffer is full the slot at ``pos`` (the oldest
    transition, whose observation was just overwritten) is never sampled. Arguments as
    ``DictReplayBuffer``'s; ``optimize_memory_usage`` is accepted and ignored (always on).

    Attributes:
        finals: ``{slot * n_envs + env: observation}`` final observations of episodes that ended
            at that transition.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
    ) -> None:
        # DictReplayBuffer.__init__ would allocate the second copy: set up its fields here
        # (what differs: no next_observations arrays).
        BaseBuffer.__init__(
            self, buffer_size, observation_space, action_space, device, n_envs=n_envs
        )
        if not isinstance(self.obs_shape, dict):
            raise TypeError(
                f"FrameReplayBuffer needs a Dict observation space; got {observation_space}"
            )
        self.buffer_size = max(buffer_size // n_envs, 1)
        if self.buffer_size < 2:
            raise ValueError(
                f"buffer_size must hold at least 2 transitions per env; got {buffer_size}"
            )
        self.optimize_memory_usage = True
        self.observations = {
            key: np.zeros(
                (self.buffer_size, self.n_envs, *shape), dtype=observation_space[key].dtype
            )
            for key, shape in self.obs_shape.items()
        }
        self.actions = np.zeros(
            (self.buffer_size, self.n_envs, self.action_dim),
            dtype=self._maybe_cast_dtype(action_space.dtype),
        )
        self.rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.dones = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.handle_timeout_termination = handle_timeout_termination
        self.timeouts = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.finals: dict[int, dict[str, np.ndarray]] = {}

    @property
    def nbytes(self) -> int:
        """Memory of the stored arrays and final observations, in bytes."""
        arrays = [*self.observations.values(), self.actions, self.rewards, self.dones]
        total = sum(array.nbytes for array in [*arrays, self.timeouts])
        return total + sum(v.nbytes for final in self.finals.values() for v in final.values())

    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        following = (self.pos + 1) % self.buffer_size
        for key, array in self.observations.items():
            array[self.pos] = np.asarray(obs[key]).reshape(self.n_envs, *self.obs_shape[key])
            array[following] = np.asarray(next_obs[key]).reshape(self.n_envs, *self.obs_shape[key])
        for env in range(self.n_envs):
            self.finals.pop(self.pos * self.n_envs + env, None)
            if done[env]:
                self.finals[self.pos * self.n_envs + env] = {
                    key: np.array(next_obs[key][env]) for key in self.observations
                }
        self.actions[self.pos] = np.asarray(action).reshape(self.n_envs, self.action_dim)
        self.rewards[self.pos] = np.asarray(reward)
        self.dones[self.pos] = np.asarray(done)
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = [info.get("TimeLimit.truncated", False) for info in infos]
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def sample(  # type: ignore[override]
        self, batch_size: int, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        """``batch_size`` transitions drawn uniformly from those whose next observation is
        stored (all but the slot at ``pos`` once the buffer is full)."""
        if self.full:
            indices = (np.random.randint(1, self.buffer_size, size=batch_size) + self.pos) % (
                self.buffer_size
            )
        else:
            indices = np.random.randint(0, self.pos, size=batch_size)
        return self._get_samples(indices, env=env)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> DictReplayBufferSamples:
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        following = (batch_inds + 1) % self.buffer_size
        observations = {
            key: array[batch_inds, env_indices] for key, array in self.observations.items()
        }
        next_observations = {
            key: array[following, env_indices] for key, array in self.observations.items()
        }
        for row, flat in enumerate(batch_inds * self.n_envs + env_indices):
            final = self.finals.get(int(flat))
            if final is not None:
                for key, value in final.items():
                    next_observations[key][row] = value
        obs_ = self._normalize_obs(observations, env)
        next_obs_ = self._normalize_obs(next_observations, env)
        assert isinstance(obs_, dict) and isinstance(next_obs_, dict)
        dones = self.dones[batch_inds, env_indices] * (1 - self.timeouts[batch_inds, env_indices])
        return DictReplayBufferSamples(
            observations={key: self.to_torch(value) for key, value in obs_.items()},
            actions=self.to_torch(self.actions[batch_inds, env_indices]),
            next_observations={key: self.to_torch(value) for key, value in next_obs_.items()},
            dones=self.to_torch(dones).reshape(-1, 1),
            rewards=self.to_torch(
                self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env)
            ),
        )


__all__ = ["FrameBuffer", "FrameReplayBuffer"]
