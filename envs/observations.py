"""What an observation of a kp3d env is: its keys, their layout, and how to read them.

Every pixel observation is a ``Dict`` with one ``cam_<name>`` image ``(H, W, 3)`` uint8 per camera
(in ``cameras.names`` order) and the proprioception ``state``; ``info`` carries the camera
matrices (``camera_intrinsics``, ``camera_extrinsics``). Agents read these names from here, never
spell them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CAMERA_PREFIX = "cam_"
"""Observation keys of camera images are ``cam_<name>``."""

STATE_KEY = "state"
"""Observation key of the proprioception (and the whole observation with ``obs_mode="state"``
in a wrapper that names its parts)."""

EXTRINSICS_KEY = "camera_extrinsics"
"""``info`` key (and, with :class:`CameraMatricesObservation`, observation key) of the step's
world→camera matrices ``(C, 4, 4)``."""

INTRINSICS_KEY = "camera_intrinsics"
"""``info`` key of the pinhole matrices ``(C, 3, 3)``."""


def camera_key(name: str) -> str:
    """The observation key of camera ``name``'s image."""
    return f"{CAMERA_PREFIX}{name}"


def camera_keys(keys: Iterable[str]) -> list[str]:
    """The camera-image keys among ``keys``, in their order."""
    return [key for key in keys if key.startswith(CAMERA_PREFIX)]


def camera_name(key: str) -> str:
    """The camera name of a ``cam_<name>`` key.

    Raises:
        ValueError: for a key that is not a camera image's.
    """
    if not key.startswith(CAMERA_PREFIX):
        raise ValueError(f"{key!r} is not a camera image key ('{CAMERA_PREFIX}<name>')")
    return key[len(CAMERA_PREFIX) :]


def stack_views(observation: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """The cameras' images of one observation stacked in ``names`` order: ``(C, H, W, 3)``."""
    return np.stack([np.asarray(observation[camera_key(name)]) for name in names])


class CameraMatricesObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds ``camera_extrinsics`` ``(C, 4, 4)`` float32, this step's world→camera matrices in
    camera order, to a Dict observation, from ``info["camera_extrinsics"]``.

    Use it when any camera moves (``env.unwrapped.cameras.moving``): the observation then carries
    everything a perception module needs to lift its keypoints to the world frame.

    Args:
        env: an env with a Dict observation holding ``cam_<name>`` images, whose ``reset`` and
            ``step`` put ``camera_extrinsics`` in ``info`` (every kp3d env does).

    Raises:
        TypeError: if the observation space is not a Dict with camera images.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict):
            raise TypeError(
                f"CameraMatricesObservation needs a Dict observation space; got {space}"
            )
        count = len(camera_keys(space.spaces))
        if count == 0 or EXTRINSICS_KEY in space.spaces:
            raise TypeError(
                f"CameraMatricesObservation needs camera images ('{CAMERA_PREFIX}<name>') and no "
                f"{EXTRINSICS_KEY!r} key yet; observation keys: {sorted(space.spaces)}"
            )
        self.observation_space = spaces.Dict(
            {
                **space.spaces,
                EXTRINSICS_KEY: spaces.Box(-np.inf, np.inf, (count, 4, 4), np.float32),
            }
        )

    def _with_matrices(self, observation: dict[str, Any], info: Mapping[str, Any]) -> dict:
        if EXTRINSICS_KEY not in info:
            raise KeyError(
                f"info has no {EXTRINSICS_KEY!r}: CameraMatricesObservation needs an env that "
                "reports its camera matrices every step (kp3d envs do)"
            )
        return {**observation, EXTRINSICS_KEY: np.asarray(info[EXTRINSICS_KEY], np.float32)}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        observation, info = self.env.reset(seed=seed, options=options)
        return self._with_matrices(observation, info), info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._with_matrices(observation, info), reward, terminated, truncated, info


__all__ = [
    "CAMERA_PREFIX",
    "EXTRINSICS_KEY",
    "INTRINSICS_KEY",
    "STATE_KEY",
    "CameraMatricesObservation",
    "camera_key",
    "camera_keys",
    "camera_name",
    "stack_views",
]
