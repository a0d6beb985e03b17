"""Tests of the Stacked Hourglass detector (:mod:`kp3d.perception.hourglass`).

An oracle network (exact Gaussian heatmaps at known pixels) checks the pixel bookkeeping of
``forward`` exactly, in the image and the triangulated world frame; coloured blobs check that
supervised training learns.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kp3d import geometry
from kp3d.batch import FrameBatch
from kp3d.geometry import project
from kp3d.perception import (
    PerceptionOutput,
    StackedHourglass,
    available_perceptions,
    load_perception,
    make_perception,
    perception_hyperparameters,
    save_perception,
)
from kp3d.perception.hourglass import Hourglass, default_depth, masked_heatmap_loss
from kp3d.spatial import image_to_heatmap


def small_model(num_cameras: int = 2, image_size: int = 32, **kwargs) -> StackedHourglass:
    torch.manual_seed(0)
    options = {"num_keypoints": 3, "channels": 8, **kwargs}
    return make_perception("hourglass", num_cameras=num_cameras, image_size=image_size, **options)


def cameras(count: int, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)`` of cameras 1.5 m from the origin on
    a horizontal circle, looking at it (OpenCV axes), 30° apart."""
    focal = image_size * 1.2
    intrinsics = torch.tensor(
        [[focal, 0.0, image_size / 2], [0.0, focal, image_size / 2], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    ).expand(count, 3, 3)
    extrinsics = torch.zeros(count, 4, 4, dtype=torch.float64)
    for c in range(count):
        angle = np.radians(30.0 * c)
        centre = 1.5 * np.array([np.sin(angle), -np.cos(angle), 0.0])
        extrinsics[c] = torch.from_numpy(geometry.look_at(centre, np.zeros(3)))
    return intrinsics, extrinsics


class OracleNetwork(nn.Module):
    """Stands in for the network: returns, for every stack, the module's own target heatmaps of
    fixed pixels ``(B·C, K, 2)`` (an ideal detector of those keypoints)."""

    def __init__(self, module: StackedHourglass, pixels: torch.Tensor) -> None:
        super().__init__()
        self.maps = module.targets(pixels).float()
        self.stacks = module.num_stacks

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        assert images.shape[0] == self.maps.shape[0]
        return [self.maps] * self.stacks


# -- construction ----------------------------------------------------------------------------------


def test_registered_with_its_hyperparameters() -> None:
    assert "hourglass" in available_perceptions()
    assert set(perception_hyperparameters("hourglass")) == {
        "channels",
        "depth",
        "gaussian_std",
        "heatmap_stride",
        "min_weight",
        "num_keypoints",
        "num_stacks",
        "triangulate",
    }


@pytest.mark.parametrize(("stride", "heatmap", "depth"), [(2, (32, 32), 3), (4, (16, 16), 2)])
def test_heatmap_grid_of_64_px_views(stride, heatmap, depth) -> None:
    model = small_model(image_size=64, heatmap_stride=stride)
    assert model.heatmap_size == heatmap and model.depth == depth == default_depth(heatmap)
    maps = model.stack_heatmaps(torch.rand(2, 2, 3, 64, 64))
    assert len(maps) == 2 and all(m.shape == (2, 2, 3, *heatmap) for m in maps)


def test_hourglass_keeps_odd_sizes() -> None:
    torch.manual_seed(0)
    block = Hourglass(2, 8)
    assert block(torch.rand(2, 8, 11, 7)).shape == (2, 8, 11, 7)


def test_stacks_do_not_share_weights() -> None:
    model = small_model(num_stacks=3)
    network = model.network
    assert len(network.hourglasses) == 3 and len(network.merge_heatmaps) == 2
    first, second = (list(h.parameters()) for h in network.hourglasses[:2])
    assert all(a is not b for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"heatmap_stride": 8}, "heatmap_stride must be 2 or 4"),
        ({"image_size": 30, "heatmap_stride": 4}, "divisible by heatmap_stride"),
        ({"depth": 5}, "depth must be"),
        ({"channels": 6}, "multiple of 4"),
        ({"num_cameras": 1, "triangulate": True}, "at least 2 cameras"),
        ({"gaussian_std": 0.0}, "gaussian_std"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


# -- the output contract ---------------------------------------------------------------------------


def test_output_contract_in_the_image_frame() -> None:
    model = small_model(num_cameras=2).eval()
    intrinsics, extrinsics = cameras(2)
    output = model(torch.rand(4, 2, 3, 32, 32), intrinsics, extrinsics)
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    assert output.features.shape == (4, model.features_dim) == (4, 3 * 2 * 3)
    assert output.keypoints.shape == (4, 6, 2) and output.confidence.shape == (4, 6)
    assert output.losses == {}
    visuals = output.visuals
    assert visuals.points.shape == visuals.detections.shape == (4, 2, 3, 2)
    assert visuals.heatmaps.shape == (4, 2, 3, 16, 16)
    torch.testing.assert_close(visuals.heatmaps.sum(dim=(-2, -1)), torch.ones(4, 2, 3))
    assert visuals.crop_origins is None and visuals.reconstructions is None


def test_output_contract_in_the_world_frame() -> None:
    model = small_model(num_cameras=3, triangulate=True).eval()
    assert model.keypoint_frame == "world" and StackedHourglass.keypoint_frame == "image"
    output = model(torch.rand(4, 3, 3, 32, 32), *cameras(3))
    assert output.features.shape == (4, model.features_dim) == (4, 4 * 3)
    assert output.keypoints.shape == (4, 3, 3) and output.confidence.shape == (4, 3)
    assert torch.isfinite(output.features).all()
    assert output.visuals.points.shape == (4, 3, 3, 2)


def test_oracle_detections_are_the_exact_pixels() -> None:
    """Ideal heatmaps at sub-pixel keypoints decode to those pixels, features to [-1, 1]."""
    model = small_model(num_cameras=2, image_size=32).eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 2, 3, 2, generator=generator) * 24.0 + 4.0  # (B, C, K, 2)
    model.network = OracleNetwork(model, pixels.flatten(0, 1))
    output = model(torch.rand(3, 2, 3, 32, 32), *cameras(2))
    torch.testing.assert_close(output.keypoints, pixels.flatten(1, 2), atol=1e-4, rtol=0)
    features = output.features.reshape(3, 2, 3, 3)
    torch.testing.assert_close(features[..., :2], pixels / 16.0 - 1.0, atol=1e-5, rtol=0)
    assert (features[..., 2] > 0.6).all() and (features[..., 2] <= 1.0).all()  # peak values


def test_oracle_triangulates_world_points() -> None:
    """Ideal heatmaps at the projections of world points give those points back."""
    model = small_model(num_cameras=3, image_size=32, triangulate=True).eval()
    intrinsics, extrinsics = cameras(3)
    points = torch.rand(2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    points = (points - 0.5) * 0.3  # (B, K, 3) within 15 cm of the origin
    pixels, _ = project(points[:, None], intrinsics, extrinsics)  # (B, C, K, 2)
    assert ((pixels > 2) & (pixels < 30)).all()
    model.network = OracleNetwork(model, pixels.flatten(0, 1))
    output = model(torch.rand(2, 3, 3, 32, 32), intrinsics.float(), extrinsics.float())
    torch.testing.assert_close(output.keypoints.double(), points, atol=2e-4, rtol=0)  # 0.2 mm
    torch.testing.assert_close(output.visuals.points.double(), pixels, atol=2e-2, rtol=0)


# -- targets and loss ------------------------------------------------------------------------------


def test_targets_peak_at_the_sub_pixel_keypoint() -> None:
    model = small_model(image_size=32, gaussian_std=1.5)
    pixels = torch.tensor([[7.3, 20.9], [16.4, 15.2], [27.1, 4.7]], dtype=torch.float64)
    targets = model.targets(pixels)  # (K, 16, 16)
    cells = image_to_heatmap(pixels, 16, 32)  # (u, v) on the 16 x 16 grid
    for k in range(3):
        row, column = divmod(int(targets[k].argmax()), 16)
        assert (row, column) == (int(cells[k, 1]), int(cells[k, 0]))
        centre = torch.tensor([column + 0.5, row + 0.5], dtype=torch.float64)
        expected = torch.exp(-((centre - cells[k]) ** 2).sum() / (2 * 1.5**2))
        torch.testing.assert_close(targets[k, row, column], expected)
    decoded, _ = model.detect(targets)
    torch.testing.assert_close(decoded, pixels, atol=1e-9, rtol=0)


def test_loss_masks_invisible_keypoints() -> None:
    predictions = torch.rand(2, 3, 4, 4, requires_grad=True)
    targets = torch.rand(2, 3, 4, 4)
    visible = torch.tensor([[True, False, True], [False, False, True]])
    loss = masked_heatmap_loss(predictions, targets, visible)
    expected = ((predictions - targets) ** 2).mean(dim=(-2, -1))[visible].mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (predictions.grad[~visible] == 0).all() and (predictions.grad[visible] != 0).any()
    assert masked_heatmap_loss(predictions, targets, torch.zeros(2, 3, dtype=torch.bool)) == 0


def test_training_losses_one_term_per_stack() -> None:
    model = small_model(num_cameras=2, num_stacks=3).train()
    batch = synthetic_batch(4, 2, 32, seed=0)
    losses = model.training_losses(batch)
    assert sorted(losses) == ["heatmap_0", "heatmap_1", "heatmap_2"]
    sum(losses.values()).backward()
    first_stack = model.network.hourglasses[0].skip.branch[2].weight
    assert first_stack.grad is not None and first_stack.grad.abs().sum() > 0


def test_training_losses_errors() -> None:
    model = small_model(num_cameras=2)
    batch = synthetic_batch(2, 2, 32, seed=0)
    unlabelled = FrameBatch(batch.images, batch.intrinsics, batch.extrinsics)
    with pytest.raises(ValueError, match="ground-truth keypoints"):
        model.training_losses(unlabelled)
    wrong = FrameBatch(
        batch.images,
        batch.intrinsics,
        batch.extrinsics,
        keypoints_pixels=batch.keypoints_pixels[:, :, :2],
        keypoints_visible=batch.keypoints_visible[:, :, :2],
    )
    with pytest.raises(ValueError, match=r"num_keypoints=K.*\(2, 2, 2, 2\)|\(2, 2, 2, 2\)"):
        model.training_losses(wrong)


def test_save_load_keeps_the_frame_and_outputs(tmp_path) -> None:
    model = small_model(num_cameras=2, triangulate=True).eval()
    path = save_perception(model, tmp_path / "hourglass.pt")
    loaded = load_perception(path).eval()
    assert loaded.keypoint_frame == "world"
    images = torch.rand(2, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(images, *cameras(2)).features, model(images, *cameras(2)).features
        )


# -- learning --------------------------------------------------------------------------------------

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.2, 1.0]])


def synthetic_batch(batch: int, count: int, size: int, seed: int) -> FrameBatch:
    """Views of three coloured discs (radius 2.5 px) at random sub-pixel positions on grey; the
    third disc is labelled invisible in the first view."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, count, 3, 2, generator=generator) * (size - 8) + 4
    u = torch.arange(size) + 0.5
    distance = (
        (u[None, :] - pixels[..., 0, None, None]) ** 2
        + (u[:, None] - pixels[..., 1, None, None]) ** 2
    ).sqrt()  # (B, C, K, H, W)
    inside = (2.5 - distance).clamp(0, 1)  # anti-aliased discs
    images = torch.full((batch, count, 3, size, size), 0.4)
    for k in range(3):
        mask = inside[:, :, k, None]
        images = images * (1 - mask) + COLOURS[k, :, None, None] * mask
    visible = torch.ones(batch, count, 3, dtype=torch.bool)
    visible[:, 0, 2] = False
    intrinsics, extrinsics = cameras(count, size)
    return FrameBatch(
        images,
        intrinsics.float().expand(batch, count, 3, 3),
        extrinsics.float().expand(batch, count, 4, 4),
        keypoints_pixels=pixels,
        keypoints_visible=visible,
    )


def pck(model: StackedHourglass, batch: FrameBatch, threshold: float) -> float:
    """Fraction of visible keypoints detected within ``threshold`` pixels."""
    with torch.no_grad():
        detections, _ = model.detect(model.stack_heatmaps(batch.images)[-1])
    errors = (detections - batch.keypoints_pixels).norm(dim=-1)
    return float((errors[batch.keypoints_visible] < threshold).float().mean())


def test_short_training_beats_its_initial_pck() -> None:
    model = small_model(num_cameras=2, image_size=32, channels=16, num_stacks=1)
    batch = synthetic_batch(8, 2, 32, seed=1)
    threshold = 0.1 * 32
    initial = pck(model.eval(), batch, threshold)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):
        loss = sum(model.training_losses(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = pck(model.eval(), batch, threshold)
    assert initial < 0.4
    assert final > max(0.8, initial + 0.5), (initial, final)
