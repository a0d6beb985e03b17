"""Training-time callbacks that are not SB3's own: :class:`VideoCallback` renders the agent being
trained every so many steps into the run directory and logs thumbnails to TensorBoard (config
section ``video``; what it renders comes from :mod:`agents.rollouts`); :class:`Evaluation` is
SB3's ``EvalCallback`` that waits for the first update and reports each evaluation in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from agents.features import FeatureEncoder, FeaturePolicy
from agents.rollouts import RolloutRenderer
from agents.runs import VIDEO_DIR
from agents.video.compose import frame_grid
from agents.video.writer import resolve_video_path, write_video


class VideoCallback(BaseCallback):
    """Every ``freq`` env steps, renders the agent being trained into ``videos/step_<N>.mp4`` of
    the run directory and logs four of its frames (first episode, evenly spaced, at half size) to
    TensorBoard as the image ``kp3d/rollout``.

    The rollout runs in a fresh env of its own (``deterministic`` actions by default), in the
    perception's eval mode (restored afterwards) and on a forked torch RNG, so that a video never
    changes what training does next.

    Args:
        run_dir: the run directory.
        env_id: the run's env.
        env_kwargs: its ``gymnasium.make`` arguments.
        freq: env steps between videos.
        episodes: episodes per video.
        deterministic: act with the mean action.
        max_steps: cut episodes after this many steps (``None``: the env's time limit).
        seed: seed of each video's env (the same episodes every time, to compare).
        verbose: 1 prints each video's path.
        encoder: the frozen perception in front of the policy, for a model trained on its
            features (:mod:`agents.features`).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None,
        freq: int,
        episodes: int = 1,
        deterministic: bool = True,
        max_steps: int | None = None,
        seed: int = 0,
        verbose: int = 0,
        encoder: FeatureEncoder | None = None,
    ) -> None:
        super().__init__(verbose)
        if freq < 1:
            raise ValueError(f"freq must be at least 1; got {freq}")
        self.run_dir = Path(run_dir)
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.freq = freq
        self.episodes = episodes
        self.deterministic = deterministic
        self.max_steps = max_steps
        self.seed = seed
        self.encoder = encoder
        self._done_at = 0

    def _init_callback(self) -> None:
        self._done_at = self.num_timesteps // self.freq

    def _on_step(self) -> bool:
        if self.num_timesteps // self.freq > self._done_at:
            self._done_at = self.num_timesteps // self.freq
            self.record()
        return True

    def record(self) -> Path:
        """Render and log the current agent now; returns the video's path."""
        path = resolve_video_path(self.run_dir / VIDEO_DIR / f"step_{self.num_timesteps}.mp4")
        kept: list[np.ndarray] = []
        device = self.model.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with (
            torch.random.fork_rng(devices=devices),
            RolloutRenderer(
                self.model if self.encoder is None else FeaturePolicy(self.model, self.encoder),
                env_id=self.env_id,
                env_kwargs=self.env_kwargs,
                episodes=self.episodes,
                deterministic=self.deterministic,
                max_steps=self.max_steps,
                seed=self.seed,
            ) as renderer,
        ):
            steps = renderer.max_steps or 0
            wanted = {round(i * steps / 3) for i in range(4)}
            first_episode: list[np.ndarray] = []

            def frames() -> Iterator[np.ndarray]:
                for frame in renderer:
                    episode, step = renderer.position
                    if episode == 0:
                        if step in wanted:
                            kept.append(frame)
                        first_episode[:] = [frame]
                    yield frame

            write_video(path, frames(), fps=float(renderer.env.metadata.get("render_fps", 20)))
        # An episode that ended early: show its last frame.
        if first_episode and not any(first_episode[0] is frame for frame in kept):
            kept.append(first_episode[0])
        self._log_image(frame_grid(kept))
        if self.verbose >= 1:
            print(f"video: {path}")
        return path

    def _log_image(self, grid: np.ndarray) -> None:
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        for output in self.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                output.writer.add_image("kp3d/rollout", grid, self.num_timesteps, dataformats="HWC")
                output.writer.flush()


class Evaluation(EvalCallback):
    """SB3's ``EvalCallback`` (periodic evaluations written to ``evaluations.npz``) with two
    changes: no evaluation before the agent's first update (it would measure the initial random
    policy, every run alike), and with ``report`` one line per evaluation on stdout instead of
    SB3's three (``eval @ 5000 steps: success 45%, return -12.3 ± 3.1``)."""

    def __init__(self, *args: Any, report: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, verbose=0, **kwargs)
        self.report = report

    def _on_step(self) -> bool:
        if getattr(self.model, "_n_updates", 0) == 0:
            return True  # SB3 counts n_calls itself: the next multiple of eval_freq evaluates
        evaluated_before = len(self.evaluations_timesteps)
        keep_going = super()._on_step()
        if self.report and len(self.evaluations_timesteps) > evaluated_before:
            returns = np.asarray(self.evaluations_results[-1], dtype=float)
            line = f"eval @ {self.num_timesteps} steps: "
            if self.evaluations_successes:
                line += f"success {np.mean(self.evaluations_successes[-1]):.0%}, "
            line += f"return {returns.mean():.1f} ± {returns.std():.1f}"
            _write_line(line)
        return keep_going


def _write_line(text: str) -> None:
    """Print a line without breaking a live progress bar (tqdm's ``write`` when loaded)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the progress extra
        print(text, flush=True)
    else:
        tqdm.write(text)


__all__ = ["Evaluation", "VideoCallback"]
