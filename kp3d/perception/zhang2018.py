"""Unsupervised landmarks as structural representations (Zhang et al., CVPR 2018).

Zhang, Guo, Jin, Luo, He and Lee, "Unsupervised Discovery of Object Landmarks as Structural
Representations", CVPR 2018 (METHODS.md §2, "Unsupervised landmark learners"; details that the
paper leaves open follow the authors' code, ``YutingZhang/lmdis-rep``). An autoencoder whose
bottleneck is ``K`` landmarks plus a short descriptor of each; per view (the ``C`` views of a
sample are folded into the batch, one network shared by all cameras):

1. **Detector**: an hourglass maps the view to ``K + 1`` channels on an ``S_h x S_w`` grid, the
   last one the *background*; a softmax *across the channels* at every cell gives
   ``D_k(u)`` (``Σ_k D_k(u) = 1``). Landmark ``k`` is the weighted mean position of its channel,
   ``l_k = Σ_u u D_k(u) / ζ_k`` with ``ζ_k = Σ_u D_k(u)``, and ``sigma_{k,u}², sigma_{k,v}²`` its
   weighted variances along each axis.
2. **Local latent descriptors**: a second hourglass gives a feature map; the features under a
   Gaussian mask at each landmark (std: the landmark's own ``sigma_k``, the mean of its two axes),
   and the mean feature over the image for the background, are each mapped by a linear map of
   their own (one per landmark, not shared: the authors' "group connected" layer) to
   ``descriptor_dim`` values.
3. **Decoder**: at each of ``decoder_levels`` widths ``sigma_i = decoder_std · √2^i`` (fractions
   of the image side), a Gaussian per landmark (its mass normalised to 1 over the grid) and a
   uniform background (mass ``1 / (S_h S_w)`` per cell), normalised across the ``K + 1``
   channels at every cell: soft masks ``M_i,k(u)``. They *unpool* the descriptors into a feature
   map ``Σ_k M_i,k(u) f_k``; the masks and feature maps of every level, stacked, go through an
   hourglass that reconstructs the view.
4. **Losses** (``u, v`` in units of the image side, ``[0, 1]`` across the image, as the
   authors' code):

   * reconstruction ``||I - Ĩ||²`` (mean over pixels);
   * concentration ``L_conc = 2πe (sigma_u² + sigma_v²)²`` per landmark, averaged (the paper's
     formula; the authors' code uses the exponentiated entropy ``2πe sigma_u sigma_v`` instead:
     both shrink each channel around its mean);
   * separation ``L_sep = Σ_{k≠k'} exp(-||l_k - l_k'||² / (2 sigma_sep²))`` per view, averaged;
   * equivariance under a random thin-plate-spline warp ``g`` (:mod:`kp3d.warps`) of every view:
     ``(1/K) Σ_k ||g⁻¹(l_k(x∘g)) - l_k(x)||²``, averaged: compared in the frame of the original
     image, as the authors' code does, with the exact ``g⁻¹``;
   * equivariance under **true motion** (:meth:`Zhang2018.training_losses`, when the batch has
     a second frame of the same episode with depth, segmentation and body poses): the paper
     uses the optical flow between consecutive video frames; here the flow is the simulator's
     exact motion of the surface point under each landmark (:mod:`kp3d.correspondence`: the
     point is unprojected with the depth map, moved with its body and projected into the other
     frame), read as the authors read optical flow, averaged under a Gaussian window of 1 px at
     the landmark over the pixels whose motion is known, and the landmark of the other frame
     must be where the flow takes it: ``(1/K) Σ_k ||l_k(x') - (l_k(x) + flow(l_k(x)))||²``.
     This asks every landmark to stay on the *material point* it sits on: a landmark on the arm
     must move with the arm, one on the floor must stay put, one that slides along a link or
     hops from part to part between frames is penalised; on a silhouette the window mixes the
     motion of both sides, and a landmark whose point is occluded in the other frame, or that
     sits on the sky, has no known motion and is left out.

   Total: ``λ_recon ||I - Ĩ||² + λ_conc L_conc + λ_sep L_sep + λ_eqv L_eqv + λ_motion L_motion``.
   The authors' weights (80 px faces, ``K = 10``, losses *summed* over landmarks and pairs,
   equivariance in ``[-1, 1]`` units, the exp-entropy concentration, reconstruction a per-pixel
   likelihood whose weight grows 100-fold during training): concentration 100, separation 20 with
   ``sigma_sep = 0.08``, equivariance 10⁴. The terms here are averages (per landmark, per view,
   per pixel) and the concentration is the paper's fourth-power form, so these do not carry over
   as they are; the defaults (:class:`Zhang2018`) were set on the envs' 64 px views so that no
   term dominates once the channels have concentrated (a 1 px equivariance error costs 0.24).

The losses come from :meth:`Zhang2018.forward` (with ``compute_losses=True``): the method trains
jointly with RL and offline alike; only the true-motion term, in :meth:`Zhang2018.training_losses`
(``kp3d pretrain``), needs a :class:`FrameBatch` with a pair and the depth, segmentation and body
poses of both frames (``load: [depth, segmentation, body_poses]`` in a pretrain config). Under an
agent, which has no pairs, the warp term alone constrains the landmarks. In eval mode the warps
are drawn from a fixed seed (deterministic ``forward``).

The policy features are the landmarks in normalised image coordinates, ``2 C K`` values
(``keypoint_frame = "image"``, keypoints ``(B, C·K, 2)`` full-image pixels, camera-major).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.correspondence import find_correspondences
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    check_non_negative,
    check_positive,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.equivariance import WarpedPair, equivariance_loss, warp_generator
from kp3d.perception.hourglass import Hourglass, Residual, default_depth
from kp3d.perception.image_keypoints import image_keypoint_output
from kp3d.perception.scene import EmptyScene
from kp3d.reconstruction import foreground_weights, weighted_mse
from kp3d.spatial import EPS, cell_centers, gaussian_maps, heatmap_to_image

FLOW_WINDOW_STD = 1.0
"""Std (image pixels) of the Gaussian window that reads the motion at a landmark (the authors'
code: ``1 / sqrt(h w)`` of the image side, one pixel)."""

FLOW_WINDOW_RADIUS = 2
"""The window covers the ``(2 r + 1)²`` pixel centres nearest the landmark."""


def channel_landmarks(
    maps: torch.Tensor, eps: float = EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean position, axis variances and mass of landmark channels.

    ``ζ_k = Σ_u D_k(u)``, ``l_k = Σ_u u D_k(u) / ζ_k``, ``sigma_k² = Σ_u (u - l_k)² D_k(u) / ζ_k``
    per axis, on the grid's own cells (cell ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``).

    Args:
        maps: ``(*, K, S_h, S_w)`` non-negative channel maps ``D_k`` (without the background).
        eps: added to each mass before dividing.

    Returns:
        ``means (*, K, 2)`` ``(u, v)`` in cells, ``variances (*, K, 2)`` in cells² and
        ``mass (*, K)``.
    """
    if maps.ndim < 3:
        raise ValueError(f"maps must have shape (*, K, S_h, S_w); got {tuple(maps.shape)}")
    u, v = cell_centers(*maps.shape[-2:], device=maps.device, dtype=maps.dtype)
    mass = maps.sum(dim=(-2, -1))
    along_u = maps.sum(dim=-2) / (mass[..., None] + eps)  # (*, K, S_w) marginal over columns
    along_v = maps.sum(dim=-1) / (mass[..., None] + eps)  # (*, K, S_h) marginal over rows
    mean_u, mean_v = (along_u * u).sum(dim=-1), (along_v * v).sum(dim=-1)
    variance_u = (along_u * (u - mean_u[..., None]) ** 2).sum(dim=-1)
    variance_v = (along_v * (v - mean_v[..., None]) ** 2).sum(dim=-1)
    means = torch.stack([mean_u, mean_v], dim=-1)
    return means, torch.stack([variance_u, variance_v], dim=-1), mass


def concentration_loss(variances: torch.Tensor) -> torch.Tensor:
    """The paper's concentration loss ``2πe (sigma_u² + sigma_v²)²`` of each landmark.

    Args:
        variances: ``(*, 2)`` ``(sigma_u², sigma_v²)`` (in the units the loss is wanted in).

    Returns:
        ``(*)``.
    """
    return 2.0 * math.pi * math.e * variances.sum(dim=-1).pow(2)


def landmark_separation_loss(landmarks: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Zhang et al.'s separation loss of each image: ``Σ_{k≠k'} exp(-||l_k - l_k'||² / (2sigma²))``.

    Args:
        landmarks: ``(N, K, 2)`` positions.
        bandwidth: ``sigma_sep``, same units.

    Returns:
        ``(N)`` values in ``[0, K (K - 1)]``; 0 for ``K = 1``.
    """
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must have shape (N, K, 2); got {tuple(landmarks.shape)}")
    squared = (landmarks[:, :, None] - landmarks[:, None]).pow(2).sum(dim=-1)
    vicinity = torch.exp(-squared / (2.0 * bandwidth**2))
    distinct = ~torch.eye(landmarks.shape[1], dtype=torch.bool, device=landmarks.device)
    return (vicinity * distinct).sum(dim=(-2, -1))


def decoding_masks(
    landmarks: torch.Tensor, stds: torch.Tensor | float, size: Sequence[int]
) -> torch.Tensor:
    """Soft masks of landmarks and background, normalised across channels at every cell.

    ``G_k`` is a Gaussian of std ``sigma`` at landmark ``k`` with mass 1 over the grid, the
    background a uniform mass ``1 / (S_h S_w)`` per cell; ``M_k(u) = G_k(u) / (Σ_j G_j(u) +
    1 / (S_h S_w))`` and ``M_{K}(u) = (1 / (S_h S_w)) / (…)``: near a landmark its own mask is
    about 1, far from all of them the background's is.

    Args:
        landmarks: ``(N, K, 2)`` positions in grid cells.
        stds: ``(N, K)`` or one float, in cells.
        size: ``(S_h, S_w)``.

    Returns:
        ``(N, K + 1, S_h, S_w)`` masks summing to 1 over the channels, the background last.
    """
    gaussians = gaussian_maps(landmarks, stds, tuple(size))
    gaussians = gaussians / (gaussians.sum(dim=(-2, -1), keepdim=True) + EPS)
    background = gaussians.new_full((gaussians.shape[0], 1, *gaussians.shape[-2:]), 1.0)
    masks = torch.cat([gaussians, background / (size[0] * size[1])], dim=1)
    return masks / masks.sum(dim=1, keepdim=True)


class HourglassBranch(nn.Sequential):
    """A stride-2 stem and one hourglass: ``(N, c_in, H, W)`` → ``(N, c_out, H/2, W/2)``.

    Conv 3x3/2 to ``channels`` (BN, ReLU), a residual module, an hourglass of ``depth``
    halvings (:class:`kp3d.perception.hourglass.Hourglass`), a residual module and a 1x1 conv
    to ``out_channels``.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, depth: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            Residual(channels, channels),
            Hourglass(depth, channels),
            Residual(channels, channels),
            nn.Conv2d(channels, out_channels, 1),
        )


@register_perception("zhang2018")
class Zhang2018(EmptyScene, Perception):
    """Zhang et al. (CVPR 2018): ``K`` landmarks per view from a ``K + 1``-channel detector,
    per-landmark descriptors and a landmark-conditioned decoder (module docstring).

    Sizes: detector, descriptor maps and the decoder's input lie on a grid of half the image's
    resolution (32 x 32 cells of 2 px at 64 px); the decoder upsamples back to the image.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)``, both even.
        num_keypoints: ``K`` landmarks per view (the authors: 10 or 30 for faces).
        channels: channels of the hourglasses (multiple of 4).
        depth: halvings of each hourglass; ``None``: down to a 4-cell grid.
        feature_channels: channels of the feature map the descriptors are pooled from.
        descriptor_dim: length of each landmark's descriptor (the authors: 8).
        decoder_levels: Gaussian widths of the decoder (the authors: 5).
        decoder_std: the narrowest width, as a fraction of the image side (the authors: 1/8 of
            80 px faces; 1/16 here, 4 px at 64 px, because the envs' parts are a few pixels
            wide); each next level is ``√2`` wider.
        separation_bandwidth: ``sigma_sep`` in units of the image side (the authors: 0.08 of a
            face; 0.05 here, 3 px at 64 px, for a robot whose links are ~20 px long).
        warp_strength: ``strength`` of the random warps (:func:`kp3d.warps.random_tps`).
        reconstruction_weight: ``λ_recon`` (mean squared error per pixel, images in [0, 1]).
        concentration_weight: ``λ_conc``; a landmark spread over 3 px (std per axis) costs
            ``2πe (2 · (3/64)²)² ≈ 8e-5`` before weighting.
        separation_weight: ``λ_sep``; two landmarks on top of each other cost 2 before
            weighting.
        equivariance_weight: ``λ_eqv`` of the warp term; a 1 px error at 64 px costs
            ``(1/64)² ≈ 2.4e-4`` before weighting.
        motion_weight: ``λ_motion`` of the true-motion term, same units (the authors' code
            weighs it as the warp term); 0 disables it, and :meth:`training_losses` then needs
            no pairs.
        foreground_weight: ``λ`` of per-pixel weights ``1 + λ |x - B|`` of the reconstruction's
            squared error towards what differs from the empty scene ``B``
            (:mod:`kp3d.reconstruction`; :meth:`set_background`, else the batch's median); 0
            for the paper's plain error.

    A loss term appears in ``PerceptionOutput.losses`` (already weighted) iff its weight is
    positive: ``reconstruction``, ``concentration``, ``separation``, ``equivariance``;
    :meth:`training_losses` adds ``motion``.
    """

    keypoint_frame = "image"
    uses_pairs = True

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 10,
        channels: int = 16,
        depth: int | None = None,
        feature_channels: int = 16,
        descriptor_dim: int = 8,
        decoder_levels: int = 4,
        decoder_std: float = 1.0 / 16.0,
        separation_bandwidth: float = 0.05,
        warp_strength: float = 1.0,
        reconstruction_weight: float = 10.0,
        concentration_weight: float = 1e3,
        separation_weight: float = 0.1,
        equivariance_weight: float = 1e3,
        motion_weight: float = 1e3,
        foreground_weight: float = 0.0,
    ) -> None:
        super().__init__(num_cameras, image_size)
        check_non_negative(foreground_weight=foreground_weight)
        self.foreground_weight = float(foreground_weight)
        check_positive_ints(num_keypoints=num_keypoints)
        if not isinstance(channels, int) or channels < 4 or channels % 4:
            raise ValueError(f"channels must be a positive multiple of 4; got {channels!r}")
        check_positive_ints(
            feature_channels=feature_channels,
            descriptor_dim=descriptor_dim,
            decoder_levels=decoder_levels,
        )
        if any(side % 2 for side in self.image_size):
            raise ValueError(f"image sides must be even; got {self.image_size}")
        self.grid_size: tuple[int, int] = (self.image_size[0] // 2, self.image_size[1] // 2)
        if depth is None:
            depth = default_depth(self.grid_size)
        if not isinstance(depth, int) or depth < 1 or min(self.grid_size) < 2**depth:
            raise ValueError(
                f"depth must be an int in [1, log2 of the grid side] for a grid of "
                f"{self.grid_size} cells; got {depth!r}"
            )
        check_positive(decoder_std=decoder_std, separation_bandwidth=separation_bandwidth)
        weights = {
            "reconstruction": reconstruction_weight,
            "concentration": concentration_weight,
            "separation": separation_weight,
            "equivariance": equivariance_weight,
        }
        check_non_negative(**weights, motion_weight=motion_weight, warp_strength=warp_strength)
        self.num_keypoints = num_keypoints
        self.descriptor_dim = descriptor_dim
        self.decoder_levels = decoder_levels
        self.decoder_std = float(decoder_std)
        self.separation_bandwidth = float(separation_bandwidth)
        self.warp_strength = float(warp_strength)
        self.motion_weight = float(motion_weight)
        self.loss_weights = {name: float(value) for name, value in weights.items()}

        count = num_keypoints + 1
        self.detector = HourglassBranch(3, channels, count, depth)
        self.feature_encoder = HourglassBranch(3, channels, feature_channels, depth)
        # One linear map per landmark and one for the background ("group connected").
        scale = 1.0 / math.sqrt(feature_channels)
        self.descriptor_weight = nn.Parameter(
            torch.empty(count, feature_channels, descriptor_dim).uniform_(-scale, scale)
        )
        self.descriptor_bias = nn.Parameter(torch.zeros(count, descriptor_dim))
        decoder_inputs = decoder_levels * (count + descriptor_dim)
        self.decoder = nn.Sequential(
            nn.Conv2d(decoder_inputs, channels, 1),
            Residual(channels, channels),
            Hourglass(depth, channels),
            Residual(channels, channels),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 3, 3, padding=1),
        )
        self.init_background()

    @property
    def features_dim(self) -> int:
        """``2 C K``: normalised ``(u, v)`` per camera and landmark."""
        return 2 * self.num_cameras * self.num_keypoints

    def to_unit(self, cells: torch.Tensor) -> torch.Tensor:
        """Grid cells → units of the image side (``[0, 1]`` across the image); ``(*, 2)``."""
        height, width = self.grid_size
        return cells / cells.new_tensor([width, height])

    def detect(self, views: torch.Tensor) -> torch.Tensor:
        """The channel maps ``D (N, K + 1, S_h, S_w)`` of ``views (N, 3, H, W)`` in ``[0, 1]``:
        a softmax across the ``K + 1`` channels at every cell, the background last."""
        return self.detector(views * 2.0 - 1.0).softmax(dim=1)

    def descriptors(
        self, views: torch.Tensor, landmarks: torch.Tensor, stds: torch.Tensor
    ) -> torch.Tensor:
        """Local latent descriptors of the landmarks and the background.

        Args:
            views: ``(N, 3, H, W)``.
            landmarks: ``(N, K, 2)`` in grid cells.
            stds: ``(N, K)`` in cells, the widths of the pooling masks.

        Returns:
            ``(N, K + 1, descriptor_dim)``, the background's last.
        """
        features = self.feature_encoder(views * 2.0 - 1.0)  # (N, F, S_h, S_w)
        masks = gaussian_maps(landmarks, stds.clamp(min=0.5), self.grid_size)
        masks = masks / (masks.sum(dim=(-2, -1), keepdim=True) + EPS)
        pooled = torch.einsum("nkhw,nfhw->nkf", masks, features)
        pooled = torch.cat([pooled, features.mean(dim=(-2, -1))[:, None]], dim=1)
        return torch.einsum("nkf,kfd->nkd", pooled, self.descriptor_weight) + self.descriptor_bias

    def decode(self, landmarks: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Reconstruct views from landmarks and descriptors.

        Args:
            landmarks: ``(N, K, 2)`` in grid cells.
            descriptors: ``(N, K + 1, descriptor_dim)``.

        Returns:
            ``(N, 3, H, W)`` in ``[0, 1]``.
        """
        side = math.sqrt(self.grid_size[0] * self.grid_size[1])
        inputs = []
        for level in range(self.decoder_levels):
            std = self.decoder_std * math.sqrt(2.0) ** level * side
            masks = decoding_masks(landmarks, std, self.grid_size)  # (N, K + 1, S_h, S_w)
            inputs += [masks, torch.einsum("nkhw,nkd->ndhw", masks, descriptors)]
        return torch.sigmoid(self.decoder(torch.cat(inputs, dim=1)))

    def locate(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Channel maps, landmarks and variances of ``views (N, 3, H, W)``.

        Returns:
            ``maps (N, K + 1, S_h, S_w)``, ``landmarks (N, K, 2)`` and ``variances (N, K, 2)``
            in grid cells.
        """
        maps = self.detect(views)
        landmarks, variances, _ = channel_landmarks(maps[:, :-1])
        return maps, landmarks, variances

    def auxiliary_losses(
        self, views: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Landmarks of ``views (N, 3, H, W)`` and the weighted losses of the module docstring
        (all but the true-motion term).

        Returns:
            ``losses``, ``maps (N, K + 1, S_h, S_w)``, ``landmarks (N, K, 2)`` in grid cells and
            ``reconstructions (N, 3, H, W)`` (``None`` when the reconstruction weight is 0).
        """
        weights = self.loss_weights
        losses: dict[str, torch.Tensor] = {}
        pair = None
        if weights["equivariance"] > 0:
            pair = WarpedPair.sample(
                views, self.warp_strength, warp_generator(self.training), deform_first=False
            )
            maps, cells, variances = self.locate(torch.cat([views, pair.second]))
            maps = maps.chunk(2)[0]
            cells, warped_cells = cells.chunk(2)
            variances = variances.chunk(2)[0]
        else:
            maps, cells, variances = self.locate(views)

        landmarks = self.to_unit(cells)
        unit_variances = variances / variances.new_tensor(self.grid_size[::-1]).pow(2)
        if pair is not None:
            # g⁻¹ of the landmarks found on x∘g, in units of the image side: the landmarks of x.
            warped = heatmap_to_image(warped_cells, self.grid_size, self.image_size)
            back = pair.between.inverse_points(warped) / warped.new_tensor(self.image_size[::-1])
            losses["equivariance"] = weights["equivariance"] * equivariance_loss(back, landmarks)
        if weights["concentration"] > 0:
            losses["concentration"] = (
                weights["concentration"] * concentration_loss(unit_variances).mean()
            )
        if weights["separation"] > 0:
            losses["separation"] = (
                weights["separation"]
                * landmark_separation_loss(landmarks, self.separation_bandwidth).mean()
            )
        reconstructions = None
        if weights["reconstruction"] > 0:
            stds = variances.mean(dim=-1).clamp(min=EPS).sqrt()
            reconstructions = self.decode(cells, self.descriptors(views, cells, stds))
            pixel_weights = None
            if self.foreground_weight > 0:
                pixel_weights = foreground_weights(
                    views, self.view_backgrounds(views), self.foreground_weight
                )
            losses["reconstruction"] = weights["reconstruction"] * weighted_mse(
                reconstructions, views, pixel_weights
            )
        return losses, maps, cells, reconstructions

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; ``keypoints (B, C·K, 2)`` are full-image
        pixels, camera-major; ``confidence (B, C·K)`` is each landmark channel's share of the
        view, ``ζ_k / (S_h S_w)``. The matrices are validated but not used."""
        self.check_inputs(images, intrinsics, extrinsics)
        views = images.flatten(0, 1)
        if compute_losses:
            losses, maps, cells, reconstructions = self.auxiliary_losses(views)
        else:
            losses, reconstructions = {}, None
            maps, cells, _ = self.locate(views)

        pixels = heatmap_to_image(cells, self.grid_size, self.image_size)
        channels = maps[:, :-1]
        mass = channels.sum(dim=(-2, -1))
        heatmaps = channels / (mass[..., None, None] + EPS)
        return image_keypoint_output(
            pixels,
            heatmaps,
            self.num_cameras,
            self.image_size,
            losses,
            confidence=mass / (self.grid_size[0] * self.grid_size[1]),
            reconstructions=reconstructions,
        )

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """The losses of :meth:`forward` on ``batch`` plus, with a positive ``motion_weight``,
        the true-motion equivariance term ``motion`` (module docstring, step 4) between
        ``batch`` and ``batch.pair``.

        Raises:
            ValueError: with a positive ``motion_weight``, if ``batch`` has no pair, or either
                frame lacks depth, segmentation or body poses.
        """
        if self.motion_weight <= 0:
            return dict(self(batch.images, batch.intrinsics, batch.extrinsics).losses)
        if batch.pair is None:
            raise ValueError(
                "Zhang2018's true-motion term needs pairs of frames of one episode; this batch "
                "has no FrameBatch.pair (or build the module with motion_weight=0)"
            )
        fields = ("depth", "segmentation", "body_poses")
        missing = [
            f"{which}.{name}"
            for which, frame in (("batch", batch), ("batch.pair", batch.pair))
            for name in fields
            if getattr(frame, name) is None
        ]
        if missing:
            raise ValueError(
                f"Zhang2018's true-motion term needs {missing}: load the dataset with "
                "load: [depth, segmentation, body_poses] (or build the module with motion_weight=0)"
            )
        output = self(batch.images, batch.intrinsics, batch.extrinsics)
        losses = dict(output.losses)
        landmarks = output.keypoints.reshape(-1, self.num_keypoints, 2)  # (B·C, K, 2)
        _, other_cells, _ = self.locate(batch.pair.images.flatten(0, 1))
        other = heatmap_to_image(other_cells, self.grid_size, self.image_size)
        flow, known = landmark_motion(landmarks.detach(), batch, batch.pair)
        unit = other.new_tensor(self.image_size[::-1])
        losses["motion"] = self.motion_weight * equivariance_loss(
            other / unit, (landmarks + flow) / unit, known
        )
        return losses


def landmark_motion(
    landmarks: torch.Tensor, batch: FrameBatch, pair: FrameBatch
) -> tuple[torch.Tensor, torch.Tensor]:
    """The true motion (flow) at landmarks of ``batch``'s views into the views of ``pair``.

    The exact motion of the pixel centres within :data:`FLOW_WINDOW_RADIUS` of each landmark
    (:func:`kp3d.correspondence.find_correspondences`: unprojected with the depth map, moved
    with their bodies, projected into the same camera at the other step, occlusions rejected)
    is averaged with Gaussian weights of std :data:`FLOW_WINDOW_STD` px over the pixels whose
    motion is known.

    Args:
        landmarks: ``(B·C, K, 2)`` full-image pixels in the views of ``batch``, camera-major.
        batch: frames with ``depth``, ``segmentation`` and ``body_poses``.
        pair: the other frames, with the same fields.

    Returns:
        ``flow (B·C, K, 2)`` pixels and ``known (B·C, K)`` bool (some pixel of the window has
        a known motion).
    """
    views, keypoints = landmarks.shape[:2]
    height, width = batch.images.shape[-2:]
    radius = FLOW_WINDOW_RADIUS
    offsets = torch.arange(-radius, radius + 1, device=landmarks.device, dtype=landmarks.dtype)
    grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), dim=-1).reshape(-1, 2)
    centres = torch.floor(landmarks)[:, :, None] + 0.5 + grid  # (V, K, P, 2) pixel centres
    size = landmarks.new_tensor([width, height])
    centres = torch.minimum(centres.clamp(min=0.5), size - 0.5)
    weights = torch.exp(
        -(centres - landmarks[:, :, None]).pow(2).sum(dim=-1) / (2.0 * FLOW_WINDOW_STD**2)
    )

    def per_view(frame: FrameBatch) -> tuple[torch.Tensor, ...]:
        cameras = frame.images.shape[1]
        poses = frame.body_poses[:, None].expand(-1, cameras, -1, -1, -1).flatten(0, 1)
        return (
            frame.depth.flatten(0, 1),
            frame.segmentation.flatten(0, 1),
            frame.intrinsics.flatten(0, 1),
            frame.extrinsics.flatten(0, 1),
            poses,
        )

    depth_a, segmentation_a, intrinsics_a, extrinsics_a, poses_a = per_view(batch)
    depth_b, segmentation_b, intrinsics_b, extrinsics_b, poses_b = per_view(pair)
    found = find_correspondences(
        centres.reshape(views, -1, 2),
        depth_a,
        segmentation_a,
        intrinsics_a,
        extrinsics_a,
        depth_b,
        segmentation_b,
        intrinsics_b,
        extrinsics_b,
        poses_a,
        poses_b,
    )
    motion = (found.target - found.source).reshape(views, keypoints, -1, 2)
    weights = weights * found.valid.reshape(views, keypoints, -1).to(weights.dtype)
    total = weights.sum(dim=-1)
    motion = torch.where(found.valid.reshape(views, keypoints, -1, 1), motion, 0.0)
    flow = (weights[..., None] * motion).sum(dim=-2) / total.clamp(min=EPS)[..., None]
    return flow, total > 0


__all__ = [
    "FLOW_WINDOW_RADIUS",
    "FLOW_WINDOW_STD",
    "Zhang2018",
    "channel_landmarks",
    "concentration_loss",
    "decoding_masks",
    "landmark_motion",
    "landmark_separation_loss",
]
