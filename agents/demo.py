"""The demo job: a short random rollout of every kp3d environment, written as multi-camera MP4s
with the ground-truth keypoints drawn where the camera matrices project them, under a title strip
naming the task and each camera."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

import envs
from agents.video.compose import BACKGROUND, MUTED_COLOR, TEXT_COLOR
from agents.video.drawing import TextRenderer, draw_points, keypoint_colors, upscale
from agents.video.writer import write_video
from envs.rendering import tile_views

TITLE_MARGIN = 4
"""Pixels above, between and below the two lines of the title strip."""


@dataclass(frozen=True)
class DemoVideo:
    """One video written by :func:`rollout_videos`: its task, the cameras shown left to right, and
    the file."""

    env_id: str
    cameras: tuple[str, ...]
    path: Path

    def line(self, task_width: int = 0, cameras_width: int = 0) -> str:
        """One line of the index: task, cameras, path (columns padded to these widths)."""
        cameras = ", ".join(self.cameras)
        return f"{self.env_id:<{task_width}}  cameras {cameras:<{cameras_width}}  {self.path}"


def annotate_views(
    images: np.ndarray, pixels: np.ndarray, visible: np.ndarray, factor: int
) -> np.ndarray:
    """Upscale ``(C, H, W, 3)`` views by ``factor`` and draw keypoints ``(C, J, 2)`` on them.

    Visible keypoints are filled squares, occluded ones outlines, one colour per keypoint.
    """
    colors = keypoint_colors(pixels.shape[1])
    views = []
    for view, points, seen in zip(images, pixels, visible, strict=True):
        big = upscale(view, factor)
        # A pixel coordinate p covers [p*factor, (p+1)*factor) after upscaling.
        views.append(
            draw_points(big, points * factor, colors, radius=max(1, factor // 2), filled=seen)
        )
    return tile_views(np.stack(views))


def title_strip(
    title: str, cameras: Sequence[str], view_width: int, text: TextRenderer | None = None
) -> np.ndarray:
    """The strip drawn above tiled views: ``title`` on the first line, each camera's name on the
    second, above its view (views ``view_width`` pixels wide, left to right). Its height is even,
    as H.264 needs.

    Returns:
        ``(height, len(cameras) * view_width, 3)`` uint8.
    """
    text = text or TextRenderer()
    height = 2 * text.height + 3 * TITLE_MARGIN
    strip = np.empty((height + height % 2, len(cameras) * view_width, 3), np.uint8)
    strip[:] = BACKGROUND
    text.draw(strip, title, TITLE_MARGIN, TITLE_MARGIN, TEXT_COLOR)
    for index, name in enumerate(cameras):
        top = 2 * TITLE_MARGIN + text.height
        text.draw(strip, name, top, index * view_width + TITLE_MARGIN, MUTED_COLOR)
    return strip


def rollout_videos(
    out_dir: Path, steps: int = 100, size: int = 64, seed: int = 0, upscale_factor: int = 4
) -> list[DemoVideo]:
    """Roll out a uniformly random policy in every registered env and write one MP4 each: the
    cameras side by side under a title strip (:func:`title_strip`: task id and camera names).

    Returns:
        What was written, one :class:`DemoVideo` per env.
    """
    written = []
    for env_id in envs.TASKS:
        env = gym.make(env_id, size=size)
        env.action_space.seed(seed)
        observation, info = env.reset(seed=seed)
        base = env.unwrapped
        cameras = tuple(base.cameras.names)
        strip = title_strip(f"{env_id}  (random actions)", cameras, size * upscale_factor)
        frames = []
        for _ in range(steps):
            images = np.stack([observation[f"cam_{name}"] for name in cameras])
            views = annotate_views(
                images, info["keypoints_pixels"], info["keypoints_visible"], upscale_factor
            )
            frames.append(np.concatenate([strip, views]))
            observation, _, terminated, truncated, info = env.step(env.action_space.sample())
            if terminated or truncated:
                observation, info = env.reset()
        env.close()
        path = out_dir / f"{env_id.split('/')[-1]}.mp4"
        written.append(
            DemoVideo(env_id, cameras, write_video(path, frames, fps=base.metadata["render_fps"]))
        )
    return written
