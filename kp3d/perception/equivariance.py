"""What the equivariance-trained landmark learners share: warped image pairs and their loss.

A landmark detector ``Φ`` is *equivariant* when it finds on a deformed image what it finds on the
original, deformed the same way: ``Φ(x∘g) = g(Φ(x))`` (:mod:`kp3d.warps` for the direction
convention). Thewlis et al. (ICCV 2017) train on two deformations of every image, ``x₁ = g₁∘x``
and ``x₂ = g₂∘x₁``, so that neither image is the undeformed original (whose boundary a detector
could otherwise use): the constraint is ``Φ(x₂) = g₂(Φ(x₁))`` (:class:`WarpedPair`). Zhang et al.
(CVPR 2018) use the same constraint on an image and one deformation of it.

In training mode the warps are random; in eval mode they are drawn from a fixed seed
(:func:`warp_generator`), so that ``forward`` stays deterministic and validation losses are
comparable between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kp3d.warps import TPSWarp, random_tps

EVAL_WARP_SEED = 0
"""Seed of the warps that eval-mode losses use (:func:`warp_generator`)."""


def warp_generator(training: bool) -> torch.Generator | None:
    """The random source of a forward pass's warps: torch's global RNG in training, a generator
    seeded with :data:`EVAL_WARP_SEED` (the same warps at every call) in eval mode."""
    return None if training else torch.Generator().manual_seed(EVAL_WARP_SEED)


@dataclass
class WarpedPair:
    """Two deformations of a batch of images, ``x₁ = g₁∘x`` and ``x₂ = g₂∘x₁``.

    Attributes:
        first: ``(N, 3, H, W)`` ``x₁``.
        second: ``(N, 3, H, W)`` ``x₂`` (resampled once from ``x``).
        between: ``g₂``, the warp from ``x₁`` to ``x₂``: a landmark at ``p`` in ``x₁`` is at
            ``between.points(p)`` in ``x₂``.
    """

    first: torch.Tensor
    second: torch.Tensor
    between: TPSWarp

    @classmethod
    def sample(
        cls,
        images: torch.Tensor,
        strength: float,
        generator: torch.Generator | None = None,
        deform_first: bool = True,
    ) -> WarpedPair:
        """Draw the two warps of every image and apply them.

        Args:
            images: ``(N, 3, H, W)``.
            strength: of :func:`kp3d.warps.random_tps` (both warps).
            generator: random source of the warps (``None``: torch's global RNG).
            deform_first: ``False`` keeps ``x₁ = x`` (one warp: Zhang et al.'s pairs).
        """
        count, size = images.shape[0], tuple(images.shape[-2:])
        options = {"generator": generator, "device": images.device, "dtype": images.dtype}
        between = random_tps(count, size, strength, **options)
        if not deform_first:
            return cls(images, between.images(images), between)
        first = random_tps(count, size, strength, **options)
        return cls(first.images(images), first.then(between).images(images), between)


def equivariance_loss(
    detected: torch.Tensor, expected: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared distance between detections and where they should be.

    ``Σ_{n,k} v_nk ||detected_nk - expected_nk||² / Σ_{n,k} v_nk``, i.e.
    ``(1/K) Σ_k ||Φ_k(x∘g) - g(Φ_k(x))||²`` averaged over the batch when every ``v`` is 1.

    Args:
        detected: ``(N, K, 2)`` e.g. ``Φ(x∘g)``, in the units the loss is wanted in.
        expected: ``(N, K, 2)`` e.g. ``g(Φ(x))``, same units.
        valid: ``(N, K)`` weights (bool or float) of the terms, e.g. 0 where ``g`` takes a
            landmark out of the image; ``None`` for all ones.

    Returns:
        Scalar; zero when no term is valid.
    """
    if detected.ndim != 3 or detected.shape[-1] != 2 or detected.shape != expected.shape:
        raise ValueError(
            "detected and expected must both have shape (N, K, 2); got "
            f"{tuple(detected.shape)} and {tuple(expected.shape)}"
        )
    squared = (detected - expected).pow(2).sum(dim=-1)
    if valid is None:
        return squared.mean()
    weights = valid.to(squared.dtype)
    return (squared * weights).sum() / weights.sum().clamp(min=1.0)


def inside_image(pixels: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """``(*)`` bool: ``0 <= u <= W`` and ``0 <= v <= H`` for ``pixels (*, 2)``."""
    height, width = image_size
    u, v = pixels[..., 0], pixels[..., 1]
    return (u >= 0) & (u <= width) & (v >= 0) & (v <= height)


__all__ = [
    "EVAL_WARP_SEED",
    "WarpedPair",
    "equivariance_loss",
    "inside_image",
    "warp_generator",
]
