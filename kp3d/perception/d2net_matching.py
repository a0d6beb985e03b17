"""D2-Net's cross-view matching and triangulation: mutual nearest neighbours of descriptors
between every pair of cameras, the best matches triangulated into world points
(:func:`triangulate_matches`, what :class:`kp3d.perception.d2net.D2Net` reports to an agent).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from kp3d.geometry import triangulate
from kp3d.perception.d2net_network import Detections


def mutual_nearest_neighbours(
    descriptors_a: torch.Tensor,
    valid_a: torch.Tensor,
    descriptors_b: torch.Tensor,
    valid_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of two sets of unit descriptors (cosine similarity).

    Args:
        descriptors_a: ``(*, Ma, n)``.
        valid_a: ``(*, Ma)`` bool.
        descriptors_b: ``(*, Mb, n)``.
        valid_b: ``(*, Mb)`` bool.

    Returns:
        ``match (*, Ma)`` int64 index into ``b`` of each ``a``'s mutual nearest neighbour, -1 for
        none, and ``similarity (*, Ma)`` its cosine similarity (``-inf`` for none).
    """
    similarity = descriptors_a @ descriptors_b.transpose(-1, -2)  # (*, Ma, Mb)
    allowed = valid_a[..., :, None] & valid_b[..., None, :]
    similarity = similarity.masked_fill(~allowed, float("-inf"))
    best_b = similarity.argmax(dim=-1)  # (*, Ma)
    best_a = similarity.argmax(dim=-2)  # (*, Mb)
    back = best_a.gather(-1, best_b)
    value = similarity.gather(-1, best_b[..., None])[..., 0]
    own = torch.arange(descriptors_a.shape[-2], device=descriptors_a.device)
    mutual = (back == own) & torch.isfinite(value)
    match = torch.where(mutual, best_b, torch.full_like(best_b, -1))
    return match, torch.where(mutual, value, float("-inf"))


def triangulate_pairs(
    pixels_a: torch.Tensor,
    pixels_b: torch.Tensor,
    intrinsics: torch.Tensor,
    extrinsics: torch.Tensor,
) -> torch.Tensor:
    """World points of pixel matches, each between its own two cameras (two-view DLT,
    :func:`kp3d.geometry.triangulate`).

    Args:
        pixels_a: ``(*, 2)`` pixel of each match in its first camera.
        pixels_b: ``(*, 2)`` the matching pixel in its second camera.
        intrinsics: ``(*, 2, 3, 3)`` of the two cameras of each match.
        extrinsics: ``(*, 2, 4, 4)`` world→camera of the two cameras.

    Returns:
        ``(*, 3)``; NaN where a pixel is NaN.
    """
    points = torch.stack([pixels_a, pixels_b], dim=-2)[..., None, :]  # (*, 2, 1, 2)
    weights = torch.isfinite(points).all(-1).to(points.dtype)  # (*, 2, 1)
    return triangulate(points, intrinsics, extrinsics, weights)[..., 0, :]


def camera_pairs(count: int) -> list[tuple[int, int]]:
    """The unordered pairs ``(a, b)``, ``a < b``, of ``count`` cameras in lexicographic order."""
    return list(itertools.combinations(range(count), 2))


def triangulate_matches(
    detections: Detections,
    intrinsics: torch.Tensor,
    extrinsics: torch.Tensor,
    num_points: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``K`` best cross-view matches of a batch, triangulated.

    The matches are the mutual nearest neighbours (:func:`mutual_nearest_neighbours`) between the
    detections of every pair of cameras ``a < b`` (:func:`camera_pairs`), ordered by descending
    similarity (ties by camera pair, then by the detection's rank in camera ``a``); the first
    ``K`` are triangulated from their two pixels (:func:`triangulate_pairs`), and their
    confidence is the similarity clipped at 0. Fewer than ``K`` matches (e.g. one camera) are
    padded with points at the origin and confidence 0.

    Args:
        detections: of shape ``(B, C, M)``.
        intrinsics: ``(B, C, 3, 3)``.
        extrinsics: ``(B, C, 4, 4)``.
        num_points: ``K``.

    Returns:
        ``points (B, K, 3)`` (0 for padding), ``confidence (B, K)`` (0 for padding) and
        ``pixels (B, C, K, 2)``, each point's two matched detections in its two cameras (NaN
        in the other cameras and for padding).
    """
    batch, count, detected = detections.valid.shape
    pixels = intrinsics.new_full((batch, count, num_points, 2), float("nan"))
    pairs = camera_pairs(count)
    if not pairs:
        zeros = intrinsics.new_zeros(batch, num_points)
        return zeros[..., None].expand(-1, -1, 3).clone(), zeros, pixels
    first = torch.tensor([a for a, _ in pairs], device=intrinsics.device)
    second = torch.tensor([b for _, b in pairs], device=intrinsics.device)
    match, similarity = mutual_nearest_neighbours(
        detections.descriptors[:, first],
        detections.valid[:, first],
        detections.descriptors[:, second],
        detections.valid[:, second],
    )  # (B, pairs, M)
    pixels_b = detections.pixels[:, second].gather(
        2, match.clamp(min=0)[..., None].expand(-1, -1, -1, 2)
    )
    candidates = similarity.flatten(1)  # (B, pairs·M), pair-major
    take = min(num_points, candidates.shape[1])
    # A stable sort keeps ties in camera-pair order, then detection rank.
    order = candidates.sort(dim=1, descending=True, stable=True).indices[:, :take]
    pair_index = order // detected
    found = torch.isfinite(candidates.gather(1, order))
    rows = torch.arange(batch, device=order.device)[:, None]
    pixels_a = detections.pixels[:, first].flatten(1, 2)[rows, order]
    pixels_b = pixels_b.flatten(1, 2)[rows, order]
    cameras = torch.stack([first[pair_index], second[pair_index]], dim=-1)  # (B, take, 2)
    points = triangulate_pairs(
        torch.where(found[..., None], pixels_a, float("nan")),
        pixels_b,
        intrinsics[rows[..., None], cameras],
        extrinsics[rows[..., None], cameras],
    )
    found = found & torch.isfinite(points).all(-1)
    points = torch.where(found[..., None], points, 0.0)
    confidence = torch.where(found, candidates.gather(1, order).clamp(min=0.0), 0.0)
    slots = torch.arange(take, device=order.device)[None].expand(batch, -1)
    for side, matched in ((0, pixels_a), (1, pixels_b)):
        shown = torch.where(found[..., None], matched, float("nan"))
        pixels[rows, cameras[..., side], slots] = shown.to(pixels.dtype)
    pad = num_points - take
    return F.pad(points, (0, 0, 0, pad)), F.pad(confidence, (0, pad)), pixels


__all__ = [
    "camera_pairs",
    "mutual_nearest_neighbours",
    "triangulate_matches",
    "triangulate_pairs",
]
