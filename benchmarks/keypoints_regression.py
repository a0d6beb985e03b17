"""Do learned keypoints mean something? Keypoint3D trained without RL, probed linearly.

1. Collect frames from a kp3d env with a random policy: every camera's image, the camera matrices
   and the ground-truth keypoints (``info``), episode by episode.
2. Train Keypoint3D on the training episodes with its unsupervised losses only.
3. On held-out episodes, fit nothing new: the linear map (least squares with a bias) from the
   learned fused 3D keypoints (and attention) to the ground-truth positions of the task's objects
   is fitted on the training episodes and scored on the held-out ones (R², per target coordinate
   and overall).
4. Multi-view consistency: the fused 3D keypoints reprojected into each view against that view's
   own 2D detection, in pixels (mean over keypoints weighted by attention, and unweighted).

Usage:
    python benchmarks/keypoints_regression.py --env kp3d/Reach-v0 --targets fingertip target
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers the envs)
from kp3d.geometry import project
from kp3d.perception import images_from_observation, make_perception


def collect(env_id: str, episodes: int, seed: int, size: int) -> dict[str, np.ndarray]:
    """Random-policy frames: images (N, C, H, W, 3) uint8, matrices, keypoints, episode ids."""
    env = gym.make(env_id, size=size)
    base = env.unwrapped
    names = base.cameras.names
    env.action_space.seed(seed)
    frames: dict[str, list] = {"images": [], "extrinsics": [], "keypoints": [], "episode": []}
    for episode in range(episodes):
        observation, info = env.reset(seed=seed + episode)
        done = False
        while not done:
            frames["images"].append(np.stack([observation[f"cam_{n}"] for n in names]))
            frames["extrinsics"].append(info["camera_extrinsics"])
            frames["keypoints"].append(info["keypoints_world"])
            frames["episode"].append(episode)
            observation, _, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
    data = {key: np.stack(value) for key, value in frames.items()}
    data["intrinsics"] = base.cameras.intrinsics
    data["keypoint_names"] = np.array(base.keypoint_names)
    data["camera_names"] = np.array(names)
    env.close()
    return data


def batch_tensors(data: dict, index: np.ndarray) -> tuple[torch.Tensor, ...]:
    names = list(data["camera_names"])
    observation = {f"cam_{n}": data["images"][index, c] for c, n in enumerate(names)}
    images = images_from_observation(observation, names)
    extrinsics = torch.as_tensor(data["extrinsics"][index], dtype=torch.float32)
    intrinsics = torch.as_tensor(data["intrinsics"], dtype=torch.float32)
    return images, intrinsics, extrinsics


def train(
    module: torch.nn.Module,
    data: dict,
    train_index: np.ndarray,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    log_every: int,
) -> list[dict]:
    generator = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    module.train()
    history = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        index = generator.choice(train_index, size=batch_size, replace=False)
        output = module(*batch_tensors(data, index))
        loss = output.total_loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.5)
        optimizer.step()
        if step % log_every == 0 or step == steps:
            record = {
                "step": step,
                "seconds": time.perf_counter() - start,
                **{k: float(v) for k, v in output.losses.items()},
            }
            history.append(record)
            print(json.dumps(record), flush=True)
    return history


@torch.no_grad()
def encode(module: torch.nn.Module, data: dict, index: np.ndarray) -> dict[str, np.ndarray]:
    module.eval()
    keypoints, attention, errors_weighted, errors_plain = [], [], [], []
    for chunk in np.array_split(index, max(1, len(index) // 256)):
        images, intrinsics, extrinsics = batch_tensors(data, chunk)
        output = module(images, intrinsics, extrinsics, compute_losses=False)
        keypoints.append(output.keypoints.numpy())
        attention.append(output.confidence.numpy())
        # Fused keypoints reprojected into each view vs that view's own detections.
        matrices = intrinsics.expand(len(chunk), *intrinsics.shape)
        reprojected, _ = project(output.keypoints[:, None], matrices, extrinsics)
        error = (reprojected - output.visuals.detections).norm(dim=-1)  # (B, C, K)
        weights = output.confidence[:, None].expand_as(error)
        errors_weighted.append(((error * weights).sum((1, 2)) / weights.sum((1, 2))).numpy())
        errors_plain.append(error.mean((1, 2)).numpy())
    return {
        "keypoints": np.concatenate(keypoints),
        "attention": np.concatenate(attention),
        "reprojection_weighted": np.concatenate(errors_weighted),
        "reprojection": np.concatenate(errors_plain),
    }


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> dict[str, float]:
    """Least squares with a bias on the training split; R² on the test split."""
    design = np.hstack([train_x, np.ones((len(train_x), 1))])
    weights, *_ = np.linalg.lstsq(design, train_y, rcond=None)
    predicted = np.hstack([test_x, np.ones((len(test_x), 1))]) @ weights
    residual = ((test_y - predicted) ** 2).sum(axis=0)
    total = ((test_y - test_y.mean(axis=0)) ** 2).sum(axis=0)
    per_output = 1.0 - residual / total
    return {
        "r2": float(1.0 - residual.sum() / total.sum()),
        "r2_per_output": per_output.tolist(),
        "rmse_m": float(np.sqrt(((test_y - predicted) ** 2).mean())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="kp3d/Reach-v0")
    parser.add_argument(
        "--targets",
        nargs="+",
        required=True,
        help="ground-truth keypoint names to regress (e.g. fingertip target)",
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
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    data = collect(args.env, args.episodes, args.seed, args.size)
    names = list(data["keypoint_names"])
    unknown = [t for t in args.targets if t not in names]
    if unknown:
        raise SystemExit(f"unknown target keypoints {unknown}; this env has {names}")
    collect_seconds = time.perf_counter() - start
    episodes = data["episode"]
    test_mask = episodes >= args.episodes - args.test_episodes
    train_index, test_index = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)

    cameras = gym.make(args.env, size=args.size, obs_mode="state").unwrapped.cameras
    module = make_perception(
        "keypoint3d", cameras=cameras, num_keypoints=args.num_keypoints, mean_depth=args.mean_depth
    )
    history = train(
        module,
        data,
        train_index,
        args.steps,
        args.batch_size,
        args.learning_rate,
        args.seed,
        log_every=max(1, args.steps // 20),
    )

    train_codes, test_codes = encode(module, data, train_index), encode(module, data, test_index)
    target_columns = [names.index(t) for t in args.targets]

    def features(codes: dict) -> np.ndarray:
        return np.hstack(
            [codes["keypoints"].reshape(len(codes["keypoints"]), -1), codes["attention"]]
        )

    # Coordinates that never vary (e.g. the height of a planar arm) have no R²: leave them out.
    all_targets = data["keypoints"][:, target_columns].reshape(len(episodes), -1)
    varying = all_targets.std(axis=0) > 1e-6
    output_names = [f"{t}.{axis}" for t in args.targets for axis in "xyz"]

    def targets(index: np.ndarray) -> np.ndarray:
        return all_targets[index][:, varying]

    probe = linear_probe(
        features(train_codes), targets(train_index), features(test_codes), targets(test_index)
    )
    results = {
        "env": args.env,
        "targets": args.targets,
        "frames": len(episodes),
        "train_frames": len(train_index),
        "test_frames": len(test_index),
        "num_keypoints": args.num_keypoints,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "collect_seconds": collect_seconds,
        "train_seconds": history[-1]["seconds"],
        "train_frames_per_second": args.steps * args.batch_size / history[-1]["seconds"],
        "final_losses": {k: v for k, v in history[-1].items() if k not in ("step", "seconds")},
        "outputs": [n for n, keep in zip(output_names, varying, strict=True) if keep],
        "test": probe,
        "reprojection_px_attention_weighted": float(test_codes["reprojection_weighted"].mean()),
        "reprojection_px_mean": float(test_codes["reprojection"].mean()),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
