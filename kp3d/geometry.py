"""The one camera convention of kp3d: pinhole projection and unprojection.

Every module of the package (the environments' ground truth, the perception modules, the video
renderer) projects, unprojects and aims look-at cameras (:func:`look_at`) through these
functions; nobody re-derives them.

Convention (OpenCV):

* **Extrinsics** ``T (*, 4, 4)`` map *world* coordinates to *camera* coordinates:
  ``x_cam = R @ x_world + t`` with ``T = [[R, t], [0, 0, 0, 1]]``.
* **Camera frame**: x points right, y points down, z points forward (into the scene). A point is in
  front of the camera when its camera-frame z is positive; that z is its **depth** (not the distance
  along the ray).
* **Intrinsics** ``K (*, 3, 3) = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` map camera coordinates to
  **pixels**: ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.
* **Pixels** are continuous coordinates ``(u, v)``: u to the right, v down; ``(0, 0)`` is the
  top-left corner of the top-left pixel, so the centre of the pixel in row ``i`` and column ``j``
  is ``(j + 0.5, i + 0.5)`` and an image of width W spans ``0 <= u <= W``.

The functions are written with operators only, so they accept NumPy arrays and PyTorch tensors
alike (and are differentiable for tensors). Leading dimensions broadcast.

Example:
    >>> import numpy as np
    >>> K = np.array([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
    >>> T = np.eye(4)
    >>> uv, z = project(np.array([[0.1, -0.2, 2.0]]), K, T)
    >>> uv, z
    (array([[34.5, 27. ]]), array([2.]))
    >>> unproject(uv, z, K, T)
    array([[ 0.1, -0.2,  2. ]])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Array = TypeVar("Array", "np.ndarray", "torch.Tensor")

DEPTH_EPS = 1e-6
"""Smallest depth used as a divisor: points at or behind the camera plane project far away
instead of producing inf/nan (check ``depth > 0`` to know whether a point is in front)."""


def _transpose(a: Array) -> Array:
    return a.swapaxes(-1, -2)


def _concat(arrays: list[Array], axis: int = -1) -> Array:
    """Concatenate NumPy arrays or torch tensors along ``axis``."""
    if isinstance(arrays[0], np.ndarray):
        return np.concatenate(arrays, axis=axis)
    import torch

    return torch.cat(arrays, dim=axis)


def _check_points(points: Array, name: str, dim: int) -> None:
    if points.ndim < 2 or points.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (*, N, {dim}); got {tuple(points.shape)}")


def _check_matrices(matrices: Array, name: str, size: int) -> None:
    if matrices.ndim < 2 or tuple(matrices.shape[-2:]) != (size, size):
        raise ValueError(f"{name} must have shape (*, {size}, {size}); got {tuple(matrices.shape)}")


def _focal_and_centre(intrinsics: Array) -> tuple[Array, Array]:
    """``(fx, fy)`` and ``(cx, cy)`` as ``(*, 1, 2)`` (basic slicing: no index arrays)."""
    return intrinsics.diagonal(0, -2, -1)[..., None, :2], intrinsics[..., None, :2, 2]


def transform_points(transform: Array, points: Array) -> Array:
    """Apply rigid/affine transforms to points.

    Args:
        transform: ``(*, 4, 4)`` homogeneous transforms.
        points: ``(*, N, 3)`` points.

    Returns:
        ``(*, N, 3)``: ``R @ p + t`` for every point.
    """
    _check_matrices(transform, "transform", 4)
    _check_points(points, "points", 3)
    rotation = transform[..., :3, :3]
    translation = transform[..., None, :3, 3]
    return points @ _transpose(rotation) + translation


def invert_extrinsics(extrinsics: Array) -> Array:
    """Invert rigid transforms exactly (``[R, t]^-1 = [R^T, -R^T t]``).

    Args:
        extrinsics: ``(*, 4, 4)`` rigid transforms (world→camera).

    Returns:
        ``(*, 4, 4)`` inverse transforms (camera→world).
    """
    _check_matrices(extrinsics, "extrinsics", 4)
    rotation_t = _transpose(extrinsics[..., :3, :3])
    top = _concat([rotation_t, -(rotation_t @ extrinsics[..., :3, 3:])], axis=-1)
    return _concat([top, extrinsics[..., 3:, :]], axis=-2)


def world_to_camera(points_world: Array, extrinsics: Array) -> Array:
    """Change of frame world → camera.

    Args:
        points_world: ``(*, N, 3)`` world points.
        extrinsics: ``(*, 4, 4)`` world→camera transforms.

    Returns:
        ``(*, N, 3)`` camera-frame points (z = depth).
    """
    _check_matrices(extrinsics, "extrinsics", 4)
    _check_points(points_world, "points_world", 3)
    return transform_points(extrinsics, points_world)


def camera_to_world(points_camera: Array, extrinsics: Array) -> Array:
    """Change of frame camera → world (inverse of :func:`world_to_camera`).

    Args:
        points_camera: ``(*, N, 3)`` camera-frame points.
        extrinsics: ``(*, 4, 4)`` world→camera transforms.

    Returns:
        ``(*, N, 3)`` world points.
    """
    _check_matrices(extrinsics, "extrinsics", 4)
    _check_points(points_camera, "points_camera", 3)
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., None, :3, 3]
    # x_world = R^T (x_cam - t); right-multiplying row vectors by R applies R^T.
    return (points_camera - translation) @ rotation


def project_camera(points_camera: Array, intrinsics: Array, eps: float = DEPTH_EPS) -> Array:
    """Pinhole projection of camera-frame points to pixels.

    ``u = fx * x / z + cx``, ``v = fy * y / z + cy``; z is clamped to ``eps`` before dividing.

    Args:
        points_camera: ``(*, N, 3)`` camera-frame points.
        intrinsics: ``(*, 3, 3)`` camera matrices.
        eps: smallest divisor.

    Returns:
        ``(*, N, 2)`` pixel coordinates ``(u, v)``.
    """
    _check_matrices(intrinsics, "intrinsics", 3)
    _check_points(points_camera, "points_camera", 3)
    depth = points_camera[..., 2:3].clip(min=eps)
    focal, centre = _focal_and_centre(intrinsics)
    return points_camera[..., :2] / depth * focal + centre


def unproject_camera(pixels: Array, depth: Array, intrinsics: Array) -> Array:
    """Lift pixels with known depth to camera-frame points (inverse of :func:`project_camera`).

    ``x = (u - cx) * z / fx``, ``y = (v - cy) * z / fy``.

    Args:
        pixels: ``(*, N, 2)`` pixel coordinates.
        depth: ``(*, N)`` camera-frame z of each point.
        intrinsics: ``(*, 3, 3)`` camera matrices.

    Returns:
        ``(*, N, 3)`` camera-frame points.
    """
    _check_matrices(intrinsics, "intrinsics", 3)
    _check_points(pixels, "pixels", 2)
    if tuple(depth.shape) != tuple(pixels.shape[:-1]):
        raise ValueError(
            f"depth must have shape {tuple(pixels.shape[:-1])} to match pixels "
            f"{tuple(pixels.shape)}; got {tuple(depth.shape)}"
        )
    focal, centre = _focal_and_centre(intrinsics)
    z = depth[..., None]
    return _concat([(pixels - centre) / focal * z, z])


def project(
    points_world: Array, intrinsics: Array, extrinsics: Array, eps: float = DEPTH_EPS
) -> tuple[Array, Array]:
    """Project world points into cameras.

    Args:
        points_world: ``(*, N, 3)`` world points.
        intrinsics: ``(*, 3, 3)`` camera matrices.
        extrinsics: ``(*, 4, 4)`` world→camera transforms.
        eps: smallest depth divisor.

    Returns:
        ``pixels (*, N, 2)`` and ``depth (*, N)`` (camera-frame z; ``> 0`` in front of the camera).
    """
    points_camera = world_to_camera(points_world, extrinsics)
    return project_camera(points_camera, intrinsics, eps), points_camera[..., 2]


def unproject(pixels: Array, depth: Array, intrinsics: Array, extrinsics: Array) -> Array:
    """Lift pixels with known depth to world points (inverse of :func:`project`).

    Args:
        pixels: ``(*, N, 2)`` pixel coordinates.
        depth: ``(*, N)`` camera-frame z.
        intrinsics: ``(*, 3, 3)`` camera matrices.
        extrinsics: ``(*, 4, 4)`` world→camera transforms.

    Returns:
        ``(*, N, 3)`` world points.
    """
    return camera_to_world(unproject_camera(pixels, depth, intrinsics), extrinsics)


def camera_centers(extrinsics: Array) -> Array:
    """Optical centres of cameras in world coordinates.

    Args:
        extrinsics: ``(*, 4, 4)`` world→camera transforms.

    Returns:
        ``(*, 3)`` centres ``-R^T t``.
    """
    _check_matrices(extrinsics, "extrinsics", 4)
    return camera_to_world(extrinsics[..., None, :3, 3] * 0.0, extrinsics)[..., 0, :]


def look_at(
    eye: np.ndarray, target: np.ndarray, up: np.ndarray | tuple[float, float, float] = (0, 0, 1)
) -> np.ndarray:
    """World→camera extrinsics of a camera at ``eye`` looking at ``target``, with ``up`` pointing
    up in the image: the one route from a camera's position and aim to its matrix.

    The rotation's rows are the camera's axes in world coordinates: ``forward`` (z) is the unit
    vector from ``eye`` to ``target``, ``right`` (x) is ``forward x up`` normalised, and ``down``
    (y) is ``forward x right``; the translation is ``-R @ eye``. ``up`` need not be perpendicular
    to the view direction, only not parallel to it. One camera, NumPy only (placing a camera is
    not a differentiable step).

    Args:
        eye: ``(3,)`` camera centre in world coordinates.
        target: ``(3,)`` point looked at (it projects onto the principal point).
        up: ``(3,)`` world direction shown up in the image (default: world z).

    Returns:
        ``(4, 4)`` float64 world→camera transform (:func:`camera_centers` gives ``eye`` back).

    Raises:
        ValueError: if ``eye`` equals ``target`` or the view direction is parallel to ``up``.

    Example:
        >>> T = look_at(np.array([0.0, -2.0, 0.0]), np.zeros(3))  # from -y, looking along +y
        >>> T[:3, :3]  # rows: right = +x, down = -z, forward = +y
        array([[ 1.,  0.,  0.],
               [ 0.,  0., -1.],
               [ 0.,  1.,  0.]])
        >>> T[:3, 3]
        array([0., 0., 2.])
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    for array, name in ((eye, "eye"), (target, "target"), (up, "up")):
        if array.shape != (3,):
            raise ValueError(f"{name} must have shape (3,); got {array.shape}")
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm == 0:
        raise ValueError("look_at needs eye and target apart")
    forward /= norm
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"the view direction {forward} is parallel to up {up}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = np.stack([right, down, forward])
    extrinsics[:3, 3] = -extrinsics[:3, :3] @ eye
    return extrinsics


def _where(condition: Array, a: Array | float, b: Array | float) -> Array:
    """``np.where`` / ``torch.where`` by the backend of ``condition``."""
    if isinstance(condition, np.ndarray):
        return np.where(condition, a, b)
    import torch

    return torch.where(condition, a, b)


def _constant_like(value: np.ndarray, like: Array) -> Array:
    """A NumPy constant in the backend, dtype and device of ``like``."""
    if isinstance(like, np.ndarray):
        return value.astype(like.dtype)
    import torch

    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _smallest_right_singular_vector(matrices: Array) -> Array:
    """``(*, M, 4)`` with ``M >= 4`` → ``(*, 4)`` unit vectors minimising ``||A x||``."""
    if isinstance(matrices, np.ndarray):
        return np.linalg.svd(matrices)[2][..., -1, :]
    import torch

    # full_matrices=False: the reduced SVD has a backward pass (M >= 4 gives all four vectors).
    return torch.linalg.svd(matrices, full_matrices=False).Vh[..., -1, :]


def triangulate(
    points: Array,
    intrinsics: Array,
    extrinsics: Array,
    weights: Array | None = None,
    eps: float = DEPTH_EPS,
) -> Array:
    """Confidence-weighted linear (DLT) triangulation of points seen by several cameras.

    For each point ``k``, every camera ``c`` adds two rows to a homogeneous system ``A X = 0`` in
    the world point ``X = (x, y, z, 1)``:

    ``w_ck (x̂_ck P_c³ - P_c¹)`` and ``w_ck (ŷ_ck P_c³ - P_c²)``,

    where ``P_cⁱ`` is row ``i`` of ``[R_c | t_c]`` (the top of ``extrinsics``) and
    ``(x̂, ŷ) = ((u - cx) / fx, (v - cy) / fy)`` are the observation's normalised image coordinates
    (the inverse of :func:`project_camera`'s pinhole model). The solution is the right singular
    vector of ``A`` for its smallest singular value, dehomogenised. Working in normalised rather
    than pixel coordinates keeps ``A`` well conditioned whatever the focal length (Hartley's
    normalisation of the image side). Each row's residual is the camera-frame depth times the
    angular error ``x̂ - x̂(X)``: an algebraic, not a reprojection, error; noise-free observations
    from two or more distinct camera centres give the point exactly.

    Rows are *multiplied* by the weights (residuals weighted by ``w²``, as in the algebraic
    triangulation of Iskakov et al., ICCV 2019), so scaling all weights of a point changes
    nothing, and an observation of weight 0 is ignored whatever its pixels hold (NaN included:
    neither the value nor a gradient reaches the result). Differentiable for tensors (through
    ``torch.linalg.svd``, whose gradient is finite while the two smallest singular values of
    ``A`` differ: true for any point seen from two distinct centres).

    Args:
        points: ``(*, C, K, 2)`` pixels ``(u, v)`` of ``K`` points in each of ``C`` cameras.
        intrinsics: ``(*, C, 3, 3)`` camera matrices (leading dimensions broadcast).
        extrinsics: ``(*, C, 4, 4)`` world→camera transforms.
        weights: ``(*, C, K)`` non-negative confidence of each observation (e.g. a heatmap's peak
            value); ``None``: all 1.
        eps: smallest ``|X₄|`` divisor: a point at infinity (parallel rays) comes out far away
            but finite.

    Returns:
        ``(*, K, 3)`` world points; NaN for a point seen in fewer than two cameras with positive
        weight (no unique solution).

    Example:
        >>> K = np.array([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]])
        >>> T = np.stack([np.eye(4), np.eye(4)])
        >>> T[1, 0, 3] = -0.5  # the second camera 0.5 m to the right of the first
        >>> point = np.array([[0.1, -0.2, 2.0]])
        >>> pixels = np.stack([project(point, K, T[c])[0] for c in range(2)])  # (C, K, 2)
        >>> triangulate(pixels, np.stack([K, K]), T).round(6)
        array([[ 0.1, -0.2,  2. ]])
    """
    if points.ndim < 3 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (*, C, K, 2); got {tuple(points.shape)}")
    count, num_points = points.shape[-3], points.shape[-2]
    for matrices, name, size in ((intrinsics, "intrinsics", 3), (extrinsics, "extrinsics", 4)):
        if matrices.ndim < 3 or tuple(matrices.shape[-3:]) != (count, size, size):
            raise ValueError(
                f"{name} must have shape (*, C, {size}, {size}) with C = {count} cameras as in "
                f"points {tuple(points.shape)}; got {tuple(matrices.shape)}"
            )
    if weights is None:
        weights = points[..., 0] * 0.0 + 1.0
    elif weights.ndim < 2 or tuple(weights.shape[-2:]) != (count, num_points):
        raise ValueError(
            f"weights must have shape (*, {count}, {num_points}) to match points "
            f"{tuple(points.shape)}; got {tuple(weights.shape)}"
        )

    used = weights > 0  # (*, C, K)
    # Zero what is ignored before any arithmetic, so that NaN pixels cannot poison A or gradients.
    points = _where(used[..., None], points, 0.0)
    weights = _where(used, weights, 0.0)
    focal, centre = _focal_and_centre(intrinsics)
    normalized = (points - centre) / focal  # (*, C, K, 2)
    projection = extrinsics[..., None, :3, :]  # (*, C, 1, 3, 4)
    rows = normalized[..., None] * projection[..., 2:3, :] - projection[..., :2, :]
    rows = rows * weights[..., None, None]  # (*, C, K, 2, 4)
    system = rows.swapaxes(-4, -3)  # (*, K, C, 2, 4)
    system = system.reshape(*system.shape[:-3], 2 * count, 4)
    if 2 * count < 4:  # one camera: zero rows complete the reduced SVD's four vectors
        system = _concat([system, system * 0.0], axis=-2)

    # A point without two views has no unique solution: solve a harmless stand-in system instead
    # (so that the SVD and its gradient stay finite) and report NaN.
    valid = used.sum(-2) >= 2  # (*, K)
    stand_in = np.zeros(tuple(system.shape[-2:]))
    stand_in[:4] = np.diag([4.0, 3.0, 2.0, 1.0])  # distinct singular values: a finite gradient
    system = _where(valid[..., None, None], system, _constant_like(stand_in, system))
    homogeneous = _smallest_right_singular_vector(system)  # (*, K, 4)
    scale = homogeneous[..., 3:]
    scale = _where(scale >= 0, scale.clip(min=eps), scale.clip(max=-eps))
    return _where(valid[..., None], homogeneous[..., :3] / scale, float("nan"))
