"""Reading the frame datasets that ``kp3d dataset`` writes, as :class:`~kp3d.batch.FrameBatch`es.

A dataset is a directory of shards and one metadata file::

    meta.json          what the frames are (env, cameras, keypoints, skeleton...) and the shards
    background.npz     the empty scene each fixed camera sees (``images (C, H, W, 3)`` uint8)
    shard_00000.npz    compressed NumPy arrays of consecutive frames
    shard_00001.npz
    ...

Frames are written episode after episode, in order, so an episode's frames are consecutive and
may continue from one shard into the next. Every shard holds the same arrays, one row per frame
(``C`` cameras, ``K`` keypoints, ``N`` MuJoCo bodies, images ``H x W``):

=======================  ====================  ==================================================
array                    shape, dtype          meaning
=======================  ====================  ==================================================
``images``               ``(n, C, H, W, 3)``   RGB uint8, as the env observes them
                         uint8
``intrinsics``           ``(n, C, 3, 3)`` f32  :mod:`kp3d.geometry` convention
``extrinsics``           ``(n, C, 4, 4)`` f32  world→camera of the same step (cameras may move)
``keypoints_world``      ``(n, K, 3)`` f32     ground-truth keypoints, world frame (m)
``keypoints_pixels``     ``(n, C, K, 2)`` f32  their projections, full-image pixels ``(u, v)``
``keypoints_depth``      ``(n, C, K)`` f32     their camera-frame depth (m)
``keypoints_visible``    ``(n, C, K)`` bool    inside the image, in front, not occluded
``depth``                ``(n, C, H, W)`` f16  rendered depth along the optical axis (m); half
                                               precision: relative error at most 2^-11 (1 mm at
                                               2 m), a quarter of float32's compressed size
``segmentation``         ``(n, C, H, W)`` i16  MuJoCo body id per pixel, -1 for background
``body_poses``           ``(n, N, 4, 4)`` f32  body→world transform of every body (body 0 is
                                               the world); with ``depth`` and the cameras it
                                               gives pixel correspondences across views and time
``episode``, ``step``    ``(n,)`` int64        episode index and step within it (0 = reset)
``backgrounds``          ``(n, C, H, W, 3)``   only when a camera moves: that frame's view of the
                         uint8                 empty scene (no body that can move)
=======================  ====================  ==================================================

The empty scene (``env.unwrapped.render_background()``) is what keypoint autoencoders weight
their reconstruction against (:mod:`kp3d.reconstruction`). ``meta.json``'s ``background`` says
where it is: ``"fixed"`` (``background.npz``, rendered once: no camera moves) or ``"per_frame"``
(the shards' ``backgrounds``). Datasets written before kp3d stored it have neither.

:class:`FrameDataset` splits frames into train and test **by episode**, so that no episode
contributes to both, and hands out batches (optionally with a second frame of the same episode
per sample, :attr:`FrameBatch.pair`). This module needs only NumPy and torch: no environment is
imported to read a dataset.

Example:
    >>> dataset = FrameDataset("data/reach", split="train", pairs=3)  # doctest: +SKIP
    >>> batch = next(dataset.batches(32, torch.Generator().manual_seed(0)))  # doctest: +SKIP
    >>> batch.images.shape, batch.pair.images.shape  # doctest: +SKIP
    (torch.Size([32, 3, 3, 64, 64]), torch.Size([32, 3, 3, 64, 64]))
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kp3d.batch import FrameBatch

FORMAT = "kp3d-dataset"
"""``meta.json``'s ``format``."""

FORMAT_VERSION = 1
"""The version of the layout above that this module reads and ``kp3d dataset`` writes."""

META_FILE = "meta.json"
"""Name of the metadata file in a dataset directory."""

BACKGROUND_FILE = "background.npz"
"""Name of the empty-scene file of a dataset whose cameras do not move."""

BACKGROUNDS_ARRAY = "backgrounds"
"""Name of the per-frame empty-scene array in the shards of a dataset whose cameras move."""

FRAME_ARRAYS: dict[str, np.dtype] = {
    "images": np.dtype(np.uint8),
    "intrinsics": np.dtype(np.float32),
    "extrinsics": np.dtype(np.float32),
    "keypoints_world": np.dtype(np.float32),
    "keypoints_pixels": np.dtype(np.float32),
    "keypoints_depth": np.dtype(np.float32),
    "keypoints_visible": np.dtype(bool),
    "depth": np.dtype(np.float16),
    "segmentation": np.dtype(np.int16),
    "body_poses": np.dtype(np.float32),
    "episode": np.dtype(np.int64),
    "step": np.dtype(np.int64),
}
"""Every array of a shard and its dtype on disk."""

OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "keypoints": ("keypoints_world", "keypoints_pixels", "keypoints_visible"),
    "depth": ("depth",),
    "segmentation": ("segmentation",),
    "body_poses": ("body_poses",),
    "backgrounds": (BACKGROUNDS_ARRAY,),
}
"""What :class:`FrameDataset`'s ``load`` may ask for beyond images and camera matrices, and the
shard arrays each one reads."""

_ALWAYS = ("images", "intrinsics", "extrinsics", "episode", "step")

Split = Literal["train", "test", "all"]


class DatasetError(ValueError):
    """A dataset that cannot be read or extended; the message names the file at fault."""


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard_00012.npz``)."""
    return f"shard_{index:05d}.npz"


@dataclass(frozen=True)
class ShardInfo:
    """One shard as ``meta.json`` lists it.

    Attributes:
        file: file name within the dataset directory.
        frames: number of frames in it.
        episodes: ``(E, 3)`` int64 runs of frames: ``(episode, first step, frame count)`` in
            the order they are stored.
    """

    file: str
    frames: int
    episodes: np.ndarray


@dataclass(frozen=True)
class DatasetInfo:
    """What ``meta.json`` says about a dataset (see :func:`read_info`).

    Attributes:
        directory: the dataset directory.
        env_id: the Gymnasium id the frames come from.
        env_kwargs: the keyword arguments of ``gymnasium.make`` that built the env.
        policy: ``"random"``, or the run directory of the agent that acted.
        seed: seed of the episodes.
        camera_names: ``(C,)`` camera order of every per-camera array.
        camera_moving: ``(C,)`` whether each camera's extrinsics change over an episode.
        image_size: ``(H, W)``.
        keypoint_names: ``(K,)``.
        skeleton: ``(L, 2)`` int64 keypoint indices of the limbs.
        instances: ``(K,)`` int64 instance id of each keypoint (several copies of one object).
        body_names: ``(N,)`` MuJoCo body names, the order of ``body_poses`` and the ids of
            ``segmentation``.
        normalising_length: the env's length (m) that keypoint errors are divided by (see the
            env's ``normalising_length``), or ``None``.
        max_episode_steps: the env's episode length limit.
        background: where the empty scene is stored: ``"fixed"`` (:data:`BACKGROUND_FILE`),
            ``"per_frame"`` (the shards' :data:`BACKGROUNDS_ARRAY`), or ``None`` (a dataset
            written before kp3d stored it).
        frames: frames written.
        shards: the shards, in order.
        meta: the raw ``meta.json`` mapping.
    """

    directory: Path
    env_id: str
    env_kwargs: dict[str, Any]
    policy: str
    seed: int
    camera_names: tuple[str, ...]
    camera_moving: tuple[bool, ...]
    image_size: tuple[int, int]
    keypoint_names: tuple[str, ...]
    skeleton: np.ndarray
    instances: np.ndarray
    body_names: tuple[str, ...]
    normalising_length: float | None
    max_episode_steps: int | None
    background: str | None
    frames: int
    shards: tuple[ShardInfo, ...]
    meta: dict[str, Any]

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def episodes(self) -> np.ndarray:
        """Sorted indices of the episodes with at least one frame."""
        runs = [shard.episodes[:, 0] for shard in self.shards if len(shard.episodes)]
        return np.unique(np.concatenate(runs)) if runs else np.zeros(0, dtype=np.int64)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed ``meta.json`` of a dataset directory, its format and version checked.

    Raises:
        DatasetError: if the file is missing, unreadable, or not a kp3d dataset of this version.
    """
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise DatasetError(
            f"{Path(directory)} is not a kp3d dataset: it has no {META_FILE} (write one with "
            "`kp3d dataset ENV_ID --frames N --out DIR`)"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DatasetError(f"{path} is not the metadata of a kp3d dataset (format {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has dataset format version {meta.get('version')}; this kp3d reads version "
            f"{FORMAT_VERSION}"
        )
    return meta


def shard_infos(meta: Mapping[str, Any]) -> tuple[ShardInfo, ...]:
    """The shards listed in a ``meta.json`` mapping."""
    return tuple(
        ShardInfo(
            file=str(entry["file"]),
            frames=int(entry["frames"]),
            episodes=np.asarray(entry["episodes"], dtype=np.int64).reshape(-1, 3),
        )
        for entry in meta.get("shards", [])
    )


def read_info(directory: str | Path) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset directory (reads only ``meta.json``).

    Raises:
        DatasetError: see :func:`read_meta`.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        return DatasetInfo(
            directory=directory,
            env_id=str(meta["env_id"]),
            env_kwargs=dict(meta["env_kwargs"]),
            policy=str(meta["policy"]),
            seed=int(meta["seed"]),
            camera_names=tuple(meta["camera_names"]),
            camera_moving=tuple(bool(m) for m in meta["camera_moving"]),
            image_size=(int(meta["image_size"][0]), int(meta["image_size"][1])),
            keypoint_names=tuple(meta["keypoint_names"]),
            skeleton=np.asarray(meta["skeleton"], dtype=np.int64).reshape(-1, 2),
            instances=np.asarray(meta["instances"], dtype=np.int64),
            body_names=tuple(meta["body_names"]),
            normalising_length=(
                None if meta["normalising_length"] is None else float(meta["normalising_length"])
            ),
            max_episode_steps=meta.get("max_episode_steps"),
            background=meta.get("background"),
            frames=int(meta["frames"]),
            shards=shard_infos(meta),
            meta=meta,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(
            f"{directory / META_FILE} lacks or garbles an entry ({error!r}); rewrite the dataset"
        ) from error


def load_shard(path: str | Path, arrays: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read (and decompress) the arrays of one shard.

    Args:
        path: the ``.npz`` file.
        arrays: names among :data:`FRAME_ARRAYS` to read; ``None`` reads all of them.

    Returns:
        ``{name: array}``, each with one row per frame.

    Raises:
        DatasetError: naming ``path``, if the file is missing, truncated or corrupt, lacks an
            array, or its arrays disagree on the number of frames.
    """
    path = Path(path)
    names = tuple(FRAME_ARRAYS) if arrays is None else tuple(arrays)
    unknown = sorted(set(names) - {*FRAME_ARRAYS, BACKGROUNDS_ARRAY})
    if unknown:
        raise ValueError(f"unknown shard arrays {unknown}; shards hold {sorted(FRAME_ARRAYS)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise DatasetError(
                    f"shard {path} has no arrays {missing}; it holds {archive.files}"
                )
            data = {name: archive[name] for name in names}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise DatasetError(f"cannot load shard {path}: {type(error).__name__}: {error}") from error
    lengths = {name: len(array) for name, array in data.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"shard {path} is inconsistent: frames per array {lengths}")
    return data


def read_background(directory: str | Path) -> np.ndarray | None:
    """The empty scene of a dataset of fixed cameras, ``(C, H, W, 3)`` uint8, or ``None`` when
    the dataset has no :data:`BACKGROUND_FILE` (moving cameras, or written before kp3d stored it).

    Raises:
        DatasetError: naming the file, if it is unreadable.
    """
    path = Path(directory) / BACKGROUND_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise DatasetError(f"cannot load {path}: {type(error).__name__}: {error}") from error
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{path} must hold uint8 images (C, H, W, 3); got {images.shape}")
    return images


def held_out_episodes(episodes: np.ndarray, test_fraction: float) -> np.ndarray:
    """Which episodes are held out: every ``1 / test_fraction``-th episode index.

    Episode ``e`` is a test episode iff ``floor((e + 1) f) > floor(e f)``: exactly
    ``floor(E f)`` of the episodes ``0 .. E - 1`` for any ``E``, spread evenly over the dataset,
    and an episode's split never changes when the dataset grows.

    Args:
        episodes: ``(E,)`` integer episode indices.
        test_fraction: ``f`` in ``[0, 1)``.

    Returns:
        ``(E,)`` bool, true for test episodes.

    Example:
        >>> held_out_episodes(np.arange(10), 0.25).nonzero()[0]
        array([3, 7])
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1); got {test_fraction}")
    episodes = np.asarray(episodes, dtype=np.int64)
    return np.floor((episodes + 1) * test_fraction) > np.floor(episodes * test_fraction)


class FrameDataset(torch.utils.data.Dataset):
    """The frames of one split of a dataset written by ``kp3d dataset``.

    The requested arrays of the split's frames are read shard by shard into memory (shards
    holding none of the split's episodes are skipped): images stay uint8 (3 cameras of 64x64:
    37 KB per frame, 370 MB per 10^4 frames) and become float only per batch; depth and
    segmentation cost 25 KB per frame each and are read only when asked for.

    Args:
        directory: the dataset directory.
        split: ``"train"``, ``"test"`` (the held-out episodes, :func:`held_out_episodes`) or
            ``"all"``.
        test_fraction: fraction of the episodes held out.
        pairs: ``False`` (or 0): single frames. A positive int ``m``: every sample also gets a
            second frame of the same episode at a step offset drawn uniformly from
            ``[-m, m] \\ {0}`` among the frames that exist (the frame itself only for a
            one-frame episode), in :attr:`FrameBatch.pair`.
        load: optional arrays beyond images and camera matrices, among
            :data:`OPTIONAL_FIELDS` (``keypoints``, ``depth``, ``segmentation``,
            ``body_poses``, ``backgrounds``: the per-frame empty scene of moving cameras, read
            only where the dataset has it).

    Attributes:
        info: the dataset's :class:`DatasetInfo`.
        background: ``(C, 3, H, W)`` float in ``[0, 1]``, the empty scene of fixed cameras
            (:func:`read_background`), or ``None``.
        episode: ``(n,)`` episode index of every frame of the split.
        step: ``(n,)`` step index of every frame.

    Raises:
        DatasetError: for a directory that is not a dataset, a shard that fails to load (named),
            or a split without frames.
    """

    def __init__(
        self,
        directory: str | Path,
        split: Split = "train",
        test_fraction: float = 0.2,
        pairs: bool | int = False,
        load: Sequence[str] = ("keypoints",),
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all'; got {split!r}")
        if pairs is True:
            raise ValueError("pairs takes the largest step offset (a positive int), or False")
        if not isinstance(pairs, (bool, int, np.integer)) or pairs < 0:
            raise ValueError(f"pairs must be False or a positive int offset; got {pairs!r}")
        unknown = sorted(set(load) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(f"unknown load {unknown}; valid: {sorted(OPTIONAL_FIELDS)}")
        self.info = read_info(directory)
        self.split = split
        self.test_fraction = float(test_fraction)
        self.max_offset = int(pairs)
        self.load = tuple(dict.fromkeys(load))
        if self.info.background != "per_frame":
            self.load = tuple(field for field in self.load if field != "backgrounds")
        arrays = [*_ALWAYS, *(a for field in self.load for a in OPTIONAL_FIELDS[field])]
        fixed = read_background(self.info.directory)
        self.background = (
            None if fixed is None else torch.from_numpy(fixed).permute(0, 3, 1, 2).float() / 255.0
        )

        is_test = held_out_episodes(self.info.episodes, self.test_fraction)
        held_out = set(self.info.episodes[is_test].tolist())
        if split == "all":
            wanted = set(self.info.episodes.tolist())
        elif split == "test":
            wanted = held_out
        else:
            wanted = set(self.info.episodes.tolist()) - held_out
        if not wanted:
            raise DatasetError(
                f"the {split!r} split of {self.info.directory} is empty: "
                f"{len(self.info.episodes)} episodes with test_fraction={self.test_fraction} "
                f"hold out {len(held_out)} (write more episodes or change test_fraction)"
            )
        self._arrays = self._read(arrays, wanted)
        self.episode = self._arrays.pop("episode")
        self.step = self._arrays.pop("step")
        # Frames of an episode are consecutive: [start, stop) of each frame's episode.
        boundaries = np.flatnonzero(np.diff(self.episode) != 0) + 1
        starts = np.concatenate([[0], boundaries])
        stops = np.concatenate([boundaries, [len(self.episode)]])
        lengths = stops - starts
        self._episode_start = np.repeat(starts, lengths)
        self._episode_stop = np.repeat(stops, lengths)

    def _read(self, arrays: Sequence[str], wanted: set[int]) -> dict[str, np.ndarray]:
        shards = [
            shard
            for shard in self.info.shards
            if any(int(e) in wanted for e in shard.episodes[:, 0])
        ]
        counts = [
            int(sum(run[2] for run in shard.episodes if int(run[0]) in wanted)) for shard in shards
        ]
        total = sum(counts)
        result: dict[str, np.ndarray] = {}
        start = 0
        for shard, count in zip(shards, counts, strict=True):
            path = self.info.directory / shard.file
            data = load_shard(path, arrays)
            if len(data["episode"]) != shard.frames:
                raise DatasetError(
                    f"shard {path} holds {len(data['episode'])} frames; {META_FILE} says "
                    f"{shard.frames}"
                )
            keep = np.isin(data["episode"], list(wanted))
            for name, values in data.items():
                if name not in result:
                    result[name] = np.empty((total, *values.shape[1:]), values.dtype)
                result[name][start : start + count] = values[keep]
            start += count
        return result

    def __len__(self) -> int:
        return len(self.episode)

    @property
    def normalising_length(self) -> float | None:
        """The env's length (m) that keypoint errors are divided by (``info``)."""
        return self.info.normalising_length

    def partners(self, indices: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """For each frame index, another frame of its episode within ``max_offset`` steps.

        Args:
            indices: ``(B,)`` frame indices of this split.
            generator: source of randomness (torch's global one if ``None``).

        Returns:
            ``(B,)`` frame indices.
        """
        if self.max_offset < 1:
            raise ValueError("this dataset was opened without pairs (pairs=max_offset)")
        indices = np.asarray(indices, dtype=np.int64)
        low = np.maximum(self._episode_start[indices], indices - self.max_offset)
        high = np.minimum(self._episode_stop[indices] - 1, indices + self.max_offset)
        # Draw among the high - low other frames, then skip over the frame itself.
        others = high - low
        uniform = torch.rand(len(indices), generator=generator, dtype=torch.float64).numpy()
        choice = low + np.minimum((uniform * others).astype(np.int64), np.maximum(others - 1, 0))
        choice = choice + (choice >= indices)
        return np.where(others > 0, choice, indices)

    def frames(self, indices: np.ndarray | Sequence[int]) -> FrameBatch:
        """The frames at ``indices`` (of this split) as a :class:`FrameBatch` without pairs."""
        index = np.asarray(indices, dtype=np.int64)
        arrays = self._arrays
        images = torch.from_numpy(arrays["images"][index]).permute(0, 1, 4, 2, 3)
        values: dict[str, torch.Tensor | None] = {
            "images": images.float().div_(255.0),
            "intrinsics": torch.from_numpy(arrays["intrinsics"][index]),
            "extrinsics": torch.from_numpy(arrays["extrinsics"][index]),
        }
        for name in ("keypoints_world", "keypoints_pixels", "keypoints_visible", "body_poses"):
            values[name] = torch.from_numpy(arrays[name][index]) if name in arrays else None
        if "depth" in arrays:
            values["depth"] = torch.from_numpy(arrays["depth"][index]).float()
        if "segmentation" in arrays:
            values["segmentation"] = torch.from_numpy(arrays["segmentation"][index]).long()
        if BACKGROUNDS_ARRAY in arrays:
            backgrounds = torch.from_numpy(arrays[BACKGROUNDS_ARRAY][index])
            values["backgrounds"] = backgrounds.permute(0, 1, 4, 2, 3).float().div_(255.0)
        return FrameBatch(**values)

    def batch(
        self, indices: np.ndarray | Sequence[int], generator: torch.Generator | None = None
    ) -> FrameBatch:
        """The frames at ``indices`` as a :class:`FrameBatch`, with pairs if the dataset has
        them (drawn with ``generator``)."""
        index = np.asarray(indices, dtype=np.int64)
        batch = self.frames(index)
        if self.max_offset > 0:
            batch.pair = self.frames(self.partners(index, generator))
        return batch

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> FrameBatch:
        """``batch_size`` frames drawn uniformly (with replacement) from the split."""
        index = torch.randint(len(self), (batch_size,), generator=generator).numpy()
        return self.batch(index, generator)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> Iterator[FrameBatch]:
        """One pass over the split in batches of ``batch_size`` frames.

        Args:
            batch_size: frames per batch.
            generator: source of the order and of the pairs.
            shuffle: visit the frames in a random order (else in stored order).
            drop_last: leave out a last, smaller batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        count = len(self)
        order = torch.randperm(count, generator=generator).numpy() if shuffle else np.arange(count)
        stop = count - count % batch_size if drop_last else count
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size], generator)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Frame ``index`` as a dict of the :class:`FrameBatch` fields without the batch
        dimension (a ``pair`` entry holds the partner frame's dict); see :func:`collate_frames`.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} is out of range for {len(self)} frames")
        batch = self.batch([index % len(self)])
        return _unbatch(batch)


def _unbatch(batch: FrameBatch) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for name, value in vars(batch).items():
        if name == "pair":
            if value is not None:
                item["pair"] = _unbatch(value)
        elif value is not None:
            item[name] = value[0]
    return item


def collate_frames(samples: Sequence[Mapping[str, Any]]) -> FrameBatch:
    """Stack items of :meth:`FrameDataset.__getitem__` into a :class:`FrameBatch` (the
    ``collate_fn`` of a ``torch.utils.data.DataLoader``)."""
    if not samples:
        raise ValueError("collate_frames needs at least one sample")
    values: dict[str, Any] = {}
    for name in samples[0]:
        if name == "pair":
            values["pair"] = collate_frames([sample["pair"] for sample in samples])
        else:
            values[name] = torch.stack([sample[name] for sample in samples])
    return FrameBatch(**values)


__all__ = [
    "BACKGROUNDS_ARRAY",
    "BACKGROUND_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "FRAME_ARRAYS",
    "META_FILE",
    "OPTIONAL_FIELDS",
    "DatasetError",
    "DatasetInfo",
    "FrameDataset",
    "ShardInfo",
    "collate_frames",
    "held_out_episodes",
    "load_shard",
    "read_background",
    "read_info",
    "read_meta",
    "shard_infos",
    "shard_name",
]
