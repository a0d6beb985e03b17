"""Keypoint2D: the 2D ablation of Keypoint3D, unsupervised 2D keypoints in every view.

Chen, Abbeel and Pathak, ICML 2021 (METHODS.md §1.9), after Jakab et al., "Unsupervised Learning
of Object Landmarks through Conditional Image Generation", NeurIPS 2018: the pipeline of
Keypoint3D without depth, unprojection or fusion. Per sample of ``C`` views:

1. crop each view (random window in training, centred in eval) and encode it into ``K`` heatmap
   logits on an ``S_h x S_w`` grid (the encoder of :class:`KeypointAutoencoder`);
2. spatial softmax → expected pixel ``(u, v)`` (plus training noise scaled by the heatmap's own
   spread), crop origin added back: full-image pixels; attention
   ``A_n^k = softmax_k(mean_{pq} logits_n^k)``;
3. decoding: a Gaussian of fixed width ``gaussian_std`` cells at every keypoint of the view,
   scaled by its own attention ``A_n^k · K / 2``, optionally stacked with features of a fixed
   background image, decoded back to the cropped view;
4. losses: reconstruction MSE, separation between the keypoints of one view, optional attention
   sparsity.

The views are never related to each other: the camera matrices are accepted (and validated), so
that an agent treats every perception module alike, but play no part.

The policy features are ``[u, v, A]`` per camera and keypoint, camera-major, with ``(u, v)``
normalised to ``[-1, 1]`` by the image size
(:func:`~kp3d.perception.coordinates.normalized_coordinates`): ``3 C K`` values.

The reference code has a 2D mode that does not run (a shape mismatch); this module is built on
the same, tested machinery as :class:`~kp3d.perception.Keypoint3D` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kp3d.perception.base import PerceptionOutput, check_positive, register_perception
from kp3d.perception.coordinates import normalized_coordinates  # also re-exported, one release
from kp3d.perception.keypoint_autoencoder import (
    KeypointAutoencoder,
    attention_entropy,
    separation_loss,
)

IMAGE_SEPARATION_SCALE = 100.0
"""``1 / (100 d² + 1)`` with ``d`` in normalised image coordinates (``[-1, 1]`` across the
image): the separation penalty halves at ``d = 0.1``, 5 % of the image's width (3.2 px at 64 px,
under one 4 px heatmap cell). Keypoint3D's 3 cm (``scale`` 1000 in metres) is about the same
fraction, 4 %, of the view of the envs' default camera (45° field of view, 1 m away)."""


@register_perception("keypoint2d")
class Keypoint2D(KeypointAutoencoder):
    """Keypoint2D (the 2D ablation of Keypoint3D, ICML 2021): ``K`` keypoints per view in pixels.

    The encoder, crops, noise, attention and decoder are those of :class:`KeypointAutoencoder`
    (architecture, sizes and the keyword arguments ``num_keypoints`` (per view),
    ``base_filters``, ``per_view_encoders``, ``heatmap_stride``, ``crop_size``, ``noise``,
    ``gaussian_std``, ``decode_attention``, ``background`` and the loss weights there). The crop
    origin is added back, so the keypoints are full-image pixels whatever the crop. The keypoints
    of each view are drawn on that view's grid, as Gaussians of ``gaussian_std`` cells for every
    keypoint (there is no depth to scale them by) scaled by the view's own attention
    ``A_n^k · K / 2``. As in Keypoint3D, the default shared encoder and decoder
    (``per_view_encoders=False``) take the views stacked as channels, so that the decoder sees
    the maps of every view; ``per_view_encoders=True`` reconstructs each view from its own
    keypoints alone.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        separation_scale: see :data:`IMAGE_SEPARATION_SCALE`.
        **network: the keyword arguments of :class:`KeypointAutoencoder` (``num_keypoints=16``,
            ``base_filters=16``, ..., ``separation_weight=0.0025``, ...); the separation loss
            keeps the keypoints of each view apart,
            ``mean over views, k ≠ l of 1 / (separation_scale · ||p^k - p^l||² + 1)`` in
            normalised image coordinates
            (:func:`~kp3d.perception.coordinates.normalized_coordinates`).

    A loss term appears in ``PerceptionOutput.losses`` (already weighted) iff its weight is
    positive: ``reconstruction``, ``separation``, ``sparsity``.
    """

    keypoint_frame = "image"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        separation_scale: float = IMAGE_SEPARATION_SCALE,
        **network: Any,
    ) -> None:
        super().__init__(num_cameras, image_size, **network)
        check_positive(separation_scale=separation_scale)
        self.separation_scale = float(separation_scale)

    @property
    def features_dim(self) -> int:
        """``3 C K``: ``[u, v, attention]`` per camera and keypoint."""
        return 3 * self.num_cameras * self.num_keypoints

    def detect(self, crops: torch.Tensor, crop_origins: torch.Tensor) -> torch.Tensor:
        """Heatmap logits of cropped views.

        Args:
            crops: ``(B, C, 3, h, w)`` in ``[-1, 1]`` (:meth:`crop`).
            crop_origins: ``(B, C, 2)`` their corners.

        Returns:
            ``(B, C, K, S_h, S_w)``.
        """
        return self.heatmap_logits(self.encode(crops, crop_origins))

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
        backgrounds: torch.Tensor | None = None,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; ``keypoints (B, C·K, 2)`` are full-image
        pixels, camera-major, and ``confidence (B, C·K)`` their attention. The matrices are
        validated but not used."""
        self.check_inputs(images, intrinsics, extrinsics)
        origins = self.crop_origins(images.shape[0], images.device, images.dtype)
        crops = self.crop(images, origins)

        heatmaps, detections, attention = self.locate(self.detect(crops, origins), origins)
        coordinates = normalized_coordinates(detections, self.image_size)  # (B, C, K, 2)
        features = torch.cat([coordinates, attention[..., None]], dim=-1).flatten(1)

        losses: dict[str, torch.Tensor] = {}
        reconstructions = None
        weights = self.loss_weights
        if compute_losses:
            if weights["reconstruction"] > 0:
                maps = self.draw_keypoints(detections, self.gaussian_std, attention, origins)
                pixel_weights = self.reconstruction_weights(images, origins, backgrounds)
                reconstructions, losses["reconstruction"] = self.reconstruct(
                    maps, crops, origins, pixel_weights, backgrounds
                )
            if weights["separation"] > 0:
                per_view = coordinates.flatten(0, 1)  # (B·C, K, 2): pairs within one view only
                losses["separation"] = weights["separation"] * separation_loss(
                    per_view, self.separation_scale
                )
            if weights["sparsity"] > 0:
                losses["sparsity"] = weights["sparsity"] * attention_entropy(attention)

        return PerceptionOutput(
            features=features,
            keypoints=detections.flatten(1, 2),
            confidence=attention.flatten(1),
            losses=losses,
            visuals=self.visuals(detections, detections, heatmaps, reconstructions, origins),
        )


__all__ = ["IMAGE_SEPARATION_SCALE", "Keypoint2D", "normalized_coordinates"]
