"""Writing frame datasets: ``kp3d dataset ENV_ID --frames N --out DIR`` (read them with
:mod:`kp3d.data`).

Episodes of a kp3d env are rolled out with a random policy or a trained agent, and every frame
(the reset's and every step's) is stored with everything the simulator knows about it: the
images of all cameras, their matrices of that step, the ground-truth keypoints (world, pixels,
depth, visibility), rendered depth and body segmentation of every camera, the pose of every
body, and the empty scene each camera sees (once for fixed cameras, per frame for moving ones).
:mod:`kp3d.data` documents the layout.

Writing is incremental and resumable:

* frames go to shards of ``shard_size`` frames, each written atomically
  (:func:`kp3d.files.atomic_write`), and ``meta.json`` is rewritten (atomically) after each one,
  so a killed run keeps every shard it finished;
* re-running the same command continues from the shards present: an episode cut by the kill is
  replayed (episodes are seeded one by one, so a replay reproduces its frames, which is checked)
  and continued; a ``meta.json`` that describes another dataset (env, kwargs, policy, seed) is an
  error naming what differs;
* Ctrl-C writes the frames collected so far as a last, shorter shard before stopping.

Episode ``e`` resets with a seed drawn from ``SeedSequence((seed, e))`` and a random policy
draws its actions from a generator seeded the same way; an agent samples its actions (not the
mean action) with torch seeded per episode, so its dataset covers more states.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from agents.progress import progress_bar
from envs.observations import stack_views
from kp3d.data import (
    BACKGROUND_FILE,
    BACKGROUNDS_ARRAY,
    FORMAT,
    FORMAT_VERSION,
    FRAME_ARRAYS,
    META_FILE,
    DatasetError,
    load_shard,
    read_meta,
    shard_name,
)
from kp3d.files import atomic_write, remove_stale_partials
from kp3d.interrupts import DeferredInterrupt

DEFAULT_SHARD_SIZE = 1000
"""Frames per shard: about 2 MB on disk for Reach at 64 px (images, depth and segmentation
compressed), about 90 MB in memory while it is being collected."""

IDENTITY_KEYS = ("env_id", "env_kwargs", "policy", "seed", "camera_names", "image_size")
"""``meta.json`` entries that must match for a re-run to extend an existing dataset."""

_SHARD_FILE = re.compile(r"shard_(\d{5})\.npz")


# -- policies -------------------------------------------------------------------------------------


class RandomPolicy:
    """Uniform random actions within the action space's bounds, seeded per episode."""

    def __init__(self, action_space: gym.spaces.Box) -> None:
        self._low = np.asarray(action_space.low, dtype=np.float64)
        self._high = np.asarray(action_space.high, dtype=np.float64)
        self._dtype = action_space.dtype
        self._rng = np.random.default_rng(0)

    def start_episode(self, seed: np.random.SeedSequence) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, observation: Any, env: gym.Env) -> np.ndarray:
        return self._rng.uniform(self._low, self._high).astype(self._dtype)


class AgentPolicy:
    """The stochastic policy of a trained agent (:func:`agents.load`), seeded per episode.

    A state-based agent (``obs_mode: state``) acts on the env's state observation while the env
    renders its cameras for the dataset.
    """

    def __init__(self, run_dir: str | Path, state_based: bool, device: str = "auto") -> None:
        from agents.builder import load_policy

        self.model = load_policy(run_dir, device=device)
        self.state_based = state_based

    def start_episode(self, seed: np.random.SeedSequence) -> None:
        import torch

        torch.manual_seed(int(seed.generate_state(1)[0]))

    def act(self, observation: Any, env: gym.Env) -> np.ndarray:
        if self.state_based:
            observation = env.unwrapped.state_observation()
        action, _ = self.model.predict(observation, deterministic=False)
        return np.asarray(action)


def _agent_env(run_dir: Path, env_id: str, size: int | None) -> tuple[dict[str, Any], bool]:
    """The env kwargs of a run (rendering even if the run observed states) and whether its
    policy is state-based."""
    from agents.runs import read_run_config

    config = read_run_config(run_dir)
    if config.env_id != env_id:
        raise ValueError(
            f"run {str(run_dir)!r} was trained on {config.env_id}, not {env_id}: give "
            f"`kp3d dataset {config.env_id} ...`"
        )
    kwargs = dict(config.env_kwargs)
    if size is not None and kwargs.get("size", size) != size:
        raise ValueError(
            f"run {str(run_dir)!r} observes images of size {kwargs['size']}; --size {size} "
            "differs (leave --size out to use the run's)"
        )
    if size is not None:
        kwargs["size"] = size
    state_based = kwargs.get("obs_mode", "pixels") == "state"
    kwargs["obs_mode"] = "pixels"
    return kwargs, state_based


# -- frames ---------------------------------------------------------------------------------------


def body_poses(data: mujoco.MjData) -> np.ndarray:
    """``(N, 4, 4)`` float32 body→world transform of every body (body 0: the world)."""
    count = len(data.xpos)
    poses = np.zeros((count, 4, 4), dtype=np.float32)
    poses[:, :3, :3] = data.xmat.reshape(count, 3, 3)
    poses[:, :3, 3] = data.xpos
    poses[:, 3, 3] = 1.0
    return poses


def body_segmentation(model: mujoco.MjModel, segmentation: np.ndarray) -> np.ndarray:
    """Body id per pixel from ``MultiViewRenderer.render_segmentation``'s ``(..., 2)`` (object
    id, object type): geoms and sites map to their body, anything else (background) to -1."""
    objects, kinds = segmentation[..., 0], segmentation[..., 1]
    bodies = np.full(objects.shape, -1, dtype=np.int16)
    for kind, owner in (
        (mujoco.mjtObj.mjOBJ_GEOM, model.geom_bodyid),
        (mujoco.mjtObj.mjOBJ_SITE, model.site_bodyid),
    ):
        mask = kinds == int(kind)  # an enum operand would compare element by element in Python
        bodies[mask] = owner[objects[mask]]
    return bodies


def capture_frame(
    env: gym.Env,
    observation: Mapping[str, Any],
    info: Mapping[str, Any],
    background: bool = False,
) -> dict:
    """One frame's arrays (see :mod:`kp3d.data`, without ``episode`` and ``step``) from a kp3d
    env's observation and ``info`` after a reset or a step; depth and segmentation (and with
    ``background`` the empty scene, for moving cameras) are rendered here, of the same state."""
    base = env.unwrapped
    renderer = base.renderer
    names = base.cameras.names
    extra = {BACKGROUNDS_ARRAY: base.render_background()} if background else {}
    return {
        "images": stack_views(observation, names),
        "intrinsics": info["camera_intrinsics"],
        "extrinsics": info["camera_extrinsics"],
        "keypoints_world": info["keypoints_world"],
        "keypoints_pixels": info["keypoints_pixels"],
        "keypoints_depth": info["keypoints_depth"],
        "keypoints_visible": info["keypoints_visible"],
        "depth": renderer.render_depth(base.data),
        "segmentation": body_segmentation(base.model, renderer.render_segmentation(base.data)),
        "body_poses": body_poses(base.data),
        **extra,
    }


def episode_seeds(seed: int, episode: int) -> tuple[int, np.random.SeedSequence]:
    """The reset seed of episode ``episode`` and the seed sequence of its actions."""
    reset, actions = np.random.SeedSequence((seed, episode)).spawn(2)
    return int(reset.generate_state(1)[0]), actions


def rollout(
    env: gym.Env,
    policy: RandomPolicy | AgentPolicy,
    seed: int,
    episode: int,
    backgrounds: bool = False,
) -> Iterator[tuple[int, dict]]:
    """``(step, frame)`` of one episode, from the reset (step 0) to its end (frames with the
    empty scene when ``backgrounds``)."""
    reset_seed, action_seed = episode_seeds(seed, episode)
    policy.start_episode(action_seed)
    observation, info = env.reset(seed=reset_seed)
    step = 0
    yield step, capture_frame(env, observation, info, backgrounds)
    done = False
    while not done:
        action = policy.act(observation, env)
        observation, _, terminated, truncated, info = env.step(action)
        step += 1
        yield step, capture_frame(env, observation, info, backgrounds)
        done = terminated or truncated


def write_background(env: gym.Env, directory: Path) -> None:
    """Write the empty scene of an env's fixed cameras as :data:`kp3d.data.BACKGROUND_FILE`."""
    env.reset(seed=0)  # the static scene does not depend on the state; cameras are placed
    images = env.unwrapped.render_background()
    atomic_write(
        directory / BACKGROUND_FILE,
        lambda temporary: np.savez_compressed(temporary, images=images),
    )


# -- the dataset directory ------------------------------------------------------------------------


def _describe_env(env: gym.Env) -> dict[str, Any]:
    base = env.unwrapped
    cameras, model = base.cameras, base.model
    if not hasattr(base, "keypoint_set"):
        raise ValueError(f"{env.spec.id if env.spec else env} is not a kp3d environment")
    return {
        "camera_names": list(cameras.names),
        "camera_moving": [bool(m) for m in cameras.moving],
        "image_size": [int(cameras.height), int(cameras.width)],
        "keypoint_names": list(base.keypoint_names),
        "skeleton": np.asarray(base.skeleton).reshape(-1, 2).tolist(),
        "instances": np.asarray(base.keypoint_instances).tolist(),
        "body_names": [model.body(i).name for i in range(model.nbody)],
        "normalising_length": base.normalising_length,
        "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
    }


def _write_meta(directory: Path, meta: Mapping[str, Any]) -> None:
    text = json.dumps(meta, indent=1)
    atomic_write(directory / META_FILE, lambda temporary: Path(temporary).write_text(text))


def _shard_runs(episodes: np.ndarray, steps: np.ndarray) -> list[list[int]]:
    """``[[episode, first step, count], ...]`` of a shard's consecutive frames."""
    runs: list[list[int]] = []
    for episode, step in zip(episodes.tolist(), steps.tolist(), strict=True):
        if runs and runs[-1][0] == episode and runs[-1][1] + runs[-1][2] == step:
            runs[-1][2] += 1
        else:
            runs.append([episode, step, 1])
    return runs


def _check_identity(directory: Path, existing: Mapping[str, Any], wanted: Mapping[str, Any]):
    differences = [
        f"{key}: {existing.get(key)!r} there, {wanted[key]!r} asked"
        for key in IDENTITY_KEYS
        if existing.get(key) != wanted[key]
    ]
    if differences:
        raise DatasetError(
            f"{directory} holds another dataset ({'; '.join(differences)}): give another --out, "
            "or the arguments that wrote it to extend it"
        )


def _reconcile(directory: Path, meta: dict[str, Any]) -> None:
    """Bring ``meta["shards"]`` in line with the shard files (a run killed between writing a
    shard and ``meta.json`` leaves one shard unlisted) and drop temporary files of killed runs."""
    remove_stale_partials(directory)
    listed = meta["shards"]
    for index, entry in enumerate(listed):
        if entry["file"] != shard_name(index) or not (directory / entry["file"]).is_file():
            raise DatasetError(
                f"{directory / META_FILE} lists shard {entry['file']!r} as number {index}, but "
                f"{directory / shard_name(index)} is missing: the dataset is damaged"
            )
    numbers = sorted(
        int(match.group(1))
        for path in directory.iterdir()
        if (match := _SHARD_FILE.fullmatch(path.name))
    )
    for number in numbers[len(listed) :]:
        if number != len(listed):
            raise DatasetError(
                f"{directory} has {shard_name(number)} after {len(listed)} listed shards: the "
                "dataset is damaged"
            )
        data = load_shard(directory / shard_name(number), ["episode", "step"])
        listed.append(
            {
                "file": shard_name(number),
                "frames": len(data["episode"]),
                "episodes": _shard_runs(data["episode"], data["step"]),
            }
        )
    meta["frames"] = int(sum(entry["frames"] for entry in listed))


def _resume_point(directory: Path, meta: Mapping[str, Any]) -> tuple[int, int, np.ndarray | None]:
    """``(episode, step, keypoints_world of the last stored frame)`` to continue after, or
    ``(0, -1, None)`` for an empty dataset."""
    if not meta["shards"]:
        return 0, -1, None
    last = meta["shards"][-1]
    episode, first, count = last["episodes"][-1]
    data = load_shard(directory / last["file"], ["keypoints_world"])
    return int(episode), int(first + count - 1), data["keypoints_world"][-1]


def write_dataset(
    env_id: str,
    frames: int,
    out: str | Path,
    policy: str = "random",
    size: int | None = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or extend to) ``frames`` frames of ``env_id`` into the dataset directory ``out``.

    Args:
        env_id: a registered kp3d id, e.g. ``kp3d/Reach-v0``.
        frames: total frames the dataset should hold.
        out: the dataset directory (created if needed).
        policy: ``"random"`` or the run directory of a trained agent of ``env_id``.
        size: image side in pixels (default: the env's, or the agent's run's).
        seed: seed of the episodes.
        shard_size: frames per shard.
        device: torch device of an agent policy.
        progress: show a progress bar (``tqdm``, when installed).

    Returns:
        The final ``meta.json`` mapping.

    Raises:
        DatasetError: if ``out`` holds another dataset or a damaged one.
        ValueError: for bad arguments (the message says what is valid).
    """
    import envs  # noqa: F401  (registers the kp3d ids)
    from agents.environment import CameraMatricesObservation, make_env

    if frames < 1 or shard_size < 1:
        raise ValueError(f"frames and shard_size must be positive; got {frames}, {shard_size}")
    directory = Path(out)
    if policy == "random":
        env_kwargs: dict[str, Any] = {} if size is None else {"size": int(size)}
        policy_name, state_based = "random", False
    else:
        run_dir = Path(policy)
        env_kwargs, state_based = _agent_env(run_dir, env_id, size)
        policy_name = str(run_dir.resolve())
    if env_id not in gym.registry:
        kp3d_ids = sorted(i for i in gym.registry if i.startswith("kp3d/"))
        raise ValueError(f"unknown env {env_id!r}; kp3d environments: {kp3d_ids}")

    env = make_env(env_id, env_kwargs)
    if any(env.unwrapped.cameras.moving) and not state_based:
        env = CameraMatricesObservation(env)  # what an image-based agent observes
    try:
        actor: RandomPolicy | AgentPolicy = (
            RandomPolicy(env.action_space)
            if policy == "random"
            else AgentPolicy(policy, state_based, device)
        )
        wanted = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "policy": policy_name,
            "seed": int(seed),
            **_describe_env(env),
        }
        if (directory / META_FILE).is_file():
            meta = read_meta(directory)
            _check_identity(directory, meta, wanted)
            _reconcile(directory, meta)
        else:
            if directory.exists() and any(directory.iterdir()):
                raise DatasetError(
                    f"{directory} is not empty and holds no {META_FILE}: give an empty or new --out"
                )
            directory.mkdir(parents=True, exist_ok=True)
            moving = any(env.unwrapped.cameras.moving)
            meta = {
                **wanted,
                "background": "per_frame" if moving else "fixed",
                "frames": 0,
                "shards": [],
            }
        if meta.get("background") == "fixed" and not (directory / BACKGROUND_FILE).is_file():
            write_background(env, directory)
        _write_meta(directory, meta)
        _collect(env, actor, directory, meta, frames, int(seed), shard_size, progress)
    finally:
        env.close()
    return meta


def _collect(
    env: gym.Env,
    policy: RandomPolicy | AgentPolicy,
    directory: Path,
    meta: dict[str, Any],
    total: int,
    seed: int,
    shard_size: int,
    progress: bool,
) -> None:
    per_frame = meta.get("background") == "per_frame"
    dtypes = {**FRAME_ARRAYS, **({BACKGROUNDS_ARRAY: np.dtype(np.uint8)} if per_frame else {})}
    buffer: dict[str, list] = {name: [] for name in dtypes}

    def flush() -> None:
        if not buffer["episode"]:
            return
        arrays = {
            name: np.asarray(np.stack(values), dtype=dtypes[name])
            for name, values in buffer.items()
        }
        name = shard_name(len(meta["shards"]))
        atomic_write(directory / name, lambda temporary: np.savez_compressed(temporary, **arrays))
        meta["shards"].append(
            {
                "file": name,
                "frames": len(arrays["episode"]),
                "episodes": _shard_runs(arrays["episode"], arrays["step"]),
            }
        )
        meta["frames"] += len(arrays["episode"])
        _write_meta(directory, meta)
        for values in buffer.values():
            values.clear()

    episode, last_step, last_keypoints = _resume_point(directory, meta)
    written = meta["frames"]
    bar = progress_bar(total, written, "frame", "dataset", enabled=progress)
    try:
        # Ctrl-C stops after the current frame (a signal raised inside a ctypes call of the
        # renderer would escape `except KeyboardInterrupt`).
        with DeferredInterrupt() as interrupt:
            while written < total:
                for step, frame in rollout(env, policy, seed, episode, per_frame):
                    if step <= last_step:
                        if step == last_step and not np.allclose(
                            frame["keypoints_world"], last_keypoints, atol=1e-5
                        ):
                            raise DatasetError(
                                f"cannot continue {directory}: replaying episode {episode} "
                                f"does not reproduce its stored step {step} (did the env or "
                                "the policy change?)"
                            )
                        continue
                    for name, value in frame.items():
                        buffer[name].append(value)
                    buffer["episode"].append(episode)
                    buffer["step"].append(step)
                    written += 1
                    bar.update(1)
                    interrupt.check()
                    if len(buffer["episode"]) >= shard_size:
                        flush()
                    if written >= total:
                        break
                episode, last_step = episode + 1, -1
            flush()
    except KeyboardInterrupt:
        flush()
        raise
    finally:
        bar.close()


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "AgentPolicy",
    "RandomPolicy",
    "body_poses",
    "body_segmentation",
    "capture_frame",
    "episode_seeds",
    "rollout",
    "write_background",
    "write_dataset",
]
