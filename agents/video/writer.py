"""Writing videos: MP4 through imageio-ffmpeg, GIF through imageio, never half-written.

Owns the file side of :mod:`agents.video`: which formats exist, whether ffmpeg is there (and the
GIF fallback when it is not), and the atomic, streaming write of a sequence of frames.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from kp3d.files import atomic_write

VIDEO_SUFFIXES = (".mp4", ".gif")


@functools.lru_cache(maxsize=1)
def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg and its ffmpeg binary can be found (MP4 needs them)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return True


def _check_frame(frame: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8; got {frame.shape} {frame.dtype}")
    if shape is not None and frame.shape != shape:
        raise ValueError(f"all frames must have one size; got {shape} and {frame.shape}")
    return frame


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 20.0) -> Path:
    """Write ``(H, W, 3)`` uint8 frames to an MP4 or GIF file.

    Frames are consumed one at a time (a generator streams into the MP4 encoder without being
    held in memory; a GIF is assembled in memory by Pillow). The file is written under a
    temporary name and renamed when complete, so a failed or interrupted write (an exception or
    Ctrl-C while ``frames`` is being produced included) never leaves a truncated file under
    ``path``.

    Args:
        path: output file ending in ``.mp4`` or ``.gif``.
        frames: frames of one size. MP4 needs even height and width (H.264 with yuv420p; odd sizes
            otherwise come out as empty files).
        fps: frames per second.

    Returns:
        The path written.

    Raises:
        ValueError: for an unknown suffix, no frames, frames of different or odd sizes (MP4), or
            frames that are not uint8 RGB.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video file must end in one of {VIDEO_SUFFIXES}; got {path.name!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no frames to write")
    first = _check_frame(first)
    shape = first.shape
    if suffix == ".mp4" and (shape[0] % 2 or shape[1] % 2):
        raise ValueError(
            f"MP4 (H.264, yuv420p) needs even frame sizes; got height {shape[0]} and width "
            f"{shape[1]}. Pad or resize the frames, or write a .gif"
        )

    def checked() -> Iterator[np.ndarray]:
        yield first
        for frame in iterator:
            yield _check_frame(frame, shape)

    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":

        def write(temporary: str) -> None:
            # is_batch with an iterable: imageio's FFMPEG writer appends frame by frame.
            # macro_block_size=1: imageio-ffmpeg would otherwise resize to multiples of 16.
            iio.imwrite(
                temporary,
                checked(),
                plugin="FFMPEG",
                is_batch=True,
                fps=fps,
                codec="libx264",
                pixelformat="yuv420p",
                macro_block_size=1,
            )

    else:

        def write(temporary: str) -> None:
            with iio.imopen(temporary, "w", plugin="pillow", extension=".gif") as file:
                for frame in checked():
                    file.write(frame, is_batch=False, duration=1000.0 / fps, loop=0)

    atomic_write(path, write)
    return path


def resolve_video_path(path: str | os.PathLike) -> Path:
    """``path``, or the same name ending in ``.gif`` when it ends in ``.mp4`` and ffmpeg is not
    available (with a warning)."""
    path = Path(path)
    if path.suffix.lower() == ".mp4" and not ffmpeg_available():
        gif = path.with_suffix(".gif")
        warnings.warn(
            f"ffmpeg (imageio-ffmpeg) is not available: writing {gif} instead of {path}",
            stacklevel=2,
        )
        return gif
    return path


__all__ = ["VIDEO_SUFFIXES", "ffmpeg_available", "resolve_video_path", "write_video"]
