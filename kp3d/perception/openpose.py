"""OpenPose: bottom-up detection of several instances of one object kind with part affinity fields.

This module owns the network (backbone, PAF and confidence stages) and the perception module
:class:`OpenPose`; its training targets are in :mod:`~kp3d.perception.openpose_fields`, the
assembly of instances in :mod:`~kp3d.perception.openpose_assembly` and its metric in
:mod:`~kp3d.perception.openpose_evaluation`.

Cao, Hidalgo, Simon, Wei and Sheikh, "OpenPose: Realtime Multi-Person 2D Pose Estimation using Part
Affinity Fields", TPAMI 2019 (CVPR 2017) (METHODS.md §2, "Supervised 2D detectors").

**Parts and instances.** A scene holds ``M`` instances of one kind (e.g. MultiReach's three arms),
each with the same ``P`` *parts* (base, elbow, fingertip, target): the ``K = M·P`` keypoints of the
env are given by their instance ids (``keypoint_instances``, the env's ``keypoint_instances`` / the
dataset's ``instances``), and the part of a keypoint is its rank among its instance's keypoints
(the env lists every instance's parts in the same order). Instances of one part share one
confidence channel. ``limbs`` are pairs of parts that form a spanning tree over the parts; each
has a part affinity field (PAF) of two channels ``(x, y)``. The tree may hold limbs that the env's
skeleton lacks, as OpenPose adds connections beyond the kinematic tree: MultiReach's config
(``configs/pretrain/multireach_openpose.yaml``) adds base → target, so that every arm's target is
assembled with its arm. Without ``limbs`` the tree is the chain through the parts in their order
(:func:`~kp3d.perception.openpose_fields.chain_limbs`).

**Network.** Every view is processed on its own (views folded into the batch). Backbone ``F``:
3x3 convs with ReLU, ``map_stride`` of them strided (the paper's VGG-19 front at stride 8 has no
pretrained weights here and its maps would be too coarse for these small scenes). Then ``T_p``
PAF stages ``L¹ = φ¹(F)``, ``Lᵗ = φᵗ(F, Lᵗ⁻¹)`` and ``T_c`` confidence stages
``S¹ = ρ¹(F, L^{T_p})``, ``Sᵗ = ρᵗ(F, L^{T_p}, Sᵗ⁻¹)`` (the TPAMI architecture, PAFs first), each
a stack of 3x3 convs and two 1x1 convs on the concatenated inputs.

**Training** (:meth:`OpenPose.training_losses`): the masked L2 of every stage's maps to the
ground-truth confidence maps and PAFs (:mod:`~kp3d.perception.openpose_fields`).

**Inference**: peaks of the last confidence maps grouped into instances by PAF line integrals and
a bipartite matching per limb (:func:`~kp3d.perception.openpose_assembly.parse_instances`).

**As an agent's perception** (``keypoint_frame = "image"``): the instances of every view fill
``M`` fixed *slots*, one per instance id of the env, and the features are ``[u, v, score]`` per
camera and keypoint in the env's keypoint order (slot ``m``, part ``p`` for the keypoint of
instance ``m`` and part ``p``), ``(u, v)`` in ``[-1, 1]``
(:func:`~kp3d.perception.coordinates.normalized_coordinates`) and the part's peak value as score:
``3 C K`` values, as the hourglass's. Instances are unlabelled, so slots are assigned by
*position* (:func:`~kp3d.perception.openpose_assembly.order_instances`): training records, per
camera, the mean pixel of every instance's root part (part 0; the buffer ``slot_anchors``), and the
``M`` best-scoring instances found in a view take the slots by a Hungarian matching of their root
(or first found part) to these anchors. Where instances keep their places on average (MultiReach's
arms stand on fixed bases) every instance keeps its env's slot, so the features, the detections
and PCK follow the env's keypoint order; a module without anchors (never trained) orders instances
left to right. Empty slots and missing parts are zeros with score 0. Parsing is not
differentiable: the module is trained offline on labels (``kp3d pretrain``) and used frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.layers import conv_relu
from kp3d.perception.openpose_assembly import (
    MATCHERS,
    Instances,
    Matcher,
    find_peaks,  # re-export, one release
    limb_scores,  # re-export, one release
    match_limbs,  # re-export, one release
    order_instances,
    parse_instances,
)
from kp3d.perception.openpose_evaluation import AssemblyResult, evaluate_assembly  # re-export
from kp3d.perception.openpose_fields import (
    chain_limbs,
    check_limbs,
    confidence_targets,
    loss_masks,
    masked_l2,
    paf_targets,
    part_layout,
)
from kp3d.spatial import image_to_heatmap

MULTI_REACH_INSTANCES: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2)
"""``kp3d/MultiReach-v0``'s keypoint instances: three arms of base, elbow, fingertip, target.

The default of ``keypoint_instances``, kept because it fixes the module's shapes: every method is
built by name with no hyperparameters (the registry's smoke tests, e.g. an agent's extractor over
:func:`~kp3d.perception.available_perceptions`), and a checkpoint stores only the keyword
arguments it was made with, so one saved without ``keypoint_instances`` must load with the same
``M`` and ``P``. ``kp3d pretrain`` always passes the dataset's instances."""

MULTI_REACH_LIMBS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (0, 3))
"""MultiReach's skeleton (base-elbow, elbow-fingertip) plus base → target, a spanning tree (as in
``configs/pretrain/multireach_openpose.yaml``). No longer a default: ``limbs`` defaults to the
generic :func:`~kp3d.perception.openpose_fields.chain_limbs`."""


# -- the network -----------------------------------------------------------------------------------


class Stage(nn.Sequential):
    """One OpenPose stage: ``layers`` 3x3 convs and a 1x1 conv with ReLU, then a 1x1 conv to the
    stage's maps (no activation).

    Args:
        in_channels: channels of the concatenated inputs.
        channels: width of the stage.
        out_channels: ``2 L`` (PAF stage) or ``P`` (confidence stage).
        layers: number of 3x3 convs.
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, layers: int) -> None:
        modules: list[nn.Module] = []
        for index in range(layers):
            modules += conv_relu(in_channels if index == 0 else channels, channels)
        modules += [*conv_relu(channels, channels, 1), nn.Conv2d(channels, out_channels, 1)]
        super().__init__(*modules)


class OpenPoseNetwork(nn.Module):
    """Backbone, ``T_p`` PAF stages and ``T_c`` confidence stages (module docstring).

    Args:
        num_parts: ``P`` confidence maps.
        num_limbs: ``L`` (``2 L`` PAF channels).
        channels: backbone and stage width.
        map_stride: image pixels per map cell (1, 2 or 4).
        paf_stages: ``T_p``.
        confidence_stages: ``T_c``.
        stage_layers: 3x3 convs per stage.
    """

    def __init__(
        self,
        num_parts: int,
        num_limbs: int,
        channels: int,
        map_stride: int,
        paf_stages: int,
        confidence_stages: int,
        stage_layers: int,
    ) -> None:
        super().__init__()
        half = channels // 2
        strided = {1: 0, 2: 1, 4: 2}[map_stride]
        layers = conv_relu(3, half)
        inputs = half
        for _ in range(strided):
            layers += conv_relu(inputs, channels, stride=2)
            inputs = channels
        layers += [*conv_relu(inputs, channels), *conv_relu(channels, channels)]
        self.backbone = nn.Sequential(*layers)
        paf, parts = 2 * num_limbs, num_parts
        self.paf_stages = nn.ModuleList(
            Stage(channels + (paf if t else 0), channels, paf, stage_layers)
            for t in range(paf_stages)
        )
        self.confidence_stages = nn.ModuleList(
            Stage(channels + paf + (parts if t else 0), channels, parts, stage_layers)
            for t in range(confidence_stages)
        )

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Maps of every stage.

        Args:
            images: ``(N, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``T_p`` PAFs ``(N, 2 L, S_h, S_w)`` and ``T_c`` confidence maps ``(N, P, S_h, S_w)``.
        """
        features = self.backbone(images * 2.0 - 1.0)
        pafs: list[torch.Tensor] = []
        for stage in self.paf_stages:
            pafs.append(stage(torch.cat([features, *pafs[-1:]], dim=1)))
        confidences: list[torch.Tensor] = []
        for stage in self.confidence_stages:
            confidences.append(stage(torch.cat([features, pafs[-1], *confidences[-1:]], dim=1)))
        return pafs, confidences


# -- the module ------------------------------------------------------------------------------------


@register_perception("openpose")
class OpenPose(Perception):
    """OpenPose (Cao et al., TPAMI 2019): bottom-up instances of one kind from part confidence
    maps and part affinity fields (module docstring).

    Map grid: ``S = image side / map_stride`` (32 x 32 cells of 2 px for 64 px views by default).

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)``, divisible by ``map_stride``.
        keypoint_instances: ``(K,)`` instance id of each of the env's keypoints (default:
            :data:`MULTI_REACH_INSTANCES`, see there why a default stays); every instance lists
            the same ``P`` parts in the same order. ``M`` (the number of ids) is the number of
            instance slots of the features.
        limbs: part pairs forming a spanning tree over the ``P`` parts; ``None`` (default): the
            chain through the parts in their order
            (:func:`~kp3d.perception.openpose_fields.chain_limbs`), which fits any layout but
            knows nothing of the object; pass the object's tree (``kp3d pretrain`` takes it from
            the config, e.g. MultiReach's :data:`MULTI_REACH_LIMBS`).
        channels: width of the backbone and stages.
        map_stride: image pixels per map cell: 1, 2 or 4.
        paf_stages: ``T_p`` (TPAMI: 5 at its scale).
        confidence_stages: ``T_c`` (TPAMI: 1).
        stage_layers: 3x3 convs per stage.
        sigma: ``sigma`` of the confidence maps, in cells.
        limb_width: ``sigma_l`` of the PAFs, in cells.
        matcher: ``"hungarian"`` or ``"greedy"`` for inference
            (:func:`~kp3d.perception.openpose_assembly.parse_instances`).
        peak_threshold: smallest confidence of a peak.
        paf_threshold: smallest PAF alignment of a line-integral sample that counts.
        samples: line-integral samples per candidate limb.
        min_parts: smallest number of parts of an instance.
    """

    keypoint_frame = "image"
    requires_labels = True

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        keypoint_instances: Sequence[int] = MULTI_REACH_INSTANCES,
        limbs: Sequence[Sequence[int]] | None = None,
        channels: int = 32,
        map_stride: int = 2,
        paf_stages: int = 2,
        confidence_stages: int = 1,
        stage_layers: int = 3,
        sigma: float = 1.5,
        limb_width: float = 1.0,
        matcher: Matcher = "hungarian",
        peak_threshold: float = 0.1,
        paf_threshold: float = 0.05,
        samples: int = 10,
        min_parts: int = 2,
    ) -> None:
        super().__init__(num_cameras, image_size)
        self.slots, self.parts, self.num_instances, self.num_parts = part_layout(keypoint_instances)
        # A default must stay, for the registry's construction by name with no hyperparameters;
        # the chain is the one tree that assumes nothing about a task's skeleton.
        self.limbs = check_limbs(
            chain_limbs(self.num_parts) if limbs is None else limbs, self.num_parts
        )
        if map_stride not in (1, 2, 4):
            raise ValueError(f"map_stride must be 1, 2 or 4; got {map_stride!r}")
        if any(side % map_stride for side in self.image_size):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by map_stride {map_stride}"
            )
        check_positive_ints(
            channels=channels,
            paf_stages=paf_stages,
            confidence_stages=confidence_stages,
            stage_layers=stage_layers,
            samples=samples,
        )
        if channels % 2:
            raise ValueError(f"channels must be even; got {channels}")
        if not (sigma > 0 and limb_width > 0):
            raise ValueError(f"sigma and limb_width must be positive; got {sigma}, {limb_width}")
        if matcher not in MATCHERS:
            raise ValueError(f"matcher must be one of {MATCHERS}; got {matcher!r}")
        self.num_keypoints = len(self.slots)
        self.map_size: tuple[int, int] = (
            self.image_size[0] // map_stride,
            self.image_size[1] // map_stride,
        )
        self.sigma = float(sigma)
        self.limb_width = float(limb_width)
        self.parser_options = {
            "matcher": matcher,
            "peak_threshold": float(peak_threshold),
            "paf_threshold": float(paf_threshold),
            "samples": samples,
            "min_parts": int(min_parts),
        }
        self.network = OpenPoseNetwork(
            self.num_parts,
            len(self.limbs),
            channels,
            map_stride,
            paf_stages,
            confidence_stages,
            stage_layers,
        )
        # Mean full-image pixel of each instance's root part per camera, over the labels seen in
        # training (NaN until then), and how many labels each mean holds.
        count = self.num_cameras
        self.register_buffer("slot_anchors", torch.full((count, self.num_instances, 2), torch.nan))
        self.register_buffer("anchor_counts", torch.zeros(count, self.num_instances))

    @property
    def features_dim(self) -> int:
        """``3 C K``: ``[u, v, score]`` per view and keypoint (``K = M P``)."""
        return 3 * self.num_cameras * self.num_keypoints

    @torch.no_grad()
    def update_anchors(self, pixels: torch.Tensor, visible: torch.Tensor) -> None:
        """Fold the visible root parts of a labelled batch into :attr:`slot_anchors`.

        Args:
            pixels: ``(B, C, K, 2)`` full-image pixels in the env's keypoint order.
            visible: ``(B, C, K)`` bool.
        """
        roots = self.instance_points(pixels)[..., 0, :]  # (B, C, M, 2)
        seen = self.instance_points(visible[..., None])[..., 0, 0].to(pixels.dtype)  # (B, C, M)
        counts = self.anchor_counts + seen.sum(0)
        sums = (roots * seen[..., None]).sum(0) + self.slot_anchors.nan_to_num(0.0) * (
            self.anchor_counts[..., None]
        )
        means = sums / counts.clamp(min=1.0)[..., None]
        self.slot_anchors.copy_(torch.where(counts[..., None] > 0, means, self.slot_anchors))
        self.anchor_counts.copy_(counts)

    def stage_maps(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """PAFs and confidence maps of every stage, each view processed on its own.

        Args:
            images: ``(B, C, 3, H, W)`` in ``[0, 1]``.

        Returns:
            ``T_p`` tensors ``(B, C, 2 L, S_h, S_w)`` and ``T_c`` tensors
            ``(B, C, P, S_h, S_w)``.
        """
        batch, count = images.shape[:2]
        pafs, confidences = self.network(images.flatten(0, 1))
        unfold = [m.reshape(batch, count, *m.shape[1:]) for m in (*pafs, *confidences)]
        return unfold[: len(pafs)], unfold[len(pafs) :]

    def instance_points(self, pixels: torch.Tensor) -> torch.Tensor:
        """Rearrange the env's keypoints by instance and part.

        Args:
            pixels: ``(*, K, D)`` in the env's keypoint order.

        Returns:
            ``(*, M, P, D)``.
        """
        if pixels.shape[-2] != self.num_keypoints:
            raise ValueError(
                f"this OpenPose reads {self.num_keypoints} keypoints ({self.num_instances} "
                f"instances of {self.num_parts} parts); got {pixels.shape[-2]}: pass the "
                "dataset's instances as keypoint_instances"
            )
        arranged = pixels.new_zeros(
            *pixels.shape[:-2], self.num_instances, self.num_parts, pixels.shape[-1]
        )
        slots = torch.as_tensor(self.slots, device=pixels.device)
        parts = torch.as_tensor(self.parts, device=pixels.device)
        arranged[..., slots, parts, :] = pixels
        return arranged

    def targets(
        self, pixels: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets and loss masks of a batch of views.

        Args:
            pixels: ``(N, K, 2)`` full-image pixels in the env's keypoint order.
            visible: ``(N, K)`` bool.

        Returns:
            ``confidence (N, P, S_h, S_w)``, ``paf (N, 2 L, S_h, S_w)`` and their masks.
        """
        cells = self.instance_points(image_to_heatmap(pixels, self.map_size, self.image_size))
        shown = self.instance_points(visible[..., None])[..., 0].bool()
        confidence = confidence_targets(cells, shown, self.sigma, self.map_size)
        paf = paf_targets(cells, shown, self.limbs, self.limb_width, self.map_size)
        masks = loss_masks(cells, shown, self.limbs, self.sigma, self.limb_width, self.map_size)
        return confidence, paf, *masks

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """Masked L2 at every stage: ``paf_<t>`` and ``confidence_<t>``.

        Raises:
            ValueError: if ``batch`` has no labels or not the ``K`` keypoints of
                ``keypoint_instances``.
        """
        if batch.keypoints_pixels is None or batch.keypoints_visible is None:
            raise ValueError(
                "OpenPose is trained on ground-truth keypoints; this batch has none "
                "(build the dataset with `kp3d dataset`, which stores them)"
            )
        self.check_inputs(batch.images, batch.intrinsics, batch.extrinsics)
        pixels = batch.keypoints_pixels.to(batch.images.dtype).flatten(0, 1)
        confidence, paf, confidence_mask, paf_mask = self.targets(
            pixels, batch.keypoints_visible.flatten(0, 1).bool()
        )
        self.update_anchors(batch.keypoints_pixels.to(batch.images.dtype), batch.keypoints_visible)
        pafs, confidences = self.stage_maps(batch.images)
        losses = {
            f"paf_{t}": masked_l2(maps.flatten(0, 1), paf, paf_mask) for t, maps in enumerate(pafs)
        }
        for t, maps in enumerate(confidences):
            losses[f"confidence_{t}"] = masked_l2(maps.flatten(0, 1), confidence, confidence_mask)
        return losses

    def parse(
        self, confidence: torch.Tensor, pafs: torch.Tensor, **options: object
    ) -> list[Instances]:
        """Instances of every view, in full-image pixels.

        Args:
            confidence: ``(N, P, S_h, S_w)`` maps.
            pafs: ``(N, 2 L, S_h, S_w)`` fields.
            **options: overrides of the module's parser options (e.g. ``matcher="greedy"``).

        Returns:
            ``N`` :class:`Instances`.
        """
        settings = {**self.parser_options, **options}
        # Map cells tile the image exactly: (u, v) scale by the stride (as rescale_pixels).
        scale = np.array(
            [self.image_size[1] / self.map_size[1], self.image_size[0] / self.map_size[0]]
        )
        views = []
        for view_confidence, view_pafs in zip(confidence, pafs, strict=True):
            found = parse_instances(view_confidence, view_pafs, self.limbs, **settings)
            views.append(Instances(found.points * scale, found.scores, found.score))
        return views

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`. ``keypoints (B, C·K, 2)``: full-image pixels
        of every view's instance slots in the env's keypoint order (camera-major; 0 where a part
        or an instance is missing), with ``confidence (B, C·K)`` the parts' peak values (0 where
        missing); ``visuals.detections`` holds them as ``(B, C, K, 2)``. ``losses`` is always
        empty (:meth:`training_losses` needs labels). Not differentiable (instance parsing)."""
        self.check_inputs(images, intrinsics, extrinsics)
        batch, count = images.shape[:2]
        pafs, confidences = self.stage_maps(images)
        views = self.parse(confidences[-1].flatten(0, 1), pafs[-1].flatten(0, 1))
        anchors = self.slot_anchors.detach().cpu().double().numpy()
        slots = [
            order_instances(
                view,
                self.num_instances,
                None if np.isnan(anchors[index % count]).any() else anchors[index % count],
            )
            for index, view in enumerate(views)
        ]
        shape = (batch, count, self.num_instances, self.num_parts)
        points = torch.as_tensor(np.stack([p for p, _ in slots]), dtype=images.dtype)
        scores = torch.as_tensor(np.stack([s for _, s in slots]), dtype=images.dtype)
        slot_index = torch.as_tensor(self.slots)
        part_index = torch.as_tensor(self.parts)
        # (B, C, M, P) slots → (B, C, K) in the env's keypoint order.
        points = points.reshape(*shape, 2)[:, :, slot_index, part_index].to(images.device)
        scores = scores.reshape(shape)[:, :, slot_index, part_index].to(images.device)
        coordinates = torch.where(
            scores[..., None] > 0,
            normalized_coordinates(points, self.image_size),
            torch.zeros_like(points),
        )
        features = torch.cat([coordinates, scores[..., None]], dim=-1).flatten(1)
        heatmaps = confidences[-1].detach().clamp(min=0.0)
        heatmaps = heatmaps / (heatmaps.sum(dim=(-2, -1), keepdim=True) + 1e-8)
        return PerceptionOutput(
            features=features,
            keypoints=points.flatten(1, 2),
            confidence=scores.flatten(1),
            visuals=PerceptionVisuals(points=points, detections=points, heatmaps=heatmaps),
        )


__all__ = [
    "MATCHERS",
    "MULTI_REACH_INSTANCES",
    "MULTI_REACH_LIMBS",
    "AssemblyResult",
    "Instances",
    "OpenPose",
    "OpenPoseNetwork",
    "Stage",
    "check_limbs",
    "confidence_targets",
    "evaluate_assembly",
    "find_peaks",
    "limb_scores",
    "loss_masks",
    "masked_l2",
    "match_limbs",
    "order_instances",
    "paf_targets",
    "parse_instances",
    "part_layout",
]
