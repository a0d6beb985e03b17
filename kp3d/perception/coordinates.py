"""Coordinates shared by the perception methods: pixels normalised to ``[-1, 1]`` across the
image (the ``(u, v)`` of the policy features of every image-frame method) and the grid of cell
centres of a map. Conventions are those of :mod:`kp3d.spatial` and :mod:`kp3d.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kp3d.spatial import cell_centers, rescale_pixels


def normalized_coordinates(pixels: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Pixels → coordinates in ``[-1, 1]`` across the image: ``2 u / W - 1``, ``2 v / H - 1``.

    The image's top-left corner ``(0, 0)`` maps to ``(-1, -1)`` and its bottom-right corner
    ``(W, H)`` to ``(1, 1)``; ``u`` still points right and ``v`` down.

    Args:
        pixels: ``(*, 2)`` full-image pixels ``(u, v)`` (:mod:`kp3d.geometry` convention).
        image_size: ``(H, W)``.

    Returns:
        ``(*, 2)`` normalised coordinates.
    """
    return rescale_pixels(pixels, from_size=tuple(image_size), to_size=2) - 1.0


def cell_grid(
    height: int,
    width: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The centres ``(u, v) = (j + 0.5, i + 0.5)`` of every cell of an ``H x W`` map.

    Args:
        height: rows ``H``.
        width: columns ``W``.
        device: device of the result.
        dtype: floating dtype of the result.

    Returns:
        ``(H, W, 2)``; ``.reshape(-1, 2)`` lists the cells row-major.
    """
    u, v = cell_centers(height, width, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


__all__ = ["cell_grid", "normalized_coordinates"]
