"""Self-training's losses: the detector's Gaussian targets, the contrastive loss on descriptors of
corresponding points and its within-image negatives (stages 0 and 1), and the landmark heads' MSE
(stage 2).

The losses of stages 0 and 1
(:meth:`~kp3d.perception.selftrain.SelfTrainingLandmarks.correspondence_losses`): the detector
regresses Gaussians (peak 1) at the labelled points (MSE over the map, on both views,
:func:`target_heatmaps`), and the descriptors are contrastive
(:func:`contrastive_descriptor_loss`): the squared distance between the unit descriptors of points
that correspond is pulled to 0, and *negatives, taken only within one image* (two different
labelled points, or a labelled point and a random location at least ``negative_distance`` away:
:func:`within_image_negatives`), are pushed beyond a margin, ``max(0, margin - ||d_a - d_b||)²``
(the reference's margin 0.8 and weight 10). The loss of stage 2 (:func:`landmark_loss`) is the MSE
of each landmark channel to a Gaussian at its label, on the channels that have one (the
reference's joint-weighted MSE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kp3d.perception.selftrain_network import sample_descriptors
from kp3d.spatial import EPS, gaussian_maps


def target_heatmaps(
    cells: torch.Tensor, valid: torch.Tensor, std: float, size: Sequence[int]
) -> torch.Tensor:
    """The detector's target: the maximum of Gaussians (peak 1) at the valid points.

    Args:
        cells: ``(N, P, 2)`` on the grid.
        valid: ``(N, P)`` bool.
        std: Gaussian std in cells.
        size: ``(S_h, S_w)``.

    Returns:
        ``(N, 1, S_h, S_w)``, zero where there is no point.
    """
    maps = gaussian_maps(cells, std, tuple(size)) * valid[..., None, None]
    if maps.shape[1] == 0:
        return maps.new_zeros(len(cells), 1, *size)
    return maps.amax(dim=1, keepdim=True)


def contrastive_descriptor_loss(
    first: torch.Tensor,
    second: torch.Tensor,
    positives: torch.Tensor,
    negatives: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    margin: float,
) -> torch.Tensor:
    """Mallis et al.'s descriptor loss: ``Σ_pos ||d_a - d_b||² + Σ_neg max(0, m - ||d_a - d_b||)²``
    divided by the number of pairs.

    Args:
        first: ``(N, P, D)`` descriptors of the labelled points of the first views.
        second: ``(N, P, D)`` descriptors of those of the second views.
        positives: ``(N, P, P)`` bool, ``[n, a, b]``: point ``a`` of view 1 corresponds to point
            ``b`` of view 2.
        negatives: for each view, ``(anchors (N, Q, D), others (N, Q, D), mask (N, Q))``: pairs
            within one image pushed apart.
        margin: ``m``.

    Returns:
        Scalar (0 when there is no pair).
    """
    squared = (first[:, :, None] - second[:, None]).square().sum(-1)  # (N, P, P)
    total = (squared * positives).sum()
    count = positives.sum()
    for anchors, others, mask in negatives:
        distance = ((anchors - others).square().sum(-1) + EPS).sqrt()
        total = total + (F.relu(margin - distance).square() * mask).sum()
        count = count + mask.sum()
    return total / count.clamp(min=1)


def within_image_negatives(
    field: torch.Tensor,
    cells: torch.Tensor,
    ids: torch.Tensor,
    points: torch.Tensor,
    grid_size: tuple[int, int],
    negative_distance: float,
    random_negatives: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The negative pairs of one view of each pair, all within one image: every two different
    labelled points, and each labelled point with ``random_negatives`` random locations; a pair
    counts if its points lie at least ``negative_distance`` (a fraction of the grid's side) apart.

    Args:
        field: ``(N, D, S_h, S_w)`` the views' descriptor field.
        cells: ``(N, P, 2)`` labelled points on the grid.
        ids: ``(N, P)`` their labels, -1 for none.
        points: ``(N, P, D)`` their descriptors (:func:`sample_descriptors`).
        grid_size: ``(S_h, S_w)``.
        negative_distance: smallest distance of a negative pair, as a fraction of the grid's side.
        random_negatives: random locations per labelled point.
        generator: random source of the locations (CPU; ``None``: torch's global one).

    Returns:
        ``anchors (N, Q, D)``, ``others (N, Q, D)`` and ``mask (N, Q)``, as
        :func:`contrastive_descriptor_loss` reads them.
    """
    count, size = cells.shape[1], min(grid_size)
    valid = ids >= 0
    first, second = torch.triu_indices(count, count, 1, device=cells.device)
    far = (cells[:, first] - cells[:, second]).norm(dim=-1) >= negative_distance * size
    anchors, others = [points[:, first]], [points[:, second]]
    masks = [valid[:, first] & valid[:, second] & far]
    if random_negatives:
        extent = cells.new_tensor([grid_size[1], grid_size[0]])
        shape = (len(cells), count * random_negatives, 2)
        locations = torch.rand(shape, generator=generator, dtype=cells.dtype)
        locations = locations.to(cells.device) * extent
        repeated = cells.repeat_interleave(random_negatives, dim=1)
        far = (locations - repeated).norm(dim=-1) >= negative_distance * size
        anchors.append(points.repeat_interleave(random_negatives, dim=1))
        others.append(sample_descriptors(field, locations))
        masks.append(valid.repeat_interleave(random_negatives, dim=1) & far)
    return torch.cat(anchors, dim=1), torch.cat(others, dim=1), torch.cat(masks, dim=1)


def landmark_loss(
    maps: torch.Tensor, cells: torch.Tensor, ids: torch.Tensor, std: float
) -> torch.Tensor:
    """Stage 2: MSE of each landmark channel to a Gaussian at its label, on the channels that
    have one (the reference's joint-weighted MSE).

    Args:
        maps: ``(N, K, S_h, S_w)`` landmark maps.
        cells: ``(N, P, 2)`` labelled points on the grid.
        ids: ``(N, P)`` their landmark (``K``-cluster), -1 for none; at most one point per
            landmark and view (the clustering's rule).
        std: Gaussian std in cells.

    Returns:
        Scalar (0 when no channel has a label).
    """
    count = maps.shape[1]
    # One point per landmark and view (the clustering's rule): scatter them to channels.
    owner = F.one_hot(ids.clamp(min=0), count).to(cells.dtype) * (ids >= 0)[..., None]
    channel_cells = torch.einsum("npk,npc->nkc", owner, cells)
    labelled = owner.sum(dim=1) > 0  # (N, K)
    target = gaussian_maps(channel_cells, std, tuple(maps.shape[-2:]))
    errors = (maps - target).square().mean(dim=(-2, -1))
    return (errors * labelled).sum() / labelled.sum().clamp(min=1)


__all__ = [
    "contrastive_descriptor_loss",
    "landmark_loss",
    "target_heatmaps",
    "within_image_negatives",
]
