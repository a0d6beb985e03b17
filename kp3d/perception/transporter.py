"""Transporter: object keypoints learnt by transporting features between two frames of a video.

Kulkarni, Gupta, Ionescu, Borgeaud, Reynolds, Zisserman and Mnih, "Unsupervised Learning of Object
Keypoints for Perception and Control", NeurIPS 2019 (METHODS.md §2, "Unsupervised landmark
learners"). Given a source frame ``x_s`` and a target frame ``x_t`` of the same episode:

1. a feature encoder ``Φ`` maps each frame to a feature map, ``(D, S_h, S_w)``;
2. a keypoint network ``Ψ`` (the same conv architecture plus a 1x1 head) maps each frame to ``K``
   heatmap logits on the same grid; a spatial softmax and its expected position give ``K``
   keypoints, and an isotropic Gaussian of fixed width drawn at each gives the maps
   ``H^k ∈ [0, 1]^{S_h x S_w}``;
3. **transport**: the features of ``x_s`` are erased at the keypoints of both frames and the
   features of ``x_t`` pasted in at the keypoints of ``x_t``,
   ``Φ̂ = (1 - H_s)(1 - H_t) Φ(x_s) + H_t Φ(x_t)`` (:func:`transport_features`);
4. a decoder ("RefineNet") reconstructs ``x_t`` from ``Φ̂``; the loss is the squared error.

The only way for the decoder to see where anything moved is through the target's keypoints, so
the keypoints learn to sit on whatever changes between frames: the robot and the objects it moves.
The policy sees the keypoints of the current frame.

Several keypoints: the paper writes Eq. (1) for one map ``H``; the authors' released code
(``deepmind-research/transporter``) applies it once per keypoint, in order, each time to the
result of the previous step: ``Φ̂ ← (1 - H_s^k)(1 - H_t^k) Φ̂ + H_t^k Φ(x_t)`` for
``k = 1..K`` starting from ``Φ̂ = Φ(x_s)``. That is what :func:`transport_features` does (not a
sum or a max of the maps).

Per-view keypoints: the ``C`` cameras of a sample are folded into the batch (shared weights), so
every view gets its own ``K`` keypoints, reported in full-image pixels (``keypoint_frame`` is
``"image"``, camera-major, like :class:`~kp3d.perception.Keypoint2D`).

Where the source frame comes from:

* offline (``kp3d pretrain``, :meth:`Transporter.training_losses`): ``x_t`` is
  ``batch.images`` and ``x_s`` is ``batch.pair.images``, another frame of the same episode
  (``uses_pairs = True``). The reconstructed frame is the batch's own, so the keypoints trained
  through the decoder are those of the frames the policy sees;
* under an RL agent (:meth:`Transporter.forward` with ``compute_losses=True``) there is no pair.
  If a fixed source frame per camera has been set (:meth:`Transporter.set_source`, e.g. the first
  frame of an episode; stored in the state dict), every sample is transported from it. Otherwise
  each sample's source is *another sample of the same batch* (the batch rolled by one). For the
  fixed cameras of kp3d's environments two frames of different episodes differ exactly where the
  robot and the objects are, which is what a pair of frames of one episode offers too; moving
  cameras would break this, so set a source (or train offline) there. A batch of one sample has
  no other sample: without a set source, ``forward`` then returns no transport loss.

Differences from the paper (all for small CPU-sized views): no batch normalisation (under an RL
agent the batch statistics would differ between rollouts and updates), images scaled to
``[-1, 1]`` and the decoder's output mapped back by ``· 0.5 + 0.5``, ``base_filters=8`` instead
of 32 (a training step on 16 samples of three 64 px views takes about 1.3 s on one CPU core; the
full-resolution 7x7 and 3x3 convs of ``Φ`` and ``Ψ``, run on both frames, dominate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    check_non_negative,
    check_positive,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.image_keypoints import image_keypoint_output
from kp3d.perception.layers import ConvLayer, ConvStack, conv_relu, conv_sizes, initialise_convs
from kp3d.perception.scene import EmptyScene
from kp3d.reconstruction import foreground_weights, weighted_mse
from kp3d.spatial import gaussian_maps, heatmap_to_image, soft_argmax, spatial_softmax

TRANSPORTER_LAYERS = (
    ConvLayer(7, 1, 3),
    ConvLayer(3, 1, 1),
    ConvLayer(3, 2, 1),
    ConvLayer(3, 1, 1),
    ConvLayer(3, 2, 1),
    ConvLayer(3, 1, 1),
)
"""Kernel, stride and padding of ``Φ`` and ``Ψ``: the paper's encoder (7x7, then 3x3 convs, two of
them strided), feature maps at a quarter of the image's resolution."""


def transport_features(
    source_features: torch.Tensor,
    target_features: torch.Tensor,
    source_maps: torch.Tensor,
    target_maps: torch.Tensor,
) -> torch.Tensor:
    """Transport: erase the source's features at both frames' keypoints, paste the target's in.

    For ``k = 1..K`` in order, starting from ``Φ̂ = Φ(x_s)``:
    ``Φ̂ ← (1 - H_s^k) (1 - H_t^k) Φ̂ + H_t^k Φ(x_t)`` (Eq. (1) of the paper, applied per
    keypoint as in the authors' released code).

    Args:
        source_features: ``(N, D, S_h, S_w)`` ``Φ(x_s)``.
        target_features: ``(N, D, S_h, S_w)`` ``Φ(x_t)``.
        source_maps: ``(N, K, S_h, S_w)`` ``H_s``, values in ``[0, 1]``.
        target_maps: ``(N, K, S_h, S_w)`` ``H_t``, values in ``[0, 1]``.

    Returns:
        ``(N, D, S_h, S_w)`` ``Φ̂``.
    """
    if source_features.shape != target_features.shape or source_features.ndim != 4:
        raise ValueError(
            "source_features and target_features must both have shape (N, D, S_h, S_w); got "
            f"{tuple(source_features.shape)} and {tuple(target_features.shape)}"
        )
    expected = (source_features.shape[0], *source_features.shape[2:])
    for name, maps in (("source_maps", source_maps), ("target_maps", target_maps)):
        if maps.ndim != 4 or (maps.shape[0], *maps.shape[2:]) != expected:
            raise ValueError(
                f"{name} must have shape ({expected[0]}, K, {expected[1]}, {expected[2]}); got "
                f"{tuple(maps.shape)}"
            )
    if source_maps.shape != target_maps.shape:
        raise ValueError(
            f"source_maps and target_maps must have the same shape; got "
            f"{tuple(source_maps.shape)} and {tuple(target_maps.shape)}"
        )
    transported = source_features
    for source, target in zip(source_maps.unbind(1), target_maps.unbind(1), strict=True):
        source, target = source[:, None], target[:, None]
        transported = (1.0 - source) * (1.0 - target) * transported + target * target_features
    return transported


class RefineNet(nn.Sequential):
    """The decoder: conv 3x3 ``4f → 4f → 2f``, x2 upsampling, ``2f → 2f → f``, x2 upsampling,
    ``f → f``, conv 7x7 ``f → 3`` (ReLU between, none at the end), the mirror of ``Φ``.

    Args:
        base_filters: ``f``.
        out_channels: channels of the output (3 for an RGB image).
    """

    def __init__(self, base_filters: int, out_channels: int = 3) -> None:
        f = base_filters
        super().__init__(
            *conv_relu(4 * f, 4 * f),
            *conv_relu(4 * f, 2 * f),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
            *conv_relu(2 * f, 2 * f),
            *conv_relu(2 * f, f),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
            *conv_relu(f, f),
            nn.Conv2d(f, out_channels, 7, padding=3),
        )


@register_perception("transporter")
class Transporter(EmptyScene, Perception):
    """Transporter (Kulkarni et al., NeurIPS 2019): ``K`` keypoints per view in pixels.

    Architecture (``f`` = ``base_filters``; see the module docstring): ``Φ`` and ``Ψ`` are two
    conv stacks of :data:`TRANSPORTER_LAYERS` with ``f, f, 2f, 2f, 4f, 4f`` channels (ReLU),
    mapping a view of ``H x W`` to ``(4f, H/4, W/4)`` (64 px: a 16 x 16 grid of 4 px cells);
    ``Ψ`` ends in a 1x1 conv to ``K`` logits. The decoder is a :class:`RefineNet`. ``H`` and
    ``W`` must be multiples of 4.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        num_keypoints: ``K`` per view (the paper uses a few per object, e.g. 4-10 on Atari).
        base_filters: ``f`` (the paper's encoder starts at 32 filters).
        gaussian_std: width of the maps ``H``, in the reference's units: a map is
            ``exp(-||p - μ||² / std²)`` with ``p`` and ``μ`` in ``[-1, 1]`` across the image (the
            reference's 0.1). On the feature grid that is a Gaussian of
            ``std / √2 · S / 2`` cells (0.57 cells on a 16 x 16 grid).
        reconstruction_weight: weight of the squared error of the reconstruction.
        foreground_weight: ``λ`` of the per-pixel weights ``1 + λ |x_t - B|`` of the squared
            error towards what differs from the empty scene ``B`` (:mod:`kp3d.reconstruction`;
            :meth:`set_background`, else the batch's median); 0 for the paper's plain error.
        source: where offline training (:meth:`training_losses`) takes ``x_s`` from:
            ``"episode"`` the pair's frame of the same episode (the paper), ``"batch"`` another
            sample of the batch, i.e. of another episode (as :meth:`forward` does under an
            agent). Objects that never move within an episode (Reach's target) differ only
            between episodes, so only ``"batch"`` makes the decoder need a keypoint on them.
        init: ``"he"`` (He-normal convs, :func:`~kp3d.perception.layers.he_initialise`: the
            heatmaps start peaked, as with the paper's batch norm) or ``"default"`` (PyTorch's:
            flat heatmaps, every keypoint at the view's centre).

    Outputs (``forward``): ``features (B, 2 C K)``: the keypoints' ``(u, v)`` normalised to
    ``[-1, 1]`` across the image (:func:`~kp3d.perception.coordinates.normalized_coordinates`),
    camera-major; ``keypoints (B, C K, 2)`` full-image pixels; ``confidence None`` (the method
    defines none); ``losses {"reconstruction"}`` when a source frame is available (see the module
    docstring); visuals with the keypoints, the softmax heatmaps ``(B, C, K, S_h, S_w)`` and the
    reconstructions of the target views.
    """

    keypoint_frame = "image"
    uses_pairs = True

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 8,
        base_filters: int = 8,
        gaussian_std: float = 0.1,
        reconstruction_weight: float = 1.0,
        foreground_weight: float = 0.0,
        source: str = "episode",
        init: str = "default",
    ) -> None:
        super().__init__(num_cameras, image_size)
        check_positive_ints(num_keypoints=num_keypoints, base_filters=base_filters)
        check_positive(gaussian_std=gaussian_std)
        check_non_negative(
            reconstruction_weight=reconstruction_weight, foreground_weight=foreground_weight
        )
        if source not in ("episode", "batch"):
            raise ValueError(f"source must be 'episode' or 'batch'; got {source!r}")
        if any(side % 4 for side in self.image_size):
            raise ValueError(
                f"Transporter needs image sides that are multiples of 4 (its feature grid is a "
                f"quarter of the image); got {self.image_size}"
            )
        self.num_keypoints = num_keypoints
        self.reconstruction_weight = float(reconstruction_weight)
        self.foreground_weight = float(foreground_weight)
        self.source_frames = source
        self.heatmap_size: tuple[int, int] = conv_sizes(self.image_size, TRANSPORTER_LAYERS)[-1]
        # exp(-d²/std²) in [-1, 1] units is a Gaussian of sigma = std/√2 half-sides.
        self.gaussian_cells = gaussian_std / math.sqrt(2.0) * min(self.heatmap_size) / 2.0

        f = base_filters
        channels = [f, f, 2 * f, 2 * f, 4 * f, 4 * f]
        self.feature_encoder = ConvStack(3, channels, TRANSPORTER_LAYERS)
        self.keypoint_encoder = ConvStack(3, channels, TRANSPORTER_LAYERS)
        self.keypoint_head = nn.Conv2d(4 * f, num_keypoints, 1)
        self.decoder = RefineNet(f)
        initialise_convs(self, init)
        self.register_buffer("source", torch.zeros(self.num_cameras, 3, *self.image_size))
        self.register_buffer("has_source", torch.tensor(False))
        self.init_background()

    @property
    def features_dim(self) -> int:
        """``2 C K``: ``(u, v)`` per camera and keypoint."""
        return 2 * self.num_cameras * self.num_keypoints

    def set_source(self, images: torch.Tensor | None) -> None:
        """Fix the source frame that :meth:`forward` transports from (joint training with RL).

        Args:
            images: ``(C, 3, H, W)`` float in ``[0, 1]``, e.g. the first frame of an episode;
                ``None`` to go back to sources taken from the batch (module docstring). Stored
                in the state dict.
        """
        if images is None:
            self.has_source.fill_(False)
            return
        expected = (self.num_cameras, 3, *self.image_size)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"source images must have shape {expected}; got {shape}")
        self.source.copy_(images)
        self.has_source.fill_(True)

    def keypoint_maps(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Ψ``: softmax heatmaps, keypoints and their Gaussian maps.

        Args:
            views: ``(N, 3, H, W)`` in ``[0, 1]`` (cameras folded into ``N``).

        Returns:
            ``heatmaps (N, K, S_h, S_w)`` (each sums to 1), ``cells (N, K, 2)`` the keypoints on
            the feature grid and ``maps (N, K, S_h, S_w)`` their Gaussians (peak 1).
        """
        logits = self.keypoint_head(self.keypoint_encoder(views * 2.0 - 1.0))
        heatmaps = spatial_softmax(logits)
        cells = soft_argmax(heatmaps)
        return heatmaps, cells, gaussian_maps(cells, self.gaussian_cells, self.heatmap_size)

    def features(self, views: torch.Tensor) -> torch.Tensor:
        """``Φ``: ``(N, 3, H, W)`` in ``[0, 1]`` → ``(N, 4f, S_h, S_w)``."""
        return self.feature_encoder(views * 2.0 - 1.0)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """RefineNet: ``(N, 4f, S_h, S_w)`` → ``(N, 3, H, W)`` images, about ``[0, 1]``."""
        return self.decoder(features) * 0.5 + 0.5

    def reconstruct(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        target_maps: torch.Tensor,
    ) -> torch.Tensor:
        """Decode the target views from the source views' features, transported.

        Args:
            source: ``(N, 3, H, W)`` ``x_s``.
            target: ``(N, 3, H, W)`` ``x_t``.
            target_maps: ``(N, K, S_h, S_w)`` ``H_t`` (from :meth:`keypoint_maps` of ``x_t``).

        Returns:
            ``(N, 3, H, W)`` reconstructions of ``x_t``.
        """
        _, _, source_maps = self.keypoint_maps(source)
        transported = transport_features(
            self.features(source), self.features(target), source_maps, target_maps
        )
        return self.decode(transported)

    def reconstruction_loss(
        self, reconstructions: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """Squared error of ``reconstructions (B C, 3, H, W)`` against ``images (B, C, 3, H, W)``,
        weighted towards what differs from the empty scene (``foreground_weight``)."""
        views = images.flatten(0, 1)
        if self.foreground_weight == 0:
            return F.mse_loss(reconstructions, views)
        weights = foreground_weights(
            images, self.scene_background(images), self.foreground_weight
        ).flatten(0, 1)
        return weighted_mse(reconstructions, views, weights)

    def _encode(
        self, images: torch.Tensor, sources: torch.Tensor | None, compute_losses: bool
    ) -> PerceptionOutput:
        views = images.flatten(0, 1)
        heatmaps, cells, maps = self.keypoint_maps(views)
        pixels = heatmap_to_image(cells, self.heatmap_size, self.image_size)
        losses: dict[str, torch.Tensor] = {}
        reconstructions = None
        if compute_losses and sources is not None and self.reconstruction_weight > 0:
            reconstructions = self.reconstruct(sources.flatten(0, 1), views, maps)
            losses["reconstruction"] = self.reconstruction_weight * self.reconstruction_loss(
                reconstructions, images
            )
        return image_keypoint_output(
            pixels,
            heatmaps,
            self.num_cameras,
            self.image_size,
            losses,
            reconstructions=reconstructions,
        )

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; ``images`` are the target frames. The source
        of the transport loss is the frame set by :meth:`set_source`, or else the batch rolled
        by one sample (none for ``B = 1``). The matrices are validated but not used."""
        self.check_inputs(images, intrinsics, extrinsics)
        sources = None
        if compute_losses:
            if bool(self.has_source):
                sources = self.source.to(images.dtype).expand_as(images)
            elif images.shape[0] > 1:
                sources = images.roll(1, dims=0)
        return self._encode(images, sources, compute_losses)

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """The transport loss with ``x_t = batch.images`` and ``x_s = batch.pair.images``
        (``source="episode"``) or the batch rolled by one sample (``source="batch"``).

        Raises:
            ValueError: if ``batch`` has no :attr:`~kp3d.batch.FrameBatch.pair`.
        """
        if batch.pair is None:
            raise ValueError(
                "Transporter is trained on pairs of frames of one episode; this batch has no "
                "FrameBatch.pair (build batches with pairs, e.g. FrameDataset(..., pairs=...))"
            )
        self.check_inputs(batch.images, batch.intrinsics, batch.extrinsics)
        sources = batch.pair.images
        if self.source_frames == "batch" and len(batch.images) > 1:
            sources = batch.images.roll(1, dims=0)
        return dict(self._encode(batch.images, sources, compute_losses=True).losses)


__all__ = ["TRANSPORTER_LAYERS", "RefineNet", "Transporter", "transport_features"]
