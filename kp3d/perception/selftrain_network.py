"""Self-training's networks: the small U-Net backbone shared by every head, the detector and
descriptor heads that stages 0 and 1 train (:class:`CorrespondenceNetwork`), the frozen snapshot of
it that labels the views (:class:`FrozenCopy`, the *teacher*), and their maps read at points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from kp3d.perception.layers import conv_relu
from kp3d.spatial import EPS


class LandmarkBackbone(nn.Module):
    """A small U-Net: ``(N, 3, H, W)`` → ``(N, 2f, H/2, W/2)`` features.

    ``conv f`` at ``H``, ``2f`` at ``H/2``, ``4f, 4f`` at ``H/4``, ``4f, 4f`` at ``H/8``, then up
    (bilinear) to ``H/4`` with the skip concatenated (``conv 4f``) and to ``H/2`` (``conv 2f``).
    """

    def __init__(self, base_filters: int) -> None:
        super().__init__()
        f = base_filters
        self.down2 = nn.Sequential(*conv_relu(3, f), *conv_relu(f, 2 * f, stride=2))
        self.down4 = nn.Sequential(*conv_relu(2 * f, 4 * f, stride=2), *conv_relu(4 * f, 4 * f))
        self.down8 = nn.Sequential(*conv_relu(4 * f, 4 * f, stride=2), *conv_relu(4 * f, 4 * f))
        self.up4 = nn.Sequential(*conv_relu(8 * f, 4 * f))
        self.up2 = nn.Sequential(*conv_relu(6 * f, 2 * f))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` → ``(N, 2f, H/2, W/2)``."""
        half = self.down2(views * 2.0 - 1.0)
        quarter = self.down4(half)
        eighth = self.down8(quarter)
        up = F.interpolate(eighth, size=quarter.shape[-2:], mode="bilinear", align_corners=False)
        up = self.up4(torch.cat([up, quarter], dim=1))
        up = F.interpolate(up, size=half.shape[-2:], mode="bilinear", align_corners=False)
        return self.up2(torch.cat([up, half], dim=1))


def conv_head(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    """``conv 3x3 + ReLU + conv 1x1``: a head of ``outputs`` channels on the backbone."""
    return nn.Sequential(*conv_relu(inputs, hidden), nn.Conv2d(hidden, outputs, 1))


class CorrespondenceNetwork(nn.Module):
    """The backbone with its detector (1 channel) and descriptor (``D`` channels, unit norm)
    heads: what stages 0 and 1 train and the teacher copies."""

    def __init__(self, base_filters: int, descriptor_dim: int) -> None:
        super().__init__()
        self.backbone = LandmarkBackbone(base_filters)
        self.detector = conv_head(2 * base_filters, base_filters, 1)
        self.descriptor = conv_head(2 * base_filters, 2 * base_filters, descriptor_dim)

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` → ``features (N, 2f, S_h, S_w)``, ``detections (N, 1, S_h, S_w)``
        and unit ``descriptors (N, D, S_h, S_w)``."""
        features = self.backbone(views)
        descriptors = F.normalize(self.descriptor(features), dim=1, eps=EPS)
        return features, self.detector(features), descriptors


class FrozenCopy(nn.Module):
    """A snapshot of a module's parameters held as buffers (saved with the state dict, never
    trained), run through :func:`torch.func.functional_call` on the live module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.names = [name for name, _ in module.named_parameters()]
        for name, parameter in module.named_parameters():
            self.register_buffer(name.replace(".", "__"), parameter.detach().clone())

    def copy_from(self, module: nn.Module) -> None:
        """Take a new snapshot of ``module``'s parameters."""
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                getattr(self, name.replace(".", "__")).copy_(parameter)

    def run(self, module: nn.Module, *args: torch.Tensor) -> object:
        """``module(*args)`` with the snapshot's parameters."""
        state = {name: getattr(self, name.replace(".", "__")) for name in self.names}
        return functional_call(module, state, args)


# -- reading maps at points ------------------------------------------------------------------------


def sample_descriptors(field: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Unit descriptors at sub-cell positions of a dense field (bilinear).

    Args:
        field: ``(N, D, S_h, S_w)`` descriptor field.
        cells: ``(N, P, 2)`` positions ``(u, v)`` on the field's grid (:mod:`kp3d.spatial`).

    Returns:
        ``(N, P, D)`` unit vectors.
    """
    height, width = field.shape[-2:]
    grid = cells / cells.new_tensor([width / 2.0, height / 2.0]) - 1.0
    sampled = F.grid_sample(field, grid[:, :, None], mode="bilinear", align_corners=False)
    return F.normalize(sampled[..., 0].transpose(1, 2), dim=-1, eps=EPS)


def peak_values(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Differentiable value of ``maps (N, K, S_h, S_w)`` at ``cells (N, K, 2)`` (bilinear): the
    confidence of each landmark at its refined peak."""
    height, width = maps.shape[-2:]
    grid = cells / cells.new_tensor([width / 2.0, height / 2.0]) - 1.0  # (N, K, 2)
    flat = maps.flatten(0, 1)[:, None]  # (N K, 1, S_h, S_w)
    sampled = F.grid_sample(flat, grid.flatten(0, 1)[:, None, None], align_corners=False)
    return sampled.reshape(cells.shape[:-1])


__all__ = [
    "CorrespondenceNetwork",
    "FrozenCopy",
    "LandmarkBackbone",
    "conv_head",
    "peak_values",
    "sample_descriptors",
]
