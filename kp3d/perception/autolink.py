"""AutoLink: keypoints and a graph linking them, learnt by inpainting a heavily masked image.

He, Wandt and Rhodin, "AutoLink: Self-supervised Learning of Human Skeletons and Object Outlines
by Linking Keypoints", NeurIPS 2022 (METHODS.md §2, "Unsupervised landmark learners"). Per view:

1. a detector maps the image to ``K`` heatmap logits; a spatial softmax and its expected
   position give ``K`` keypoints ``p_1..p_K``;
2. every pair ``i < j`` of keypoints is drawn as an *edge heatmap*: a Gaussian of the distance of
   each pixel to the segment ``[p_i, p_j]``, ``S_ij(q) = exp(-d(q, [p_i, p_j])² / τ)``
   (:func:`edge_heatmaps`; ``d`` in coordinates spanning ``[-1, 1]`` across the image, ``τ`` the
   edge thickness);
3. a ``K x K`` matrix of edge weights, *shared by all images* and learnt with the networks
   (symmetric, non-negative: ``w_ij = softplus(θ_ij)``, :meth:`AutoLink.edge_weights`), scales
   the edges; the edge map is their maximum, ``S(q) = max_{i<j} w_ij S_ij(q)`` (the paper's
   choice over the sum);
4. a decoder (a U-Net) reconstructs the image from the edge map concatenated with the image
   *heavily masked*: the image is cut into a ``mask_blocks x mask_blocks`` grid and each block is
   removed with probability ``mask_ratio`` (the paper's 16 x 16 blocks, 80 %), then scaled by a
   learnt factor (the reference's ``alpha``);
5. the loss is the reconstruction error. The paper's is a perceptual loss on a pretrained VGG-16;
   no pretrained network can be downloaded here, so the default is a multi-scale L1 plus an SSIM
   term (:func:`multiscale_l1`, :func:`kornia.losses.ssim_loss`), and the perceptual loss is used
   when a VGG-16 weights file is given (``perceptual_weights``, :class:`PerceptualLoss`).

Little of the image gets through the mask, so the decoder must take the shapes from the edge
map: the keypoints learn to sit on the joints of the parts, and the weights to link those that
belong together (the skeleton).

Per-view keypoints: the ``C`` cameras of a sample are folded into the batch (shared weights); the
keypoints of every view are reported in full-image pixels (``keypoint_frame`` is ``"image"``,
camera-major). The loss needs one frame only, so training offline and jointly with RL is the
same ``forward``.

Differences from the reference code (``xingzhehe/AutoLink``), for CPU-sized 64 px views: no batch
normalisation (under an RL agent the batch statistics would differ between rollouts and updates),
``base_filters=8`` instead of 64 (a training step on 16 samples of three 64 px views takes about
2 s on one CPU core; the edge maps of the 28 pairs of 8 keypoints at full resolution take a fifth
of it), one resolution level fewer in the detector and the decoder
(64 px instead of 128 px), and, by default, the loss above instead of the perceptual one.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    check_non_negative,
    check_positive,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.edges import (  # re-exported: part of AutoLink's interface
    edge_heatmaps,
    segment_squared_distances,
)
from kp3d.perception.fse import diversity_loss
from kp3d.perception.image_keypoints import image_keypoint_output
from kp3d.perception.layers import initialise_convs
from kp3d.perception.perceptual import (  # re-exported: part of AutoLink's interface
    VGG16_BLOCKS,
    VGG16_LAYERS,
    PerceptualLoss,
    vgg16_features,
)
from kp3d.perception.scene import (
    EmptyScene,
    add_foreground_prior,
    foreground_coverage,
    foreground_magnitude,
)
from kp3d.reconstruction import foreground_weights
from kp3d.spatial import (
    EPS,
    heatmap_to_image,
    soft_argmax,
    spatial_softmax,
)


def multiscale_l1(
    reconstructions: torch.Tensor,
    targets: torch.Tensor,
    scales: int = 3,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean absolute error at full, half, quarter... resolution (2x2 average pooling), averaged.

    Args:
        reconstructions: ``(N, ch, H, W)``.
        targets: ``(N, ch, H, W)``.
        scales: number of resolutions.
        weights: ``(N, H, W)`` per-pixel weights (pooled with the images, normalised to mean 1
            at every scale), or ``None`` for the plain mean.

    Returns:
        Scalar.
    """
    total = reconstructions.new_zeros(())
    if weights is not None:
        weights = weights[:, None]
    for scale in range(scales):
        if scale:
            reconstructions = F.avg_pool2d(reconstructions, 2)
            targets = F.avg_pool2d(targets, 2)
            weights = None if weights is None else F.avg_pool2d(weights, 2)
        error = (reconstructions - targets).abs()
        if weights is None:
            total = total + error.mean()
        else:
            total = total + (error * weights).mean() / (weights.mean() + EPS)
    return total / scales


def random_block_mask(
    count: int,
    image_size: Sequence[int],
    blocks: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """AutoLink's mask: a ``blocks x blocks`` grid over each image, each block removed with
    probability ``ratio``.

    Args:
        count: ``N`` masks.
        image_size: ``(H, W)``.
        blocks: blocks per side (the paper: 16).
        ratio: probability of removing a block (the paper: 0.8).
        generator: random source (on ``device``), or ``None`` for torch's global one.
        device: device of the result.

    Returns:
        ``(N, 1, H, W)`` float, 1 where the image is kept.
    """
    keep = torch.rand(count, 1, blocks, blocks, generator=generator, device=device) >= ratio
    return F.interpolate(keep.float(), size=tuple(image_size), mode="nearest")


class ResidualDown(nn.Module):
    """The detector's residual block: ``conv 3x3 → /2 → LReLU → conv 3x3`` plus a ``conv 3x3 →
    /2`` shortcut, then LeakyReLU(0.2); the halving is bilinear, as in the reference."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.main(x) + self.shortcut(x), 0.2)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    """U-Net down block: conv 3x3, LReLU, conv 3x3, /2 (bilinear), LReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
        nn.LeakyReLU(0.2),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    """U-Net up block: x2 (bilinear), conv 3x3, LReLU, conv 3x3, LReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.LeakyReLU(0.2),
    )


class EdgeUNet(nn.Module):
    """AutoLink's decoder: a U-Net from ``[alpha · masked image, edge map]`` (4 channels, plus
    ``extra_channels``) to RGB.

    Levels (``f`` = base filters, 64 px input): ``conv → f`` at 64, down blocks to ``2f`` at 32,
    ``4f`` at 16 and ``4f`` at 8, up blocks back with the skip connections concatenated, and a
    last 3x3 conv to 3 channels.
    """

    def __init__(self, base_filters: int, extra_channels: int = 0) -> None:
        super().__init__()
        f = base_filters
        self.stem = nn.Sequential(nn.Conv2d(4 + extra_channels, f, 3, padding=1), nn.LeakyReLU(0.2))
        self.down1 = _down(f, 2 * f)
        self.down2 = _down(2 * f, 4 * f)
        self.down3 = _down(4 * f, 4 * f)
        self.up1, self.up2, self.up3 = _up(4 * f, 4 * f), _up(8 * f, 2 * f), _up(4 * f, f)
        self.head = nn.Conv2d(2 * f, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 4 + extra_channels, H, W)`` → ``(N, 3, H, W)``; ``H, W`` multiples of 8."""
        full = self.stem(x)
        half = self.down1(full)
        quarter = self.down2(half)
        eighth = self.down3(quarter)
        y = torch.cat([self.up1(eighth), quarter], dim=1)
        y = torch.cat([self.up2(y), half], dim=1)
        y = torch.cat([self.up3(y), full], dim=1)
        return self.head(y)


@register_perception("autolink")
class AutoLink(EmptyScene, Perception):
    """AutoLink (He et al., NeurIPS 2022): ``K`` keypoints per view and a learnt graph linking
    them (see the module docstring).

    Architecture (``f`` = ``base_filters``): the detector is three :class:`ResidualDown` blocks
    (``f``, ``2f``, ``4f``; 64 → 8 px), one up block (``2f``, 8 → 16 px) and a 3x3 conv to ``K``
    logits: heatmaps at a quarter of the image's resolution, as the reference's 32 x 32 of 128 px.
    The decoder is an :class:`EdgeUNet`. ``H`` and ``W`` must be multiples of 8.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        num_keypoints: ``K`` per view (the paper: 4-32 by dataset).
        base_filters: ``f``.
        edge_thickness: ``τ`` of :func:`edge_heatmaps`. The reference's 2.5e-3 at 128 px draws
            edges 2.3 px wide (standard deviation); the default 1e-2 keeps that width in pixels
            at 64 px.
        edge_lr_scale: the edge weights are ``softplus(θ · edge_lr_scale)`` (the reference's
            ``sklr = 512``: under Adam this multiplies their learning rate), initialised at
            ``θ = (N(0, 1) / 10 - 4) / edge_lr_scale`` (weights about 0.018).
        mask_blocks: blocks per side of the mask (the paper: 16).
        mask_ratio: fraction of blocks removed (the paper: 0.8).
        reconstruction_weight: weight of the reconstruction loss.
        ssim_weight: weight of the SSIM term (``kornia.losses.ssim_loss``, 5 px window) added to
            the multi-scale L1 (3 scales) in the default loss; 0 for L1 alone.
        perceptual_weights: a VGG-16 weights file (:class:`PerceptualLoss`): the loss becomes
            the paper's perceptual loss. The network is loaded here and kept out of the state
            dict (it is not learnt), so rebuilding a saved module needs the file again. It is
            deliberately not one of :attr:`~kp3d.perception.Perception.initialisation_files`:
            the file defines the training loss, which the weights do not hold, so a checkpoint
            keeps the path and a loaded or resumed module (``kp3d pretrain --resume``, an agent's
            auxiliary loss) keeps the perceptual loss, or fails loudly if the file is gone,
            rather than silently training with the default loss.
        perceptual_size: side the images are resized to for the perceptual loss (the
            reference: 224).
        foreground_weight: ``λ`` of per-pixel weights ``1 + λ |x - B|`` of the L1 terms
            towards what differs from the empty scene ``B`` (:mod:`kp3d.reconstruction`;
            :meth:`set_background`, else the batch's median); 0 for the paper's plain loss.
        decoder_image: what the decoder sees beside the edge map: ``"masked"`` the view with
            ``mask_ratio`` of its blocks removed (the paper), or ``"empty_scene"`` the empty
            scene ``B``, so that everything that is not the scene must come from the keypoints.
        init: ``"he"`` (He-normal convs, :func:`~kp3d.perception.layers.he_initialise`) or
            ``"default"`` (PyTorch's; flat heatmaps at the start).
        self_loops: the graph may link a keypoint to itself, drawn as a dot at the keypoint
            (:func:`edge_heatmaps`), its weight learnt like the others': a lone object (Reach's
            3 px target) needs one keypoint instead of two collapsed onto it.
        foreground_prior: ``λ`` of :func:`~kp3d.perception.scene.add_foreground_prior`:
            heatmap logits plus ``λ`` times each cell's difference from the empty scene, so
            that keypoints are drawn to the moving bodies (the edge map alone gives a keypoint
            no gradient towards an object a few pixels away from every edge). 0 for the paper.
        dot_weight: every keypoint is also drawn as a dot (its self-loop) of this fixed weight
            (added to the learnt one with ``self_loops``). The learnt weights of a keypoint
            that no edge uses decay to zero, and then nothing it does reaches the loss (a dead
            keypoint); a fixed dot keeps every keypoint in the picture, as the Gaussian maps of
            Transporter and Keypoint3D do. 0 for the paper.
        diversity_weight: weight of Thewlis et al.'s diversity loss on the heatmaps
            (:func:`~kp3d.perception.fse.diversity_loss`, in ``[0, K - 1]`` per view): the
            reconstruction is indifferent to a keypoint that repeats another one's dot, so
            nothing else sends one to a small object far from the others. 0 for the paper.
        diversity_pool: ``pool`` of that loss: keypoints must be that many heatmap cells
            (of 4 px) apart to cost nothing.
        keypoint_maps: the decoder also sees one dot per keypoint (:func:`edge_heatmaps`),
            each in its own channel, as Keypoint3D's and Transporter's decoders do: a keypoint
            then has an identity the decoder can paint by (the target red), which the single,
            anonymous edge map does not give. False for the paper.
        coverage_weight: weight of :func:`~kp3d.perception.scene.foreground_coverage`: the
            foreground-weighted squared distance of every pixel to its nearest keypoint, so
            that an object far from every keypoint pulls the nearest one to it. 0 for the paper.

    Of these options the config (``configs/pretrain/reach_autolink.yaml``) uses
    ``decoder_image``, ``foreground_weight``, ``init``, ``self_loops``, ``foreground_prior`` and
    ``coverage_weight`` (without which no keypoint reached Reach's target); ``dot_weight``,
    ``diversity_*`` and ``keypoint_maps`` were measured for the target and not adopted
    (docs/perception.md, issue 17).

    In eval mode the mask is drawn from a fixed seed, so ``forward`` is deterministic.

    Outputs (``forward``): ``features (B, 2 C K)``, the keypoints' ``(u, v)`` normalised to
    ``[-1, 1]`` across the image, camera-major; ``keypoints (B, C K, 2)`` full-image pixels;
    ``confidence None``; ``losses {"reconstruction", "diversity", "coverage"}`` (each iff its
    weight is positive); visuals with the keypoints, the softmax heatmaps
    ``(B, C, K, S_h, S_w)`` and the reconstructions.
    """

    keypoint_frame = "image"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 8,
        base_filters: int = 8,
        edge_thickness: float = 1e-2,
        edge_lr_scale: float = 512.0,
        mask_blocks: int = 16,
        mask_ratio: float = 0.8,
        reconstruction_weight: float = 1.0,
        ssim_weight: float = 1.0,
        perceptual_weights: str | None = None,
        perceptual_size: int = 224,
        foreground_weight: float = 0.0,
        decoder_image: str = "masked",
        init: str = "default",
        self_loops: bool = False,
        foreground_prior: float = 0.0,
        dot_weight: float = 0.0,
        diversity_weight: float = 0.0,
        diversity_pool: int = 1,
        keypoint_maps: bool = False,
        coverage_weight: float = 0.0,
    ) -> None:
        super().__init__(num_cameras, image_size)
        if decoder_image not in ("masked", "empty_scene"):
            raise ValueError(
                f"decoder_image must be 'masked' or 'empty_scene'; got {decoder_image!r}"
            )
        check_non_negative(
            foreground_weight=foreground_weight,
            foreground_prior=foreground_prior,
            dot_weight=dot_weight,
            diversity_weight=diversity_weight,
            coverage_weight=coverage_weight,
        )
        self.coverage_weight = float(coverage_weight)
        self.dot_weight = float(dot_weight)
        self.diversity_weight = float(diversity_weight)
        check_positive_ints(diversity_pool=diversity_pool)
        self.diversity_pool = diversity_pool
        self.keypoint_maps = bool(keypoint_maps)
        self.foreground_weight = float(foreground_weight)
        self.foreground_prior = float(foreground_prior)
        self.decoder_image = decoder_image
        self.self_loops = bool(self_loops)
        if not isinstance(num_keypoints, int) or num_keypoints < 2:
            raise ValueError(
                f"num_keypoints must be an int >= 2 (edges link pairs); got {num_keypoints!r}"
            )
        check_positive_ints(base_filters=base_filters)
        if any(side % 8 for side in self.image_size):
            raise ValueError(
                f"AutoLink needs image sides that are multiples of 8; got {image_size}"
            )
        check_positive(edge_thickness=edge_thickness, edge_lr_scale=edge_lr_scale)
        check_positive_ints(mask_blocks=mask_blocks)
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1); got {mask_ratio!r}")
        check_non_negative(reconstruction_weight=reconstruction_weight, ssim_weight=ssim_weight)
        self.num_keypoints = num_keypoints
        self.edge_thickness = float(edge_thickness)
        self.edge_lr_scale = float(edge_lr_scale)
        self.mask_blocks = mask_blocks
        self.mask_ratio = float(mask_ratio)
        self.reconstruction_weight = float(reconstruction_weight)
        self.ssim_weight = float(ssim_weight)
        self.heatmap_size = (self.image_size[0] // 4, self.image_size[1] // 4)

        f = base_filters
        self.detector = nn.Sequential(
            ResidualDown(3, f),
            ResidualDown(f, 2 * f),
            ResidualDown(2 * f, 4 * f),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
            nn.Conv2d(4 * f, 2 * f, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * f, num_keypoints, 3, padding=1),
        )
        self.edge_logits = nn.Parameter(
            (torch.randn(num_keypoints, num_keypoints) / 10.0 - 4.0) / self.edge_lr_scale
        )
        self.image_scale = nn.Parameter(torch.tensor(1.0))  # the reference's alpha
        self.decoder = EdgeUNet(f, num_keypoints if self.keypoint_maps else 0)
        initialise_convs(self, init)
        self.init_background()
        # Frozen, and kept out of the state dict and of parameters(): held in a plain tuple.
        self._perceptual: tuple[PerceptualLoss, ...] = ()
        if perceptual_weights is not None:
            self._perceptual = (PerceptualLoss(perceptual_weights, perceptual_size),)

    @property
    def features_dim(self) -> int:
        """``2 C K``: ``(u, v)`` per camera and keypoint."""
        return 2 * self.num_cameras * self.num_keypoints

    def edge_weights(self) -> torch.Tensor:
        """``(K, K)`` the learnt edge weights: symmetric, non-negative, zero on the diagonal
        unless ``self_loops``."""
        offset = 0 if self.self_loops else 1
        weights = torch.triu(F.softplus(self.edge_logits * self.edge_lr_scale), diagonal=offset)
        return weights + torch.triu(weights, diagonal=1).T

    def backgrounds_for(self, views: torch.Tensor, compute_losses: bool) -> torch.Tensor | None:
        """``(N, 3, H, W)`` the empty scene behind ``views`` (the ``C`` views of each sample in
        a row, ``images.flatten(0, 1)``) if an option reads it, else ``None``: looked up once
        per forward and shared by the prior, the decoder's image and the loss weights."""
        decoding = compute_losses and self.reconstruction_weight > 0
        needed = (
            self.foreground_prior > 0
            or (compute_losses and self.coverage_weight > 0)
            or (decoding and (self.foreground_weight > 0 or self.decoder_image == "empty_scene"))
        )
        return self.view_backgrounds(views) if needed else None

    def detect(
        self, views: torch.Tensor, magnitude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps and keypoints of views.

        Args:
            views: ``(N, 3, H, W)`` in ``[0, 1]``; with ``foreground_prior`` the ``C`` views
                of each sample in a row (``images.flatten(0, 1)``).
            magnitude: ``(N, 1, H, W)`` their :func:`foreground_magnitude` for the prior;
                computed from their empty scene if ``None``.

        Returns:
            ``heatmaps (N, K, S_h, S_w)`` (each sums to 1) and ``keypoints (N, K, 2)`` in
            full-image pixels.
        """
        logits = self.detector(views * 2.0 - 1.0)
        if self.foreground_prior > 0:
            if magnitude is None:
                magnitude = foreground_magnitude(views, self.view_backgrounds(views))
            logits = add_foreground_prior(logits, magnitude, self.foreground_prior)
        heatmaps = spatial_softmax(logits)
        keypoints = heatmap_to_image(soft_argmax(heatmaps), self.heatmap_size, self.image_size)
        return heatmaps, keypoints

    def edge_map(self, keypoints: torch.Tensor) -> torch.Tensor:
        """``S = max_{i<j} w_ij S_ij`` (``i <= j`` with ``self_loops`` or ``dot_weight``, the
        dots weighted ``w_ii + dot_weight``): ``keypoints (N, K, 2)`` pixels → ``(N, 1, H, W)``."""
        dots = self.self_loops or self.dot_weight > 0
        first, second = torch.triu_indices(
            self.num_keypoints, self.num_keypoints, 0 if dots else 1, device=keypoints.device
        )
        weights = self.edge_weights()
        if self.dot_weight > 0:
            weights = weights + self.dot_weight * torch.eye(len(weights), device=weights.device)
        weights = weights[first, second]
        edges = edge_heatmaps(keypoints, self.image_size, self.edge_thickness, dots)
        return (edges * weights[:, None, None]).amax(dim=1, keepdim=True)

    def masks(self, count: int, device: torch.device) -> torch.Tensor:
        """``(N, 1, H, W)`` block masks (1 = kept): random in training, a fixed draw in eval."""
        generator = None
        if not self.training:
            generator = torch.Generator(device=device).manual_seed(0)
        return random_block_mask(
            count, self.image_size, self.mask_blocks, self.mask_ratio, generator, device
        )

    def reconstruct(
        self,
        views: torch.Tensor,
        keypoints: torch.Tensor,
        backgrounds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode views from their keypoints' edge map and their masked pixels (or their empty
        scene, ``decoder_image``).

        Args:
            views: ``(N, 3, H, W)`` in ``[0, 1]``.
            keypoints: ``(N, K, 2)`` pixels.
            backgrounds: their empty scene (:meth:`backgrounds_for`); looked up if ``None``.

        Returns:
            ``(N, 3, H, W)`` reconstructions, about ``[0, 1]``.
        """
        if self.decoder_image == "masked":
            mask = self.masks(len(views), views.device).to(views.dtype)
            image = (views * 2.0 - 1.0) * mask  # removed blocks are 0, mid-grey
        else:
            if backgrounds is None:
                backgrounds = self.view_backgrounds(views)
            image = backgrounds * 2.0 - 1.0
        inputs = [image * self.image_scale, self.edge_map(keypoints)]
        if self.keypoint_maps:
            every = torch.arange(self.num_keypoints, device=keypoints.device)
            dots = edge_heatmaps(
                keypoints, self.image_size, self.edge_thickness, pairs=(every, every)
            )
            inputs.append(dots)
        inputs = torch.cat(inputs, dim=1)
        return self.decoder(inputs) * 0.5 + 0.5

    def reconstruction_loss(
        self,
        reconstructions: torch.Tensor,
        views: torch.Tensor,
        backgrounds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unweighted loss of ``reconstructions (N, 3, H, W)`` against ``views (N, 3, H, W)``:
        the perceptual loss if a weights file was given, else multi-scale L1 (weighted towards
        the foreground with ``foreground_weight``, against ``backgrounds``, looked up if
        ``None``) plus SSIM."""
        if self._perceptual:
            perceptual = self._perceptual[0].to(device=views.device, dtype=views.dtype)
            return perceptual(reconstructions, views)
        weights = None
        if self.foreground_weight > 0:
            if backgrounds is None:
                backgrounds = self.view_backgrounds(views)
            weights = foreground_weights(views, backgrounds, self.foreground_weight)
        loss = multiscale_l1(reconstructions, views, weights=weights)
        if self.ssim_weight > 0:
            ssim = kornia.losses.ssim_loss(reconstructions, views, window_size=5)
            loss = loss + self.ssim_weight * ssim
        return loss

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; the matrices are validated but not used."""
        self.check_inputs(images, intrinsics, extrinsics)
        views = images.flatten(0, 1)
        backgrounds = self.backgrounds_for(views, compute_losses)
        covering = compute_losses and self.coverage_weight > 0
        magnitude = None
        if self.foreground_prior > 0 or covering:  # one difference map for both
            magnitude = foreground_magnitude(views, backgrounds)
        heatmaps, keypoints = self.detect(views, magnitude)
        losses: dict[str, torch.Tensor] = {}
        reconstructions = None
        if compute_losses and self.reconstruction_weight > 0:
            reconstructions = self.reconstruct(views, keypoints, backgrounds)
            losses["reconstruction"] = self.reconstruction_weight * self.reconstruction_loss(
                reconstructions, views, backgrounds
            )
        if compute_losses and self.diversity_weight > 0:
            diversity = diversity_loss(heatmaps, self.diversity_pool).mean()
            losses["diversity"] = self.diversity_weight * diversity
        if covering:
            coverage = foreground_coverage(keypoints, magnitude).mean()
            losses["coverage"] = self.coverage_weight * coverage
        return image_keypoint_output(
            keypoints,
            heatmaps,
            self.num_cameras,
            self.image_size,
            losses,
            reconstructions=reconstructions,
        )


__all__ = [
    "VGG16_BLOCKS",
    "VGG16_LAYERS",
    "AutoLink",
    "EdgeUNet",
    "PerceptualLoss",
    "edge_heatmaps",
    "multiscale_l1",
    "random_block_mask",
    "segment_squared_distances",
    "vgg16_features",
]
