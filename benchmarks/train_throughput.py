"""Training throughput: kp3d's Keypoint3D agents against SB3's own pixel agents, in one run.

PPO configs: kp3d's :class:`agents.ppo.PerceptionPPO` (perception trained jointly, with its
unsupervised steps) against SB3's plain ``PPO("MultiInputPolicy")`` (its ``CombinedExtractor``: a
NatureCNN per camera image), with the same envs, rollout length, batch size and epochs.

SAC configs: four agents with the config's batch size and update ratio (``train_freq``,
``gradient_steps``):

* ``keypoint3d_sac_joint``: :class:`agents.sac.PerceptionSAC` with the perception trained by the
  critic and its auxiliary losses (the config with ``perception.freeze: false``);
* ``keypoint3d_sac_frozen``: SAC on the frozen perception's features (:mod:`agents.features`);
* ``state_sac``: SB3's SAC on the task's low-dimensional state;
* ``sb3_pixel_sac``: SB3's plain ``SAC("MultiInputPolicy")`` on the images.

The headline ``ratio_keypoint3d_over_sb3_pixel`` is the *trained* perception's (joint PPO, joint
SAC) over SB3's pixel agent: a frozen perception's features are cheaper still, and reported
beside it. The agents are timed alternately, ``repeats`` times each, after a warm-up past SAC's
``learning_starts``; the median env frames/s (env steps of all envs per second of ``learn``,
acting and updates included) is reported. For SAC, the replay buffer's bytes per transition too.
Weights are freshly initialised: throughput does not depend on them, so no pretraining runs.

Usage:
    python benchmarks/train_throughput.py --config configs/reach_keypoint3d_sac.yaml --out F
    python benchmarks/train_throughput.py --config configs/reach_keypoint3d_ppo.yaml --out F
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.builder import (
    build_model,
    feature_encoder,
    make_run_env,
    ppo_arguments,
    sac_arguments,
)
from agents.config import TrainConfig, load_config
from agents.environment import camera_layout
from agents.pipeline import recipe_kwargs
from agents.runs import set_torch_threads


def frames_per_second(model: BaseAlgorithm, timesteps: int) -> float:
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, reset_num_timesteps=False, progress_bar=False)
    return timesteps / (time.perf_counter() - start)


def with_perception(config: TrainConfig, **changes: Any) -> TrainConfig:
    """The config with its perception section changed (no pretraining: fresh weights)."""
    kwargs = recipe_kwargs(config) if config.perception.name else {}
    perception = dataclasses.replace(
        config.perception, kwargs=kwargs, pretrain=None, pretrained=None, **changes
    )
    return dataclasses.replace(config, perception=perception)


def build_agents(config: TrainConfig) -> dict[str, BaseAlgorithm]:
    """The agents timed for ``config`` (see the module docstring)."""
    agents: dict[str, BaseAlgorithm] = {}
    joint = with_perception(config, freeze=False)
    layout = camera_layout(config.env_id, config.env_kwargs)
    n = config.n_envs
    env = make_run_env(joint, layout, n, config.seed, training=True)
    pixel_env = make_run_env(joint, layout, n, config.seed, training=True)
    if config.algo == "ppo":
        agents["keypoint3d_ppo"] = build_model(joint, env, layout)
        agents["sb3_pixel_ppo"] = PPO(
            "MultiInputPolicy",
            pixel_env,
            **ppo_arguments(config),
            device=config.device,
            seed=config.seed,
            verbose=0,
        )
        return agents
    agents["keypoint3d_sac_joint"] = build_model(joint, env, layout)
    frozen = with_perception(config, freeze=True)
    encoder = feature_encoder(frozen, layout)
    frozen_env = make_run_env(frozen, layout, n, config.seed, training=True, encoder=encoder)
    agents["keypoint3d_sac_frozen"] = build_model(frozen, frozen_env, layout)
    state = dataclasses.replace(
        with_perception(config, name=None),
        env_kwargs={**config.env_kwargs, "obs_mode": "state"},
    )
    state_env = make_run_env(state, None, n, config.seed, training=True)
    agents["state_sac"] = build_model(state, state_env, None)
    agents["sb3_pixel_sac"] = SAC(
        "MultiInputPolicy",
        pixel_env,
        **sac_arguments(config),
        policy_kwargs={"net_arch": list(config.sac.net_arch)},
        device=config.device,
        seed=config.seed,
        verbose=0,
    )
    return agents


def replay_bytes_per_transition(model: BaseAlgorithm) -> float | None:
    """Bytes of the replay buffer's arrays (and final observations) per stored transition."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None:
        return None
    size = buffer.buffer_size * buffer.n_envs
    if hasattr(buffer, "nbytes"):
        return buffer.nbytes / size
    arrays = [buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
    for store in (buffer.observations, getattr(buffer, "next_observations", {})):
        arrays += list(store.values()) if isinstance(store, dict) else [store]
    return sum(array.nbytes for array in arrays) / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/reach_keypoint3d_ppo.yaml")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="env steps per measurement (default: 2 PPO rollouts; 1000 SAC steps)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--buffer-size",
        type=int,
        default=5000,
        help="SAC replay capacity here (SB3's pixel SAC keeps two copies of every image)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    overrides = [*args.set, "verbose=0"]
    config = load_config(args.config, overrides)
    if config.algo == "sac":
        config = load_config(
            args.config,
            [*overrides, f"sac.buffer_size={args.buffer_size}", "sac.learning_starts=100"],
        )
    set_torch_threads(config.torch_threads)
    agents = build_agents(config)
    if config.algo == "ppo":
        rollout = config.ppo.n_steps * config.n_envs
        timesteps, warmup = args.steps or 2 * rollout, rollout
    else:
        timesteps, warmup = args.steps or 1000, config.sac.learning_starts + 200
    for model in agents.values():  # first renders, allocations, past SAC's learning_starts
        frames_per_second(model, warmup)

    measured: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(args.repeats):
        for name, model in agents.items():
            measured[name].append(frames_per_second(model, timesteps))
    medians = {name: statistics.median(values) for name, values in measured.items()}
    trained = "keypoint3d_ppo" if config.algo == "ppo" else "keypoint3d_sac_joint"
    pixel = "sb3_pixel_ppo" if config.algo == "ppo" else "sb3_pixel_sac"
    results: dict[str, Any] = {
        "config": args.config,
        "algo": config.algo,
        "env_id": config.env_id,
        "n_envs": config.n_envs,
        "batch_size": config.ppo.batch_size if config.algo == "ppo" else config.sac.batch_size,
        "timesteps_per_measurement": timesteps,
        "repeats": args.repeats,
        "frames_per_second": medians,
        "all_measurements": measured,
        "ratio_keypoint3d_over_sb3_pixel": medians[trained] / medians[pixel],
        "parameters": {
            name: sum(p.numel() for p in model.policy.parameters())
            for name, model in agents.items()
        },
        "peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if config.algo == "ppo":
        results.update(
            n_steps=config.ppo.n_steps,
            n_epochs=config.ppo.n_epochs,
            unsupervised_steps=config.unsupervised.steps,
        )
    else:
        results.update(
            train_freq=config.sac.train_freq,
            gradient_steps=config.sac.gradient_steps,
            aux_batch_size=config.perception.aux_batch_size,
            ratio_frozen_over_sb3_pixel=medians["keypoint3d_sac_frozen"] / medians[pixel],
            replay_bytes_per_transition={
                name: replay_bytes_per_transition(model) for name, model in agents.items()
            },
        )
    for model in agents.values():
        model.get_env().close()
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
