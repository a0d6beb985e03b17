"""Do learned keypoints mean something? Keypoint3D trained without RL, probed linearly.

1. Write random-policy frames of a kp3d env with ``kp3d dataset``
   (:func:`agents.dataset.write_dataset`: every camera's image, the camera matrices and the
   ground-truth keypoints, episode by episode), or reuse the dataset already in ``--data``.
2. Train Keypoint3D on the training episodes with its unsupervised losses only (``kp3d pretrain``,
   :func:`agents.pretrain.pretrain`); ``--test-episodes`` of the episodes are held out
   (:func:`kp3d.data.held_out_episodes`).
3. On held-out episodes, fit nothing new: the linear map (least squares with a bias) from the
   learned fused 3D keypoints (and attention) to the ground-truth keypoints is fitted on the
   training episodes and scored on the held-out ones (:func:`kp3d.metrics.linear_probe`): R² per
   coordinate of the ``--targets`` and overall, and the landmark error normalised by the env's
   length.
4. Multi-view consistency: the fused 3D keypoints reprojected into each view against that view's
   own 2D detection, in pixels (mean over keypoints weighted by attention, and unweighted).

Usage:
    python benchmarks/keypoints_regression.py --env kp3d/Reach-v0 --targets fingertip target
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.config import dataclass_from_dict
from agents.dataset import write_dataset
from agents.pretrain import CHECKPOINT_FILE, PretrainConfig, pretrain, probe_features
from envs.registration import task_class
from kp3d.data import FrameDataset, read_info
from kp3d.geometry import project
from kp3d.metrics import linear_probe
from kp3d.perception import load_perception


@torch.no_grad()
def encode(module: torch.nn.Module, dataset: FrameDataset) -> dict[str, np.ndarray]:
    """Probe features, ground truth and multi-view reprojection errors of every frame."""
    module.eval()
    features, truth, errors_weighted, errors_plain = [], [], [], []
    for batch in dataset.batches(256, shuffle=False):
        output = module(batch.images, batch.intrinsics, batch.extrinsics, compute_losses=False)
        features.append(probe_features(output).numpy())
        truth.append(batch.keypoints_world.numpy())
        # Fused keypoints reprojected into each view vs that view's own detections.
        reprojected, _ = project(output.keypoints[:, None], batch.intrinsics, batch.extrinsics)
        error = (reprojected - output.visuals.detections).norm(dim=-1)  # (B, C, K)
        weights = output.confidence[:, None].expand_as(error)
        errors_weighted.append(((error * weights).sum((1, 2)) / weights.sum((1, 2))).numpy())
        errors_plain.append(error.mean((1, 2)).numpy())
    return {
        "features": np.concatenate(features),
        "keypoints_world": np.concatenate(truth),
        "reprojection_weighted": np.concatenate(errors_weighted),
        "reprojection": np.concatenate(errors_plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="kp3d/Reach-v0")
    parser.add_argument(
        "--targets",
        nargs="+",
        required=True,
        help="ground-truth keypoint names whose R² to report (e.g. fingertip target)",
    )
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--test-episodes", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-keypoints", type=int, default=8)
    parser.add_argument("--mean-depth", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
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

    config = dataclass_from_dict(
        PretrainConfig,
        {
            "dataset": str(data),
            "exp_name": "keypoints_regression",
            "perception": {
                "name": "keypoint3d",
                "kwargs": {"num_keypoints": args.num_keypoints, "mean_depth": args.mean_depth},
            },
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
    torch.set_num_threads(1)
    start = time.perf_counter()
    run = pretrain(config, run_dir=args.run_dir)
    train_seconds = time.perf_counter() - start

    module = load_perception(run / CHECKPOINT_FILE)
    train_set = FrameDataset(data, "train", config.test_fraction)
    test_set = FrameDataset(data, "test", config.test_fraction)
    train_codes, test_codes = encode(module, train_set), encode(module, test_set)
    probe = linear_probe(
        train_codes["features"],
        train_codes["keypoints_world"],
        test_codes["features"],
        test_codes["keypoints_world"],
        info.normalising_length,
    )
    per_output = {
        f"{target}.{axis}": float(r2)
        for target in args.targets
        for axis, r2 in zip(
            "xyz", probe.r2_per_coordinate[info.keypoint_names.index(target)], strict=True
        )
        if np.isfinite(r2)  # coordinates that never vary (a planar arm's height) have no R²
    }
    with open(run / "logs" / "progress.csv") as file:
        logged = [row for row in csv.DictReader(file) if row.get("train/loss")]
    losses = {
        k[len("train/loss/") :]: float(v) for k, v in logged[-1].items() if "loss/" in k and v
    }
    rates = [float(row["time/frames_per_second"]) for row in logged]
    results = {
        "env": args.env,
        "targets": args.targets,
        "dataset": str(data),
        "run": str(run),
        "frames": info.frames,
        "train_frames": len(train_set),
        "test_frames": len(test_set),
        "num_keypoints": args.num_keypoints,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "collect_seconds": collect_seconds,
        "train_seconds": train_seconds,
        "train_frames_per_second": float(np.median(rates)),
        "final_losses": losses,
        "test": {
            "r2_per_output": per_output,
            "r2_all_keypoints": probe.r2,
            "landmark_error_normalised": probe.error,
            "landmark_error_m": probe.error_m,
        },
        "reprojection_px_attention_weighted": float(test_codes["reprojection_weighted"].mean()),
        "reprojection_px_mean": float(test_codes["reprojection"].mean()),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
