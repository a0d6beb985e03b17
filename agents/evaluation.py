"""Loading trained agents from run directories, evaluating them, and rollout videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.demo import annotate_views
from agents.environment import CAMERA_PREFIX, camera_layout
from agents.extractor import perception_extractor
from agents.training import (
    ALGORITHMS,
    EVAL_SEED_OFFSET,
    MODEL_FILE,
    VEC_NORMALIZE_FILE,
    RunDirectoryError,
    make_run_env,
    read_run_config,
    set_torch_threads,
)
from agents.video import write_video

VIDEO_UPSCALE = 4
"""Nearest-neighbour upscaling of 64 px views in rollout videos (so keypoint markers show)."""


@dataclass(frozen=True)
class Evaluation:
    """Results of :func:`evaluate`.

    Attributes:
        returns: ``(N,)`` undiscounted, unnormalised return of each episode.
        lengths: ``(N,)`` steps of each episode.
        successes: ``(N,)`` ``info["is_success"]`` at each episode's end.
        video: the rollout video written, if any.
    """

    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray
    video: Path | None = None

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns))

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))

    def summary(self) -> str:
        """One line: episodes, mean ± std return, success rate, mean length."""
        return (
            f"{len(self.returns)} episodes: return {self.mean_return:.2f} ± {self.std_return:.2f}, "
            f"success rate {self.success_rate:.0%}, length {self.mean_length:.1f}"
        )


def load(run_dir: str | Path, device: str = "auto", env: object | None = None) -> BaseAlgorithm:
    """The agent of a run directory at its latest checkpoint.

    Args:
        run_dir: a directory written by :func:`agents.train`.
        device: torch device.
        env: optional vectorised env to attach (needed to continue training, not to act).

    Raises:
        RunDirectoryError: if ``run_dir`` is not a run or has no checkpoint yet.
    """
    path = Path(run_dir)
    config = read_run_config(path)
    if not (path / MODEL_FILE).is_file():
        raise RunDirectoryError(f"run {str(path)!r} has no checkpoint ({MODEL_FILE}) yet")
    return ALGORITHMS[config.algo].load(path / MODEL_FILE, env=env, device=device)


def _views(observation: dict[str, np.ndarray], camera_keys: list[str]) -> np.ndarray:
    """``(C, H, W, 3)`` uint8 views of env 0 of a vectorised observation (any image layout)."""
    views = []
    for key in camera_keys:
        view = np.asarray(observation[key][0])
        views.append(view.transpose(1, 2, 0) if view.shape[0] == 3 else view)
    return np.stack(views)


def evaluate(
    run_dir: str | Path,
    episodes: int = 10,
    deterministic: bool = True,
    video: str | Path | None = None,
    device: str = "auto",
) -> Evaluation:
    """Run a trained agent for ``episodes`` episodes on a fresh env (seeded like the run's
    periodic evaluations).

    Args:
        run_dir: a run directory.
        episodes: number of episodes.
        deterministic: act with the mean action.
        video: also write the first episode as an MP4 or GIF here: the camera views side by side,
            with the points the perception reports (``PerceptionVisuals.points``: for Keypoint3D
            the fused 3D keypoints projected into every view) drawn on them.
        device: torch device.

    Returns:
        Per-episode returns, lengths and successes (:class:`Evaluation`).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1; got {episodes}")
    path = Path(run_dir)
    config = read_run_config(path)
    set_torch_threads(config.torch_threads)
    layout = camera_layout(config.env_id, config.env_kwargs)
    if video is not None and layout is None:
        raise ValueError(f"run {str(path)!r} observes states, not images: no video to write")
    stats = path / VEC_NORMALIZE_FILE
    env = make_run_env(
        config,
        layout,
        1,
        config.seed + EVAL_SEED_OFFSET,
        training=False,
        vec_normalize_path=stats if stats.is_file() else None,
    )
    try:
        fps = float(env.get_attr("metadata")[0].get("render_fps", 20))
        model = load(path, device=device, env=env)
        extractor = perception_extractor(model.policy)
        camera_keys = [f"{CAMERA_PREFIX}{name}" for name in layout.names] if layout else []
        returns, lengths, successes, frames = [], [], [], []
        observation = env.reset()
        while len(returns) < episodes:
            action, _ = model.predict(observation, deterministic=deterministic)
            if video is not None and not returns:
                points = None
                if extractor is not None and extractor.last_visuals.points is not None:
                    points = extractor.last_visuals.points[0].cpu().numpy()
                views = _views(observation, camera_keys)
                if points is None:
                    points = np.zeros((len(views), 0, 2))
                visible = np.ones(points.shape[:2], dtype=bool)
                frames.append(annotate_views(views, points, visible, VIDEO_UPSCALE))
            observation, _, dones, infos = env.step(action)
            if dones[0]:
                episode = infos[0]["episode"]
                returns.append(float(episode["r"]))
                lengths.append(int(episode["l"]))
                successes.append(bool(infos[0].get("is_success", False)))
    finally:
        env.close()
    written = None
    if video is not None:
        written = write_video(video, frames, fps=fps)
    return Evaluation(np.array(returns), np.array(lengths), np.array(successes), written)


__all__ = ["Evaluation", "evaluate", "load"]
