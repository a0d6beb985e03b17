"""The output of a method that finds ``K`` keypoints in every view on its own (``keypoint_frame``
``"image"``, cameras folded into the batch): features, keypoints, confidence and visuals built
alike for AutoLink, FSE, Transporter and Zhang et al.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kp3d.perception.base import PerceptionOutput, PerceptionVisuals
from kp3d.perception.coordinates import normalized_coordinates


def image_keypoint_output(
    pixels: torch.Tensor,
    heatmaps: torch.Tensor,
    num_cameras: int,
    image_size: Sequence[int],
    losses: dict[str, torch.Tensor],
    *,
    confidence: torch.Tensor | None = None,
    reconstructions: torch.Tensor | None = None,
) -> PerceptionOutput:
    """The output of a method that finds ``K`` keypoints in each view independently, its ``C``
    cameras folded into the batch (``N = B C``, camera-minor): ``features (B, 2 C K)`` the
    keypoints' :func:`~kp3d.perception.coordinates.normalized_coordinates` (camera-major,
    gradients flowing), ``keypoints (B, C K, 2)`` the pixels, and visuals drawing the (detached)
    pixels as both the points and the detections, with the heatmaps and reconstructions unfolded
    to ``(B, C, ...)``.

    Args:
        pixels: ``(N, K, 2)`` full-image pixels.
        heatmaps: ``(N, K, S_h, S_w)`` (each sums to 1) for the video.
        num_cameras: ``C``.
        image_size: ``(H, W)``.
        losses: the weighted auxiliary losses.
        confidence: ``(N, K)``, or ``None``.
        reconstructions: ``(N, 3, h, w)`` decoded views, or ``None``.
    """
    count = num_cameras
    batch = pixels.shape[0] // count
    pixels = pixels.reshape(batch, count, *pixels.shape[1:])
    detached = pixels.detach()
    if reconstructions is not None:
        reconstructions = reconstructions.detach().reshape(batch, count, *reconstructions.shape[1:])
    return PerceptionOutput(
        features=normalized_coordinates(pixels, image_size).flatten(1),
        keypoints=pixels.flatten(1, 2),
        confidence=None if confidence is None else confidence.reshape(batch, -1),
        losses=losses,
        visuals=PerceptionVisuals(
            points=detached,
            detections=detached,
            heatmaps=heatmaps.detach().reshape(batch, count, *heatmaps.shape[1:]),
            reconstructions=reconstructions,
        ),
    )


__all__ = ["image_keypoint_output"]
