"""The frame buffer keeps the most recent frames, including across the wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from agents.buffers import FrameBuffer


def _buffer(capacity: int) -> FrameBuffer:
    space = spaces.Dict(
        {
            "cam_a": spaces.Box(0, 255, (3, 2, 2), np.uint8),
            "camera_extrinsics": spaces.Box(-np.inf, np.inf, (1, 4, 4), np.float32),
        }
    )
    return FrameBuffer(space, capacity, seed=0)


def _frames(start: int, count: int) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + count)
    return {
        "cam_a": np.broadcast_to(ids[:, None, None, None], (count, 3, 2, 2)).astype(np.uint8),
        "camera_extrinsics": np.broadcast_to(ids[:, None, None, None], (count, 1, 4, 4)).astype(
            np.float32
        ),
    }


def _stored(buffer: FrameBuffer) -> list[int]:
    return sorted(buffer.frames["cam_a"][: len(buffer), 0, 0, 0].tolist())


def test_wrap_around_keeps_every_frame_of_the_batch() -> None:
    buffer = _buffer(10)
    buffer.add(_frames(0, 7))
    buffer.add(_frames(7, 6))  # 3 frames fit before the end, 3 go to the start
    assert len(buffer) == 10
    assert _stored(buffer) == list(range(3, 13))
    # Images and extrinsics of one frame stay together.
    np.testing.assert_array_equal(
        buffer.frames["cam_a"][:, 0, 0, 0], buffer.frames["camera_extrinsics"][:, 0, 0, 0]
    )


def test_a_batch_larger_than_the_buffer_keeps_its_last_frames() -> None:
    buffer = _buffer(4)
    buffer.add(_frames(0, 3))
    buffer.add(_frames(3, 9))
    assert _stored(buffer) == [8, 9, 10, 11]


def test_samples_come_from_stored_frames_only() -> None:
    buffer = _buffer(100)
    buffer.add(_frames(50, 5))
    batch = buffer.sample(64)
    assert batch["cam_a"].shape == (64, 3, 2, 2) and batch["cam_a"].dtype == np.uint8
    assert set(batch["cam_a"][:, 0, 0, 0].tolist()) <= set(range(50, 55))
    assert buffer.nbytes == 100 * (12 + 16 * 4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        _buffer(3).sample(1)
    with pytest.raises(ValueError, match="lacks"):
        _buffer(3).add({"cam_a": np.zeros((1, 3, 2, 2), np.uint8)})
    with pytest.raises(ValueError, match="capacity"):
        _buffer(0)
