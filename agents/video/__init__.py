"""Rollout videos without SB3 or torch: drawing (:mod:`.drawing`), the world panel's camera
(:mod:`.world`), frame layout (:mod:`.compose`) and writing files (:mod:`.writer`). What fills a
frame is :mod:`agents.rollouts`; the entry points are :mod:`agents.render`.

The names of the former module ``agents.video`` (writing, upscaling, keypoint colours and square
markers) stay importable from here.
"""

from agents.video.drawing import PALETTE, draw_points, keypoint_colors, upscale
from agents.video.writer import VIDEO_SUFFIXES, ffmpeg_available, resolve_video_path, write_video

__all__ = [
    "PALETTE",
    "VIDEO_SUFFIXES",
    "draw_points",
    "ffmpeg_available",
    "keypoint_colors",
    "resolve_video_path",
    "upscale",
    "write_video",
]
