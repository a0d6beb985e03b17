"""Exact pixel correspondences between calibrated views, from the simulator's ground truth.

A pixel ``p`` of view ``a`` sees the surface point ``X = unproject(p, depth_a(p))`` of the body
``b = segmentation_a(p)``. The same material point is, in view ``b`` (another camera, another time
step, or both):

* **same time step**: ``X`` itself;
* **another time step** (a second frame of the episode, with the body poses of both steps): the
  point moves rigidly with its body, ``X' = pose'_b · pose_b⁻¹ · X`` (world → body-local at the
  first step, body-local → world at the second), where ``pose`` is the body→world transform.

Projecting ``X'`` into view ``b`` gives the pixel ``q`` and the depth ``z`` the point would have
there. The correspondence ``p ↔ q`` is kept only if

1. ``q`` lies inside the image and ``z > 0`` (in front of the camera);
2. the depth map of view ``b`` at ``q`` agrees with ``z`` within ``depth_tolerance`` (otherwise
   something else is in front: the point is occluded);
3. the segmentation of view ``b`` at ``q`` shows the same body (a second occlusion check that
   does not depend on depth resolution, and that rejects points on silhouettes).

Depth maps are sampled bilinearly at continuous pixels (as D2-Net's reference implementation
does), on the grid of pixel centres of :mod:`kp3d.geometry`'s convention: the depth map's value in
row ``i``, column ``j`` belongs to the pixel centre ``(j + 0.5, i + 0.5)``. A point's body is read
from the (up to four) pixels whose centres surround it, and only a body that all of them show
counts: a point near a silhouette, whose interpolated depth mixes two surfaces, has no body and
makes no correspondence. Within half a pixel of the image border the nearest pixels are used.

Shapes: ``B`` batch (pairs of views), ``P`` points per view, ``N`` bodies, depth and
segmentation maps ``H x W``. Pure torch, differentiable where it makes sense (not through the
integer segmentation), no environment needed.

Example:
    >>> import torch
    >>> K = torch.tensor([[[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]]])
    >>> T = torch.eye(4)[None]
    >>> depth, segmentation = torch.full((1, 32, 32), 2.0), torch.zeros(1, 32, 32, dtype=torch.long)
    >>> found = find_correspondences(
    ...     torch.tensor([[[10.5, 20.5]]]), depth, segmentation, K, T, depth, segmentation, K, T
    ... )
    >>> found.target, found.valid
    (tensor([[[10.5000, 20.5000]]]), tensor([[True]]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kp3d.geometry import invert_extrinsics, project, transform_points, unproject

DEPTH_TOLERANCE = 0.01
"""Default largest difference (m) between a point's depth in the target view and the target's
depth map for the point to count as visible there. Bodies of the kp3d scenes are at least ~2 cm
thick, so an occluder is further than this in front; interpolating the depth of a smooth surface
between pixel centres and the depth maps' half-precision storage (1 mm at 2 m) stay well below
it."""


@dataclass
class Correspondences:
    """Where points of view ``a`` land in view ``b``.

    Attributes:
        source: ``(B, P, 2)`` pixels ``(u, v)`` in view ``a``.
        target: ``(B, P, 2)`` pixels in view ``b`` where the same material point projects (finite
            wherever the source has a body; meaningless unless ``valid``).
        valid: ``(B, P)`` bool: the source is on a body and the point is visible in view ``b``
            (inside the image, in front, not occluded, on the same body).
        bodies: ``(B, P)`` int64 body id of each source point, -1 where it has none.
        target_depth: ``(B, P)`` the point's camera-frame depth in view ``b`` (m).
        points: ``(B, P, 3)`` the point in the world frame at the time of view ``b``.
    """

    source: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor
    bodies: torch.Tensor
    target_depth: torch.Tensor
    points: torch.Tensor


def _check_maps(depth: torch.Tensor, segmentation: torch.Tensor, suffix: str = "") -> None:
    if depth.ndim != 3:
        raise ValueError(f"depth{suffix} must have shape (B, H, W); got {tuple(depth.shape)}")
    if segmentation.shape != depth.shape:
        raise ValueError(
            f"segmentation{suffix} must have the shape of depth{suffix} {tuple(depth.shape)}; "
            f"got {tuple(segmentation.shape)}"
        )
    if segmentation.is_floating_point():
        raise TypeError(
            f"segmentation{suffix} must hold integer body ids; got {segmentation.dtype}"
        )


def sample_maps(
    depth: torch.Tensor, segmentation: torch.Tensor, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth and body of views at continuous pixels.

    Args:
        depth: ``(B, H, W)`` camera-frame depth (m) at the pixel centres.
        segmentation: ``(B, H, W)`` integer body id per pixel, -1 for background.
        pixels: ``(B, P, 2)`` pixels ``(u, v)`` (:mod:`kp3d.geometry` convention).

    Returns:
        ``depth (B, P)`` interpolated bilinearly between the four surrounding pixel centres
        (border pixels repeated outward), ``bodies (B, P)`` int64 body id shared by those pixels
        (-1 if they differ, or for background) and ``inside (B, P)`` bool,
        ``0 <= u < W and 0 <= v < H`` (NaN pixels are outside).
    """
    _check_maps(depth, segmentation)
    if pixels.ndim != 3 or pixels.shape[0] != depth.shape[0] or pixels.shape[-1] != 2:
        raise ValueError(
            f"pixels must have shape ({depth.shape[0]}, P, 2) for maps {tuple(depth.shape)}; got "
            f"{tuple(pixels.shape)}"
        )
    height, width = depth.shape[-2:]
    size = pixels.new_tensor([width, height])
    inside = ((pixels >= 0) & (pixels < size)).all(dim=-1)
    # Off-image and NaN pixels are sampled at the origin instead; `inside` marks them.
    safe = torch.where(inside[..., None], pixels, torch.zeros_like(pixels))

    # grid_sample with align_corners=False: -1 and 1 are the outer edges of the border pixels,
    # and map values sit at pixel centres: exactly the geometry convention.
    grid = (2.0 * safe / size - 1.0)[:, None]  # (B, 1, P, 2)
    sampled = F.grid_sample(
        depth[:, None].to(pixels.dtype),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[:, 0, 0]

    # The four pixels whose centres surround the point (clamped at the border).
    low = torch.floor(safe - 0.5).long()  # (B, P, 2) column, row of the top-left one
    columns = torch.stack([low[..., 0], low[..., 0] + 1], dim=-1).clamp(0, width - 1)
    rows = torch.stack([low[..., 1], low[..., 1] + 1], dim=-1).clamp(0, height - 1)
    flat = (rows[..., :, None] * width + columns[..., None, :]).flatten(-2)  # (B, P, 4)
    neighbours = segmentation.flatten(1).long().gather(1, flat.flatten(1)).view(flat.shape)
    bodies = neighbours[..., 0]
    agree = (neighbours == bodies[..., None]).all(dim=-1) & (bodies >= 0) & inside
    bodies = torch.where(agree, bodies, torch.full_like(bodies, -1))
    return sampled, bodies, inside


def move_with_bodies(
    points: torch.Tensor, bodies: torch.Tensor, poses_from: torch.Tensor, poses_to: torch.Tensor
) -> torch.Tensor:
    """Carry world points along with the rigid bodies they lie on, from one time step to another.

    ``X' = pose_to[b] · pose_from[b]⁻¹ · X``: world → body-local at the first step, body-local →
    world at the second.

    Args:
        points: ``(B, P, 3)`` world points at the first step.
        bodies: ``(B, P)`` int64 body of each point in ``[0, N)``; points with a negative id are
            returned unchanged.
        poses_from: ``(B, N, 4, 4)`` body→world transforms at the first step.
        poses_to: ``(B, N, 4, 4)`` body→world transforms at the second step.

    Returns:
        ``(B, P, 3)`` world points at the second step.
    """
    if (
        poses_from.ndim != 4
        or poses_from.shape[-2:] != (4, 4)
        or poses_to.shape != poses_from.shape
    ):
        raise ValueError(
            "poses_from and poses_to must both have shape (B, N, 4, 4); got "
            f"{tuple(poses_from.shape)} and {tuple(poses_to.shape)}"
        )
    count = poses_from.shape[1]
    if bool((bodies >= count).any()):
        raise ValueError(
            f"body ids must be below the number of body poses N = {count}; got up to "
            f"{int(bodies.max())}"
        )
    index = bodies.clamp(min=0)
    batch = torch.arange(bodies.shape[0], device=bodies.device)[:, None]
    # One transform per point: (B, P, 4, 4), applied to (B, P, 1, 3).
    motion = poses_to[batch, index] @ invert_extrinsics(poses_from[batch, index])
    moved = transform_points(motion.to(points.dtype), points[..., None, :])[..., 0, :]
    return torch.where((bodies >= 0)[..., None], moved, points)


def find_correspondences(
    pixels_a: torch.Tensor,
    depth_a: torch.Tensor,
    segmentation_a: torch.Tensor,
    intrinsics_a: torch.Tensor,
    extrinsics_a: torch.Tensor,
    depth_b: torch.Tensor,
    segmentation_b: torch.Tensor,
    intrinsics_b: torch.Tensor,
    extrinsics_b: torch.Tensor,
    body_poses_a: torch.Tensor | None = None,
    body_poses_b: torch.Tensor | None = None,
    depth_tolerance: float = DEPTH_TOLERANCE,
) -> Correspondences:
    """Where the surface points seen at ``pixels_a`` in view ``a`` appear in view ``b``.

    See the module docstring for the rule. Give ``body_poses_a`` and ``body_poses_b`` when the
    two views are of different time steps (the points then move with their bodies); leave both
    out for two views of one time step.

    Args:
        pixels_a: ``(B, P, 2)`` pixels of view ``a``.
        depth_a: ``(B, H, W)`` depth map of view ``a`` (m).
        segmentation_a: ``(B, H, W)`` body ids of view ``a`` (-1 background).
        intrinsics_a: ``(B, 3, 3)`` of view ``a``.
        extrinsics_a: ``(B, 4, 4)`` world→camera of view ``a``.
        depth_b: ``(B, H', W')`` depth map of view ``b``.
        segmentation_b: ``(B, H', W')`` body ids of view ``b``.
        intrinsics_b: ``(B, 3, 3)`` of view ``b``.
        extrinsics_b: ``(B, 4, 4)`` of view ``b``.
        body_poses_a: ``(B, N, 4, 4)`` body→world transforms at the time of view ``a``.
        body_poses_b: ``(B, N, 4, 4)`` at the time of view ``b``.
        depth_tolerance: largest ``|z - depth_b(q)|`` (m) of a visible point.

    Returns:
        :class:`Correspondences`.

    Raises:
        ValueError: for mismatched shapes, only one of the two pose sets, or a non-positive
            tolerance.
    """
    _check_maps(depth_a, segmentation_a, "_a")
    _check_maps(depth_b, segmentation_b, "_b")
    if (body_poses_a is None) != (body_poses_b is None):
        raise ValueError(
            "give both body_poses_a and body_poses_b (views of two time steps) or none"
        )
    if not depth_tolerance > 0:
        raise ValueError(f"depth_tolerance must be positive; got {depth_tolerance!r}")
    batch = depth_a.shape[0]
    for name, matrix, size in (
        ("intrinsics_a", intrinsics_a, 3),
        ("extrinsics_a", extrinsics_a, 4),
        ("intrinsics_b", intrinsics_b, 3),
        ("extrinsics_b", extrinsics_b, 4),
    ):
        if tuple(matrix.shape) != (batch, size, size):
            raise ValueError(
                f"{name} must have shape ({batch}, {size}, {size}); got {tuple(matrix.shape)}"
            )
    dtype = pixels_a.dtype
    source_depth, bodies, _ = sample_maps(depth_a, segmentation_a, pixels_a)
    points = unproject(pixels_a, source_depth, intrinsics_a.to(dtype), extrinsics_a.to(dtype))
    if body_poses_a is not None:
        points = move_with_bodies(points, bodies, body_poses_a, body_poses_b)
    target, target_depth = project(points, intrinsics_b.to(dtype), extrinsics_b.to(dtype))
    seen_depth, seen_bodies, inside = sample_maps(depth_b, segmentation_b, target)
    valid = (
        (bodies >= 0)
        & inside
        & (target_depth > 0)
        & ((target_depth - seen_depth).abs() <= depth_tolerance)
        & (seen_bodies == bodies)
    )
    return Correspondences(pixels_a, target, valid, bodies, target_depth, points)


__all__ = [
    "DEPTH_TOLERANCE",
    "Correspondences",
    "find_correspondences",
    "move_with_bodies",
    "sample_maps",
]
