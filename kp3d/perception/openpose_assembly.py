"""OpenPose's part-affinity assembly: peaks of the confidence maps grouped into instances by the
line integrals of the part affinity fields and a bipartite matching per limb
(:func:`parse_instances`), and the instances put into fixed slots for a policy
(:func:`order_instances`). Pure functions of NumPy or torch maps, on the map grid.

**Parsing**: peaks of each confidence map by 3x3 non-maximum suppression above
``peak_threshold``, refined by a Gaussian fit (:func:`kp3d.peaks.refine_peaks`); every candidate
limb between peaks of its two parts is scored by the line integral of its PAF along the segment,
sampled at ``samples`` equally spaced points (bilinear), ``E = mean_u L(p(u)) · d/||d||``, plus the
paper's distance prior ``min(prior_length / ||d|| - 1, 0)``; a candidate is kept if more than
``min_fraction`` of the samples exceed ``paf_threshold`` and its score is positive (the paper's two
criteria). Per limb, a bipartite matching between the peaks of its two parts maximises the total
score: the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) or the paper's greedy
choice by score. Matched limbs sharing a part are merged into instances; instances with fewer than
``min_parts`` parts are dropped.

**Slots**: instances are unlabelled, so the ``M`` best-scoring instances of a view take ``M``
fixed slots by *position*: a Hungarian matching of their root (or first found) part to one anchor
per slot, or left to right without anchors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import map_coordinates
from scipy.optimize import linear_sum_assignment

from kp3d.peaks import local_maxima, refine_peaks
from kp3d.perception.openpose_fields import LENGTH_EPS, check_limbs

Matcher = Literal["hungarian", "greedy"]
MATCHERS: tuple[str, ...] = ("hungarian", "greedy")


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


# -- peaks and limbs -------------------------------------------------------------------------------


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


# -- instances -------------------------------------------------------------------------------------


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


__all__ = [
    "MATCHERS",
    "Instances",
    "Matcher",
    "find_peaks",
    "limb_scores",
    "match_limbs",
    "order_instances",
    "parse_instances",
]
