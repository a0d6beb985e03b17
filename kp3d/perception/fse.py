"""Factorized spatial embeddings: landmarks learned from equivariance to random deformations.

Thewlis, Bilen and Vedaldi, "Unsupervised learning of object landmarks by factorized spatial
embeddings", ICCV 2017 (METHODS.md §2, "Unsupervised landmark learners"). A detector ``Φ`` maps
an image to ``K`` heatmaps; each is a spatial softmax ``p(u|k)`` over the grid, and landmark
``k`` is its expected position ``Φ_k(x) = Σ_u u p(u|k)``. Nothing but two constraints shapes it:

* **equivariance** (the paper's alignment loss): on a deformed image the landmarks move with the
  deformation, ``Φ(x∘g) = g(Φ(x))``. As in the paper, every training image ``x`` gives two
  deformed images ``x₁ = g₁∘x`` and ``x₂ = g₂∘x₁`` (random similarity + thin-plate spline,
  :mod:`kp3d.warps`; the same direction convention as :meth:`~kp3d.warps.TPSWarp.points`), and
  ``L_align = (1/K) Σ_k ||Φ_k(x₂) - g₂(Φ_k(x₁))||²``, averaged over the batch, with positions
  in normalised image coordinates (``[-1, 1]`` across the image). Terms whose target
  ``g₂(Φ_k(x₁))`` leaves the image are left out: the detector cannot follow a landmark there.
* **diversity**, so that the ``K`` maps do not collapse onto one point:
  ``L_div = Σ_u (Σ_k p(u|k) - max_k p(u|k))``, zero when no two maps share a cell and ``K - 1``
  when all maps are equal; averaged over the images of both deformations.

The total auxiliary loss is ``equivariance_weight · L_align + diversity_weight · L_div``.

Every view is processed alone (the ``C`` views of a sample are folded into the batch, one
detector shared by all cameras): ``keypoint_frame = "image"``, the keypoints are ``C·K``
full-image pixels, camera-major. The policy features are the keypoints in normalised image
coordinates (:func:`~kp3d.perception.coordinates.normalized_coordinates`): ``2 C K`` values.

The losses come from :meth:`FactorizedSpatialEmbeddings.forward` (with ``compute_losses=True``),
so the method trains the same way jointly with RL and offline (``kp3d pretrain``, through the
default :meth:`~kp3d.perception.Perception.training_losses`). In eval mode the deformations are
drawn from a fixed seed, so that ``forward`` is deterministic.

Architecture (``f`` = ``base_filters``; sized for the envs' 64 px views, the paper's networks
are larger for 100 px faces): convs ``5x5 → f``, ``3x3/2 → 2f``, ``3x3 → 2f``, ``3x3 → 4f``,
``3x3 → 4f`` (ReLU; the stride-2 layers as many as ``heatmap_stride`` asks for), then a 1x1 conv
to ``K`` heatmap logits: a 32 x 32 grid of 2 px cells at 64 px with ``heatmap_stride=2``, with a
receptive field of 19 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    check_non_negative,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.equivariance import (
    WarpedPair,
    equivariance_loss,
    inside_image,
    warp_generator,
)
from kp3d.perception.image_keypoints import image_keypoint_output
from kp3d.perception.layers import ConvLayer, ConvStack, initialise_convs
from kp3d.perception.scene import (
    EmptyScene,
    add_foreground_prior,
    foreground_coverage,
    foreground_magnitude,
)
from kp3d.spatial import heatmap_to_image, soft_argmax, spatial_softmax


def diversity_loss(heatmaps: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """Thewlis et al.'s diversity loss of each image: ``Σ_u (Σ_k p(u|k) - max_k p(u|k))``.

    Args:
        heatmaps: ``(*, K, S_h, S_w)`` maps ``p(u|k)``, each summing to 1 over its cells.
        pool: cells ``u`` are blocks of ``pool x pool`` heatmap cells (the maps summed over
            each block; a partial block at the edge counts as one): two maps must then be
            a block apart, not merely in different cells, to cost nothing. 1 for the paper.

    Returns:
        ``(*)`` values in ``[0, K - 1]``: 0 iff no cell holds mass of two maps, ``K - 1`` when
        every map is the same.
    """
    if heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must have shape (*, K, S_h, S_w); got {tuple(heatmaps.shape)}")
    check_positive_ints(pool=pool)
    if pool > 1:
        leading = heatmaps.shape[:-2]
        blocks = F.avg_pool2d(heatmaps.flatten(0, -3), pool, ceil_mode=True, divisor_override=1)
        heatmaps = blocks.unflatten(0, leading)
    overlap = heatmaps.sum(dim=-3) - heatmaps.max(dim=-3).values
    return overlap.sum(dim=(-2, -1))


@register_perception("fse")
class FactorizedSpatialEmbeddings(EmptyScene, Perception):
    """Factorized spatial embeddings (Thewlis et al., ICCV 2017): ``K`` landmarks per view,
    learned from equivariance to random thin-plate-spline warps plus a diversity loss.

    See the module docstring for the method, the losses and the architecture.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view; both sides divisible by
            ``heatmap_stride``.
        num_keypoints: ``K`` landmarks per view.
        base_filters: ``f``, channels of the first conv layer.
        heatmap_stride: image pixels per heatmap cell: 1, 2 or 4.
        warp_strength: ``strength`` of both random warps (:func:`kp3d.warps.random_tps`).
        equivariance_weight: weight of ``L_align`` (in normalised coordinates, where 1 px of a
            64 px image is ``1/32``: the default makes a 1 px error cost ``0.1``).
        diversity_weight: weight of ``L_div``.
        detector_input: what the detector (and the warps) see: ``"image"`` the view in
            ``[-1, 1]`` (the paper), or ``"foreground"`` the view minus the empty scene
            (:meth:`set_background`, else the batch's median), zero wherever the view shows
            the empty scene: the analogue of the paper's crops around the object, for views
            that are mostly floor.
        init: ``"he"`` (He-normal convs, :func:`~kp3d.perception.layers.he_initialise`) or
            ``"default"`` (PyTorch's; flat heatmaps at the start).
        foreground_prior: ``λ`` added as ``λ m`` to every heatmap logit, ``m ∈ [0, 1]`` the
            cell's largest difference from the empty scene (over its pixels and colours;
            warped with the view): landmarks are drawn to what differs from the empty scene,
            the bodies that move, which warp equivariance alone does not prefer over the
            static base. 0 for the paper.
        diversity_pool: ``pool`` of :func:`diversity_loss`: with 2 or more, two landmarks
            must be that many cells apart to cost nothing, so that they spread over the
            moving bodies instead of lining up a cell apart on one of them. 1 for the paper.
        coverage_weight: weight of :func:`~kp3d.perception.scene.foreground_coverage` on the
            landmarks of the undeformed views: the foreground-weighted squared distance of
            every pixel to its nearest landmark, so that an object far from every landmark
            (Push's pusher) pulls the nearest one to it. 0 for the paper.

    A loss term appears in ``PerceptionOutput.losses`` (already weighted) iff its weight is
    positive: ``equivariance``, ``diversity``, ``coverage``.
    """

    keypoint_frame = "image"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        num_keypoints: int = 10,
        base_filters: int = 16,
        heatmap_stride: int = 2,
        warp_strength: float = 1.0,
        equivariance_weight: float = 100.0,
        diversity_weight: float = 1.0,
        detector_input: str = "image",
        init: str = "default",
        foreground_prior: float = 0.0,
        diversity_pool: int = 1,
        coverage_weight: float = 0.0,
    ) -> None:
        super().__init__(num_cameras, image_size)
        if detector_input not in ("image", "foreground"):
            raise ValueError(
                f"detector_input must be 'image' or 'foreground'; got {detector_input!r}"
            )
        self.detector_input = detector_input
        check_positive_ints(num_keypoints=num_keypoints, base_filters=base_filters)
        if heatmap_stride not in (1, 2, 4):
            raise ValueError(f"heatmap_stride must be 1, 2 or 4; got {heatmap_stride!r}")
        if any(side % heatmap_stride for side in self.image_size):
            raise ValueError(
                f"image sides {self.image_size} must be divisible by heatmap_stride="
                f"{heatmap_stride}, so that the heatmap cells tile the image exactly"
            )
        check_non_negative(
            warp_strength=warp_strength,
            equivariance_weight=equivariance_weight,
            diversity_weight=diversity_weight,
            foreground_prior=foreground_prior,
            coverage_weight=coverage_weight,
        )
        check_positive_ints(diversity_pool=diversity_pool)
        self.coverage_weight = float(coverage_weight)
        self.foreground_prior = float(foreground_prior)
        self.diversity_pool = diversity_pool
        self.num_keypoints = num_keypoints
        self.warp_strength = float(warp_strength)
        self.loss_weights = {
            "equivariance": float(equivariance_weight),
            "diversity": float(diversity_weight),
        }
        self.heatmap_size = (
            self.image_size[0] // heatmap_stride,
            self.image_size[1] // heatmap_stride,
        )

        strided = ConvLayer(3, 2, 1)
        plain = ConvLayer(3, 1, 1)
        layers = [
            ConvLayer(5, 1, 2),
            strided if heatmap_stride >= 2 else plain,
            plain,
            strided if heatmap_stride == 4 else plain,
            plain,
        ]
        f = base_filters
        self.encoder = ConvStack(3, [f, 2 * f, 2 * f, 4 * f, 4 * f], layers)
        self.head = nn.Conv2d(4 * f, num_keypoints, 1)
        initialise_convs(self, init)
        self.init_background()

    @property
    def features_dim(self) -> int:
        """``2 C K``: normalised ``(u, v)`` per camera and landmark."""
        return 2 * self.num_cameras * self.num_keypoints

    def detector_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """``(B C, 3, H, W)`` what the detector reads of ``images (B, C, 3, H, W)`` in
        ``[0, 1]`` (``detector_input``), cameras folded into the batch; with
        ``foreground_prior`` a fourth channel, the largest colour difference from the empty
        scene, so that warps move it with the view."""
        needs_scene = self.detector_input == "foreground" or self.foreground_prior > 0
        background = self.scene_background(images).expand_as(images) if needs_scene else None
        inputs = images * 2.0 - 1.0 if self.detector_input == "image" else images - background
        inputs = inputs.flatten(0, 1)
        if self.foreground_prior > 0:
            inputs = torch.cat([inputs, self.foreground(images, background)], dim=1)
        return inputs

    def foreground(
        self, images: torch.Tensor, background: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B C, 1, H, W)`` :func:`foreground_magnitude` of ``images (B, C, 3, H, W)``
        against their empty scene (``background``, looked up if ``None``), cameras folded into
        the batch."""
        if background is None:
            background = self.scene_background(images)
        background = background.expand_as(images)
        return foreground_magnitude(images.flatten(0, 1), background.flatten(0, 1))

    def detect(self, inputs: torch.Tensor) -> torch.Tensor:
        """Heatmap logits of single views.

        Args:
            inputs: ``(N, 3, H, W)`` (``(N, 4, H, W)`` with ``foreground_prior``) from
                :meth:`detector_inputs`.

        Returns:
            ``(N, K, S_h, S_w)``.
        """
        logits = self.head(self.encoder(inputs[:, :3]))
        if self.foreground_prior > 0:
            logits = add_foreground_prior(logits, inputs[:, 3:], self.foreground_prior)
        return logits

    def locate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmaps and landmarks of single views.

        Args:
            images: ``(N, 3, H, W)`` (or 4 channels) from :meth:`detector_inputs`.

        Returns:
            ``heatmaps (N, K, S_h, S_w)`` (each sums to 1) and ``pixels (N, K, 2)``, the
            expected positions in full-image pixels.
        """
        heatmaps = spatial_softmax(self.detect(images))
        pixels = heatmap_to_image(soft_argmax(heatmaps), self.heatmap_size, self.image_size)
        return heatmaps, pixels

    def auxiliary_losses(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted losses on warped pairs of ``views (N, 3, H, W)`` (detector inputs,
        module docstring)."""
        pair = WarpedPair.sample(views, self.warp_strength, warp_generator(self.training))
        heatmaps, pixels = self.locate(torch.cat([pair.first, pair.second]))
        first, second = pixels.chunk(2)
        expected = pair.between.points(first)
        losses: dict[str, torch.Tensor] = {}
        if self.loss_weights["equivariance"] > 0:
            losses["equivariance"] = self.loss_weights["equivariance"] * equivariance_loss(
                normalized_coordinates(second, self.image_size),
                normalized_coordinates(expected, self.image_size),
                inside_image(expected, self.image_size),
            )
        if self.loss_weights["diversity"] > 0:
            losses["diversity"] = (
                self.loss_weights["diversity"]
                * diversity_loss(heatmaps, self.diversity_pool).mean()
            )
        return losses

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; ``keypoints (B, C·K, 2)`` are full-image
        pixels, camera-major; ``confidence`` is ``None``. The matrices are validated but not
        used. The landmarks (and features) are those of the undeformed views; the losses are
        computed on two deformations of every view."""
        self.check_inputs(images, intrinsics, extrinsics)
        views = self.detector_inputs(images)
        heatmaps, pixels = self.locate(views)
        losses = self.auxiliary_losses(views) if compute_losses else {}
        if compute_losses and self.coverage_weight > 0:
            # The prior's channel, or the same map computed here.
            magnitude = views[:, 3:] if self.foreground_prior > 0 else self.foreground(images)
            coverage = foreground_coverage(pixels, magnitude).mean()
            losses["coverage"] = self.coverage_weight * coverage
        return image_keypoint_output(pixels, heatmaps, self.num_cameras, self.image_size, losses)


__all__ = ["FactorizedSpatialEmbeddings", "diversity_loss"]
