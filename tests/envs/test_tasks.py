"""Every registered kp3d task: API conformance, determinism, ground truth, errors."""

from __future__ import annotations

import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.cameras import CameraSpec

TASK_IDS = list(envs.TASKS)


def _rollout(env: gym.Env, seed: int, steps: int) -> list[tuple[dict, dict]]:
    env.action_space.seed(seed)
    observation, info = env.reset(seed=seed)
    records = [(observation, info)]
    for _ in range(steps):
        observation, _, terminated, truncated, info = env.step(env.action_space.sample())
        records.append((observation, info))
        if terminated or truncated:
            break
    return records


@pytest.fixture(scope="module", params=TASK_IDS)
def env(request: pytest.FixtureRequest) -> gym.Env:
    environment = gym.make(request.param)
    yield environment
    environment.close()


@pytest.mark.parametrize("env_id", TASK_IDS)
def test_gymnasium_and_sb3_checkers_pass_without_warnings(env_id: str) -> None:
    for checker in (gym_check_env, sb3_check_env):
        environment = gym.make(env_id).unwrapped
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            checker(environment)
        environment.close()


@pytest.mark.parametrize("env_id", TASK_IDS)
def test_state_mode_passes_checkers_and_renders_nothing(env_id: str) -> None:
    environment = gym.make(env_id, obs_mode="state").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(environment)
        sb3_check_env(environment)
    observation, info = environment.reset(seed=0)
    assert observation.dtype == np.float32 and observation.ndim == 1
    assert environment._renderer is None
    assert info["keypoints_pixels"].shape[0] == len(environment.cameras)
    environment.close()


def test_observation_layout(env: gym.Env) -> None:
    base = env.unwrapped
    spaces = env.observation_space.spaces
    assert len(base.cameras) == 3
    for name in base.cameras.names:
        space = spaces[f"cam_{name}"]
        assert space.shape == (64, 64, 3) and space.dtype == np.uint8
    state = spaces["state"]
    assert state.dtype == np.float32 and np.all(np.isfinite(state.low))
    assert np.all(np.isfinite(state.high))
    observation, _ = env.reset(seed=1)
    assert env.observation_space.contains(observation)
    # The views differ: three distinct viewpoints.
    views = [observation[f"cam_{name}"].astype(int) for name in base.cameras.names]
    assert all(np.abs(views[i] - views[j]).mean() > 1 for i in range(3) for j in range(i))


def test_episode_length_is_100_to_200_steps(env: gym.Env) -> None:
    assert 100 <= env.spec.max_episode_steps <= 200


def test_same_seed_gives_identical_observations_and_ground_truth(env: gym.Env) -> None:
    first = _rollout(env, seed=3, steps=15)
    second = _rollout(env, seed=3, steps=15)
    other = _rollout(env, seed=4, steps=15)
    assert len(first) == len(second)
    for (obs_a, info_a), (obs_b, info_b) in zip(first, second, strict=True):
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        for key in (
            "keypoints_world",
            "keypoints_pixels",
            "keypoints_visible",
            "camera_extrinsics",
        ):
            np.testing.assert_array_equal(info_a[key], info_b[key])
    assert any(
        not np.array_equal(a[1]["keypoints_world"], b[1]["keypoints_world"])
        for a, b in zip(first, other, strict=False)
    )


def test_observations_share_no_memory(env: gym.Env) -> None:
    records = _rollout(env, seed=0, steps=3)
    arrays = [
        (step, key, value) for step, (obs, _) in enumerate(records) for key, value in obs.items()
    ]
    for i, (step_a, key_a, a) in enumerate(arrays):
        for step_b, key_b, b in arrays[i + 1 :]:
            assert not np.shares_memory(a, b), (step_a, key_a, step_b, key_b)
    # Ground truth arrays are fresh too.
    infos = [info for _, info in records]
    assert not np.shares_memory(infos[0]["keypoints_world"], infos[1]["keypoints_world"])


def test_info_has_reward_components_success_and_ground_truth(env: gym.Env) -> None:
    base = env.unwrapped
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.action_space.sample())
    count, cameras = len(base.keypoint_names), len(base.cameras)
    assert any(key.startswith("reward_") for key in info)
    assert isinstance(info["is_success"], bool)
    assert info["keypoints_world"].shape == (count, 3)
    assert info["keypoints_pixels"].shape == (cameras, count, 2)
    assert info["keypoints_visible"].shape == (cameras, count)
    assert info["keypoints_visible"].dtype == bool
    assert info["camera_extrinsics"].shape == (cameras, 4, 4)
    assert info["camera_intrinsics"].shape == (cameras, 3, 3)
    assert base.keypoint_instances.shape == (count,)
    assert base.skeleton.ndim == 2 and base.skeleton.shape[1] == 2
    assert np.all((base.skeleton >= 0) & (base.skeleton < count))
    assert len(base.skeleton) == len(type(base).limbs)
    assert np.isfinite(reward)
    # Most keypoints are visible in at least one view at the start of an episode.
    assert info["keypoints_visible"].any(axis=0).mean() > 0.5


def test_visible_keypoints_project_onto_their_body(env: gym.Env) -> None:
    """The projected pixel of a visible keypoint shows a geom of a body that stands for it."""
    base = env.unwrapped
    keypoints = base.keypoint_set
    checked = flagged = 0
    env.action_space.seed(5)
    _, info = env.reset(seed=5)
    for step in range(40):
        if step % 4:
            info = env.step(env.action_space.sample())[-1]
            continue
        segmentation = base.renderer.render_segmentation(base.data)
        pixels, visible = info["keypoints_pixels"], info["keypoints_visible"]
        for camera in range(len(base.cameras)):
            for j in range(len(keypoints)):
                u, v = pixels[camera, j]
                inside = 0 <= u < base.cameras.width and 0 <= v < base.cameras.height
                if not inside:
                    assert not visible[camera, j]
                    continue
                object_id, object_type = segmentation[camera, int(v), int(u)]
                on_body = (
                    object_type == 5  # mjOBJ_GEOM
                    and keypoints.stands_for(j, int(base.model.geom_bodyid[object_id]))
                )
                if visible[camera, j]:
                    # Sub-pixel rays and pixel-centre rasterisation may disagree at a silhouette.
                    checked += 1
                    flagged += not on_body
                elif on_body:
                    flagged += 1
    assert checked > 0
    assert flagged <= 0.05 * checked, f"{flagged} of {checked} keypoints disagree"


def test_pixels_are_projections_of_world_keypoints(env: gym.Env) -> None:
    from kp3d.geometry import unproject

    _, info = env.reset(seed=2)
    pixels, depth = info["keypoints_pixels"], info["keypoints_depth"]
    world = unproject(pixels, depth, info["camera_intrinsics"], info["camera_extrinsics"])
    np.testing.assert_allclose(
        world, np.broadcast_to(info["keypoints_world"], world.shape), atol=1e-9
    )


def test_success_is_reported_at_reset_as_false_or_true(env: gym.Env) -> None:
    _, info = env.reset(seed=0)
    assert isinstance(info["is_success"], bool)


def test_ant_cameras_move_and_report_extrinsics_per_step() -> None:
    env = gym.make("kp3d/Ant-v0")
    base = env.unwrapped
    assert all(base.cameras.moving)
    env.action_space.seed(0)
    _, info = env.reset(seed=0)
    extrinsics = [info["camera_extrinsics"]]
    for _ in range(20):
        _, _, terminated, _, info = env.step(env.action_space.sample())
        extrinsics.append(info["camera_extrinsics"])
        if terminated:
            break
    assert len(extrinsics) > 5
    assert not np.allclose(extrinsics[0], extrinsics[-1])
    np.testing.assert_array_equal(extrinsics[-1], base.cameras.extrinsics)
    env.close()


@pytest.mark.parametrize("size", [(48, 80), 32])
def test_image_size_and_camera_choice_are_configurable(size: int | tuple[int, int]) -> None:
    cameras = ["top", CameraSpec.free("low", lookat=(0, 0, 0), distance=1.0, elevation=-10)]
    env = gym.make("kp3d/Reach-v0", cameras=cameras, size=size)
    observation, info = env.reset(seed=0)
    height, width = (size, size) if isinstance(size, int) else size
    assert set(observation) == {"cam_top", "cam_low", "state"}
    assert observation["cam_low"].shape == (height, width, 3)
    assert info["keypoints_pixels"].shape[0] == 2
    env.close()


def test_render_returns_views_side_by_side() -> None:
    env = gym.make("kp3d/Reach-v0", render_mode="rgb_array")
    observation, _ = env.reset(seed=0)
    frame = env.render()
    names = env.unwrapped.cameras.names
    assert frame.shape == (64, 64 * len(names), 3)
    np.testing.assert_array_equal(frame[:, 64:128], observation[f"cam_{names[1]}"])
    env.close()


def test_envs_prefix_and_plain_id_both_work() -> None:
    for env_id in ("envs:kp3d/Reach-v0", "kp3d/Reach-v0"):
        env = gym.make(env_id)
        assert env.unwrapped.cameras.names
        env.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cameras": ["nope"]}, "unknown camera 'nope'"),
        ({"size": 0}, "image size must be positive"),
        ({"size": (64, -1)}, "image size must be positive"),
        ({"size": 6.5}, "image size must be an int"),
        ({"obs_mode": "rgb"}, "obs_mode must be one of"),
        ({"render_mode": "depth_array"}, "render_mode must be None or one of"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gym.make("kp3d/Reach-v0", **kwargs)


def test_unknown_task_and_bad_actions_give_clear_errors() -> None:
    with pytest.raises(gym.error.Error, match="Reech"):
        gym.make("kp3d/Reech-v0")
    with pytest.raises(ValueError, match="registered"):
        envs.registration.task_class("kp3d/Reech-v0")
    env = gym.make("kp3d/Reach-v0").unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must have shape"):
        env.step(np.zeros(7))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(env.action_space.shape, np.nan))
    env.close()


@pytest.mark.parametrize("env_id", sorted(envs.TASKS))
def test_the_empty_scene_shows_no_movable_body(env_id: str) -> None:
    """render_background leaves out every body that can move (the robot, objects, mocap
    targets) and nothing else, and leaves the model as it was."""
    env = gym.make(env_id, size=48)
    env.reset(seed=1)
    base = env.unwrapped
    groups = base.model.geom_group.copy()
    background = base.render_background()
    np.testing.assert_array_equal(base.model.geom_group, groups)
    assert background.shape == (len(base.cameras), 48, 48, 3) and background.dtype == np.uint8
    segmentation = base.renderer.render_segmentation(base.data)
    geoms = segmentation[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)
    movable = base.model.body_weldid[base.model.geom_bodyid] != 0
    on_movable = geoms & movable[np.where(geoms, segmentation[..., 0], 0)]
    views = base.render_views()
    assert on_movable.any()
    # Pixels of movable bodies change; pixels of static geoms far from any movable one do not.
    changed = np.abs(views.astype(int) - background.astype(int)).sum(axis=-1) > 30
    assert changed[on_movable].mean() > 0.9
    assert changed[~on_movable].mean() < 0.05
    defaults = envs.perception_defaults(env_id)
    assert defaults["num_keypoints"] == base.learned_keypoints
    assert 0.5 < defaults["mean_depth"] < 5.0
    # Positions tell identical instances apart: asked for exactly where there are several.
    assert defaults.get("coordinate_channels", False) == (len(set(base.keypoint_instances)) > 1)
    env.close()
