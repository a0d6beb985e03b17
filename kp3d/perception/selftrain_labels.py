"""Self-training's warm-up pseudo-labels and their augmentation: hand-crafted generic keypoints
of images (:func:`generic_keypoints`, corners or SIFT blobs from kornia) and labelled points
carried through a random warp of their view (:func:`warp_labels`).
"""

from __future__ import annotations

from typing import Literal

import kornia
import torch

from kp3d.peaks import local_maxima, strongest_peaks
from kp3d.spatial import EPS, heatmap_to_image, image_to_heatmap
from kp3d.warps import random_tps

GenericDetector = Literal["gftt", "harris", "sift"]


def generic_keypoints(
    views: torch.Tensor,
    detector: GenericDetector = "gftt",
    max_points: int = 24,
    window: int = 5,
    relative_threshold: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-crafted keypoints of images: the warm-up pseudo-labels.

    ``"gftt"`` (Shi-Tomasi "good features to track") and ``"harris"`` take the local maxima
    (``window x window`` NMS, :func:`kp3d.peaks.local_maxima`) of kornia's corner response on the
    grey image above ``relative_threshold`` times the image's strongest response, strongest
    first; ``"sift"`` takes the centres of kornia's ``ScaleSpaceDetector`` (SIFT's
    difference-of-Gaussians scale space).

    Args:
        views: ``(N, 3, H, W)`` in ``[0, 1]``.
        detector: ``"gftt"``, ``"harris"`` or ``"sift"``.
        max_points: ``P``, the most points per image.
        window: NMS window of the corner detectors, in pixels.
        relative_threshold: smallest corner response, relative to the image's largest.

    Returns:
        ``pixels (N, P, 2)`` full-image ``(u, v)`` (:mod:`kp3d.geometry` convention) and
        ``valid (N, P)`` bool (images with fewer points are padded).
    """
    gray = kornia.color.rgb_to_grayscale(views)
    if detector == "sift":
        lafs, responses = kornia.feature.ScaleSpaceDetector(num_features=max_points)(gray)
        # kornia puts pixel centres at integer coordinates; kp3d at half-integers.
        pixels = kornia.feature.get_laf_center(lafs) + 0.5
        return pixels, responses > 0
    if detector == "gftt":
        response = kornia.feature.gftt_response(gray)
    elif detector == "harris":
        response = kornia.feature.harris_response(gray)
    else:
        raise ValueError(f"detector must be 'gftt', 'harris' or 'sift'; got {detector!r}")
    response = response[:, 0]
    strongest = response.flatten(1).amax(dim=1).clamp(min=EPS)[:, None, None]
    peaks = local_maxima(response, 0.0, window) & (response > relative_threshold * strongest)
    return strongest_peaks(response.to(views.dtype), max_points, peaks)


def warp_labels(
    views: torch.Tensor,
    cells: torch.Tensor,
    ids: torch.Tensor,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    strength: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random warp (:func:`kp3d.warps.random_tps`) of views and of their labelled points: the
    labels of a warped view, which correspond to the original's by construction.

    Args:
        views: ``(N, 3, H, W)``.
        cells: ``(N, P, 2)`` labelled points on the ``grid_size`` grid laid over the views.
        ids: ``(N, P)`` their labels, -1 for none.
        image_size: ``(H, W)``.
        grid_size: ``(S_h, S_w)``.
        strength: of the warps.
        generator: random source (``None``: torch's global one).

    Returns:
        The warped ``views``, ``cells`` and ``ids``; labels that leave the image become -1.
    """
    warp = random_tps(
        len(views),
        image_size,
        strength,
        generator=generator,
        device=views.device,
        dtype=views.dtype,
    )
    pixels = heatmap_to_image(cells, grid_size, image_size)
    moved = image_to_heatmap(warp.points(pixels), grid_size, image_size)
    size = moved.new_tensor([grid_size[1], grid_size[0]])
    inside = ((moved >= 0) & (moved <= size)).all(dim=-1)
    return warp.images(views), moved, torch.where(inside, ids, -1)


__all__ = ["GenericDetector", "generic_keypoints", "warp_labels"]
