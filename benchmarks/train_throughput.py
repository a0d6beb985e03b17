"""Training throughput: Keypoint3D PPO against Stable-Baselines3's own pixel PPO, in one run.

Both train on the same env with the same number of envs, rollout length, batch size and epochs
(from the Keypoint3D config): kp3d's :class:`agents.ppo.PerceptionPPO` with the config's
perception and unsupervised steps, and SB3's plain ``PPO("MultiInputPolicy")`` (its
``CombinedExtractor``: a NatureCNN per camera image). The two are timed alternately, ``repeats``
times each, and the median env frames/s (env steps of all envs per second of ``learn``, rollouts
and updates included) is reported with the ratio. Peak resident memory of the process (and of its
env worker processes, if any) is read from ``getrusage`` at the end.

Usage:
    python benchmarks/train_throughput.py --config configs/reach_keypoint3d_ppo.yaml --updates 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from stable_baselines3 import PPO

from agents.config import load_config
from agents.environment import camera_layout
from agents.training import build_model, make_run_env, ppo_arguments, set_torch_threads


def frames_per_second(model, timesteps: int) -> float:
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, reset_num_timesteps=True, progress_bar=False)
    return timesteps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/reach_keypoint3d_ppo.yaml")
    parser.add_argument("--updates", type=int, default=2, help="PPO updates per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    config = load_config(args.config, [*args.set, "verbose=0"])
    set_torch_threads(config.torch_threads)
    layout = camera_layout(config.env_id, config.env_kwargs)
    ppo = config.ppo
    timesteps = args.updates * ppo.n_steps * config.n_envs

    keypoint_env = make_run_env(config, layout, config.n_envs, config.seed, training=True)
    keypoint_model = build_model(config, keypoint_env, layout)
    pixel_env = make_run_env(config, layout, config.n_envs, config.seed, training=True)
    # SB3's own pixel PPO with the same PPO hyperparameters (its default extractor and heads).
    pixel_model = PPO(
        "MultiInputPolicy",
        pixel_env,
        **ppo_arguments(config),
        device=config.device,
        seed=config.seed,
        verbose=0,
    )
    # Warm-up: first renders, allocations, the frame buffer's first fill.
    frames_per_second(keypoint_model, ppo.n_steps * config.n_envs)
    frames_per_second(pixel_model, ppo.n_steps * config.n_envs)

    measured: dict[str, list[float]] = {"keypoint3d_ppo": [], "sb3_pixel_ppo": []}
    for _ in range(args.repeats):
        measured["keypoint3d_ppo"].append(frames_per_second(keypoint_model, timesteps))
        measured["sb3_pixel_ppo"].append(frames_per_second(pixel_model, timesteps))
    keypoint_env.close()
    pixel_env.close()

    medians = {name: statistics.median(values) for name, values in measured.items()}
    usage_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results = {
        "config": args.config,
        "env_id": config.env_id,
        "n_envs": config.n_envs,
        "n_steps": ppo.n_steps,
        "batch_size": ppo.batch_size,
        "n_epochs": ppo.n_epochs,
        "unsupervised_steps": config.unsupervised.steps,
        "timesteps_per_measurement": timesteps,
        "repeats": args.repeats,
        "frames_per_second": medians,
        "all_measurements": measured,
        "ratio_keypoint3d_over_sb3_pixel": medians["keypoint3d_ppo"] / medians["sb3_pixel_ppo"],
        "keypoint3d_parameters": sum(p.numel() for p in keypoint_model.policy.parameters()),
        "sb3_pixel_parameters": sum(p.numel() for p in pixel_model.policy.parameters()),
        "peak_rss_mb_process": usage_self,
        "peak_rss_mb_largest_child": usage_children,
    }
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
