"""OpenPose: bottom-up detection of several instances of one object kind with part affinity fields.

Cao, Hidalgo, Simon, Wei and Sheikh, "OpenPose: Realtime Multi-Person 2D Pose Estimation using Part
Affinity Fields", TPAMI 2019 (CVPR 2017) (METHODS.md §2, "Supervised 2D detectors").

**Parts and instances.** A scene holds ``M`` instances of one kind (MultiReach's three arms), each
with the same ``P`` *parts* (base, elbow, fingertip, target): the ``K = M·P`` keypoints of the env
are given by their instance ids (``keypoint_instances``, the env's ``keypoint_instances`` / the
dataset's ``instances``), and the part of a keypoint is its rank among its instance's keypoints
(the env lists every instance's parts in the same order). Instances of one part share one
confidence channel. ``limbs`` are pairs of parts that form a spanning tree over the parts; each
has a part affinity field (PAF) of two channels ``(x, y)``. The tree may hold limbs that the env's
skeleton lacks, as OpenPose adds connections beyond the kinematic tree: MultiReach's default adds
base → target, so that every arm's target is assembled with its arm.

**Network.** Every view is processed on its own (views folded into the batch). Backbone ``F``:
3x3 convs with ReLU, ``map_stride`` of them strided (the paper's VGG-19 front at stride 8 has no
pretrained weights here and its maps would be too coarse for these small scenes). Then ``T_p``
PAF stages ``L¹ = φ¹(F)``, ``Lᵗ = φᵗ(F, Lᵗ⁻¹)`` and ``T_c`` confidence stages
``S¹ = ρ¹(F, L^{T_p})``, ``Sᵗ = ρᵗ(F, L^{T_p}, Sᵗ⁻¹)`` (the TPAMI architecture, PAFs first), each
a stack of 3x3 convs and two 1x1 convs on the concatenated inputs.

**Targets** (:func:`confidence_targets`, :func:`paf_targets`, on the map grid, cell centres at
``j + 0.5``): ``S*_j(p) = max_k exp(-||p - x_{j,k}||² / sigma²)`` over the *visible* keypoints
of part ``j``; the PAF of limb ``c = (j₁, j₂)`` of instance ``k`` is the unit vector from
``x_{j₁,k}`` to ``x_{j₂,k}`` on the points within the segment's length and ``sigma_l`` of its
line, averaged over the instances whose limb covers a point (zero elsewhere), drawn for limbs with
both ends visible.

**Loss**: at every stage, ``Σ_p W(p) ||pred(p) - target(p)||²`` averaged over the cells and
channels (one term per stage). ``W`` is 0 where the label is unknown, as the paper's mask of
unannotated people: within ``2 sigma`` of an invisible keypoint (occluded, or outside the image) in
its part's channel, and on the region of a limb with an invisible end in that limb's channels.

**Inference** (:func:`parse_instances`, a pure function of NumPy or torch maps): peaks of each
confidence map by 3x3 non-maximum suppression above ``peak_threshold``, refined by a Gaussian fit
(:func:`kp3d.peaks.refine_peaks`); every candidate limb between peaks of its two parts is scored by
the line integral of its PAF along the segment, sampled at ``samples`` equally spaced points
(bilinear), ``E = mean_u L(p(u)) · d/||d||``, plus the paper's distance prior
``min(prior_length / ||d|| - 1, 0)``; a candidate is kept if more than ``min_fraction`` of the
samples exceed ``paf_threshold`` and its score is positive (the paper's two criteria). Per limb, a
bipartite matching between the peaks of its two parts maximises the total score: the Hungarian
algorithm (``scipy.optimize.linear_sum_assignment``) or the paper's greedy choice by score.
Matched limbs sharing a part are merged into instances; instances with fewer than ``min_parts``
parts are dropped.

**As an agent's perception** (``keypoint_frame = "image"``): the instances of every view fill
``M`` fixed *slots*, one per instance id of the env, and the features are ``[u, v, score]`` per
camera and keypoint in the env's keypoint order (slot ``m``, part ``p`` for the keypoint of
instance ``m`` and part ``p``), ``(u, v)`` in ``[-1, 1]``
(:func:`~kp3d.perception.keypoint2d.normalized_coordinates`) and the part's peak value as score:
``3 C K`` values, as the hourglass's. Instances are unlabelled, so slots are assigned by
*position* (:func:`order_instances`): training records, per camera, the mean pixel of every
instance's root part (part 0; the buffer ``slot_anchors``), and the ``M`` best-scoring instances
found in a view take the slots by a Hungarian matching of their root (or first found part) to
these anchors. Where instances keep their places on average (MultiReach's arms stand on fixed
bases) every instance keeps its env's slot, so the features, the detections and PCK follow the
env's keypoint order; a module without anchors (never trained) orders instances left to right.
Empty slots and missing parts are zeros with score 0. Parsing is not differentiable: the module
is trained offline on labels (``kp3d pretrain``) and used frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import map_coordinates
from scipy.optimize import linear_sum_assignment
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.peaks import local_maxima, refine_peaks
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.keypoint2d import normalized_coordinates
from kp3d.perception.layers import conv_relu
from kp3d.spatial import cell_centers, image_to_heatmap

Matcher = Literal["hungarian", "greedy"]
MATCHERS: tuple[str, ...] = ("hungarian", "greedy")

LENGTH_EPS = 1e-6
"""Limbs shorter than this (map cells) have no direction: no PAF is drawn or scored for them."""

MULTI_REACH_INSTANCES: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)
"""``kp3d/MultiReach-v0``'s keypoint instances: three arms of base, elbow, fingertip, target."""

MULTI_REACH_LIMBS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 3))
"""MultiReach's skeleton (base-elbow, elbow-fingertip) plus base → target, a spanning tree."""


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


# -- targets ---------------------------------------------------------------------------------------


def _grid(size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """``(H, W, 2)`` cell centres ``(u, v)``."""
    u, v = cell_centers(*size, device=like.device, dtype=like.dtype)
    return torch.stack(torch.broadcast_tensors(u[None, :], v[:, None]), dim=-1)


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


# -- inference -------------------------------------------------------------------------------------


@dataclass
class Instances:
    """Instances assembled in one view (:func:`parse_instances`), on the map grid.

    Attributes:
        points: ``(N, P, 2)`` part positions ``(u, v)``; NaN where a part is missing.
        scores: ``(N, P)`` peak value of each part; 0 where missing.
        score: ``(N,)`` the instance's score: its parts' peak values plus its limbs' PAF scores.
    """

    points: np.ndarray
    scores: np.ndarray
    score: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """``(N, P)`` bool: parts found."""
        return ~np.isnan(self.points[..., 0])

    def __len__(self) -> int:
        return len(self.points)


def _as_numpy(maps: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(maps, torch.Tensor):
        return maps.detach().cpu().double().numpy()
    return np.asarray(maps, dtype=np.float64)


def find_peaks(confidence: np.ndarray | torch.Tensor, threshold: float) -> list[np.ndarray]:
    """Peaks of every confidence map: 3x3 non-maximum suppression, Gaussian-fit refinement.

    Args:
        confidence: ``(P, H, W)`` maps (NumPy or torch).
        threshold: smallest peak value (strictly exceeded).

    Returns:
        ``P`` arrays ``(n_j, 3)`` of ``(u, v, value)`` on the map grid.
    """
    maps = torch.as_tensor(_as_numpy(confidence))
    peaks = []
    for part_map in maps:
        rows, columns = torch.nonzero(local_maxima(part_map, threshold), as_tuple=True)
        positions = refine_peaks(part_map[None], rows[None], columns[None])[0]
        values = part_map[rows, columns]
        peaks.append(torch.cat([positions, values[:, None]], dim=1).numpy())
    return peaks


def limb_scores(
    paf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    samples: int,
    paf_threshold: float,
    min_fraction: float,
    prior_length: float,
) -> np.ndarray:
    """PAF line-integral scores of every candidate limb between two sets of peaks.

    ``E = mean_u L(p(u)) · d / ||d||`` over ``samples`` points ``p(u) = (1 - u) a + u b`` at equal
    spacing, ``u ∈ [0, 1]``, read bilinearly from the field, plus the distance prior
    ``min(prior_length / ||d|| - 1, 0)``. Candidates failing the paper's criteria (more than
    ``min_fraction`` of the samples above ``paf_threshold``; positive score) or shorter than
    :data:`LENGTH_EPS` score ``-inf``.

    Args:
        paf: ``(2, H, W)`` the limb's field, ``x`` then ``y``.
        starts: ``(n_a, 2)`` peaks of the first part ``(u, v)``.
        ends: ``(n_b, 2)`` peaks of the second part.
        samples: points per segment.
        paf_threshold: smallest alignment of a sample that counts.
        min_fraction: fraction of the samples that must count.
        prior_length: length (cells) beyond which a limb is penalised.

    Returns:
        ``(n_a, n_b)`` scores.
    """
    offsets = ends[None, :, :] - starts[:, None, :]  # (n_a, n_b, 2)
    lengths = np.linalg.norm(offsets, axis=-1)
    directions = offsets / np.maximum(lengths, LENGTH_EPS)[..., None]
    fractions = np.linspace(0.0, 1.0, samples)
    points = starts[:, None, None, :] + fractions[:, None] * offsets[:, :, None, :]
    # Cell (i, j) holds the value at (u, v) = (j + 0.5, i + 0.5): index = coordinate - 0.5.
    coordinates = np.stack([points[..., 1].ravel() - 0.5, points[..., 0].ravel() - 0.5])
    field = np.stack(
        [map_coordinates(channel, coordinates, order=1, mode="nearest") for channel in paf],
        axis=-1,
    ).reshape(*points.shape)  # (n_a, n_b, samples, 2)
    alignment = (field * directions[:, :, None, :]).sum(-1)
    prior = np.minimum(prior_length / np.maximum(lengths, LENGTH_EPS) - 1.0, 0.0)
    score = alignment.mean(-1) + prior
    valid = (
        ((alignment > paf_threshold).sum(-1) > min_fraction * samples)
        & (score > 0)
        & (lengths >= LENGTH_EPS)
    )
    return np.where(valid, score, -np.inf)


def match_limbs(scores: np.ndarray, matcher: Matcher) -> list[tuple[int, int, float]]:
    """Bipartite matching of the candidates of one limb type, maximising the total score.

    Args:
        scores: ``(n_a, n_b)`` candidate scores; ``-inf`` for invalid candidates.
        matcher: ``"hungarian"`` (an optimal matching, ``linear_sum_assignment``) or ``"greedy"``
            (candidates in decreasing score, each kept if neither end is taken: the paper's).

    Returns:
        ``(a, b, score)`` of the chosen limbs.
    """
    if scores.size == 0:
        return []
    if matcher == "hungarian":
        # Valid scores are > 0 and invalid ones count as 0, so a full assignment of the maximum
        # total restricted to its valid pairs is a maximum-weight matching.
        gains = np.where(np.isfinite(scores), scores, 0.0)
        rows, columns = linear_sum_assignment(gains, maximize=True)
        return [
            (int(a), int(b), float(scores[a, b]))
            for a, b in zip(rows, columns, strict=True)
            if np.isfinite(scores[a, b])
        ]
    if matcher == "greedy":
        chosen: list[tuple[int, int, float]] = []
        used_a: set[int] = set()
        used_b: set[int] = set()
        for flat in np.argsort(-scores, axis=None, kind="stable"):
            a, b = np.unravel_index(flat, scores.shape)
            if not np.isfinite(scores[a, b]):
                break
            if a not in used_a and b not in used_b:
                chosen.append((int(a), int(b), float(scores[a, b])))
                used_a.add(int(a))
                used_b.add(int(b))
        return chosen
    raise ValueError(f"matcher must be one of {MATCHERS}; got {matcher!r}")


def parse_instances(
    confidence: np.ndarray | torch.Tensor,
    pafs: np.ndarray | torch.Tensor,
    limbs: Sequence[Sequence[int]] | np.ndarray,
    *,
    matcher: Matcher = "hungarian",
    peak_threshold: float = 0.1,
    paf_threshold: float = 0.05,
    samples: int = 10,
    min_fraction: float = 0.8,
    prior_length: float | None = None,
    min_parts: int = 2,
) -> Instances:
    """Assemble instances from confidence maps and part affinity fields (module docstring).

    Args:
        confidence: ``(P, H, W)`` confidence maps (NumPy or torch).
        pafs: ``(2 L, H, W)`` fields, channels ``2c, 2c + 1`` the ``x, y`` of limb ``c``.
        limbs: ``(L, 2)`` part pairs forming a spanning tree over the parts.
        matcher: ``"hungarian"`` or ``"greedy"`` (:func:`match_limbs`).
        peak_threshold: smallest confidence of a peak.
        paf_threshold: smallest PAF alignment of a sample that counts.
        samples: points per candidate segment for the line integral.
        min_fraction: fraction of samples above ``paf_threshold`` a limb needs.
        prior_length: limbs longer than this (cells) are penalised; ``None``: half the map
            height (the paper's prior).
        min_parts: instances with fewer parts are dropped.

    Returns:
        The :class:`Instances`, in the order they were formed.
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}; got {matcher!r}")
    confidence_maps, fields = _as_numpy(confidence), _as_numpy(pafs)
    num_parts = confidence_maps.shape[0]
    limb_array = check_limbs(limbs, num_parts)
    if confidence_maps.ndim != 3 or fields.shape != (
        2 * len(limb_array),
        *confidence_maps.shape[1:],
    ):
        raise ValueError(
            f"confidence must be (P, H, W) and pafs (2 L, H, W) on the same grid for "
            f"L = {len(limb_array)} limbs; got {confidence_maps.shape} and {fields.shape}"
        )
    if prior_length is None:
        prior_length = 0.5 * confidence_maps.shape[1]
    peaks = find_peaks(confidence_maps, peak_threshold)

    # Each instance: the peak index of every part (-1: missing) and its accumulated limb scores.
    members: list[np.ndarray] = []
    limb_totals: list[float] = []
    for limb, (first, second) in enumerate(limb_array.tolist()):
        scores = limb_scores(
            fields[2 * limb : 2 * limb + 2],
            peaks[first][:, :2],
            peaks[second][:, :2],
            samples=samples,
            paf_threshold=paf_threshold,
            min_fraction=min_fraction,
            prior_length=prior_length,
        )
        for a, b, score in match_limbs(scores, matcher):
            owners = [
                index
                for index, member in enumerate(members)
                if member[first] == a or member[second] == b
            ]
            if not owners:
                member = np.full(num_parts, -1, dtype=np.int64)
                member[first], member[second] = a, b
                members.append(member)
                limb_totals.append(score)
            elif len(owners) == 1:
                member = members[owners[0]]
                if member[first] in (-1, a) and member[second] in (-1, b):
                    member[first], member[second] = a, b
                    limb_totals[owners[0]] += score
            else:  # the limb joins two partial instances: merge them if they do not overlap
                keep, other = owners[0], owners[1]
                if not ((members[keep] >= 0) & (members[other] >= 0)).any():
                    members[keep] = np.maximum(members[keep], members[other])
                    limb_totals[keep] += limb_totals[other] + score
                    del members[other], limb_totals[other]

    points, part_scores, totals = [], [], []
    for member, limb_total in zip(members, limb_totals, strict=True):
        if (member >= 0).sum() < min_parts:
            continue
        position = np.full((num_parts, 2), np.nan)
        value = np.zeros(num_parts)
        for part, peak in enumerate(member.tolist()):
            if peak >= 0:
                position[part] = peaks[part][peak, :2]
                value[part] = peaks[part][peak, 2]
        points.append(position)
        part_scores.append(value)
        totals.append(value.sum() + limb_total)
    if min_parts <= 1:  # single peaks no limb claimed are instances of one part
        claimed = [{int(m[part]) for m in members if m[part] >= 0} for part in range(num_parts)]
        for part in range(num_parts):
            for peak, (u, v, value) in enumerate(peaks[part].tolist()):
                if peak not in claimed[part]:
                    position = np.full((num_parts, 2), np.nan)
                    position[part] = (u, v)
                    scores_row = np.zeros(num_parts)
                    scores_row[part] = value
                    points.append(position)
                    part_scores.append(scores_row)
                    totals.append(value)
    return Instances(
        points=np.asarray(points, dtype=np.float64).reshape(-1, num_parts, 2),
        scores=np.asarray(part_scores, dtype=np.float64).reshape(-1, num_parts),
        score=np.asarray(totals, dtype=np.float64).reshape(-1),
    )


def order_instances(
    instances: Instances, slots: int, anchors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-size slots for a policy: the ``slots`` best-scoring instances, placed by position.

    Each instance is located by its lowest-numbered present part (the root part when found).
    With ``anchors``, instances take the slots by a Hungarian matching that minimises the total
    distance of these locations to the slots' anchors; without, they fill the slots left to
    right (by ``u``, then ``v``).

    Args:
        instances: one view's :class:`Instances`.
        slots: ``M``.
        anchors: ``(M, 2)`` expected location of each slot's instance, or ``None``.

    Returns:
        ``points (M, P, 2)`` (0 where missing) and ``scores (M, P)`` (0 where missing).
    """
    num_parts = instances.points.shape[1]
    points = np.zeros((slots, num_parts, 2))
    scores = np.zeros((slots, num_parts))
    if len(instances) == 0:
        return points, scores
    best = np.argsort(-instances.score, kind="stable")[:slots]
    first = instances.present[best].argmax(axis=1)
    locations = instances.points[best, first]  # (n, 2)
    if anchors is None:
        chosen = best[np.lexsort((locations[:, 1], locations[:, 0]))]
        places = np.arange(len(chosen))
    else:
        distances = np.linalg.norm(locations[:, None] - np.asarray(anchors)[None], axis=-1)
        rows, places = linear_sum_assignment(distances)
        chosen = best[rows]
    points[places] = np.nan_to_num(instances.points[chosen], nan=0.0)
    scores[places] = instances.scores[chosen]
    return points, scores


# -- evaluation ------------------------------------------------------------------------------------


@dataclass
class AssemblyResult:
    """How well the instances of views were found and assembled (:func:`evaluate_assembly`).

    Attributes:
        parts_correct: visible ground-truth parts found within the threshold *in the instance
            matched to their own instance*.
        parts_visible: visible ground-truth parts.
        instances_correct: ground-truth instances (with >= 2 visible parts) assembled correctly:
            their matched instance has every visible part within the threshold and no part
            farther than it from the instance's own part.
        instances_total: ground-truth instances with >= 2 visible parts.
    """

    parts_correct: int = 0
    parts_visible: int = 0
    instances_correct: int = 0
    instances_total: int = 0

    @property
    def pck(self) -> float:
        """Per-instance PCK: ``parts_correct / parts_visible``."""
        return self.parts_correct / max(self.parts_visible, 1)

    @property
    def assembly_accuracy(self) -> float:
        """``instances_correct / instances_total``."""
        return self.instances_correct / max(self.instances_total, 1)

    def __add__(self, other: AssemblyResult) -> AssemblyResult:
        return AssemblyResult(
            self.parts_correct + other.parts_correct,
            self.parts_visible + other.parts_visible,
            self.instances_correct + other.instances_correct,
            self.instances_total + other.instances_total,
        )


def evaluate_assembly(
    points: np.ndarray,
    present: np.ndarray,
    truth: np.ndarray,
    visible: np.ndarray,
    threshold: float,
) -> AssemblyResult:
    """Score one view's instances against the ground truth.

    Predicted and true instances are paired by a Hungarian matching that maximises the number of
    visible parts found within ``threshold``; parts count only for the instance they are paired
    with (a part found in the wrong instance is a miss).

    Args:
        points: ``(N, P, 2)`` predicted parts (any units, e.g. image pixels).
        present: ``(N, P)`` bool: predicted parts that exist.
        truth: ``(M, P, 2)`` ground-truth parts, same units.
        visible: ``(M, P)`` bool.
        threshold: largest distance of a correct part.

    Returns:
        The counts of this view (add them up over views).
    """
    distance = np.linalg.norm(points[:, None] - truth[None], axis=-1)  # (N, M, P)
    close = present[:, None] & (distance <= threshold)
    hits = (close & visible[None]).sum(-1)  # (N, M)
    result = AssemblyResult(parts_visible=int(visible.sum()))
    result.instances_total = int((visible.sum(-1) >= 2).sum())
    if len(points) == 0:
        return result
    rows, columns = linear_sum_assignment(hits, maximize=True)
    for n, m in zip(rows.tolist(), columns.tolist(), strict=True):
        result.parts_correct += int(hits[n, m])
        complete = bool((close[n, m] | ~visible[m]).all())
        no_stray = bool((close[n, m] | ~present[n]).all())
        if visible[m].sum() >= 2 and complete and no_stray:
            result.instances_correct += 1
    return result


# -- the module ------------------------------------------------------------------------------------


class Stage(nn.Sequential):
    """One OpenPose stage: ``layers`` 3x3 convs and a 1x1 conv with ReLU, then a 1x1 conv to the
    stage's maps (no activation).

    Args:
        in_channels: channels of the concatenated inputs.
        channels: width of the stage.
        out_channels: ``2 L`` (PAF stage) or ``P`` (confidence stage).
        layers: number of 3x3 convs.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, layers: int) -> None:
        modules: list[nn.Module] = []
        for index in range(layers):
            modules += conv_relu(in_channels if index == 0 else channels, channels)
        modules += [*conv_relu(channels, channels, 1), nn.Conv2d(channels, out_channels, 1)]
        super().__init__(*modules)


class OpenPoseNetwork(nn.Module):
    """Backbone, ``T_p`` PAF stages and ``T_c`` confidence stages (module docstring).

    Args:
        num_parts: ``P`` confidence maps.
        num_limbs: ``L`` (``2 L`` PAF channels).
        channels: backbone and stage width.
        map_stride: image pixels per map cell (1, 2 or 4).
        paf_stages: ``T_p``.
        confidence_stages: ``T_c``.
        stage_layers: 3x3 convs per stage.
    """

    def __init__(
        self,
        num_parts: int,
        num_limbs: int,
        channels: int,
        map_stride: int,
        paf_stages: int,
        confidence_stages: int,
        stage_layers: int,
    ) -> None:
        super().__init__()
        half = channels // 2
        strided = {1: 0, 2: 1, 4: 2}[map_stride]
        layers = conv_relu(3, half)
        inputs = half
        for _ in range(strided):
            layers += conv_relu(inputs, channels, stride=2)
            inputs = channels
        layers += [*conv_relu(inputs, channels), *conv_relu(channels, channels)]
        self.backbone = nn.Sequential(*layers)
        paf, parts = 2 * num_limbs, num_parts
        self.paf_stages = nn.ModuleList(
            Stage(channels + (paf if t else 0), channels, paf, stage_layers)
            for t in range(paf_stages)
        )
        self.confidence_stages = nn.ModuleList(
            Stage(channels + paf + (parts if t else 0), channels, parts, stage_layers)
            for t in range(confidence_stages)
        )

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Maps of every stage.

        Args:
            images: ``(N, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``T_p`` PAFs ``(N, 2 L, S_h, S_w)`` and ``T_c`` confidence maps ``(N, P, S_h, S_w)``.
        """
        features = self.backbone(images * 2.0 - 1.0)
        pafs: list[torch.Tensor] = []
        for stage in self.paf_stages:
            pafs.append(stage(torch.cat([features, *pafs[-1:]], dim=1)))
        confidences: list[torch.Tensor] = []
        for stage in self.confidence_stages:
            confidences.append(stage(torch.cat([features, pafs[-1], *confidences[-1:]], dim=1)))
        return pafs, confidences


@register_perception("openpose")
class OpenPose(Perception):
    """OpenPose (Cao et al., TPAMI 2019): bottom-up instances of one kind from part confidence
    maps and part affinity fields (module docstring).

    Map grid: ``S = image side / map_stride`` (32 x 32 cells of 2 px for 64 px views by default).

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)``, divisible by ``map_stride``.
        keypoint_instances: ``(K,)`` instance id of each of the env's keypoints (default:
            MultiReach's :data:`MULTI_REACH_INSTANCES`); every instance lists the same ``P``
            parts in the same order. ``M`` (the number of ids) is the number of instance slots
            of the features.
        limbs: part pairs forming a spanning tree over the ``P`` parts (default MultiReach's
            :data:`MULTI_REACH_LIMBS`).
        channels: width of the backbone and stages.
        map_stride: image pixels per map cell: 1, 2 or 4.
        paf_stages: ``T_p`` (TPAMI: 5 at its scale).
        confidence_stages: ``T_c`` (TPAMI: 1).
        stage_layers: 3x3 convs per stage.
        sigma: ``sigma`` of the confidence maps, in cells.
        limb_width: ``sigma_l`` of the PAFs, in cells.
        matcher: ``"hungarian"`` or ``"greedy"`` for inference (:func:`parse_instances`).
        peak_threshold: smallest confidence of a peak.
        paf_threshold: smallest PAF alignment of a line-integral sample that counts.
        samples: line-integral samples per candidate limb.
        min_parts: smallest number of parts of an instance.
    """

    keypoint_frame = "image"
    requires_labels = True

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        keypoint_instances: Sequence[int] = MULTI_REACH_INSTANCES,
        limbs: Sequence[Sequence[int]] = MULTI_REACH_LIMBS,
        channels: int = 32,
        map_stride: int = 2,
        paf_stages: int = 2,
        confidence_stages: int = 1,
        stage_layers: int = 3,
        sigma: float = 1.5,
        limb_width: float = 1.0,
        matcher: Matcher = "hungarian",
        peak_threshold: float = 0.1,
        paf_threshold: float = 0.05,
        samples: int = 10,
        min_parts: int = 2,
    ) -> None:
        super().__init__(num_cameras, image_size)
        self.slots, self.parts, self.num_instances, self.num_parts = part_layout(keypoint_instances)
        self.limbs = check_limbs(limbs, self.num_parts)
        if map_stride not in (1, 2, 4):
            raise ValueError(f"map_stride must be 1, 2 or 4; got {map_stride!r}")
        if any(side % map_stride for side in self.image_size):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by map_stride {map_stride}"
            )
        check_positive_ints(
            channels=channels,
            paf_stages=paf_stages,
            confidence_stages=confidence_stages,
            stage_layers=stage_layers,
            samples=samples,
        )
        if channels % 2:
            raise ValueError(f"channels must be even; got {channels}")
        if not (sigma > 0 and limb_width > 0):
            raise ValueError(f"sigma and limb_width must be positive; got {sigma}, {limb_width}")
        if matcher not in MATCHERS:
            raise ValueError(f"matcher must be one of {MATCHERS}; got {matcher!r}")
        self.num_keypoints = len(self.slots)
        self.map_size: tuple[int, int] = (
            self.image_size[0] // map_stride,
            self.image_size[1] // map_stride,
        )
        self.sigma = float(sigma)
        self.limb_width = float(limb_width)
        self.parser_options = {
            "matcher": matcher,
            "peak_threshold": float(peak_threshold),
            "paf_threshold": float(paf_threshold),
            "samples": samples,
            "min_parts": int(min_parts),
        }
        self.network = OpenPoseNetwork(
            self.num_parts,
            len(self.limbs),
            channels,
            map_stride,
            paf_stages,
            confidence_stages,
            stage_layers,
        )
        # Mean full-image pixel of each instance's root part per camera, over the labels seen in
        # training (NaN until then), and how many labels each mean holds.
        count = self.num_cameras
        self.register_buffer("slot_anchors", torch.full((count, self.num_instances, 2), torch.nan))
        self.register_buffer("anchor_counts", torch.zeros(count, self.num_instances))

    @property
    def features_dim(self) -> int:
        """``3 C K``: ``[u, v, score]`` per view and keypoint (``K = M P``)."""
        return 3 * self.num_cameras * self.num_keypoints

    @torch.no_grad()
    def update_anchors(self, pixels: torch.Tensor, visible: torch.Tensor) -> None:
        """Fold the visible root parts of a labelled batch into :attr:`slot_anchors`.

        Args:
            pixels: ``(B, C, K, 2)`` full-image pixels in the env's keypoint order.
            visible: ``(B, C, K)`` bool.
        """
        roots = self.instance_points(pixels)[..., 0, :]  # (B, C, M, 2)
        seen = self.instance_points(visible[..., None])[..., 0, 0].to(pixels.dtype)  # (B, C, M)
        counts = self.anchor_counts + seen.sum(0)
        sums = (roots * seen[..., None]).sum(0) + self.slot_anchors.nan_to_num(0.0) * (
            self.anchor_counts[..., None]
        )
        means = sums / counts.clamp(min=1.0)[..., None]
        self.slot_anchors.copy_(torch.where(counts[..., None] > 0, means, self.slot_anchors))
        self.anchor_counts.copy_(counts)

    def stage_maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """PAFs and confidence maps of every stage, each view processed on its own.

        Args:
            images: ``(B, C, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``T_p`` tensors ``(B, C, 2 L, S_h, S_w)`` and ``T_c`` tensors
            ``(B, C, P, S_h, S_w)``.
        """
        batch, count = images.shape[:2]
        pafs, confidences = self.network(images.flatten(0, 1))
        unfold = [m.reshape(batch, count, *m.shape[1:]) for m in (*pafs, *confidences)]
        return unfold[: len(pafs)], unfold[len(pafs) :]

    def instance_points(self, pixels: torch.Tensor) -> torch.Tensor:
        """Rearrange the env's keypoints by instance and part.

        Args:
            pixels: ``(*, K, D)`` in the env's keypoint order.

        Returns:
            ``(*, M, P, D)``.
        """
        if pixels.shape[-2] != self.num_keypoints:
            raise ValueError(
                f"this OpenPose reads {self.num_keypoints} keypoints ({self.num_instances} "
                f"instances of {self.num_parts} parts); got {pixels.shape[-2]}: pass the "
                "dataset's instances as keypoint_instances"
            )
        arranged = pixels.new_zeros(
            *pixels.shape[:-2], self.num_instances, self.num_parts, pixels.shape[-1]
        )
        slots = torch.as_tensor(self.slots, device=pixels.device)
        parts = torch.as_tensor(self.parts, device=pixels.device)
        arranged[..., slots, parts, :] = pixels
        return arranged

    def targets(
        self, pixels: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets and loss masks of a batch of views.

        Args:
            pixels: ``(N, K, 2)`` full-image pixels in the env's keypoint order.
            visible: ``(N, K)`` bool.

        Returns:
            ``confidence (N, P, S_h, S_w)``, ``paf (N, 2 L, S_h, S_w)`` and their masks.
        """
        cells = self.instance_points(image_to_heatmap(pixels, self.map_size, self.image_size))
        shown = self.instance_points(visible[..., None])[..., 0].bool()
        confidence = confidence_targets(cells, shown, self.sigma, self.map_size)
        paf = paf_targets(cells, shown, self.limbs, self.limb_width, self.map_size)
        masks = loss_masks(cells, shown, self.limbs, self.sigma, self.limb_width, self.map_size)
        return confidence, paf, *masks

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """Masked L2 at every stage: ``paf_<t>`` and ``confidence_<t>``.

        Raises:
            ValueError: if ``batch`` has no labels or not the ``K`` keypoints of
                ``keypoint_instances``.
        """
        if batch.keypoints_pixels is None or batch.keypoints_visible is None:
            raise ValueError(
                "OpenPose is trained on ground-truth keypoints; this batch has none "
                "(build the dataset with `kp3d dataset`, which stores them)"
            )
        self.check_inputs(batch.images, batch.intrinsics, batch.extrinsics)
        pixels = batch.keypoints_pixels.to(batch.images.dtype).flatten(0, 1)
        confidence, paf, confidence_mask, paf_mask = self.targets(
            pixels, batch.keypoints_visible.flatten(0, 1).bool()
        )
        self.update_anchors(batch.keypoints_pixels.to(batch.images.dtype), batch.keypoints_visible)
        pafs, confidences = self.stage_maps(batch.images)
        losses = {
            f"paf_{t}": masked_l2(maps.flatten(0, 1), paf, paf_mask) for t, maps in enumerate(pafs)
        }
        for t, maps in enumerate(confidences):
            losses[f"confidence_{t}"] = masked_l2(maps.flatten(0, 1), confidence, confidence_mask)
        return losses

    def parse(
        self, confidence: torch.Tensor, pafs: torch.Tensor, **options: object
    ) -> list[Instances]:
        """Instances of every view, in full-image pixels.

        Args:
            confidence: ``(N, P, S_h, S_w)`` maps.
            pafs: ``(N, 2 L, S_h, S_w)`` fields.
            **options: overrides of the module's parser options (e.g. ``matcher="greedy"``).

        Returns:
            ``N`` :class:`Instances`.
        """
        settings = {**self.parser_options, **options}
        # Map cells tile the image exactly: (u, v) scale by the stride (as rescale_pixels).
        scale = np.array(
            [self.image_size[1] / self.map_size[1], self.image_size[0] / self.map_size[0]]
        )
        views = []
        for view_confidence, view_pafs in zip(confidence, pafs, strict=True):
            found = parse_instances(view_confidence, view_pafs, self.limbs, **settings)
            views.append(Instances(found.points * scale, found.scores, found.score))
        return views

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`. ``keypoints (B, C·K, 2)``: full-image pixels
        of every view's instance slots in the env's keypoint order (camera-major; 0 where a part
        or an instance is missing), with ``confidence (B, C·K)`` the parts' peak values (0 where
        missing); ``visuals.detections`` holds them as ``(B, C, K, 2)``. ``losses`` is always
        empty (:meth:`training_losses` needs labels). Not differentiable (instance parsing)."""
        self.check_inputs(images, intrinsics, extrinsics)
        batch, count = images.shape[:2]
        pafs, confidences = self.stage_maps(images)
        views = self.parse(confidences[-1].flatten(0, 1), pafs[-1].flatten(0, 1))
        anchors = self.slot_anchors.detach().cpu().double().numpy()
        slots = [
            order_instances(
                view,
                self.num_instances,
                None if np.isnan(anchors[index % count]).any() else anchors[index % count],
            )
            for index, view in enumerate(views)
        ]
        shape = (batch, count, self.num_instances, self.num_parts)
        points = torch.as_tensor(np.stack([p for p, _ in slots]), dtype=images.dtype)
        scores = torch.as_tensor(np.stack([s for _, s in slots]), dtype=images.dtype)
        slot_index = torch.as_tensor(self.slots)
        part_index = torch.as_tensor(self.parts)
        # (B, C, M, P) slots → (B, C, K) in the env's keypoint order.
        points = points.reshape(*shape, 2)[:, :, slot_index, part_index].to(images.device)
        scores = scores.reshape(shape)[:, :, slot_index, part_index].to(images.device)
        coordinates = torch.where(
            scores[..., None] > 0,
            normalized_coordinates(points, self.image_size),
            torch.zeros_like(points),
        )
        features = torch.cat([coordinates, scores[..., None]], dim=-1).flatten(1)
        heatmaps = confidences[-1].detach().clamp(min=0.0)
        heatmaps = heatmaps / (heatmaps.sum(dim=(-2, -1), keepdim=True) + 1e-8)
        return PerceptionOutput(
            features=features,
            keypoints=points.flatten(1, 2),
            confidence=scores.flatten(1),
            visuals=PerceptionVisuals(points=points, detections=points, heatmaps=heatmaps),
        )


__all__ = [
    "MATCHERS",
    "MULTI_REACH_INSTANCES",
    "MULTI_REACH_LIMBS",
    "AssemblyResult",
    "Instances",
    "OpenPose",
    "OpenPoseNetwork",
    "Stage",
    "check_limbs",
    "confidence_targets",
    "evaluate_assembly",
    "find_peaks",
    "limb_scores",
    "loss_masks",
    "masked_l2",
    "match_limbs",
    "order_instances",
    "paf_targets",
    "parse_instances",
    "part_layout",
]
