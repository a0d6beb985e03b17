"""Tests of heatmap peak decoding (:mod:`kp3d.peaks`): the Gaussian fit is exact on sampled
Gaussians, better than the peak cell alone, robust to noise, and NMS finds separate peaks."""

from __future__ import annotations

import doctest

import pytest
import torch

from kp3d import peaks
from kp3d.peaks import decode_peaks, local_maxima, refine_peaks, strongest_peaks
from kp3d.spatial import gaussian_maps


def test_module_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(peaks, verbose=False)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize("std", [0.7, 1.0, 2.0])
def test_gaussian_fit_is_exact_on_sampled_gaussians(std: float) -> None:
    torch.manual_seed(0)
    centres = torch.rand(50, 2, dtype=torch.float64) * torch.tensor([10.0, 8.0]) + 3.0
    maps = gaussian_maps(centres, std, (14, 16))
    pixels, values = decode_peaks(maps)
    torch.testing.assert_close(pixels, centres, atol=1e-9, rtol=0)
    # The peak value is the map at the peak cell: exp(-d² / (2 std²)), d the cell centre's offset.
    cells = centres.floor() + 0.5
    expected = torch.exp(-((cells - centres) ** 2).sum(-1) / (2 * std**2))
    torch.testing.assert_close(values, expected)


def test_refinement_beats_the_peak_cell_alone() -> None:
    torch.manual_seed(1)
    centres = torch.rand(200, 2) * 10.0 + 3.0
    maps = gaussian_maps(centres, 1.0, 16)
    refined, _ = decode_peaks(maps)
    cell_only = centres.floor() + 0.5
    refined_error = (refined - centres).norm(dim=-1)
    cell_error = (cell_only - centres).norm(dim=-1)
    assert cell_error.mean() > 0.3  # about 0.38 cells on average for uniform centres
    assert refined_error.max() < 1e-4


def test_decoding_is_robust_to_noise_and_offsets() -> None:
    """Noisy, shifted and scaled maps (what a regressor outputs) still decode to within a tenth of
    a cell on average."""
    generator = torch.Generator().manual_seed(2)
    centres = torch.rand(300, 2, generator=generator) * 10.0 + 3.0
    maps = 0.8 * gaussian_maps(centres, 1.0, 16) - 0.02
    maps = maps + 0.01 * torch.randn(maps.shape, generator=generator)
    pixels, _ = decode_peaks(maps)
    assert (pixels - centres).norm(dim=-1).mean() < 0.1


def test_border_peaks_are_not_refined_across_the_border() -> None:
    maps = torch.zeros(2, 5, 6)
    maps[0, 0, 2], maps[0, 0, 3], maps[0, 1, 2] = 1.0, 0.5, 0.2  # top row: refined along u only
    maps[1, 4, 5] = 1.0  # bottom-right corner, no neighbour: the cell centre
    pixels, values = decode_peaks(maps)
    assert pixels[0, 1] == 0.5 and 2.5 < pixels[0, 0] < 3.0
    torch.testing.assert_close(pixels[1], torch.tensor([5.5, 4.5]))
    torch.testing.assert_close(values, torch.tensor([1.0, 1.0]))


def test_refine_peaks_handles_many_peaks_per_map() -> None:
    centres = torch.tensor([[[2.3, 3.6], [9.8, 6.2]]], dtype=torch.float64)  # (1, 2, 2)
    maps = gaussian_maps(centres, 1.0, 12).max(dim=1).values  # one map with both bumps
    rows = centres[..., 1].floor().long()
    columns = centres[..., 0].floor().long()
    torch.testing.assert_close(refine_peaks(maps, rows, columns), centres, atol=1e-6, rtol=0)


def test_local_maxima_finds_each_separate_peak_above_threshold() -> None:
    centres = torch.tensor([[2.5, 2.5], [9.5, 3.5], [5.5, 9.5]])
    heights = torch.tensor([1.0, 0.6, 0.05])
    maps = (gaussian_maps(centres, 1.0, 12) * heights[:, None, None]).max(dim=0).values
    mask = local_maxima(maps, threshold=0.1)
    assert mask.sum() == 2
    assert mask[2, 2] and mask[3, 9] and not mask[9, 5]  # (row, column); the third is too weak
    assert local_maxima(maps, threshold=0.01).sum() == 3
    batched = local_maxima(maps.expand(2, 3, 12, 12), threshold=0.1)
    assert batched.shape == (2, 3, 12, 12) and (batched == mask).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"maps must have shape \(\*, H, W\).*\(5,\)"):
        decode_peaks(torch.zeros(5))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        decode_peaks([[0.0]])
    with pytest.raises(ValueError, match="window must be an odd"):
        local_maxima(torch.zeros(4, 4), 0.1, window=2)
    with pytest.raises(ValueError, match="rows and columns"):
        refine_peaks(torch.zeros(2, 4, 4), torch.zeros(3, 1), torch.zeros(3, 1))


def test_strongest_peaks_are_cell_centres_strongest_first_and_flag_missing_ones() -> None:
    maps = torch.zeros(1, 5, 6)
    maps[0, 1, 4] = 2.0
    maps[0, 3, 0] = 3.0
    pixels, valid = strongest_peaks(maps, 3, maps > 0)
    torch.testing.assert_close(pixels[0, :2], torch.tensor([[0.5, 3.5], [4.5, 1.5]]))
    assert valid.tolist() == [[True, True, False]]
