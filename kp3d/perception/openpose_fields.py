"""OpenPose's part confidence maps and part affinity fields as training targets: how a keypoint
layout splits into instances, parts and a tree of limbs, the ground-truth maps and fields, and the
masked L2 loss (:class:`~kp3d.perception.openpose.OpenPose` trains on them).

**Parts and limbs** (:func:`part_layout`, :func:`check_limbs`): the ``K = M·P`` keypoints of an env
are ``M`` instances of the same ``P`` parts, given by each keypoint's instance id; the part of a
keypoint is its rank among its instance's keypoints. ``limbs`` are pairs of parts forming a
spanning tree over the parts (:func:`chain_limbs`: the chain through the parts in their order).

**Targets** (:func:`confidence_targets`, :func:`paf_targets`, on the map grid, cell centres at
``j + 0.5``): ``S*_j(p) = max_k exp(-||p - x_{j,k}||² / sigma²)`` over the *visible* keypoints
of part ``j``; the PAF of limb ``c = (j₁, j₂)`` of instance ``k`` is the unit vector from
``x_{j₁,k}`` to ``x_{j₂,k}`` on the points within the segment's length and ``sigma_l`` of its
line, averaged over the instances whose limb covers a point (zero elsewhere), drawn for limbs with
both ends visible.

**Loss** (:func:`masked_l2`): at every stage, ``Σ_p W(p) ||pred(p) - target(p)||²`` averaged over
the cells and channels (one term per stage). ``W`` (:func:`loss_masks`) is 0 where the label is
unknown, as the paper's mask of unannotated people: within ``2 sigma`` of an invisible keypoint
(occluded, or outside the image) in its part's channel, and on the region of a limb with an
invisible end in that limb's channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kp3d.perception.coordinates import cell_grid

LENGTH_EPS = 1e-6
"""Limbs shorter than this (map cells) have no direction: no PAF is drawn or scored for them."""


# -- parts, instances and limbs ------------------------------------------------------------------


def part_layout(keypoint_instances: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Instance slot and part of every keypoint.

    Args:
        keypoint_instances: ``(K,)`` instance id of each keypoint; every instance must have the
            same number of keypoints ``P``, listed in the same part order.

    Returns:
        ``slots (K,)`` (the index of each keypoint's instance among the sorted ids),
        ``parts (K,)`` (its rank within its instance), ``M`` instances and ``P`` parts.

    Raises:
        ValueError: for an empty list or instances of different sizes.
    """
    ids = np.asarray(keypoint_instances, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("keypoint_instances must list the instance id of at least one keypoint")
    unique, slots, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if len(set(counts.tolist())) != 1:
        sizes = dict(zip(unique.tolist(), counts.tolist(), strict=True))
        raise ValueError(
            f"every instance must have the same number of keypoints (parts); got {sizes} "
            "keypoints per instance id"
        )
    parts = np.zeros_like(ids)
    for slot in range(len(unique)):
        members = np.flatnonzero(slots == slot)
        parts[members] = np.arange(len(members))
    return slots, parts, len(unique), int(counts[0])


def check_limbs(limbs: Sequence[Sequence[int]], num_parts: int) -> np.ndarray:
    """Validate that ``limbs`` form a spanning tree over ``num_parts`` parts.

    Returns:
        ``(P - 1, 2)`` int64 part pairs.

    Raises:
        ValueError: naming what is wrong (range, count, a cycle or an unconnected part).
    """
    pairs = np.asarray(limbs, dtype=np.int64).reshape(-1, 2) if len(limbs) else np.zeros((0, 2))
    pairs = pairs.astype(np.int64)
    if len(pairs) != num_parts - 1 or ((pairs < 0) | (pairs >= num_parts)).any():
        raise ValueError(
            f"limbs must be {num_parts - 1} pairs of parts in [0, {num_parts}) forming a spanning "
            f"tree over the {num_parts} parts; got {pairs.tolist()}"
        )
    root = list(range(num_parts))

    def find(part: int) -> int:
        while root[part] != part:
            part = root[part]
        return part

    for first, second in pairs.tolist():
        a, b = find(first), find(second)
        if a == b:
            raise ValueError(
                f"limbs {pairs.tolist()} hold a cycle (or a self-loop) at {first, second}"
            )
        root[a] = b
    return pairs


def chain_limbs(num_parts: int) -> tuple[tuple[int, int], ...]:
    """The chain ``(0, 1), (1, 2), …, (P - 2, P - 1)`` through the parts in their order: a
    spanning tree over any ``P`` parts that assumes nothing about the object.

    Args:
        num_parts: ``P``.

    Returns:
        ``P - 1`` part pairs.
    """
    return tuple((part, part + 1) for part in range(num_parts - 1))


# -- targets ---------------------------------------------------------------------------------------


def _grid(size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """``(H, W, 2)`` cell centres ``(u, v)``."""
    return cell_grid(*size, device=like.device, dtype=like.dtype)


def confidence_targets(
    points: torch.Tensor, present: torch.Tensor, sigma: float, size: tuple[int, int]
) -> torch.Tensor:
    """Ground-truth confidence maps ``S*_j(p) = max_k exp(-||p - x_{j,k}||² / sigma²)``.

    Args:
        points: ``(B, M, P, 2)`` keypoints ``(u, v)`` on the map grid.
        present: ``(B, M, P)`` bool: keypoints that are drawn (visible).
        sigma: ``sigma`` in cells (note: ``sigma²``, not ``2 sigma²``, as in the paper).
        size: ``(H, W)`` of the grid.

    Returns:
        ``(B, P, H, W)``, zero for a part without a present keypoint.
    """
    grid = _grid(size, points)
    squared = (grid - points[..., None, None, :]).pow(2).sum(-1)  # (B, M, P, H, W)
    maps = torch.exp(-squared / sigma**2) * present[..., None, None].to(points.dtype)
    return maps.amax(dim=1)


def _limb_regions(
    start: torch.Tensor, end: torch.Tensor, width: float, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells on limb segments and the limbs' unit vectors.

    Args:
        start: ``(*, 2)`` first ends.
        end: ``(*, 2)`` second ends.
        width: half-width of the region across the segment, in cells.
        size: ``(H, W)``.

    Returns:
        ``on (*, H, W)`` bool (``False`` for limbs shorter than :data:`LENGTH_EPS`) and
        ``direction (*, 2)``.
    """
    offset = end - start
    length = offset.norm(dim=-1, keepdim=True)
    direction = offset / length.clamp(min=LENGTH_EPS)
    relative = _grid(size, start) - start[..., None, None, :]  # (*, H, W, 2)
    along = (relative * direction[..., None, None, :]).sum(-1)
    across = (relative[..., 0] * direction[..., None, None, 1]) - (
        relative[..., 1] * direction[..., None, None, 0]
    )
    on = (along >= 0) & (along <= length[..., None]) & (across.abs() <= width)
    return on & (length[..., None] >= LENGTH_EPS), direction


def paf_targets(
    points: torch.Tensor,
    present: torch.Tensor,
    limbs: np.ndarray,
    width: float,
    size: tuple[int, int],
) -> torch.Tensor:
    """Ground-truth part affinity fields.

    For limb ``c = (j₁, j₂)`` of instance ``k`` with both ends present, the unit vector
    ``v = (x_{j₂,k} - x_{j₁,k}) / ||·||`` on the cells ``p`` with
    ``0 <= v · (p - x_{j₁,k}) <= length`` and ``|v⊥ · (p - x_{j₁,k})| <= width``; averaged over
    the instances covering a cell, zero where none does.

    Args:
        points: ``(B, M, P, 2)`` keypoints on the map grid.
        present: ``(B, M, P)`` bool.
        limbs: ``(L, 2)`` part pairs.
        width: ``sigma_l`` in cells.
        size: ``(H, W)``.

    Returns:
        ``(B, 2 L, H, W)``: channels ``2c`` and ``2c + 1`` are the ``x`` (u) and ``y`` (v)
        components of limb ``c``.
    """
    first, second = limbs[:, 0], limbs[:, 1]
    on, direction = _limb_regions(points[:, :, first], points[:, :, second], width, size)
    on = on & (present[:, :, first] & present[:, :, second])[..., None, None]  # (B, M, L, H, W)
    weights = on.to(points.dtype)
    summed = (weights[..., None] * direction[..., None, None, :]).sum(dim=1)  # (B, L, H, W, 2)
    fields = summed / weights.sum(dim=1).clamp(min=1.0)[..., None]
    return fields.permute(0, 1, 4, 2, 3).flatten(1, 2)


def loss_masks(
    points: torch.Tensor,
    visible: torch.Tensor,
    limbs: np.ndarray,
    sigma: float,
    width: float,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss's ``W``: 0 where the label is unknown (see the module docstring).

    Args:
        points: ``(B, M, P, 2)`` keypoints on the map grid (invisible ones included).
        visible: ``(B, M, P)`` bool.
        limbs: ``(L, 2)`` part pairs.
        sigma: the confidence maps' ``sigma``: a disc of radius ``2 sigma`` around an invisible
            keypoint is masked.
        width: ``sigma_l``: the limb region of a limb with an invisible end is masked.
        size: ``(H, W)``.

    Returns:
        ``confidence (B, P, H, W)`` and ``paf (B, 2 L, H, W)`` masks in ``{0, 1}``.
    """
    grid = _grid(size, points)
    distance = (grid - points[..., None, None, :]).norm(dim=-1)  # (B, M, P, H, W)
    unknown = ((distance <= 2.0 * sigma) & ~visible[..., None, None]).any(dim=1)
    first, second = limbs[:, 0], limbs[:, 1]
    on, _ = _limb_regions(points[:, :, first], points[:, :, second], width, size)
    hidden_end = ~(visible[:, :, first] & visible[:, :, second])
    unknown_limb = (on & hidden_end[..., None, None]).any(dim=1)  # (B, L, H, W)
    confidence_mask = (~unknown).to(points.dtype)
    paf_mask = (~unknown_limb).to(points.dtype).repeat_interleave(2, dim=1)
    return confidence_mask, paf_mask


def masked_l2(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_p W(p) ||prediction(p) - target(p)||²`` over batch, channels and cells."""
    return (mask * (prediction - target).pow(2)).mean()


__all__ = [
    "LENGTH_EPS",
    "chain_limbs",
    "check_limbs",
    "confidence_targets",
    "loss_masks",
    "masked_l2",
    "paf_targets",
    "part_layout",
]
