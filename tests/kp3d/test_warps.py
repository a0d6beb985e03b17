"""Tests of the random thin-plate-spline warps (:mod:`kp3d.warps`).

The property everything else rests on: warping an image and warping the pixels of what it shows
agree. A bright dot is drawn at a known pixel, the image is warped, and the dot's centroid in
the warped image must be where :meth:`TPSWarp.points` sends the pixel.
"""

from __future__ import annotations

import pytest
import torch
from kornia.geometry import create_meshgrid

from kp3d.spatial import gaussian_maps, soft_argmax
from kp3d.warps import (
    TPSWarp,
    control_grid,
    grid_to_pixels,
    identity_warp,
    pixels_to_grid,
    random_tps,
)


def dot_images(pixels: torch.Tensor, size: tuple[int, int], std: float = 1.0) -> torch.Tensor:
    """``(B, 1, H, W)`` black images with one bright Gaussian dot at ``pixels (B, 2)``."""
    return gaussian_maps(pixels[:, None], std, size)


def centroid(images: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` pixel centroid of the single channel of ``images (B, 1, H, W)``."""
    return soft_argmax(images)[:, 0]


def interior_pixels(count: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """``(B, 2)`` random pixels in the central half of the image (they stay inside when warped)."""
    height, width = size
    unit = torch.rand(count, 2, generator=torch.Generator().manual_seed(seed))
    return unit * torch.tensor([width / 2, height / 2]) + torch.tensor([width / 4, height / 4])


def test_grid_coordinates_are_the_pixel_convention() -> None:
    # grid_sample's pixel centres (align_corners=False) are kp3d's (j + 0.5, i + 0.5).
    height, width = 6, 10
    grid = create_meshgrid(height, width, normalized_coordinates=True, align_corners=False)
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([columns + 0.5, rows + 0.5], dim=-1).float()
    torch.testing.assert_close(pixels_to_grid(centres, (height, width)), grid[0])
    torch.testing.assert_close(grid_to_pixels(grid[0], (height, width)), centres)
    corners = torch.tensor([[0.0, 0.0], [10.0, 6.0]])
    torch.testing.assert_close(
        pixels_to_grid(corners, (height, width)), torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    )


def test_control_grid() -> None:
    grid = control_grid(3)
    assert grid.shape == (9, 2)
    torch.testing.assert_close(grid[0], torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(grid[1], torch.tensor([0.0, -1.0]))  # row-major: u varies first
    torch.testing.assert_close(grid[-1], torch.tensor([1.0, 1.0]))


def test_identity_warp_is_the_identity() -> None:
    warp = identity_warp(3, (32, 48))
    images = torch.rand(3, 3, 32, 48)
    torch.testing.assert_close(warp.images(images), images, atol=1e-5, rtol=0)
    points = torch.rand(3, 5, 2) * torch.tensor([48.0, 32.0])
    torch.testing.assert_close(warp.points(points), points, atol=1e-4, rtol=0)
    torch.testing.assert_close(warp.inverse_points(points), points, atol=1e-4, rtol=0)
    strength_zero = random_tps(3, (32, 48), strength=0.0, generator=torch.Generator())
    torch.testing.assert_close(strength_zero.images(images), images, atol=1e-5, rtol=0)


def test_a_translation_moves_the_content_by_the_translation() -> None:
    # The direction convention in its simplest case: a warp that moves points by +t moves what
    # the image shows by +t (not -t).
    warp = random_tps(
        4, 32, rotation=0.0, scale=0.0, jitter=0.0, generator=torch.Generator().manual_seed(3)
    )
    points = torch.full((4, 1, 2), 16.0)
    shift = warp.points(points) - points  # (B, 1, 2) pixels
    assert shift.abs().max() > 0.5  # the warps do translate
    torch.testing.assert_close(warp.points(points + 3.0), points + 3.0 + shift)
    pixels = interior_pixels(4, (32, 32), seed=0)
    warped = centroid(warp.images(dot_images(pixels, (32, 32)), padding_mode="zeros"))
    torch.testing.assert_close(warped, pixels + shift[:, 0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", [(64, 64), (48, 64)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warped_dots_land_where_the_points_are_warped(size, seed) -> None:
    count = 32
    warp = random_tps(count, size, generator=torch.Generator().manual_seed(seed))
    pixels = interior_pixels(count, size, seed)
    expected = warp.points(pixels[:, None])[:, 0]
    assert (expected - pixels).norm(dim=-1).mean() > 1.0  # the warps are not trivial
    warped = centroid(warp.images(dot_images(pixels, size), padding_mode="zeros"))
    errors = (warped - expected).norm(dim=-1)
    assert errors.max() < 0.5, errors.max()
    # ... and back: the source pixel of the warped dot is the dot.
    torch.testing.assert_close(warp.inverse_points(warped[:, None])[:, 0], pixels, atol=0.5, rtol=0)


def test_inverse_points_undo_points() -> None:
    warp = random_tps(8, 64, strength=1.5, generator=torch.Generator().manual_seed(4))
    points = torch.rand(8, 20, 2, generator=torch.Generator().manual_seed(5)) * 64.0
    torch.testing.assert_close(warp.inverse_points(warp.points(points)), points, atol=2e-3, rtol=0)
    torch.testing.assert_close(warp.points(warp.inverse_points(points)), points, atol=2e-3, rtol=0)


def test_points_accept_any_middle_dimensions() -> None:
    warp = random_tps(2, 32, generator=torch.Generator().manual_seed(6))
    points = torch.rand(2, 3, 4, 2) * 32.0
    torch.testing.assert_close(
        warp.points(points), warp.points(points.reshape(2, 12, 2)).reshape(2, 3, 4, 2)
    )


def test_composition_is_one_warp_after_the_other() -> None:
    size = (64, 64)
    generator = torch.Generator().manual_seed(7)
    first = random_tps(16, size, generator=generator)
    second = random_tps(16, size, generator=generator)
    both = first.then(second)
    points = interior_pixels(16, size, seed=8)[:, None]
    torch.testing.assert_close(both.points(points), second.points(first.points(points)))
    torch.testing.assert_close(
        both.inverse_points(points), first.inverse_points(second.inverse_points(points))
    )
    images = dot_images(points[:, 0], size)
    once = centroid(both.images(images, padding_mode="zeros"))
    twice = centroid(
        second.images(first.images(images, padding_mode="zeros"), padding_mode="zeros")
    )
    assert (once - both.points(points)[:, 0]).norm(dim=-1).max() < 0.5
    assert (once - twice).norm(dim=-1).max() < 0.5


def test_images_warp_every_channel_alike() -> None:
    warp = random_tps(2, 32, generator=torch.Generator().manual_seed(9))
    maps = torch.rand(2, 3, 4, 32, 32)
    warped = warp.images(maps)
    assert warped.shape == maps.shape
    torch.testing.assert_close(warped[:, 1], warp.images(maps[:, 1]))


def test_gradients() -> None:
    warp = random_tps(2, 32, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    points = (torch.rand(2, 3, 2, dtype=torch.float64) * 16 + 8).requires_grad_()
    # The Newton inversion's last step carries the exact derivative of g.
    assert torch.autograd.gradcheck(warp.points, (points,), atol=1e-5)
    assert torch.autograd.gradcheck(warp.inverse_points, (points,))
    images = torch.rand(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    warp.images(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_random_warps_are_reproducible_and_differ_across_the_batch() -> None:
    points = torch.full((4, 1, 2), 20.0)
    one = random_tps(4, 64, generator=torch.Generator().manual_seed(11)).points(points)
    two = random_tps(4, 64, generator=torch.Generator().manual_seed(11)).points(points)
    torch.testing.assert_close(one, two)
    assert (one[1:] - one[:1]).abs().max() > 0.1
    stronger = random_tps(4, 64, strength=3.0, generator=torch.Generator().manual_seed(11))
    assert (stronger.points(points) - points).norm() > (one - points).norm()


def test_errors() -> None:
    warp = random_tps(2, 32)
    with pytest.raises(ValueError, match=r"points must have shape \(B, \*, 2\)"):
        warp.points(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="one batch entry per warp"):
        warp.points(torch.zeros(3, 1, 2))
    with pytest.raises(ValueError, match="images must have shape"):
        warp.images(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="padding_mode"):
        warp.images(torch.zeros(2, 3, 32, 32), padding_mode="wrap")
    with pytest.raises(ValueError, match="batch and image sizes must match"):
        warp.then(random_tps(3, 32))
    with pytest.raises(ValueError, match="image_size"):
        random_tps(2, 0)
    with pytest.raises(ValueError, match="jitter must be non-negative"):
        random_tps(2, 32, jitter=-1.0)
    with pytest.raises(ValueError, match="grid_size"):
        random_tps(2, 32, grid_size=1)
    with pytest.raises(ValueError, match="at least one stage"):
        TPSWarp([], 2, 32, None, torch.float32)
