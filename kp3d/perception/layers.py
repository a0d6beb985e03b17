"""Building blocks shared by the perception modules: conv stacks, their mirror decoders, crops.

Sizes: a conv layer ``(kernel k, stride s, padding p)`` maps a side ``n`` to
``⌊(n + 2p - k) / s⌋ + 1`` (:func:`conv_output_size`); :func:`conv_sizes` chains it through a
stack. A :class:`ConvDecoder` undoes a :class:`ConvStack` exactly, size for size.

Crops (RAD-style augmentation and Keypoint3D's random-offset crops): a window of ``crop_size``
at a random position in training and centred in eval (:func:`sample_crop_origins`), cut with
:func:`kp3d.spatial.crop_images`; points found in a crop are moved back to the full image with
:func:`kp3d.spatial.crop_to_image`.

Example:
    >>> layers = [ConvLayer(3, 1, 1), ConvLayer(3, 2, 1), ConvLayer(4, 2, 1)]
    >>> conv_sizes((56, 56), layers)
    [(56, 56), (56, 56), (28, 28), (14, 14)]
    >>> resolve_crop_size(None, (64, 48), multiple=4)
    (56, 40)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn


class ConvLayer(NamedTuple):
    """One conv layer of a :class:`ConvStack`: square ``kernel``, ``stride`` and ``padding``."""

    kernel: int
    stride: int
    padding: int


def conv_output_size(size: int, layer: ConvLayer) -> int:
    """Side after one conv layer: ``⌊(size + 2 padding - kernel) / stride⌋ + 1``."""
    return (size + 2 * layer.padding - layer.kernel) // layer.stride + 1


def conv_sizes(size: tuple[int, int], layers: Sequence[ConvLayer]) -> list[tuple[int, int]]:
    """``(h, w)`` at the input of a conv stack and after each of its layers.

    Args:
        size: ``(h, w)`` of the input.
        layers: the stack's layers.

    Returns:
        ``len(layers) + 1`` sizes, the input's first.
    """
    sizes = [size]
    for layer in layers:
        height, width = sizes[-1]
        sizes.append((conv_output_size(height, layer), conv_output_size(width, layer)))
    return sizes


def conv_relu(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1
) -> list[nn.Module]:
    """``[Conv2d, ReLU]``: a square ``kernel`` (odd) with "same" padding ``kernel // 2``, so a
    side ``n`` becomes ``⌈n / stride⌉``; unpack it into an ``nn.Sequential``."""
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2), nn.ReLU()]


class ConvStack(nn.Sequential):
    """Convs ``in_channels → channels[0] → channels[1] → …``, each followed by a ReLU.

    Args:
        in_channels: input channels.
        channels: output channels of each layer (one per entry of ``layers``).
        layers: kernel, stride and padding of each layer.
        groups: conv groups (``C`` for one independent stack per camera); every channel count
            must be divisible by it.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        layers: Sequence[ConvLayer],
        groups: int = 1,
    ) -> None:
        if len(channels) != len(layers):
            raise ValueError(f"need one channel count per layer; got {channels} for {layers}")
        modules: list[nn.Module] = []
        for inputs, outputs, layer in zip(
            [in_channels, *channels[:-1]], channels, layers, strict=True
        ):
            modules += [nn.Conv2d(inputs, outputs, *layer, groups=groups), nn.ReLU()]
        super().__init__(*modules)


class ConvDecoder(nn.Sequential):
    """Conv 3x3 then transposed convs mirroring a :class:`ConvStack`, so that ``sizes[-1] →
    sizes[0]``.

    Each transposed conv undoes one encoder layer: ``channels[i] → channels[i - 1]`` (the last
    one ``→ out_channels``), with the layer's kernel, stride and padding, and an
    ``output_padding`` that restores the exact size that layer received. No activation after the
    last layer.

    Args:
        in_channels: channels of the latent map (``sizes[-1]``).
        out_channels: channels of the output (``sizes[0]``).
        channels: the mirrored encoder's ``channels``.
        layers: the mirrored encoder's ``layers``.
        sizes: the encoder's :func:`conv_sizes`.
        groups: conv groups, as in the encoder.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        layers: Sequence[ConvLayer],
        sizes: Sequence[tuple[int, int]],
        groups: int = 1,
    ) -> None:
        targets = [out_channels, *channels[:-1]]
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[-1], 3, 1, padding=1, groups=groups),
            nn.ReLU(),
        ]
        for index in reversed(range(len(layers))):
            kernel, stride, padding = layers[index]
            produced = [(n - 1) * stride - 2 * padding + kernel for n in sizes[index + 1]]
            output_padding = tuple(t - p for t, p in zip(sizes[index], produced, strict=True))
            assert all(0 <= o < stride for o in output_padding), output_padding
            modules.append(
                nn.ConvTranspose2d(
                    channels[index],
                    targets[index],
                    kernel,
                    stride,
                    padding=padding,
                    output_padding=output_padding,
                    groups=groups,
                )
            )
            if index > 0:
                modules.append(nn.ReLU())
        super().__init__(*modules)


def resolve_crop_size(
    crop_size: int | Sequence[int] | None,
    image_size: tuple[int, int],
    multiple: int,
    name: str = "crop_size",
) -> tuple[int, int]:
    """Validate a crop size, or choose the default one.

    Args:
        crop_size: ``L`` or ``(h, w)``; ``None``: the image minus an eighth of each side, rounded
            down to a multiple of ``multiple`` (and at least ``multiple``): 56 of 64 px, 112 of
            128 px (Keypoint3D's reference crops 108 of 128).
        image_size: ``(H, W)``.
        multiple: of the default size, e.g. the pixels per heatmap cell, so that the cells tile
            the crop exactly.
        name: the argument's name, for the error message.

    Returns:
        ``(h, w)``.

    Raises:
        ValueError: unless ``0 < h <= H`` and ``0 < w <= W``.
    """
    if crop_size is None:
        height, width = (max(multiple, (n - n // 8) // multiple * multiple) for n in image_size)
        return height, width
    crop = (crop_size, crop_size) if isinstance(crop_size, (int, np.integer)) else tuple(crop_size)
    if (
        len(crop) != 2
        or not all(isinstance(n, (int, np.integer)) and n > 0 for n in crop)
        or crop[0] > image_size[0]
        or crop[1] > image_size[1]
    ):
        raise ValueError(
            f"{name} must be positive and at most the image size {image_size}; got {crop_size!r}"
        )
    return int(crop[0]), int(crop[1])


def sample_crop_origins(
    shape: Sequence[int],
    image_size: tuple[int, int],
    crop_size: tuple[int, int],
    random: bool,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Top-left corners ``(u, v)`` of crop windows: uniform over every valid position (all
    ``H - h + 1`` rows and ``W - w + 1`` columns), or the centred window.

    Args:
        shape: leading dimensions, e.g. ``(B, C)``.
        image_size: ``(H, W)``.
        crop_size: ``(h, w)``.
        random: draw random windows (training) rather than centred ones (eval).
        device: device of the result.
        dtype: dtype of the result (integer-valued either way).

    Returns:
        ``(*shape, 2)`` corners for :func:`kp3d.spatial.crop_images`.
    """
    spare_v, spare_u = (n - c for n, c in zip(image_size, crop_size, strict=True))
    shape = tuple(shape)
    if random:
        u = torch.randint(0, spare_u + 1, shape, device=device)
        v = torch.randint(0, spare_v + 1, shape, device=device)
    else:
        u = torch.full(shape, spare_u // 2, device=device)
        v = torch.full(shape, spare_v // 2, device=device)
    return torch.stack([u, v], dim=-1).to(dtype)


def he_initialise(module: nn.Module) -> nn.Module:
    """He (Kaiming) normal init of every conv in ``module`` (fan-in, ReLU gain), biases zero.

    PyTorch's default conv init (uniform with ``a = √5``) shrinks the activations by about
    ``1/√3`` per layer; without the batch normalisation the landmark papers use (left out
    because an RL agent's batch statistics differ between rollouts and updates), a 6-layer
    detector's heatmap logits then vary by ~0.005 across a view: every map is flat and every
    keypoint sits at the view's centre until training slowly sharpens it. He init keeps the
    activations' scale, as batch norm does, so the maps start peaked and move (issue 17).

    Returns:
        ``module``, initialised in place.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def initialise_convs(module: nn.Module, init: str) -> None:
    """Apply the ``init`` option of a landmark learner: ``"he"`` (:func:`he_initialise`) or
    ``"default"`` (PyTorch's, left as is).

    Raises:
        ValueError: for any other value.
    """
    if init not in ("he", "default"):
        raise ValueError(f"init must be 'he' or 'default'; got {init!r}")
    if init == "he":
        he_initialise(module)


__all__ = [
    "ConvDecoder",
    "ConvLayer",
    "ConvStack",
    "conv_output_size",
    "conv_sizes",
    "he_initialise",
    "initialise_convs",
    "resolve_crop_size",
    "sample_crop_origins",
]
