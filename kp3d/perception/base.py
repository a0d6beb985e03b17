"""The one interface of every perception module of kp3d, and the registry that builds them by name.

A perception module turns the images of ``C`` calibrated cameras into a flat feature vector for a
policy, plus keypoints, auxiliary losses and what a video should draw. The agent, the command line
and the video renderer only ever see this interface (:class:`Perception`, :class:`PerceptionOutput`,
:class:`PerceptionVisuals`) and build modules by name with :func:`make_perception`; they never
special-case a method.

Contract of :meth:`Perception.forward`:

* **Inputs**: ``images (B, C, 3, H, W)`` float in ``[0, 1]`` in the camera order of the
  environment's ``cameras.names`` (not the order of the observation dict's keys: use
  :func:`images_from_observation`), ``intrinsics (B, C, 3, 3)`` and world→camera
  ``extrinsics (B, C, 4, 4)`` *of the same step* (they change for moving cameras), in the
  convention of :mod:`kp3d.geometry`. ``(C, 3, 3)`` / ``(C, 4, 4)`` are accepted for fixed cameras
  and broadcast over the batch. Matrices are cast to the images' dtype and device; the images must
  be on the module's device.
* **compute_losses**: ``True`` (the default) computes every auxiliary loss and what is needed to
  draw reconstructions; ``False`` (policy rollouts) may skip decoders and returns ``losses = {}``.
* **Train/eval**: ``module.train()`` turns on the method's stochastic augmentations (random
  crops, keypoint noise); ``module.eval()`` makes ``forward`` deterministic.
* **Output**: a :class:`PerceptionOutput`. ``losses`` holds *weighted* named terms: the total
  auxiliary loss is ``sum(output.losses.values())`` (:meth:`PerceptionOutput.total_loss`).
  ``visuals`` are detached.

Construction: ``make_perception(name, cameras=env.unwrapped.cameras, **hyperparameters)`` or
``make_perception(name, num_cameras=C, image_size=(H, W), **hyperparameters)``. A module needs
only the camera *layout*, never the matrices, which are per-step inputs.

Example:
    >>> import torch
    >>> from kp3d.perception import make_perception
    >>> module = make_perception("keypoint3d", num_cameras=2, image_size=64, num_keypoints=4)
    >>> module.features_dim
    16
    >>> intrinsics = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]).expand(2, 3, 3)
    >>> extrinsics = torch.eye(4).expand(2, 4, 4).clone()
    >>> extrinsics[:, 2, 3] = 1.0  # the world origin 1 m in front of both cameras
    >>> output = module.eval()(torch.rand(5, 2, 3, 64, 64), intrinsics, extrinsics)
    >>> output.features.shape, output.keypoints.shape, sorted(output.losses)
    (torch.Size([5, 16]), torch.Size([5, 4, 3]), ['multiview', 'reconstruction', 'separation'])
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.files import atomic_write

KeypointFrame = Literal["world", "image"]


@dataclass
class PerceptionVisuals:
    """What a rollout video draws for one batch; every field optional, every tensor detached.

    Attributes:
        points: ``(B, C, K, 2)`` keypoints in each view, in full-image pixels (the keypoints the
            policy sees, e.g. the fused 3D keypoints projected into every camera).
        detections: ``(B, C, K, 2)`` per-view detections before any fusion, full-image pixels.
        heatmaps: ``(B, C, K, S_h, S_w)`` detection heatmaps (each sums to 1); the grid covers the
            crop window (see ``crop_origins``).
        reconstructions: ``(B, C, 3, h, w)`` decoded images in ``[0, 1]`` (may overshoot
            slightly), covering the crop window.
        crop_origins: ``(B, C, 2)`` ``(u, v)`` full-image pixel of the top-left corner of the
            window that ``heatmaps`` and ``reconstructions`` cover; the window's size is
            ``crop_size``. ``None`` means the whole image.
        crop_size: ``(h, w)`` of that window; ``None`` means the whole image.
    """

    points: torch.Tensor | None = None
    detections: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None
    reconstructions: torch.Tensor | None = None
    crop_origins: torch.Tensor | None = None
    crop_size: tuple[int, int] | None = None


@dataclass
class PerceptionOutput:
    """The result of :meth:`Perception.forward`.

    Attributes:
        features: ``(B, F)`` what the policy consumes (``F = Perception.features_dim``).
        keypoints: ``(B, K, D)``: world-frame 3D points (``D = 3``) when the module's
            ``keypoint_frame`` is ``"world"``; per-view image pixels (``D = 2``, ``K`` = cameras x
            keypoints per view, camera-major) when it is ``"image"``.
        confidence: ``(B, K)`` weight of each keypoint (e.g. attention), or ``None``.
        losses: named auxiliary loss terms, each a scalar already multiplied by its weight; empty
            when ``forward`` ran with ``compute_losses=False``.
        visuals: what a video draws (:class:`PerceptionVisuals`).
    """

    features: torch.Tensor
    keypoints: torch.Tensor
    confidence: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    visuals: PerceptionVisuals = field(default_factory=PerceptionVisuals)

    def total_loss(self) -> torch.Tensor:
        """Sum of the weighted auxiliary losses (a zero scalar when there are none)."""
        total = self.features.new_zeros(())
        for term in self.losses.values():
            total = total + term
        return total


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
        raise ValueError(f"image_size must be a positive int or (height, width); got {size!r}")
    return int(pair[0]), int(pair[1])


def check_positive_ints(**values: object) -> None:
    """Check hyperparameters that count something: each must be an ``int >= 1``.

    Example: ``check_positive_ints(num_keypoints=num_keypoints, base_filters=base_filters)``.

    Raises:
        ValueError: naming the first (in argument order) that is not, with its value.
    """
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")


def check_positive(**values: float) -> None:
    """Check scale-like hyperparameters (widths, margins, standard deviations): each ``> 0``.

    Raises:
        ValueError: naming the first (in argument order) that is not (NaN is not), with its value.
    """
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive; got {value!r}")


def check_non_negative(**values: float) -> None:
    """Check loss weights and augmentation strengths: each ``>= 0`` (0 switches a term off).

    Raises:
        ValueError: naming the first (in argument order) that is not (NaN is not), with its value.
    """
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative; got {value!r}")


class Perception(nn.Module, abc.ABC):
    """Base class of every perception method: images of calibrated cameras → policy features.

    See the module docstring for the contract of :meth:`forward`. Subclasses register with
    :func:`register_perception`, take ``num_cameras`` and ``image_size`` plus keyword-only
    hyperparameters (their own, and those of a parent class they pass ``**kwargs`` on to; see
    :func:`perception_hyperparameters`), and implement :meth:`forward` and :attr:`features_dim`.

    Args:
        num_cameras: ``C``, the number of views per sample.
        image_size: ``H`` (square) or ``(H, W)`` of each view.

    Attributes:
        keypoint_frame: ``"world"`` if ``PerceptionOutput.keypoints`` are world points,
            ``"image"`` if they are per-view pixels. A class default that an instance may
            override when its hyperparameters decide the frame (e.g. ``hourglass`` with
            ``triangulate=True``): read it from the module, not the class.
    """

    keypoint_frame: KeypointFrame = "world"

    requires_labels: ClassVar[bool] = False
    """Whether :meth:`training_losses` needs the ground truth of a :class:`~kp3d.batch.FrameBatch`
    (supervised detectors). Such a module's ``forward`` returns no losses: under an RL agent it is
    used pretrained (frozen or fine-tuned by the RL loss)."""

    uses_pairs: ClassVar[bool] = False
    """Whether :meth:`training_losses` reads :attr:`FrameBatch.pair` (a second frame of the same
    episode per sample); datasets then sample pairs."""

    initialisation_files: ClassVar[tuple[str, ...]] = ()
    """Hyperparameters that name a file read only to initialise weights that the state dict then
    holds (e.g. ``d2net``'s ``trunk_weights``). :func:`save_perception` stores them as ``None``
    and :func:`load_perception_checkpoint` returns them as ``None``, so that loading a checkpoint
    (or building an agent or resuming a run from one) never re-reads the file, which may since
    have been moved or deleted. A file the module keeps needing after construction (e.g.
    ``autolink``'s ``perceptual_weights``, a loss network outside the state dict) does not belong
    here."""

    def __init__(self, num_cameras: int, image_size: int | Sequence[int]) -> None:
        super().__init__()
        if not isinstance(num_cameras, (int, np.integer)) or num_cameras < 1:
            raise ValueError(f"num_cameras must be a positive int; got {num_cameras!r}")
        self.num_cameras = int(num_cameras)
        self.image_size = _size_pair(image_size)

    @property
    @abc.abstractmethod
    def features_dim(self) -> int:
        """``F``, the length of ``PerceptionOutput.features``."""

    @abc.abstractmethod
    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        compute_losses: bool = True,
    ) -> PerceptionOutput:
        """Encode the views of a batch of scenes.

        Args:
            images: ``(B, C, 3, H, W)`` float in ``[0, 1]``.
            intrinsics: ``(B, C, 3, 3)`` or ``(C, 3, 3)``.
            extrinsics: ``(B, C, 4, 4)`` or ``(C, 4, 4)`` world→camera, of the same step.
            compute_losses: compute the auxiliary losses (and reconstructions).

        Returns:
            :class:`PerceptionOutput`.
        """

    def set_background(self, images: torch.Tensor) -> None:
        """Tell the module what each camera sees of the *empty scene* (no robot, no objects):
        ``images (C, 3, H, W)`` float in ``[0, 1]``, e.g. ``env.unwrapped.render_background()``
        of fixed cameras. Training pipelines call it for every module; methods whose losses use
        it (the keypoint autoencoders' foreground-weighted reconstruction) override it, the
        others ignore it (this default)."""

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one offline training step on ``batch`` (``kp3d pretrain``).

        The default is the auxiliary losses of :meth:`forward`, which is right for every method
        that learns from single frames without labels. Supervised detectors (``requires_labels``)
        and methods that learn from two frames (``uses_pairs``) override it.

        Raises:
            ValueError: if the module needs labels or pairs that ``batch`` lacks.
        """
        if self.requires_labels and not batch.has_labels:
            raise ValueError(
                f"{type(self).__name__} is trained on ground-truth keypoints; this batch has none "
                "(build the dataset with `kp3d dataset`, which stores them)"
            )
        if self.uses_pairs and batch.pair is None:
            raise ValueError(
                f"{type(self).__name__} is trained on pairs of frames of one episode; this batch "
                "has no FrameBatch.pair"
            )
        return dict(self(batch.images, batch.intrinsics, batch.extrinsics).losses)

    def check_inputs(
        self, images: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the inputs of :meth:`forward`; return the matrices as ``(B, C, ...)`` tensors
        of the images' dtype and device."""
        count, (height, width) = self.num_cameras, self.image_size
        if (
            not isinstance(images, torch.Tensor)
            or images.ndim != 5
            or tuple(images.shape[1:]) != (count, 3, height, width)
        ):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(
                f"images must have shape (B, {count}, 3, {height}, {width}); got {shape}"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images must be floating point in [0, 1]; got {images.dtype} (use "
                "images_from_observation to convert uint8 observations)"
            )
        batch = images.shape[0]
        matrices = []
        for name, matrix, size in (("intrinsics", intrinsics, 3), ("extrinsics", extrinsics, 4)):
            matrix = torch.as_tensor(matrix).to(device=images.device, dtype=images.dtype)
            if matrix.shape == (count, size, size):
                matrix = matrix.expand(batch, count, size, size)
            if matrix.shape != (batch, count, size, size):
                raise ValueError(
                    f"{name} must have shape ({batch}, {count}, {size}, {size}) or "
                    f"({count}, {size}, {size}); got {tuple(matrix.shape)}"
                )
            matrices.append(matrix)
        return matrices[0], matrices[1]


def images_from_observation(
    observation: Mapping[str, torch.Tensor | np.ndarray],
    camera_names: Sequence[str],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Stack the camera images of a (batched) observation dict as a perception input.

    Args:
        observation: ``cam_<name>`` entries of ``(B, H, W, 3)`` uint8 (or float in ``[0, 1]``).
        camera_names: camera order, i.e. the environment's ``cameras.names`` (the order of the
            matrices; gymnasium's ``Dict`` space sorts its keys, so do not rely on key order).
        device: device of the result (default: that of the inputs).

    Returns:
        ``(B, C, 3, H, W)`` float32 in ``[0, 1]``.
    """
    views = []
    for name in camera_names:
        key = f"cam_{name}"
        if key not in observation:
            cameras = sorted(k for k in observation if k.startswith("cam_"))
            raise KeyError(f"observation has no {key!r}; its camera keys are {cameras}")
        view = torch.as_tensor(observation[key], device=device)
        if view.ndim != 4 or view.shape[-1] != 3:
            raise ValueError(f"{key} must have shape (B, H, W, 3); got {tuple(view.shape)}")
        view = view.float() / 255.0 if view.dtype == torch.uint8 else view.float()
        views.append(view.permute(0, 3, 1, 2))
    return torch.stack(views, dim=1)


_REGISTRY: dict[str, type[Perception]] = {}

PerceptionType = TypeVar("PerceptionType", bound=type[Perception])


def register_perception(name: str) -> Callable[[PerceptionType], PerceptionType]:
    """Class decorator that makes a :class:`Perception` subclass buildable by ``name``.

    Raises:
        ValueError: if ``name`` is already taken.
        TypeError: if the class is not a :class:`Perception` subclass.
    """

    def decorator(cls: PerceptionType) -> PerceptionType:
        if not (isinstance(cls, type) and issubclass(cls, Perception)):
            raise TypeError(
                f"@register_perception({name!r}) needs a Perception subclass; got {cls!r}"
            )
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"perception {name!r} is already registered by {_REGISTRY[name].__qualname__}"
            )
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_perceptions() -> list[str]:
    """Names accepted by :func:`make_perception`, sorted."""
    return sorted(_REGISTRY)


def perception_class(name: str) -> type[Perception]:
    """The class registered as ``name`` (``ValueError`` listing the names otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown perception {name!r}; available: {available_perceptions()}")
    return _REGISTRY[name]


def perception_hyperparameters(name: str) -> list[str]:
    """Names of the keyword arguments that the perception ``name`` takes besides the camera
    layout, sorted (what :func:`make_perception` accepts as ``**kwargs``).

    An ``__init__`` that passes ``**kwargs`` on to its parent's also takes the parent's keywords:
    the classes of the MRO are read until one ``__init__`` takes no ``**kwargs``. Positional-only
    parameters (what a subclass fills in for its parent) are not hyperparameters.
    """
    names: set[str] = set()
    cls = perception_class(name)
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names.update(p.name for p in parameters if p.kind in keywords)
        if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return sorted(names - {"self", "num_cameras", "image_size"})


def make_perception(
    name: str,
    cameras: object | None = None,
    *,
    num_cameras: int | None = None,
    image_size: int | Sequence[int] | None = None,
    **kwargs: object,
) -> Perception:
    """Build the perception module registered as ``name``.

    Give the camera layout either as ``cameras`` (an ``envs.cameras.Cameras``, e.g.
    ``env.unwrapped.cameras``: its number of cameras and image size are used) or as
    ``num_cameras`` and ``image_size``.

    Args:
        name: one of :func:`available_perceptions`.
        cameras: the env's cameras (anything with ``len()``, ``height`` and ``width``).
        num_cameras: ``C``, when ``cameras`` is not given.
        image_size: ``H`` or ``(H, W)``, when ``cameras`` is not given.
        **kwargs: the method's hyperparameters (:func:`perception_hyperparameters`).

    Raises:
        ValueError: for an unknown name (the message lists the available ones), or a camera layout
            given both ways or not at all.
        TypeError: for a hyperparameter the method does not take (the message lists the valid
            ones).
    """
    cls = perception_class(name)
    if cameras is not None:
        if num_cameras is not None or image_size is not None:
            raise ValueError("give either cameras or num_cameras and image_size, not both")
        num_cameras, image_size = len(cameras), (cameras.height, cameras.width)
    elif num_cameras is None or image_size is None:
        raise ValueError(
            f"make_perception({name!r}) needs the camera layout: cameras=env.unwrapped.cameras, "
            "or num_cameras=C and image_size=(H, W)"
        )
    valid = perception_hyperparameters(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"perception {name!r} got unknown arguments {unknown}; valid: {valid}")
    module = cls(num_cameras, image_size, **kwargs)
    module.construction = {
        "name": name,
        "num_cameras": int(num_cameras),
        "image_size": list(_size_pair(image_size)),
        "kwargs": dict(kwargs),
    }
    return module


CHECKPOINT_FORMAT = "kp3d-perception"
CHECKPOINT_VERSION = 1


def _without_initialisation_files(name: str, kwargs: Mapping[str, object]) -> dict[str, object]:
    """``kwargs`` with the method's :attr:`Perception.initialisation_files` set to ``None``."""
    known = isinstance(name, str) and name in _REGISTRY
    files = _REGISTRY[name].initialisation_files if known else ()
    return {key: None if key in files else value for key, value in kwargs.items()}


def save_perception(module: Perception, path: str | Path, **extra: object) -> Path:
    """Write ``module`` (its name, camera layout, hyperparameters and weights) to ``path``.

    Hyperparameters listed in the class's :attr:`Perception.initialisation_files` are stored as
    ``None``: the weights they initialised are in the state dict.

    The file is written atomically: an error or an interruption leaves any previous file at
    ``path`` intact. ``extra`` entries (e.g. ``step``, ``metrics``) are stored alongside and
    returned by :func:`load_perception_checkpoint`.

    Raises:
        ValueError: if ``module`` was not built by :func:`make_perception` (its construction
            arguments are unknown).
    """
    construction = getattr(module, "construction", None)
    if construction is None:
        raise ValueError(
            f"cannot save a {type(module).__name__} built directly: build it with "
            "make_perception(name, ...) so that its hyperparameters are recorded"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        **construction,
        "kwargs": _without_initialisation_files(construction["name"], construction["kwargs"]),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "extra": dict(extra),
    }
    atomic_write(path, lambda temporary: torch.save(payload, temporary))
    return path


def load_perception_checkpoint(path: str | Path) -> dict:
    """Read a file written by :func:`save_perception` (on the CPU), checking its format.

    Its ``kwargs`` have the method's :attr:`Perception.initialisation_files` set to ``None``
    (also for checkpoints written before they were stored so).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it is not a kp3d perception checkpoint, or its version is unsupported.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no perception checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable perception checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a kp3d perception checkpoint (see save_perception)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}; this kp3d reads version "
            f"{CHECKPOINT_VERSION}"
        )
    if isinstance(payload.get("kwargs"), dict):
        payload["kwargs"] = _without_initialisation_files(payload.get("name"), payload["kwargs"])
    return payload


def load_perception(path: str | Path, device: torch.device | str = "cpu") -> Perception:
    """Rebuild the module saved by :func:`save_perception` at ``path`` with its weights."""
    payload = load_perception_checkpoint(path)
    module = make_perception(
        payload["name"],
        num_cameras=payload["num_cameras"],
        image_size=tuple(payload["image_size"]),
        **payload["kwargs"],
    )
    module.load_state_dict(payload["state_dict"])
    return module.to(device)
