"""A ring buffer of observation frames for unsupervised perception updates."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from gymnasium import spaces


class FrameBuffer:
    """Keeps the most recent ``capacity`` frames (observation entries, e.g. camera images and
    camera extrinsics) and samples uniform batches of them.

    Frames are stored with their observation space's dtype (``uint8`` images: 36 KB per frame for
    3 cameras at 64x64). Writing past the end wraps around to the start and keeps every frame of
    the batch (the reference implementation drops the part that does not fit). A batch larger
    than the capacity keeps its last ``capacity`` frames.

    Args:
        observation_space: the entries to store, e.g. ``{"cam_front": Box(0, 255, (3, 64, 64),
            uint8), "camera_extrinsics": Box(-inf, inf, (3, 4, 4), float32)}``.
        capacity: number of frames kept.
        seed: seed of the sampling generator.

    Example:
        >>> space = spaces.Dict({"cam": spaces.Box(0, 255, (2,), np.uint8)})
        >>> buffer = FrameBuffer(space, capacity=3)
        >>> buffer.add({"cam": np.array([[1, 1], [2, 2]], np.uint8)})
        >>> buffer.add({"cam": np.array([[3, 3], [4, 4]], np.uint8)})
        >>> len(buffer), sorted(buffer.frames["cam"][:, 0].tolist())
        (3, [2, 3, 4])
    """

    def __init__(self, observation_space: spaces.Dict, capacity: int, seed: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1; got {capacity}")
        if not observation_space.spaces:
            raise ValueError("a FrameBuffer needs at least one observation entry to store")
        self.capacity = int(capacity)
        self.frames: dict[str, np.ndarray] = {
            key: np.zeros((self.capacity, *space.shape), dtype=space.dtype)
            for key, space in observation_space.spaces.items()
        }
        self.position = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Memory held by the stored arrays, in bytes."""
        return sum(array.nbytes for array in self.frames.values())

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        """Append a batch of frames.

        Args:
            batch: for every stored key, ``(N, *shape)`` frames (other keys are ignored).

        Raises:
            ValueError: for a missing key or batches of different lengths.
        """
        missing = sorted(set(self.frames) - set(batch))
        if missing:
            raise ValueError(f"batch lacks {missing}; the buffer stores {sorted(self.frames)}")
        lengths = {len(batch[key]) for key in self.frames}
        if len(lengths) != 1:
            raise ValueError(f"all entries of a batch must have one length; got {lengths}")
        (count,) = lengths
        keep = min(count, self.capacity)
        # Split the write where it passes the end of the arrays: nothing is dropped at the seam.
        first = min(keep, self.capacity - self.position)
        for key, array in self.frames.items():
            values = np.asarray(batch[key])[count - keep :]
            array[self.position : self.position + first] = values[:first]
            array[: keep - first] = values[first:]
        self.position = (self.position + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` frames drawn uniformly (with replacement) from those stored.

        Raises:
            ValueError: if the buffer is empty.
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty FrameBuffer")
        indices = self.rng.integers(0, self.size, size=batch_size)
        return {key: array[indices] for key, array in self.frames.items()}


__all__ = ["FrameBuffer"]
