"""The envs of a training run: the cameras a policy needs (:class:`CameraLayout`), camera
matrices in the observation, vectorisation, reward scaling.

Fixed cameras have constant matrices, which the features extractor holds as buffers (read once
with :func:`camera_layout`). Moving cameras (``kp3d/Ant-v0``) change their extrinsics every step
and report them only in ``info``; :class:`envs.observations.CameraMatricesObservation` moves them
into the observation, so that they travel with the images through rollout and replay buffers.
What an observation holds (keys, layout) is :mod:`envs.observations`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, VecTransposeImage

from agents.checkpoints import load_vec_normalize
from envs.observations import (  # re-exported: agents read the keys from here or from envs
    CAMERA_PREFIX,
    EXTRINSICS_KEY,
    STATE_KEY,
    CameraMatricesObservation,
)


@dataclass(frozen=True)
class CameraLayout:
    """The cameras of an env as a policy needs them.

    Attributes:
        names: camera order (``cameras.names``), the order of every matrix.
        intrinsics: ``(C, 3, 3)`` pinhole matrices.
        extrinsics: ``(C, 4, 4)`` world→camera matrices after a reset (constant for fixed
            cameras).
        moving: per camera, whether its extrinsics change from step to step.
        image_size: ``(H, W)`` of every view.
        background: ``(C, H, W, 3)`` uint8 views of the empty scene (``render_background``) of
            fixed cameras; ``None`` when a camera moves or the env cannot render it.
    """

    names: tuple[str, ...]
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    moving: tuple[bool, ...]
    image_size: tuple[int, int]
    background: np.ndarray | None = None

    @property
    def any_moving(self) -> bool:
        return any(self.moving)


def camera_layout(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> CameraLayout | None:
    """Read the camera layout of an env (built once and reset); ``None`` without cameras.

    Args:
        env_id: a registered id.
        env_kwargs: keyword arguments of ``gymnasium.make``.
    """
    import envs  # noqa: F401  (registers the kp3d ids)

    env = gym.make(env_id, **dict(env_kwargs or {}))
    try:
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or not any(
            key.startswith(CAMERA_PREFIX) for key in space.spaces
        ):
            return None
        env.reset(seed=0)
        cameras = env.get_wrapper_attr("cameras")
        moving = tuple(bool(m) for m in cameras.moving)
        background = None
        if not any(moving) and hasattr(env.unwrapped, "render_background"):
            background = np.asarray(env.unwrapped.render_background())
        return CameraLayout(
            names=tuple(cameras.names),
            intrinsics=np.asarray(cameras.intrinsics, np.float32),
            extrinsics=np.asarray(cameras.extrinsics, np.float32),
            moving=moving,
            image_size=(int(cameras.height), int(cameras.width)),
            background=background,
        )
    finally:
        env.close()


def make_env(
    env_id: str, env_kwargs: Mapping[str, Any] | None = None, camera_matrices: bool = False
) -> gym.Env:
    """``gymnasium.make(env_id, **env_kwargs)``, with :class:`CameraMatricesObservation` if asked.

    A module-level function, so that ``functools.partial`` of it pickles into worker processes.
    """
    import envs  # noqa: F401  (registers the kp3d ids, also in worker processes)

    env = gym.make(env_id, **dict(env_kwargs or {}))
    return CameraMatricesObservation(env) if camera_matrices else env


def build_vec_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    n_envs: int,
    seed: int,
    layout: CameraLayout | None,
    vectorization: Literal["dummy", "subproc"] = "dummy",
    normalize_reward: bool = False,
    gamma: float = 0.99,
    training: bool = True,
    vec_normalize_path: str | Path | None = None,
    transpose_images: bool = True,
) -> VecEnv:
    """The vectorised env of a run, identical in structure for training and evaluation.

    Wrappers, innermost first: ``Monitor`` per env, :class:`CameraMatricesObservation` per env when
    a camera moves, SB3 ``VecNormalize(norm_obs=False)`` when rewards are normalised (frozen and
    reporting raw rewards when ``training=False``), and ``VecTransposeImage`` for images (SB3
    would add it itself; adding it here keeps training and evaluation envs alike, so that
    ``EvalCallback`` can sync their statistics).

    Args:
        env_id: a registered id.
        env_kwargs: keyword arguments of ``gymnasium.make``.
        n_envs: number of envs.
        seed: seed of env 0; env ``i`` gets ``seed + i``.
        layout: the cameras (:func:`camera_layout`), ``None`` for state observations.
        vectorization: ``"dummy"`` (in process) or ``"subproc"``.
        normalize_reward: wrap in ``VecNormalize(norm_obs=False, norm_reward=True)``.
        gamma: discount used by ``VecNormalize`` for its return statistics.
        training: update the ``VecNormalize`` statistics and scale rewards (``False`` for
            evaluation envs, whose statistics are synced from the training env).
        vec_normalize_path: ``VecNormalize`` statistics saved by an earlier run (resuming,
            evaluating), used instead of fresh ones.
        transpose_images: add ``VecTransposeImage`` (``False`` for a wrapper that reads the
            images channels-last, e.g. :class:`agents.features.PerceptionFeatures`).
    """
    from envs import make_vec_env

    factory = functools.partial(
        make_env,
        env_id,
        dict(env_kwargs),
        camera_matrices=layout is not None and layout.any_moving,
    )
    vec_env: VecEnv = make_vec_env(factory, n_envs=n_envs, seed=seed, vectorization=vectorization)
    if normalize_reward:
        vec_env = VecNormalize(
            vec_env, training=training, norm_obs=False, norm_reward=training, gamma=gamma
        )
        if vec_normalize_path is not None:
            load_vec_normalize(vec_env, vec_normalize_path)
    if layout is not None and transpose_images:
        vec_env = VecTransposeImage(vec_env)
    return vec_env


__all__ = [
    "CAMERA_PREFIX",
    "EXTRINSICS_KEY",
    "STATE_KEY",
    "CameraLayout",
    "CameraMatricesObservation",
    "build_vec_env",
    "camera_layout",
    "make_env",
]
