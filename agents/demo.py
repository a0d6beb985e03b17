"""The demo job: a short random rollout of every kp3d environment, written as multi-camera MP4s
with the ground-truth keypoints drawn where the camera matrices project them."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

import envs
from agents.video.drawing import draw_points, keypoint_colors, upscale
from agents.video.writer import write_video
from envs.rendering import tile_views


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


def rollout_videos(
    out_dir: Path, steps: int = 100, size: int = 64, seed: int = 0, upscale_factor: int = 4
) -> list[Path]:
    """Roll out a uniformly random policy in every registered env and write one MP4 each.

    Returns:
        The written video paths.
    """
    paths = []
    for env_id in envs.TASKS:
        env = gym.make(env_id, size=size)
        env.action_space.seed(seed)
        observation, info = env.reset(seed=seed)
        base = env.unwrapped
        frames = []
        for _ in range(steps):
            images = np.stack([observation[f"cam_{name}"] for name in base.cameras.names])
            frames.append(
                annotate_views(
                    images, info["keypoints_pixels"], info["keypoints_visible"], upscale_factor
                )
            )
            observation, _, terminated, truncated, info = env.step(env.action_space.sample())
            if terminated or truncated:
                observation, info = env.reset()
        env.close()
        path = out_dir / f"{env_id.split('/')[-1]}.mp4"
        paths.append(write_video(path, frames, fps=base.metadata["render_fps"]))
    return paths
