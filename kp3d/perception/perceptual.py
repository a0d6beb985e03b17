"""AutoLink's perceptual loss: L1 between the features of a frozen VGG-16 (He et al. 2022).

Owns the VGG-16 trunk up to ``relu4_3`` (:func:`vgg16_features`), the loading and checking of a
user-supplied weights file (no pretrained network can be downloaded here), and the loss itself
(:class:`PerceptualLoss`), which :class:`~kp3d.perception.autolink.AutoLink` uses when given a
``perceptual_weights`` file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kp3d.perception.layers import conv_relu

VGG16_LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", *(256,) * 3, "M", *(512,) * 3)
"""VGG-16's convolutions up to ``relu4_3`` (``"M"``: 2x2 max pooling), as in torchvision's
``vgg16().features[:23]``."""

VGG16_BLOCKS = ((0, 4), (4, 9), (9, 16), (16, 23))
"""The slices of those layers whose outputs the perceptual loss compares (``relu1_2``,
``relu2_2``, ``relu3_3``, ``relu4_3``), as in AutoLink's reference loss."""


def vgg16_features() -> nn.Sequential:
    """VGG-16's ``features[:23]`` with torchvision's layer indices (so that a torchvision VGG-16
    state dict loads): 3x3 convs with ReLU, 2x2 max pooling."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG16_LAYERS:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += conv_relu(channels, int(entry))
            channels = int(entry)
    return nn.Sequential(*layers)


class PerceptualLoss(nn.Module):
    """AutoLink's perceptual loss: ``Σ_blocks L1(φ_b(x̂), φ_b(x))`` on a frozen VGG-16.

    Images in ``[0, 1]`` are normalised with ImageNet's mean and std and resized (bilinear) to
    ``image_size`` (the reference: 224) before the network; the four blocks end at ``relu1_2``,
    ``relu2_2``, ``relu3_3`` and ``relu4_3`` (:data:`VGG16_BLOCKS`).

    Args:
        weights: path of a ``torch.save``-d state dict of VGG-16: torchvision's
            (``features.0.weight``, ..., the ``classifier`` entries are ignored) or of
            :func:`vgg16_features` alone (``0.weight``, ...).
        image_size: side the images are resized to.

    Raises:
        FileNotFoundError: if ``weights`` does not exist.
        ValueError: if it is not a state dict holding VGG-16's first ten convolutions with the
            right shapes (the message lists what is missing or mismatched).
    """

    def __init__(self, weights: str | Path, image_size: int = 224) -> None:
        super().__init__()
        self.network = vgg16_features()
        self.network.load_state_dict(_vgg_state_dict(Path(weights), self.network.state_dict()))
        self.network.requires_grad_(False)
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, reconstructions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Perceptual distance of ``reconstructions (N, 3, H, W)`` to ``targets (N, 3, H, W)``,
        both in ``[0, 1]``; a scalar."""
        size = (self.image_size, self.image_size)
        x, y = ((images - self.mean) / self.std for images in (reconstructions, targets))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        total = x.new_zeros(())
        for start, stop in VGG16_BLOCKS:
            block = self.network[start:stop]
            x, y = block(x), block(y)
            total = total + F.l1_loss(x, y)
        return total


def _vgg_state_dict(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"perceptual_weights: no file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign files
        raise ValueError(f"perceptual_weights: {path} is not a torch state dict: {error}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"perceptual_weights: {path} holds a {type(payload).__name__}, not a dict")
    state = {}
    for name, reference in expected.items():
        value = payload.get(f"features.{name}", payload.get(name))
        if not isinstance(value, torch.Tensor):
            found = sorted(payload)[:8]
            raise ValueError(
                f"perceptual_weights: {path} lacks VGG-16's {name!r} (or 'features.{name}'); "
                f"expected the keys {sorted(expected)} (torchvision's vgg16 state dict works), "
                f"found {found}{' ...' if len(payload) > 8 else ''}"
            )
        if value.shape != reference.shape:
            raise ValueError(
                f"perceptual_weights: {path}: {name!r} has shape {tuple(value.shape)}, VGG-16's "
                f"is {tuple(reference.shape)}"
            )
        state[name] = value.to(reference.dtype)
    return state


__all__ = ["VGG16_BLOCKS", "VGG16_LAYERS", "PerceptualLoss", "vgg16_features"]
