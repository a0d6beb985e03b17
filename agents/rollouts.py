"""Rollouts with the perception's outputs: an agent (a run directory or an SB3 model, or random
actions) acting in a fresh env, each step perceived by its perception module into a
:class:`~agents.video.compose.StepView` (:class:`Rollout`), and drawn frame by frame
(:class:`RolloutRenderer`, used by :mod:`agents.render` and :mod:`agents.callbacks`).

Rows of a frame appear only for what the module provides: a pixel encoder shows camera rows and the
world panel's ground truth. Each episode has ``steps + 1`` records (and frames): the reset
observation, then the observation after every step, with the return so far and that step's
``info["is_success"]``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import get_device

from agents.builder import load_policy
from agents.environment import make_env
from agents.extractor import perception_extractor
from agents.features import FeaturePolicy
from agents.runs import EVAL_SEED_OFFSET, read_run_config, set_torch_threads
from agents.video.compose import (
    MUTED_COLOR,
    SUCCESS_COLOR,
    TEXT_COLOR,
    FrameComposer,
    StepView,
)
from envs.observations import CAMERA_PREFIX, EXTRINSICS_KEY
from kp3d.perception import Perception, images_from_observation, load_perception

MIN_VIEW_SIDE = 160
"""The default upscaling makes every view at least this many pixels on its shorter side."""


def default_upscale(image_size: Sequence[int]) -> int:
    """Smallest integer factor making the shorter image side at least :data:`MIN_VIEW_SIDE`."""
    return max(1, math.ceil(MIN_VIEW_SIDE / min(image_size)))


def _numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().float().cpu().numpy()


@dataclass(frozen=True)
class RolloutStep:
    """One record of a rollout: the reset (``step == 0``) or one env step.

    Attributes:
        episode: index of the episode, from 0.
        step: steps taken in this episode so far.
        episode_return: undiscounted return so far.
        info: the env's ``info`` of this observation.
        view: what the perception made of the observation, for the cameras shown.
    """

    episode: int
    step: int
    episode_return: float
    info: Mapping[str, Any]
    view: StepView

    @property
    def success(self) -> bool:
        """``info["is_success"]`` of this observation."""
        return bool(self.info.get("is_success", False))


class Rollout:
    """Rolls out a policy in a fresh env and perceives every observation (:meth:`steps`).

    Give a trained agent (a run directory or an SB3 model), or an env id with ``random_policy``;
    the perception module run is the agent's (the features extractor's), or ``perception``.
    Roll out once; use it as a context manager (or call :meth:`close`) to free the env.

    Args:
        source: a run directory written by ``kp3d train``, an SB3 model, or ``None``.
        env_id: the env (default: the run's); required with a model or without a source.
        env_kwargs: keyword arguments of ``gymnasium.make`` (default: the run's).
        perception: a :class:`~kp3d.perception.Perception` module, or the path of a checkpoint
            written by ``kp3d pretrain`` (:func:`~kp3d.perception.save_perception`), for an agent
            without a perception module or no agent.
        random_policy: act uniformly at random instead of with the agent.
        episodes: episodes to roll out.
        deterministic: act with the policy's mean action.
        cameras: names of the cameras to show (default: all, in the env's order).
        seed: seed of the env's first reset and of the random actions (default: the run's
            evaluation seed, so that a run's video shows its evaluation episodes; 0 otherwise).
        max_steps: cut episodes after this many steps (default: the env's time limit).
        device: torch device of a loaded agent or checkpoint (``auto``: CUDA when present).
            A run directory also sets torch's CPU threads to its config's ``torch_threads``.

    Attributes:
        returns: undiscounted return of each finished episode.
        lengths: steps of each finished episode.
        successes: ``info["is_success"]`` at each finished episode's end.
        position: ``(episode, step)`` of the record last yielded.

    Raises:
        ValueError: for a missing env id or policy, a perception module given twice or not
            matching the env's cameras, unknown camera names, or bad counts.
    """

    def __init__(
        self,
        source: str | os.PathLike | BaseAlgorithm | None = None,
        *,
        env_id: str | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        perception: Perception | str | os.PathLike | None = None,
        random_policy: bool = False,
        episodes: int = 1,
        deterministic: bool = True,
        cameras: Sequence[str] | None = None,
        seed: int | None = None,
        max_steps: int | None = None,
        device: str = "auto",
    ) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be at least 1; got {episodes}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1; got {max_steps}")
        model: BaseAlgorithm | FeaturePolicy | None = None
        policy_label = "random actions"
        if isinstance(source, (str, os.PathLike)):
            config = read_run_config(source)
            if env_id is not None and env_id != config.env_id:
                raise ValueError(
                    f"run {str(source)!r} was trained on {config.env_id}; cannot render it on "
                    f"{env_id}"
                )
            env_id = config.env_id
            env_kwargs = config.env_kwargs if env_kwargs is None else env_kwargs
            seed = config.seed + EVAL_SEED_OFFSET if seed is None else seed
            # As the run trained and evaluate() evaluates: small convs gain nothing from more
            # threads on a CPU, and their threads wait for each other when cores are busy.
            set_torch_threads(config.torch_threads)
            model = load_policy(source, device=device)
            if not random_policy:
                policy_label = f"{Path(source).name}, {model.num_timesteps} steps"
        elif isinstance(source, (BaseAlgorithm, FeaturePolicy)):
            model = source
            if not random_policy:
                policy_label = f"{type(model).__name__}, {model.num_timesteps} steps"
        elif source is not None:
            raise TypeError(
                f"source must be a run directory, an SB3 model or None; got {type(source)}"
            )
        if env_id is None:
            raise ValueError("name the env (env_id=...) when rendering without a run directory")
        if model is None and not random_policy:
            raise ValueError(
                "no policy to act with: give a run directory or a trained model, or "
                "random_policy=True"
            )
        if random_policy or model is None:
            model_policy = None
        else:
            model_policy = model
            policy_label += ", deterministic" if deterministic else ", sampled actions"

        module = None
        if isinstance(model, FeaturePolicy):
            module = model.encoder.perception
        elif model is not None and (extractor := perception_extractor(model.policy)) is not None:
            module = extractor.perception
        if perception is not None:
            if module is not None:
                raise ValueError(
                    "the agent already has a perception module; pass perception= only for an "
                    "agent without one, or without an agent"
                )
            if isinstance(perception, Perception):
                module = perception
            else:
                module = load_perception(perception, device=get_device(device))

        if isinstance(model, FeaturePolicy):
            needs_matrices = model.encoder.layout.any_moving
        else:
            needs_matrices = (
                model is not None
                and hasattr(model.observation_space, "spaces")
                and EXTRINSICS_KEY in model.observation_space.spaces
            )
        self.env = make_env(env_id, env_kwargs, camera_matrices=needs_matrices)
        try:
            self._setup(module, cameras, max_steps)
        except Exception:
            self.env.close()
            raise
        self.env_id = env_id
        self.model = model_policy
        self.perception = module
        self.episodes = episodes
        self.deterministic = deterministic
        self.seed = 0 if seed is None else int(seed)
        self.policy_label = policy_label
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.successes: list[bool] = []
        self.position = (0, 0)
        self._used = False

    def _setup(
        self, module: Perception | None, cameras: Sequence[str] | None, max_steps: int | None
    ) -> None:
        base = self.env.unwrapped
        env_cameras = base.cameras
        self.camera_names = tuple(env_cameras.names)
        self.image_size = (int(env_cameras.height), int(env_cameras.width))
        shown = list(self.camera_names) if cameras is None else list(cameras)
        unknown = [name for name in shown if name not in self.camera_names]
        if unknown or not shown:
            raise ValueError(f"unknown cameras {unknown}; this env's cameras: {self.camera_names}")
        self.shown = [self.camera_names.index(name) for name in shown]
        if module is not None:
            if module.num_cameras != len(self.camera_names) or module.image_size != self.image_size:
                raise ValueError(
                    f"the perception module takes {module.num_cameras} cameras of "
                    f"{module.image_size}; {self.env.spec.id} has {len(self.camera_names)} of "
                    f"{self.image_size}"
                )
            if getattr(base, "obs_mode", "pixels") == "state":
                raise ValueError("the env observes states (obs_mode='state'): no perception input")
        self.skeleton = getattr(base, "skeleton", None)
        limit = self.env.spec.max_episode_steps if self.env.spec is not None else None
        limits = [x for x in (max_steps, limit) if x is not None]
        self.max_steps = min(limits) if limits else None

    @property
    def total_frames(self) -> int | None:
        """Records (frames) of the whole rollout if no episode ends early (``None``: no step
        limit)."""
        return None if self.max_steps is None else self.episodes * (self.max_steps + 1)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Rollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _views(self, observation: Any) -> np.ndarray:
        """``(C, H, W, 3)`` uint8 images of all the env's cameras."""
        if isinstance(observation, Mapping) and f"{CAMERA_PREFIX}{self.camera_names[0]}" in (
            observation
        ):
            return np.stack([observation[f"{CAMERA_PREFIX}{n}"] for n in self.camera_names])
        return self.env.unwrapped.render_views()

    @torch.no_grad()
    def _perceive(self, views: np.ndarray, info: Mapping[str, Any]) -> StepView:
        shown = self.shown
        step = StepView(
            images=views[shown],
            ground_truth=info.get("keypoints_world"),
            camera_intrinsics=info.get("camera_intrinsics"),
            camera_extrinsics=info.get("camera_extrinsics"),
        )
        module = self.perception
        if module is None:
            return step
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        observation = {
            f"{CAMERA_PREFIX}{n}": views[i][None] for i, n in enumerate(self.camera_names)
        }
        images = images_from_observation(observation, self.camera_names, device=device)
        intrinsics = torch.as_tensor(info["camera_intrinsics"], dtype=torch.float32, device=device)
        extrinsics = torch.as_tensor(info["camera_extrinsics"], dtype=torch.float32, device=device)
        training = module.training
        module.eval()
        try:
            output = module(images, intrinsics[None], extrinsics[None], compute_losses=True)
        finally:
            module.train(training)
        visuals = output.visuals
        if visuals.points is not None:
            step.points = _numpy(visuals.points)[0][shown]
        if visuals.detections is not None:
            step.detections = _numpy(visuals.detections)[0][shown]
        if visuals.heatmaps is not None:
            step.heatmaps = _numpy(visuals.heatmaps)[0][shown]
        if visuals.reconstructions is not None:
            decoded = _numpy(visuals.reconstructions)[0][shown].transpose(0, 2, 3, 1)
            step.reconstructions = np.rint(np.clip(decoded, 0, 1) * 255).astype(np.uint8)
        if visuals.crop_origins is not None:
            step.crop_origins = _numpy(visuals.crop_origins)[0][shown]
        step.crop_size = visuals.crop_size
        confidence = _numpy(output.confidence)
        per_view = step.points.shape[1] if step.points is not None else 0
        if confidence is not None and per_view:
            confidence = confidence[0]
            if confidence.size == per_view:
                step.attention = np.broadcast_to(confidence, (len(self.camera_names), per_view))
            elif confidence.size == len(self.camera_names) * per_view:
                step.attention = confidence.reshape(len(self.camera_names), per_view)
            if step.attention is not None:
                step.attention = step.attention[shown]
        if module.keypoint_frame == "world" and output.keypoints.shape[-1] == 3:
            step.keypoints_world = _numpy(output.keypoints)[0]
            if confidence is not None and confidence.size == len(step.keypoints_world):
                step.world_attention = confidence
        return step

    def _record(
        self, observation: Any, info: Mapping[str, Any], episode: int, step: int, total: float
    ) -> RolloutStep:
        self.position = (episode, step)
        return RolloutStep(
            episode, step, total, info, self._perceive(self._views(observation), info)
        )

    def steps(self) -> Iterator[RolloutStep]:
        """Roll out: the reset of each episode, then every step, each perceived.

        Raises:
            RuntimeError: on a second call (the env has moved on; make a new rollout).
        """
        if self._used:
            raise RuntimeError(f"a {type(self).__name__} rolls out once; make a new one")
        self._used = True
        env = self.env
        env.action_space.seed(self.seed)
        for episode in range(self.episodes):
            observation, info = env.reset(seed=self.seed if episode == 0 else None)
            steps, episode_return = 0, 0.0
            yield self._record(observation, info, episode, steps, episode_return)
            while True:
                if self.model is None:
                    action = env.action_space.sample()
                else:
                    action, _ = self.model.predict(observation, deterministic=self.deterministic)
                observation, reward, terminated, truncated, info = env.step(action)
                steps += 1
                episode_return += float(reward)
                yield self._record(observation, info, episode, steps, episode_return)
                if (
                    terminated
                    or truncated
                    or (self.max_steps is not None and steps >= self.max_steps)
                ):
                    break
            self.returns.append(episode_return)
            self.lengths.append(steps)
            self.successes.append(bool(info.get("is_success", False)))


class RolloutRenderer(Rollout):
    """A :class:`Rollout` that yields one composed frame per record (iterate it once).

    Args:
        source: as :class:`Rollout`.
        upscale: nearest-neighbour upscaling of the views (default: :func:`default_upscale`).
        trail: positions in the trail of each learned world keypoint.
        **options: the keyword arguments of :class:`Rollout`.

    Attributes:
        composer: the :class:`~agents.video.compose.FrameComposer` (set once the first frame is
            drawn).
        factor: the upscaling used.
    """

    def __init__(
        self,
        source: str | os.PathLike | BaseAlgorithm | None = None,
        *,
        upscale: int | None = None,
        trail: int = 8,
        **options: Any,
    ) -> None:
        if upscale is not None and upscale < 1:
            raise ValueError(f"upscale must be a positive integer; got {upscale}")
        super().__init__(source, **options)
        self.factor = upscale or default_upscale(self.image_size)
        self.trail = trail
        self.composer: FrameComposer | None = None

    def __enter__(self) -> RolloutRenderer:
        return self

    def _composer(self, step: StepView) -> FrameComposer:
        rows = ["keypoints"]
        if step.reconstructions is not None:
            rows.append("reconstruction")
        if step.heatmaps is not None:
            rows.append("heatmaps")
        count = 0
        for array in (step.points, step.heatmaps, step.keypoints_world):
            if array is not None:
                count = max(
                    count, array.shape[1] if array is not step.keypoints_world else len(array)
                )
        module = self.perception
        if module is None:
            perception = "no perception module"
        else:
            name = getattr(module, "construction", {}).get("name", type(module).__name__)
            perception = f"{name}, {count} keypoints" if count else name
        title = f"{self.env_id}   |   {perception}   |   policy: {self.policy_label}"
        return FrameComposer(
            [self.camera_names[i] for i in self.shown],
            self.image_size,
            self.factor,
            rows,
            num_keypoints=count,
            world_panel=step.ground_truth is not None or step.keypoints_world is not None,
            learned_world=step.keypoints_world is not None,
            title=title,
            skeleton=self.skeleton,
            trail=self.trail,
        )

    def _frame(self, record: RolloutStep) -> np.ndarray:
        if self.composer is None:
            self.composer = self._composer(record.view)
        elif record.step == 0:
            self.composer.reset()  # a new episode: no trails from the last one
        limit = "" if self.max_steps is None else f"/{self.max_steps}"
        status = [
            (f"episode {record.episode + 1}/{self.episodes}", TEXT_COLOR),
            (f"step {record.step}{limit}", TEXT_COLOR),
            (f"return {record.episode_return:.2f}", TEXT_COLOR),
            (
                "success" if record.success else "no success yet",
                SUCCESS_COLOR if record.success else MUTED_COLOR,
            ),
        ]
        return self.composer.compose(record.view, status)

    def __iter__(self) -> Iterator[np.ndarray]:
        for record in self.steps():
            yield self._frame(record)


__all__ = [
    "MIN_VIEW_SIDE",
    "Rollout",
    "RolloutRenderer",
    "RolloutStep",
    "default_upscale",
]
