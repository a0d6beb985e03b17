"""Keypoint rollout videos, the public entry: :func:`render_rollout` (frames, for Python) and
:func:`render_video` (an MP4 or GIF, written atomically, for ``kp3d render`` and
``kp3d eval --video``) roll out an agent (or a perception module alone) and draw what it sees.

The work is done by :mod:`agents.rollouts` (the rollout and its perception),
:mod:`agents.video` (frame layout, drawing, writing) and :mod:`agents.callbacks` (videos during
training); their names that used to live here (:class:`RolloutRenderer`, :class:`FrameComposer`,
:class:`StepView`, :class:`WorldView`, :class:`VideoCallback`, :func:`look_at`, ...) are
re-exported for one release.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

# Besides what this module uses, the names that used to live here are imported for one release
# (agents.training imports VideoCallback from here); __all__ lists them.
from agents.callbacks import VideoCallback
from agents.progress import progress_bar
from agents.rollouts import MIN_VIEW_SIDE, RolloutRenderer, default_upscale
from agents.runs import VIDEO_DIR
from agents.video.compose import GAP, ROWS, FrameComposer, StepView, frame_grid
from agents.video.world import WorldView
from agents.video.writer import resolve_video_path, write_video
from kp3d.geometry import look_at


def render_rollout(
    source: str | os.PathLike | BaseAlgorithm | None = None, **options: Any
) -> list[np.ndarray]:
    """Roll out an agent (or random actions) and return the rollout's frames.

    Args:
        source: a run directory, an SB3 model, or ``None`` (then ``env_id=`` and
            ``random_policy=True``).
        **options: the keyword arguments of :class:`RolloutRenderer` (``env_id``,
            ``perception``, ``random_policy``, ``episodes``, ``deterministic``, ``cameras``,
            ``seed``, ``max_steps``, ``upscale``, ...).

    Returns:
        ``(H, W, 3)`` uint8 frames, ``steps + 1`` per episode, all of one (even) size. A 100-step
        episode of three 64 px views with all rows is about 100 x 2 MB: use :func:`render_video`
        for long rollouts, which streams frames to the file.

    Example:
        >>> frames = render_rollout(  # doctest: +SKIP
        ...     env_id="kp3d/Reach-v0", perception="pretrain/perception.pt", random_policy=True
        ... )
    """
    with RolloutRenderer(source, **options) as renderer:
        return list(renderer)


@dataclass(frozen=True)
class RenderedVideo:
    """Result of :func:`render_video`.

    Attributes:
        path: the file written (``.gif`` where an MP4 was asked for but ffmpeg is missing).
        frames: frames written.
        frame_shape: ``(H, W, 3)`` of the frames.
        returns: ``(N,)`` return of each episode.
        lengths: ``(N,)`` steps of each episode.
        successes: ``(N,)`` ``info["is_success"]`` at each episode's end.
        seconds: wall time of rollout, drawing and encoding.
    """

    path: Path
    frames: int
    frame_shape: tuple[int, int, int]
    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray
    seconds: float

    def summary(self) -> str:
        """One line: episodes, returns, successes, frames and speed."""
        returns = ", ".join(f"{r:.2f}" for r in self.returns)
        height, width = self.frame_shape[:2]
        return (
            f"{len(self.returns)} episodes (returns {returns}; success "
            f"{int(self.successes.sum())}/{len(self.successes)}), {self.frames} frames of "
            f"{width}x{height} in {self.seconds:.1f} s ({self.frames / self.seconds:.1f} frames/s)"
        )


def render_video(
    source: str | os.PathLike | BaseAlgorithm | None = None,
    out: str | os.PathLike | None = None,
    *,
    fps: float | None = None,
    progress: bool = False,
    **options: Any,
) -> RenderedVideo:
    """Render a rollout (see :class:`RolloutRenderer`) into an MP4 or GIF file.

    Frames are streamed to the encoder (memory stays flat however long the rollout). The file is
    written under a temporary name and renamed when complete: an error or Ctrl-C leaves no
    truncated file under ``out`` (and any previous file there untouched).

    Args:
        source: a run directory, an SB3 model, or ``None``.
        out: ``.mp4`` or ``.gif`` file; an ``.mp4`` becomes a ``.gif`` when ffmpeg is missing.
        fps: frames per second (default: the env's ``render_fps``, real time).
        progress: show a progress bar (tqdm, when installed).
        **options: keyword arguments of :class:`RolloutRenderer`.

    Returns:
        :class:`RenderedVideo`.
    """
    if out is None:
        raise ValueError("render_video needs out=, the .mp4 or .gif file to write")
    path = resolve_video_path(out)
    start = time.perf_counter()
    with RolloutRenderer(source, **options) as renderer:
        rate = fps or float(renderer.env.metadata.get("render_fps", 20))
        bar = progress_bar(
            renderer.total_frames, unit="frame", description="render", enabled=progress
        )
        count = 0

        def frames() -> Iterator[np.ndarray]:
            nonlocal count
            for frame in renderer:
                count += 1
                bar.update()
                yield frame

        try:
            write_video(path, frames(), fps=rate)
        finally:
            bar.close()
        shape = renderer.composer.shape if renderer.composer is not None else (0, 0, 3)
        return RenderedVideo(
            path=path,
            frames=count,
            frame_shape=shape,
            returns=np.array(renderer.returns),
            lengths=np.array(renderer.lengths),
            successes=np.array(renderer.successes),
            seconds=time.perf_counter() - start,
        )


__all__ = [
    "GAP",
    "MIN_VIEW_SIDE",
    "ROWS",
    "VIDEO_DIR",
    "FrameComposer",
    "RenderedVideo",
    "RolloutRenderer",
    "StepView",
    "VideoCallback",
    "WorldView",
    "default_upscale",
    "frame_grid",
    "look_at",
    "render_rollout",
    "render_video",
    "resolve_video_path",
]
