"""Pixel baselines: a plain CNN per camera (``pixel``) and the same with RAD random crops (``rad``).

No keypoints and no auxiliary losses: the policy's gradients alone train the encoder. The encoder
is Stable-Baselines3's ``NatureCNN`` (Mnih et al., Nature 2015) with padding added so that small
views keep a useful grid: conv ``8x8/4 → 32``, conv ``4x4/2 → 64``, conv ``3x3/1 → 64`` (padding
2, 1, 1; ReLU after each), flatten, ``Linear → camera_features``, ReLU. Padded, each layer divides
a side by its stride exactly (sides that are multiples of 8):

* 64 px view: ``64 → 16 → 8 → 8``, flattened ``64 · 8 · 8 = 4096`` into the linear layer;
* 56 px RAD crop: ``56 → 14 → 7 → 7``, flattened ``64 · 7 · 7 = 3136``, NatureCNN's at 84 px.

Unpadded, as in SB3, a 64 px view would end on a 4 x 4 grid, a 56 px crop on 3 x 3, and views
under 36 px would not fit at all. Non-square views work alike (48 x 64 → 6 x 8). Views enter in
``[0, 1]``, as SB3's ``NatureCNN`` gets them.

RAD (Laskin et al., "Reinforcement Learning with Augmented Data", NeurIPS 2020) crops a larger
render to the encoder's size at random in training. The views here are rendered at the size the
agent is given, so RAD here is: a random ``random_crop``-pixel window of each view in training
(each camera and sample its own, as Keypoint3D's crops), the centred window in eval.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    check_positive_ints,
    register_perception,
)
from kp3d.perception.layers import (
    ConvLayer,
    ConvStack,
    conv_sizes,
    resolve_crop_size,
    sample_crop_origins,
)
from kp3d.spatial import crop_images

NATURE_LAYERS = (ConvLayer(8, 4, 2), ConvLayer(4, 2, 1), ConvLayer(3, 1, 1))
"""NatureCNN's kernels and strides, padded (see the module docstring)."""

NATURE_CHANNELS = (32, 64, 64)
"""NatureCNN's channels."""


@register_perception("pixel")
class PixelEncoder(Perception):
    """A NatureCNN per camera, its features concatenated: the pixel baseline of Keypoint3D.

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)`` of every view.
        camera_features: features per camera, the output of each encoder's linear layer (SB3's
            ``NatureCNN`` default ``features_dim`` is 512).
        shared_encoder: one encoder applied to every camera (default), or one per camera.
        random_crop: RAD augmentation: crop side ``L`` or ``(h, w)`` of a random window in
            training and the centred one in eval; ``"auto"``: the image minus an eighth of each
            side, rounded down to a multiple of 8 (56 of 64 px, Keypoint3D's crop); ``None``
            (default): the whole view, no augmentation.

    Outputs: ``features (B, C · camera_features)`` camera-major, ``keypoints (B, 0, 2)`` (no
    keypoints; ``keypoint_frame`` is ``"image"``), ``confidence None``, ``losses {}``. With
    ``random_crop`` the visuals give the window each encoder saw (``crop_origins (B, C, 2)``,
    ``crop_size``); otherwise they are empty.
    """

    keypoint_frame = "image"

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        camera_features: int = 512,
        shared_encoder: bool = True,
        random_crop: int | Sequence[int] | Literal["auto"] | None = None,
    ) -> None:
        super().__init__(num_cameras, image_size)
        check_positive_ints(camera_features=camera_features)
        self.camera_features = camera_features
        self.random_crop = random_crop is not None
        if random_crop is None:
            self.input_size = self.image_size
        else:
            crop = None if random_crop == "auto" else random_crop
            self.input_size = resolve_crop_size(crop, self.image_size, 8, name="random_crop")
        sizes = conv_sizes(self.input_size, NATURE_LAYERS)
        if min(sizes[-1]) < 1:
            raise ValueError(f"views of {self.input_size} px are too small for the encoder")
        flattened = NATURE_CHANNELS[-1] * sizes[-1][0] * sizes[-1][1]
        self.encoders = nn.ModuleList(
            nn.Sequential(
                ConvStack(3, NATURE_CHANNELS, NATURE_LAYERS),
                nn.Flatten(),
                nn.Linear(flattened, camera_features),
                nn.ReLU(),
            )
            for _ in range(1 if shared_encoder else self.num_cameras)
        )

    @property
    def features_dim(self) -> int:
        """``C · camera_features``."""
        return self.num_cameras * self.camera_features

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception`; the matrices are validated but not used, and
        there are no losses whatever ``compute_losses``."""
        self.check_inputs(images, intrinsics, extrinsics)
        batch = images.shape[0]
        visuals = PerceptionVisuals()
        if self.random_crop:
            origins = sample_crop_origins(
                (batch, self.num_cameras),
                self.image_size,
                self.input_size,
                random=self.training,
                device=images.device,
                dtype=images.dtype,
            )
            images = crop_images(images, origins, self.input_size)
            visuals = PerceptionVisuals(crop_origins=origins, crop_size=self.input_size)
        if len(self.encoders) == 1:
            features = self.encoders[0](images.flatten(0, 1)).reshape(batch, -1)
        else:
            per_camera = [encoder(images[:, n]) for n, encoder in enumerate(self.encoders)]
            features = torch.cat(per_camera, dim=1)
        return PerceptionOutput(
            features=features, keypoints=images.new_zeros(batch, 0, 2), visuals=visuals
        )


@register_perception("rad")
class RAD(PixelEncoder):
    """RAD (Laskin et al., NeurIPS 2020): :class:`PixelEncoder` with ``random_crop="auto"`` by
    default (56 px windows of 64 px views); every argument is :class:`PixelEncoder`'s."""

    __init__ = functools.partialmethod(PixelEncoder.__init__, random_crop="auto")


__all__ = ["NATURE_CHANNELS", "NATURE_LAYERS", "RAD", "PixelEncoder"]
