"""D2-Net: one dense feature map that describes and detects, trained on simulator correspondences.

Dusmanu, Rocco, Pajdla, Pollefeys, Sivic, Torii and Sattler, "D2-Net: A Trainable CNN for Joint
Description and Detection of Local Features", CVPR 2019 (METHODS.md §2). A CNN maps an image to a
feature map ``F`` of ``n`` channels on an ``h x w`` grid, and that one map is

* the **dense descriptor field**: ``d_ij = F_ij / ||F_ij||`` (:func:`dense_descriptors`);
* ``n`` **detection maps** ``D^k = F[k]``. At inference (:func:`hard_detections`) cell ``(i, j)``
  is a detection iff ``D^k_ij`` is a local maximum of ``D^k`` (3 x 3 neighbourhood), where
  ``k = argmax_t D^t_ij``. In training the score is soft (:func:`soft_detection_scores`):
  ``alpha^k_ij = exp(D^k_ij) / Σ_{(i',j') ∈ N(i,j)} exp(D^k_i'j')`` over the 3 x 3
  neighbourhood, ``beta^k_ij = D^k_ij / max_t D^t_ij``, ``gamma_ij = max_k alpha^k_ij beta^k_ij``
  and ``s_ij = gamma_ij / Σ gamma``.

**Training** (:func:`d2net_loss`, :meth:`D2Net.training_losses`): for every cell ``c`` of image
``A`` with a true correspondence in image ``B`` (exact, from the simulator's depth, segmentation
and body poses: :mod:`kp3d.correspondence`), the positive distance ``p(c) = ||d^A_c - d^B_c'||``
to the descriptor of the cell ``c'`` where it lands, and the hardest negative
``n(c) = min(||d^A_c - d^B_N2||, ||d^A_N1 - d^B_c'||)`` over cells ``N2`` of ``B`` and ``N1`` of
``A`` farther than ``safe_radius`` cells (Chebyshev distance) from ``c'`` and ``c``. The loss is the
margin ranking loss ``m(c) = max(0, M + p(c)² - n(c)²)`` weighted by the detection scores of both
cells: ``L = Σ_c s^A_c s^B_c' m(c) / Σ_c s^A_c s^B_c'``, averaged over pairs of views. The pairs
are every ordered pair of two cameras at one time step and every (camera, camera) pair across two
time steps of an episode (:attr:`FrameBatch.pair`), whose points move with their bodies.

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

**As the perception of an agent** (:meth:`D2Net.forward`): per view the top ``max_detections``
pyramid detections; for every pair of cameras the mutual nearest neighbours of their descriptors;
the ``num_points`` matches of highest descriptor similarity triangulated into world points
(:func:`kp3d.geometry.triangulate`). See :class:`D2Net` for the exact output. The pyramid costs
about 5x a single-scale pass (the scale-2 level alone 4x); ``scales=(1.0,)`` is the cheap setting
for rollouts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.correspondence import DEPTH_TOLERANCE, find_correspondences
from kp3d.geometry import project, triangulate
from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    register_perception,
)
from kp3d.spatial import cell_centers, heatmap_to_image, image_to_heatmap

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
        u, v = cell_centers(*grid, device=images.device, dtype=images.dtype)
        centres = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(-1, 2)
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


# -- training ----------------------------------------------------------------------------------


def d2net_loss(
    features: torch.Tensor,
    view_pairs: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    image_size: tuple[int, int],
    margin: float = 1.0,
    safe_radius: int = 2,
    min_correspondences: int = 16,
) -> tuple[torch.Tensor, int]:
    """D2-Net's score-weighted margin ranking loss over pairs of images.

    For a pair ``(a, b)``, every cell ``c`` of ``a``'s map is a source; ``target`` holds where
    its point lands in image ``b`` and ``valid`` whether it has a correspondence there. The
    target cell ``c'`` is the cell of ``b`` that contains the target pixel. With unit descriptors
    ``d``, squared distances ``||d - d'||² = 2 - 2 d·d'``: ``p = ||d^a_c - d^b_c'||²``,
    ``n = min(min_{N2} ||d^a_c - d^b_N2||², min_{N1} ||d^a_N1 - d^b_c'||²)`` over cells more than
    ``safe_radius`` cells (Chebyshev distance) from ``c'`` in ``b`` and from ``c`` in ``a``,
    ``m = max(0, margin + p - n)``, and the pair's loss
    ``Σ_c s^a_c s^b_c' m_c / Σ_c s^a_c s^b_c'`` with the soft detection scores ``s``.

    Args:
        features: ``(N, n, h, w)`` feature maps ``F`` of ``N`` images of one size.
        view_pairs: ``(P, 2)`` int64 indices into ``features`` of each pair's images ``a``, ``b``.
        target: ``(P, h·w, 2)`` full-image pixels in image ``b`` of the cells of ``a``, in
            row-major cell order.
        valid: ``(P, h·w)`` bool.
        image_size: ``(H, W)`` of the images.
        margin: ``M``.
        safe_radius: cells (Chebyshev distance) around a correspondence that give no negatives.
        min_correspondences: pairs with fewer valid correspondences are skipped (D2-Net skips
            image pairs with fewer than 128 on its 4x larger maps).

    Returns:
        The mean loss over the pairs used (a zero that keeps the graph if none) and their number.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape (N, n, h, w); got {tuple(features.shape)}")
    count, _, height, width = features.shape
    pairs = view_pairs.shape[0]
    if view_pairs.shape != (pairs, 2) or bool(((view_pairs < 0) | (view_pairs >= count)).any()):
        raise ValueError(
            f"view_pairs must be (P, 2) indices of the {count} feature maps; got "
            f"{tuple(view_pairs.shape)} with values {view_pairs.unique().tolist()}"
        )
    if target.shape != (pairs, height * width, 2) or valid.shape != (pairs, height * width):
        raise ValueError(
            f"target must have shape {(pairs, height * width, 2)} and valid "
            f"{(pairs, height * width)}; got {tuple(target.shape)} and {tuple(valid.shape)}"
        )
    scores = soft_detection_scores(features).flatten(1)  # (N, h·w)
    descriptors = dense_descriptors(features).flatten(2).transpose(1, 2)  # (N, h·w, n)
    rows, columns = torch.meshgrid(
        torch.arange(height, device=target.device),
        torch.arange(width, device=target.device),
        indexing="ij",
    )
    cells = torch.stack([columns, rows], dim=-1).reshape(-1, 2)  # (h·w, 2) column, row
    # window[c]: the cells within the safe radius of cell c (Chebyshev distance; clamping at the
    # border repeats cells that are inside the radius anyway), and whether any cell lies outside.
    steps = torch.arange(-safe_radius, safe_radius + 1, device=target.device)
    window_columns = (cells[:, 0, None, None] + steps[None, None, :]).clamp(0, width - 1)
    window_rows = (cells[:, 1, None, None] + steps[None, :, None]).clamp(0, height - 1)
    window = (window_rows * width + window_columns).flatten(1)  # (h·w, (2r + 1)²)
    extent = torch.stack([cells, cells.new_tensor([width - 1, height - 1]) - cells], dim=-1)
    has_outside = extent.flatten(1).amax(dim=1) > safe_radius  # (h·w,) the farthest cell
    target_cells = image_to_heatmap(target, (height, width), image_size).floor().long()
    target_cells = torch.minimum(
        target_cells.clamp(min=0), target_cells.new_tensor([width - 1, height - 1])
    )
    landed_all = target_cells[..., 1] * width + target_cells[..., 0]  # (P, h·w)

    counts = valid.sum(dim=1)
    kept = counts >= min_correspondences  # (P,) pairs that enter the loss
    used = int(kept.sum())
    if used == 0:
        # Keep the graph so that a step without correspondences backpropagates zeros.
        return features.sum() * 0.0, 0
    # Every correspondence of the kept pairs, pair-major: E entries.
    pair_index, sources = (valid & kept[:, None]).nonzero(as_tuple=True)
    landed = landed_all[pair_index, sources]  # cell c' of each source cell c
    image_a, image_b = view_pairs[pair_index, 0], view_pairs[pair_index, 1]
    anchor = descriptors[image_a, sources]  # (E, n)
    positive = descriptors[image_b, landed]
    # Hardest negatives, pair by pair: the gradient of a minimum flows to the minimiser alone,
    # so they are searched without a graph and their distances recomputed with one.
    hardest_b = torch.empty_like(sources)
    hardest_a = torch.empty_like(sources)
    with torch.no_grad():
        start = 0
        for index in kept.nonzero()[:, 0].tolist():
            rows = slice(start, start + int(counts[index]))
            start = rows.stop
            a, b = view_pairs[index].tolist()
            for query, others, centres, hardest in (
                (anchor, descriptors[b], landed, hardest_b),
                (positive, descriptors[a], sources, hardest_a),
            ):
                # Largest similarity = smallest distance 2 - 2 d·d', outside the safe radius.
                similarity = query[rows] @ others.T  # (V, h·w)
                similarity.scatter_(1, window[centres[rows]], float("-inf"))
                hardest[rows] = similarity.argmax(dim=1)
    free_b, free_a = has_outside[landed], has_outside[sources]
    positive_distance = 2.0 - 2.0 * (anchor * positive).sum(-1)
    # The hardest negative in b for the source's descriptor, and in a for the target's.
    negative_b = 2.0 - 2.0 * (anchor * descriptors[image_b, hardest_b]).sum(-1)
    negative_a = 2.0 - 2.0 * (descriptors[image_a, hardest_a] * positive).sum(-1)
    negative_b = torch.where(free_b, negative_b, float("inf"))
    negative_a = torch.where(free_a, negative_a, float("inf"))
    margins = F.relu(margin + positive_distance - torch.minimum(negative_a, negative_b))
    weights = scores[image_a, sources] * scores[image_b, landed]
    weighted = features.new_zeros(pairs).index_add(0, pair_index, weights * margins)
    total_weight = features.new_zeros(pairs).index_add(0, pair_index, weights)
    return (weighted[kept] / (total_weight[kept] + EPS)).mean(), used


# -- matching and triangulation ----------------------------------------------------------------


def mutual_nearest_neighbours(
    descriptors_a: torch.Tensor,
    valid_a: torch.Tensor,
    descriptors_b: torch.Tensor,
    valid_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of two sets of unit descriptors (cosine similarity).

    Args:
        descriptors_a: ``(*, Ma, n)``.
        valid_a: ``(*, Ma)`` bool.
        descriptors_b: ``(*, Mb, n)``.
        valid_b: ``(*, Mb)`` bool.

    Returns:
        ``match (*, Ma)`` int64 index into ``b`` of each ``a``'s mutual nearest neighbour, -1 for
        none, and ``similarity (*, Ma)`` its cosine similarity (``-inf`` for none).
    """
    similarity = descriptors_a @ descriptors_b.transpose(-1, -2)  # (*, Ma, Mb)
    allowed = valid_a[..., :, None] & valid_b[..., None, :]
    similarity = similarity.masked_fill(~allowed, float("-inf"))
    best_b = similarity.argmax(dim=-1)  # (*, Ma)
    best_a = similarity.argmax(dim=-2)  # (*, Mb)
    back = best_a.gather(-1, best_b)
    value = similarity.gather(-1, best_b[..., None])[..., 0]
    own = torch.arange(descriptors_a.shape[-2], device=descriptors_a.device)
    mutual = (back == own) & torch.isfinite(value)
    match = torch.where(mutual, best_b, torch.full_like(best_b, -1))
    return match, torch.where(mutual, value, float("-inf"))


def triangulate_pairs(
    pixels_a: torch.Tensor,
    pixels_b: torch.Tensor,
    intrinsics: torch.Tensor,
    extrinsics: torch.Tensor,
) -> torch.Tensor:
    """World points of pixel matches, each between its own two cameras (two-view DLT,
    :func:`kp3d.geometry.triangulate`).

    Args:
        pixels_a: ``(*, 2)`` pixel of each match in its first camera.
        pixels_b: ``(*, 2)`` the matching pixel in its second camera.
        intrinsics: ``(*, 2, 3, 3)`` of the two cameras of each match.
        extrinsics: ``(*, 2, 4, 4)`` world→camera of the two cameras.

    Returns:
        ``(*, 3)``; NaN where a pixel is NaN.
    """
    points = torch.stack([pixels_a, pixels_b], dim=-2)[..., None, :]  # (*, 2, 1, 2)
    weights = torch.isfinite(points).all(-1).to(points.dtype)  # (*, 2, 1)
    return triangulate(points, intrinsics, extrinsics, weights)[..., 0, :]


def camera_pairs(count: int) -> list[tuple[int, int]]:
    """The unordered pairs ``(a, b)``, ``a < b``, of ``count`` cameras in lexicographic order."""
    return list(itertools.combinations(range(count), 2))


# -- the perception module ---------------------------------------------------------------------


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


@register_perception("d2net")
class D2Net(Perception):
    """D2-Net (Dusmanu et al., CVPR 2019): describe-and-detect features, matched across views and
    triangulated into world points (see the module docstring for the method).

    Args:
        num_cameras: ``C``.
        image_size: ``H`` or ``(H, W)``, multiples of ``stride``.
        widths: channels of the four VGG16 blocks of the trunk (:class:`VGGTrunk`); the last is
            the descriptor size ``n``. Default: a quarter of VGG16's, 64 at the end.
        stride: image pixels per feature cell (1, 2 or 4; D2-Net: 4 on 256 px crops).
        batch_norm: BatchNorm after every conv of the trunk (needed to train from random
            weights; see :class:`VGGTrunk`).
        scales: image pyramid of inference (``forward``, :func:`detect`); ``(1.0,)`` for one
            scale.
        max_detections: detections kept per view (the highest scores) in ``forward``.
        num_points: ``K``, triangulated matches returned by ``forward``.
        margin: ``M`` of the ranking loss (D2-Net: 1).
        safe_radius: cells (Chebyshev distance) around a correspondence that give no negatives
            (D2-Net: 4 cells of its 1/4-resolution maps; 2 of 1/2-resolution maps covers 4 px).
        min_correspondences: view pairs with fewer correspondences are left out of the loss.
        depth_tolerance: occlusion test of the correspondences (m, :mod:`kp3d.correspondence`).
        ignore_bodies: body ids whose correspondences are left out of the loss, e.g. ``(0,)``
            for the static world (floor, walls). D2-Net learns from MegaDepth, whose depth comes
            from multi-view stereo and so exists only where surfaces could be matched; the
            simulator's depth covers everything, including the kp3d floors, which are plain
            (Reach, Push, MultiReach) or a periodic checkerboard (Ant) and cannot be told apart
            by a local descriptor. Kept in, they are ~95% of the correspondences and stall the
            loss at the margin (measured on Ant: positive and hardest-negative distances
            ~0.002 on the floor, loss 1.0007 after 180 steps); see BENCHMARKS.md.
        trunk_weights: optional path of a weights file to initialise the trunk with
            (:meth:`VGGTrunk.load_weights`: this trunk's ``state_dict`` or VGG16's, e.g. ImageNet
            weights that the user downloaded elsewhere, with ``widths=VGG16_WIDTHS``). It is read
            only here: it is one of :attr:`~kp3d.perception.Perception.initialisation_files`, so
            a checkpoint stores it as ``None`` and loading one (its weights are in the state
            dict) never needs the file again. ``None`` (default): random initialisation; nothing
            is downloaded.

    Outputs of ``forward`` (``keypoint_frame = "world"``): ``keypoints (B, K, 3)`` world points
    triangulated from cross-view matches, ``confidence (B, K)``, ``features (B, 4 K)`` =
    ``[keypoints.flatten(1), confidence]``. The matches are the mutual nearest neighbours (cosine
    similarity) between the detections of every pair of cameras ``a < b``; they are ordered by
    descending similarity (ties by camera pair, then by the detection's rank in camera ``a``), and
    ``confidence`` is that similarity clipped at 0. Fewer than ``K`` matches (e.g. one camera) are
    padded with points at the origin and confidence 0. ``losses`` are always empty: the module is
    trained offline (:meth:`training_losses`, ``kp3d pretrain``) and used frozen or fine-tuned by
    the agent's loss. Visuals: ``points (B, C, K, 2)``, the triangulated points projected into
    every view, and ``detections (B, C, K, 2)``, the two matched detections each point was
    triangulated from, in their two views (NaN elsewhere and for padding, which videos do not
    draw); all pyramid detections of the views come from :meth:`detect`.
    """

    keypoint_frame = "world"
    # Trained on depth, segmentation and body poses, not on the keypoint labels that
    # `requires_labels` is about (FrameBatch.has_labels); `training_losses` checks what it needs.
    requires_labels = False
    uses_pairs = True
    initialisation_files = ("trunk_weights",)

    def __init__(
        self,
        num_cameras: int,
        image_size: int | Sequence[int],
        *,
        widths: Sequence[int] = (16, 32, 64, 64),
        stride: int = 2,
        batch_norm: bool = True,
        scales: Sequence[float] = (0.5, 1.0, 2.0),
        max_detections: int = 64,
        num_points: int = 16,
        margin: float = 1.0,
        safe_radius: int = 2,
        min_correspondences: int = 16,
        depth_tolerance: float = DEPTH_TOLERANCE,
        ignore_bodies: Sequence[int] = (),
        trunk_weights: str | Path | None = None,
    ) -> None:
        super().__init__(num_cameras, image_size)
        self.trunk = VGGTrunk(widths, stride, batch_norm)
        if any(n % self.trunk.stride for n in self.image_size):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of stride {self.trunk.stride}"
            )
        scales = tuple(float(s) for s in scales)
        if not scales or not all(s > 0 for s in scales):
            raise ValueError(f"scales must be positive factors; got {scales!r}")
        if not margin > 0:
            raise ValueError(f"margin must be positive; got {margin!r}")
        if not depth_tolerance > 0:
            raise ValueError(f"depth_tolerance must be positive; got {depth_tolerance!r}")
        if not isinstance(safe_radius, (int, np.integer)) or safe_radius < 0:
            raise ValueError(f"safe_radius must be a non-negative int; got {safe_radius!r}")
        self.scales = scales
        self.max_detections = _positive_int(max_detections, "max_detections")
        self.num_points = _positive_int(num_points, "num_points")
        self.min_correspondences = _positive_int(min_correspondences, "min_correspondences")
        self.margin = float(margin)
        self.safe_radius = int(safe_radius)
        self.depth_tolerance = float(depth_tolerance)
        self.ignore_bodies = tuple(int(b) for b in ignore_bodies)
        if trunk_weights is not None:
            self.trunk.load_weights(trunk_weights)

    @property
    def features_dim(self) -> int:
        """``4 K``: the ``K`` points' world coordinates, then their confidences."""
        return 4 * self.num_points

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the single-scale feature map (training)."""
        return self.image_size[0] // self.trunk.stride, self.image_size[1] // self.trunk.stride

    def detect(
        self,
        images: torch.Tensor,
        scales: Sequence[float] | None = None,
        max_detections: int | None = None,
    ) -> Detections:
        """Pyramid detections of views (:func:`detect`).

        Args:
            images: ``(*, 3, H, W)`` in ``[0, 1]``.
            scales: pyramid levels (default: the module's ``scales``).
            max_detections: detections per view (default: the module's).

        Returns:
            :class:`Detections` with the leading dimensions of ``images``.
        """
        leading = images.shape[:-3]
        found = detect(
            self.trunk,
            images.reshape(-1, *images.shape[-3:]),
            self.scales if scales is None else scales,
            self.max_detections if max_detections is None else max_detections,
        )
        return found.reshape(*leading)

    def match_views(
        self, detections: Detections, intrinsics: torch.Tensor, extrinsics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``K`` best cross-view matches of a batch, triangulated (the order of ``forward``).

        Args:
            detections: of shape ``(B, C, M)``.
            intrinsics: ``(B, C, 3, 3)``.
            extrinsics: ``(B, C, 4, 4)``.

        Returns:
            ``points (B, K, 3)`` (0 for padding), ``confidence (B, K)`` (0 for padding) and
            ``pixels (B, C, K, 2)``, each point's two matched detections in its two cameras (NaN
            in the other cameras and for padding).
        """
        batch, count, detected = detections.valid.shape
        pixels = intrinsics.new_full((batch, count, self.num_points, 2), float("nan"))
        pairs = camera_pairs(count)
        if not pairs:
            zeros = intrinsics.new_zeros(batch, self.num_points)
            return zeros[..., None].expand(-1, -1, 3).clone(), zeros, pixels
        first = torch.tensor([a for a, _ in pairs], device=intrinsics.device)
        second = torch.tensor([b for _, b in pairs], device=intrinsics.device)
        match, similarity = mutual_nearest_neighbours(
            detections.descriptors[:, first],
            detections.valid[:, first],
            detections.descriptors[:, second],
            detections.valid[:, second],
        )  # (B, pairs, M)
        pixels_b = detections.pixels[:, second].gather(
            2, match.clamp(min=0)[..., None].expand(-1, -1, -1, 2)
        )
        candidates = similarity.flatten(1)  # (B, pairs·M), pair-major
        take = min(self.num_points, candidates.shape[1])
        # A stable sort keeps ties in camera-pair order, then detection rank.
        order = candidates.sort(dim=1, descending=True, stable=True).indices[:, :take]
        pair_index = order // detected
        found = torch.isfinite(candidates.gather(1, order))
        rows = torch.arange(batch, device=order.device)[:, None]
        pixels_a = detections.pixels[:, first].flatten(1, 2)[rows, order]
        pixels_b = pixels_b.flatten(1, 2)[rows, order]
        cameras = torch.stack([first[pair_index], second[pair_index]], dim=-1)  # (B, take, 2)
        points = triangulate_pairs(
            torch.where(found[..., None], pixels_a, float("nan")),
            pixels_b,
            intrinsics[rows[..., None], cameras],
            extrinsics[rows[..., None], cameras],
        )
        found = found & torch.isfinite(points).all(-1)
        points = torch.where(found[..., None], points, 0.0)
        confidence = torch.where(found, candidates.gather(1, order).clamp(min=0.0), 0.0)
        slots = torch.arange(take, device=order.device)[None].expand(batch, -1)
        for side, matched in ((0, pixels_a), (1, pixels_b)):
            shown = torch.where(found[..., None], matched, float("nan"))
            pixels[rows, cameras[..., side], slots] = shown.to(pixels.dtype)
        pad = self.num_points - take
        return F.pad(points, (0, 0, 0, pad)), F.pad(confidence, (0, pad)), pixels

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """See :class:`kp3d.perception.Perception` and the class docstring for the outputs;
        ``losses`` is always empty."""
        intrinsics, extrinsics = self.check_inputs(images, intrinsics, extrinsics)
        detections = self.detect(images)  # (B, C, M)
        points, confidence, matched = self.match_views(detections, intrinsics, extrinsics)
        pixels, depth = project(points[:, None], intrinsics, extrinsics)  # (B, C, K, ·)
        shown = (confidence > 0)[:, None] & (depth > 0)
        return PerceptionOutput(
            features=torch.cat([points.flatten(1), confidence], dim=1),
            keypoints=points,
            confidence=confidence,
            visuals=PerceptionVisuals(
                points=torch.where(shown[..., None], pixels, float("nan")).detach(),
                detections=matched.detach(),
            ),
        )

    # -- training ------------------------------------------------------------------------------

    def source_pixels(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(h·w, 2)`` full-image pixels of the centres of the training grid's cells,
        row-major: the source points of the loss."""
        grid = self.grid_size
        u, v = cell_centers(*grid, device=device)
        centres = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1).reshape(-1, 2)
        return heatmap_to_image(centres, grid, self.image_size)

    def view_pairs(self) -> list[tuple[int, int, int, int]]:
        """The ``(frame, camera, frame, camera)`` pairs of views that the loss compares: every
        ordered pair of two cameras of the first frame (frame 0), then every (camera, camera)
        pair from the first frame to the second (frame 1, :attr:`FrameBatch.pair`)."""
        cameras = range(self.num_cameras)
        same_time = [(0, a, 0, b) for a in cameras for b in cameras if a != b]
        across_time = [(0, a, 1, b) for a in cameras for b in cameras]
        return same_time + across_time

    def correspondences(
        self, batch: FrameBatch
    ) -> tuple[list[tuple[int, int, int, int]], torch.Tensor, torch.Tensor]:
        """Where the training grid's cell centres land across the pairs of :meth:`view_pairs`.

        Args:
            batch: with depth, segmentation and body poses, and a ``pair`` that has them too.

        Returns:
            The view pairs, ``target (B, V, h·w, 2)`` pixels and ``valid (B, V, h·w)`` for the
            ``V`` view pairs.
        """
        frames = (batch, batch.pair)
        sources = self.source_pixels(batch.images.device).to(batch.images.dtype)
        pairs = self.view_pairs()
        targets, valids = [], []
        for frame_a, camera_a, frame_b, camera_b in pairs:
            a, b = frames[frame_a], frames[frame_b]
            moving = frame_a != frame_b
            found = find_correspondences(
                sources.expand(batch.batch_size, -1, -1),
                a.depth[:, camera_a],
                a.segmentation[:, camera_a],
                a.intrinsics[:, camera_a],
                a.extrinsics[:, camera_a],
                b.depth[:, camera_b],
                b.segmentation[:, camera_b],
                b.intrinsics[:, camera_b],
                b.extrinsics[:, camera_b],
                a.body_poses if moving else None,
                b.body_poses if moving else None,
                depth_tolerance=self.depth_tolerance,
            )
            ignored = torch.isin(found.bodies, found.bodies.new_tensor(self.ignore_bodies))
            targets.append(found.target)
            valids.append(found.valid & ~ignored)
        return pairs, torch.stack(targets, dim=1), torch.stack(valids, dim=1)

    def check_training_batch(self, batch: FrameBatch) -> None:
        """Raise a ``ValueError`` naming what ``batch`` lacks for :meth:`training_losses`."""
        if batch.pair is None:
            raise ValueError(
                "D2Net is trained on pairs of frames of one episode (correspondences across "
                "time); this batch has no FrameBatch.pair (open the dataset with pairs=m)"
            )
        wanted = ("depth", "segmentation", "body_poses")
        for name, frame in (("batch", batch), ("batch.pair", batch.pair)):
            missing = [field for field in wanted if getattr(frame, field) is None]
            if missing:
                raise ValueError(
                    f"D2Net is trained on simulator correspondences, which need the depth, "
                    f"segmentation and body poses of both frames; {name} lacks {missing} (open "
                    "the dataset with load=('depth', 'segmentation', 'body_poses'))"
                )
        if batch.num_cameras != self.num_cameras:
            raise ValueError(
                f"this D2Net has {self.num_cameras} cameras; the batch has {batch.num_cameras}"
            )

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """D2-Net's loss on simulator correspondences (:func:`d2net_loss`) over the view pairs of
        :meth:`view_pairs`: ``{"ranking": loss}``.

        Raises:
            ValueError: if the batch has no pair, or either frame lacks depth, segmentation or
                body poses.
        """
        self.check_training_batch(batch)
        pairs, target, valid = self.correspondences(batch)
        size, count = batch.batch_size, self.num_cameras
        images = torch.stack([batch.images, batch.pair.images], dim=1)  # (B, 2, C, 3, H, W)
        features = self.trunk(images.flatten(0, 2))  # (B·2·C, n, h, w), sample-major
        # Index of view (sample s, frame f, camera c) among the feature maps.
        offsets = torch.arange(size, device=features.device)[:, None] * (2 * count)
        first = torch.tensor([f * count + c for f, c, _, _ in pairs], device=features.device)
        second = torch.tensor([f * count + c for _, _, f, c in pairs], device=features.device)
        view_pairs = torch.stack([offsets + first, offsets + second], dim=-1)  # (B, V, 2)
        loss, _ = d2net_loss(
            features,
            view_pairs.flatten(0, 1),
            target.flatten(0, 1),
            valid.flatten(0, 1),
            self.image_size,
            self.margin,
            self.safe_radius,
            self.min_correspondences,
        )
        return {"ranking": loss}


# -- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_matching(
    module: D2Net,
    batches: FrameBatch | Iterable[FrameBatch],
    thresholds: Sequence[float] = (1.0, 2.0, 3.0),
    scales: Sequence[float] | None = None,
    max_detections: int | None = None,
) -> dict[str, float]:
    """Cross-view matching precision and recall, and triangulation error, on frames with depth.

    For every sample and every pair of cameras ``a < b`` of one time step: the pyramid
    detections of both views (:meth:`D2Net.detect`), their mutual nearest neighbours, and the
    true location in ``b`` of every detection of ``a`` (:mod:`kp3d.correspondence`, the occlusion
    test included). At a threshold ``τ`` (pixels):

    * a match is **correct** if its detection in ``b`` is within ``τ`` of the true location (a
      match whose point is occluded in ``b``, or off its image, is wrong);
    * **precision** = correct matches / matches;
    * **recall** = correct matches / detections of ``a`` that have a detection of ``b`` within
      ``τ`` of their true location (the matches that the detector made possible).

    Triangulation: each match is triangulated from its two pixels (:func:`triangulate_pairs`)
    and compared with the detection of ``a`` unprojected with ``a``'s depth map (only detections
    on a body, whose depth is defined).

    Args:
        module: the network (run in eval mode: BatchNorm uses its running statistics).
        batches: one :class:`FrameBatch` or several (counts are pooled), with ``depth`` and
            ``segmentation`` and ``C >= 2`` cameras.
        thresholds: pixel thresholds ``τ``.
        scales: pyramid of the detections (default: the module's).
        max_detections: detections per view (default: the module's).

    Returns:
        ``frames``, ``pairs`` (view pairs evaluated), ``detections`` (mean valid detections per
        view), ``matches`` (mean per view pair), ``moving_fraction`` (of the matches whose point
        of ``a`` is on a body other than body 0, the static world: floor and scenery);
        ``precision@τpx``, ``recall@τpx`` and ``precision_moving@τpx`` (over matches on other
        bodies) per threshold; ``triangulation_median_mm`` and ``triangulation_mean_mm`` over all
        matches on a body, and ``triangulation_median_mm@τpx`` over the correct ones (NaN where
        there are none).

    Raises:
        ValueError: for a batch without depth or segmentation, or with one camera.
    """
    if isinstance(batches, FrameBatch):
        batches = [batches]
    thresholds = tuple(float(t) for t in thresholds)
    totals = dict.fromkeys(("frames", "views", "pairs", "detections", "matches", "moving"), 0)
    correct = dict.fromkeys(thresholds, 0)
    correct_moving = dict.fromkeys(thresholds, 0)
    possible = dict.fromkeys(thresholds, 0)
    errors_mm: list[torch.Tensor] = []
    correct_errors_mm: dict[float, list[torch.Tensor]] = {t: [] for t in thresholds}
    device = next(module.parameters()).device
    training = module.training
    module.eval()
    try:
        for batch in batches:
            if batch.depth is None or batch.segmentation is None:
                raise ValueError(
                    "evaluate_matching needs FrameBatch.depth and FrameBatch.segmentation"
                )
            if batch.num_cameras < 2:
                raise ValueError("evaluate_matching needs at least two cameras per frame")
            batch = batch.to(device)
            found = module.detect(batch.images, scales, max_detections)  # (B, C, M)
            totals["frames"] += batch.batch_size
            totals["views"] += batch.batch_size * batch.num_cameras
            totals["detections"] += int(found.valid.sum())
            for a, b in camera_pairs(batch.num_cameras):
                totals["pairs"] += batch.batch_size
                valid_a, valid_b = found.valid[:, a], found.valid[:, b]
                match, _ = mutual_nearest_neighbours(
                    found.descriptors[:, a], valid_a, found.descriptors[:, b], valid_b
                )
                matched = match >= 0
                truth = find_correspondences(
                    torch.nan_to_num(found.pixels[:, a]),
                    batch.depth[:, a],
                    batch.segmentation[:, a],
                    batch.intrinsics[:, a],
                    batch.extrinsics[:, a],
                    batch.depth[:, b],
                    batch.segmentation[:, b],
                    batch.intrinsics[:, b],
                    batch.extrinsics[:, b],
                    depth_tolerance=module.depth_tolerance,
                )
                has_truth = truth.valid & valid_a
                pixels_b = found.pixels[:, b]  # (B, M, 2), NaN where invalid
                matched_b = pixels_b.gather(1, match.clamp(min=0)[..., None].expand(-1, -1, 2))
                error = (matched_b - truth.target).norm(dim=-1)
                error = torch.where(matched & has_truth, error, float("inf"))
                nearest = torch.cdist(truth.target, torch.nan_to_num(pixels_b, nan=1e6))
                nearest = torch.where(has_truth, nearest.amin(dim=-1), float("inf"))
                moving = matched & (truth.bodies > 0)
                totals["matches"] += int(matched.sum())
                totals["moving"] += int(moving.sum())

                cameras = torch.tensor([a, b], device=device)
                points = triangulate_pairs(
                    found.pixels[:, a],
                    matched_b,
                    batch.intrinsics[:, cameras][:, None],
                    batch.extrinsics[:, cameras][:, None],
                )  # (B, M, 3)
                on_body = matched & (truth.bodies >= 0)
                distance_mm = 1000.0 * (points - truth.points).norm(dim=-1)
                errors_mm.append(distance_mm[on_body].cpu())
                for threshold in thresholds:
                    good = error <= threshold
                    correct[threshold] += int(good.sum())
                    correct_moving[threshold] += int((good & moving).sum())
                    possible[threshold] += int((nearest <= threshold).sum())
                    correct_errors_mm[threshold].append(distance_mm[good & on_body].cpu())
    finally:
        module.train(training)
    if totals["pairs"] == 0:
        raise ValueError("evaluate_matching got no frames")

    def summary(values: list[torch.Tensor], statistic: str) -> float:
        joined = torch.cat(values)
        if joined.numel() == 0:
            return float("nan")
        return float(joined.median() if statistic == "median" else joined.mean())

    result = {
        "frames": float(totals["frames"]),
        "pairs": float(totals["pairs"]),
        "detections": totals["detections"] / totals["views"],
        "matches": totals["matches"] / totals["pairs"],
        "moving_fraction": totals["moving"] / max(totals["matches"], 1),
    }
    for threshold in thresholds:
        name = f"{threshold:g}px"
        result[f"precision@{name}"] = correct[threshold] / max(totals["matches"], 1)
        result[f"recall@{name}"] = correct[threshold] / max(possible[threshold], 1)
        result[f"precision_moving@{name}"] = correct_moving[threshold] / max(totals["moving"], 1)
    result["triangulation_median_mm"] = summary(errors_mm, "median")
    result["triangulation_mean_mm"] = summary(errors_mm, "mean")
    for threshold in thresholds:
        result[f"triangulation_median_mm@{threshold:g}px"] = summary(
            correct_errors_mm[threshold], "median"
        )
    return result


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_BLOCKS",
    "VGG16_WIDTHS",
    "D2Net",
    "Detections",
    "VGGTrunk",
    "camera_pairs",
    "d2net_loss",
    "dense_descriptors",
    "detect",
    "evaluate_matching",
    "hard_detections",
    "level_size",
    "mutual_nearest_neighbours",
    "soft_detection_scores",
    "triangulate_pairs",
]
