"""Tests of the perception interface (:mod:`kp3d.perception.base`) and Keypoint3D.

A synthetic scene of three hand-built cameras (OpenCV convention of :mod:`kp3d.geometry`) and known
3D points checks the geometry of the pipeline exactly: ideal heatmaps at the projected pixels with
the true depths must give back the world points, whatever the crop. Coloured balls rendered by hand
check that unsupervised training learns.
"""

from __future__ import annotations

import doctest
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from perception_fixtures import object_error

from kp3d import geometry
from kp3d.perception import (
    Keypoint3D,
    Perception,
    PerceptionOutput,
    available_perceptions,
    images_from_observation,
    make_perception,
    register_perception,
)
from kp3d.perception import base as perception_base
from kp3d.perception.keypoint3d import (
    fuse_views,
    keypoint_attention,
    multiview_consistency_loss,
    separation_loss,
)
from kp3d.spatial import expected_value, heatmap_to_image, image_to_heatmap, soft_argmax

IMAGE = 64
DISTANCE = 1.5

# -- a synthetic scene -----------------------------------------------------------------------------


def look_at(eye: np.ndarray) -> np.ndarray:
    """World→camera transform of a camera at ``eye`` looking at the origin, +z up."""
    return geometry.look_at(eye, np.zeros(3))


def three_cameras(size: int = IMAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """``intrinsics (3, 3, 3)`` and ``extrinsics (3, 4, 4)`` (float64) of three cameras 120° apart
    around the origin, 35° above the ground, ``DISTANCE`` away."""
    eyes = [
        DISTANCE
        * np.array([math.cos(a) * math.cos(0.6), math.sin(a) * math.cos(0.6), math.sin(0.6)])
        for a in (0.3, 0.3 + 2.1, 0.3 + 4.2)
    ]
    focal = 70.0 * size / 64
    intrinsics = np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return (
        torch.tensor(intrinsics).expand(3, 3, 3).clone(),
        torch.tensor(np.stack([look_at(eye) for eye in eyes])),
    )


def ideal_heatmap_logits(
    pixels: torch.Tensor, heatmap_size: int, crop_size: int, origins: torch.Tensor, std: float = 1.0
) -> torch.Tensor:
    """Logits whose spatial softmax is a normalised Gaussian of ``std`` cells at ``pixels``
    (full-image pixels ``(*, 2)``; origins broadcastable). Its discrete mean is the centre to
    ~1e-8 cells when the centre is a few ``std`` inside the grid."""
    centres = image_to_heatmap(pixels, heatmap_size, crop_size, origins)
    cells = torch.arange(heatmap_size, dtype=pixels.dtype) + 0.5
    squared = ((cells - centres[..., 1:]) ** 2)[..., :, None] + ((cells - centres[..., :1]) ** 2)[
        ..., None, :
    ]
    return -squared / (2 * std**2)


def lift_ideal_heatmaps(
    points: torch.Tensor,
    intrinsics: torch.Tensor,
    extrinsics: torch.Tensor,
    origins: torch.Tensor,
    heatmap_size: int = 28,
    crop_size: int = 56,
) -> torch.Tensor:
    """Run the geometric half of Keypoint3D on ideal detections of world ``points (K, 3)``.

    Returns:
        ``(1, C, K, 3)`` per-view world estimates.
    """
    pixels, depth = geometry.project(points[None], intrinsics, extrinsics)  # (C, K, 2), (C, K)
    logits = ideal_heatmap_logits(pixels, heatmap_size, crop_size, origins[:, None])
    heatmaps = logits.flatten(-2).softmax(-1).reshape(logits.shape)
    depth_maps = depth[..., None, None].expand_as(heatmaps)
    detections = heatmap_to_image(soft_argmax(heatmaps), heatmap_size, crop_size, origins[:, None])
    lifted = geometry.unproject(
        detections, expected_value(heatmaps, depth_maps), intrinsics, extrinsics
    )
    return lifted[None]


@pytest.fixture
def scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``points (5, 3)`` within 12 cm of the origin and the three cameras."""
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(5, 3, generator=generator, dtype=torch.float64) - 0.5) * 0.24
    return (points, *three_cameras())


def test_cameras_look_at_the_origin() -> None:
    intrinsics, extrinsics = three_cameras()
    pixels, depth = geometry.project(
        torch.zeros(1, 1, 3, dtype=torch.float64), intrinsics, extrinsics
    )
    torch.testing.assert_close(pixels, torch.full((3, 1, 2), IMAGE / 2, dtype=torch.float64))
    torch.testing.assert_close(depth, torch.full((3, 1), DISTANCE, dtype=torch.float64))
    # World +z (up) appears above the origin: smaller v.
    up, _ = geometry.project(
        torch.tensor([[[0.0, 0.0, 0.1]]], dtype=torch.float64), intrinsics, extrinsics
    )
    assert (up[..., 1] < IMAGE / 2).all()


# -- geometry of the pipeline ----------------------------------------------------------------------


class TestGeometry:
    def test_ideal_heatmaps_and_true_depths_recover_world_points(self, scene) -> None:
        points, intrinsics, extrinsics = scene
        origins = torch.tensor([[4.0, 4.0], [0.0, 7.0], [8.0, 1.0]], dtype=torch.float64)
        per_view = lift_ideal_heatmaps(points, intrinsics, extrinsics, origins)
        attention = torch.rand(1, 3, 5, dtype=torch.float64)
        fused = fuse_views(per_view, attention)[0]
        # Relative to the scene's scale (the camera distance); ideal detections are exact up to
        # the discretisation of the Gaussian heatmaps (~1e-8 m here).
        relative_error = (fused - points).norm(dim=-1).max() / DISTANCE
        assert relative_error < 1e-6
        assert multiview_consistency_loss(per_view) < 1e-12

    def test_crop_offset_leaves_world_keypoints_unchanged(self, scene) -> None:
        points, intrinsics, extrinsics = scene
        centred = torch.full((3, 2), 4.0, dtype=torch.float64)
        shifted = torch.tensor([[0.0, 8.0], [8.0, 0.0], [3.0, 5.0]], dtype=torch.float64)
        torch.testing.assert_close(
            lift_ideal_heatmaps(points, intrinsics, extrinsics, centred),
            lift_ideal_heatmaps(points, intrinsics, extrinsics, shifted),
        )

    def test_forgetting_the_crop_offset_would_move_the_keypoints(self, scene) -> None:
        points, intrinsics, extrinsics = scene
        origins = torch.full((3, 2), 8.0, dtype=torch.float64)
        pixels, depth = geometry.project(points[None], intrinsics, extrinsics)
        wrong = geometry.unproject(pixels - origins[:, None], depth, intrinsics, extrinsics)
        assert (wrong - points).norm(dim=-1).min() > 0.1


class OracleKeypoint3D(Keypoint3D):
    """Keypoint3D whose detector is replaced by ideal heatmaps and depths of known world points
    (the crop origins are fixed), so that ``forward``'s own geometry can be checked exactly."""

    def __init__(
        self,
        points: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        origins: torch.Tensor,
    ) -> None:
        super().__init__(3, IMAGE, num_keypoints=len(points), crop_size=56)
        self.points, self.intrinsics, self.extrinsics = points, intrinsics, extrinsics
        self.origins = origins

    def crop_origins(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self.origins.expand(batch, 3, 2).to(dtype)

    def detect(
        self, crops: torch.Tensor, crop_origins: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, depth = geometry.project(self.points[None], self.intrinsics, self.extrinsics)
        logits = ideal_heatmap_logits(
            pixels, self.heatmap_size[0], self.crop_size[0], self.origins[:, None], std=0.8
        )
        batch = crops.shape[0]
        depth_maps = depth[..., None, None].expand_as(logits)
        return logits.expand(batch, *logits.shape), depth_maps.expand(batch, *logits.shape)


def test_forward_adds_the_crop_offset_before_unprojecting(scene) -> None:
    points, intrinsics, extrinsics = scene
    images = torch.rand(2, 3, 3, IMAGE, IMAGE, dtype=torch.float64)
    results = []
    for origins in ([[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]], [[0.0, 8.0], [8.0, 2.0], [5.0, 0.0]]):
        oracle = (
            OracleKeypoint3D(
                points, intrinsics, extrinsics, torch.tensor(origins, dtype=torch.float64)
            )
            .double()
            .eval()
        )
        output = oracle(images, intrinsics, extrinsics)
        torch.testing.assert_close(output.keypoints, points.expand(2, 5, 3), atol=1e-5, rtol=0)
        # The fused keypoints project back onto the detections in every view.
        torch.testing.assert_close(
            output.visuals.points, output.visuals.detections, atol=1e-3, rtol=0
        )
        results.append(output.keypoints)
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)


# -- losses and fusion -----------------------------------------------------------------------------


class TestLosses:
    def test_multiview_zero_for_consistent_views_and_single_view(self) -> None:
        points = torch.randn(2, 1, 4, 3).expand(2, 3, 4, 3)
        assert multiview_consistency_loss(points).item() == 0.0
        assert multiview_consistency_loss(torch.randn(2, 1, 4, 3)).item() == 0.0

    def test_multiview_averages_distinct_pairs_with_stopgrad(self) -> None:
        first = torch.randn(2, 4, 3, dtype=torch.float64)
        offset = torch.randn(2, 4, 3, dtype=torch.float64)
        points = torch.stack([first, first + offset], dim=1).requires_grad_()
        loss = multiview_consistency_loss(points)
        # Pairs (0, 1) and (1, 0) both cost ||offset||²; no self-pair dilutes the mean.
        torch.testing.assert_close(loss, offset.pow(2).sum(-1).mean())
        loss.backward()
        # d/dx_0 of ||x_0 - sg(x_1)||² only (the other pair's x_0 is a stopped target):
        # 2 (x_0 - x_1) / (number of pairs · B · K).
        torch.testing.assert_close(points.grad[:, 0], -2 * offset / (2 * 2 * 4))

    def test_separation(self) -> None:
        apart = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
        assert separation_loss(apart).item() == pytest.approx(1 / 1001)
        together = torch.zeros(1, 3, 3)
        assert separation_loss(together).item() == pytest.approx(1.0)
        assert separation_loss(torch.zeros(1, 1, 3)).item() == 0.0
        far = torch.tensor([[[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]])
        assert 0 < separation_loss(far).item() < 1e-4  # no self-pairs, which would add 1/3

    def test_separation_gradient_pushes_apart(self) -> None:
        points = torch.tensor([[[0.0, 0.0, 0.0], [0.01, 0.0, 0.0]]], requires_grad=True)
        separation_loss(points).backward()
        assert points.grad[0, 0, 0] > 0 and points.grad[0, 1, 0] < 0

    def test_attention_is_a_softmax_of_mean_logits(self) -> None:
        logits = torch.randn(2, 3, 4, 5, 5)
        attention = keypoint_attention(logits)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 3))
        torch.testing.assert_close(attention, logits.mean(dim=(-2, -1)).softmax(-1))

    def test_fusion_weights(self) -> None:
        points = torch.randn(1, 2, 3, 3)
        weights = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 3.0]]])
        fused = fuse_views(points, weights)
        torch.testing.assert_close(fused[0, 0], points[0, 0, 0])
        torch.testing.assert_close(fused[0, 1], points[0, 1, 1])
        torch.testing.assert_close(fused[0, 2], 0.25 * points[0, 0, 2] + 0.75 * points[0, 1, 2])


# -- the module ------------------------------------------------------------------------------------


def small_model(**kwargs) -> Keypoint3D:
    torch.manual_seed(0)
    options = {"num_keypoints": 4, "base_filters": 4, "mean_depth": DISTANCE, **kwargs}
    return make_perception("keypoint3d", num_cameras=3, image_size=IMAGE, **options)


def batch(size: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    intrinsics, extrinsics = three_cameras()
    return torch.rand(size, 3, 3, IMAGE, IMAGE), intrinsics.float(), extrinsics.float()


class TestKeypoint3D:
    def test_sizes_for_64_px(self) -> None:
        assert small_model().crop_size == (56, 56)
        assert small_model().heatmap_size == (14, 14)
        assert small_model(heatmap_stride=8).heatmap_size == (7, 7)
        reference = make_perception(
            "keypoint3d", num_cameras=3, image_size=128, heatmap_stride=8, crop_size=108
        )
        assert reference.heatmap_size == (13, 13)

    def test_output_contract(self) -> None:
        model = small_model().train()
        images, intrinsics, extrinsics = batch(5)
        output = model(images, intrinsics, extrinsics)
        assert isinstance(output, PerceptionOutput)
        assert output.features.shape == (5, model.features_dim) == (5, 16)
        assert output.keypoints.shape == (5, 4, 3)
        torch.testing.assert_close(output.confidence.sum(-1), torch.ones(5))
        torch.testing.assert_close(output.features.reshape(5, 4, 4)[..., :3], output.keypoints)
        assert set(output.losses) == {"reconstruction", "multiview", "separation"}
        assert all(term.ndim == 0 for term in output.losses.values())
        visuals = output.visuals
        assert visuals.points.shape == visuals.detections.shape == (5, 3, 4, 2)
        assert visuals.heatmaps.shape == (5, 3, 4, 14, 14)
        assert visuals.reconstructions.shape == (5, 3, 3, 56, 56)
        assert visuals.crop_size == (56, 56)
        origins = visuals.crop_origins
        assert origins.shape == (5, 3, 2) and origins.min() >= 0 and origins.max() <= 8
        assert not visuals.points.requires_grad and not visuals.reconstructions.requires_grad

    def test_eval_is_deterministic_and_centred(self) -> None:
        model = small_model().eval()
        images, intrinsics, extrinsics = batch()
        first, second = model(images, intrinsics, extrinsics), model(images, intrinsics, extrinsics)
        torch.testing.assert_close(first.features, second.features)
        assert (first.visuals.crop_origins == 4).all()

    def test_training_crops_at_random(self) -> None:
        model = small_model().train()
        images, intrinsics, extrinsics = batch(8)
        assert model(images, intrinsics, extrinsics).visuals.crop_origins.unique().numel() > 1

    def test_without_losses_skips_the_decoder(self) -> None:
        model = small_model().eval()
        images, intrinsics, extrinsics = batch()
        output = model(images, intrinsics, extrinsics, compute_losses=False)
        assert output.losses == {} and output.visuals.reconstructions is None
        assert output.total_loss().item() == 0.0
        torch.testing.assert_close(output.features, model(images, intrinsics, extrinsics).features)

    def test_weights_scale_and_select_the_terms(self) -> None:
        images, intrinsics, extrinsics = batch()
        base = small_model().eval()(images, intrinsics, extrinsics).losses
        doubled = (
            small_model(reconstruction_weight=10.0, multiview_weight=0.0, sparsity_weight=1.0)
            .eval()(images, intrinsics, extrinsics)
            .losses
        )
        assert set(doubled) == {"reconstruction", "separation", "sparsity"}
        torch.testing.assert_close(doubled["reconstruction"], 2 * base["reconstruction"])

    def test_gradients_reach_every_parameter(self) -> None:
        model = small_model(per_view_encoders=True, background=True).train()
        images, intrinsics, extrinsics = batch()
        model.set_background(torch.rand(3, 3, IMAGE, IMAGE))
        model(images, intrinsics, extrinsics).total_loss().backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            assert torch.isfinite(parameter.grad).all(), name

    def test_per_view_encoders_keep_cameras_apart(self) -> None:
        model = small_model(per_view_encoders=True).eval()
        images, intrinsics, extrinsics = batch()
        before = model(images, intrinsics, extrinsics).visuals.detections
        images[:, 1] = torch.rand_like(images[:, 1])
        after = model(images, intrinsics, extrinsics).visuals.detections
        torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
        assert not torch.allclose(after[:, 1], before[:, 1])

    def test_per_step_extrinsics_and_broadcast_matrices(self) -> None:
        model = small_model().eval()
        images, intrinsics, extrinsics = batch(2)
        shared = model(images, intrinsics, extrinsics).keypoints
        per_sample = model(
            images, intrinsics.expand(2, 3, 3, 3), extrinsics.expand(2, 3, 4, 4)
        ).keypoints
        torch.testing.assert_close(shared, per_sample)
        # Moving every camera by the same rigid motion moves the keypoints with it.
        motion = torch.eye(4)
        motion[:3, 3] = torch.tensor([0.3, -0.2, 0.1])
        moved = model(images, intrinsics, extrinsics @ torch.linalg.inv(motion)).keypoints
        torch.testing.assert_close(moved, shared + motion[:3, 3], atol=1e-5, rtol=0)

    def test_background_must_be_set(self) -> None:
        model = small_model(background=True).eval()
        images, intrinsics, extrinsics = batch()
        with pytest.raises(RuntimeError, match="set_background"):
            model(images, intrinsics, extrinsics)
        with pytest.raises(ValueError, match=r"\(3, 3, 64, 64\)"):
            model.set_background(torch.rand(3, 64, 64))
        with pytest.raises(ValueError, match="finite"):
            model.set_background(torch.full((3, 3, IMAGE, IMAGE), math.nan))
        model.set_background(images[0])
        assert "background" in model.state_dict()
        assert model(images, intrinsics, extrinsics).visuals.reconstructions is not None
        # Per-sample empty scenes (moving cameras) are taken instead, and checked.
        per_sample = model(images, intrinsics, extrinsics, backgrounds=images.flip(0))
        assert per_sample.visuals.reconstructions is not None
        with pytest.raises(ValueError, match="backgrounds must have shape"):
            model(images, intrinsics, extrinsics, backgrounds=images[:1])

    def test_background_is_known_after_loading(self) -> None:
        model = small_model()
        assert not model.has_background  # the foreground weights estimate it per batch
        model.set_background(torch.rand(3, 3, IMAGE, IMAGE))
        copy = small_model()
        copy.load_state_dict(model.state_dict())
        assert copy.has_background
        torch.testing.assert_close(copy.background, model.background)
        # A checkpoint from before the background was always stored loads with it unknown.
        old = {k: v for k, v in model.state_dict().items() if k != "background"}
        fresh = small_model()
        fresh.load_state_dict(old)
        assert not fresh.has_background

    def test_input_errors(self) -> None:
        model = small_model()
        images, intrinsics, extrinsics = batch()
        with pytest.raises(ValueError, match=r"\(B, 3, 3, 64, 64\); got \(2, 2, 3, 64, 64\)"):
            model(images[:, :2], intrinsics, extrinsics)
        with pytest.raises(TypeError, match="floating point"):
            model((images * 255).to(torch.uint8), intrinsics, extrinsics)
        with pytest.raises(ValueError, match=r"extrinsics must have shape \(2, 3, 4, 4\)"):
            model(images, intrinsics, extrinsics[:2])
        with pytest.raises(ValueError, match="heatmap_stride"):
            small_model(heatmap_stride=2)
        with pytest.raises(ValueError, match="crop_size"):
            small_model(crop_size=80)
        with pytest.raises(ValueError, match="mean_depth"):
            small_model(mean_depth=0.0)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda(self) -> None:
        model = small_model(background=True).cuda().train()
        images, intrinsics, extrinsics = batch()
        model.set_background(images[0].cuda())
        output = model(images.cuda(), intrinsics, extrinsics)  # CPU matrices are moved
        output.total_loss().backward()
        assert output.features.is_cuda and output.visuals.crop_origins.is_cuda


# -- learning --------------------------------------------------------------------------------------


def render_balls(
    centres: torch.Tensor,
    colours: torch.Tensor,
    radius: float,
    intrinsics: torch.Tensor,
    extrinsics: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Views ``(C, 3, size, size)`` of balls ``centres (N, 3)`` (discs of the projected radius,
    painted far to near) over a fixed shaded background."""
    pixels, depth = geometry.project(centres[None], intrinsics, extrinsics)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images = torch.full((len(intrinsics), 3, size, size), 0.35, dtype=torch.float64)
    images[:, 2] += 0.2 * v / size
    for camera in range(len(intrinsics)):
        for ball in torch.argsort(depth[camera], descending=True):
            disc = intrinsics[camera, 0, 0] * radius / depth[camera, ball]
            distance = (u - pixels[camera, ball, 0]) ** 2 + (v - pixels[camera, ball, 1]) ** 2
            alpha = (disc + 0.5 - distance.sqrt()).clamp(0, 1)
            images[camera] = images[camera] * (1 - alpha) + alpha * colours[ball, :, None, None]
    return images.float()


def ball_scenes(count: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``images (count, 3, 3, size, size)`` of a red and a green ball (radius 15 cm) at random
    places within 25 cm of the origin, with the cameras' float32 matrices."""
    generator = torch.Generator().manual_seed(0)
    intrinsics, extrinsics = three_cameras(size)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2]], dtype=torch.float64)
    centres = (torch.rand(count, 2, 3, generator=generator, dtype=torch.float64) - 0.5) * 0.5
    images = torch.stack(
        [render_balls(c, colours, 0.15, intrinsics, extrinsics, size) for c in centres]
    )
    return images, intrinsics.float(), extrinsics.float()


def train_on_balls(count: int, steps: int) -> tuple[float, float, float, tuple[float, float]]:
    """Train Keypoint3D without labels on a fixed batch of ball scenes.

    Returns:
        The reconstruction loss (foreground-weighted, unscaled; eval mode) before and after
        training, the plain MSE of the best image without keypoints (every view's per-pixel
        mean over the batch), and the
        error on the balls' pixels after training beside the mean image's (:func:`object_error`).
    """
    images, intrinsics, extrinsics = ball_scenes(count)
    torch.manual_seed(0)
    model = make_perception(
        "keypoint3d",
        num_cameras=3,
        image_size=images.shape[-1],
        num_keypoints=4,
        base_filters=8,
        mean_depth=DISTANCE,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    # Eval crops are centred: (32 - 28) / 2 = 2 px on each side.
    crops = images[..., 2:30, 2:30]

    def reconstructions() -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(images, intrinsics, extrinsics).visuals.reconstructions

    def reconstruction_error() -> float:
        with torch.no_grad():
            output = model.eval()(images, intrinsics, extrinsics)
        return output.losses["reconstruction"].item() / model.loss_weights["reconstruction"]

    before = reconstruction_error()
    for _ in range(steps):
        loss = model.train()(images, intrinsics, extrinsics).total_loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.5)
        optimizer.step()
    mean_image = (crops - crops.mean(dim=0, keepdim=True)).pow(2).mean().item()
    return before, reconstruction_error(), mean_image, object_error(reconstructions(), crops)


def test_unsupervised_training_reduces_the_reconstruction_loss() -> None:
    before, after, _, _ = train_on_balls(count=4, steps=60)
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_keypoints_carry_the_moving_objects() -> None:
    """Reconstructing the balls better than the mean image needs their positions: only the
    keypoints can carry them (measured on the balls' pixels: :func:`object_error`)."""
    *_, (error, mean_image) = train_on_balls(count=8, steps=600)
    assert error < 0.6 * mean_image, (error, mean_image)


# -- interface and registry ------------------------------------------------------------------------


class TestRegistry:
    def test_keypoint3d_is_available(self) -> None:
        assert "keypoint3d" in available_perceptions()
        assert isinstance(small_model(), Keypoint3D)

    def test_unknown_name_lists_the_available_ones(self) -> None:
        with pytest.raises(ValueError, match=r"unknown perception 'keypoint4d'.*'keypoint3d'"):
            make_perception("keypoint4d", num_cameras=3, image_size=64)

    def test_unknown_argument_lists_the_valid_ones(self) -> None:
        with pytest.raises(TypeError, match=r"\['num_keypoint'\]; valid: .*'num_keypoints'"):
            make_perception("keypoint3d", num_cameras=3, image_size=64, num_keypoint=8)

    def test_bad_layout(self) -> None:
        with pytest.raises(ValueError, match="num_cameras"):
            make_perception("keypoint3d", num_cameras=0, image_size=64)
        with pytest.raises(ValueError, match="image_size"):
            make_perception("keypoint3d", num_cameras=1, image_size=(64, 64, 3))

    def test_registration_rules(self) -> None:
        with pytest.raises(ValueError, match="already registered"):

            @register_perception("keypoint3d")
            class Duplicate(Keypoint3D):
                pass

        with pytest.raises(TypeError, match="Perception subclass"):
            register_perception("not_a_module")(dict)
        assert issubclass(Keypoint3D, Perception)

    def test_images_from_observation_follows_the_camera_order(self) -> None:
        observation = {
            "cam_side": np.full((2, 8, 8, 3), 255, np.uint8),
            "cam_front": np.zeros((2, 8, 8, 3), np.uint8),
            "state": np.zeros((2, 4), np.float32),
        }
        images = images_from_observation(observation, ["front", "side"])
        assert images.shape == (2, 2, 3, 8, 8) and images.dtype == torch.float32
        assert images[:, 0].max() == 0.0 and images[:, 1].min() == 1.0
        with pytest.raises(KeyError, match="cam_top"):
            images_from_observation(observation, ["top"])


def test_interface_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(perception_base, verbose=False)
    assert tried > 0
    assert failures == 0


def test_import_kp3d_does_not_import_torch() -> None:
    code = (
        "import sys, kp3d, kp3d.geometry; assert 'torch' not in sys.modules; "
        "assert 'keypoint3d' in kp3d.available_perceptions()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_make_perception_takes_an_env_camera_layout() -> None:
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("kp3d/Reach-v0", size=(48, 64), obs_mode="state")
    cameras = env.unwrapped.cameras
    module = make_perception("keypoint3d", cameras=cameras, num_keypoints=4)
    assert module.num_cameras == len(cameras) and module.image_size == (48, 64)
    with pytest.raises(ValueError, match="not both"):
        make_perception("keypoint3d", cameras=cameras, num_cameras=3, image_size=64)
    with pytest.raises(ValueError, match="needs the camera layout"):
        make_perception("keypoint3d", num_keypoints=4)
    env.close()
