"""Self-training correspondence: object landmarks grown from generic keypoints by clustering.

This module owns the perception module :class:`SelfTrainingLandmarks`: its stages, its schedule
and its landmarks. Its pseudo-labels are in :mod:`~kp3d.perception.selftrain_labels` and
:mod:`~kp3d.perception.selftrain_clustering`, its losses in
:mod:`~kp3d.perception.selftrain_losses` and its networks in
:mod:`~kp3d.perception.selftrain_network`.

Mallis, Sanchez, Bell and Tzimiropoulos, "Unsupervised Learning of Object Landmarks via
Self-Training Correspondence", NeurIPS 2020, and "From Keypoints to Object Landmarks via
Self-Training Correspondence", TPAMI 2023 (METHODS.md §2, "Unsupervised landmark learners"; the
authors' code: ``dimitrismallis/KeypointsToLandmarks``). A network with a shared backbone, a
*detector* head (a one-channel confidence map) and a dense *descriptor* head is trained on its
own pseudo-labels, which improve as it does:

* **Warm-up** (stage 0): the pseudo-labels are *generic* keypoints, corners (kornia's
  Shi-Tomasi ``gftt_response`` or Harris) or SIFT's difference-of-Gaussians blobs, detected on
  every image (:func:`~kp3d.perception.selftrain_labels.generic_keypoints`). Each training sample
  is an image and a random thin-plate-spline warp of it (:mod:`kp3d.warps`), whose keypoints
  correspond by construction.
* **Correspondence rounds** (stage 1): the descriptors of the points the detector finds (NMS) on
  many images are clustered with K-means under the rule that *a cluster takes at most one point
  per image, the one nearest its centroid*
  (:func:`~kp3d.perception.selftrain_clustering.constrained_kmeans`): first into ``K`` clusters,
  which keeps at most ``K`` points per image, then the kept points into ``M ≫ K`` clusters, whose
  ids are the pseudo-labels: two points of two images correspond when they share a cluster. A
  training sample is a warp of an image paired with another warp of the same image
  or, half the time, of another image.
* **Landmarks** (stage 2): the final clustering into ``K`` clusters labels each image with at most
  one point per landmark; a ``K``-channel landmark head on the same backbone is trained on them.
  This head is what :meth:`SelfTrainingLandmarks.forward` reports.

The losses (:mod:`~kp3d.perception.selftrain_losses`): in stages 0 and 1 the detector regresses
Gaussians at the labelled points and the descriptors are contrastive (pairs that correspond pulled
together, negatives within one image pushed beyond a margin); in stage 2 each landmark channel
regresses a Gaussian at its label.

How the stages run inside ``kp3d pretrain`` (which only calls
:meth:`~SelfTrainingLandmarks.training_losses` with one Adam optimizer): the module keeps its
stage state and a step counter in buffers (so checkpoints resume mid-schedule) and follows the
schedule by itself. Each call of ``training_losses`` counts one step and stores the batch's views
in a *reservoir* (the latest ``reservoir_size`` views); a clustering runs when the schedule says
(:meth:`~SelfTrainingLandmarks.recluster`, on the reservoir): after ``warmup_steps`` steps, then
every ``round_steps`` steps for ``rounds`` rounds, and a last time to enter stage 2. A clustering
also freezes a copy of the network (the *teacher*), so that the pseudo-labels of any image are
those of the network at the last clustering, as in the reference, which labels the whole dataset
at the start of each round and keeps the labels fixed through it; labelling on the fly needs no
per-frame index in the batches. :meth:`~SelfTrainingLandmarks.advance_stage` and
:meth:`~SelfTrainingLandmarks.recluster` drive the stages by hand instead.

Per-view landmarks: the ``C`` cameras of a sample are folded into the batch (shared weights); each
view gets ``K`` landmarks in full-image pixels (``keypoint_frame`` is ``"image"``, camera-major)
with a confidence (the peak of the channel).

Differences from the reference, for 64 px views on a CPU: the generic keypoints come from kornia
(the reference uses a pretrained SuperPoint, which cannot be downloaded here); a small U-Net
backbone instead of the hourglass (FAN); descriptors of 32 dimensions instead of 256; the K-means
of a stage runs on the reservoir of recent views rather than on every image of the dataset; no
horizontal flips (robot scenes are not left-right symmetric); one learning rate for all stages
(the reference lowers the backbone's tenfold in stage 2: the optimizer belongs to the trainer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kp3d.batch import FrameBatch
from kp3d.peaks import decode_peaks, local_maxima, strongest_peaks
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    check_non_negative,
    check_positive,
    register_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.selftrain_clustering import (
    assign_to_centroids,  # re-export, one release
    cluster_labels,
    cluster_twice,
    constrained_kmeans,  # re-export, one release
    nearest_per_cluster,  # re-export, one release
)
from kp3d.perception.selftrain_labels import GenericDetector, generic_keypoints, warp_labels
from kp3d.perception.selftrain_losses import (
    contrastive_descriptor_loss,
    landmark_loss,
    target_heatmaps,
    within_image_negatives,
)
from kp3d.perception.selftrain_network import (
    CorrespondenceNetwork,
    FrozenCopy,
    LandmarkBackbone,  # re-export, one release
    conv_head,
    peak_values,
    sample_descriptors,
)
from kp3d.spatial import EPS, heatmap_to_image, image_to_heatmap

STAGE_NAMES = ("warmup", "correspondence", "landmarks")
"""The stages, by their number in :attr:`SelfTrainingLandmarks.stage`."""


@register_perception("selftrain")
class SelfTrainingLandmarks(Perception):
    """Self-training correspondence (Mallis et al. 2020/2021): ``K`` landmarks per view.

    See the module docstring for the stages and how they run. Architecture (``f`` =
    ``base_filters``): :class:`LandmarkBackbone` → ``(2f, H/2, W/2)`` (64 px: a 32 x 32 grid of
    2 px cells), heads ``conv 3x3 + ReLU + conv 1x1``: detector (1 channel), descriptor
    (``descriptor_dim``, unit length) and landmarks (``K`` channels). ``H`` and ``W`` must be
    multiples of 8.

    Stage state (buffers, saved in checkpoints): ``stage`` (0 warm-up, 1 correspondence rounds,
    2 landmarks; :data:`STAGE_NAMES`), ``steps`` (calls of :meth:`training_losses`),
    ``rounds_done``, the centroids of the last clustering (``landmark_centroids (K, D)``,
    ``cluster_centroids (M, D)`` of which the first ``cluster_count`` are used) and the
    ``teacher`` (a :class:`FrozenCopy` of the :class:`CorrespondenceNetwork` at that clustering).
    The reservoir of views is not saved: after a resume it refills from the next batches.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        num_keypoints: ``K`` landmarks per view.
        num_clusters: ``M ≫ K``, clusters of the correspondence rounds (reduced, with a warning,
            if fewer points were kept).
        descriptor_dim: ``D``.
        base_filters: ``f``.
        generic_detector: the warm-up keypoints, ``"gftt"``, ``"harris"`` or ``"sift"``
            (:func:`generic_keypoints`).
        max_points: most points per view (generic keypoints, and detections after NMS).
        detection_threshold: smallest detector response of a detection (the map regresses
            Gaussians of peak 1).
        nms_window: NMS window of the detector, in cells.
        heatmap_std: std of the target Gaussians, in cells.
        margin: of the contrastive loss on unit descriptors (the reference's 0.8).
        negative_distance: a random negative lies at least this far from its anchor, as a
            fraction of the grid's side (the reference's 5.7 of 64 cells).
        random_negatives: random negatives per labelled point.
        detector_weight: weight of each view's detector MSE.
        descriptor_weight: weight of the descriptor loss (the reference's 10).
        landmark_weight: weight of the stage-2 landmark MSE.
        warp_strength: strength of the random warps (:func:`kp3d.warps.random_tps`).
        warmup_steps: steps of stage 0.
        round_steps: steps of each correspondence round.
        rounds: correspondence rounds before the final clustering enters stage 2.
        reservoir_size: views kept for the clusterings.
        kmeans_iterations: Lloyd iterations of each K-means.
    """

    keypoint_frame = "image"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 8,
        num_clusters: int = 64,
        descriptor_dim: int = 32,
        base_filters: int = 8,
        generic_detector: GenericDetector = "gftt",
        max_points: int = 24,
        detection_threshold: float = 0.15,
        nms_window: int = 3,
        heatmap_std: float = 1.0,
        margin: float = 0.8,
        negative_distance: float = 0.09,
        random_negatives: int = 4,
        detector_weight: float = 1.0,
        descriptor_weight: float = 10.0,
        landmark_weight: float = 1.0,
        warp_strength: float = 1.0,
        warmup_steps: int = 500,
        round_steps: int = 250,
        rounds: int = 4,
        reservoir_size: int = 1024,
        kmeans_iterations: int = 30,
    ) -> None:
        super().__init__(num_cameras, image_size)
        for name, value, least in (
            ("num_keypoints", num_keypoints, 1),
            ("descriptor_dim", descriptor_dim, 2),
            ("base_filters", base_filters, 1),
            ("max_points", max_points, 1),
            ("random_negatives", random_negatives, 0),
            ("warmup_steps", warmup_steps, 0),
            ("round_steps", round_steps, 1),
            ("rounds", rounds, 0),
            ("kmeans_iterations", kmeans_iterations, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}; got {value!r}")
        if not isinstance(num_clusters, int) or num_clusters <= num_keypoints:
            raise ValueError(
                f"num_clusters (M) must be an int larger than num_keypoints (K = "
                f"{num_keypoints}); got {num_clusters!r}"
            )
        if not isinstance(reservoir_size, int) or reservoir_size < 2:
            raise ValueError(f"reservoir_size must be an int >= 2; got {reservoir_size!r}")
        if generic_detector not in ("gftt", "harris", "sift"):
            raise ValueError(
                f"generic_detector must be 'gftt', 'harris' or 'sift'; got {generic_detector!r}"
            )
        if not isinstance(nms_window, int) or nms_window < 1 or nms_window % 2 == 0:
            raise ValueError(f"nms_window must be an odd positive int; got {nms_window!r}")
        check_positive(heatmap_std=heatmap_std, margin=margin, negative_distance=negative_distance)
        check_non_negative(
            detector_weight=detector_weight,
            descriptor_weight=descriptor_weight,
            landmark_weight=landmark_weight,
            warp_strength=warp_strength,
        )
        if any(side % 8 for side in self.image_size):
            raise ValueError(
                f"SelfTrainingLandmarks needs image sides that are multiples of 8; got "
                f"{self.image_size}"
            )
        self.num_keypoints = num_keypoints
        self.num_clusters = num_clusters
        self.generic_detector: GenericDetector = generic_detector
        self.max_points = max_points
        self.detection_threshold = float(detection_threshold)
        self.nms_window = nms_window
        self.heatmap_std = float(heatmap_std)
        self.margin = float(margin)
        self.negative_distance = float(negative_distance)
        self.random_negatives = random_negatives
        self.weights = {
            "detector": float(detector_weight),
            "descriptor": float(descriptor_weight),
            "landmarks": float(landmark_weight),
        }
        self.warp_strength = float(warp_strength)
        self.warmup_steps = warmup_steps
        self.round_steps = round_steps
        self.rounds = rounds
        self.reservoir_size = reservoir_size
        self.kmeans_iterations = kmeans_iterations
        self.heatmap_size = (self.image_size[0] // 2, self.image_size[1] // 2)

        self.network = CorrespondenceNetwork(base_filters, descriptor_dim)
        self.landmark_head = conv_head(2 * base_filters, base_filters, num_keypoints)
        self.teacher = FrozenCopy(self.network)
        self.register_buffer("stage", torch.tensor(0))
        self.register_buffer("steps", torch.tensor(0))
        self.register_buffer("rounds_done", torch.tensor(0))
        self.register_buffer("landmark_centroids", torch.zeros(num_keypoints, descriptor_dim))
        self.register_buffer("cluster_centroids", torch.zeros(num_clusters, descriptor_dim))
        self.register_buffer("cluster_count", torch.tensor(0))
        self.register_buffer(
            "reservoir",
            torch.zeros(reservoir_size, 3, *self.image_size, dtype=torch.uint8),
            persistent=False,
        )
        self.reservoir_count = 0
        self.reservoir_next = 0

    @property
    def features_dim(self) -> int:
        """``3 C K``: ``(u, v, confidence)`` per camera and landmark."""
        return 3 * self.num_cameras * self.num_keypoints

    @property
    def stage_name(self) -> str:
        """``"warmup"``, ``"correspondence"`` or ``"landmarks"``."""
        return STAGE_NAMES[int(self.stage)]

    # -- inference ---------------------------------------------------------------------------------

    def landmark_maps(self, views: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` → ``(N, K, S_h, S_w)`` landmark heatmaps (regressing peak-1
        Gaussians)."""
        return self.landmark_head(self.network.backbone(views))

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`: the ``K`` landmarks of the landmark head
        (meaningful once stage 2 has trained it), each the peak of its channel refined by a
        Gaussian fit (:func:`kp3d.peaks.decode_peaks`), with the peak value as its confidence.
        ``losses`` are the current stage's (``detector`` and ``descriptor``, or ``landmarks``),
        without following the schedule (:meth:`training_losses` does). The matrices are
        validated but not used."""
        self.check_inputs(images, intrinsics, extrinsics)
        batch, count = images.shape[:2]
        maps = self.landmark_maps(images.flatten(0, 1))
        with torch.no_grad():
            cells, _ = decode_peaks(maps.detach())
        pixels = heatmap_to_image(cells, self.heatmap_size, self.image_size)
        pixels = pixels.reshape(batch, count, self.num_keypoints, 2)
        coordinates = normalized_coordinates(pixels, self.image_size)
        # The map's value at the refined peak (bilinear): through it the policy's gradients
        # reach the landmark head and the backbone.
        confidence = peak_values(maps, cells).reshape(batch, count, self.num_keypoints)
        features = torch.cat([coordinates, confidence[..., None]], dim=-1).flatten(1)
        losses = self.stage_losses(images.flatten(0, 1)) if compute_losses else {}
        # Videos draw distributions: the positive part of each map, normalised (uniform if none).
        shown = maps.detach().clamp(min=0) + EPS
        shown = shown / shown.sum(dim=(-2, -1), keepdim=True)
        return PerceptionOutput(
            features=features,
            keypoints=pixels.flatten(1, 2),
            confidence=confidence.flatten(1),
            losses=losses,
            visuals=PerceptionVisuals(
                points=pixels,
                detections=pixels,
                heatmaps=shown.reshape(batch, count, *shown.shape[1:]),
            ),
        )

    # -- pseudo-labels -----------------------------------------------------------------------------

    def detect(
        self, detections: torch.Tensor, descriptors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points of a detector map (NMS, threshold, strongest ``max_points``) and their
        descriptors.

        Args:
            detections: ``(N, 1, S_h, S_w)``.
            descriptors: ``(N, D, S_h, S_w)``.

        Returns:
            ``cells (N, P, 2)`` cell centres on the grid, ``descriptors (N, P, D)`` and
            ``valid (N, P)`` bool.
        """
        maps = detections[:, 0]
        peaks = local_maxima(maps, self.detection_threshold, self.nms_window)
        cells, valid = strongest_peaks(maps, self.max_points, peaks)
        return cells, sample_descriptors(descriptors, cells), valid

    @torch.no_grad()
    def pseudo_labels(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's labels of views for the current stage.

        Stage 0: the generic keypoints, each its own id (0..P-1). Stage 1: the teacher's
        detections kept by the ``K`` clusters, labelled by their ``M``-cluster. Stage 2: the
        teacher's detections labelled by their ``K``-cluster (the landmark). Both under the
        one-point-per-cluster-per-image rule.

        Args:
            views: ``(N, 3, H, W)``.

        Returns:
            ``cells (N, P, 2)`` on the grid and ``ids (N, P)`` long, -1 for no label.
        """
        if int(self.stage) == 0:
            pixels, valid = generic_keypoints(views, self.generic_detector, self.max_points)
            cells = image_to_heatmap(pixels, self.heatmap_size, self.image_size)
            ids = torch.arange(cells.shape[1], device=views.device).expand(len(views), -1)
            return cells, torch.where(valid, ids, -1)
        _, detections, field = self.teacher.run(self.network, views)
        cells, descriptors, valid = self.detect(detections, field)
        fine = self.cluster_centroids[: int(self.cluster_count)] if int(self.stage) == 1 else None
        return cells, cluster_labels(descriptors, valid, self.landmark_centroids, fine)

    def _warp(
        self,
        views: torch.Tensor,
        cells: torch.Tensor,
        ids: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`~kp3d.perception.selftrain_labels.warp_labels` with this module's sizes."""
        return warp_labels(
            views, cells, ids, self.image_size, self.heatmap_size, self.warp_strength, generator
        )

    # -- losses ------------------------------------------------------------------------------------

    def stage_losses(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """The current stage's weighted losses on views ``(N, 3, H, W)`` (pairs built from the
        views themselves: warps, and other views of the batch)."""
        cells, ids = self.pseudo_labels(views)
        # Eval mode draws the same warps every time (a deterministic forward).
        generator = None if self.training else torch.Generator().manual_seed(0)
        if int(self.stage) == 2:
            return self.landmark_losses(*self._warp(views, cells, ids, generator))
        first, first_cells, first_ids = self._warp(views, cells, ids, generator)
        partners = torch.arange(len(views), device=views.device)
        if int(self.stage) == 1 and len(views) > 1:
            # Half of the pairs: another image (the batch rolled by one), else the same one.
            other = (torch.rand(len(views), generator=generator) < 0.5).to(views.device)
            partners = torch.where(other, partners.roll(1), partners)
        second, second_cells, second_ids = self._warp(
            views[partners], cells[partners], ids[partners], generator
        )
        return self.correspondence_losses(
            (first, first_cells, first_ids), (second, second_cells, second_ids), generator
        )

    def correspondence_losses(
        self,
        first: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        second: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Detector and descriptor losses of stages 0 and 1 on pairs of views.

        Args:
            first: ``views (N, 3, H, W)``, labelled ``cells (N, P, 2)`` and ``ids (N, P)``
                (-1: none) of the first view of each pair.
            second: the same for the second views; points correspond where ids are equal.
            generator: random source of the random negatives (CPU; ``None``: torch's global).

        Returns:
            Weighted ``detector`` (MSE of both views' maps to Gaussians at their points) and
            ``descriptor`` (:func:`contrastive_descriptor_loss`) terms.
        """
        losses: dict[str, torch.Tensor] = {}
        outputs = []
        detector_loss = first[0].new_zeros(())
        for views, cells, ids in (first, second):
            _, detections, field = self.network(views)
            target = target_heatmaps(cells, ids >= 0, self.heatmap_std, self.heatmap_size)
            detector_loss = detector_loss + F.mse_loss(detections, target)
            outputs.append((field, cells, ids))
        if self.weights["detector"] > 0:
            losses["detector"] = self.weights["detector"] * detector_loss
        if self.weights["descriptor"] > 0:
            descriptors = [sample_descriptors(field, cells) for field, cells, _ in outputs]
            first_ids, second_ids = outputs[0][2], outputs[1][2]
            positives = (first_ids[:, :, None] == second_ids[:, None]) & (
                first_ids[:, :, None] >= 0
            )
            negatives = [
                within_image_negatives(
                    field,
                    cells,
                    ids,
                    points,
                    self.heatmap_size,
                    self.negative_distance,
                    self.random_negatives,
                    generator,
                )
                for (field, cells, ids), points in zip(outputs, descriptors, strict=True)
            ]
            losses["descriptor"] = self.weights["descriptor"] * contrastive_descriptor_loss(
                descriptors[0], descriptors[1], positives, negatives, self.margin
            )
        return losses

    def landmark_losses(
        self, views: torch.Tensor, cells: torch.Tensor, ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Stage 2: MSE of each landmark channel to a Gaussian at its label, on the channels that
        have one (:func:`~kp3d.perception.selftrain_losses.landmark_loss`; :meth:`stage_losses`
        passes randomly warped views and labels, the reference's augmentation).

        Args:
            views: ``(N, 3, H, W)``.
            cells: ``(N, P, 2)`` labelled points on the grid.
            ids: ``(N, P)`` their landmark (``K``-cluster), -1 for none.

        Returns:
            ``{"landmarks": weighted loss}``.
        """
        loss = landmark_loss(self.landmark_maps(views), cells, ids, self.heatmap_std)
        return {"landmarks": self.weights["landmarks"] * loss}

    # -- the schedule ------------------------------------------------------------------------------

    def remember(self, views: torch.Tensor) -> None:
        """Put views ``(N, 3, H, W)`` in ``[0, 1]`` into the reservoir (the oldest go first)."""
        stored = (views.detach() * 255.0).round().clamp(0, 255).to(torch.uint8)
        stored = stored[-self.reservoir_size :]
        positions = (self.reservoir_next + torch.arange(len(stored))) % self.reservoir_size
        self.reservoir[positions.to(self.reservoir.device)] = stored.to(self.reservoir.device)
        self.reservoir_next = int(positions[-1] + 1) % self.reservoir_size
        self.reservoir_count = min(self.reservoir_count + len(stored), self.reservoir_size)

    @torch.no_grad()
    def recluster(
        self, views: torch.Tensor | None = None, batch_size: int = 256
    ) -> dict[str, float]:
        """Cluster the descriptors of the points detected on views; snapshot the teacher.

        Runs the network (eval mode) on the views, detects points (NMS, threshold), clusters
        their descriptors into ``K`` (each image keeps at most one point per cluster) and the kept
        ones into ``M`` (:func:`~kp3d.perception.selftrain_clustering.cluster_twice`), and stores
        the centroids and a copy of the network as the teacher of the next pseudo-labels. Does
        not change the stage.

        Args:
            views: ``(N, 3, H, W)`` in ``[0, 1]``; ``None``: the reservoir.
            batch_size: views per forward pass.

        Returns:
            Statistics: ``points_per_view`` detected and ``kept_per_view`` by the ``K``
            clusters, and the number of ``clusters`` ``M`` used.

        Raises:
            RuntimeError: if fewer than ``K`` points were detected in all (lower
                ``detection_threshold``, train the warm-up longer or give more views).
        """
        if views is None:
            views = self.reservoir[: self.reservoir_count].float() / 255.0
        if len(views) == 0:
            raise RuntimeError("recluster: no views (the reservoir is empty)")
        device = self.landmark_centroids.device
        was_training = self.training
        self.eval()
        descriptors, groups = [], []
        for start in range(0, len(views), batch_size):
            chunk = views[start : start + batch_size].to(device)
            _, detections, field = self.network(chunk)
            _, points, valid = self.detect(detections, field)
            index = torch.arange(start, start + len(chunk), device=device)
            groups.append(index[:, None].expand_as(valid)[valid])
            descriptors.append(points[valid])
        self.train(was_training)
        features, groups = torch.cat(descriptors), torch.cat(groups)
        if len(features) < self.num_keypoints:
            raise RuntimeError(
                f"recluster: only {len(features)} points detected on {len(views)} views, fewer "
                f"than the {self.num_keypoints} landmark clusters; lower detection_threshold "
                f"({self.detection_threshold}), train the warm-up longer or give more views"
            )
        seed = int(torch.randint(0, 2**31 - 1, ()))
        centroids, fine, kept = cluster_twice(
            features, groups, self.num_keypoints, self.num_clusters, self.kmeans_iterations, seed
        )
        count = len(fine)
        self.landmark_centroids.copy_(centroids)
        self.cluster_centroids.zero_()
        self.cluster_centroids[:count] = fine
        self.cluster_count.fill_(count)
        self.teacher.copy_from(self.network)
        return {
            "points_per_view": len(features) / len(views),
            "kept_per_view": float(kept.sum()) / len(views),
            "clusters": float(count),
        }

    def advance_stage(self, views: torch.Tensor | None = None) -> dict[str, float]:
        """Cluster (:meth:`recluster`) and move to the next stage: warm-up → correspondence
        rounds → landmarks.

        Raises:
            RuntimeError: in stage 2, the last.
        """
        if int(self.stage) >= 2:
            raise RuntimeError("advance_stage: already in the last stage ('landmarks')")
        statistics = self.recluster(views)
        self.stage += 1
        return statistics

    def follow_schedule(self) -> None:
        """Run the clustering the schedule calls for at the current step, if any (module
        docstring): at ``warmup_steps + r · round_steps`` for ``r = 0 .. rounds - 1`` a
        correspondence round starts (stage 1), at ``r = rounds`` stage 2."""
        if int(self.stage) >= 2:
            return
        due = self.warmup_steps + int(self.rounds_done) * self.round_steps
        if int(self.steps) < due:
            return
        if int(self.rounds_done) < self.rounds:
            self.recluster()
            self.stage.fill_(1)
            self.rounds_done += 1
        else:
            self.recluster()
            self.stage.fill_(2)

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """One step of the schedule: remember the batch's views, run a clustering if one is due,
        count the step, and return the current stage's losses on the views."""
        self.check_inputs(batch.images, batch.intrinsics, batch.extrinsics)
        views = batch.images.flatten(0, 1)
        self.remember(views)
        self.follow_schedule()
        self.steps += 1
        return self.stage_losses(views)


__all__ = [
    "STAGE_NAMES",
    "CorrespondenceNetwork",
    "FrozenCopy",
    "LandmarkBackbone",
    "SelfTrainingLandmarks",
    "assign_to_centroids",
    "constrained_kmeans",
    "contrastive_descriptor_loss",
    "generic_keypoints",
    "nearest_per_cluster",
    "sample_descriptors",
    "target_heatmaps",
]
