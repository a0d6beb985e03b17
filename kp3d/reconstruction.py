"""Reconstruction losses that see small objects: per-pixel weights towards what is not the scene.

A keypoint autoencoder learns keypoints only for what its reconstruction loss needs. With a plain
mean squared error over the image, a robot task's views are ~97% uniform floor and a 3x3-pixel
target is 0.5% of the loss: predicting the mean image is almost optimal and the target is never
reconstructed, so no keypoint goes to it. Weighting each pixel by how far it is from an image of
the *empty scene* (the same camera without the robot and the objects) gives every object that
moves between frames or between episodes a share of the loss, however small:

``w(p) = 1 + λ · Σ_RGB |I(p) - B(p)|``, normalised to mean 1 over the batch,
``loss = mean_p w(p) · ||Î(p) - I(p)||² / 3`` (the plain MSE when ``λ = 0``).

The background ``B`` is best rendered by the environment (``env.unwrapped.render_background()``:
exact, also for moving cameras); for fixed cameras the per-pixel median of a batch of frames from
many episodes estimates it (:func:`batch_background`).

Shapes: ``B`` batch, ``C`` cameras, images ``H x W`` (or crops ``h x w``).
"""

from __future__ import annotations

import torch

EPS = 1e-8


def batch_background(images: torch.Tensor) -> torch.Tensor:
    """Estimate the empty scene of fixed cameras: the per-pixel median over a batch.

    Objects that move between frames (or between episodes) cover a pixel in fewer than half of
    the frames of a batch drawn from many episodes, so the median there is the static scene. This
    assumes cameras that do not move; for moving cameras render the background instead.

    Args:
        images: ``(B, C, 3, H, W)`` in ``[0, 1]``.

    Returns:
        ``(C, 3, H, W)``.
    """
    if images.ndim != 5:
        raise ValueError(f"images must have shape (B, C, 3, H, W); got {tuple(images.shape)}")
    return images.median(dim=0).values


def foreground_weights(
    images: torch.Tensor, background: torch.Tensor, strength: float
) -> torch.Tensor:
    """Per-pixel loss weights ``1 + strength · Σ_RGB |images - background|`` (not normalised).

    Args:
        images: ``(*, 3, H, W)`` in ``[0, 1]``.
        background: the empty scene, broadcastable to ``images`` (e.g. ``(C, 3, H, W)`` for a
            batch ``(B, C, 3, H, W)`` of fixed cameras, or one per sample).
        strength: ``λ >= 0``; 0 gives uniform weights.

    Returns:
        ``(*, H, W)`` weights ``>= 1``, without gradient.
    """
    if not strength >= 0:
        raise ValueError(f"strength must be non-negative; got {strength!r}")
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"images must have shape (*, 3, H, W); got {tuple(images.shape)}")
    with torch.no_grad():
        difference = (images - background).abs().sum(dim=-3)
        return 1.0 + strength * difference


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, eps: float = EPS
) -> torch.Tensor:
    """Mean squared error with per-pixel weights normalised to mean 1 over the batch.

    Args:
        prediction: ``(*, ch, h, w)``.
        target: ``(*, ch, h, w)``.
        weights: ``(*, h, w)`` non-negative (shared by the channels), or ``None`` for the plain
            mean squared error.
        eps: added to the weights' mean before dividing.

    Returns:
        Scalar: ``mean(w · (prediction - target)²) / mean(w)``.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    squared = (prediction - target).pow(2)
    if weights is None:
        return squared.mean()
    if weights.shape != prediction.shape[:-3] + prediction.shape[-2:]:
        raise ValueError(
            f"weights must have shape {(*prediction.shape[:-3], *prediction.shape[-2:])} for "
            f"prediction {tuple(prediction.shape)}; got {tuple(weights.shape)}"
        )
    weighted = (squared.mean(dim=-3) * weights).mean()
    return weighted / (weights.mean() + eps)


__all__ = ["batch_background", "foreground_weights", "weighted_mse"]
