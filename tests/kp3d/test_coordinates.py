"""Tests of the coordinates and outputs shared by the perception methods
(:mod:`kp3d.perception.coordinates`, :mod:`kp3d.perception.image_keypoints`)."""

from __future__ import annotations

import torch

from kp3d.perception.coordinates import cell_grid, normalized_coordinates
from kp3d.perception.image_keypoints import image_keypoint_output
from kp3d.spatial import cell_centers


def test_normalized_coordinates() -> None:
    pixels = torch.tensor([[0.0, 0.0], [64.0, 48.0], [32.0, 24.0], [16.0, 36.0]])
    expected = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.5, 0.5]])
    torch.testing.assert_close(normalized_coordinates(pixels, (48, 64)), expected)


def test_normalized_coordinates_is_still_importable_from_keypoint2d() -> None:
    from kp3d.perception import keypoint2d

    assert keypoint2d.normalized_coordinates is normalized_coordinates


def test_cell_grid_lists_cell_centres_row_major() -> None:
    grid = cell_grid(2, 3, dtype=torch.float64)
    assert grid.shape == (2, 3, 2) and grid.dtype == torch.float64
    torch.testing.assert_close(grid[1, 2], torch.tensor([2.5, 1.5], dtype=torch.float64))
    u, v = cell_centers(2, 3)
    flat = cell_grid(2, 3).reshape(-1, 2)
    torch.testing.assert_close(flat[:, 0], u.repeat(2))
    torch.testing.assert_close(flat[:, 1], v.repeat_interleave(3))


def test_image_keypoint_output_unfolds_cameras() -> None:
    batch, cameras, keypoints = 2, 3, 4
    pixels = torch.rand(batch * cameras, keypoints, 2, requires_grad=True) * 32
    heatmaps = torch.rand(batch * cameras, keypoints, 8, 8)
    confidence = torch.rand(batch * cameras, keypoints)
    output = image_keypoint_output(pixels, heatmaps, cameras, (32, 32), {}, confidence=confidence)
    assert output.features.shape == (batch, 2 * cameras * keypoints)
    assert output.keypoints.shape == (batch, cameras * keypoints, 2)
    assert output.confidence.shape == (batch, cameras * keypoints)
    assert output.visuals.points.shape == (batch, cameras, keypoints, 2)
    assert output.visuals.heatmaps.shape == (batch, cameras, keypoints, 8, 8)
    assert output.visuals.reconstructions is None
    torch.testing.assert_close(
        output.features.reshape(batch, cameras, keypoints, 2),
        normalized_coordinates(pixels.reshape(batch, cameras, keypoints, 2), (32, 32)),
    )
    assert output.features.requires_grad and not output.visuals.points.requires_grad
