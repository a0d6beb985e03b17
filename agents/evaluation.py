"""Evaluating a trained agent: episodes on a fresh env seeded like the run's evaluations, their
returns and success rate, and optionally a rollout video (``kp3d eval``). :func:`load` and
:func:`load_policy` live in :mod:`agents.builder` and are re-exported here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.builder import feature_encoder, load, load_policy, make_run_env, run_layout
from agents.checkpoints import VEC_NORMALIZE_FILE
from agents.render import render_video
from agents.runs import EVAL_SEED_OFFSET, read_run_config, set_torch_threads


@dataclass(frozen=True)
class Evaluation:
    """Results of :func:`evaluate`.

    Attributes:
        returns: ``(N,)`` undiscounted, unnormalised return of each episode.
        lengths: ``(N,)`` steps of each episode.
        successes: ``(N,)`` ``info["is_success"]`` at each episode's end.
        video: the rollout video written, if any.
        seed: seed of the evaluation env's first reset.
    """

    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray
    video: Path | None = None
    seed: int | None = None

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

    def as_dict(self) -> dict[str, object]:
        """The figures as plain JSON types: ``success_rate``, ``return_mean``, ``return_std``,
        ``episode_lengths``, ``episodes``, ``seed`` (and ``video`` when one was written)."""
        result: dict[str, object] = {
            "success_rate": self.success_rate,
            "return_mean": self.mean_return,
            "return_std": self.std_return,
            "episode_lengths": [int(length) for length in self.lengths],
            "episodes": len(self.returns),
            "seed": self.seed,
        }
        if self.video is not None:
            result["video"] = str(self.video)
        return result

    def summary(self) -> str:
        """One line: episodes, mean ± std return, success rate, mean length."""
        return (
            f"{len(self.returns)} episodes: return {self.mean_return:.2f} ± {self.std_return:.2f}, "
            f"success rate {self.success_rate:.0%}, length {self.mean_length:.1f}"
        )


def evaluate(
    run_dir: str | Path,
    episodes: int = 10,
    deterministic: bool = True,
    video: str | Path | None = None,
    device: str = "auto",
    video_episodes: int = 1,
) -> Evaluation:
    """Run a trained agent for ``episodes`` episodes on a fresh env (seeded like the run's
    periodic evaluations).

    Args:
        run_dir: a run directory.
        episodes: number of episodes.
        deterministic: act with the mean action.
        video: also write the first ``video_episodes`` episodes as an MP4 or GIF here, drawn by
            :func:`agents.render.render_video` (the same seed: with ``deterministic`` actions, the
            same episodes). An MP4 becomes a GIF when ffmpeg is missing (:attr:`Evaluation.video`
            says which).
        device: torch device.
        video_episodes: episodes recorded in ``video``.

    Returns:
        Per-episode returns, lengths and successes (:class:`Evaluation`).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1; got {episodes}")
    if video_episodes < 1:
        raise ValueError(f"video_episodes must be at least 1; got {video_episodes}")
    path = Path(run_dir)
    config = read_run_config(path)
    set_torch_threads(config.torch_threads)
    layout = run_layout(config)
    stats = path / VEC_NORMALIZE_FILE
    env = make_run_env(
        config,
        layout,
        1,
        config.seed + EVAL_SEED_OFFSET,
        training=False,
        vec_normalize_path=stats if stats.is_file() else None,
        encoder=feature_encoder(config, layout, path),
    )
    try:
        # No env= here: SB3's load re-seeds an attached env with the training seed, which
        # would replace the evaluation seed (and make these episodes differ from the video's).
        model = load(path, device=device)
        returns, lengths, successes = [], [], []
        observation = env.reset()
        while len(returns) < episodes:
            action, _ = model.predict(observation, deterministic=deterministic)
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
        written = render_video(
            path,
            video,
            episodes=video_episodes,
            deterministic=deterministic,
            seed=config.seed + EVAL_SEED_OFFSET,
            device=device,
        ).path
    return Evaluation(
        np.array(returns),
        np.array(lengths),
        np.array(successes),
        written,
        seed=config.seed + EVAL_SEED_OFFSET,
    )


__all__ = ["Evaluation", "evaluate", "load", "load_policy"]
