"""Held-out accuracy of a trained Stacked Hourglass: 2D PCK per view, and 3D by triangulation.

On the held-out episodes of a ``kp3d dataset`` directory (:class:`kp3d.data.FrameDataset`,
``split="test"``), a checkpoint of ``kp3d pretrain`` (any ``triangulate`` setting: only the
detector is used):

1. **PCK** of the per-view detections over the visible keypoints
   (:func:`kp3d.metrics.pck`), at fractions of the image side and of the env's normalising length
   seen at each keypoint's depth (:func:`kp3d.metrics.length_in_pixels`), per keypoint and mean;
   also the median pixel error.
2. **Triangulation**: the keypoints of every frame triangulated from all views by
   :func:`kp3d.geometry.triangulate`, weighted by the peak values (clamped to the module's
   ``min_weight``, as its ``forward`` does) and unweighted, against the ground-truth world
   keypoints: mean, median, 90th percentile and largest error in mm, per keypoint. The ground-truth
   pixels triangulated the same way give the floor (float32 rounding only).

Usage:
    python benchmarks/hourglass_triangulation.py runs/pretrain/reach_hourglass/perception.pt \\
        data/reach [--frames 2000] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kp3d.data import FrameDataset
from kp3d.geometry import project, triangulate
from kp3d.metrics import image_side, length_in_pixels, pck
from kp3d.perception import StackedHourglass, load_perception


@torch.no_grad()
def detect(module: StackedHourglass, dataset: FrameDataset, indices: np.ndarray) -> dict:
    """Detections, peaks and ground truth of the frames at ``indices``."""
    module.eval()
    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(indices), 64):
        batch = dataset.frames(indices[start : start + 64])
        pixels, peaks = module.detect(module.stack_heatmaps(batch.images)[-1])
        _, depth = project(batch.keypoints_world[:, None], batch.intrinsics, batch.extrinsics)
        values = {
            "pixels": pixels,
            "peaks": peaks,
            "depth": depth,
            "focal": batch.intrinsics[..., 0, 0],
            "intrinsics": batch.intrinsics,
            "extrinsics": batch.extrinsics,
        }
        for name in ("keypoints_pixels", "keypoints_visible", "keypoints_world"):
            values[name] = getattr(batch, name)
        for name, value in values.items():
            collected.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def millimetres(errors: np.ndarray) -> dict[str, object]:
    """Summary of ``(N, K)`` errors in metres as mm (overall and per keypoint)."""
    return {
        "mean_mm": float(errors.mean() * 1e3),
        "median_mm": float(np.median(errors) * 1e3),
        "p90_mm": float(np.percentile(errors, 90) * 1e3),
        "max_mm": float(errors.max() * 1e3),
        "per_keypoint_mean_mm": (errors.mean(axis=0) * 1e3).round(2).tolist(),
    }


def evaluate(module: StackedHourglass, dataset: FrameDataset, frames: int) -> dict[str, object]:
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(frames, len(dataset))).astype(int))
    codes = detect(module, dataset, indices)
    info = dataset.info
    truth, visible = codes["keypoints_pixels"], codes["keypoints_visible"]
    results: dict[str, object] = {
        "env_id": info.env_id,
        "frames": len(truth),
        "keypoints": list(info.keypoint_names),
        "visible_fraction": float(visible.mean()),
    }
    errors = np.linalg.norm(codes["pixels"] - truth, axis=-1)
    results["median_pixel_error"] = float(np.median(errors[visible]))
    for alpha in (0.05, 0.1):
        result = pck(codes["pixels"], truth, visible, alpha, image_side(*info.image_size))
        results[f"pck@{alpha:g}"] = result.mean
        results[f"pck@{alpha:g}_per_keypoint"] = result.per_keypoint.round(4).tolist()
    if info.normalising_length is not None:
        reference = length_in_pixels(
            info.normalising_length, codes["depth"], codes["focal"][..., None]
        )
        results["normalising_length_m"] = info.normalising_length
        results["normalising_length_px_median"] = float(np.median(reference))
        for alpha in (0.1, 0.25, 0.5):
            result = pck(codes["pixels"], truth, visible, alpha, reference)
            results[f"pck@{alpha:g}L"] = result.mean
            results[f"pck@{alpha:g}L_per_keypoint"] = result.per_keypoint.round(4).tolist()

    matrices = (torch.from_numpy(codes["intrinsics"]), torch.from_numpy(codes["extrinsics"]))
    world = codes["keypoints_world"]
    weights = torch.from_numpy(codes["peaks"]).clamp(min=module.min_weight)
    for name, pixels, view_weights in (
        ("triangulation_weighted", codes["pixels"], weights),
        ("triangulation_unweighted", codes["pixels"], None),
        ("triangulation_of_true_pixels", truth, None),
    ):
        points = triangulate(torch.from_numpy(pixels), *matrices, view_weights).numpy()
        results[name] = millimetres(np.linalg.norm(points - world, axis=-1))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="perception.pt of a kp3d pretrain run of hourglass")
    parser.add_argument("dataset", help="the kp3d dataset directory it was trained on")
    parser.add_argument("--frames", type=int, default=2000, help="held-out frames to score")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    module = load_perception(args.checkpoint)
    if not isinstance(module, StackedHourglass):
        raise SystemExit(f"{args.checkpoint} holds a {type(module).__name__}, not an hourglass")
    dataset = FrameDataset(args.dataset, "test", args.test_fraction, load=("keypoints",))
    results = evaluate(module, dataset, args.frames)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
