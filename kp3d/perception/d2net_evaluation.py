"""How well D2-Net matches across views: precision and recall of its cross-view matches against
the simulator's true correspondences, and the error of the points triangulated from them
(:func:`evaluate_matching`, run by ``benchmarks/d2net_matching.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.correspondence import find_correspondences
from kp3d.perception.d2net_matching import (
    camera_pairs,
    mutual_nearest_neighbours,
    triangulate_pairs,
)


@torch.no_grad()
def evaluate_matching(
    module: nn.Module,
    batches: FrameBatch | Iterable[FrameBatch],
    thresholds: Sequence[float] = (1.0, 2.0, 3.0),
    scales: Sequence[float] | None = None,
    max_detections: int | None = None,
) -> dict[str, float]:
    """Cross-view matching precision and recall, and triangulation error, on frames with depth.

    For every sample and every pair of cameras ``a < b`` of one time step: the pyramid
    detections of both views (:meth:`~kp3d.perception.d2net.D2Net.detect`), their mutual nearest
    neighbours, and the true location in ``b`` of every detection of ``a``
    (:mod:`kp3d.correspondence`, the occlusion test included). At a threshold ``τ`` (pixels):

    * a match is **correct** if its detection in ``b`` is within ``τ`` of the true location (a
      match whose point is occluded in ``b``, or off its image, is wrong);
    * **precision** = correct matches / matches;
    * **recall** = correct matches / detections of ``a`` that have a detection of ``b`` within
      ``τ`` of their true location (the matches that the detector made possible).

    Triangulation: each match is triangulated from its two pixels (:func:`triangulate_pairs`)
    and compared with the detection of ``a`` unprojected with ``a``'s depth map (only detections
    on a body, whose depth is defined).

    Args:
        module: a :class:`~kp3d.perception.d2net.D2Net` (its ``detect`` and ``depth_tolerance``;
            run in eval mode: BatchNorm uses its running statistics).
        batches: one :class:`FrameBatch` or several (counts are pooled), with ``depth`` and
            ``segmentation`` and ``C >= 2`` cameras.
        thresholds: pixel thresholds ``τ``.
        scales: pyramid of the detections (default: the module's).
        max_detections: detections per view (default: the module's).

    Returns:
        ``frames``, ``pairs`` (view pairs evaluated), ``detections`` (mean valid detections per
        view), ``matches`` (mean per view pair), ``moving_fraction`` (of the matches whose point
        of ``a`` is on a body other than body 0, the static world: floor and scenery);
        ``precision@τpx``, ``recall@τpx`` and ``precision_moving@τpx`` (over matches on other
        bodies) per threshold; ``triangulation_median_mm`` and ``triangulation_mean_mm`` over all
        matches on a body, and ``triangulation_median_mm@τpx`` over the correct ones (NaN where
        there are none).

    Raises:
        ValueError: for a batch without depth or segmentation, or with one camera.
    """
    if isinstance(batches, FrameBatch):
        batches = [batches]
    thresholds = tuple(float(t) for t in thresholds)
    totals = dict.fromkeys(("frames", "views", "pairs", "detections", "matches", "moving"), 0)
    correct = dict.fromkeys(thresholds, 0)
    correct_moving = dict.fromkeys(thresholds, 0)
    possible = dict.fromkeys(thresholds, 0)
    errors_mm: list[torch.Tensor] = []
    correct_errors_mm: dict[float, list[torch.Tensor]] = {t: [] for t in thresholds}
    device = next(module.parameters()).device
    training = module.training
    module.eval()
    try:
        for batch in batches:
            if batch.depth is None or batch.segmentation is None:
                raise ValueError(
                    "evaluate_matching needs FrameBatch.depth and FrameBatch.segmentation"
                )
            if batch.num_cameras < 2:
                raise ValueError("evaluate_matching needs at least two cameras per frame")
            batch = batch.to(device)
            found = module.detect(batch.images, scales, max_detections)  # (B, C, M)
            totals["frames"] += batch.batch_size
            totals["views"] += batch.batch_size * batch.num_cameras
            totals["detections"] += int(found.valid.sum())
            for a, b in camera_pairs(batch.num_cameras):
                totals["pairs"] += batch.batch_size
                valid_a, valid_b = found.valid[:, a], found.valid[:, b]
                match, _ = mutual_nearest_neighbours(
                    found.descriptors[:, a], valid_a, found.descriptors[:, b], valid_b
                )
                matched = match >= 0
                truth = find_correspondences(
                    torch.nan_to_num(found.pixels[:, a]),
                    batch.depth[:, a],
                    batch.segmentation[:, a],
                    batch.intrinsics[:, a],
                    batch.extrinsics[:, a],
                    batch.depth[:, b],
                    batch.segmentation[:, b],
                    batch.intrinsics[:, b],
                    batch.extrinsics[:, b],
                    depth_tolerance=module.depth_tolerance,
                )
                has_truth = truth.valid & valid_a
                pixels_b = found.pixels[:, b]  # (B, M, 2), NaN where invalid
                matched_b = pixels_b.gather(1, match.clamp(min=0)[..., None].expand(-1, -1, 2))
                error = (matched_b - truth.target).norm(dim=-1)
                error = torch.where(matched & has_truth, error, float("inf"))
                nearest = torch.cdist(truth.target, torch.nan_to_num(pixels_b, nan=1e6))
                nearest = torch.where(has_truth, nearest.amin(dim=-1), float("inf"))
                moving = matched & (truth.bodies > 0)
                totals["matches"] += int(matched.sum())
                totals["moving"] += int(moving.sum())

                cameras = torch.tensor([a, b], device=device)
                points = triangulate_pairs(
                    found.pixels[:, a],
                    matched_b,
                    batch.intrinsics[:, cameras][:, None],
                    batch.extrinsics[:, cameras][:, None],
                )  # (B, M, 3)
                on_body = matched & (truth.bodies >= 0)
                distance_mm = 1000.0 * (points - truth.points).norm(dim=-1)
                errors_mm.append(distance_mm[on_body].cpu())
                for threshold in thresholds:
                    good = error <= threshold
                    correct[threshold] += int(good.sum())
                    correct_moving[threshold] += int((good & moving).sum())
                    possible[threshold] += int((nearest <= threshold).sum())
                    correct_errors_mm[threshold].append(distance_mm[good & on_body].cpu())
    finally:
        module.train(training)
    if totals["pairs"] == 0:
        raise ValueError("evaluate_matching got no frames")

    def summary(values: list[torch.Tensor], statistic: str) -> float:
        joined = torch.cat(values)
        if joined.numel() == 0:
            return float("nan")
        return float(joined.median() if statistic == "median" else joined.mean())

    result = {
        "frames": float(totals["frames"]),
        "pairs": float(totals["pairs"]),
        "detections": totals["detections"] / totals["views"],
        "matches": totals["matches"] / totals["pairs"],
        "moving_fraction": totals["moving"] / max(totals["matches"], 1),
    }
    for threshold in thresholds:
        name = f"{threshold:g}px"
        result[f"precision@{name}"] = correct[threshold] / max(totals["matches"], 1)
        result[f"recall@{name}"] = correct[threshold] / max(possible[threshold], 1)
        result[f"precision_moving@{name}"] = correct_moving[threshold] / max(totals["moving"], 1)
    result["triangulation_median_mm"] = summary(errors_mm, "median")
    result["triangulation_mean_mm"] = summary(errors_mm, "mean")
    for threshold in thresholds:
        result[f"triangulation_median_mm@{threshold:g}px"] = summary(
            correct_errors_mm[threshold], "median"
        )
    return result


__all__ = ["evaluate_matching"]
