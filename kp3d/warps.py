"""Random thin-plate-spline (TPS) warps of images and of the points on them, built on kornia.

The unsupervised landmark learners (Thewlis et al. 2017, Zhang et al. 2018, Mallis et al. 2020,
...) train on an image and a synthetic deformation of it: a landmark detector ``Φ`` must be
*equivariant*, ``Φ(x∘g) = g(Φ(x))``. This module draws such deformations ``g`` and applies the
*same* ``g`` to images and to points.

Direction convention (the classic trap of image warping): a :class:`TPSWarp` ``g`` is a map of
points, from the source image to the warped one. :meth:`TPSWarp.images` returns the image the
papers write ``x∘g``: what ``x`` shows at pixel ``p`` is shown at pixel ``g(p)`` of the result.
:meth:`TPSWarp.points` computes ``g(p)`` and :meth:`TPSWarp.inverse_points` computes
``g⁻¹(q)``. So a detector that finds a dot at ``p`` in ``x`` finds it at ``warp.points(p)`` in
``warp.images(x)``, to interpolation accuracy.

How it is computed: every warp is a random similarity (an exact affine map, inverted in closed
form) followed by a thin-plate spline through randomly displaced control points. An image warp
is a resampling, ``(x∘g)(q) = x(g⁻¹(q))``, so what defines the spline exactly is its *sampling
map* ``g⁻¹``: the spline from the displaced control points back to the regular ones, evaluated
at every pixel by kornia's :func:`~kornia.geometry.transform.warp_points_tps` (as
:func:`~kornia.geometry.transform.warp_image_tps` does) and sampled with ``grid_sample``. Its
weights are the textbook ones (:meth:`ThinPlateSpline.fit` says why not kornia's
``get_tps_transform``). A spline has no closed-form inverse, so the forward map ``g`` of points
is found by Newton's method on ``g⁻¹(p') = q``, started from the spline fitted the other way; it
converges to float precision for these mild warps, so points and images agree exactly rather
than to the mismatch of two independently fitted splines. The last Newton step keeps the
autograd graph, so ``∂g(p)/∂p = (∂g⁻¹/∂p')⁻¹`` (what a loss on warped detections needs). Warps
compose (:meth:`TPSWarp.then`) without resampling the image twice.

Coordinates: points are full-image pixels ``(u, v)`` in the convention of :mod:`kp3d.geometry`
(``(0, 0)`` is the top-left corner of the top-left pixel, the centre of pixel ``(i, j)`` is
``(j + 0.5, i + 0.5)``). Internally the splines work in grid-sample coordinates
``(2 u / W - 1, 2 v / H - 1)`` with ``align_corners=False``, in which the same pixel centres lie
at ``((2 j + 1) / W - 1, (2 i + 1) / H - 1)``: the two conventions agree exactly.

The pairs of Thewlis et al. (``g1∘x`` and ``g2∘(g1∘x)``, so that neither image shows the
undeformed boundary) are::

    g1 = random_tps(batch, (64, 64), generator=rng)
    g2 = random_tps(batch, (64, 64), generator=rng)
    first = g1.images(x)             # g1∘x
    second = g1.then(g2).images(x)   # g2∘(g1∘x), resampled once
    # a landmark at p in `first` is at g2.points(p) in `second`

Example:
    >>> import torch
    >>> warp = random_tps(2, (64, 64), generator=torch.Generator().manual_seed(0))
    >>> points = torch.tensor([[[20.0, 30.0]], [[40.0, 12.5]]])  # (B, K, 2) pixels
    >>> back = warp.inverse_points(warp.points(points))
    >>> bool(torch.allclose(back, points, atol=1e-3))
    True
    >>> warp.images(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry import create_meshgrid
from kornia.geometry.transform import warp_points_tps

PaddingMode = Literal["zeros", "border", "reflection"]

NEWTON_STEPS = 6
"""Newton iterations of the point inversion (each roughly squares the error; the start, the
forward spline fitted on the same control points, is already within a fraction of a pixel)."""

FINITE_DIFFERENCE_STEP = 1e-3
"""Central-difference step of the sampling map's Jacobian, in grid-sample units (0.03 px at
64 px). Newton only needs an approximate Jacobian: the fixed point is exact either way."""


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
        raise ValueError(f"image_size must be a positive int or (height, width); got {size!r}")
    return int(pair[0]), int(pair[1])


def pixels_to_grid(pixels: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Full-image pixels → grid-sample coordinates (``align_corners=False``).

    Args:
        pixels: ``(*, 2)`` ``(u, v)`` in :mod:`kp3d.geometry`'s convention.
        image_size: ``(H, W)``.

    Returns:
        ``(*, 2)`` ``(2 u / W - 1, 2 v / H - 1)``: the image spans ``[-1, 1]`` on both axes.
    """
    height, width = image_size
    return pixels * pixels.new_tensor([2.0 / width, 2.0 / height]) - 1.0


def grid_to_pixels(grid: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Grid-sample coordinates → full-image pixels (inverse of :func:`pixels_to_grid`)."""
    height, width = image_size
    return (grid + 1.0) * grid.new_tensor([width / 2.0, height / 2.0])


@dataclass(frozen=True)
class ThinPlateSpline:
    """One kornia thin-plate spline ``R² → R²`` of a batch, in grid-sample coordinates.

    Attributes:
        centers: ``(B, N, 2)`` kernel centres.
        kernel_weights: ``(B, N, 2)``.
        affine_weights: ``(B, 3, 2)``.
    """

    centers: torch.Tensor
    kernel_weights: torch.Tensor
    affine_weights: torch.Tensor

    @classmethod
    def fit(cls, source: torch.Tensor, target: torch.Tensor) -> ThinPlateSpline:
        """The textbook thin-plate spline (minimal bending energy) that maps the control points
        ``source (B, N, 2)`` onto ``target (B, N, 2)``, with its kernels centred on ``source``.

        ``f(p) = a₀ + A p + Σ_i w_i U(||p - c_i||)``, ``U(r) = r² log r`` (kornia's kernel), from
        ``[[K, P], [Pᵀ, 0]] [w; a] = [target; 0]`` with ``K_ij = U(||c_i - c_j||)`` and
        ``P = [1, c]`` (solved in float64). kornia's ``get_tps_transform`` is not used: it
        centres the kernels on the *targets* while its side conditions ``Pᵀ w = 0`` hold on the
        sources, which leaves a term growing like ``|p| log |p|`` away from the control points:
        such splines fold a little outside the image, and Newton's method cannot invert them
        there (kornia PR #2690 reports the resulting erratic warps).
        """
        if source.ndim != 3 or source.shape[-1] != 2 or source.shape != target.shape:
            raise ValueError(
                "source and target must both have shape (B, N, 2); got "
                f"{tuple(source.shape)} and {tuple(target.shape)}"
            )
        batch, count, _ = source.shape
        centres = source.double()
        squared = torch.cdist(centres, centres).square()
        kernel = 0.5 * squared * torch.log(torch.where(squared > 0, squared, 1.0))
        affine = torch.cat([centres.new_ones(batch, count, 1), centres], dim=-1)  # (B, N, 3)
        system = torch.cat(
            [
                torch.cat([kernel, affine], dim=-1),
                torch.cat([affine.transpose(1, 2), centres.new_zeros(batch, 3, 3)], dim=-1),
            ],
            dim=1,
        )
        values = torch.cat([target.double(), centres.new_zeros(batch, 3, 2)], dim=1)
        weights = torch.linalg.solve(system, values).to(source.dtype)
        return cls(source, weights[:, :count], weights[:, count:])

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Apply the spline to ``points (B, P, 2)``; returns ``(B, P, 2)``."""
        return warp_points_tps(points, self.centers, self.kernel_weights, self.affine_weights)

    def jacobian(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, P, 2, 2)`` Jacobians ``∂out_i/∂in_j`` at ``points (B, P, 2)`` (central
        differences, :data:`FINITE_DIFFERENCE_STEP`)."""
        step = FINITE_DIFFERENCE_STEP
        columns = []
        for axis in range(2):
            offset = points.new_zeros(2)
            offset[axis] = step
            columns.append((self(points + offset) - self(points - offset)) / (2.0 * step))
        return torch.stack(columns, dim=-1)


class WarpStage(Protocol):
    """One elementary warp ``g`` of a :class:`TPSWarp`, on ``(B, P, 2)`` grid-sample points."""

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``g(p)``: source → warped."""
        ...

    def inverse(self, points: torch.Tensor) -> torch.Tensor:
        """``g⁻¹(q)``: warped → source (the sampling map of the image warp)."""
        ...


@dataclass(frozen=True)
class AffineWarpStage:
    """An affine warp ``g(p) = A p + b`` of a batch, in grid-sample coordinates (exact both ways).

    Attributes:
        matrix: ``(B, 2, 2)`` ``A``.
        offset: ``(B, 2)`` ``b``.
    """

    matrix: torch.Tensor
    offset: torch.Tensor

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return points @ self.matrix.transpose(1, 2) + self.offset[:, None]

    def inverse(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.offset[:, None]) @ torch.linalg.inv(self.matrix).transpose(1, 2)


@dataclass(frozen=True)
class SplineWarpStage:
    """A thin-plate-spline warp ``g`` of a batch, defined by its sampling map.

    Attributes:
        sampling: ``g⁻¹``, warped → source grid coordinates: the exact definition of the warp.
        approximate_forward: an approximation of ``g`` (the spline fitted the other way on the
            same control points), the starting point of the Newton inversion.
    """

    sampling: ThinPlateSpline
    approximate_forward: ThinPlateSpline

    def inverse(self, points: torch.Tensor) -> torch.Tensor:
        return self.sampling(points)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """``g(p)``: solve ``g⁻¹(p') = p`` by Newton's method.

        The iterations run without autograd; one last step with the graph gives the exact first
        derivative ``(∂g⁻¹/∂p')⁻¹`` with respect to ``points``.
        """
        with torch.no_grad():
            estimate = self.approximate_forward(points)
            for _ in range(NEWTON_STEPS):
                estimate = self._newton_step(estimate, points)
        return self._newton_step(estimate.detach(), points)

    def _newton_step(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        residual = self.sampling(estimate) - target  # (B, P, 2)
        jacobian = self.sampling.jacobian(estimate).detach()  # (B, P, 2, 2)
        return estimate - torch.linalg.solve(jacobian, residual[..., None])[..., 0]


class TPSWarp:
    """A batch of warps ``g = g_n ∘ … ∘ g_1`` of ``H x W`` images (affine maps and thin-plate
    splines); see the module docstring for the direction convention.

    Build with :func:`random_tps` (or :func:`identity_warp`); compose with :meth:`then`.

    Args:
        stages: the elementary warps (:class:`AffineWarpStage`, :class:`SplineWarpStage`), the
            first applied first; each holds ``B`` warps.
        batch_size: ``B``.
        image_size: ``(H, W)`` of the images the warps apply to.
        device: device of the stages' tensors.
        dtype: floating dtype of the stages' tensors.
    """

    def __init__(
        self,
        stages: Sequence[WarpStage],
        batch_size: int,
        image_size: int | Sequence[int],
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> None:
        if not stages:
            raise ValueError("a TPSWarp needs at least one stage")
        self.stages = tuple(stages)
        self.batch_size = int(batch_size)
        self.image_size = _size_pair(image_size)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        self._sampling_grid: torch.Tensor | None = None

    def then(self, other: TPSWarp) -> TPSWarp:
        """The composition ``other ∘ self``: first this warp, then ``other``.

        ``self.then(other).images(x)`` equals ``other.images(self.images(x))`` up to
        interpolation, but resamples ``x`` only once.
        """
        if other.image_size != self.image_size or other.batch_size != self.batch_size:
            raise ValueError(
                f"cannot compose warps of {other.batch_size} x {other.image_size} after warps of "
                f"{self.batch_size} x {self.image_size}: batch and image sizes must match"
            )
        return TPSWarp(
            self.stages + other.stages, self.batch_size, self.image_size, self.device, self.dtype
        )

    def _check_points(self, points: torch.Tensor) -> None:
        if not isinstance(points, torch.Tensor) or points.ndim < 2 or points.shape[-1] != 2:
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points)
            raise ValueError(f"points must have shape (B, *, 2); got {shape}")
        if points.shape[0] != self.batch_size:
            raise ValueError(
                f"points must hold one batch entry per warp ({self.batch_size}); got "
                f"{tuple(points.shape)}"
            )

    def points(self, points: torch.Tensor) -> torch.Tensor:
        """``g(p)``: where the content at ``p`` of an image is after :meth:`images`.

        Args:
            points: ``(B, *, 2)`` full-image pixels ``(u, v)`` (e.g. ``(B, K, 2)``), sample
                ``b`` moved by warp ``b``.

        Returns:
            ``(B, *, 2)`` pixels in the warped image (possibly outside it); differentiable with
            respect to ``points``.
        """
        self._check_points(points)
        flat = pixels_to_grid(points.reshape(self.batch_size, -1, 2), self.image_size)
        flat = flat.to(self.dtype)
        for stage in self.stages:
            flat = stage.forward(flat)
        return grid_to_pixels(flat.to(points.dtype), self.image_size).reshape(points.shape)

    def inverse_points(self, points: torch.Tensor) -> torch.Tensor:
        """``g⁻¹(q)``: where a pixel ``q`` of the warped image comes from in the source image.

        Args:
            points: ``(B, *, 2)`` pixels of the warped image.

        Returns:
            ``(B, *, 2)`` pixels of the source image; differentiable.
        """
        self._check_points(points)
        flat = pixels_to_grid(points.reshape(self.batch_size, -1, 2), self.image_size)
        flat = flat.to(self.dtype)
        for stage in reversed(self.stages):
            flat = stage.inverse(flat)
        return grid_to_pixels(flat.to(points.dtype), self.image_size).reshape(points.shape)

    def sampling_grid(self) -> torch.Tensor:
        """``(B, H, W, 2)`` grid-sample coordinates of ``g⁻¹`` at every pixel centre: where each
        output pixel samples the source image (``torch.nn.functional.grid_sample``'s ``grid``,
        ``align_corners=False``); computed once per warp."""
        if self._sampling_grid is None:
            height, width = self.image_size
            grid = create_meshgrid(
                height,
                width,
                normalized_coordinates=True,
                device=self.device,
                dtype=self.dtype,
                align_corners=False,
            )
            flat = grid.reshape(1, -1, 2).expand(self.batch_size, -1, -1)
            for stage in reversed(self.stages):
                flat = stage.inverse(flat)
            self._sampling_grid = flat.reshape(self.batch_size, height, width, 2)
        return self._sampling_grid

    def images(self, images: torch.Tensor, padding_mode: PaddingMode = "border") -> torch.Tensor:
        """Warp images (or any maps): the result is ``x∘g``, bilinear, one resampling.

        Args:
            images: ``(B, *, H, W)``, e.g. ``(B, 3, H, W)`` images or ``(B, K, H, W)`` heatmaps,
                sample ``b`` warped by warp ``b``.
            padding_mode: what fills pixels that come from outside the source image:
                ``"border"`` (the nearest edge pixel, the default: renders have plain
                backgrounds, and black corners would be edges a detector could latch onto),
                ``"zeros"`` or ``"reflection"``.

        Returns:
            ``(B, *, H, W)``; differentiable with respect to ``images``.
        """
        if not isinstance(images, torch.Tensor) or images.ndim < 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must have shape (B, *, H, W); got {shape}")
        if images.shape[0] != self.batch_size or tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(
                f"images must have shape ({self.batch_size}, *, {self.image_size[0]}, "
                f"{self.image_size[1]}) for these warps; got {tuple(images.shape)}"
            )
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(
                f"padding_mode must be 'zeros', 'border' or 'reflection'; got {padding_mode!r}"
            )
        grid = self.sampling_grid().to(device=images.device, dtype=images.dtype)
        flat = images.reshape(self.batch_size, -1, *self.image_size)
        warped = F.grid_sample(
            flat, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
        )
        return warped.reshape(images.shape)


def control_grid(
    grid_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``(grid_size², 2)`` control points on a regular grid spanning the image, ``[-1, 1]²`` in
    grid-sample coordinates, row-major."""
    axis = torch.linspace(-1.0, 1.0, grid_size, device=device, dtype=dtype)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(-1, 2)


def random_tps(
    batch_size: int,
    image_size: int | Sequence[int],
    strength: float = 1.0,
    *,
    rotation: float = 10.0,
    scale: float = 0.1,
    translation: float = 0.05,
    jitter: float = 0.04,
    grid_size: int = 5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TPSWarp:
    """Draw ``B`` random warps: a random similarity plus random thin-plate-spline deformation.

    The control points are a ``grid_size x grid_size`` grid spanning the image. Each warp moves
    them by a similarity about the image centre (rotation ``θ``, isotropic scale ``s``,
    translation ``t``), computed in pixels so that it stays a similarity on non-square images,
    and then moves each control point by an independent random offset; the thin-plate spline
    through the control points is the warp. Every random number is a Gaussian truncated at two
    standard deviations (so that no warp folds over), each standard deviation times
    ``strength``: ``strength=0`` gives the identity. The defaults, at ``strength=1``, are of the
    order of the landmark papers' TPS augmentations (a few degrees of rotation, ~10 % of scale
    and a few per cent of translation, control-point offsets of a few per cent on a 5 x 5 grid):
    at 64 px, a point moves by ~3 px on average, and the local area changes by up to about x2.

    Args:
        batch_size: ``B``.
        image_size: ``H`` or ``(H, W)``.
        strength: multiplies every standard deviation below.
        rotation: std of ``θ`` in degrees.
        scale: std of ``log s``.
        translation: std of ``t`` as a fraction of the half side (per axis).
        jitter: std of each control-point offset as a fraction of the half side (per axis; the
            control points are ``2 / (grid_size - 1)`` half sides apart).
        grid_size: control points per side, at least 2.
        generator: the random source (``None``: torch's global RNG); numbers are drawn on the
            generator's device (the CPU for ``None``) and moved to ``device``.
        device: device of the warp.
        dtype: floating dtype of the warp.

    Returns:
        A :class:`TPSWarp` of two stages (the similarity, then the spline).
    """
    height, width = _size_pair(image_size)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if not isinstance(grid_size, (int, np.integer)) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2; got {grid_size!r}")
    for name, value in (
        ("strength", strength),
        ("rotation", rotation),
        ("scale", scale),
        ("translation", translation),
        ("jitter", jitter),
    ):
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative; got {value!r}")

    source_device = generator.device if generator is not None else torch.device("cpu")
    count = grid_size * grid_size

    def truncated_normal(*shape: int) -> torch.Tensor:
        values = torch.randn(*shape, generator=generator, device=source_device, dtype=dtype)
        return values.clamp(-2.0, 2.0).to(device)

    angle = truncated_normal(batch_size) * (math.radians(rotation) * strength)
    factor = torch.exp(truncated_normal(batch_size) * (scale * strength))
    shift = truncated_normal(batch_size, 2) * (translation * strength)
    offsets = truncated_normal(batch_size, count, 2) * (jitter * strength)

    # The similarity acts on pixel offsets from the image centre: in grid units (half sides
    # ``h``) it is ``diag(1/h) · s R · diag(h)`` plus the translation.
    half = torch.tensor([width / 2.0, height / 2.0], device=device, dtype=dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation_matrix = torch.stack([cos, -sin, sin, cos], dim=-1).reshape(batch_size, 2, 2)
    matrix = factor[:, None, None] * rotation_matrix * half[None, None, :] / half[None, :, None]
    similarity = AffineWarpStage(matrix, shift)

    # The spline carries only the control-point offsets: the similarity stays exact (and exactly
    # invertible) in its own stage.
    source = control_grid(grid_size, device, dtype).expand(batch_size, count, 2)
    target = source + offsets
    deformation = SplineWarpStage(
        sampling=ThinPlateSpline.fit(target, source),
        approximate_forward=ThinPlateSpline.fit(source, target),
    )
    return TPSWarp([similarity, deformation], batch_size, (height, width), device, dtype)


def identity_warp(
    batch_size: int,
    image_size: int | Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TPSWarp:
    """``B`` identity warps (``random_tps`` at ``strength=0``)."""
    return random_tps(batch_size, image_size, strength=0.0, device=device, dtype=dtype)


__all__ = [
    "AffineWarpStage",
    "SplineWarpStage",
    "TPSWarp",
    "ThinPlateSpline",
    "WarpStage",
    "control_grid",
    "grid_to_pixels",
    "identity_warp",
    "pixels_to_grid",
    "random_tps",
]
