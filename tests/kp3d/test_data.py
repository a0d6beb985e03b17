"""Tests of the dataset reader (:mod:`kp3d.data`) on synthetic datasets written here.

The synthetic frames encode their own episode and step in the image and the keypoints, so that
splits, pairs and batches can be checked frame by frame without any environment.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kp3d.batch import FrameBatch
from kp3d.data import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    DatasetError,
    FrameDataset,
    collate_frames,
    held_out_episodes,
    load_shard,
    read_info,
    shard_name,
)

CAMERAS, KEYPOINTS, SIDE, BODIES = 2, 3, 8, 4


def frame_arrays(episodes: list[int], steps: list[int]) -> dict[str, np.ndarray]:
    """Frames whose red channel is the episode, green the step; keypoint x = episode, y = step."""
    n = len(episodes)
    episode, step = np.asarray(episodes, np.int64), np.asarray(steps, np.int64)
    images = np.zeros((n, CAMERAS, SIDE, SIDE, 3), np.uint8)
    images[..., 0] = episode[:, None, None, None]
    images[..., 1] = step[:, None, None, None]
    images[:, 1, 0, 0, 2] = 255  # camera 1's top-left pixel is blue
    world = np.zeros((n, KEYPOINTS, 3), np.float32)
    world[..., 0], world[..., 1] = episode[:, None], step[:, None]
    return {
        "images": images,
        "intrinsics": np.tile(np.eye(3, dtype=np.float32), (n, CAMERAS, 1, 1)),
        "extrinsics": np.tile(np.eye(4, dtype=np.float32), (n, CAMERAS, 1, 1)),
        "keypoints_world": world,
        "keypoints_pixels": np.zeros((n, CAMERAS, KEYPOINTS, 2), np.float32),
        "keypoints_depth": np.ones((n, CAMERAS, KEYPOINTS), np.float32),
        "keypoints_visible": np.ones((n, CAMERAS, KEYPOINTS), bool),
        "depth": np.full((n, CAMERAS, SIDE, SIDE), 1.5, np.float16),
        "segmentation": np.full((n, CAMERAS, SIDE, SIDE), -1, np.int16),
        "body_poses": np.tile(np.eye(4, dtype=np.float32), (n, BODIES, 1, 1)),
        "episode": episode,
        "step": step,
    }


def write_synthetic(directory: Path, lengths: list[int], shard_size: int) -> Path:
    """A dataset of episodes with the given lengths, cut into shards of ``shard_size`` frames
    (episodes continue across shards, as ``kp3d dataset`` writes them)."""
    directory.mkdir(parents=True, exist_ok=True)
    episodes = [e for e, length in enumerate(lengths) for _ in range(length)]
    steps = [s for length in lengths for s in range(length)]
    shards = []
    for index, start in enumerate(range(0, len(episodes), shard_size)):
        arrays = frame_arrays(
            episodes[start : start + shard_size], steps[start : start + shard_size]
        )
        np.savez_compressed(directory / shard_name(index), **arrays)
        runs: list[list[int]] = []
        for e, s in zip(arrays["episode"].tolist(), arrays["step"].tolist(), strict=True):
            if runs and runs[-1][0] == e:
                runs[-1][2] += 1
            else:
                runs.append([e, s, 1])
        shards.append(
            {"file": shard_name(index), "frames": len(arrays["episode"]), "episodes": runs}
        )
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "env_id": "synthetic",
        "env_kwargs": {"size": SIDE},
        "policy": "random",
        "seed": 0,
        "camera_names": ["a", "b"],
        "camera_moving": [False, False],
        "image_size": [SIDE, SIDE],
        "keypoint_names": ["k0", "k1", "k2"],
        "skeleton": [[0, 1], [1, 2]],
        "instances": [0, 0, 1],
        "body_names": ["world", "b1", "b2", "b3"],
        "normalising_length": 0.25,
        "max_episode_steps": 9,
        "frames": len(episodes),
        "shards": shards,
    }
    (directory / META_FILE).write_text(json.dumps(meta))
    return directory


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "data", [7, 5, 9, 1, 6, 8, 4, 7, 3, 5], shard_size=6)


def test_info_reads_the_metadata(dataset_dir: Path) -> None:
    info = read_info(dataset_dir)
    assert info.frames == 55 and len(info.shards) == 10
    assert info.camera_names == ("a", "b") and info.image_size == (SIDE, SIDE)
    np.testing.assert_array_equal(info.skeleton, [[0, 1], [1, 2]])
    np.testing.assert_array_equal(info.instances, [0, 0, 1])
    np.testing.assert_array_equal(info.episodes, np.arange(10))
    assert info.normalising_length == 0.25


def test_held_out_episodes_are_an_exact_stable_fraction() -> None:
    for count in (1, 7, 10, 33):
        assert held_out_episodes(np.arange(count), 0.2).sum() == int(count * 0.2)
    # Growing the dataset never moves an episode to the other split.
    np.testing.assert_array_equal(
        held_out_episodes(np.arange(40), 0.3)[:17], held_out_episodes(np.arange(17), 0.3)
    )
    with pytest.raises(ValueError, match="test_fraction"):
        held_out_episodes(np.arange(3), 1.0)


def test_splits_partition_frames_by_episode(dataset_dir: Path) -> None:
    train = FrameDataset(dataset_dir, "train", test_fraction=0.2)
    test = FrameDataset(dataset_dir, "test", test_fraction=0.2)
    every = FrameDataset(dataset_dir, "all")
    assert not set(train.episode.tolist()) & set(test.episode.tolist())
    assert set(train.episode.tolist()) | set(test.episode.tolist()) == set(range(10))
    assert len(train) + len(test) == len(every) == 55
    assert sorted(set(test.episode.tolist())) == [4, 9]
    # Every frame of an episode is in its split, in order.
    for dataset in (train, test):
        batch = dataset.frames(np.arange(len(dataset)))
        np.testing.assert_array_equal(batch.keypoints_world[:, 0, 0].numpy(), dataset.episode)
        np.testing.assert_array_equal(batch.keypoints_world[:, 0, 1].numpy(), dataset.step)


def test_frames_become_a_frame_batch_in_camera_channel_order(dataset_dir: Path) -> None:
    dataset = FrameDataset(dataset_dir, "all", load=("keypoints", "depth", "segmentation"))
    batch = dataset.frames([0, 10])
    assert isinstance(batch, FrameBatch)
    assert batch.images.shape == (2, CAMERAS, 3, SIDE, SIDE) and batch.images.dtype == torch.float32
    assert batch.images[1, 0, 0, 0, 0] == pytest.approx(dataset.episode[10] / 255)
    assert batch.images[1, 0, 1, 0, 0] == pytest.approx(dataset.step[10] / 255)
    assert batch.images[0, 1, 2, 0, 0] == 1.0 and batch.images[0, 0, 2, 0, 0] == 0.0
    assert batch.depth.dtype == torch.float32 and torch.all(batch.depth == 1.5)
    assert batch.segmentation.dtype == torch.int64
    assert batch.keypoints_visible.dtype == torch.bool and batch.body_poses is None
    plain = FrameDataset(dataset_dir, "all", load=())
    assert plain.frames([0]).keypoints_world is None and not plain.frames([0]).has_labels


def test_pairs_come_from_the_same_episode_within_the_offset(dataset_dir: Path) -> None:
    dataset = FrameDataset(dataset_dir, "all", pairs=2)
    generator = torch.Generator().manual_seed(0)
    index = np.repeat(np.arange(len(dataset)), 20)
    partner = dataset.partners(index, generator)
    assert np.all(dataset.episode[partner] == dataset.episode[index])
    offsets = dataset.step[partner] - dataset.step[index]
    single = np.bincount(dataset.episode)[dataset.episode[index]] == 1
    assert np.all(np.abs(offsets[~single]) <= 2) and np.all(offsets[~single] != 0)
    assert np.all(offsets[single] == 0)  # a one-frame episode pairs a frame with itself
    assert set(offsets[~single].tolist()) == {-2, -1, 1, 2}
    batch = dataset.batch(np.arange(8), generator)
    assert batch.pair is not None
    np.testing.assert_array_equal(
        batch.pair.keypoints_world[:, 0, 0], batch.keypoints_world[:, 0, 0]
    )


def test_batches_visit_every_frame_once(dataset_dir: Path) -> None:
    dataset = FrameDataset(dataset_dir, "train")
    seen = []
    for batch in dataset.batches(8, torch.Generator().manual_seed(1)):
        assert batch.batch_size <= 8
        seen.extend(zip(*(batch.keypoints_world[:, 0, :2].long().T.tolist()), strict=True))
    assert sorted(seen) == sorted(zip(dataset.episode.tolist(), dataset.step.tolist(), strict=True))
    sizes = [b.batch_size for b in dataset.batches(8, shuffle=False, drop_last=True)]
    assert set(sizes) == {8} and len(sizes) == len(dataset) // 8


def test_dataloader_with_collate_matches_batch(dataset_dir: Path) -> None:
    dataset = FrameDataset(dataset_dir, "test", pairs=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_frames)
    batch = next(iter(loader))
    direct = dataset.frames(np.arange(4))
    torch.testing.assert_close(batch.images, direct.images)
    torch.testing.assert_close(batch.keypoints_world, direct.keypoints_world)
    assert batch.pair is not None and batch.pair.batch_size == 4


def test_a_corrupt_shard_is_named(dataset_dir: Path) -> None:
    shard = dataset_dir / shard_name(3)
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(DatasetError, match=shard_name(3)):
        FrameDataset(dataset_dir, "all")
    with pytest.raises(DatasetError, match=shard_name(3)):
        load_shard(shard)


def test_a_shard_that_disagrees_with_the_metadata_is_named(dataset_dir: Path) -> None:
    np.savez_compressed(dataset_dir / shard_name(0), **frame_arrays([0, 0], [0, 1]))
    with pytest.raises(DatasetError, match=f"{shard_name(0)} holds 2 frames"):
        FrameDataset(dataset_dir, "all")


def test_bad_directories_and_arguments(tmp_path: Path, dataset_dir: Path) -> None:
    with pytest.raises(DatasetError, match="kp3d dataset"):
        FrameDataset(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({"format": FORMAT, "version": 99}))
    with pytest.raises(DatasetError, match="version 99"):
        read_info(tmp_path)
    with pytest.raises(DatasetError, match=r"'test' split .* is empty"):
        FrameDataset(dataset_dir, "test", test_fraction=0.05)
    with pytest.raises(ValueError, match="unknown load"):
        FrameDataset(dataset_dir, load=("normals",))
    with pytest.raises(ValueError, match="split"):
        FrameDataset(dataset_dir, "validation")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pairs"):
        FrameDataset(dataset_dir, pairs=True)
