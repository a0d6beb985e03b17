"""Keypoint rollout videos: frame layout, markers where projections land, files, training videos."""

from __future__ import annotations

import glob
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import agents
import envs  # noqa: F401  (registers the kp3d ids)
from agents import render
from agents.cli import main
from agents.drawing import TextRenderer, draw_segments
from agents.render import GAP, ROWS, FrameComposer, RolloutRenderer, StepView, WorldView, look_at
from agents.rollouts import Rollout
from agents.video import keypoint_colors, writer
from kp3d.geometry import project
from kp3d.perception import images_from_observation, make_perception, save_perception

CAMERA_COLORS = np.array([(200, 60, 60), (60, 200, 60), (60, 60, 200)], np.uint8)


def _reach_step(world: np.ndarray | None = None) -> tuple[StepView, dict]:
    """A StepView of Reach's cameras after a reset, each camera's image one flat colour."""
    env = gym.make("kp3d/Reach-v0")
    _, info = env.reset(seed=0)
    env.close()
    images = np.broadcast_to(CAMERA_COLORS[:, None, None], (3, 64, 64, 3)).copy()
    step = StepView(
        images=images,
        ground_truth=info["keypoints_world"],
        camera_intrinsics=info["camera_intrinsics"],
        camera_extrinsics=info["camera_extrinsics"],
    )
    if world is not None:
        step.points = project(world, info["camera_intrinsics"], info["camera_extrinsics"])[0]
        step.keypoints_world = world
    return step, info


def _color_at(frame: np.ndarray, top_left: tuple[int, int], pixel: np.ndarray, factor: int):
    """The frame's colour at a panel's pixel ``(u, v)`` (in view pixels, upscaled ``factor``)."""
    col, row = np.floor(np.asarray(pixel) * factor).astype(int)
    return frame[top_left[0] + row, top_left[1] + col]


def test_frames_have_the_documented_layout_and_size() -> None:
    step, _ = _reach_step()
    heatmaps = np.zeros((3, 4, 7, 7))
    heatmaps[:, np.arange(4), np.arange(4) + 1, 3] = 1.0
    step.heatmaps = heatmaps
    step.reconstructions = np.full((3, 56, 56, 3), 250, np.uint8)
    step.crop_origins = np.full((3, 2), 4.0)
    step.crop_size = (56, 56)
    composer = FrameComposer(["front", "side", "top"], (64, 64), 3, ROWS, 4, title="layout")
    frame = composer.compose(step, [("step 0", (255, 255, 255))])

    view = 3 * 64
    grid = 3 * view + 2 * GAP
    height, width = composer.header_height + grid, 3 * (view + GAP) + grid
    assert composer.view_size == (view, view)
    assert composer.shape == (height + height % 2, width + width % 2, 3)
    assert frame.shape == composer.shape and frame.dtype == np.uint8
    assert frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
    for camera in range(3):
        top, left = composer.view_origin("keypoints", camera)
        assert (top, left) == (composer.header_height, camera * (view + GAP))
        # The upscaled view fills its panel (away from the label and crop outline).
        np.testing.assert_array_equal(frame[top + 100, left + 150], CAMERA_COLORS[camera])
        # The reconstruction covers its crop window (4 px in, i.e. 12 px after upscaling).
        top, left = composer.view_origin("reconstruction", camera)
        assert top == composer.header_height + view + GAP
        assert frame[top + 12 + 84, left + 12 + 84].tolist() == [250, 250, 250]
        assert frame[top + 100, left + 5].tolist() != [250, 250, 250]
        # Every keypoint's heatmap tile shows its peak in the keypoint's colour.
        top, left = composer.view_origin("heatmaps", camera)
        panel = frame[top : top + view, left : left + view].reshape(-1, 3)
        for color in keypoint_colors(4):
            assert np.all(panel == color, axis=1).any()
    assert composer.world_origin == (composer.header_height, 3 * (view + GAP))
    assert composer.world_size == grid
    # Without a perception: one row of cameras, and the world panel keeps a usable size.
    bare = FrameComposer(["front"], (64, 48), 2, ["keypoints"], 0, title="bare")
    assert bare.rows == ("keypoints",)
    assert bare.shape[1] == 96 + GAP + 256 and bare.shape[0] == bare.header_height + 256


def test_keypoints_are_drawn_where_their_projections_land() -> None:
    world = np.array(
        [[0.2, 0.15, 0.05], [-0.2, 0.15, 0.05], [0.2, -0.15, 0.05], [-0.15, -0.2, 0.1]]
    )
    step, info = _reach_step(world)
    step.attention = np.tile([0.5, 0.3, 0.15, 0.05], (3, 1))
    step.world_attention = step.attention[0]
    colors = keypoint_colors(4)
    factor = 3
    composer = FrameComposer(["front", "side", "top"], (64, 64), factor, ["keypoints"], 4)
    frame = composer.compose(step)
    pixels = project(world, info["camera_intrinsics"], info["camera_extrinsics"])[0]
    for camera in range(3):
        origin = composer.view_origin("keypoints", camera)
        for k in range(4):
            assert 0 < pixels[camera, k, 0] < 64 and 0 < pixels[camera, k, 1] < 64
            np.testing.assert_array_equal(
                _color_at(frame, origin, pixels[camera, k], factor), colors[k]
            )
        # Marker area follows attention: the most attended keypoint covers the most pixels.
        top, left = origin
        panel = frame[top : top + 192, left : left + 192].reshape(-1, 3)
        areas = [np.all(panel == color, axis=1).sum() for color in colors]
        assert areas[0] > areas[3] > 0
    # The world panel draws the same keypoints where its virtual camera projects them.
    world_pixels = composer.world.project(world)
    for k in range(4):
        assert np.all((world_pixels[k] > 0) & (world_pixels[k] < composer.world_size))
        np.testing.assert_array_equal(
            _color_at(frame, composer.world_origin, world_pixels[k], 1), colors[k]
        )


def test_a_pretrained_perception_renders_with_random_actions(tmp_path: Path) -> None:
    """A checkpoint of a module trained without RL, on an env id: its single keypoint is drawn at
    the projection (with that step's matrices) of the world point it reports."""
    module = make_perception(
        "keypoint3d",
        num_cameras=3,
        image_size=64,
        num_keypoints=1,
        base_filters=4,
        heatmap_stride=8,
        mean_depth=0.95,
    )
    checkpoint = save_perception(module, tmp_path / "perception.pt")
    with RolloutRenderer(
        env_id="kp3d/Reach-v0",
        perception=checkpoint,
        random_policy=True,
        max_steps=2,
        seed=3,
        cameras=["top", "front"],
        device="cpu",
    ) as renderer:
        frames = list(renderer)
    composer = renderer.composer
    assert len(frames) == 3 and renderer.lengths == [2] and len(renderer.returns) == 1
    assert composer.rows == ROWS and composer.camera_names == ("top", "front")
    assert all(frame.shape == composer.shape for frame in frames)

    env = gym.make("kp3d/Reach-v0")
    observation, info = env.reset(seed=3)
    names = env.unwrapped.cameras.names
    env.close()
    images = images_from_observation({k: v[None] for k, v in observation.items()}, names)
    intrinsics, extrinsics = info["camera_intrinsics"], info["camera_extrinsics"]
    with torch.no_grad():
        output = module.eval()(images, intrinsics, extrinsics)
    keypoint = output.keypoints[0].numpy().astype(np.float64)  # (1, 3)
    pixels = project(keypoint, intrinsics, extrinsics)[0]  # (C, 1, 2)
    color = keypoint_colors(1)[0]
    for column, name in enumerate(["top", "front"]):
        pixel = pixels[names.index(name), 0]
        assert np.all((pixel > 0) & (pixel < 64)), pixel
        origin = composer.view_origin("keypoints", column)
        np.testing.assert_array_equal(_color_at(frames[0], origin, pixel, renderer.factor), color)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_videos_of_a_run_decode_with_the_expected_frames(trained_run: Path, tmp_path, suffix):
    result = agents.render_video(trained_run, tmp_path / f"clip{suffix}", episodes=2, max_steps=2)
    assert result.frames == 2 * (2 + 1) and result.lengths.tolist() == [2, 2]
    decoded = iio.imread(result.path, plugin="FFMPEG" if suffix == ".mp4" else None)
    assert decoded.shape == (6, *result.frame_shape)
    assert [p.name for p in tmp_path.iterdir()] == [f"clip{suffix}"]
    assert "2 episodes" in result.summary() and "frames/s" in result.summary()


def test_an_interrupted_render_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous video")
    compose = FrameComposer.compose
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return compose(self, *args, **kwargs)

    monkeypatch.setattr(FrameComposer, "compose", interrupted)
    with pytest.raises(KeyboardInterrupt):
        agents.render_video(env_id="kp3d/Reach-v0", random_policy=True, out=target, max_steps=5)
    assert target.read_bytes() == b"previous video"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_without_ffmpeg_a_gif_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(writer, "ffmpeg_available", lambda: False)
    with pytest.warns(UserWarning, match="ffmpeg"):
        result = agents.render_video(
            env_id="kp3d/Push-v0", random_policy=True, out=tmp_path / "push.mp4", max_steps=2
        )
    assert result.path == tmp_path / "push.gif"
    assert iio.imread(result.path).shape[0] == 3


def test_periodic_training_videos_are_saved_and_logged(trained_run: Path) -> None:
    video = trained_run / "videos" / "step_32.mp4"
    frames = iio.imread(video, plugin="FFMPEG")
    assert frames.shape[0] == 4 + 1  # video.max_steps + the reset frame
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(str(trained_run / "logs" / "events.out.tfevents.*"))
    accumulator = EventAccumulator(events, size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Images("kp3d/rollout")
    assert [image.step for image in images] == [32, 64]  # video.freq 32 over 64 steps
    image = images[0]
    # Four frames at half size, two by two.
    assert (image.height, image.width) == (frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2)


def test_render_from_the_command_line(trained_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rollout.gif"
    code = main(
        ["render", str(trained_run), "--max-steps", "2", "--camera", "top", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(f"video: {out}") and "1 episodes" in printed
    assert iio.imread(out).shape[0] == 3
    assert main(["render", "--env", "kp3d/Reach-v0"]) == 2
    assert "--random-policy" in capsys.readouterr().err
    assert main(["render", str(trained_run), "--camera", "nope", "--out", str(out)]) == 2
    assert "unknown cameras ['nope']" in capsys.readouterr().err


def test_eval_records_as_many_episodes_as_asked(trained_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval.mp4"
    args = ["eval", str(trained_run), "--episodes", "1", "--video", str(out)]
    assert main([*args, "--video-episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(f"video: {out} (2 episodes)")
    # Two deterministic Reach episodes of 100 steps, each with its reset frame.
    assert iio.imread(out, plugin="FFMPEG").shape[0] == 2 * (100 + 1)
    with pytest.raises(SystemExit):
        main([*args, "--video-episodes", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_bad_sources_are_refused(trained_run: Path) -> None:
    with pytest.raises(ValueError, match="random_policy=True"):
        RolloutRenderer(env_id="kp3d/Reach-v0")
    with pytest.raises(ValueError, match="already has a perception module"):
        RolloutRenderer(
            trained_run, perception=make_perception("keypoint3d", num_cameras=3, image_size=64)
        )
    with pytest.raises(ValueError, match="takes 2 cameras"):
        RolloutRenderer(
            env_id="kp3d/Reach-v0",
            random_policy=True,
            perception=make_perception("keypoint3d", num_cameras=2, image_size=64),
        )
    with pytest.raises(ValueError, match="trained on kp3d/Reach-v0"):
        RolloutRenderer(trained_run, env_id="kp3d/Push-v0")


def test_the_world_view_looks_at_the_cameras_ground_area() -> None:
    _, info = _reach_step()
    view = WorldView(300)
    view.fit(info["camera_intrinsics"], info["camera_extrinsics"], (64, 64))
    centre, above = view.project(view.centre + np.array([[0, 0, 0], [0, 0, 0.1]]))
    np.testing.assert_allclose(centre, [150, 150], atol=1e-6)
    assert above[1] < centre[1] - 10  # up in the world is up in the panel
    extrinsics = look_at(np.array([0.0, -2.0, 0.0]), np.zeros(3))
    np.testing.assert_allclose(extrinsics[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)


def test_text_and_lines_are_drawn_inside_the_image() -> None:
    text = TextRenderer(13)
    assert text.width("return 12.5") > text.width("return") > 0
    image = np.zeros((20, 30, 3), np.uint8)
    draw_segments(image, np.array([[-100.0, 10.5]]), np.array([[100.0, 10.5]]), (255, 0, 0))
    assert (image[10, :, 0] == 255).all() and image[:10].sum() == 0 and image[11:].sum() == 0


def test_a_rollout_perceives_every_record_without_drawing() -> None:
    with Rollout(
        env_id="kp3d/Reach-v0", random_policy=True, episodes=2, max_steps=2, cameras=["top"]
    ) as rollout:
        records = list(rollout.steps())
        with pytest.raises(RuntimeError, match="rolls out once"):
            next(rollout.steps())
    assert [(r.episode, r.step) for r in records] == [(e, s) for e in (0, 1) for s in (0, 1, 2)]
    assert rollout.lengths == [2, 2] and rollout.position == (1, 2)
    assert [records[2].episode_return, records[5].episode_return] == rollout.returns
    for record in records:
        assert record.view.images.shape == (1, 64, 64, 3) and record.view.points is None
        np.testing.assert_array_equal(record.view.ground_truth, record.info["keypoints_world"])


def test_moved_names_stay_importable_from_their_old_modules() -> None:
    """agents.render, agents.drawing and agents.video keep the names that moved (one release)."""
    import agents.drawing
    import agents.video
    from agents import callbacks, rollouts
    from agents.video import compose, drawing, world
    from kp3d import geometry

    moved = {
        "VideoCallback": callbacks,
        "RolloutRenderer": rollouts,
        "default_upscale": rollouts,
        "FrameComposer": compose,
        "StepView": compose,
        "frame_grid": compose,
        "ROWS": compose,
        "GAP": compose,
        "WorldView": world,
        "resolve_video_path": writer,
        "look_at": geometry,
    }
    for name, home in moved.items():
        assert getattr(render, name) is getattr(home, name), name
    assert all(hasattr(render, name) for name in render.__all__)
    for name in agents.drawing.__all__:
        assert getattr(agents.drawing, name) is getattr(drawing, name), name
    for name in ("write_video", "ffmpeg_available", "VIDEO_SUFFIXES"):
        assert getattr(agents.video, name) is getattr(writer, name), name
    for name in ("upscale", "keypoint_colors", "draw_points", "PALETTE"):
        assert getattr(agents.video, name) is getattr(drawing, name), name
