"""The batch that offline training (``kp3d pretrain``) hands to a perception module.

:class:`FrameBatch` is the contract between datasets (``kp3d dataset``, :mod:`kp3d.data`) and the
perception modules' :meth:`~kp3d.perception.Perception.training_losses`: images of ``C`` calibrated
cameras, their matrices of the same step, and, when the dataset has them, the simulator's ground
truth. Unsupervised methods read only the images and matrices; supervised detectors read the
labels; methods that learn from two frames of one episode (Transporter, temporal equivariance,
correspondences across time) read :attr:`FrameBatch.pair`.

Shapes (``B`` samples, ``C`` cameras, ``K`` keypoints, images ``H x W``):

========================  ======================  ==============================================
field                     shape                   meaning
========================  ======================  ==============================================
``images``                ``(B, C, 3, H, W)``     float32 in ``[0, 1]``, camera order of the env
``intrinsics``            ``(B, C, 3, 3)``        :mod:`kp3d.geometry` convention
``extrinsics``            ``(B, C, 4, 4)``        world→camera of the same step
``keypoints_world``       ``(B, K, 3)``           ground-truth keypoints, world frame (metres)
``keypoints_pixels``      ``(B, C, K, 2)``        their projections, full-image pixels ``(u, v)``
``keypoints_visible``     ``(B, C, K)`` bool      inside the image and not occluded
``depth``                 ``(B, C, H, W)``        metric depth along the optical axis (metres)
``segmentation``          ``(B, C, H, W)`` int64  MuJoCo body id per pixel, -1 for background
``body_poses``            ``(B, N, 4, 4)``        body→world transform of every body
``backgrounds``           ``(B, C, 3, H, W)``     the empty scene each view shows (moving cameras)
``pair``                  a ``FrameBatch``        another frame of the same episode per sample
========================  ======================  ==============================================

Everything but the images and matrices is optional (``None`` when the dataset lacks it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class FrameBatch:
    """A batch of multi-camera frames with optional ground truth (see the module docstring)."""

    images: torch.Tensor
    intrinsics: torch.Tensor
    extrinsics: torch.Tensor
    keypoints_world: torch.Tensor | None = None
    keypoints_pixels: torch.Tensor | None = None
    keypoints_visible: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    segmentation: torch.Tensor | None = None
    body_poses: torch.Tensor | None = None
    backgrounds: torch.Tensor | None = None
    pair: FrameBatch | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 5:
            raise ValueError(
                "FrameBatch.images must be a (B, C, 3, H, W) tensor; got "
                f"{getattr(self.images, 'shape', type(self.images))}"
            )
        batch, cameras = self.images.shape[:2]
        expected = {
            "intrinsics": (batch, cameras, 3, 3),
            "extrinsics": (batch, cameras, 4, 4),
            "depth": (batch, cameras, *self.images.shape[3:]),
            "segmentation": (batch, cameras, *self.images.shape[3:]),
            "backgrounds": tuple(self.images.shape),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"FrameBatch.{name} must have shape {shape}; got {tuple(value.shape)}"
                )
        if self.pair is not None and tuple(self.pair.images.shape) != tuple(self.images.shape):
            raise ValueError(
                "FrameBatch.pair must hold images of the same shape "
                f"{tuple(self.images.shape)}; got {tuple(self.pair.images.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_cameras(self) -> int:
        return int(self.images.shape[1])

    @property
    def has_labels(self) -> bool:
        """Whether the 2D ground truth (pixels and visibility) is present."""
        return self.keypoints_pixels is not None and self.keypoints_visible is not None

    def to(self, device: torch.device | str) -> FrameBatch:
        """The same batch with every tensor on ``device``."""
        values = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            values[item.name] = value.to(device) if value is not None else None
        return FrameBatch(**values)
