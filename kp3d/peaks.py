"""Peaks of detection heatmaps: the strongest cell, local maxima (NMS), sub-pixel refinement.

Supervised detectors (:mod:`kp3d.perception.hourglass`, :mod:`kp3d.perception.openpose`) regress
maps whose value at a keypoint is a Gaussian bump of peak 1. Decoding a keypoint takes its peak
cell and refines it below the cell size with a **Gaussian fit**: along each axis, a parabola
through the *logarithms* of the peak and its two neighbours,

``δ = ½ (log h₋ - log h₊) / (log h₋ - 2 log h₀ + log h₊)``,

which is exact for a sampled Gaussian (its logarithm is a parabola) whatever its width, unlike a
parabola on the values themselves or a 3x3 centroid, which are biased towards the peak cell. The
offset is clipped to half a cell (the maximum of a sampled bump lies in its own cell) and is 0 at
the border of the map, where a neighbour is missing. The values are clamped to ``eps`` before the
logarithm, so that maps of any sign can be decoded.

Coordinates follow :mod:`kp3d.spatial`: cell ``(i, j)`` (row, column) has its centre at
``(u, v) = (j + 0.5, i + 0.5)`` on the map's own grid; :func:`kp3d.spatial.heatmap_to_image`
maps them to image pixels.

Example:
    >>> import torch
    >>> from kp3d.spatial import gaussian_maps
    >>> maps = gaussian_maps(torch.tensor([[5.3, 2.8]]), 1.0, (8, 10))
    >>> pixels, values = decode_peaks(maps)
    >>> pixels.round(decimals=4), values.round(decimals=3)
    (tensor([[5.3000, 2.8000]]), tensor([0.9370]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_EPS = 1e-10
"""Values are clamped to at least this before the logarithm of the Gaussian fit."""


def _check_maps(maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a torch.Tensor; got {type(maps).__name__}")
    if maps.ndim < 2 or maps.shape[-1] < 1 or maps.shape[-2] < 1:
        raise ValueError(f"maps must have shape (*, H, W) with H, W >= 1; got {tuple(maps.shape)}")


def refine_peaks(
    maps: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, eps: float = LOG_EPS
) -> torch.Tensor:
    """Sub-pixel position of local maxima by a Gaussian fit along each axis (module docstring).

    Args:
        maps: ``(*, H, W)`` heatmaps.
        rows: ``(*, N)`` integer row ``i`` of each of ``N`` peaks per map (each a local maximum
            of its map along both axes: otherwise the offset is still clipped to half a cell).
        columns: ``(*, N)`` integer column ``j`` of each peak.
        eps: smallest value before the logarithm.

    Returns:
        ``(*, N, 2)`` positions ``(u, v) = (j + 0.5 + δu, i + 0.5 + δv)`` on the map's grid.
    """
    _check_maps(maps)
    if rows.shape != columns.shape or rows.shape[:-1] != maps.shape[:-2]:
        raise ValueError(
            f"rows and columns must have shape {(*maps.shape[:-2], 'N')} for maps "
            f"{tuple(maps.shape)}; got {tuple(rows.shape)} and {tuple(columns.shape)}"
        )
    height, width = maps.shape[-2:]
    flat = maps.clamp(min=eps).log().flatten(-2)
    rows, columns = rows.long(), columns.long()

    def log_value(row: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
        index = row.clamp(0, height - 1) * width + column.clamp(0, width - 1)
        return flat.gather(-1, index)

    centre = log_value(rows, columns)

    def offset(before: torch.Tensor, after: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        # At a local maximum the curvature is <= 0, and 0 only on a plateau, where the numerator
        # is 0 too: dividing by min(curvature, -eps) is then exact or 0.
        curvature = (before - 2.0 * centre + after).clamp(max=-eps)
        delta = (0.5 * (before - after) / curvature).clamp(-0.5, 0.5)
        return torch.where(inside, delta, torch.zeros_like(delta))

    delta_u = offset(
        log_value(rows, columns - 1),
        log_value(rows, columns + 1),
        (columns > 0) & (columns < width - 1),
    )
    delta_v = offset(
        log_value(rows - 1, columns),
        log_value(rows + 1, columns),
        (rows > 0) & (rows < height - 1),
    )
    u = columns.to(maps.dtype) + 0.5 + delta_u
    v = rows.to(maps.dtype) + 0.5 + delta_v
    return torch.stack([u, v], dim=-1)


def decode_peaks(maps: torch.Tensor, eps: float = LOG_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The strongest cell of every map, refined below the cell size (module docstring).

    Args:
        maps: ``(*, H, W)`` heatmaps (e.g. ``(B, C, K, S, S)``).
        eps: smallest value before the logarithm of the Gaussian fit.

    Returns:
        ``pixels (*, 2)`` ``(u, v)`` on the map's grid and ``values (*)``, the maximum of each map
        (the detection's confidence).
    """
    _check_maps(maps)
    width = maps.shape[-1]
    values, index = maps.flatten(-2).max(dim=-1)
    rows, columns = index // width, index % width
    pixels = refine_peaks(maps, rows[..., None], columns[..., None], eps)[..., 0, :]
    return pixels, values


def local_maxima(maps: torch.Tensor, threshold: float, window: int = 3) -> torch.Tensor:
    """Non-maximum suppression: the cells that are the maximum of their ``window x window``
    neighbourhood and exceed ``threshold``.

    Ties (a plateau) keep every cell of the plateau; detectors' regressed maps practically never
    tie.

    Args:
        maps: ``(*, H, W)`` heatmaps.
        threshold: smallest value of a peak (strictly exceeded).
        window: odd side of the neighbourhood.

    Returns:
        ``(*, H, W)`` bool mask of the peaks.
    """
    _check_maps(maps)
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd positive int; got {window!r}")
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    pooled = F.max_pool2d(flat, window, stride=1, padding=window // 2).reshape(maps.shape)
    return (maps >= pooled) & (maps > threshold)


def strongest_peaks(
    maps: torch.Tensor, count: int, peaks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` strongest cells of ``peaks`` (e.g. :func:`local_maxima`) per map, as cell
    centres.

    Args:
        maps: ``(N, H, W)`` heatmaps.
        count: ``P``, how many to return per map (fewer if a map has fewer cells).
        peaks: ``(N, H, W)`` bool mask of the cells that may be returned.

    Returns:
        ``pixels (N, P, 2)`` cell centres ``(j + 0.5, i + 0.5)`` on the maps' grid, strongest
        first, and ``valid (N, P)`` bool: False where the map had fewer than ``P`` peaks (those
        rows hold arbitrary cells).
    """
    _check_maps(maps)
    scores = torch.where(peaks, maps, -torch.inf).flatten(1)
    values, index = scores.topk(min(count, scores.shape[1]), dim=1)
    width = maps.shape[-1]
    pixels = torch.stack([index % width, index // width], dim=-1).to(maps.dtype) + 0.5
    return pixels, torch.isfinite(values)


__all__ = ["LOG_EPS", "decode_peaks", "local_maxima", "refine_peaks", "strongest_peaks"]
