"""D2-Net's training loss: the margin ranking loss between the descriptors of corresponding cells
and their hardest negatives, weighted by the soft detection scores of both cells
(:func:`d2net_loss`; :meth:`kp3d.perception.d2net.D2Net.training_losses` feeds it view pairs).

**The loss**: for every cell ``c`` of image ``A`` with a true correspondence in image ``B``
(exact, from the simulator's depth, segmentation and body poses: :mod:`kp3d.correspondence`), the
positive distance ``p(c) = ||d^A_c - d^B_c'||`` to the descriptor of the cell ``c'`` where it lands,
and the hardest negative ``n(c) = min(||d^A_c - d^B_N2||, ||d^A_N1 - d^B_c'||)`` over cells ``N2``
of ``B`` and ``N1`` of ``A`` farther than ``safe_radius`` cells (Chebyshev distance) from ``c'``
and ``c``. The loss is the margin ranking loss ``m(c) = max(0, M + p(c)² - n(c)²)`` weighted by
the detection scores of both cells: ``L = Σ_c s^A_c s^B_c' m(c) / Σ_c s^A_c s^B_c'``, averaged
over pairs of views. The pairs are every ordered pair of two cameras at one time step and every
(camera, camera) pair across two time steps of an episode (:attr:`~kp3d.batch.FrameBatch.pair`),
whose points move with their bodies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kp3d.perception.d2net_network import EPS, dense_descriptors, soft_detection_scores
from kp3d.spatial import image_to_heatmap


def d2net_loss(
    features: torch.Tensor,
    view_pairs: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    image_size: tuple[int, int],
    margin: float = 1.0,
    safe_radius: int = 2,
    min_correspondences: int = 16,
) -> tuple[torch.Tensor, int]:
    """D2-Net's score-weighted margin ranking loss over pairs of images.

    For a pair ``(a, b)``, every cell ``c`` of ``a``'s map is a source; ``target`` holds where
    its point lands in image ``b`` and ``valid`` whether it has a correspondence there. The
    target cell ``c'`` is the cell of ``b`` that contains the target pixel. With unit descriptors
    ``d``, squared distances ``||d - d'||² = 2 - 2 d·d'``: ``p = ||d^a_c - d^b_c'||²``,
    ``n = min(min_{N2} ||d^a_c - d^b_N2||², min_{N1} ||d^a_N1 - d^b_c'||²)`` over cells more than
    ``safe_radius`` cells (Chebyshev distance) from ``c'`` in ``b`` and from ``c`` in ``a``,
    ``m = max(0, margin + p - n)``, and the pair's loss
    ``Σ_c s^a_c s^b_c' m_c / Σ_c s^a_c s^b_c'`` with the soft detection scores ``s``.

    Args:
        features: ``(N, n, h, w)`` feature maps ``F`` of ``N`` images of one size.
        view_pairs: ``(P, 2)`` int64 indices into ``features`` of each pair's images ``a``, ``b``.
        target: ``(P, h·w, 2)`` full-image pixels in image ``b`` of the cells of ``a``, in
            row-major cell order.
        valid: ``(P, h·w)`` bool.
        image_size: ``(H, W)`` of the images.
        margin: ``M``.
        safe_radius: cells (Chebyshev distance) around a correspondence that give no negatives.
        min_correspondences: pairs with fewer valid correspondences are skipped (D2-Net skips
            image pairs with fewer than 128 on its 4x larger maps).

    Returns:
        The mean loss over the pairs used (a zero that keeps the graph if none) and their number.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape (N, n, h, w); got {tuple(features.shape)}")
    count, _, height, width = features.shape
    pairs = view_pairs.shape[0]
    if view_pairs.shape != (pairs, 2) or bool(((view_pairs < 0) | (view_pairs >= count)).any()):
        raise ValueError(
            f"view_pairs must be (P, 2) indices of the {count} feature maps; got "
            f"{tuple(view_pairs.shape)} with values {view_pairs.unique().tolist()}"
        )
    if target.shape != (pairs, height * width, 2) or valid.shape != (pairs, height * width):
        raise ValueError(
            f"target must have shape {(pairs, height * width, 2)} and valid "
            f"{(pairs, height * width)}; got {tuple(target.shape)} and {tuple(valid.shape)}"
        )
    scores = soft_detection_scores(features).flatten(1)  # (N, h·w)
    descriptors = dense_descriptors(features).flatten(2).transpose(1, 2)  # (N, h·w, n)
    rows, columns = torch.meshgrid(
        torch.arange(height, device=target.device),
        torch.arange(width, device=target.device),
        indexing="ij",
    )
    cells = torch.stack([columns, rows], dim=-1).reshape(-1, 2)  # (h·w, 2) column, row
    # window[c]: the cells within the safe radius of cell c (Chebyshev distance; clamping at the
    # border repeats cells that are inside the radius anyway), and whether any cell lies outside.
    steps = torch.arange(-safe_radius, safe_radius + 1, device=target.device)
    window_columns = (cells[:, 0, None, None] + steps[None, None, :]).clamp(0, width - 1)
    window_rows = (cells[:, 1, None, None] + steps[None, :, None]).clamp(0, height - 1)
    window = (window_rows * width + window_columns).flatten(1)  # (h·w, (2r + 1)²)
    extent = torch.stack([cells, cells.new_tensor([width - 1, height - 1]) - cells], dim=-1)
    has_outside = extent.flatten(1).amax(dim=1) > safe_radius  # (h·w,) the farthest cell
    target_cells = image_to_heatmap(target, (height, width), image_size).floor().long()
    target_cells = torch.minimum(
        target_cells.clamp(min=0), target_cells.new_tensor([width - 1, height - 1])
    )
    landed_all = target_cells[..., 1] * width + target_cells[..., 0]  # (P, h·w)

    counts = valid.sum(dim=1)
    kept = counts >= min_correspondences  # (P,) pairs that enter the loss
    used = int(kept.sum())
    if used == 0:
        # Keep the graph so that a step without correspondences backpropagates zeros.
        return features.sum() * 0.0, 0
    # Every correspondence of the kept pairs, pair-major: E entries.
    pair_index, sources = (valid & kept[:, None]).nonzero(as_tuple=True)
    landed = landed_all[pair_index, sources]  # cell c' of each source cell c
    image_a, image_b = view_pairs[pair_index, 0], view_pairs[pair_index, 1]
    anchor = descriptors[image_a, sources]  # (E, n)
    positive = descriptors[image_b, landed]
    # Hardest negatives, pair by pair: the gradient of a minimum flows to the minimiser alone,
    # so they are searched without a graph and their distances recomputed with one.
    hardest_b = torch.empty_like(sources)
    hardest_a = torch.empty_like(sources)
    with torch.no_grad():
        start = 0
        for index in kept.nonzero()[:, 0].tolist():
            rows = slice(start, start + int(counts[index]))
            start = rows.stop
            a, b = view_pairs[index].tolist()
            for query, others, centres, hardest in (
                (anchor, descriptors[b], landed, hardest_b),
                (positive, descriptors[a], sources, hardest_a),
            ):
                # Largest similarity = smallest distance 2 - 2 d·d', outside the safe radius.
                similarity = query[rows] @ others.T  # (V, h·w)
                similarity.scatter_(1, window[centres[rows]], float("-inf"))
                hardest[rows] = similarity.argmax(dim=1)
    free_b, free_a = has_outside[landed], has_outside[sources]
    positive_distance = 2.0 - 2.0 * (anchor * positive).sum(-1)
    # The hardest negative in b for the source's descriptor, and in a for the target's.
    negative_b = 2.0 - 2.0 * (anchor * descriptors[image_b, hardest_b]).sum(-1)
    negative_a = 2.0 - 2.0 * (descriptors[image_a, hardest_a] * positive).sum(-1)
    negative_b = torch.where(free_b, negative_b, float("inf"))
    negative_a = torch.where(free_a, negative_a, float("inf"))
    margins = F.relu(margin + positive_distance - torch.minimum(negative_a, negative_b))
    weights = scores[image_a, sources] * scores[image_b, landed]
    weighted = features.new_zeros(pairs).index_add(0, pair_index, weights * margins)
    total_weight = features.new_zeros(pairs).index_add(0, pair_index, weights)
    return (weighted[kept] / (total_weight[kept] + EPS)).mean(), used


__all__ = ["d2net_loss"]
