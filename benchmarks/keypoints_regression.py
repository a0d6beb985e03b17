"""Do learned keypoints carry every task object? A keypoint learner trained without RL, probed.

1. Write random-policy frames of a kp3d env with ``kp3d dataset``
   (:func:`agents.dataset.write_dataset`: every camera's image, the camera matrices, the
   ground-truth keypoints and the empty scene, episode by episode), or reuse the dataset already
   in ``--data``.
2. Train the perception (Keypoint3D by default) on the training episodes with its unsupervised
   losses only (``kp3d pretrain``, :func:`agents.pretrain.pretrain`); ``--test-episodes`` of the
   episodes are held out (:func:`kp3d.data.held_out_episodes`). Its task-dependent
   hyperparameters (number of keypoints, mean camera depth) default to what the env suggests
   (:func:`envs.perception_defaults`), so one command fits every task.
3. On held-out episodes: the linear map (least squares with a bias) from the learned keypoints
   (and attention) to each ground-truth keypoint is fitted on the training episodes and scored on
   the held-out ones (:func:`kp3d.metrics.linear_probe`), for the trained network and for the
   same network untrained (same seed): per target keypoint, the R² of every varying axis, the
   worst axis, and the mean error in metres. A keypoint is carried when its worst axis is near 1;
   the untrained network's figures say how much of that a random CNN already gives.
4. For 3D keypoints, multi-view consistency: the fused 3D keypoints reprojected into each view
   against that view's own 2D detection, in pixels.

Usage:
    python benchmarks/keypoints_regression.py --env kp3d/Reach-v0 --targets fingertip target elbow \
        --out reach.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from agents.config import dataclass_from_dict
from agents.dataset import write_dataset
from agents.pretrain import CHECKPOINT_FILE, PretrainConfig, encode, pretrain
from agents.runs import set_torch_threads
from envs import perception_defaults
from envs.registration import task_class
from kp3d.data import FrameDataset, read_info
from kp3d.geometry import project
from kp3d.metrics import ProbeResult, linear_probe
from kp3d.perception import (
    Perception,
    load_perception_checkpoint,
    make_perception,
    perception_hyperparameters,
)


def probe(module: Perception, train: FrameDataset, test: FrameDataset) -> ProbeResult:
    """The held-out linear probe of ``module`` (in eval mode) from every training frame."""
    device = torch.device("cpu")
    train_codes = encode(module, train, np.arange(len(train)), device, 256)
    test_codes = encode(module, test, np.arange(len(test)), device, 256)
    return linear_probe(
        train_codes["features"],
        train_codes["keypoints_world"],
        test_codes["features"],
        test_codes["keypoints_world"],
        train.normalising_length,
    )


@torch.no_grad()
def reprojection_px(module: Perception, dataset: FrameDataset) -> dict[str, float]:
    """Fused 3D keypoints reprojected into each view vs that view's own detections (pixels)."""
    module.eval()
    weighted, plain = [], []
    for batch in dataset.batches(256, shuffle=False):
        output = module(batch.images, batch.intrinsics, batch.extrinsics, compute_losses=False)
        reprojected, _ = project(output.keypoints[:, None], batch.intrinsics, batch.extrinsics)
        error = (reprojected - output.visuals.detections).norm(dim=-1)  # (B, C, K)
        weights = output.confidence[:, None].expand_as(error)
        weighted.append(((error * weights).sum((1, 2)) / weights.sum((1, 2))).numpy())
        plain.append(error.mean((1, 2)).numpy())
    return {
        "attention_weighted": float(np.concatenate(weighted).mean()),
        "mean": float(np.concatenate(plain).mean()),
    }


def per_target(result: ProbeResult, names: list[str], targets: list[str]) -> dict[str, Any]:
    """Per target keypoint: R² of each varying axis, of the worst one, and the error (m)."""
    table = {}
    for target in targets:
        index = names.index(target)
        axes = {
            axis: float(r2)
            for axis, r2 in zip("xyz", result.r2_per_coordinate[index], strict=True)
            if np.isfinite(r2)  # coordinates that never vary (a planar arm's height) have no R²
        }
        table[target] = {
            "r2_per_axis": axes,
            "r2_worst_axis": min(axes.values()) if axes else None,
            "error_m": float(result.error_m_per_keypoint[index]),
        }
    return table


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → ``{key: YAML value}`` (perception hyperparameters)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE; got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="kp3d/Reach-v0", help="a kp3d env id")
    parser.add_argument(
        "--targets",
        nargs="+",
        required=True,
        help="ground-truth keypoint names to report (e.g. fingertip target elbow)",
    )
    parser.add_argument("--perception", default="keypoint3d", help="a registered perception")
    parser.add_argument("--episodes", type=int, default=120, help="episodes in the dataset")
    parser.add_argument("--test-episodes", type=int, default=30, help="of them held out")
    parser.add_argument("--size", type=int, default=64, help="image side (pixels)")
    parser.add_argument(
        "--num-keypoints", type=int, default=None, help="default: the env's learned_keypoints"
    )
    parser.add_argument(
        "--mean-depth", type=float, default=None, help="default: the env's scene depth (m)"
    )
    parser.add_argument("--steps", type=int, default=3000, help="pretraining steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset and the network")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a perception hyperparameter, e.g. foreground_weight=0 (the paper's plain MSE)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="dataset directory (default: runs/benchmarks/data/<env>__<size>px__<seed>); an "
        "existing dataset of these arguments is reused or extended",
    )
    parser.add_argument("--run-dir", default=None, help="pretraining run directory (new)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    env_name = args.env.replace("/", "-")
    data = Path(args.data or f"runs/benchmarks/data/{env_name}__{args.size}px__{args.seed}")
    frames = args.episodes * (task_class(args.env).max_episode_steps + 1)
    start = time.perf_counter()
    write_dataset(args.env, frames, data, size=args.size, seed=args.seed)
    collect_seconds = time.perf_counter() - start
    info = read_info(data)
    unknown = [t for t in args.targets if t not in info.keypoint_names]
    if unknown:
        raise SystemExit(f"unknown target keypoints {unknown}; this env has {info.keypoint_names}")

    suggested = perception_defaults(args.env, {"size": args.size})
    if args.num_keypoints:
        suggested["num_keypoints"] = args.num_keypoints
    if args.mean_depth:
        suggested["mean_depth"] = args.mean_depth
    taken = perception_hyperparameters(args.perception)
    kwargs: dict[str, Any] = {
        **{key: value for key, value in suggested.items() if key in taken},
        **parse_overrides(args.set),
    }
    config = dataclass_from_dict(
        PretrainConfig,
        {
            "dataset": str(data),
            "exp_name": "keypoints_regression",
            "perception": {"name": args.perception, "kwargs": kwargs},
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "max_grad_norm": 1.5,
            "test_fraction": args.test_episodes / args.episodes,
            "eval_every": 0,
            "checkpoint_every": 1000,
            "log_every": max(1, args.steps // 20),
            "seed": args.seed,
            "device": "cpu",
        },
    )
    set_torch_threads(1)
    start = time.perf_counter()
    run = pretrain(config, run_dir=args.run_dir)
    train_seconds = time.perf_counter() - start

    payload = load_perception_checkpoint(run / CHECKPOINT_FILE)
    layout = {"num_cameras": payload["num_cameras"], "image_size": tuple(payload["image_size"])}
    trained = make_perception(payload["name"], **layout, **payload["kwargs"])
    trained.load_state_dict(payload["state_dict"])
    torch.manual_seed(args.seed)  # the initialisation pretraining started from
    untrained = make_perception(payload["name"], **layout, **payload["kwargs"])
    train_set = FrameDataset(data, "train", config.test_fraction)
    test_set = FrameDataset(data, "test", config.test_fraction)
    if train_set.background is not None:
        untrained.set_background(train_set.background)
    names = list(info.keypoint_names)
    results_trained = probe(trained, train_set, test_set)
    results_untrained = probe(untrained, train_set, test_set)
    targets = per_target(results_trained, names, args.targets)
    baseline = per_target(results_untrained, names, args.targets)
    with open(run / "logs" / "progress.csv") as file:
        logged = [row for row in csv.DictReader(file) if row.get("train/loss")]
    losses = {
        k[len("train/loss/") :]: float(v) for k, v in logged[-1].items() if "loss/" in k and v
    }
    rates = [float(row["time/frames_per_second"]) for row in logged]
    results: dict[str, Any] = {
        "env": args.env,
        "perception": args.perception,
        "perception_kwargs": kwargs,
        "targets": args.targets,
        "dataset": str(data),
        "run": str(run),
        "frames": info.frames,
        "train_frames": len(train_set),
        "test_frames": len(test_set),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "collect_seconds": collect_seconds,
        "train_seconds": train_seconds,
        "train_frames_per_second": float(np.median(rates)),
        "final_losses": losses,
        "test": {
            "r2_per_output": {
                f"{target}.{axis}": r2
                for target, entry in targets.items()
                for axis, r2 in entry["r2_per_axis"].items()
            },
            "per_target": targets,
            "untrained": baseline,
            "landmark_error_normalised": results_trained.error,
            "r2_pooled_all_keypoints": results_trained.r2,
        },
    }
    if trained.keypoint_frame == "world" and getattr(trained, "num_cameras", 1) > 1:
        results["reprojection_px"] = reprojection_px(trained, test_set)
    text = json.dumps(results, indent=2)
    print(text)
    print(f"\n{args.env}, {args.perception}, held-out episodes: worst-axis R² and error")
    print(f"{'keypoint':>16}  {'untrained':>20}  {'trained':>20}")
    for target in args.targets:
        before, after = baseline[target], targets[target]
        cells = [f"{e['r2_worst_axis']:7.3f} {100 * e['error_m']:6.1f} cm" for e in (before, after)]
        print(f"{target:>16}  {cells[0]:>20}  {cells[1]:>20}")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
