"""D2-Net: one dense feature map that describes and detects, trained on simulator correspondences.

This module owns the perception module :class:`D2Net`: its configuration, its training step on
pairs of views and its output to an agent. The network and pyramid are in
:mod:`~kp3d.perception.d2net_network`, the loss in :mod:`~kp3d.perception.d2net_loss`, the
cross-view matching in :mod:`~kp3d.perception.d2net_matching` and its evaluation in
:mod:`~kp3d.perception.d2net_evaluation`.

Dusmanu, Rocco, Pajdla, Pollefeys, Sivic, Torii and Sattler, "D2-Net: A Trainable CNN for Joint
Description and Detection of Local Features", CVPR 2019 (METHODS.md §2). A CNN (a VGG16 trunk,
:class:`~kp3d.perception.d2net_network.VGGTrunk`) maps an image to a feature map ``F`` whose
normalised cells are the dense descriptors and whose channels are the detection maps: a cell is
detected where its strongest channel is a local maximum
(:mod:`~kp3d.perception.d2net_network`).

**Training** (:meth:`D2Net.training_losses`): D2-Net's score-weighted margin ranking loss
(:func:`~kp3d.perception.d2net_loss.d2net_loss`) on the exact correspondences of the simulator's
depth, segmentation and body poses (:mod:`kp3d.correspondence`), between every ordered pair of two
cameras at one time step and every (camera, camera) pair across two time steps of an episode
(:attr:`~kp3d.batch.FrameBatch.pair`), whose points move with their bodies.

**As the perception of an agent** (:meth:`D2Net.forward`): per view the top ``max_detections``
pyramid detections; for every pair of cameras the mutual nearest neighbours of their descriptors;
the ``num_points`` matches of highest descriptor similarity triangulated into world points
(:func:`~kp3d.perception.d2net_matching.triangulate_matches`). See :class:`D2Net` for the exact
output. The pyramid costs about 5x a single-scale pass (the scale-2 level alone 4x);
``scales=(1.0,)`` is the cheap setting for rollouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kp3d.batch import FrameBatch
from kp3d.correspondence import DEPTH_TOLERANCE, find_correspondences
from kp3d.geometry import project
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    register_perception,
)
from kp3d.perception.coordinates import cell_grid
from kp3d.perception.d2net_evaluation import evaluate_matching  # re-export, one release
from kp3d.perception.d2net_loss import d2net_loss
from kp3d.perception.d2net_matching import (
    camera_pairs,  # re-export, one release
    mutual_nearest_neighbours,  # re-export, one release
    triangulate_matches,
    triangulate_pairs,  # re-export, one release
)
from kp3d.perception.d2net_network import (
    IMAGENET_MEAN,  # re-export, one release
    IMAGENET_STD,  # re-export, one release
    VGG16_BLOCKS,  # re-export, one release
    VGG16_WIDTHS,  # re-export, one release
    Detections,
    VGGTrunk,
    dense_descriptors,  # re-export, one release
    detect,
    hard_detections,  # re-export, one release
    level_size,  # re-export, one release
    soft_detection_scores,  # re-export, one release
)
from kp3d.spatial import heatmap_to_image


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


@register_perception("d2net")
class D2Net(Perception):
    """D2-Net (Dusmanu et al., CVPR 2019): describe-and-detect features, matched across views and
    triangulated into world points (see the module docstring for the method).

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)``, multiples of ``stride``.
        widths: channels of the four VGG16 blocks of the trunk (:class:`VGGTrunk`); the last is
            the descriptor size ``n``. Default: a quarter of VGG16's, 64 at the end.
        stride: image pixels per feature cell (1, 2 or 4; D2-Net: 4 on 256 px crops).
        batch_norm: BatchNorm after every conv of the trunk (needed to train from random
            weights; see :class:`VGGTrunk`).
        scales: image pyramid of inference (``forward``, :func:`detect`); ``(1.0,)`` for one
            scale.
        max_detections: detections kept per view (the highest scores) in ``forward``.
        num_points: ``K``, triangulated matches returned by ``forward``.
        margin: ``M`` of the ranking loss (D2-Net: 1).
        safe_radius: cells (Chebyshev distance) around a correspondence that give no negatives
            (D2-Net: 4 cells of its 1/4-resolution maps; 2 of 1/2-resolution maps covers 4 px).
        min_correspondences: view pairs with fewer correspondences are left out of the loss.
        depth_tolerance: occlusion test of the correspondences (m, :mod:`kp3d.correspondence`).
        ignore_bodies: body ids whose correspondences are left out of the loss, e.g. ``(0,)``
            for the static world (floor, walls). D2-Net learns from MegaDepth, whose depth comes
            from multi-view stereo and so exists only where surfaces could be matched; the
            simulator's depth covers everything, including the kp3d floors, which are plain
            (Reach, Push, MultiReach) or a periodic checkerboard (Ant) and cannot be told apart
            by a local descriptor. Kept in, they are ~95% of the correspondences and stall the
            loss at the margin (measured on Ant: positive and hardest-negative distances
            ~0.002 on the floor, loss 1.0007 after 180 steps); see BENCHMARKS.md.
        trunk_weights: optional path of a weights file to initialise the trunk with
            (:meth:`VGGTrunk.load_weights`: this trunk's ``state_dict`` or VGG16's, e.g. ImageNet
            weights that the user downloaded elsewhere, with ``widths=VGG16_WIDTHS``). It is read
            only here: it is one of :attr:`~kp3d.perception.Perception.initialisation_files`, so
            a checkpoint stores it as ``None`` and loading one (its weights are in the state
            dict) never needs the file again. ``None`` (default): random initialisation; nothing
            is downloaded.

    Outputs of ``forward`` (``keypoint_frame = "world"``): ``keypoints (B, K, 3)`` world points
    triangulated from cross-view matches, ``confidence (B, K)``, ``features (B, 4 K)`` =
    ``[keypoints.flatten(1), confidence]``. The matches are the mutual nearest neighbours (cosine
    similarity) between the detections of every pair of cameras ``a < b``; they are ordered by
    descending similarity (ties by camera pair, then by the detection's rank in camera ``a``), and
    ``confidence`` is that similarity clipped at 0. Fewer than ``K`` matches (e.g. one camera) are
    padded with points at the origin and confidence 0. ``losses`` are always empty: the module is
    trained offline (:meth:`training_losses`, ``kp3d pretrain``) and used frozen or fine-tuned by
    the agent's loss. Visuals: ``points (B, C, K, 2)``, the triangulated points projected into
    every view, and ``detections (B, C, K, 2)``, the two matched detections each point was
    triangulated from, in their two views (NaN elsewhere and for padding, which videos do not
    draw); all pyramid detections of the views come from :meth:`detect`.
    """

    keypoint_frame = "world"
    # Trained on depth, segmentation and body poses, not on the keypoint labels that
    # `requires_labels` is about (FrameBatch.has_labels); `training_losses` checks what it needs.
    requires_labels = False
    uses_pairs = True
    initialisation_files = ("trunk_weights",)

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        widths: Sequence[int] = (16, 32, 64, 64),
        stride: int = 2,
        batch_norm: bool = True,
        scales: Sequence[float] = (0.5, 1.0, 2.0),
        max_detections: int = 64,
        num_points: int = 16,
        margin: float = 1.0,
        safe_radius: int = 2,
        min_correspondences: int = 16,
        depth_tolerance: float = DEPTH_TOLERANCE,
        ignore_bodies: Sequence[int] = (),
        trunk_weights: str | Path | None = None,
    ) -> None:
        super().__init__(num_cameras, image_size)
        self.trunk = VGGTrunk(widths, stride, batch_norm)
        if any(n % self.trunk.stride for n in self.image_size):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of stride {self.trunk.stride}"
            )
        scales = tuple(float(s) for s in scales)
        if not scales or not all(s > 0 for s in scales):
            raise ValueError(f"scales must be positive factors; got {scales!r}")
        if not margin > 0:
            raise ValueError(f"margin must be positive; got {margin!r}")
        if not depth_tolerance > 0:
            raise ValueError(f"depth_tolerance must be positive; got {depth_tolerance!r}")
        if not isinstance(safe_radius, (int, np.integer)) or safe_radius < 0:
            raise ValueError(f"safe_radius must be a non-negative int; got {safe_radius!r}")
        self.scales = scales
        self.max_detections = _positive_int(max_detections, "max_detections")
        self.num_points = _positive_int(num_points, "num_points")
        self.min_correspondences = _positive_int(min_correspondences, "min_correspondences")
        self.margin = float(margin)
        self.safe_radius = int(safe_radius)
        self.depth_tolerance = float(depth_tolerance)
        self.ignore_bodies = tuple(int(b) for b in ignore_bodies)
        if trunk_weights is not None:
            self.trunk.load_weights(trunk_weights)

    @property
    def features_dim(self) -> int:
        """``4 K``: the ``K`` points' world coordinates, then their confidences."""
        return 4 * self.num_points

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the single-scale feature map (training)."""
        return self.image_size[0] // self.trunk.stride, self.image_size[1] // self.trunk.stride

    def detect(
        self,
        images: torch.Tensor,
        scales: Sequence[float] | None = None,
        max_detections: int | None = None,
    ) -> Detections:
        """Pyramid detections of views (:func:`detect`).

        Args:
            images: ``(*, 3, H, W)`` in ``[0, 1]``.
            scales: pyramid levels (default: the module's ``scales``).
            max_detections: detections per view (default: the module's).

        Returns:
            :class:`Detections` with the leading dimensions of ``images``.
        """
        leading = images.shape[:-3]
        found = detect(
            self.trunk,
            images.reshape(-1, *images.shape[-3:]),
            self.scales if scales is None else scales,
            self.max_detections if max_detections is None else max_detections,
        )
        return found.reshape(*leading)

    def match_views(
        self, detections: Detections, intrinsics: torch.Tensor, extrinsics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``K`` best cross-view matches of a batch, triangulated (the order of ``forward``;
        :func:`~kp3d.perception.d2net_matching.triangulate_matches`).

        Args:
            detections: of shape ``(B, C, M)``.
            intrinsics: ``(B, C, 3, 3)``.
            extrinsics: ``(B, C, 4, 4)``.

        Returns:
            ``points (B, K, 3)`` (0 for padding), ``confidence (B, K)`` (0 for padding) and
            ``pixels (B, C, K, 2)``, each point's two matched detections in its two cameras (NaN
            in the other cameras and for padding).
        """
        return triangulate_matches(detections, intrinsics, extrinsics, self.num_points)

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception` and the class docstring for the outputs;
        ``losses`` is always empty."""
        intrinsics, extrinsics = self.check_inputs(images, intrinsics, extrinsics)
        detections = self.detect(images)  # (B, C, M)
        points, confidence, matched = self.match_views(detections, intrinsics, extrinsics)
        pixels, depth = project(points[:, None], intrinsics, extrinsics)  # (B, C, K, ·)
        shown = (confidence > 0)[:, None] & (depth > 0)
        return PerceptionOutput(
            features=torch.cat([points.flatten(1), confidence], dim=1),
            keypoints=points,
            confidence=confidence,
            visuals=PerceptionVisuals(
                points=torch.where(shown[..., None], pixels, float("nan")).detach(),
                detections=matched.detach(),
            ),
        )

    # -- training ------------------------------------------------------------------------------

    def source_pixels(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(h·w, 2)`` full-image pixels of the centres of the training grid's cells,
        row-major: the source points of the loss."""
        grid = self.grid_size
        centres = cell_grid(*grid, device=device).reshape(-1, 2)
        return heatmap_to_image(centres, grid, self.image_size)

    def view_pairs(self) -> list[tuple[int, int, int, int]]:
        """The ``(frame, camera, frame, camera)`` pairs of views that the loss compares: every
        ordered pair of two cameras of the first frame (frame 0), then every (camera, camera)
        pair from the first frame to the second (frame 1, :attr:`FrameBatch.pair`)."""
        cameras = range(self.num_cameras)
        same_time = [(0, a, 0, b) for a in cameras for b in cameras if a != b]
        across_time = [(0, a, 1, b) for a in cameras for b in cameras]
        return same_time + across_time

    def correspondences(
        self, batch: FrameBatch
    ) -> tuple[list[tuple[int, int, int, int]], torch.Tensor, torch.Tensor]:
        """Where the training grid's cell centres land across the pairs of :meth:`view_pairs`.

        Args:
            batch: with depth, segmentation and body poses, and a ``pair`` that has them too.

        Returns:
            The view pairs, ``target (B, V, h·w, 2)`` pixels and ``valid (B, V, h·w)`` for the
            ``V`` view pairs.
        """
        frames = (batch, batch.pair)
        sources = self.source_pixels(batch.images.device).to(batch.images.dtype)
        pairs = self.view_pairs()
        targets, valids = [], []
        for frame_a, camera_a, frame_b, camera_b in pairs:
            a, b = frames[frame_a], frames[frame_b]
            moving = frame_a != frame_b
            found = find_correspondences(
                sources.expand(batch.batch_size, -1, -1),
                a.depth[:, camera_a],
                a.segmentation[:, camera_a],
                a.intrinsics[:, camera_a],
                a.extrinsics[:, camera_a],
                b.depth[:, camera_b],
                b.segmentation[:, camera_b],
                b.intrinsics[:, camera_b],
                b.extrinsics[:, camera_b],
                a.body_poses if moving else None,
                b.body_poses if moving else None,
                depth_tolerance=self.depth_tolerance,
            )
            ignored = torch.isin(found.bodies, found.bodies.new_tensor(self.ignore_bodies))
            targets.append(found.target)
            valids.append(found.valid & ~ignored)
        return pairs, torch.stack(targets, dim=1), torch.stack(valids, dim=1)

    def check_training_batch(self, batch: FrameBatch) -> None:
        """Raise a ``ValueError`` naming what ``batch`` lacks for :meth:`training_losses`."""
        if batch.pair is None:
            raise ValueError(
                "D2Net is trained on pairs of frames of one episode (correspondences across "
                "time); this batch has no FrameBatch.pair (open the dataset with pairs=m)"
            )
        wanted = ("depth", "segmentation", "body_poses")
        for name, frame in (("batch", batch), ("batch.pair", batch.pair)):
            missing = [field for field in wanted if getattr(frame, field) is None]
            if missing:
                raise ValueError(
                    f"D2Net is trained on simulator correspondences, which need the depth, "
                    f"segmentation and body poses of both frames; {name} lacks {missing} (open "
                    "the dataset with load=('depth', 'segmentation', 'body_poses'))"
                )
        if batch.num_cameras != self.num_cameras:
            raise ValueError(
                f"this D2Net has {self.num_cameras} cameras; the batch has {batch.num_cameras}"
            )

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """D2-Net's loss on simulator correspondences (:func:`d2net_loss`) over the view pairs of
        :meth:`view_pairs`: ``{"ranking": loss}``.

        Raises:
            ValueError: if the batch has no pair, or either frame lacks depth, segmentation or
                body poses.
        """
        self.check_training_batch(batch)
        pairs, target, valid = self.correspondences(batch)
        size, count = batch.batch_size, self.num_cameras
        images = torch.stack([batch.images, batch.pair.images], dim=1)  # (B, 2, C, 3, H, W)
        features = self.trunk(images.flatten(0, 2))  # (B·2·C, n, h, w), sample-major
        # Index of view (sample s, frame f, camera c) among the feature maps.
        offsets = torch.arange(size, device=features.device)[:, None] * (2 * count)
        first = torch.tensor([f * count + c for f, c, _, _ in pairs], device=features.device)
        second = torch.tensor([f * count + c for _, _, f, c in pairs], device=features.device)
        view_pairs = torch.stack([offsets + first, offsets + second], dim=-1)  # (B, V, 2)
        loss, _ = d2net_loss(
            features,
            view_pairs.flatten(0, 1),
            target.flatten(0, 1),
            valid.flatten(0, 1),
            self.image_size,
            self.margin,
            self.safe_radius,
            self.min_correspondences,
        )
        return {"ranking": loss}


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_BLOCKS",
    "VGG16_WIDTHS",
    "D2Net",
    "Detections",
    "VGGTrunk",
    "camera_pairs",
    "d2net_loss",
    "dense_descriptors",
    "detect",
    "evaluate_matching",
    "hard_detections",
    "level_size",
    "mutual_nearest_neighbours",
    "soft_detection_scores",
    "triangulate_pairs",
]
