"""What Keypoint3D and its 2D ablation share: per-view heatmap keypoints, decoded into the views.

Both run one pipeline per sample of ``C`` views (METHODS.md §1):

1. crop each view (random window in training, centred in eval; :meth:`KeypointAutoencoder.crop`)
   and encode it into ``K`` heatmap logits on an ``S_h x S_w`` grid
   (:meth:`~KeypointAutoencoder.encode`, :meth:`~KeypointAutoencoder.heatmap_logits`);
2. spatial softmax → expected pixel ``(u, v)`` plus training noise scaled by the heatmap's own
   spread, moved back to full-image pixels (crop offset added), and attention
   ``A_n^k = softmax_k(mean_{pq} logits_n^k)`` (:meth:`~KeypointAutoencoder.locate`);
3. a Gaussian per keypoint and view, scaled by attention, drawn on the heatmap grid
   (:meth:`~KeypointAutoencoder.draw_keypoints`) and decoded back to the cropped view, optionally
   with features of an image of the empty scene (:meth:`~KeypointAutoencoder.reconstruct`),
   scored by a squared error weighted towards what differs from the empty scene
   (:mod:`kp3d.reconstruction`; ``foreground_weight``), so that small objects are reconstructed
   and therefore get keypoints.

What lies between 2 and 3 is the method: Keypoint3D lifts, fuses and reprojects the detections;
the 2D ablation draws them where they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.perception.base import (
    Perception,
    PerceptionVisuals,
    check_non_negative,
    check_positive,
    check_positive_ints,
)
from kp3d.perception.layers import (
    ConvDecoder,
    ConvLayer,
    ConvStack,
    conv_sizes,
    resolve_crop_size,
    sample_crop_origins,
)
from kp3d.perception.scene import EmptyScene
from kp3d.reconstruction import foreground_weights, weighted_mse
from kp3d.spatial import (
    EPS,
    crop_images,
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


SEPARATION_SCALE = 1000.0
"""Keypoint3D's ``1 / (1000 d² + 1)`` in world metres: the separation penalty halves at about
3 cm."""


def separation_loss(keypoints: torch.Tensor, scale: float = SEPARATION_SCALE) -> torch.Tensor:
    """``mean over k ≠ l of 1 / (scale · ||x^k - x^l||² + 1)``: keypoints push each other apart.

    Args:
        keypoints: ``(B, K, D)`` points (Keypoint3D: fused world keypoints; the 2D ablation:
            one view's keypoints in normalised image coordinates).
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


def normalized_crops(
    images: torch.Tensor, origins: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Crops of ``(B, C, 3, H, W)`` images in ``[0, 1]``, as the encoder reads them: in
    ``[-1, 1]``, ``(B, C, 3, h, w)``, written once (the affine map applied while the crop of
    :func:`~kp3d.spatial.crop_images` is laid out). When gradients are recorded they are laid
    out *channels last* (a view of an ``(B, 3C, h, w)`` tensor in ``torch.channels_last``
    memory format), in which oneDNN's convolution gradients run fastest (on the 2-core CPU, a
    Keypoint3D PPO update 8% faster); without gradients, channels first, whose forward
    convolutions and copy are faster."""
    crops = crop_images(images, origins, size)
    batch, cameras, channels, height, width = crops.shape
    layout = torch.channels_last if torch.is_grad_enabled() else torch.contiguous_format
    out = torch.empty(
        (batch, cameras * channels, height, width),
        dtype=crops.dtype,
        device=crops.device,
        memory_format=layout,
    )
    torch.mul(crops.reshape(batch, cameras * channels, height, width), 2.0, out=out)
    return out.sub_(1.0).view(batch, cameras, channels, height, width)


class KeypointAutoencoder(EmptyScene, Perception):
    """Base of the keypoint-bottleneck autoencoders (:class:`~kp3d.perception.Keypoint3D`,
    :class:`~kp3d.perception.Keypoint2D`): the encoder, heatmaps, crops, noise, attention,
    Gaussian drawing and decoder of the module docstring's steps 1-3.

    Architecture (``f`` = ``base_filters``, times ``C`` with per-view encoders, ``groups = C``):
    encoder conv ``(k₁/s₁) → f``, conv ``3/2 → 2f``, conv ``4/2 → 4f`` (padding 1, ReLU), then a
    1x1 head to ``C·K`` heatmap logits (x5, :data:`LOGIT_SCALE`); decoder conv ``3/1 → 4f``,
    transposed convs ``4/2 → 2f``, ``3/2 → f``, ``(k₁/s₁) → 3C``, output ``· 0.5 + 0.5``.
    The first layer ``k₁/s₁`` is ``4/2`` for ``heatmap_stride=8`` (the reference's three strided
    convs 4/2, 3/2, 4/2) and ``3/1`` for ``heatmap_stride=4``.

    Sizes: each layer maps ``n → ⌊(n + 2 - k)/s⌋ + 1``. For the envs' 64 px views the default crop
    is 56 px and ``heatmap_stride=4`` gives ``56 → 56 → 28 → 14``: a 14 x 14 heatmap of 4 px
    cells, about the reference's resolution (its unpadded convs turn a 108 px crop of 128 px
    images into 12 x 12 cells of 9 px; here ``heatmap_stride=8, crop_size=108`` gives 13 x 13).
    With ``heatmap_stride=8`` at 64 px: ``56 → 28 → 14 → 7``, 7 x 7 cells of 8 px, the reference's
    three strided convs exactly. A heatmap cell ``(i, j)`` covers crop pixels
    ``[j, j+1) · L/S x [i, i+1) · L/S``, exactly (:mod:`kp3d.spatial`).

    Subclasses implement ``forward`` and ``features_dim`` from :meth:`crop_origins`,
    :meth:`encode`, :meth:`heatmap_logits`, :meth:`locate`, :meth:`draw_keypoints`,
    :meth:`reconstruct` and :meth:`visuals`. They pass the keyword arguments they do not take
    themselves on, so that the ones below are theirs too
    (:func:`~kp3d.perception.perception_hyperparameters`).

    Loss terms: ``loss_weights`` maps each term's name to its weight; a term appears in
    ``PerceptionOutput.losses`` (already weighted) iff its weight is positive. Every subclass has
    ``reconstruction``, ``separation`` and ``sparsity``, and may add its own.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        method_loss_weights: the weights of a subclass's own loss terms by name (positional:
            filled in by the subclass, e.g. Keypoint3D's ``{"multiview": multiview_weight}``).
        num_keypoints: ``K`` per view (reference 6-32).
        base_filters: ``f``, filters of the first encoder layer per encoder (reference 16).
        per_view_encoders: one encoder per camera (grouped convs, ``groups=C``; the reference's
            ``independent_pred``); default ``False``: all cameras stacked as the channels of one
            encoder and one decoder, the reference default.
        heatmap_stride: image pixels per heatmap cell, 4 or 8 (see above).
        crop_size: crop side ``L`` or ``(h, w)``; random crops in training, centred in eval. The
            crop origin is added back to the detections, so keypoints are full-image pixels.
            ``None``: the image side minus an eighth, rounded down to a multiple of
            ``heatmap_stride`` (56 for 64 px, 112 for 128 px; the reference crops 108 of 128).
            Pass ``image_size`` to disable.
        noise: training noise on ``(u, v)``: ``std_heatmap · clip(N(0, 1) · noise, -1, 1)``
            (reference 0.05; 0 disables).
        gaussian_std: std of the decoder's Gaussians in heatmap cells (Keypoint3D: at its mean
            depth). The reference writes ``sigma = 1.5/S`` in ``[-1, 1]`` image coordinates,
            which is 0.75 cells (METHODS.md's "1.5 heatmap pixels" reads the normalised width as
            cells).
        decode_attention: scale each keypoint's Gaussian by its attention ``· K / 2`` (Keypoint3D:
            the mean over views ``Ā^k``; Keypoint2D: the view's own ``A_n^k``; reference
            ``--decode_attention``, used in all its published runs).
        background: condition the decoder on features of the empty scene's image of each camera
            (:meth:`set_background`, or per sample for moving cameras; the reference's
            ``--decode_first_frame`` conditions on an episode's first frame instead), so that
            static scenery need not be carried by keypoints.
        foreground_weight: ``λ`` of the reconstruction error's per-pixel weights
            ``1 + λ · Σ_RGB |image - empty scene|`` (:mod:`kp3d.reconstruction`), which make
            small objects count; 0 is the reference's plain mean squared error. The empty scene
            is the one given per sample to ``forward``, else the one set by
            :meth:`set_background`, else estimated as the batch's per-pixel median (right for
            fixed cameras only).
        reconstruction_weight: weight of the reconstruction MSE (reference 5.0).
        separation_weight: weight of the separation loss between keypoints (reference 0.0025;
            what is kept apart, and at which scale, is the subclass's).
        sparsity_weight: weight of the attention-entropy sparsity term (default 0, off as in the
            reference).
        coordinate_channels: give the encoder each crop pixel's full-image ``(u, v)``, scaled to
            ``[-1, 1]``, as two more input channels per view (CoordConv, Liu et al. 2018), so
            that a keypoint can prefer one region of a view. Without them a heatmap logit sees
            only an 11 px (stride 4) or 22 px (stride 8) patch, so identical objects (the three
            arms and targets of ``kp3d/MultiReach-v0``) give every keypoint identical peaks and
            its soft-argmax lands between them. Not in the reference.
    """

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        method_loss_weights: Mapping[str, float] | None = None,
        /,
        *,
        num_keypoints: int = 16,
        base_filters: int = 16,
        per_view_encoders: bool = False,
        heatmap_stride: int = 4,
        crop_size: int | Sequence[int] | None = None,
        noise: float = 0.05,
        gaussian_std: float = 0.75,
        decode_attention: bool = True,
        background: bool = False,
        foreground_weight: float = 20.0,
        reconstruction_weight: float = 5.0,
        separation_weight: float = 0.0025,
        sparsity_weight: float = 0.0,
        coordinate_channels: bool = False,
    ) -> None:
        super().__init__(num_cameras, image_size)
        check_positive_ints(num_keypoints=num_keypoints)
        if not isinstance(base_filters, int) or base_filters < 2:
            raise ValueError(f"base_filters must be an int >= 2; got {base_filters!r}")
        if heatmap_stride not in (4, 8):
            raise ValueError(f"heatmap_stride must be 4 or 8; got {heatmap_stride!r}")
        check_positive(gaussian_std=gaussian_std)
        loss_weights = {
            "reconstruction": reconstruction_weight,
            **(method_loss_weights or {}),
            "separation": separation_weight,
            "sparsity": sparsity_weight,
        }
        check_non_negative(noise=noise, foreground_weight=foreground_weight)
        for name, weight in loss_weights.items():
            if not weight >= 0:
                raise ValueError(f"{name}_weight must be non-negative; got {weight!r}")

        self.num_keypoints = num_keypoints
        self.noise = float(noise)
        self.gaussian_std = float(gaussian_std)
        self.decode_attention = decode_attention
        self.foreground_weight = float(foreground_weight)
        self.loss_weights = {name: float(value) for name, value in loss_weights.items()}
        self.crop_size = resolve_crop_size(crop_size, self.image_size, heatmap_stride)
        self.coordinate_channels = bool(coordinate_channels)

        count = self.num_cameras
        self.groups = count if per_view_encoders else 1
        first = ConvLayer(3, 1, 1) if heatmap_stride == 4 else ConvLayer(4, 2, 1)
        layers = [first, ConvLayer(3, 2, 1), ConvLayer(4, 2, 1)]
        sizes = conv_sizes(self.crop_size, layers)
        if min(sizes[-1]) < 2:
            raise ValueError(
                f"crop {self.crop_size} gives a heatmap of {sizes[-1]} cells; "
                "use larger images or crops"
            )
        self.heatmap_size: tuple[int, int] = sizes[-1]

        filters = base_filters * self.groups
        channels = [filters * multiple for multiple in (1, 2, 4)]
        inputs = (5 if coordinate_channels else 3) * count
        self.encoder = ConvStack(inputs, channels, layers, self.groups)
        self.heatmap_head = nn.Conv2d(4 * filters, count * num_keypoints, 1, groups=self.groups)
        decoder_inputs = count * num_keypoints
        self.background_encoder: ConvStack | None = None
        if background:
            background_filters = (base_filters // 2) * self.groups
            background_channels = [background_filters * multiple for multiple in (1, 2, 4)]
            self.background_encoder = ConvStack(3 * count, background_channels, layers, self.groups)
            decoder_inputs += background_channels[-1]
        self.init_background()
        self.decoder = ConvDecoder(decoder_inputs, 3 * count, channels, layers, sizes, self.groups)

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """The auxiliary losses of :meth:`forward` on ``batch``, with its per-frame empty scene
        (``batch.backgrounds``, moving cameras) when it has one."""
        output = self(
            batch.images, batch.intrinsics, batch.extrinsics, backgrounds=batch.backgrounds
        )
        return dict(output.losses)

    def crop(self, images: torch.Tensor, crop_origins: torch.Tensor) -> torch.Tensor:
        """``(B, C, 3, h, w)`` crops of ``images (B, C, 3, H, W)`` in ``[0, 1]`` at
        ``crop_origins (B, C, 2)``, in ``[-1, 1]`` as the encoder reads them
        (:func:`normalized_crops`)."""
        return normalized_crops(images, crop_origins, self.crop_size)

    def reconstruction_weights(
        self,
        images: torch.Tensor,
        crop_origins: torch.Tensor,
        backgrounds: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """``(B, C, h, w)`` per-pixel weights of the reconstruction error in each crop
        (``foreground_weight``), or ``None`` for the plain mean squared error.

        Args:
            images: ``(B, C, 3, H, W)`` in ``[0, 1]``.
            crop_origins: ``(B, C, 2)``.
            backgrounds: the empty scene per sample, if known (see :meth:`scene_background`).
        """
        if self.foreground_weight == 0:
            return None
        reference = self.scene_background(images, backgrounds)
        weights = foreground_weights(images, reference, self.foreground_weight)
        return crop_images(weights[:, :, None], crop_origins, self.crop_size)[:, :, 0]

    def crop_origins(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(B, C, 2)`` ``(u, v)`` crop corners: uniform over every valid position in training,
        centred in eval."""
        return sample_crop_origins(
            (batch, self.num_cameras), self.image_size, self.crop_size, self.training, device, dtype
        )

    def encode(self, crops: torch.Tensor, crop_origins: torch.Tensor) -> torch.Tensor:
        """Encoder features of cropped views.

        Args:
            crops: ``(B, C, 3, h, w)`` in ``[-1, 1]`` (:meth:`crop`).
            crop_origins: ``(B, C, 2)`` their corners (read with ``coordinate_channels``).

        Returns:
            ``(B, 4 f, S_h, S_w)`` (``f`` times ``C`` with per-view encoders, camera-major).
        """
        if self.coordinate_channels:
            crops = torch.cat([crops, self.pixel_coordinates(crop_origins)], dim=2)
        return self.encoder(crops.flatten(1, 2))

    def pixel_coordinates(self, crop_origins: torch.Tensor) -> torch.Tensor:
        """``(B, C, 2, h, w)``: the full-image ``(u, v)`` of every crop pixel's centre, scaled so
        that the image spans ``[-1, 1]``."""
        height, width = self.crop_size
        steps = [
            torch.arange(n, device=crop_origins.device, dtype=crop_origins.dtype) + 0.5
            for n in (height, width)
        ]
        u = (crop_origins[..., 0, None] + steps[1]) * (2.0 / self.image_size[1]) - 1.0
        v = (crop_origins[..., 1, None] + steps[0]) * (2.0 / self.image_size[0]) - 1.0
        shape = (*crop_origins.shape[:-1], height, width)
        return torch.stack([u[..., None, :].expand(shape), v[..., :, None].expand(shape)], dim=-3)

    def heatmap_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, K, S_h, S_w)`` heatmap logits from :meth:`encode`'s features."""
        shape = (features.shape[0], self.num_cameras, self.num_keypoints, *self.heatmap_size)
        return (self.heatmap_head(features) * LOGIT_SCALE).reshape(shape)

    def locate(
        self, logits: torch.Tensor, crop_origins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heatmaps, keypoint pixels (noisy in training) and attention from heatmap logits.

        Args:
            logits: ``(B, C, K, S_h, S_w)``.
            crop_origins: ``(B, C, 2)`` corners of the windows the logits cover.

        Returns:
            ``heatmaps (B, C, K, S_h, S_w)`` (each sums to 1), ``detections (B, C, K, 2)`` in
            full-image pixels (crop offset added back) and ``attention (B, C, K)``.
        """
        heatmaps = spatial_softmax(logits)
        cells = soft_argmax(heatmaps)
        if self.training and self.noise > 0:
            jitter = (torch.randn_like(cells) * self.noise).clamp(-1.0, 1.0)
            cells = cells + heatmap_std(heatmaps, cells)[..., None] * jitter
        detections = heatmap_to_image(
            cells, self.heatmap_size, self.crop_size, crop_origins[:, :, None]
        )
        return heatmaps, detections, keypoint_attention(logits)

    def draw_keypoints(
        self,
        pixels: torch.Tensor,
        std: torch.Tensor | float,
        attention: torch.Tensor,
        crop_origins: torch.Tensor,
    ) -> torch.Tensor:
        """The decoder's input: a Gaussian per keypoint and view on the heatmap grid of the crop.

        Args:
            pixels: ``(B, C, K, 2)`` full-image pixels of the centres.
            std: ``(B, C, K)`` or one float, in heatmap cells.
            attention: ``(B, C, K)`` (or broadcastable, e.g. ``(B, 1, K)``); with
                ``decode_attention`` each map is scaled by ``attention · K / 2``.
            crop_origins: ``(B, C, 2)``.

        Returns:
            ``(B, C, K, S_h, S_w)`` maps.
        """
        centres = image_to_heatmap(
            pixels, self.heatmap_size, self.crop_size, crop_origins[:, :, None]
        )
        maps = gaussian_maps(centres, std, self.heatmap_size)
        if self.decode_attention:
            maps = maps * (attention * self.num_keypoints / 2.0)[..., None, None]
        return maps

    def decode(
        self,
        maps: torch.Tensor,
        crop_origins: torch.Tensor,
        background: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstruct the cropped views from Gaussian maps (and the empty scene, if enabled).

        Args:
            maps: ``(B, C, K, S_h, S_w)``.
            crop_origins: ``(B, C, 2)`` (to crop the background like the views).
            background: with ``background=True``, the empty scene ``(C, 3, H, W)`` or
                ``(B, C, 3, H, W)`` in ``[0, 1]`` (default: the one set by
                :meth:`set_background`).

        Returns:
            ``(B, C, 3, h, w)`` reconstructions in the encoder's ``[-1, 1]`` (about).
        """
        batch = maps.shape[0]
        # Channels grouped so that with per-view decoders each group holds its own camera's input.
        latent = maps.reshape(batch, self.groups, -1, *self.heatmap_size)
        if self.background_encoder is not None:
            if background is None:
                if not self.has_background:
                    raise RuntimeError(
                        "background=True: call set_background(images) first, or pass the empty "
                        "scene per sample"
                    )
                background = self.background
            background = background.to(maps.dtype)
            if background.ndim == 4:
                background = background.expand(batch, *background.shape)
            crops = normalized_crops(background, crop_origins, self.crop_size)
            features = self.background_encoder(crops.flatten(1, 2))
            latent = torch.cat(
                [latent, features.reshape(batch, self.groups, -1, *self.heatmap_size)], dim=2
            )
        images = self.decoder(latent.flatten(1, 2))
        return images.reshape(batch, self.num_cameras, 3, *self.crop_size)

    def reconstruct(
        self,
        maps: torch.Tensor,
        crops: torch.Tensor,
        crop_origins: torch.Tensor,
        weights: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode the maps and score them against the crops.

        Args:
            maps: ``(B, C, K, S_h, S_w)`` from :meth:`draw_keypoints`.
            crops: ``(B, C, 3, h, w)`` the views the encoder saw, in ``[-1, 1]``.
            crop_origins: ``(B, C, 2)``.
            weights: ``(B, C, h, w)`` per-pixel weights (:meth:`reconstruction_weights`), or
                ``None`` for the plain mean squared error.
            background: the decoder's conditioning (see :meth:`decode`).

        Returns:
            ``reconstructions (B, C, 3, h, w)`` in ``[0, 1]`` (about) and the weighted
            reconstruction loss (scalar): the (weighted) mean squared error in ``[0, 1]`` units.
        """
        decoded = self.decode(maps, crop_origins, background)
        # Errors in [-1, 1] are twice those in [0, 1]: a quarter of the squared error.
        error = 0.25 * weighted_mse(decoded, crops, weights)
        return decoded * 0.5 + 0.5, self.loss_weights["reconstruction"] * error

    def visuals(
        self,
        points: torch.Tensor,
        detections: torch.Tensor,
        heatmaps: torch.Tensor,
        reconstructions: torch.Tensor | None,
        crop_origins: torch.Tensor,
    ) -> PerceptionVisuals:
        """Detached :class:`~kp3d.perception.PerceptionVisuals` of one batch (shapes there)."""
        return PerceptionVisuals(
            points=points.detach(),
            detections=detections.detach(),
            heatmaps=heatmaps.detach(),
            reconstructions=None if reconstructions is None else reconstructions.detach(),
            crop_origins=crop_origins,
            crop_size=self.crop_size,
        )


__all__ = [
    "LOGIT_SCALE",
    "SEPARATION_SCALE",
    "KeypointAutoencoder",
    "attention_entropy",
    "keypoint_attention",
    "normalized_crops",
    "separation_loss",
]
