"""Environment throughput: kp3d env steps/s against a bare ``mujoco.Renderer`` loop, in one run.

For each image size the same number of steps is timed for

* ``env``: ``gymnasium.make(env_id)`` with random actions (all wrappers, observation dict, ground
  truth with occlusion, resets at episode ends), as a training loop sees it;
* ``floor``: the raw cost of the same physics (``frame_skip`` substeps of ``mj_step``) plus
  rendering the same cameras with one ``mujoco.Renderer`` (``update_scene`` + ``render`` per
  camera), nothing else;
* ``kp3d render``: physics plus kp3d's one-pass :class:`~envs.rendering.MultiViewRenderer`.

The measurements are interleaved and repeated; medians are reported. The table prints the env's
time per step as a multiple of the floor's, ``env_time_per_step / floor_time_per_step`` (lower is
better; ``1.00x``: as fast as the bare loop; below 1: faster, as the env's renderer draws all views
in one pass). The JSON keeps it as ``env_time_vs_floor`` and, as before, as
``env_overhead_vs_floor`` (the same ratio minus one).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

import envs
from envs.rendering import MultiViewRenderer


def _time_steps(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up (context creation, first frame)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def measure_single_process(env_id: str, size: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per step (median of interleaved repeats): env, floor and kp3d's renderer."""
    env = gym.make(env_id, size=size)
    env.reset(seed=0)
    base = env.unwrapped
    rng = np.random.default_rng(0)
    actions = rng.uniform(
        env.action_space.low, env.action_space.high, size=(steps + 1, *env.action_space.shape)
    ).astype(np.float32)

    def env_loop() -> Callable[[], None]:
        index = iter(range(10**12))

        def step() -> None:
            _, _, terminated, truncated, _ = env.step(actions[next(index) % len(actions)])
            if terminated or truncated:
                env.reset()

        return step

    model = base.model
    data = mujoco.MjData(model)
    data.qpos[:] = base.data.qpos
    mujoco.mj_forward(model, data)
    renderer = mujoco.Renderer(model, height=size, width=size)
    cameras = [base.cameras.mjv_camera(i) for i in range(len(base.cameras))]
    fovys = [spec.fovy for spec in base.cameras.specs]

    def floor_step() -> None:
        data.ctrl[:] = actions[0]
        mujoco.mj_step(model, data, nstep=base.frame_skip)
        for camera, fovy in zip(cameras, fovys, strict=True):
            model.vis.global_.fovy = fovy
            renderer.update_scene(data, camera)
            renderer.render()

    kp3d_renderer = MultiViewRenderer(model, base.cameras)

    def kp3d_render_step() -> None:
        data.ctrl[:] = actions[0]
        mujoco.mj_step(model, data, nstep=base.frame_skip)
        kp3d_renderer.render(data)

    timings: dict[str, list[float]] = {"env": [], "floor": [], "kp3d_render": []}
    for _ in range(repeats):
        timings["env"].append(_time_steps(env_loop(), steps))
        timings["floor"].append(_time_steps(floor_step, steps))
        timings["kp3d_render"].append(_time_steps(kp3d_render_step, steps))
    renderer.close()
    kp3d_renderer.close()
    env.close()
    return {name: statistics.median(values) for name, values in timings.items()}


def measure_vectorised(env_id: str, size: int, steps: int, workers: int) -> float:
    """Total env steps/s of ``workers`` SubprocVecEnv workers."""
    vec_env = envs.make_vec_env(env_id, n_envs=workers, seed=0, env_kwargs={"size": size})
    try:
        vec_env.reset()
        actions = np.stack([vec_env.action_space.sample() for _ in range(workers)])
        for _ in range(20):
            vec_env.step(actions)
        start = time.perf_counter()
        for _ in range(steps):
            vec_env.step(actions)
        elapsed = time.perf_counter() - start
    finally:
        vec_env.close()
    return steps * workers / elapsed


def run_env_benchmark(
    env_id: str = "kp3d/Reach-v0",
    steps: int = 2000,
    repeats: int = 5,
    sizes: tuple[int, ...] = (64, 128),
    workers: int = 2,
    json_path: str | None = None,
) -> dict:
    """Run the benchmark, print a Markdown table, optionally save JSON. Returns the results."""
    if env_id not in envs.TASKS:
        raise ValueError(f"unknown environment {env_id!r}; registered: {sorted(envs.TASKS)}")
    cameras = len(gym.make(env_id).unwrapped.cameras)
    results: dict = {
        "env_id": env_id,
        "cameras": cameras,
        "steps": steps,
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "mujoco": mujoco.__version__,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
        "sizes": {},
    }
    print(f"{env_id}, {cameras} cameras, {steps} steps x {repeats} interleaved repeats (median)")
    print(
        "| size | env steps/s | bare mujoco.Renderer floor steps/s | env time per step vs the "
        "floor's (lower is better) | kp3d renderer+physics steps/s | vectorised steps/s |"
    )
    print("|---|---|---|---|---|---|")
    for size in sizes:
        timing = measure_single_process(env_id, size, steps, repeats)
        vectorised = measure_vectorised(env_id, size, steps, workers) if workers > 0 else None
        ratio = timing["env"] / timing["floor"]
        row = {
            "env_steps_per_s": 1.0 / timing["env"],
            "floor_steps_per_s": 1.0 / timing["floor"],
            "env_time_vs_floor": ratio,
            "env_overhead_vs_floor": ratio - 1.0,
            "kp3d_render_steps_per_s": 1.0 / timing["kp3d_render"],
            "vectorised_steps_per_s": vectorised,
            "workers": workers,
        }
        results["sizes"][str(size)] = row
        vec_text = f"{vectorised:.0f} ({workers} workers)" if vectorised else "-"
        print(
            f"| {size}x{size} | {row['env_steps_per_s']:.0f} | {row['floor_steps_per_s']:.0f} "
            f"| {ratio:.2f}x | {row['kp3d_render_steps_per_s']:.0f} | {vec_text} |"
        )
    print(
        "env time per step vs the floor's: 1.00x = as fast as a bare mujoco.Renderer loop "
        "drawing the same cameras after the same physics; lower is better."
    )
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results
