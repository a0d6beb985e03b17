"""Self-training's clustering: K-means of descriptors under Mallis et al.'s rule that a cluster
takes at most one point per image, the one nearest its centroid (:func:`constrained_kmeans`, twice
in :func:`cluster_twice`), and the labels of new points by those centroids (:func:`cluster_labels`).
"""

from __future__ import annotations

import warnings

import torch
from scipy.cluster.vq import kmeans2


def nearest_per_cluster(
    groups: torch.Tensor, clusters: torch.Tensor, distances: torch.Tensor
) -> torch.Tensor:
    """Keep, in every group (image), only the point of each cluster nearest its centroid.

    Args:
        groups: ``(P,)`` integer group (image) of each point.
        clusters: ``(P,)`` integer cluster of each point; negative: not in any (never kept).
        distances: ``(P,)`` distance of each point to its cluster's centroid; ties are broken by
            the point's index.

    Returns:
        ``(P,)`` bool: kept points. No two kept points share both a group and a cluster.
    """
    if not groups.shape == clusters.shape == distances.shape or groups.ndim != 1:
        raise ValueError(
            "groups, clusters and distances must be 1-D of one length; got "
            f"{tuple(groups.shape)}, {tuple(clusters.shape)}, {tuple(distances.shape)}"
        )
    keep = torch.zeros(len(groups), dtype=torch.bool, device=groups.device)
    members = torch.nonzero(clusters >= 0)[:, 0]
    if len(members) == 0:
        return keep
    # Sort by distance, then (stably) by (group, cluster): each run of one (group, cluster)
    # starts with its nearest point.
    by_distance = members[torch.argsort(distances[members], stable=True)]
    key = groups[by_distance].long() * (int(clusters.max()) + 1) + clusters[by_distance].long()
    by_key = torch.argsort(key, stable=True)
    key = key[by_key]
    first = torch.ones_like(key, dtype=torch.bool)
    first[1:] = key[1:] != key[:-1]
    keep[by_distance[by_key[first]]] = True
    return keep


def assign_to_centroids(
    features: torch.Tensor, groups: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Nearest-centroid assignment under the one-point-per-group-per-cluster rule.

    Args:
        features: ``(P, D)`` points.
        groups: ``(P,)`` group (image) of each point; negative: ignored (not assigned).
        centroids: ``(k, D)``.

    Returns:
        ``(P,)`` long: each point's cluster, or -1 if it was ignored or another point of its group
        is nearer the centroid of that cluster.
    """
    if len(features) == 0:
        return torch.full_like(groups, -1, dtype=torch.long)
    distances, clusters = torch.cdist(features, centroids.to(features.dtype)).min(dim=1)
    clusters = torch.where(groups >= 0, clusters, -1)
    keep = nearest_per_cluster(groups, clusters, distances)
    return torch.where(keep, clusters, -1)


def constrained_kmeans(
    features: torch.Tensor,
    groups: torch.Tensor,
    k: int,
    iterations: int = 30,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means (``scipy.cluster.vq.kmeans2``, k-means++ initialisation) whose clusters take at most
    one point per group, the point nearest the centroid (Mallis et al.).

    Every point is assigned to its nearest centroid; in each group, of the points of one cluster
    only the nearest to its centroid is kept, the others are left out (cluster -1), as in the
    reference implementation.

    Args:
        features: ``(P, D)`` descriptors (e.g. unit vectors).
        groups: ``(P,)`` the group (image) of each point.
        k: number of clusters, at most ``P``.
        iterations: Lloyd iterations.
        seed: seed of the initialisation.

    Returns:
        ``centroids (k, D)`` and ``clusters (P,)`` long (-1: left out), on ``features``' device.

    Raises:
        ValueError: if there are fewer points than clusters.
    """
    if features.ndim != 2 or groups.shape != features.shape[:1]:
        raise ValueError(
            f"features must be (P, D) and groups (P,); got {tuple(features.shape)} and "
            f"{tuple(groups.shape)}"
        )
    if not 1 <= k <= len(features):
        raise ValueError(f"cannot make {k} clusters of {len(features)} points")
    data = features.detach().double().cpu().numpy()
    with warnings.catch_warnings():
        # An emptied cluster keeps its centroid (scipy warns): harmless for the labels.
        warnings.simplefilter("ignore")
        centroids, _ = kmeans2(data, k, iter=iterations, minit="++", seed=seed)
    centroids = torch.as_tensor(centroids, dtype=features.dtype, device=features.device)
    return centroids, assign_to_centroids(features.detach(), groups, centroids)


def cluster_twice(
    features: torch.Tensor,
    groups: torch.Tensor,
    k: int,
    m: int,
    iterations: int = 30,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mallis et al.'s two clusterings: the points into ``k`` clusters (each group keeps at most
    one point per cluster), then the kept points into ``m`` clusters (:func:`constrained_kmeans`,
    both with the same seed).

    Args:
        features: ``(P, D)`` descriptors.
        groups: ``(P,)`` the group (image) of each point.
        k: the coarse clusters (landmarks), at most ``P``.
        m: the fine clusters; fewer (with a warning) if fewer points were kept.
        iterations: Lloyd iterations of each K-means.
        seed: seed of the initialisations.

    Returns:
        ``coarse (k, D)`` and ``fine (m', D)`` centroids, ``m' = min(m, kept points)``, and
        ``kept (P,)`` bool, the points the coarse clustering kept.
    """
    coarse, clusters = constrained_kmeans(features, groups, k, iterations, seed)
    kept = clusters >= 0
    count = min(m, int(kept.sum()))
    if count < m:
        warnings.warn(
            f"recluster: only {int(kept.sum())} points kept; using M = {count} clusters "
            f"instead of {m}",
            stacklevel=3,  # the caller of SelfTrainingLandmarks.recluster
        )
    fine, _ = constrained_kmeans(features[kept], groups[kept], count, iterations, seed)
    return coarse, fine, kept


def cluster_labels(
    descriptors: torch.Tensor,
    valid: torch.Tensor,
    coarse: torch.Tensor,
    fine: torch.Tensor | None = None,
) -> torch.Tensor:
    """Labels of the points of images by the centroids of :func:`cluster_twice`, under the
    one-point-per-cluster-per-image rule (:func:`assign_to_centroids`).

    Args:
        descriptors: ``(N, P, D)`` descriptors of the points of ``N`` images.
        valid: ``(N, P)`` bool: points that exist.
        coarse: ``(k, D)`` centroids: each image keeps at most one point per coarse cluster.
        fine: ``(m, D)`` centroids, or ``None``.

    Returns:
        ``(N, P)`` long: each kept point's fine cluster (with ``fine``) or coarse cluster
        (without), -1 for none.
    """
    groups = torch.arange(len(valid), device=valid.device)[:, None].expand_as(valid)
    groups = torch.where(valid, groups, -1).flatten()
    flat = descriptors.flatten(0, 1)
    ids = assign_to_centroids(flat, groups, coarse)
    if fine is not None:
        kept = torch.where(ids >= 0, groups, -1)
        ids = assign_to_centroids(flat, kept, fine)
    return ids.reshape(valid.shape)


__all__ = [
    "assign_to_centroids",
    "cluster_labels",
    "cluster_twice",
    "constrained_kmeans",
    "nearest_per_cluster",
]
