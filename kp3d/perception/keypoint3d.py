"""Keypoint3D: unsupervised 3D keypoints from calibrated multi-view images.

Chen, Abbeel and Pathak, "Unsupervised Learning of Visual 3D Keypoints for Control", ICML 2021
(arXiv:2106.07643); reference code github.com/buoyancy99/unsup-3d-keypoints. The pipeline, per
sample of ``C`` views:

1. crop each view (random window in training, centred in eval), encode it into ``K`` heatmap
   logits and ``K`` depth maps on an ``S_h x S_w`` grid;
2. spatial softmax → expected pixel ``(u, v)`` (plus training noise scaled by the heatmap's own
   spread) and expected depth ``d``, with depth maps ``2 · mean_depth · sigmoid(·)``;
3. attention ``A_n^k = softmax_k(mean_{pq} logits_n^k)``;
4. the crop origin is added back and each view's ``(u, v, d)`` is lifted to the world with the
   exact camera matrices (:func:`kp3d.geometry.unproject`, per-step extrinsics);
5. fusion ``x̄^k = Σ_n A_n^k x_n^k / Σ_m A_m^k`` (:func:`fuse_views`);
6. decoding: ``x̄^k`` is projected into every view, a Gaussian whose width shrinks with depth is
   drawn there (scaled by the mean attention ``Ā^k · K / 2``), optionally stacked with features of
   a fixed background image of the same camera, and decoded back to the cropped view;
7. losses: reconstruction MSE, multi-view consistency, separation, optional attention sparsity.

The policy features are ``[x̄, ȳ, z̄, Ā]`` per keypoint, flattened (``4 K`` values).

Departures from the reference code, each deliberate (see METHODS.md §1.10):

* geometry is the renderer's exact pinhole model (:mod:`kp3d.geometry`), not clip-space algebra;
* the multi-view and separation losses average over distinct pairs only (no self-pairs);
* with per-view encoders and a background, the decoder's groups see their own camera's maps and
  background features (the reference concatenates them so that groups straddle cameras);
* random crop origins are drawn from the whole valid range (the reference never picks the last);
* heatmap coordinates use cell centres (``j + 0.5``), so heatmap → image pixels is an exact scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kp3d.geometry import DEPTH_EPS, project, unproject
from kp3d.perception.base import PerceptionOutput, check_positive, register_perception
from kp3d.perception.keypoint_autoencoder import (
    KeypointAutoencoder,
    attention_entropy,
    keypoint_attention,
    separation_loss,
)
from kp3d.spatial import EPS, expected_value

# -- losses and fusion as free functions ----------------------------------------------------------


def fuse_views(points: torch.Tensor, weights: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Confidence-weighted mean of per-view estimates: ``x̄^k = Σ_n w_n^k x_n^k / Σ_m w_m^k``.

    Args:
        points: ``(B, C, K, D)`` per-view estimates (world points for Keypoint3D).
        weights: ``(B, C, K)`` non-negative weights (attention).
        eps: added to the weights' total before dividing.

    Returns:
        ``(B, K, D)`` fused points.
    """
    if points.ndim != 4 or weights.shape != points.shape[:3]:
        raise ValueError(
            f"points must have shape (B, C, K, D) and weights (B, C, K); got "
            f"{tuple(points.shape)} and {tuple(weights.shape)}"
        )
    normalized = weights / (weights.sum(dim=1, keepdim=True) + eps)
    return (normalized[..., None] * points).sum(dim=1)


def multiview_consistency_loss(points: torch.Tensor) -> torch.Tensor:
    """``mean over n ≠ m, k of ||x_n^k - stopgrad(x_m^k)||²``: each view moves towards the others.

    Args:
        points: ``(B, C, K, 3)`` per-view world estimates of every keypoint.

    Returns:
        Scalar; zero for a single view (there is no pair).
    """
    if points.ndim != 4:
        raise ValueError(f"points must have shape (B, C, K, D); got {tuple(points.shape)}")
    count = points.shape[1]
    if count < 2:
        return points.new_zeros(())
    differences = points[:, :, None] - points[:, None].detach()  # [b, n, m] = x_n - sg(x_m)
    squared = differences.pow(2).sum(dim=-1)  # (B, C, C, K)
    distinct = ~torch.eye(count, dtype=torch.bool, device=points.device)
    return squared[:, distinct].mean()


@register_perception("keypoint3d")
class Keypoint3D(KeypointAutoencoder):
    """Keypoint3D (Chen, Abbeel, Pathak, ICML 2021): ``K`` world-frame 3D keypoints with attention.

    The encoder, crops, noise, attention and decoder are those of :class:`KeypointAutoencoder`
    (architecture, sizes and the keyword arguments ``num_keypoints``, ``base_filters``,
    ``per_view_encoders``, ``heatmap_stride``, ``crop_size``, ``noise``, ``gaussian_std``,
    ``decode_attention``, ``background`` and the shared loss weights there), with a second 1x1
    head beside the heatmap head: ``C·K`` depth maps ``2 · mean_depth · sigmoid(·)``. The crop
    origin is added back to the detections before unprojection. The decoder's Gaussians have
    ``gaussian_std`` cells at depth ``mean_depth`` (``sigma = gaussian_std · mean_depth / d̄``:
    near points draw larger) and are scaled by the mean attention ``Ā^k · K / 2``.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        mean_depth: typical camera-frame depth of the scene, world units; depths are predicted
            in ``(0, 2 · mean_depth)`` and the Gaussians have ``gaussian_std`` cells at this depth
            (reference 0.5 for Meta-World, 1.7 for the Ant; the camera-to-target distance of the
            task's cameras is a good value).
        multiview_weight: weight of the multi-view consistency loss (reference 0.05; the
            reference's value is a per-coordinate MSE with self-pairs, i.e. ``(C-1)/(3C)`` of the
            squared-norm mean over distinct pairs used here).
        **network: the keyword arguments of :class:`KeypointAutoencoder` (``num_keypoints=16``,
            ``base_filters=16``, ..., ``separation_weight=0.0025``, ...); the separation loss
            keeps the fused world keypoints apart (:func:`separation_loss`, scale 1000 in metres).

    A loss term appears in ``PerceptionOutput.losses`` (already weighted) iff its weight is
    positive: ``reconstruction``, ``multiview``, ``separation``, ``sparsity``.
    """

    keypoint_frame = "world"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        mean_depth: float = 1.0,
        multiview_weight: float = 0.05,
        **network: Any,
    ) -> None:
        super().__init__(num_cameras, image_size, {"multiview": multiview_weight}, **network)
        check_positive(mean_depth=mean_depth)
        self.mean_depth = float(mean_depth)
        head = self.heatmap_head
        self.depth_head = nn.Conv2d(head.in_channels, head.out_channels, 1, groups=self.groups)

    @property
    def features_dim(self) -> int:
        """``4 K``: ``[x, y, z, attention]`` per keypoint."""
        return 4 * self.num_keypoints

    def detect(
        self, crops: torch.Tensor, crop_origins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits and depth maps of cropped views.

        Args:
            crops: ``(B, C, 3, h, w)`` in ``[-1, 1]`` (:meth:`crop`).
            crop_origins: ``(B, C, 2)`` their corners.

        Returns:
            ``logits (B, C, K, S_h, S_w)`` and ``depth_maps (B, C, K, S_h, S_w)`` in
            ``(0, 2 · mean_depth)``.
        """
        features = self.encode(crops, crop_origins)
        logits = self.heatmap_logits(features)
        depth_maps = 2.0 * self.mean_depth * torch.sigmoid(self.depth_head(features))
        return logits, depth_maps.reshape(logits.shape)

    def keypoint_maps(
        self,
        pixels: torch.Tensor,
        depth: torch.Tensor,
        attention: torch.Tensor,
        crop_origins: torch.Tensor,
    ) -> torch.Tensor:
        """The decoder's input: a Gaussian per keypoint and view, at its projection.

        Args:
            pixels: ``(B, C, K, 2)`` full-image projections of the fused keypoints.
            depth: ``(B, C, K)`` their camera-frame depths.
            attention: ``(B, K)`` mean attention ``Ā``.
            crop_origins: ``(B, C, 2)``.

        Returns:
            ``(B, C, K, S_h, S_w)`` maps.
        """
        # Nearer points draw larger Gaussians; points behind a camera draw nothing in it.
        std = self.gaussian_std * self.mean_depth / depth.clamp(min=DEPTH_EPS)
        maps = self.draw_keypoints(pixels, std, attention[:, None], crop_origins)
        return maps * (depth > 0)[..., None, None]

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
        backgrounds: torch.Tensor | None = None,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; ``keypoints (B, K, 3)`` are world points,
        ``confidence (B, K)`` the mean attention ``Ā``."""
        intrinsics, extrinsics = self.check_inputs(images, intrinsics, extrinsics)
        origins = self.crop_origins(images.shape[0], images.device, images.dtype)
        crops = self.crop(images, origins)

        logits, depth_maps = self.detect(crops, origins)
        heatmaps, detections, attention = self.locate(logits, origins)
        depth = expected_value(heatmaps, depth_maps)
        points_views = unproject(detections, depth, intrinsics, extrinsics)  # (B, C, K, 3)
        keypoints = fuse_views(points_views, attention)
        mean_attention = attention.mean(dim=1)
        features = torch.cat([keypoints, mean_attention[..., None]], dim=-1).flatten(1)

        # The fused keypoints seen from every camera: what the decoder draws and a video shows.
        projections, projected_depth = project(keypoints[:, None], intrinsics, extrinsics)

        losses: dict[str, torch.Tensor] = {}
        reconstructions = None
        weights = self.loss_weights
        if compute_losses:
            if weights["reconstruction"] > 0:
                maps = self.keypoint_maps(projections, projected_depth, mean_attention, origins)
                pixel_weights = self.reconstruction_weights(images, origins, backgrounds)
                reconstructions, losses["reconstruction"] = self.reconstruct(
                    maps, crops, origins, pixel_weights, backgrounds
                )
            if weights["multiview"] > 0:
                losses["multiview"] = weights["multiview"] * multiview_consistency_loss(
                    points_views
                )
            if weights["separation"] > 0:
                losses["separation"] = weights["separation"] * separation_loss(keypoints)
            if weights["sparsity"] > 0:
                losses["sparsity"] = weights["sparsity"] * attention_entropy(attention)

        return PerceptionOutput(
            features=features,
            keypoints=keypoints,
            confidence=mean_attention,
            losses=losses,
            visuals=self.visuals(projections, detections, heatmaps, reconstructions, origins),
        )


__all__ = [
    "Keypoint3D",
    "attention_entropy",
    "fuse_views",
    "keypoint_attention",
    "multiview_consistency_loss",
    "separation_loss",
]
