"""Any registered perception module as an SB3 features extractor for ``MultiInputPolicy``.

The extractor stacks the camera images of the Dict observation in camera order, runs the
perception module (:mod:`kp3d.perception`) with the camera matrices, and concatenates the
proprioception. It never special-cases a method: everything method-specific stays behind
:class:`kp3d.perception.Perception`.

Algorithms read what the extractor keeps from its last forward pass: the named auxiliary losses
(:attr:`PerceptionExtractor.last_losses`, computed only inside
:meth:`PerceptionExtractor.computing_losses`) and what a video draws
(:attr:`PerceptionExtractor.last_visuals`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from envs.observations import CAMERA_PREFIX, EXTRINSICS_KEY, STATE_KEY
from kp3d.perception import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    images_from_observation,
    make_perception,
)


def _image_layout(space: spaces.Box, key: str) -> tuple[tuple[int, int], bool]:
    """``((H, W), channels_first)`` of a camera's observation space."""
    shape = tuple(space.shape)
    if len(shape) == 3 and shape[0] == 3:
        return (shape[1], shape[2]), True
    if len(shape) == 3 and shape[2] == 3:
        return (shape[0], shape[1]), False
    raise ValueError(f"{key} must be an RGB image (3, H, W) or (H, W, 3); got shape {shape}")


class PerceptionExtractor(BaseFeaturesExtractor):
    """Features extractor that runs a perception module on the cameras of a Dict observation.

    Observation keys: ``cam_<name>`` images (``(3, H, W)`` after SB3's ``VecTransposeImage``, or
    ``(H, W, 3)``; SB3 hands them over as floats in ``[0, 1]``), optionally ``state`` (concatenated
    when ``use_state``) and ``camera_extrinsics`` ``(C, 4, 4)`` (moving cameras, see
    :class:`agents.environment.CameraMatricesObservation`). Fixed cameras' matrices are buffers
    given at construction; when the observation carries ``camera_extrinsics``, those are used
    instead of the ``extrinsics`` buffer.

    Features: ``[perception features (B, F_p), state (B, S)]``, then ``Linear + ReLU`` to
    ``projection_dim`` when given (the reference's 512-wide layer).

    Args:
        observation_space: the policy's Dict observation space.
        perception: a registered perception name (``kp3d.available_perceptions()``).
        camera_names: camera order of the matrices (the env's ``cameras.names``).
        intrinsics: ``(C, 3, 3)`` pinhole matrices.
        extrinsics: ``(C, 4, 4)`` world→camera matrices of fixed cameras; ignored (may be
            ``None``) when the observation has ``camera_extrinsics``.
        perception_kwargs: the perception's hyperparameters.
        use_state: concatenate the ``state`` observation.
        projection_dim: width of the final ``Linear + ReLU``; ``None`` for none.

    A perception that does not learn (``perception.freeze``) is not run here but once per env
    step, outside the policy (:mod:`agents.features`).

    Attributes:
        perception: the perception module.
        detach_features: the policy sees detached perception features (set by algorithms that
            train the perception apart from the RL loss).
        last_losses: named weighted auxiliary losses of the last forward pass inside
            :meth:`computing_losses` (empty otherwise).
        last_visuals: detached visuals of the last forward pass (for videos).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        perception: str,
        camera_names: Sequence[str],
        intrinsics: np.ndarray | Sequence,
        extrinsics: np.ndarray | Sequence | None = None,
        perception_kwargs: Mapping[str, object] | None = None,
        use_state: bool = True,
        projection_dim: int | None = 512,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise TypeError(
                f"PerceptionExtractor needs a Dict observation space; got {observation_space}"
            )
        names = tuple(camera_names)
        keys = [f"{CAMERA_PREFIX}{name}" for name in names]
        missing = [key for key in keys if key not in observation_space.spaces]
        if not names or missing:
            raise ValueError(
                f"camera_names {list(names)} do not match the observation's camera keys "
                f"{sorted(k for k in observation_space.spaces if k.startswith(CAMERA_PREFIX))}"
            )
        layouts = {_image_layout(observation_space[key], key) for key in keys}
        if len(layouts) != 1:
            raise ValueError(f"all cameras must share one image size and layout; got {layouts}")
        ((image_size, channels_first),) = layouts
        count = len(names)
        moving = EXTRINSICS_KEY in observation_space.spaces
        intrinsics = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float32)
        if intrinsics.shape != (count, 3, 3):
            raise ValueError(
                f"intrinsics must have shape ({count}, 3, 3); got {tuple(intrinsics.shape)}"
            )
        if extrinsics is None:
            if not moving:
                raise ValueError(
                    f"fixed cameras need their extrinsics ({count}, 4, 4), or the observation "
                    f"must carry {EXTRINSICS_KEY!r} (CameraMatricesObservation)"
                )
            extrinsics = np.tile(np.eye(4, dtype=np.float32), (count, 1, 1))
        extrinsics = torch.as_tensor(np.asarray(extrinsics), dtype=torch.float32)
        if extrinsics.shape != (count, 4, 4):
            raise ValueError(
                f"extrinsics must have shape ({count}, 4, 4); got {tuple(extrinsics.shape)}"
            )
        state_dim = 0
        if use_state:
            if STATE_KEY not in observation_space.spaces:
                raise ValueError(f"use_state=True but the observation has no {STATE_KEY!r}")
            state_dim = int(np.prod(observation_space[STATE_KEY].shape))

        module = make_perception(
            perception, num_cameras=count, image_size=image_size, **dict(perception_kwargs or {})
        )
        inputs = module.features_dim + state_dim
        super().__init__(observation_space, projection_dim or inputs)
        self.perception: Perception = module
        self.camera_names = names
        self.camera_keys = tuple(keys)
        self.channels_first = channels_first
        self.use_state = use_state
        self.moving = moving
        self.register_buffer("intrinsics", intrinsics)
        self.register_buffer("extrinsics", extrinsics)
        self.projection: nn.Module = (
            nn.Sequential(nn.Linear(inputs, projection_dim), nn.ReLU())
            if projection_dim
            else nn.Identity()
        )
        self.detach_features = False
        self.last_losses: dict[str, torch.Tensor] = {}
        self.last_visuals = PerceptionVisuals()
        self._compute_losses = False
        self._loss_samples: int | None = None

    @contextlib.contextmanager
    def computing_losses(self, enabled: bool = True, samples: int | None = None) -> Iterator[None]:
        """Within the block, forward passes compute the perception's auxiliary losses into
        :attr:`last_losses` (rollouts skip them, and with them any decoder). Read them inside the
        block: on leaving it they are dropped, so that no computation graph outlives it.

        Args:
            enabled: compute the losses.
            samples: compute them on the first ``samples`` observations of a batch only (the
                rest are encoded without the decoder); ``None``: on all.
        """
        previous = self._compute_losses, self._loss_samples
        self._compute_losses, self._loss_samples = enabled, samples
        try:
            yield
        finally:
            self._compute_losses, self._loss_samples = previous
            self.last_losses = {}

    def camera_images(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, C, 3, H, W)`` float images in camera order from (preprocessed) observations."""
        if not self.channels_first:
            return images_from_observation(observations, self.camera_names)
        return torch.stack([observations[key].float() for key in self.camera_keys], dim=1)

    def perceive(
        self, observations: Mapping[str, torch.Tensor], compute_losses: bool = False
    ) -> PerceptionOutput:
        """Run the perception module on the cameras of preprocessed observations.

        Args:
            observations: ``cam_<name>`` ``(B, 3, H, W)`` or ``(B, H, W, 3)`` floats in
                ``[0, 1]`` (SB3's ``preprocess_obs``), and ``camera_extrinsics (B, C, 4, 4)`` for
                moving cameras. Other keys are ignored.
            compute_losses: compute the auxiliary losses.

        Returns:
            The perception's :class:`kp3d.perception.PerceptionOutput`.
        """
        images = self.camera_images(observations)
        extrinsics = observations[EXTRINSICS_KEY] if self.moving else self.extrinsics
        return self.perception(images, self.intrinsics, extrinsics, compute_losses=compute_losses)

    def forward(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, features_dim)`` policy features from a batch of preprocessed observations."""
        batch = len(next(iter(observations.values())))
        split = self._loss_samples
        if self._compute_losses and split is not None and split < batch:
            with_losses = self.perceive(
                {key: value[:split] for key, value in observations.items()}, compute_losses=True
            )
            rest = self.perceive({key: value[split:] for key, value in observations.items()})
            features = torch.cat([with_losses.features, rest.features])
            self.last_losses = with_losses.losses
            self.last_visuals = with_losses.visuals
            return self._combine(features, observations)
        output = self.perceive(observations, compute_losses=self._compute_losses)
        self.last_losses = output.losses
        self.last_visuals = output.visuals
        return self._combine(output.features, observations)

    def _combine(
        self, features: torch.Tensor, observations: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Perception features (+ proprioception) through the projection layer."""
        features = features.detach() if self.detach_features else features
        if self.use_state:
            features = torch.cat([features, observations[STATE_KEY].flatten(1).float()], dim=1)
        return self.projection(features)


class LossLog:
    """Values of named loss terms and their totals over one update, for SB3's logger.

    Example:
        >>> log = LossLog()
        >>> total = log.add({"reconstruction": torch.tensor(0.5), "separation": torch.tensor(0.1)})
        >>> round(float(total), 2), log.terms["reconstruction"]
        (0.6, [0.5])
    """

    def __init__(self) -> None:
        self.terms: dict[str, list[float]] = defaultdict(list)
        self.totals: list[float] = []

    def add(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Note the terms' values and return their sum (with its graph, on their device).

        Raises:
            ValueError: for no terms at all.
        """
        if not losses:
            raise ValueError("LossLog.add needs at least one loss term")
        terms = iter(losses.values())
        total = next(terms)
        for term in terms:
            total = total + term
        for name, term in losses.items():
            self.terms[name].append(term.item())
        self.totals.append(total.item())
        return total

    def record(self, logger: Logger, name: str) -> None:
        """Record the means: the total as ``kp3d/<name>_loss``, terms as ``kp3d/<name>/<term>``."""
        if not self.totals:
            return
        logger.record(f"kp3d/{name}_loss", float(np.mean(self.totals)))
        for term, values in self.terms.items():
            logger.record(f"kp3d/{name}/{term}", float(np.mean(values)))


def perception_extractor(policy: nn.Module) -> PerceptionExtractor | None:
    """The :class:`PerceptionExtractor` that a policy acts through, if any.

    For SB3 actor-critic policies (PPO) that is ``policy.features_extractor``; for SAC policies,
    the actor's (shared with the critic by :class:`agents.sac.PerceptionSACPolicy`).
    """
    owner = getattr(policy, "actor", policy)
    extractor = getattr(owner, "features_extractor", None)
    return extractor if isinstance(extractor, PerceptionExtractor) else None


__all__ = ["STATE_KEY", "LossLog", "PerceptionExtractor", "perception_extractor"]
