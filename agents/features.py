"""A frozen perception as part of the environment: policies and buffers see its features only.

A perception that no longer learns (pretrained, ``perception.freeze: true``) is a fixed function
of the observation. Running it inside the policy would recompute it for every gradient step
(SAC: five times per step, on replayed images) and store images in the buffers. Here it runs
once per env step instead, in a ``VecEnv`` wrapper (:class:`PerceptionFeatures`): the agent is
SB3's ordinary ``MlpPolicy`` on a flat feature vector, trained exactly as state-based agents are,
and SAC's replay buffer and PPO's rollout buffer hold ~0.2 KB of features per transition instead
of 36 KB of images per observation.

The features of one observation are ``[perception features (F_p), proprioception (S)]``
(:class:`FeatureEncoder`). A run trained this way keeps its perception beside the model
(``perception.pt``), so that evaluation, videos and datasets rebuild the same wrapper; acting on
raw observations goes through :class:`FeaturePolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from agents.environment import CameraLayout
from envs.observations import CAMERA_PREFIX, EXTRINSICS_KEY, STATE_KEY
from kp3d.perception import Perception, PerceptionOutput, images_from_observation


class FeatureEncoder:
    """Observations → ``[perception features, proprioception]`` with a frozen perception.

    Args:
        perception: the module; it is put in eval mode and takes no gradients.
        layout: the env's cameras (their order, intrinsics, and extrinsics of fixed cameras;
            moving cameras' extrinsics are read from each observation's ``camera_extrinsics``).
        use_state: append the ``state`` observation.
        device: where the perception runs.

    Attributes:
        last_output: the perception's output on the last batch encoded (what videos draw).
    """

    def __init__(
        self,
        perception: Perception,
        layout: CameraLayout,
        use_state: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        if perception.num_cameras != len(layout.names) or perception.image_size != tuple(
            layout.image_size
        ):
            raise ValueError(
                f"the perception takes {perception.num_cameras} cameras of "
                f"{perception.image_size}; the env has {len(layout.names)} of {layout.image_size}"
            )
        self.device = torch.device(device)
        self.perception = perception.to(self.device).eval().requires_grad_(False)
        self.layout = layout
        self.use_state = use_state
        self.intrinsics = torch.as_tensor(layout.intrinsics, dtype=torch.float32).to(self.device)
        self.extrinsics = torch.as_tensor(layout.extrinsics, dtype=torch.float32).to(self.device)
        self.last_output: PerceptionOutput | None = None

    def observation_space(self, inner: spaces.Space) -> spaces.Box:
        """The flat feature space for an env whose Dict observation space is ``inner``."""
        if not isinstance(inner, spaces.Dict):
            raise TypeError(f"a perception reads Dict observations with images; got {inner}")
        missing = [
            f"{CAMERA_PREFIX}{name}"
            for name in self.layout.names
            if f"{CAMERA_PREFIX}{name}" not in inner.spaces
        ]
        if missing or (self.use_state and STATE_KEY not in inner.spaces):
            raise ValueError(
                f"observation keys {sorted(inner.spaces)} lack {missing or [STATE_KEY]}"
            )
        state = int(np.prod(inner[STATE_KEY].shape)) if self.use_state else 0
        size = self.perception.features_dim + state
        return spaces.Box(-np.inf, np.inf, (size,), np.float32)

    @torch.no_grad()
    def encode(self, observations: Mapping[str, Any]) -> np.ndarray:
        """``(N, F)`` float32 features of a batch of ``N`` raw observations (``cam_<name>``
        ``(N, H, W, 3)`` uint8 images, ``state``, and ``camera_extrinsics`` for moving
        cameras)."""
        images = images_from_observation(observations, self.layout.names, device=self.device)
        if self.layout.any_moving:
            extrinsics = torch.as_tensor(
                np.asarray(observations[EXTRINSICS_KEY]), dtype=torch.float32, device=self.device
            )
        else:
            extrinsics = self.extrinsics
        output = self.perception(images, self.intrinsics, extrinsics, compute_losses=False)
        self.last_output = output
        features = output.features.float().cpu().numpy()
        if self.use_state:
            state = np.asarray(observations[STATE_KEY], dtype=np.float32)
            features = np.concatenate([features, state.reshape(len(state), -1)], axis=1)
        return features.astype(np.float32, copy=False)

    def encode_one(self, observation: Mapping[str, Any]) -> np.ndarray:
        """``(F,)`` features of one unbatched observation."""
        return self.encode({key: np.asarray(value)[None] for key, value in observation.items()})[0]


class PerceptionFeatures(VecEnvWrapper):
    """A ``VecEnv`` whose observations are a frozen perception's features (:class:`FeatureEncoder`),
    computed once per step for all envs together (and for the final observation of an episode,
    which SB3 finds in ``info["terminal_observation"]``).

    Args:
        venv: an env with Dict observations of channels-last ``uint8`` images (no
            ``VecTransposeImage``).
        encoder: the frozen perception.
    """

    def __init__(self, venv: VecEnv, encoder: FeatureEncoder) -> None:
        super().__init__(venv, observation_space=encoder.observation_space(venv.observation_space))
        self.encoder = encoder

    def reset(self) -> np.ndarray:
        return self.encoder.encode(self.venv.reset())

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        observations, rewards, dones, infos = self.venv.step_wait()
        ended = [i for i, info in enumerate(infos) if "terminal_observation" in info]
        if ended:
            finals = [infos[i]["terminal_observation"] for i in ended]
            batch = {key: np.stack([final[key] for final in finals]) for key in finals[0]}
            for i, features in zip(ended, self.encoder.encode(batch), strict=True):
                infos[i]["terminal_observation"] = features
        return self.encoder.encode(observations), rewards, dones, infos


class FeaturePolicy:
    """A policy trained on :class:`PerceptionFeatures`, acting on raw observations (one or a
    batch): what ``kp3d render`` and ``kp3d dataset --policy`` call.

    Args:
        model: the SB3 model trained on the features.
        encoder: the frozen perception it was trained with.
    """

    def __init__(self, model: BaseAlgorithm, encoder: FeatureEncoder) -> None:
        self.model = model
        self.encoder = encoder

    @property
    def num_timesteps(self) -> int:
        return self.model.num_timesteps

    def predict(
        self, observation: Mapping[str, Any], deterministic: bool = True
    ) -> tuple[np.ndarray, Any]:
        """SB3's ``predict`` from raw observations (batched when the images are 4-D)."""
        first = np.asarray(observation[f"{CAMERA_PREFIX}{self.encoder.layout.names[0]}"])
        if first.ndim == 4:
            features = self.encoder.encode(observation)
        else:
            features = self.encoder.encode_one(observation)
        return self.model.predict(features, deterministic=deterministic)


__all__ = ["FeatureEncoder", "FeaturePolicy", "PerceptionFeatures"]
