"""D2-Net's network and what it reads off its one feature map: the VGG16 trunk, the dense
descriptors, the soft (training) and hard (inference) detection scores, and the multiscale pyramid
of detections (:func:`detect`). The method as a whole is described in :mod:`kp3d.perception.d2net`.

A CNN maps an image to a feature map ``F`` of ``n`` channels on an ``h x w`` grid, and that one
map is

* the **dense descriptor field**: ``d_ij = F_ij / ||F_ij||`` (:func:`dense_descriptors`);
* ``n`` **detection maps** ``D^k = F[k]``. At inference (:func:`hard_detections`) cell ``(i, j)``
  is a detection iff ``D^k_ij`` is a local maximum of ``D^k`` (3 x 3 neighbourhood), where
  ``k = argmax_t D^t_ij``. In training the score is soft (:func:`soft_detection_scores`):
  ``alpha^k_ij = exp(D^k_ij) / Σ_{(i',j') ∈ N(i,j)} exp(D^k_i'j')`` over the 3 x 3
  neighbourhood, ``beta^k_ij = D^k_ij / max_t D^t_ij``, ``gamma_ij = max_k alpha^k_ij beta^k_ij``
  and ``s_ij = gamma_ij / Σ gamma``.

**Inference** (:func:`detect`): the image pyramid (0.5, 1, 2 by default). Coarse to fine, the
feature map of each level is added to the bilinearly upsampled *accumulated* map of the coarser
levels; detections are found by the hard rule on the accumulated map, skipping cells that a
coarser level already detected (as D2-Net's ``process_multiscale``); a detection's descriptor is
the normalised accumulated feature and its score the accumulated ``D^k`` divided by the number of
levels summed. Detections sit at the centres of their cells, mapped to full-image pixels in
:mod:`kp3d.geometry`'s convention (:func:`kp3d.spatial.heatmap_to_image`).

**Trunk** (:class:`VGGTrunk`): VGG16 truncated after ``conv4_3`` as in D2-Net (blocks of 2, 2, 3
and 3 3x3 convs, ReLU after each, including the last: ``D ≥ 0``), by default at a quarter of
VGG16's widths (an eighth in the last block: 64-dimensional descriptors) for 64 px views. D2-Net
replaces ``pool3`` by a stride-1 pool and dilates ``conv4`` so that the map keeps 1/4 resolution;
for 64 px views this module keeps 1/2 (``stride=2``: ``pool2`` is replaced too, ``conv3`` dilated
by 2 and ``conv4`` by 4, same receptive field as VGG16). Replaced pools are 3 x 3 average pools
with stride 1 and padding 1 (D2-Net's 2 x 2 shifts the map by half a cell).
Images are normalised with the ImageNet mean and standard deviation, as VGG16 expects. No
pretrained weights can be downloaded here; ``trunk_weights`` takes a weights file the user
supplies (:meth:`VGGTrunk.load_weights`). Trained from random weights, the trunk needs
BatchNorm after its convs (the VGG16-BN layout, ``batch_norm=True`` by default): without it the
hardest-negative loss collapses every descriptor onto one direction (see :class:`VGGTrunk`).

Deviations from the reference code, for the record: D2-Net's code divides ``D`` by its maximum
over the image before the exponential of ``alpha`` (a temperature); this module follows the paper's
formula. Local maxima of the hard rule are strict, and a cell whose channels are all 0 (the
ReLU's dead zone) is never a detection: flat regions, exact in renders, would otherwise be
detected everywhere (:func:`hard_detections`). D2-Net's test-time sub-pixel refinement and edge
rejection (not in METHODS.md) are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kp3d.perception.coordinates import cell_grid
from kp3d.spatial import heatmap_to_image

EPS = 1e-8
"""Smallest divisor of the detection scores."""

VGG16_BLOCKS = (2, 2, 3, 3)
"""Convs per block of VGG16 up to ``conv4_3``: conv1_1-2, conv2_1-2, conv3_1-3, conv4_1-3."""

VGG16_WIDTHS = (64, 128, 256, 512)
"""VGG16's channels per block; ``widths=VGG16_WIDTHS`` takes VGG16 weights (``trunk_weights``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# -- detection ---------------------------------------------------------------------------------


def _check_features(features: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor) or features.ndim < 3:
        shape = getattr(features, "shape", type(features))
        raise ValueError(f"features must be a (*, n, h, w) tensor; got {tuple(shape)}")


def dense_descriptors(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Descriptors ``d_ij = F_ij / ||F_ij||``: unit vectors along the channels.

    Args:
        features: ``(*, n, h, w)``.
        eps: smallest norm divisor (a zero feature stays zero).

    Returns:
        ``(*, n, h, w)``.
    """
    _check_features(features)
    return F.normalize(features, dim=-3, eps=eps)


def soft_detection_scores(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """D2-Net's soft detection score ``s`` of every cell (see the module docstring).

    ``alpha^k_ij = exp(D^k_ij) / Σ_{N(i,j)} exp(D^k)`` over the 3 x 3 neighbourhood; cells
    outside the map count as ``D = 0``, the smallest value of ReLU features, as D2-Net's code
    pads them. ``beta^k_ij = D^k_ij / max_t D^t_ij``, ``gamma_ij = max_k alpha^k_ij beta^k_ij``
    and ``s = gamma / Σ gamma`` over the ``h x w`` cells.

    The exponentials are taken after subtracting each map's maximum ``max_ij D^k_ij``, which
    cancels exactly in ``alpha``; a cell whose whole neighbourhood lies more than ~87 below its
    map's maximum (float32's ``exp`` underflow) gets ``alpha = 0`` instead of a ratio of zeros.

    Args:
        features: ``(*, n, h, w)`` non-negative detection maps ``D`` (the trunk's ReLU output).
        eps: smallest divisor of ``beta`` (a cell whose channels are all 0 has ``beta = 0``) and
            of ``s``.

    Returns:
        ``(*, h, w)`` scores, non-negative, each map summing to 1 (unless every ``gamma`` is 0).
    """
    _check_features(features)
    shape = features.shape
    maps = features.reshape(-1, *shape[-3:])  # (N, n, h, w)
    shift = maps.amax(dim=(-2, -1), keepdim=True).detach()
    exponentials = torch.exp(F.pad(maps, (1, 1, 1, 1), value=0.0) - shift)  # outside: D = 0
    sums = 9.0 * F.avg_pool2d(exponentials, kernel_size=3, stride=1)  # (N, n, h, w)
    tiny = torch.finfo(maps.dtype).tiny
    alpha = exponentials[..., 1:-1, 1:-1] / sums.clamp(min=tiny)
    beta = maps / maps.amax(dim=1, keepdim=True).clamp(min=eps)
    gamma = (alpha * beta).amax(dim=1)  # (N, h, w)
    scores = gamma / (gamma.sum(dim=(-2, -1), keepdim=True) + eps)
    return scores.reshape(*shape[:-3], *shape[-2:])


def hard_detections(features: torch.Tensor) -> torch.Tensor:
    """D2-Net's hard detection rule: ``(i, j)`` is a detection iff ``D^k_ij`` is a local maximum
    of ``D^k`` over its 3 x 3 neighbourhood, with ``k = argmax_t D^t_ij``.

    The maximum is strict: ``D^k_ij`` exceeds its 8 neighbours. D2-Net's code compares with a
    max-pool (``D == max_pool(D)``), which also accepts ties; in photographs ties do not occur, but
    the uniformly coloured surfaces of rendered scenes give exactly flat feature maps, where every
    cell would tie and be detected. Any of several tied channels counts as the argmax; a cell
    whose channels are all ``<= 0`` is never a detection.

    Args:
        features: ``(*, n, h, w)`` detection maps ``D``.

    Returns:
        ``(*, h, w)`` bool.
    """
    _check_features(features)
    shape = features.shape
    maps = features.reshape(-1, *shape[-3:])
    height, width = shape[-2:]
    channel_max = maps.amax(dim=1, keepdim=True)
    padded = F.pad(maps, (1, 1, 1, 1), value=float("-inf"))
    neighbours = torch.stack(
        [
            padded[..., 1 + dv : 1 + dv + height, 1 + du : 1 + du + width]
            for dv in (-1, 0, 1)
            for du in (-1, 0, 1)
            if (dv, du) != (0, 0)
        ]
    ).amax(dim=0)
    detected = ((maps > neighbours) & (maps == channel_max)).any(dim=1) & (channel_max[:, 0] > 0)
    return detected.reshape(*shape[:-3], *shape[-2:])


# -- the trunk ---------------------------------------------------------------------------------


class VGGTrunk(nn.Module):
    """VGG16 up to ``conv4_3`` with D2-Net's changes: the dense feature map ``F`` of D2-Net.

    Blocks of :data:`VGG16_BLOCKS` 3x3 convs, each followed by a ReLU (the last one too, so
    ``F >= 0``); with ``batch_norm`` a BatchNorm sits between every conv and its ReLU (the layout
    of VGG16-BN). Between blocks VGG16 has 2 x 2 max-pools of stride 2; the first
    ``log2(stride)`` are kept, and each later one is replaced by a 3 x 3 average pool of stride 1
    with every following conv's dilation doubled (as D2-Net does with ``pool3``), so the map has
    ``1 / stride`` of the image's resolution and VGG16's receptive field.

    Why BatchNorm by default: D2-Net fine-tunes an ImageNet VGG16, whose features are
    discriminative from the start. Trained from random weights (nothing can be downloaded here),
    the ReLU features of a plain VGG are nearly parallel (mean cosine 0.95 between cells at
    initialisation) and the hardest-negative loss drives them onto one direction (mean cosine
    0.997, loss stuck at the margin, after 100 steps on the scene of ``tests/kp3d/test_d2net.py``);
    with BatchNorm the same run learns (loss 1.9 → 0.3, mean cosine 0.3).

    Args:
        widths: output channels of the four blocks; the last is the descriptor size ``n``.
        stride: ``1``, ``2`` (default in :class:`D2Net`) or ``4`` (D2-Net's layout): pixels per
            cell.
        batch_norm: BatchNorm after every conv (VGG16-BN); ``False`` is VGG16 (and D2-Net).

    Input ``(N, 3, H, W)`` in ``[0, 1]`` (normalised here with the ImageNet statistics, as VGG16
    expects), with ``H`` and ``W`` multiples of ``stride``; output
    ``(N, n, H / stride, W / stride)``.
    """

    def __init__(
        self, widths: Sequence[int] = (16, 32, 64, 64), stride: int = 2, batch_norm: bool = True
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) != len(VGG16_BLOCKS) or not all(
            isinstance(w, (int, np.integer)) and w > 0 for w in widths
        ):
            raise ValueError(f"widths must be four positive ints (one per block); got {widths!r}")
        if stride not in (1, 2, 4):
            raise ValueError(f"stride must be 1, 2 or 4; got {stride!r}")
        self.widths = tuple(int(w) for w in widths)
        self.stride = int(stride)
        self.batch_norm = bool(batch_norm)
        halvings = {1: 0, 2: 1, 4: 2}[self.stride]
        layers: list[nn.Module] = []
        channels, dilation = 3, 1
        for block, (convs, width) in enumerate(zip(VGG16_BLOCKS, self.widths, strict=True)):
            if block > 0:
                if block <= halvings:
                    layers.append(nn.MaxPool2d(2, stride=2))
                else:
                    layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
                    dilation *= 2
            for _ in range(convs):
                layers.append(nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation))
                if self.batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU())
                channels = width
        self.layers = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    @property
    def channels(self) -> int:
        """``n``, the descriptor size."""
        return self.widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in ``[0, 1]`` → ``(N, n, H / stride, W / stride)``, non-negative."""
        return self.layers((images - self.mean) / self.std)

    def convs(self) -> list[nn.Conv2d]:
        """The 10 convs in order (conv1_1 … conv4_3)."""
        return [layer for layer in self.layers if isinstance(layer, nn.Conv2d)]

    def load_weights(self, path: str | Path) -> None:
        """Initialise the trunk from a weights file that the user supplies.

        Accepted: a file saved with ``torch.save`` holding a ``state_dict`` (or a dict keeping
        one under ``"model"`` or ``"state_dict"``, as D2-Net's released ``d2_tf.pth``) of this
        trunk, or of a VGG16 whose first layers are conv1_1 … conv4_3: ``vgg16().features`` or
        ``vgg16()`` of torchvision for ``batch_norm=False``, ``vgg16_bn()`` for
        ``batch_norm=True``. Foreign keys are matched by order: the file's first tensors (BatchNorm
        batch counters aside) are copied, in order, into the trunk's, and every shape must
        match: ImageNet weights need ``widths=VGG16_WIDTHS``. Dilations and pools have no
        weights, so any ``stride`` takes them.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file holds no state dict, too few tensors, or other shapes.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no trunk weights file at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for corrupt or foreign files
            raise ValueError(f"{path} is not a readable torch weights file: {error}") from error
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ValueError(f"{path} holds no state_dict of tensors")
        own = self.state_dict()
        if set(state) == set(own):
            self.load_state_dict(state)
            return
        counters = "num_batches_tracked"
        theirs = [(k, v) for k, v in state.items() if not k.endswith(counters)]
        mine = [k for k in own if not k.endswith(counters)]
        layout = f"widths={self.widths}, batch_norm={self.batch_norm}"
        if len(theirs) < len(mine):
            raise ValueError(
                f"{path} holds {len(theirs)} tensors; this trunk ({layout}) needs {len(mine)}: "
                f"conv1_1 … conv4_3{' with their BatchNorms' if self.batch_norm else ''}"
            )
        for name, (key, value) in zip(mine, theirs, strict=False):
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"{path}: {key} {tuple(value.shape)} does not fit the trunk's {name} "
                    f"{tuple(own[name].shape)} ({layout}; ImageNet VGG16 weights need "
                    f"widths={VGG16_WIDTHS}, and batch_norm=False for vgg16, True for vgg16_bn)"
                )
            own[name] = value
        self.load_state_dict(own)


# -- the pyramid -------------------------------------------------------------------------------


@dataclass
class Detections:
    """Detections of a batch of images, best first, padded to a fixed count.

    Attributes:
        pixels: ``(*, M, 2)`` full-image pixels ``(u, v)`` (cell centres); NaN where not valid.
        descriptors: ``(*, M, n)`` unit descriptors; 0 where not valid.
        scores: ``(*, M)`` accumulated ``D^k`` over the number of pyramid levels summed;
            ``-inf`` where not valid.
        valid: ``(*, M)`` bool.
    """

    pixels: torch.Tensor
    descriptors: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor

    def reshape(self, *shape: int) -> Detections:
        """The same detections with leading dimensions ``shape`` (e.g. ``(B, C)``)."""
        return Detections(
            self.pixels.reshape(*shape, *self.pixels.shape[-2:]),
            self.descriptors.reshape(*shape, *self.descriptors.shape[-2:]),
            self.scores.reshape(*shape, self.scores.shape[-1]),
            self.valid.reshape(*shape, self.valid.shape[-1]),
        )


def level_size(image_size: tuple[int, int], scale: float, stride: int) -> tuple[int, int]:
    """``(h, w)`` of the resized image of a pyramid level: ``scale`` times the image, rounded to
    a multiple of ``stride`` (at least ``stride``), so that the level's cells tile it exactly."""
    return tuple(max(stride, round(n * scale / stride) * stride) for n in image_size)


def detect(
    trunk: VGGTrunk,
    images: torch.Tensor,
    scales: Sequence[float] = (0.5, 1.0, 2.0),
    max_detections: int = 64,
) -> Detections:
    """Multi-scale D2-Net detection and description (see the module docstring).

    Args:
        trunk: the feature network.
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        scales: pyramid levels (image scale factors), visited from coarse to fine whatever their
            order; ``(1.0,)`` is single-scale detection.
        max_detections: ``M``, detections kept per image (the highest scores).

    Returns:
        :class:`Detections` with leading dimension ``N``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W); got {tuple(images.shape)}")
    if not scales or not all(s > 0 for s in scales):
        raise ValueError(f"scales must be positive factors; got {scales!r}")
    if not isinstance(max_detections, (int, np.integer)) or max_detections < 1:
        raise ValueError(f"max_detections must be a positive int; got {max_detections!r}")
    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    accumulated: torch.Tensor | None = None
    banned: torch.Tensor | None = None
    all_pixels, all_descriptors, all_scores = [], [], []
    for level, scale in enumerate(sorted(scales)):
        size = level_size(image_size, scale, trunk.stride)
        resized = images
        if size != image_size:
            resized = F.interpolate(
                images, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        features = trunk(resized)  # (N, n, h, w)
        grid = tuple(features.shape[-2:])
        if accumulated is not None:
            features = features + F.interpolate(
                accumulated, size=grid, mode="bilinear", align_corners=False
            )
        accumulated = features
        detected = hard_detections(features)  # (N, h, w)
        if banned is not None:
            banned = F.interpolate(banned[:, None].float(), size=grid, mode="nearest")[:, 0] > 0
            detected = detected & ~banned
            banned = banned | detected
        else:
            banned = detected
        scores = features.amax(dim=1) / (level + 1)
        all_scores.append(torch.where(detected, scores, float("-inf")).flatten(1))
        all_descriptors.append(dense_descriptors(features).flatten(2).transpose(1, 2))
        centres = cell_grid(*grid, device=images.device, dtype=images.dtype).reshape(-1, 2)
        all_pixels.append(heatmap_to_image(centres, grid, image_size))
    scores = torch.cat(all_scores, dim=1)  # (N, L)
    count = min(int(max_detections), scores.shape[1])
    best, index = scores.topk(count, dim=1)
    valid = torch.isfinite(best)
    pixels = torch.cat(all_pixels, dim=0)[index]  # (N, M, 2)
    descriptors = torch.cat(all_descriptors, dim=1)
    descriptors = descriptors.gather(1, index[..., None].expand(-1, -1, descriptors.shape[-1]))
    if count < max_detections:  # fewer cells than asked for: pad
        pad = max_detections - count
        pixels = F.pad(pixels, (0, 0, 0, pad))
        descriptors = F.pad(descriptors, (0, 0, 0, pad))
        best = F.pad(best, (0, pad), value=float("-inf"))
        valid = F.pad(valid, (0, pad), value=False)
    pixels = torch.where(valid[..., None], pixels, float("nan"))
    descriptors = descriptors * valid[..., None]
    return Detections(pixels, descriptors, best, valid)


__all__ = [
    "EPS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_BLOCKS",
    "VGG16_WIDTHS",
    "Detections",
    "VGGTrunk",
    "dense_descriptors",
    "detect",
    "hard_detections",
    "level_size",
    "soft_detection_scores",
]
