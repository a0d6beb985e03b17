"""The empty scene a perception compares its views with: one route for every method that uses it.

A robot task's views are mostly floor; what matters (the robot, the objects, a 3x3-pixel target)
is what differs from an image of the *empty scene*, the same camera without the robot and the
objects (:mod:`kp3d.reconstruction`). :class:`EmptyScene` gives a
:class:`~kp3d.perception.Perception`
the state and the lookup for it: a ``background`` buffer of ``(C, 3, H, W)`` (NaN until
:meth:`~EmptyScene.set_background`, saved in the state dict), and
:meth:`~EmptyScene.scene_background`, which prefers the per-sample backgrounds of a batch (moving
cameras), then the stored one, then the batch's per-pixel median (fixed cameras only).

Training pipelines call ``set_background`` on every module (``kp3d pretrain`` with the dataset's
render, agents with the env's); modules without this mixin ignore it
(:meth:`kp3d.perception.Perception.set_background`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kp3d.perception.coordinates import cell_grid, normalized_coordinates
from kp3d.reconstruction import batch_background


def foreground_magnitude(views: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` in ``[0, 1]``: each pixel's largest colour difference between
    ``views (N, 3, H, W)`` and their empty scene ``backgrounds (N, 3, H, W)`` (``[0, 1]``)."""
    return (views - backgrounds).abs().amax(dim=1, keepdim=True)


def add_foreground_prior(
    logits: torch.Tensor, magnitude: torch.Tensor, weight: float
) -> torch.Tensor:
    """Heatmap ``logits (N, K, S_h, S_w)`` plus ``weight · m``, ``m`` the largest
    :func:`foreground_magnitude` ``(N, 1, H, W)`` inside each cell: a spatial softmax of the
    result puts ``e^weight`` times more mass on a cell of a moving body than on the empty
    scene, so a keypoint can find a small object (Reach's 3 px target) that its loss alone
    gives no gradient towards."""
    return logits + weight * F.adaptive_max_pool2d(magnitude, logits.shape[-2:])


def foreground_coverage(keypoints: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """How far what differs from the empty scene lies from the nearest keypoint: the k-means
    objective with the keypoints as centres and the foreground as the weighted points.

    ``Σ_q m(q) min_k ||q - p_k||² / Σ_q m(q)`` over the pixel centres ``q``, distances measured
    in units of half the image's side (coordinates spanning ``[-1, 1]``, so at most 8). An object
    far from every keypoint costs its mass times the squared distance, and the gradient pulls the
    nearest keypoint towards it: a reconstruction from coordinates (AutoLink's edge map) gives a
    keypoint no gradient towards a small object a few pixels away from everything it draws, and
    this does.

    Args:
        keypoints: ``(N, K, 2)`` full-image pixels ``(u, v)``.
        magnitude: ``(N, 1, H, W)`` :func:`foreground_magnitude` (not differentiated through).

    Returns:
        ``(N,)``; 0 where a view has no foreground.
    """
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"keypoints must have shape (N, K, 2); got {tuple(keypoints.shape)}")
    size = tuple(magnitude.shape[-2:])
    grid = cell_grid(*size, device=keypoints.device, dtype=keypoints.dtype).reshape(-1, 2)
    points = normalized_coordinates(keypoints, size)[:, :, None, :]  # (N, K, 1, 2)
    squared = (points - normalized_coordinates(grid, size)).square().sum(-1)  # (N, K, H W)
    weights = magnitude.detach().flatten(1)  # (N, H W)
    nearest = squared.amin(dim=1)
    return (weights * nearest).sum(1) / weights.sum(1).clamp(min=1e-8)


class EmptyScene:
    """Mixin (before :class:`~kp3d.perception.Perception` in the bases) holding the empty scene
    of every camera. Call :meth:`init_background` in ``__init__`` after ``Perception.__init__``
    (it needs ``num_cameras`` and ``image_size``)."""

    num_cameras: int
    image_size: tuple[int, int]
    background: torch.Tensor

    def init_background(self) -> None:
        """Register the ``background`` buffer, ``(C, 3, H, W)`` NaN (unknown)."""
        shape = (self.num_cameras, 3, *self.image_size)
        self.register_buffer("background", torch.full(shape, math.nan))  # type: ignore[attr-defined]
        self._background_known = False

    def set_background(self, images: torch.Tensor) -> None:
        """Set the empty scene each camera sees (fixed cameras).

        Args:
            images: ``(C, 3, H, W)`` float in ``[0, 1]``: a render of the scene without the robot
                and the objects (``env.unwrapped.render_background()``). Stored in the state dict.
        """
        expected = (self.num_cameras, 3, *self.image_size)
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != expected:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"background images must have shape {expected}; got {shape}")
        if not torch.isfinite(images).all():
            raise ValueError("background images must be finite")
        self.background.copy_(images)
        self._background_known = True

    @property
    def has_background(self) -> bool:
        """Whether :meth:`set_background` was called (or a state dict holding one was loaded)."""
        if not self._background_known:
            self._background_known = bool(torch.isfinite(self.background).all())
        return self._background_known

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # Checkpoints from before the module kept a background lack it: keep it unknown.
        state_dict.setdefault(prefix + "background", self.background.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        self._background_known = False

    def scene_background(
        self, images: torch.Tensor, backgrounds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The empty scene behind ``images``: ``backgrounds`` if given, else the one set by
        :meth:`set_background`, else the batch's per-pixel median
        (:func:`~kp3d.reconstruction.batch_background`, right for fixed cameras only).

        Args:
            images: ``(B, C, 3, H, W)`` in ``[0, 1]``.
            backgrounds: ``(B, C, 3, H, W)`` or ``(C, 3, H, W)``, or ``None``.

        Returns:
            ``(B, C, 3, H, W)`` or ``(C, 3, H, W)``, of the images' dtype.
        """
        if backgrounds is not None:
            expected = tuple(images.shape)
            if tuple(backgrounds.shape) not in (expected, expected[1:]):
                raise ValueError(
                    f"backgrounds must have shape {expected} or {expected[1:]}; got "
                    f"{tuple(backgrounds.shape)}"
                )
            return backgrounds.to(images.dtype)
        if self.has_background:
            return self.background.to(images.dtype)
        return batch_background(images)

    def view_backgrounds(self, views: torch.Tensor) -> torch.Tensor:
        """``(B C, 3, H, W)`` the empty scene behind each of ``views (B C, 3, H, W)``, the
        cameras of a sample folded into the batch camera-minor (:meth:`scene_background`)."""
        images = views.unflatten(0, (-1, self.num_cameras))
        return self.scene_background(images).expand_as(images).flatten(0, 1)


__all__ = ["EmptyScene", "add_foreground_prior", "foreground_coverage", "foreground_magnitude"]
