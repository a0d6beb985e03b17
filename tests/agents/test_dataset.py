"""Tests of ``kp3d dataset`` (:mod:`agents.dataset`): what is written, that it agrees with the
simulator, and that interrupted runs resume to the very same frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from scipy import ndimage

from agents.dataset import RandomPolicy, episode_seeds, write_dataset
from kp3d import geometry
from kp3d.data import (
    BACKGROUND_FILE,
    META_FILE,
    DatasetError,
    FrameDataset,
    load_shard,
    read_background,
    read_info,
    shard_name,
)

REACH = "kp3d/Reach-v0"
EPISODE = 101  # frames of a Reach episode: the reset's and 100 steps'


def all_frames(directory: Path, arrays: list[str]) -> dict[str, np.ndarray]:
    info = read_info(directory)
    shards = [load_shard(directory / shard.file, arrays) for shard in info.shards]
    return {name: np.concatenate([shard[name] for shard in shards]) for name in arrays}


@pytest.fixture(scope="module")
def reach_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 random-policy frames of Reach at 64 px in shards of 40."""
    directory = tmp_path_factory.mktemp("reach")
    write_dataset(REACH, 150, directory, shard_size=40, progress=False)
    return directory


def test_metadata_and_frame_order(reach_dataset: Path) -> None:
    info = read_info(reach_dataset)
    env = gym.make(REACH)
    base = env.unwrapped
    assert info.frames == 150 and [s.frames for s in info.shards] == [40, 40, 40, 30]
    assert info.env_id == REACH and info.policy == "random"
    assert info.camera_names == base.cameras.names and info.image_size == (64, 64)
    assert info.keypoint_names == base.keypoint_names
    np.testing.assert_array_equal(info.skeleton, base.skeleton)
    np.testing.assert_array_equal(info.instances, base.keypoint_instances)
    assert info.normalising_length == base.normalising_length == 0.15
    assert info.body_names[0] == "world" and len(info.body_names) == base.model.nbody
    frames = all_frames(reach_dataset, ["episode", "step", "images", "extrinsics"])
    expected_steps = np.concatenate([np.arange(EPISODE), np.arange(150 - EPISODE)])
    np.testing.assert_array_equal(frames["step"], expected_steps)
    np.testing.assert_array_equal(frames["episode"], np.repeat([0, 1], [EPISODE, 150 - EPISODE]))
    # The first frame of episode 1 is what the env shows after the episode's seeded reset.
    observation, info_reset = env.reset(seed=episode_seeds(0, 1)[0])
    views = np.stack([observation[f"cam_{name}"] for name in base.cameras.names])
    np.testing.assert_array_equal(frames["images"][EPISODE], views)
    np.testing.assert_allclose(
        frames["extrinsics"][EPISODE], info_reset["camera_extrinsics"], atol=1e-6
    )
    env.close()


def test_depth_and_segmentation_agree_with_keypoints(reach_dataset: Path) -> None:
    """At a visible keypoint's pixel, the depth map shows a surface of the keypoint's own body
    a little in front of it (keypoints lie inside their geoms: ball centres, capsule axes)."""
    base = gym.make(REACH).unwrapped
    frames = all_frames(
        reach_dataset,
        ["keypoints_pixels", "keypoints_depth", "keypoints_visible", "depth", "segmentation"],
    )
    pixels, visible = frames["keypoints_pixels"], frames["keypoints_visible"]
    n, cameras, keypoints = visible.shape
    rows = pixels[..., 1].astype(int).clip(0, 63)
    columns = pixels[..., 0].astype(int).clip(0, 63)
    frame = np.arange(n)[:, None, None]
    camera = np.arange(cameras)[None, :, None]
    surface = frames["depth"][frame, camera, rows, columns].astype(np.float32)
    body = frames["segmentation"][frame, camera, rows, columns]
    own = np.array(
        [
            [
                base.keypoint_set.stands_for(k, int(b)) if b >= 0 else False
                for k, b in enumerate(row)
            ]
            for row in body.reshape(-1, keypoints)
        ]
    ).reshape(body.shape)
    assert visible.mean() > 0.9
    assert own[visible].mean() > 0.97
    in_front = (frames["keypoints_depth"] - surface)[visible & own]
    assert in_front.min() > 0.0 and in_front.max() < 0.045
    # Where the balls (fingertip, target: radius 0.03 m) show, their surface is their radius in
    # front of their centre, less a little off the centre of the ball's image.
    info = read_info(reach_dataset)
    for name in ("fingertip", "target"):
        k = base.keypoint_names.index(name)
        on_ball = visible[..., k] & (body[..., k] == info.body_names.index(name))
        gap = (frames["keypoints_depth"] - surface)[..., k][on_ball]
        assert on_ball.sum() > 100 and gap.min() > 0.022 and gap.max() < 0.031
    # Depth exists everywhere (a floor under every view), segmentation knows every pixel.
    assert np.all(np.isfinite(frames["depth"])) and np.all(frames["segmentation"] >= 0)


def test_segmentation_agrees_with_the_rgb_views(reach_dataset: Path) -> None:
    """The pixels labelled with a body show its material's colour (up to shading)."""
    model = gym.make(REACH).unwrapped.model
    frames = all_frames(reach_dataset, ["images", "segmentation"])
    for body in range(model.nbody):
        geoms = np.flatnonzero(model.geom_bodyid == body)
        pixels = frames["images"][frames["segmentation"] == body].astype(np.float64)
        assert len(pixels) > 100, model.body(body).name
        colour = model.mat_rgba[model.geom_matid[geoms[0]], :3]
        seen = pixels.mean(axis=0)
        np.testing.assert_allclose(
            seen / seen.max(), colour / colour.max(), atol=0.12, err_msg=model.body(body).name
        )


def test_body_poses_carry_pixels_across_time(reach_dataset: Path) -> None:
    """Unproject the forearm's pixels with the depth map at step t, move them with the
    forearm's pose from t to t + 1, project them: they land on the forearm again."""
    info = read_info(reach_dataset)
    dataset = FrameDataset(reach_dataset, "all", load=("depth", "segmentation", "body_poses"))
    forearm = info.body_names.index("forearm")
    batch = dataset.frames([10, 11])
    assert dataset.step[11] == dataset.step[10] + 1
    camera = 2  # the top camera sees the whole arm
    # Pixels inside the forearm's image (not on its outline, where a pixel is partly floor).
    interior = ndimage.binary_erosion(batch.segmentation[0, camera].numpy() == forearm)
    rows, columns = np.nonzero(interior)
    assert len(rows) > 10
    pixels = np.stack([columns + 0.5, rows + 0.5], axis=-1)
    depth = batch.depth[0, camera].numpy()[rows, columns]
    intrinsics = batch.intrinsics.numpy().astype(np.float64)
    extrinsics = batch.extrinsics.numpy().astype(np.float64)
    world = geometry.unproject(pixels, depth, intrinsics[0, camera], extrinsics[0, camera])
    poses = batch.body_poses.numpy().astype(np.float64)[:, forearm]
    moved = geometry.transform_points(poses[1] @ np.linalg.inv(poses[0]), world)
    landed, _ = geometry.project(moved, intrinsics[1, camera], extrinsics[1, camera])
    rows_next, columns_next = landed[:, 1].astype(int), landed[:, 0].astype(int)
    inside = (rows_next >= 0) & (rows_next < 64) & (columns_next >= 0) & (columns_next < 64)
    hits = batch.segmentation[1, camera].numpy()[rows_next[inside], columns_next[inside]]
    assert inside.mean() > 0.9 and (hits == forearm).mean() > 0.95


def test_killed_run_resumes_to_the_same_frames(tmp_path: Path) -> None:
    """SIGKILL during `kp3d dataset` keeps the shards written; re-running the same command
    continues (replaying the episode it cut) to exactly the frames of an uninterrupted run."""
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    arguments = ["--frames", "160", "--size", "32", "--shard-size", "30", "--seed", "3"]
    command = [sys.executable, "-m", "agents.cli", "dataset", REACH, "--out", str(interrupted)]
    process = subprocess.Popen(
        [*command, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")},
    )
    deadline = time.monotonic() + 120
    while not (interrupted / shard_name(1)).exists():
        assert process.poll() is None, "kp3d dataset ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The kill may land between writing the second shard and listing it in meta.json: the meta
    # then lists one shard, and resuming adopts the unlisted one.
    kept = read_info(interrupted).frames
    assert (interrupted / shard_name(1)).exists() and 30 <= kept < 160
    write_dataset(REACH, 160, interrupted, size=32, seed=3, shard_size=30, progress=False)
    write_dataset(REACH, 160, reference, size=32, seed=3, shard_size=30, progress=False)
    assert read_info(interrupted).frames == 160
    names = ["episode", "step", "keypoints_world", "images", "depth"]
    resumed, straight = all_frames(interrupted, names), all_frames(reference, names)
    for name in names:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    # Running it again adds nothing; a larger --frames extends it.
    write_dataset(REACH, 160, interrupted, size=32, seed=3, shard_size=30, progress=False)
    assert read_info(interrupted).frames == 160


def test_ctrl_c_writes_the_frames_collected(tmp_path: Path, monkeypatch) -> None:
    calls = 0
    act = RandomPolicy.act

    def interrupted_act(self, observation, env):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 25:
            raise KeyboardInterrupt
        return act(self, observation, env)

    monkeypatch.setattr(RandomPolicy, "act", interrupted_act)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(REACH, 100, tmp_path, size=32, shard_size=10, progress=False)
    info = read_info(tmp_path)
    assert info.frames == 25 and [s.frames for s in info.shards] == [10, 10, 5]


def test_another_dataset_in_the_directory_is_an_error(tmp_path: Path) -> None:
    write_dataset(REACH, 5, tmp_path / "data", size=32, progress=False)
    with pytest.raises(DatasetError, match=r"seed: 0 there, 1 asked"):
        write_dataset(REACH, 10, tmp_path / "data", size=32, seed=1, progress=False)
    with pytest.raises(DatasetError, match=r"env_kwargs"):
        write_dataset(REACH, 10, tmp_path / "data", size=48, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        write_dataset(REACH, 5, tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="unknown env"):
        write_dataset("kp3d/Nope-v0", 5, tmp_path / "nope", progress=False)


def test_a_shard_written_but_not_listed_is_adopted(tmp_path: Path) -> None:
    """A run killed between a shard and meta.json leaves the shard unlisted: a re-run lists it
    instead of writing its frames twice."""
    write_dataset(REACH, 20, tmp_path, size=32, shard_size=10, progress=False)
    meta_path = tmp_path / META_FILE
    import json

    meta = json.loads(meta_path.read_text())
    meta["shards"] = meta["shards"][:1]
    meta["frames"] = 10
    meta_path.write_text(json.dumps(meta))
    write_dataset(REACH, 30, tmp_path, size=32, shard_size=10, progress=False)
    frames = all_frames(tmp_path, ["step"])
    np.testing.assert_array_equal(frames["step"], np.arange(30))


def test_a_state_based_agent_acts_while_the_cameras_record(
    tmp_path: Path, tiny_config, write_config
) -> None:
    from agents.config import load_config
    from agents.training import train

    config = tiny_config(env_kwargs={"obs_mode": "state", "size": 32}, perception={"name": None})
    run = train(load_config(write_config(config)), run_dir=tmp_path / "run")
    write_dataset(REACH, 12, tmp_path / "data", policy=str(run), progress=False)
    info = read_info(tmp_path / "data")
    assert info.policy == str(run.resolve()) and info.image_size == (32, 32)
    assert info.env_kwargs == {"obs_mode": "pixels", "size": 32}
    frames = all_frames(tmp_path / "data", ["images"])
    assert frames["images"].shape == (12, 3, 32, 32, 3) and frames["images"].std() > 0
    with pytest.raises(ValueError, match="--size 48 differs"):
        write_dataset(REACH, 12, tmp_path / "other", policy=str(run), size=48, progress=False)
    with pytest.raises(ValueError, match="trained on kp3d/Reach-v0"):
        write_dataset("kp3d/Push-v0", 12, tmp_path / "push", policy=str(run), progress=False)


@pytest.mark.slow
def test_an_image_based_agent_acts_from_its_observations(
    tmp_path: Path, tiny_config, write_config
) -> None:
    from agents.config import load_config
    from agents.training import train

    run = train(load_config(write_config(tiny_config(env_kwargs={"size": 32}))), tmp_path / "run")
    write_dataset(REACH, 12, tmp_path / "data", policy=str(run), progress=False)
    info = read_info(tmp_path / "data")
    assert info.frames == 12 and info.env_kwargs == {"size": 32, "obs_mode": "pixels"}


def test_the_empty_scene_is_stored_once_for_fixed_cameras(reach_dataset: Path) -> None:
    assert read_info(reach_dataset).background == "fixed"
    assert (reach_dataset / BACKGROUND_FILE).is_file()
    env = gym.make(REACH)
    env.reset(seed=0)
    expected = env.unwrapped.render_background()
    env.close()
    np.testing.assert_array_equal(read_background(reach_dataset), expected)
    dataset = FrameDataset(reach_dataset, "all", load=("keypoints", "backgrounds"))
    torch_background = dataset.background
    assert torch_background is not None and torch_background.shape == (3, 3, 64, 64)
    assert dataset.frames([0]).backgrounds is None  # not per frame: the cameras are fixed


def test_moving_cameras_store_the_empty_scene_of_every_frame(tmp_path: Path) -> None:
    write_dataset("kp3d/Ant-v0", 6, tmp_path, size=32, progress=False)
    assert read_info(tmp_path).background == "per_frame"
    assert read_background(tmp_path) is None
    dataset = FrameDataset(tmp_path, "all", load=("backgrounds",))
    batch = dataset.frames(np.arange(6))
    assert batch.backgrounds is not None and batch.backgrounds.shape == batch.images.shape
    # The cameras follow the torso: the floor under them changes, and the ant is not in it.
    assert not np.array_equal(batch.backgrounds[0].numpy(), batch.backgrounds[5].numpy())
    assert (batch.backgrounds - batch.images).abs().amax() > 0.3
