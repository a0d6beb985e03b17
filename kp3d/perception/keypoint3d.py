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

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kp3d.geometry import DEPTH_EPS, project, unproject
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    register_perception,
)
from kp3d.spatial import (
    EPS,
    crop_images,
    expected_value,
    gaussian_maps,
    heatmap_std,
    heatmap_to_image,
    image_to_heatmap,
    soft_argmax,
    spatial_softmax,
)

LOGIT_SCALE = 5.0
"""The reference multiplies the heatmap head's output by 5 before the softmax: sharper heatmaps
and attention from the start of training."""

SEPARATION_SCALE = 1000.0
"""``1 / (1000 d² + 1)``: the separation penalty halves at about 3 cm (world units, metres)."""


# -- losses and fusion as free functions ----------------------------------------------------------


def keypoint_attention(logits: torch.Tensor) -> torch.Tensor:
    """Attention of each keypoint in each view: ``A^k = softmax_k(mean_{pq} logits^k(p, q))``.

    Args:
        logits: ``(*, K, H, W)`` heatmap logits.

    Returns:
        ``(*, K)`` weights summing to 1 over the keypoints.
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (*, K, H, W); got {tuple(logits.shape)}")
    return logits.mean(dim=(-2, -1)).softmax(dim=-1)


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


def separation_loss(keypoints: torch.Tensor, scale: float = SEPARATION_SCALE) -> torch.Tensor:
    """``mean over k ≠ l of 1 / (scale · ||x̄^k - x̄^l||² + 1)``: keypoints push each other apart.

    Args:
        keypoints: ``(B, K, 3)`` fused world keypoints.
        scale: inverse squared distance at which the penalty halves.

    Returns:
        Scalar in ``(0, 1]``; zero for a single keypoint (there is no pair).
    """
    if keypoints.ndim != 3:
        raise ValueError(f"keypoints must have shape (B, K, D); got {tuple(keypoints.shape)}")
    count = keypoints.shape[1]
    if count < 2:
        return keypoints.new_zeros(())
    squared = (keypoints[:, :, None] - keypoints[:, None]).pow(2).sum(dim=-1)  # (B, K, K)
    distinct = ~torch.eye(count, dtype=torch.bool, device=keypoints.device)
    return (1.0 / (scale * squared[:, distinct] + 1.0)).mean()


def attention_entropy(attention: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Mean entropy ``-Σ_k A^k log A^k`` of attention distributions (low = few active keypoints).

    The reference's sparsity term is ``Σ_k |A^k|``, which is identically 1 for softmax attention
    (hence disabled there); the entropy is the sparsity measure that still has a gradient.

    Args:
        attention: ``(*, K)`` distributions over keypoints.
        eps: added inside the logarithm.

    Returns:
        Scalar.
    """
    return -(attention * (attention + eps).log()).sum(dim=-1).mean()


# -- the module ---------------------------------------------------------------------------------


def _conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class _ConvStack(nn.Sequential):
    """The encoder: three convs (``layers`` = (kernel, stride) each, padding 1), ReLU after each.

    Channels ``filters → 2 filters → 4 filters``.
    """

    def __init__(
        self, in_channels: int, filters: int, layers: Sequence[tuple[int, int]], groups: int
    ) -> None:
        channels = [in_channels, filters, 2 * filters, 4 * filters]
        modules: list[nn.Module] = []
        for index, (kernel, stride) in enumerate(layers):
            modules += [
                nn.Conv2d(
                    channels[index], channels[index + 1], kernel, stride, padding=1, groups=groups
                ),
                nn.ReLU(),
            ]
        super().__init__(*modules)


class _Decoder(nn.Sequential):
    """Conv 3x3 then transposed convs mirroring the encoder, so that ``sizes[-1] → sizes[0]``.

    ``sizes`` are the encoder's ``(h, w)`` at its input and after each layer; each transposed
    conv's ``output_padding`` restores the exact size its encoder layer received.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: int,
        layers: Sequence[tuple[int, int]],
        sizes: Sequence[tuple[int, int]],
        groups: int,
    ) -> None:
        channels = [out_channels, filters, 2 * filters, 4 * filters]
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, 4 * filters, 3, 1, padding=1, groups=groups),
            nn.ReLU(),
        ]
        for index in reversed(range(len(layers))):
            kernel, stride = layers[index]
            produced = [(n - 1) * stride - 2 + kernel for n in sizes[index + 1]]
            output_padding = tuple(t - p for t, p in zip(sizes[index], produced, strict=True))
            assert all(0 <= o < stride for o in output_padding), output_padding
            modules.append(
                nn.ConvTranspose2d(
                    channels[index + 1],
                    channels[index],
                    kernel,
                    stride,
                    padding=1,
                    output_padding=output_padding,
                    groups=groups,
                )
            )
            if index > 0:
                modules.append(nn.ReLU())
        super().__init__(*modules)


@register_perception("keypoint3d")
class Keypoint3D(Perception):
    """Keypoint3D (Chen, Abbeel, Pathak, ICML 2021): ``K`` world-frame 3D keypoints with attention.

    Architecture (``f`` = ``base_filters``, times ``C`` with per-view encoders, ``groups = C``):
    encoder conv ``(k₁/s₁) → f``, conv ``3/2 → 2f``, conv ``4/2 → 4f`` (padding 1, ReLU), then
    1x1 heads to ``C·K`` heatmap logits (x5) and ``C·K`` depth maps; decoder conv ``3/1 → 4f``,
    transposed convs ``4/2 → 2f``, ``3/2 → f``, ``(k₁/s₁) → 3C``, output ``· 0.5 + 0.5``.
    The first layer ``k₁/s₁`` is ``4/2`` for ``heatmap_stride=8`` (the reference's three strided
    convs 4/2, 3/2, 4/2) and ``3/1`` for ``heatmap_stride=4``.

    Sizes: each layer maps ``n → ⌊(n + 2 - k)/s⌋ + 1``. For the envs' 64 px views the default crop
    is 56 px and ``heatmap_stride=4`` gives ``56 → 56 → 28 → 14``: a 14 x 14 heatmap of 4 px
    cells, about the reference's resolution (its unpadded convs turn a 108 px crop of 128 px
    images into 12 x 12 cells of 9 px; here ``heatmap_stride=8, crop_size=108`` gives 13 x 13).
    With ``heatmap_stride=8`` at 64 px: ``56 → 28 → 14 → 7``, 7 x 7 cells of 8 px, the reference's
    three strided convs exactly. A heatmap cell ``(i, j)``
    covers crop pixels ``[j, j+1) · L/S x [i, i+1) · L/S``, exactly (:mod:`kp3d.spatial`).

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        num_keypoints: ``K`` (reference 6-32).
        base_filters: ``f``, filters of the first encoder layer per encoder (reference 16).
        per_view_encoders: one encoder per camera (grouped convs, ``groups=C``; the reference's
            ``independent_pred``); default ``False``: all cameras stacked as the channels of one
            encoder and one decoder, the reference default.
        heatmap_stride: image pixels per heatmap cell, 4 or 8 (see above).
        crop_size: crop side ``L`` or ``(h, w)``; random crops in training, centred in eval. The
            crop origin is added back to the keypoints before unprojection. ``None``: the image
            side minus an eighth, rounded down to a multiple of ``heatmap_stride`` (56 for 64 px,
            112 for 128 px; the reference crops 108 of 128). Pass ``image_size`` to disable.
        mean_depth: typical camera-frame depth of the scene, world units; depths are predicted
            in ``(0, 2 · mean_depth)`` and the Gaussians have ``gaussian_std`` cells at this depth
            (reference 0.5 for Meta-World, 1.7 for the Ant; the camera-to-target distance of the
            task's cameras is a good value).
        noise: training noise on ``(u, v)``: ``std_heatmap · clip(N(0, 1) · noise, -1, 1)``
            (reference 0.05; 0 disables).
        gaussian_std: std of the decoder's Gaussians in heatmap cells at depth ``mean_depth``
            (``sigma = gaussian_std · mean_depth / d̄``). The reference writes ``sigma = 1.5/S`` in
            ``[-1, 1]`` image coordinates, which is 0.75 cells (METHODS.md's "1.5 heatmap pixels"
            reads the normalised width as cells).
        decode_attention: scale each Gaussian by ``Ā^k · K / 2`` (reference ``--decode_attention``,
            used in all its published runs).
        background: condition the decoder on features of a fixed image per camera
            (:meth:`set_background`; the reference's ``--decode_first_frame``), so that static
            scenery need not be carried by keypoints. Meant for fixed cameras.
        reconstruction_weight: weight of the reconstruction MSE (reference 5.0).
        multiview_weight: weight of the multi-view consistency loss (reference 0.05; the
            reference's value is a per-coordinate MSE with self-pairs, i.e. ``(C-1)/(3C)`` of the
            squared-norm mean over distinct pairs used here).
        separation_weight: weight of the separation loss (reference 0.0025).
        sparsity_weight: weight of the attention-entropy sparsity term (default 0, off as in the
            reference).

    A loss term appears in ``PerceptionOutput.losses`` (already weighted) iff its weight is
    positive: ``reconstruction``, ``multiview``, ``separation``, ``sparsity``.
    """

    keypoint_frame = "world"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 16,
        base_filters: int = 16,
        per_view_encoders: bool = False,
        heatmap_stride: int = 4,
        crop_size: int | Sequence[int] | None = None,
        mean_depth: float = 1.0,
        noise: float = 0.05,
        gaussian_std: float = 0.75,
        decode_attention: bool = True,
        background: bool = False,
        reconstruction_weight: float = 5.0,
        multiview_weight: float = 0.05,
        separation_weight: float = 0.0025,
        sparsity_weight: float = 0.0,
    ) -> None:
        super().__init__(num_cameras, image_size)
        if not isinstance(num_keypoints, int) or num_keypoints < 1:
            raise ValueError(f"num_keypoints must be a positive int; got {num_keypoints!r}")
        if not isinstance(base_filters, int) or base_filters < 2:
            raise ValueError(f"base_filters must be an int >= 2; got {base_filters!r}")
        if heatmap_stride not in (4, 8):
            raise ValueError(f"heatmap_stride must be 4 or 8; got {heatmap_stride!r}")
        for name, value in (("mean_depth", mean_depth), ("gaussian_std", gaussian_std)):
            if not value > 0:
                raise ValueError(f"{name} must be positive; got {value!r}")
        for name, value in (
            ("noise", noise),
            ("reconstruction_weight", reconstruction_weight),
            ("multiview_weight", multiview_weight),
            ("separation_weight", separation_weight),
            ("sparsity_weight", sparsity_weight),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be non-negative; got {value!r}")

        self.num_keypoints = num_keypoints
        self.mean_depth = float(mean_depth)
        self.noise = float(noise)
        self.gaussian_std = float(gaussian_std)
        self.decode_attention = decode_attention
        self.loss_weights = {
            "reconstruction": float(reconstruction_weight),
            "multiview": float(multiview_weight),
            "separation": float(separation_weight),
            "sparsity": float(sparsity_weight),
        }
        self.crop_size = self._resolve_crop(crop_size, heatmap_stride)

        count = self.num_cameras
        self.groups = count if per_view_encoders else 1
        layers = [(3, 1) if heatmap_stride == 4 else (4, 2), (3, 2), (4, 2)]
        sizes = [self.crop_size]
        for kernel, stride in layers:
            sizes.append(tuple(_conv_output_size(n, kernel, stride, 1) for n in sizes[-1]))
        if min(sizes[-1]) < 2:
            raise ValueError(
                f"crop {self.crop_size} gives a heatmap of {sizes[-1]} cells; "
                "use larger images or crops"
            )
        self.heatmap_size: tuple[int, int] = sizes[-1]

        filters = base_filters * self.groups
        channels = 3 * count
        self.encoder = _ConvStack(channels, filters, layers, self.groups)
        self.heatmap_head = nn.Conv2d(4 * filters, count * num_keypoints, 1, groups=self.groups)
        self.depth_head = nn.Conv2d(4 * filters, count * num_keypoints, 1, groups=self.groups)
        decoder_inputs = count * num_keypoints
        self.background_encoder: _ConvStack | None = None
        if background:
            background_filters = (base_filters // 2) * self.groups
            self.background_encoder = _ConvStack(channels, background_filters, layers, self.groups)
            decoder_inputs += 4 * background_filters
            self.register_buffer("background", torch.full((count, 3, *self.image_size), math.nan))
        self._background_checked = False
        self.decoder = _Decoder(decoder_inputs, channels, filters, layers, sizes, self.groups)

    def _resolve_crop(self, crop_size: int | Sequence[int] | None, stride: int) -> tuple[int, int]:
        height, width = self.image_size
        if crop_size is None:
            crop = tuple(max(stride, (n - n // 8) // stride * stride) for n in (height, width))
        else:
            crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if (
            len(crop) != 2
            or not all(isinstance(n, int) and n > 0 for n in crop)
            or crop[0] > height
            or crop[1] > width
        ):
            raise ValueError(
                f"crop_size must be positive and at most the image size "
                f"{self.image_size}; got {crop_size!r}"
            )
        return int(crop[0]), int(crop[1])

    @property
    def features_dim(self) -> int:
        """``4 K``: ``[x, y, z, attention]`` per keypoint."""
        return 4 * self.num_keypoints

    def set_background(self, images: torch.Tensor) -> None:
        """Set the fixed per-camera images the decoder is conditioned on (``background=True``).

        Args:
            images: ``(C, 3, H, W)`` float in ``[0, 1]``, e.g. the first frame of an episode or a
                render of the scene without the robot. Stored in the state dict.
        """
        if self.background_encoder is None:
            raise RuntimeError("this Keypoint3D was built with background=False")
        expected = (self.num_cameras, 3, *self.image_size)
        if tuple(images.shape) != expected:
            raise ValueError(
                f"background images must have shape {expected}; got {tuple(images.shape)}"
            )
        self.background.copy_(images)
        self._background_checked = True

    def crop_origins(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(B, C, 2)`` ``(u, v)`` crop corners: uniform over every valid position in training,
        centred in eval."""
        spare_v, spare_u = (n - c for n, c in zip(self.image_size, self.crop_size, strict=True))
        shape = (batch, self.num_cameras)
        if self.training:
            u = torch.randint(0, spare_u + 1, shape, device=device)
            v = torch.randint(0, spare_v + 1, shape, device=device)
        else:
            u = torch.full(shape, spare_u // 2, device=device)
            v = torch.full(shape, spare_v // 2, device=device)
        return torch.stack([u, v], dim=-1).to(dtype)

    def detect(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits and depth maps of cropped views.

        Args:
            crops: ``(B, C, 3, h, w)`` in ``[0, 1]``.

        Returns:
            ``logits (B, C, K, S_h, S_w)`` and ``depth_maps (B, C, K, S_h, S_w)`` in
            ``(0, 2 · mean_depth)``.
        """
        batch = crops.shape[0]
        features = self.encoder(crops.flatten(1, 2) * 2.0 - 1.0)
        shape = (batch, self.num_cameras, self.num_keypoints, *self.heatmap_size)
        logits = (self.heatmap_head(features) * LOGIT_SCALE).reshape(shape)
        depth_maps = 2.0 * self.mean_depth * torch.sigmoid(self.depth_head(features))
        return logits, depth_maps.reshape(shape)

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
        centres = image_to_heatmap(
            pixels, self.heatmap_size, self.crop_size, crop_origins[:, :, None]
        )
        # Nearer points draw larger Gaussians; points behind a camera draw nothing in it.
        std = self.gaussian_std * self.mean_depth / depth.clamp(min=DEPTH_EPS)
        maps = gaussian_maps(centres, std, self.heatmap_size) * (depth > 0)[..., None, None]
        if self.decode_attention:
            maps = maps * (attention * self.num_keypoints / 2.0)[:, None, :, None, None]
        return maps

    def decode(self, maps: torch.Tensor, crop_origins: torch.Tensor) -> torch.Tensor:
        """Reconstruct the cropped views from Gaussian maps (and the background, if enabled).

        Args:
            maps: ``(B, C, K, S_h, S_w)``.
            crop_origins: ``(B, C, 2)`` (to crop the background like the views).

        Returns:
            ``(B, C, 3, h, w)`` reconstructions, about ``[0, 1]``.
        """
        batch = maps.shape[0]
        # Channels grouped so that with per-view decoders each group holds its own camera's input.
        latent = maps.reshape(batch, self.groups, -1, *self.heatmap_size)
        if self.background_encoder is not None:
            if not self._background_checked:
                if torch.isnan(self.background).any():
                    raise RuntimeError("background=True: call set_background(images) first")
                self._background_checked = True
            background = self.background.to(maps.dtype).expand(batch, *self.background.shape)
            crops = crop_images(background, crop_origins, self.crop_size)
            features = self.background_encoder(crops.flatten(1, 2) * 2.0 - 1.0)
            latent = torch.cat(
                [latent, features.reshape(batch, self.groups, -1, *self.heatmap_size)], dim=2
            )
        images = self.decoder(latent.flatten(1, 2)) * 0.5 + 0.5
        return images.reshape(batch, self.num_cameras, 3, *self.crop_size)

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; ``keypoints (B, K, 3)`` are world points,
        ``confidence (B, K)`` the mean attention ``Ā``."""
        intrinsics, extrinsics = self.check_inputs(images, intrinsics, extrinsics)
        batch = images.shape[0]
        origins = self.crop_origins(batch, images.device, images.dtype)
        crops = crop_images(images, origins, self.crop_size)

        logits, depth_maps = self.detect(crops)
        heatmaps = spatial_softmax(logits)
        cells = soft_argmax(heatmaps)
        if self.training and self.noise > 0:
            jitter = (torch.randn_like(cells) * self.noise).clamp(-1.0, 1.0)
            cells = cells + heatmap_std(heatmaps, cells)[..., None] * jitter
        depth = expected_value(heatmaps, depth_maps)
        attention = keypoint_attention(logits)  # (B, C, K)
        detections = heatmap_to_image(cells, self.heatmap_size, self.crop_size, origins[:, :, None])
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
                reconstructions = self.decode(maps, origins)
                losses["reconstruction"] = weights["reconstruction"] * F.mse_loss(
                    reconstructions, crops
                )
            if weights["multiview"] > 0:
                losses["multiview"] = weights["multiview"] * multiview_consistency_loss(
                    points_views
                )
            if weights["separation"] > 0:
                losses["separation"] = weights["separation"] * separation_loss(keypoints)
            if weights["sparsity"] > 0:
                losses["sparsity"] = weights["sparsity"] * attention_entropy(attention)

        visuals = PerceptionVisuals(
            points=projections.detach(),
            detections=detections.detach(),
            heatmaps=heatmaps.detach(),
            reconstructions=None if reconstructions is None else reconstructions.detach(),
            crop_origins=origins,
            crop_size=self.crop_size,
        )
        return PerceptionOutput(
            features=features,
            keypoints=keypoints,
            confidence=mean_attention,
            losses=losses,
            visuals=visuals,
        )


__all__ = [
    "Keypoint3D",
    "attention_entropy",
    "fuse_views",
    "keypoint_attention",
    "multiview_consistency_loss",
    "separation_loss",
]
