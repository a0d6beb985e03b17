"""Moved to :mod:`agents.video.drawing`; this module re-exports its names for one release."""

from agents.video.drawing import (
    MASK_CACHE_SIZE,
    Color,
    TextRenderer,
    blend,
    clip_segments,
    draw_discs,
    draw_rectangle,
    draw_segments,
    resize_nearest,
)

__all__ = [
    "MASK_CACHE_SIZE",
    "Color",
    "TextRenderer",
    "blend",
    "clip_segments",
    "draw_discs",
    "draw_rectangle",
    "draw_segments",
    "resize_nearest",
]
