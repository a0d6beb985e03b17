"""Video writing: formats, frame counts, even sizes, no half-written files; keypoint markers."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from agents import video
from agents.video import writer


def _frames(count: int, height: int = 32, width: int = 48) -> list[np.ndarray]:
    return [np.full((height, width, 3), 8 * i, dtype=np.uint8) for i in range(count)]


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_written_video_decodes_with_expected_frames(tmp_path: Path, suffix: str) -> None:
    path = video.write_video(tmp_path / f"clip{suffix}", _frames(12), fps=10)
    decoded = iio.imread(path, plugin="FFMPEG" if suffix == ".mp4" else None)
    assert decoded.shape == (12, 32, 48, 3)
    # Brightness ramps as written (lossy codec: compare loosely).
    means = decoded.reshape(12, -1).mean(axis=1)
    assert np.all(np.diff(means) > 0)
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]


def test_odd_sizes_are_refused_for_mp4_but_fine_for_gif(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even frame sizes"):
        video.write_video(tmp_path / "odd.mp4", _frames(3, 33, 48))
    assert not list(tmp_path.iterdir())
    video.write_video(tmp_path / "odd.gif", _frames(3, 33, 48))


@pytest.mark.parametrize(
    ("name", "frames", "message"),
    [
        ("a.avi", _frames(2), "must end in one of"),
        ("a.mp4", [], "no frames"),
        ("a.mp4", [np.zeros((8, 8, 3), np.float32)], "uint8"),
        ("a.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "one size"),
    ],
)
def test_bad_input_is_refused(tmp_path: Path, name: str, frames: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        video.write_video(tmp_path / name, frames)


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer.iio, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        video.write_video(target, _frames(4))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_markers_land_on_the_pixel_containing_the_point() -> None:
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    colors = video.keypoint_colors(2)
    video.draw_points(image, np.array([[4.9, 7.2], [29.5, 19.99]]), colors, radius=0)
    np.testing.assert_array_equal(image[7, 4], colors[0])
    np.testing.assert_array_equal(image[19, 29], colors[1])
    assert (image.sum(axis=2) > 0).sum() == 2


def test_upscale_is_nearest_neighbour() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = video.upscale(image, 3)
    assert big.shape == (6, 6, 3)
    np.testing.assert_array_equal(big[::3, ::3], image)
    with pytest.raises(ValueError, match="positive integer"):
        video.upscale(image, 0)
