"""Drawing a graph of keypoints as images: a Gaussian of each pixel's distance to the segment
joining two keypoints (an *edge heatmap*), or to one keypoint (a dot). AutoLink's decoder input
(:mod:`kp3d.perception.autolink`); distances in coordinates spanning ``[-1, 1]`` across the
image, as in that paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kp3d.perception.coordinates import normalized_coordinates
from kp3d.spatial import EPS, cell_centers


def segment_squared_distances(
    starts: torch.Tensor,
    ends: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    eps: float = EPS,
) -> torch.Tensor:
    """Squared Euclidean distance of every point of a grid to line segments.

    ``d² = ||q - (a + t (b - a))||²`` with ``t = clip(<q - a, b - a> / ||b - a||², 0, 1)``, the
    foot of the perpendicular clamped to the segment (so beyond an end, the distance to that end).

    Args:
        starts: ``(*, P, 2)`` segment ends ``a``.
        ends: ``(*, P, 2)`` segment ends ``b``.
        u: ``(W,)`` the grid's first coordinates (columns).
        v: ``(H,)`` the grid's second coordinates (rows): ``q = (u_j, v_i)``.
        eps: smallest ``||b - a||²`` divisor (a degenerate segment is its point).

    Returns:
        ``(*, P, H, W)`` squared distances.
    """
    direction = ends - starts  # (*, P, 2)
    du = u - starts[..., 0, None, None]  # (*, P, 1, W)
    dv = v[:, None] - starts[..., 1, None, None]  # (*, P, H, 1)
    length = direction.square().sum(-1)[..., None, None].clamp(min=eps)  # (*, P, 1, 1)
    projection = du * direction[..., 0, None, None] + dv * direction[..., 1, None, None]
    t = (projection / length).clamp(0.0, 1.0)
    # ||q - a - t (b - a)||² = ||q - a||² - t (2 <q - a, b - a> - t ||b - a||²): fewer full-size
    # tensors than forming the difference vectors.
    return (du.square() + dv.square() - t * (2.0 * projection - t * length)).clamp(min=0.0)


def edge_heatmaps(
    keypoints: torch.Tensor,
    image_size: Sequence[int],
    thickness: float,
    self_loops: bool = False,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One heatmap per pair of keypoints: a Gaussian of the distance to the segment joining them.

    ``S_ij(q) = exp(-d(q, [p_i, p_j])² / τ)`` at every pixel centre ``q``, with distances measured
    in coordinates spanning ``[-1, 1]`` across the image (:func:`normalized_coordinates`), as in
    the paper; on a square image of side ``L`` that is a Gaussian of standard deviation
    ``sqrt(τ / 2) · L / 2`` pixels across the segment.

    Args:
        keypoints: ``(N, K, 2)`` full-image pixels ``(u, v)``.
        image_size: ``(H, W)``.
        thickness: ``τ``.
        self_loops: also the ``K`` pairs ``(i, i)``: a segment of length 0, a Gaussian dot at
            ``p_i``.
        pairs: ``(first, second)`` index tensors of the pairs to draw instead of the triangle
            above (``(i, i)`` for every ``i``: one dot per keypoint).

    Returns:
        ``(N, P, H, W)`` maps in ``[0, 1]``, pairs ``(i, j)``, ``i < j`` (``i <= j`` with
        ``self_loops``), in the order of ``torch.triu_indices(K, K, offset)`` (offset 1, or 0).
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must have shape (N, K, 2); got {tuple(keypoints.shape)}")
    height, width = image_size
    count = keypoints.shape[1]
    if pairs is None:
        pairs = torch.triu_indices(count, count, 0 if self_loops else 1, device=keypoints.device)
    first, second = pairs
    coordinates = normalized_coordinates(keypoints, (height, width))
    u, v = cell_centers(height, width, device=keypoints.device, dtype=keypoints.dtype)
    u, v = 2.0 * u / width - 1.0, 2.0 * v / height - 1.0
    squared = segment_squared_distances(coordinates[:, first], coordinates[:, second], u, v)
    return torch.exp(-squared / thickness)


__all__ = ["edge_heatmaps", "segment_squared_distances"]
