"""Stacked Hourglass: a supervised 2D keypoint detector, optionally lifted to 3D by triangulation.

Newell, Yang and Deng, "Stacked Hourglass Networks for Human Pose Estimation", ECCV 2016
(METHODS.md §2, "Supervised 2D detectors"). Every view is processed independently by the same
network (the ``C`` views of a sample are folded into the batch):

1. **Stem**: 7x7 stride-2 conv, a residual module, a 2x2 max-pool, two residual modules: 1/4 of
   the image's resolution, as in the paper. The envs' 64 px views would then give 16 x 16 maps of
   4 px cells, where their smallest parts (Push's pusher, a few pixels across) are one cell:
   ``heatmap_stride=2`` drops the max-pool and keeps 32 x 32 maps of 2 px cells (the default).
2. **Hourglass** (recursive): at each scale a residual *skip* branch is kept at that resolution;
   the main branch max-pools, passes a residual module, recurses (a residual module at the
   lowest scale), passes another residual module and is upsampled (nearest) and added to the
   skip branch. ``depth`` halvings, by default down to a 4 x 4 grid (the paper: 64 → 4).
3. **Stacks**: after each hourglass, a residual module and a 1x1 conv-BN-ReLU give features, and
   a 1x1 conv predicts ``K`` heatmaps. Every stack is supervised with the same target and loss
   (intermediate supervision); before the next stack, the features and the heatmaps are each
   mapped by a 1x1 conv and added to that stack's input. Weights are not shared.
4. **Residual modules** are the paper's pre-activation bottlenecks: BN-ReLU-1x1 conv to half the
   channels, BN-ReLU-3x3 conv, BN-ReLU-1x1 conv back, plus the input (through a 1x1 conv where
   the channels change). The paper has 256 channels and 8 stacks for 256 px people; ``channels``
   and ``num_stacks`` default to 32 and 2 for the envs' 64 px views.

**Targets and loss** (:meth:`StackedHourglass.training_losses`): a Gaussian of peak 1 and std
``gaussian_std`` cells (the paper: 1 px of its 64 x 64 maps) at every keypoint's ground-truth pixel
(sub-pixel, mapped exactly onto the heatmap grid by :func:`kp3d.spatial.image_to_heatmap`); MSE
per map averaged over its cells, then over the *visible* keypoints (invisible ones, occluded or
outside the image, are masked out); one term per stack.

**Decoding**: the strongest cell of each map refined by a Gaussian fit
(:func:`kp3d.peaks.decode_peaks`: a parabola through the log-values of the peak and its
neighbours, exact for a Gaussian bump), mapped to full-image pixels in the convention of
:mod:`kp3d.geometry` (cell ``(i, j)`` centred at ``((j + 0.5) s, (i + 0.5) s)`` for stride
``s``). The peak value is the detection's confidence.

**As an agent's perception**: with ``triangulate=False`` (default, ``keypoint_frame = "image"``)
the features are ``[u, v, peak]`` per camera and keypoint, camera-major, with ``(u, v)`` in
``[-1, 1]`` (:func:`~kp3d.perception.coordinates.normalized_coordinates`): ``3 C K`` values.
With ``triangulate=True`` (``keypoint_frame = "world"``) the ``K`` keypoints are triangulated into
the world frame by confidence-weighted DLT (:func:`kp3d.geometry.triangulate`) with the peak
values as weights (clamped to ``min_weight`` so that every view keeps a vote and a point is
always defined); the features are ``[x, y, z, confidence]`` per keypoint, the confidence being
the mean peak value over the views: ``4 K`` values, as Keypoint3D's. ``forward`` returns no
losses: the module is trained offline on labels (``kp3d pretrain``) and used frozen or fine-tuned
by the RL loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.geometry import project, triangulate
from kp3d.peaks import decode_peaks
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    check_positive,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.spatial import gaussian_maps, heatmap_to_image, image_to_heatmap

HEATMAP_EPS = 1e-8
"""Added to a visual heatmap's total before it is normalised to sum to 1."""


class Residual(nn.Module):
    """The hourglass's residual module: a pre-activation bottleneck.

    ``BN-ReLU-conv1x1(c_out/2)``, ``BN-ReLU-conv3x3(c_out/2)``, ``BN-ReLU-conv1x1(c_out)``, plus
    the input (mapped by a 1x1 conv when ``c_in != c_out``). Keeps the spatial size.

    Args:
        in_channels: ``c_in``.
        out_channels: ``c_out`` (even).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        middle = out_channels // 2
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, middle, 1),
            nn.BatchNorm2d(middle),
            nn.ReLU(),
            nn.Conv2d(middle, middle, 3, padding=1),
            nn.BatchNorm2d(middle),
            nn.ReLU(),
            nn.Conv2d(middle, out_channels, 1),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, c_in, h, w)`` → ``(N, c_out, h, w)``."""
        return self.skip(features) + self.branch(features)


class Hourglass(nn.Module):
    """One hourglass of ``depth`` halvings (recursive; see the module docstring, step 2).

    Args:
        depth: number of max-pool halvings below the input's resolution (>= 1).
        channels: channels throughout.
    """

    def __init__(self, depth: int, channels: int) -> None:
        super().__init__()
        self.skip = Residual(channels, channels)
        self.down = Residual(channels, channels)
        self.inner: nn.Module = (
            Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        )
        self.up = Residual(channels, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, c, h, w)`` → ``(N, c, h, w)``; odd sides are pooled down (floor) and upsampled
        back to the skip branch's exact size."""
        low = self.up(self.inner(self.down(F.max_pool2d(features, 2))))
        return self.skip(features) + F.interpolate(low, size=features.shape[-2:], mode="nearest")


class StackedHourglassNetwork(nn.Module):
    """Stem and stacked hourglasses with intermediate heatmap predictions (module docstring).

    Args:
        num_keypoints: ``K`` heatmaps per image.
        channels: channels of the hourglasses (the stem's first conv has half).
        num_stacks: hourglasses in sequence, each supervised.
        depth: halvings in each hourglass.
        heatmap_stride: 4 (the paper's stem, with max-pool) or 2 (without).
    """

    def __init__(
        self, num_keypoints: int, channels: int, num_stacks: int, depth: int, heatmap_stride: int
    ) -> None:
        super().__init__()
        half = channels // 2
        stem: list[nn.Module] = [
            nn.Conv2d(3, half, 7, stride=2, padding=3),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            Residual(half, channels),
        ]
        if heatmap_stride == 4:
            stem.append(nn.MaxPool2d(2))
        stem += [Residual(channels, channels), Residual(channels, channels)]
        self.stem = nn.Sequential(*stem)
        self.hourglasses = nn.ModuleList(Hourglass(depth, channels) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(
                Residual(channels, channels),
                nn.Conv2d(channels, channels, 1),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            for _ in range(num_stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_keypoints, 1) for _ in range(num_stacks))
        self.merge_features = nn.ModuleList(
            nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1)
        )
        self.merge_heatmaps = nn.ModuleList(
            nn.Conv2d(num_keypoints, channels, 1) for _ in range(num_stacks - 1)
        )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Heatmaps of every stack.

        Args:
            images: ``(N, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``num_stacks`` tensors ``(N, K, S_h, S_w)``, the last stack's last.
        """
        features = self.stem(images * 2.0 - 1.0)
        heatmaps = []
        for stack, hourglass in enumerate(self.hourglasses):
            stack_features = self.features[stack](hourglass(features))
            heatmaps.append(self.heads[stack](stack_features))
            if stack < len(self.merge_features):
                features = (
                    features
                    + self.merge_features[stack](stack_features)
                    + self.merge_heatmaps[stack](heatmaps[-1])
                )
        return heatmaps


def default_depth(heatmap_size: tuple[int, int]) -> int:
    """Halvings from the heatmap grid down to a grid of at least 4 cells a side (the paper's
    64 → 4), and at least 1: 3 for 32 x 32 maps, 2 for 16 x 16."""
    return max(1, (min(heatmap_size) // 4).bit_length() - 1)


def masked_heatmap_loss(
    predictions: torch.Tensor, targets: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """MSE of heatmaps averaged over each map's cells, then over the visible maps.

    Args:
        predictions: ``(*, H, W)`` predicted maps.
        targets: ``(*, H, W)`` target maps.
        visible: ``(*)`` bool: maps that count.

    Returns:
        Scalar loss (0 when no map is visible).
    """
    per_map = (predictions - targets).pow(2).mean(dim=(-2, -1))
    weights = visible.to(per_map.dtype)
    return (per_map * weights).sum() / weights.sum().clamp(min=1.0)


@register_perception("hourglass")
class StackedHourglass(Perception):
    """Stacked Hourglass (Newell et al., ECCV 2016): supervised per-view 2D keypoints (module
    docstring), optionally triangulated into world 3D keypoints.

    Heatmap grid: ``S = image side / heatmap_stride`` (32 x 32 cells of 2 px for 64 px views with
    the default stride 2; 16 x 16 cells of 4 px with the paper's stride 4).

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)``, each divisible by ``heatmap_stride``.
        num_keypoints: ``K`` keypoints per view: the labels' (Reach 4, Push 3, MultiReach 12).
        channels: channels of the hourglasses (paper 256), a multiple of 4.
        num_stacks: stacked hourglasses (paper 8), each supervised.
        depth: halvings per hourglass; ``None``: down to a 4-cell grid (:func:`default_depth`).
        heatmap_stride: image pixels per heatmap cell: 4 (the paper's stem) or 2 (no max-pool).
        gaussian_std: std of the target Gaussians, in heatmap cells (paper 1).
        triangulate: output world 3D keypoints triangulated from the views (needs ``C >= 2``).
        min_weight: smallest triangulation weight of a view (the peak values are clamped to it).
    """

    keypoint_frame = "image"  # the class default; "world" on an instance with triangulate=True
    requires_labels = True

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 4,
        channels: int = 32,
        num_stacks: int = 2,
        depth: int | None = None,
        heatmap_stride: int = 2,
        gaussian_std: float = 1.0,
        triangulate: bool = False,
        min_weight: float = 1e-3,
    ) -> None:
        super().__init__(num_cameras, image_size)
        check_positive_ints(num_keypoints=num_keypoints)
        if not isinstance(channels, int) or channels < 4 or channels % 4:
            raise ValueError(f"channels must be a positive multiple of 4; got {channels!r}")
        check_positive_ints(num_stacks=num_stacks)
        if heatmap_stride not in (2, 4):
            raise ValueError(f"heatmap_stride must be 2 or 4; got {heatmap_stride!r}")
        if any(side % heatmap_stride for side in self.image_size):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by heatmap_stride {heatmap_stride}"
            )
        self.heatmap_size: tuple[int, int] = (
            self.image_size[0] // heatmap_stride,
            self.image_size[1] // heatmap_stride,
        )
        if depth is None:
            depth = default_depth(self.heatmap_size)
        if not isinstance(depth, int) or depth < 1 or min(self.heatmap_size) < 2**depth:
            raise ValueError(
                f"depth must be an int in [1, log2 of the heatmap side] for heatmaps of "
                f"{self.heatmap_size} cells; got {depth!r}"
            )
        check_positive(gaussian_std=gaussian_std)
        if triangulate and self.num_cameras < 2:
            raise ValueError("triangulate=True needs at least 2 cameras; got 1")
        check_positive(min_weight=min_weight)
        self.num_keypoints = num_keypoints
        self.num_stacks = num_stacks
        self.depth = depth
        self.heatmap_stride = heatmap_stride
        self.gaussian_std = float(gaussian_std)
        self.triangulate = bool(triangulate)
        self.min_weight = float(min_weight)
        self.keypoint_frame = "world" if triangulate else "image"
        self.network = StackedHourglassNetwork(
            num_keypoints, channels, num_stacks, depth, heatmap_stride
        )

    @property
    def features_dim(self) -> int:
        """``3 C K`` (``[u, v, peak]`` per view and keypoint) or, triangulating, ``4 K``."""
        if self.triangulate:
            return 4 * self.num_keypoints
        return 3 * self.num_cameras * self.num_keypoints

    def stack_heatmaps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Heatmaps of every stack, each view processed on its own.

        Args:
            images: ``(B, C, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``num_stacks`` tensors ``(B, C, K, S_h, S_w)``, the last stack's last.
        """
        batch, count = images.shape[:2]
        return [
            maps.reshape(batch, count, *maps.shape[1:])
            for maps in self.network(images.flatten(0, 1))
        ]

    def detect(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints of heatmaps, in full-image pixels.

        Args:
            heatmaps: ``(*, K, S_h, S_w)`` predicted maps.

        Returns:
            ``pixels (*, K, 2)`` (sub-pixel, :func:`kp3d.peaks.decode_peaks`) and
            ``peaks (*, K)``, each map's maximum.
        """
        cells, peaks = decode_peaks(heatmaps)
        return heatmap_to_image(cells, self.heatmap_size, self.image_size), peaks

    def targets(self, pixels: torch.Tensor) -> torch.Tensor:
        """Target heatmaps: a Gaussian of peak 1 and std ``gaussian_std`` cells at each keypoint.

        Args:
            pixels: ``(*, K, 2)`` full-image pixels.

        Returns:
            ``(*, K, S_h, S_w)``.
        """
        cells = image_to_heatmap(pixels, self.heatmap_size, self.image_size)
        return gaussian_maps(cells, self.gaussian_std, self.heatmap_size)

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """Masked heatmap MSE at every stack (intermediate supervision), ``heatmap_<stack>``.

        Raises:
            ValueError: if ``batch`` has no labels or not ``K`` keypoints per view.
        """
        if batch.keypoints_pixels is None or batch.keypoints_visible is None:
            raise ValueError(
                "the hourglass is trained on ground-truth keypoints; this batch has none "
                "(build the dataset with `kp3d dataset`, which stores them)"
            )
        expected = (batch.batch_size, self.num_cameras, self.num_keypoints, 2)
        if tuple(batch.keypoints_pixels.shape) != expected:
            raise ValueError(
                f"this hourglass detects {self.num_keypoints} keypoints in {self.num_cameras} "
                f"views: keypoints_pixels must have shape {expected}; got "
                f"{tuple(batch.keypoints_pixels.shape)} (build it with num_keypoints=K of the "
                "dataset)"
            )
        self.check_inputs(batch.images, batch.intrinsics, batch.extrinsics)
        targets = self.targets(batch.keypoints_pixels.to(batch.images.dtype))
        visible = batch.keypoints_visible.bool()
        return {
            f"heatmap_{stack}": masked_heatmap_loss(maps, targets, visible)
            for stack, maps in enumerate(self.stack_heatmaps(batch.images))
        }

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`. ``keypoints``: ``(B, C·K, 2)`` full-image
        pixels, camera-major, with ``confidence (B, C·K)`` the peak values; or, triangulating,
        ``(B, K, 3)`` world points with ``confidence (B, K)`` the mean peak value over the views.
        ``losses`` is always empty (the labels are needed: :meth:`training_losses`)."""
        intrinsics, extrinsics = self.check_inputs(images, intrinsics, extrinsics)
        heatmaps = self.stack_heatmaps(images)[-1]
        detections, peaks = self.detect(heatmaps)  # (B, C, K, 2), (B, C, K)
        visual_maps = heatmaps.detach().clamp(min=0.0)
        visual_maps = visual_maps / (visual_maps.sum(dim=(-2, -1), keepdim=True) + HEATMAP_EPS)

        if self.triangulate:
            points = triangulate(
                detections, intrinsics, extrinsics, peaks.clamp(min=self.min_weight)
            )
            confidence = peaks.mean(dim=1)
            features = torch.cat([points, confidence[..., None]], dim=-1).flatten(1)
            projected, _ = project(points[:, None], intrinsics, extrinsics)  # (B, C, K, 2)
            keypoints, points_in_views = points, projected
        else:
            coordinates = normalized_coordinates(detections, self.image_size)
            features = torch.cat([coordinates, peaks[..., None]], dim=-1).flatten(1)
            keypoints, confidence = detections.flatten(1, 2), peaks.flatten(1)
            points_in_views = detections
        return PerceptionOutput(
            features=features,
            keypoints=keypoints,
            confidence=confidence,
            visuals=PerceptionVisuals(
                points=points_in_views.detach(),
                detections=detections.detach(),
                heatmaps=visual_maps,
            ),
        )


__all__ = [
    "Hourglass",
    "Residual",
    "StackedHourglass",
    "StackedHourglassNetwork",
    "default_depth",
    "masked_heatmap_loss",
]
