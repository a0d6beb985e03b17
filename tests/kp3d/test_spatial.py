"""Tests of the heatmap operations (:mod:`kp3d.spatial`): hand-computed values, the pixel
convention shared with :mod:`kp3d.geometry`, round trips, batch shapes, float64 gradchecks and
errors."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch.autograd import gradcheck

from kp3d import spatial
from kp3d.spatial import (
    crop_images,
    crop_to_image,
    expected_value,
    gaussian_maps,
    heatmap_std,
    heatmap_to_image,
    image_to_crop,
    image_to_heatmap,
    rescale_pixels,
    soft_argmax,
    spatial_softmax,
)


def one_hot(height: int, width: int, row: int, column: int) -> torch.Tensor:
    heatmap = torch.zeros(height, width, dtype=torch.float64)
    heatmap[row, column] = 1.0
    return heatmap


def test_module_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(spatial, verbose=False)
    assert tried > 0
    assert failures == 0


class TestSpatialSoftmax:
    def test_maps_sum_to_one_and_keep_shape(self) -> None:
        logits = torch.randn(2, 3, 5, 7)
        heatmaps = spatial_softmax(logits)
        assert heatmaps.shape == logits.shape
        assert (heatmaps >= 0).all()
        torch.testing.assert_close(heatmaps.sum(dim=(-2, -1)), torch.ones(2, 3))

    def test_is_a_softmax_over_cells(self) -> None:
        logits = torch.randn(4, 6, dtype=torch.float64)
        expected = torch.exp(logits) / torch.exp(logits).sum()
        torch.testing.assert_close(spatial_softmax(logits), expected)
        torch.testing.assert_close(spatial_softmax(logits + 3.0), expected)

    def test_gradcheck(self) -> None:
        logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        assert gradcheck(spatial_softmax, (logits,))

    def test_rejects_a_vector(self) -> None:
        with pytest.raises(ValueError, match=r"\(\*, H, W\); got \(5,\)"):
            spatial_softmax(torch.zeros(5))


class TestSoftArgmax:
    def test_one_hot_gives_the_cell_centre(self) -> None:
        for row in range(5):
            for column in range(7):
                pixels = soft_argmax(one_hot(5, 7, row, column))
                torch.testing.assert_close(
                    pixels, torch.tensor([column + 0.5, row + 0.5], dtype=torch.float64)
                )

    def test_peaked_logits_give_the_cell_centre(self) -> None:
        logits = torch.full((1, 1, 12, 12), -50.0)
        logits[0, 0, 9, 2] = 50.0
        torch.testing.assert_close(
            soft_argmax(spatial_softmax(logits)), torch.tensor([[[2.5, 9.5]]])
        )

    def test_uniform_map_gives_the_grid_centre(self) -> None:
        torch.testing.assert_close(soft_argmax(torch.ones(6, 10)), torch.tensor([5.0, 3.0]))

    def test_unnormalised_maps_are_normalised(self) -> None:
        heatmap = one_hot(4, 4, 1, 1) * 3.0 + one_hot(4, 4, 1, 3) * 1.0
        torch.testing.assert_close(
            soft_argmax(heatmap), torch.tensor([1.5 * 0.75 + 3.5 * 0.25, 1.5], dtype=torch.float64)
        )

    def test_batch_shapes(self) -> None:
        assert soft_argmax(torch.rand(2, 3, 4, 5, 6)).shape == (2, 3, 4, 2)

    def test_gradcheck(self) -> None:
        heatmaps = torch.rand(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
        assert gradcheck(soft_argmax, (heatmaps,))


class TestExpectedValue:
    def test_one_hot_picks_the_value(self) -> None:
        values = torch.arange(20, dtype=torch.float64).reshape(4, 5)
        assert expected_value(one_hot(4, 5, 2, 3), values).item() == pytest.approx(13.0)

    def test_constant_map_gives_the_constant(self) -> None:
        heatmaps = spatial_softmax(torch.randn(2, 3, 6, 6))
        torch.testing.assert_close(
            expected_value(heatmaps, torch.full((2, 3, 6, 6), 1.7)), torch.full((2, 3), 1.7)
        )

    def test_gradcheck(self) -> None:
        heatmaps = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
        maps = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        assert gradcheck(expected_value, (heatmaps, maps))

    def test_rejects_another_grid(self) -> None:
        with pytest.raises(ValueError, match=r"got \(2, 4, 5\)"):
            expected_value(torch.rand(2, 4, 4), torch.rand(2, 4, 5))


class TestHeatmapStd:
    def test_one_hot_has_no_spread(self) -> None:
        assert heatmap_std(one_hot(5, 5, 2, 2), eps=0.0).item() == 0.0

    def test_two_cells(self) -> None:
        # Half the mass at column 0, half at column 4: |u - mean| = 2 for both.
        heatmap = (one_hot(3, 5, 1, 0) + one_hot(3, 5, 1, 4)) / 2
        torch.testing.assert_close(
            heatmap_std(heatmap, eps=0.0), torch.tensor(2.0, dtype=torch.float64)
        )

    def test_both_axes_add(self) -> None:
        heatmap = (one_hot(5, 5, 0, 0) + one_hot(5, 5, 4, 4)) / 2
        torch.testing.assert_close(
            heatmap_std(heatmap, eps=0.0), torch.tensor(8.0, dtype=torch.float64).sqrt()
        )

    def test_given_mean_matches_computed_mean(self) -> None:
        heatmaps = torch.rand(2, 3, 6, 6)
        torch.testing.assert_close(
            heatmap_std(heatmaps, soft_argmax(heatmaps)), heatmap_std(heatmaps)
        )

    def test_gradcheck(self) -> None:
        heatmaps = torch.rand(2, 4, 5, dtype=torch.float64, requires_grad=True)
        assert gradcheck(heatmap_std, (heatmaps,))

    def test_rejects_mismatched_pixels(self) -> None:
        with pytest.raises(ValueError, match=r"pixels must have shape \(2, 2\)"):
            heatmap_std(torch.rand(2, 4, 4), torch.rand(3, 2))


class TestGaussianMaps:
    def test_peak_where_asked(self) -> None:
        pixels = torch.tensor([[3.5, 1.5], [0.5, 4.5]])
        maps = gaussian_maps(pixels, 0.8, (6, 5))
        assert maps.shape == (2, 6, 5)
        assert maps[0, 1, 3].item() == 1.0 and maps[1, 4, 0].item() == 1.0
        for index, (column, row) in enumerate([(3, 1), (0, 4)]):
            assert divmod(int(maps[index].argmax()), 5) == (row, column)

    def test_values(self) -> None:
        maps = gaussian_maps(torch.tensor([1.5, 1.5]), 2.0, 4)
        # Cell (1, 3) is 2 cells right of the centre: exp(-4 / 8).
        torch.testing.assert_close(maps[1, 3], torch.exp(torch.tensor(-0.5)))

    def test_soft_argmax_recovers_an_off_grid_centre(self) -> None:
        pixels = torch.tensor([[7.3, 9.81], [12.02, 6.6]], dtype=torch.float64)
        maps = gaussian_maps(pixels, torch.tensor([1.0, 1.3], dtype=torch.float64), 20)
        torch.testing.assert_close(soft_argmax(maps), pixels)

    def test_std_per_map(self) -> None:
        pixels = torch.full((2, 2), 15.5)
        maps = gaussian_maps(pixels, torch.tensor([1.0, 2.0]), 31)
        assert maps[1].sum() > maps[0].sum()
        torch.testing.assert_close(
            heatmap_std(maps[1]) / heatmap_std(maps[0]), torch.tensor(2.0), rtol=0.02, atol=0.0
        )

    def test_gradcheck(self) -> None:
        pixels = torch.rand(2, 3, 2, dtype=torch.float64, requires_grad=True) * 5
        std = (torch.rand(2, 3, dtype=torch.float64) + 0.5).requires_grad_()
        assert gradcheck(lambda p, s: gaussian_maps(p, s, (5, 6)), (pixels, std))

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match=r"\(\*, 2\); got \(4, 3\)"):
            gaussian_maps(torch.zeros(4, 3), 1.0, 5)
        with pytest.raises(ValueError, match="std must be a float or have shape"):
            gaussian_maps(torch.zeros(4, 2), torch.ones(3), 5)
        with pytest.raises(ValueError, match="size must be"):
            gaussian_maps(torch.zeros(4, 2), 1.0, (5, 0))


class TestPixelConversions:
    def test_heatmap_cell_centre_is_the_centre_of_its_image_block(self) -> None:
        # A 14-cell heatmap over a 56 px crop: cell j covers pixels 4j .. 4j + 3, whose centres
        # average to 4j + 2.
        cells = torch.tensor([[0.5, 0.5], [13.5, 6.5]])
        torch.testing.assert_close(
            rescale_pixels(cells, 14, 56), torch.tensor([[2.0, 2.0], [54.0, 26.0]])
        )

    def test_rescale_round_trip_and_non_square(self) -> None:
        pixels = torch.rand(3, 4, 2, dtype=torch.float64) * 10
        there = rescale_pixels(pixels, (10, 14), (40, 56))
        torch.testing.assert_close(there, pixels * 4)
        torch.testing.assert_close(rescale_pixels(there, (40, 56), (10, 14)), pixels)
        torch.testing.assert_close(
            rescale_pixels(pixels, (5, 10), (20, 20))[..., 0], pixels[..., 0] * 2
        )

    def test_crop_offset_round_trip(self) -> None:
        pixels = torch.rand(5, 2)
        origins = torch.tensor([3.0, 7.0])
        torch.testing.assert_close(crop_to_image(pixels, origins), pixels + origins)
        torch.testing.assert_close(image_to_crop(crop_to_image(pixels, origins), origins), pixels)

    def test_heatmap_image_round_trip(self) -> None:
        cells = torch.rand(2, 3, 4, 2, dtype=torch.float64) * 14
        origins = torch.randint(0, 9, (2, 3, 1, 2)).double()
        image = heatmap_to_image(cells, 14, 56, origins)
        torch.testing.assert_close(image, cells * 4 + origins)
        torch.testing.assert_close(image_to_heatmap(image, 14, 56, origins), cells)
        torch.testing.assert_close(heatmap_to_image(cells, 14, 56), cells * 4)

    def test_gradcheck(self) -> None:
        cells = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
        origins = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
        assert gradcheck(lambda c, o: heatmap_to_image(c, (7, 9), (28, 27), o), (cells, origins))
        assert gradcheck(lambda c, o: image_to_heatmap(c, (7, 9), (28, 27), o), (cells, origins))

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match=r"got \(3, 3\)"):
            rescale_pixels(torch.zeros(3, 3), 4, 8)
        with pytest.raises(ValueError, match="from_size"):
            rescale_pixels(torch.zeros(3, 2), (4, 4, 4), 8)
        with pytest.raises(ValueError, match="origins"):
            crop_to_image(torch.zeros(3, 2), torch.zeros(3))


class TestCropImages:
    def test_crop_contents_match_the_offset_convention(self) -> None:
        images = torch.arange(2 * 3 * 10 * 12, dtype=torch.float64).reshape(2, 1, 3, 10, 12)
        origins = torch.tensor([[[2, 5]], [[0, 0]]])  # (u, v)
        crops = crop_images(images, origins, (4, 6))
        assert crops.shape == (2, 1, 3, 4, 6)
        torch.testing.assert_close(crops[0, 0], images[0, 0, :, 5:9, 2:8])
        torch.testing.assert_close(crops[1, 0], images[1, 0, :, 0:4, 0:6])
        # The centre of crop pixel (row 1, column 3) is that of image pixel (row 6, column 5).
        centre = crop_to_image(torch.tensor([3.5, 1.5], dtype=torch.float64), origins[0, 0])
        torch.testing.assert_close(centre, torch.tensor([5.5, 6.5], dtype=torch.float64))
        assert crops[0, 0, 0, 1, 3] == images[0, 0, 0, 6, 5]

    def test_gradcheck(self) -> None:
        images = torch.rand(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
        origins = torch.tensor([[1, 0], [2, 2]])
        assert gradcheck(lambda x: crop_images(x, origins, 3), (images,))

    def test_errors(self) -> None:
        images = torch.zeros(2, 3, 8, 8)
        with pytest.raises(ValueError, match=r"crop origins must lie in \[0, 4\]"):
            crop_images(images, torch.tensor([[5, 0], [0, 0]]), 4)
        with pytest.raises(ValueError, match=r"origins must have shape \(2, 2\)"):
            crop_images(images, torch.zeros(3, 2), 4)
        with pytest.raises(ValueError, match="exceeds the image size"):
            crop_images(images, torch.zeros(2, 2), 9)
