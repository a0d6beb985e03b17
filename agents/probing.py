"""How well a perception's keypoints carry the scene, on held-out frames: a linear probe from its
features to every ground-truth keypoint (R² of the worst axis and error in metres, per keypoint),
PCK for labelled methods, and the untrained → trained table pretraining prints.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kp3d import geometry
from kp3d.data import FrameDataset
from kp3d.metrics import ProbeResult, image_side, length_in_pixels, linear_probe, pck
from kp3d.perception import Perception, PerceptionOutput


def _evenly(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices spread evenly over ``range(count)``."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(np.int64))


def probe_features(output: PerceptionOutput) -> torch.Tensor:
    """``(B, F)`` what the linear probe reads: the flattened keypoints, then their confidence."""
    parts = [output.keypoints.flatten(1)]
    if output.confidence is not None:
        parts.append(output.confidence.flatten(1))
    return torch.cat(parts, dim=1)


def detected_pixels(
    module: Perception, output: PerceptionOutput, intrinsics: torch.Tensor, extrinsics: torch.Tensor
) -> torch.Tensor:
    """``(B, C, K', 2)`` the module's per-view predictions, for PCK: its ``detections`` when it
    reports them, else its world keypoints projected into every view, else its image keypoints
    per view. They count for PCK only where ``K'`` is the dataset's number of keypoints."""
    if output.visuals.detections is not None:
        return output.visuals.detections
    if module.keypoint_frame == "world":
        pixels, _ = geometry.project(output.keypoints[:, None], intrinsics, extrinsics)
        return pixels
    return output.keypoints.reshape(*intrinsics.shape[:2], -1, 2)


@torch.no_grad()
def encode(
    module: Perception,
    dataset: FrameDataset,
    indices: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Run ``module`` (in eval mode) on frames of ``dataset``: probe features, 3D keypoints and
    per-view pixels (see :func:`detected_pixels`), with the frames' ground truth."""
    was_training = module.training
    module.eval()
    collected: dict[str, list[np.ndarray]] = defaultdict(list)
    try:
        for start in range(0, len(indices), batch_size):
            batch = dataset.frames(indices[start : start + batch_size]).to(device)
            output = module(batch.images, batch.intrinsics, batch.extrinsics, compute_losses=False)
            collected["features"].append(probe_features(output).cpu().numpy())
            collected["keypoints"].append(output.keypoints.cpu().numpy())
            pixels = detected_pixels(module, output, batch.intrinsics, batch.extrinsics)
            collected["pixels"].append(pixels.cpu().numpy())
            for name in ("keypoints_world", "keypoints_pixels", "keypoints_visible"):
                collected[name].append(getattr(batch, name).cpu().numpy())
            _, depth = geometry.project(
                batch.keypoints_world[:, None], batch.intrinsics, batch.extrinsics
            )
            collected["depth"].append(depth.cpu().numpy())
            collected["focal"].append(batch.intrinsics[..., 0, 0].cpu().numpy())
    finally:
        module.train(was_training)
    return {name: np.concatenate(values) for name, values in collected.items()}


def evaluate_perception(
    module: Perception,
    train_set: FrameDataset,
    test_set: FrameDataset,
    device: torch.device,
    *,
    frames: int,
    batch_size: int,
    pck_alphas: Sequence[float] = (),
    pck_length_alphas: Sequence[float] = (),
) -> dict[str, Any]:
    """Held-out metrics of ``module``: a linear probe fitted on up to ``frames`` training frames
    and scored on as many held-out ones (encoded ``batch_size`` at a time), and for labelled
    modules PCK at ``pck_alphas`` (of the image side) and ``pck_length_alphas`` (of the env's
    normalising length).

    Returns:
        ``probe_per_keypoint`` (for every ground-truth keypoint by name: ``r2``, the R² of its
        worst varying coordinate, or ``None`` for a keypoint that never moves, and ``error_m``,
        its mean error in metres), ``probe_error`` (normalised by the env's length),
        ``probe_error_m``, ``probe_error_per_keypoint`` and ``probe_r2_pooled`` (over every
        coordinate of every keypoint: not a measure of whether each keypoint is carried, see
        :class:`kp3d.metrics.ProbeResult`); for labelled modules also ``pck@<a>`` (image side),
        ``pck@<a>L`` (normalising length), their per-keypoint lists, and ``keypoint_error`` /
        ``keypoint_error_m`` when the module outputs the env's keypoints in 3D.
    """
    info = test_set.info
    length = info.normalising_length
    train_codes = encode(
        module,
        train_set,
        _evenly(len(train_set), frames),
        device,
        batch_size,
    )
    test_codes = encode(module, test_set, _evenly(len(test_set), frames), device, batch_size)
    probe = linear_probe(
        train_codes["features"],
        train_codes["keypoints_world"],
        test_codes["features"],
        test_codes["keypoints_world"],
        length,
    )
    metrics: dict[str, Any] = {
        "probe_per_keypoint": probe_table(probe, info.keypoint_names),
        "probe_error": probe.error,
        "probe_error_m": probe.error_m,
        "probe_error_per_keypoint": probe.error_per_keypoint.tolist(),
        "probe_r2_pooled": probe.r2,
    }
    if not module.requires_labels:
        return metrics
    truth = test_codes["keypoints_pixels"]
    if test_codes["pixels"].shape == truth.shape:
        visible = test_codes["keypoints_visible"]
        for alpha in pck_alphas:
            result = pck(test_codes["pixels"], truth, visible, alpha, image_side(*info.image_size))
            metrics[f"pck@{alpha:g}"] = result.mean
            metrics[f"pck@{alpha:g}_per_keypoint"] = result.per_keypoint.tolist()
        if length is not None:
            reference = length_in_pixels(
                length, test_codes["depth"], test_codes["focal"][..., None]
            )
            for alpha in pck_length_alphas:
                result = pck(test_codes["pixels"], truth, visible, alpha, reference)
                metrics[f"pck@{alpha:g}L"] = result.mean
                metrics[f"pck@{alpha:g}L_per_keypoint"] = result.per_keypoint.tolist()
    world = test_codes["keypoints_world"]
    if module.keypoint_frame == "world" and test_codes["keypoints"].shape == world.shape:
        distances = np.linalg.norm(test_codes["keypoints"] - world, axis=-1)
        metrics["keypoint_error_m"] = float(distances.mean())
        metrics["keypoint_error"] = float(distances.mean() / (length or 1.0))
    return metrics


def probe_table(probe: ProbeResult, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``{keypoint: {"r2": worst-axis R² or None, "error_m": mean error}}`` of a linear probe."""
    return {
        name: {
            "r2": None if np.isnan(r2) else float(r2),
            "error_m": float(error),
        }
        for name, r2, error in zip(
            names, probe.r2_per_keypoint, probe.error_m_per_keypoint, strict=True
        )
    }


def describe_probe(first: dict[str, Any], last: dict[str, Any]) -> str:
    """A table of two evaluations' probes (e.g. the untrained and the trained network): per
    ground-truth keypoint, the held-out R² of its worst axis and the mean error in cm."""

    def cell(entry: dict[str, Any]) -> str:
        r2 = "    —" if entry["r2"] is None else f"{entry['r2']:6.3f}"
        return f"{r2} {100 * entry['error_m']:6.1f} cm"

    lines = [
        f"  {'keypoint':>16}  {'step ' + str(first['step']):>16}  {'step ' + str(last['step']):>16}"
    ]
    for name, entry in last.get("probe_per_keypoint", {}).items():
        before = first["probe_per_keypoint"][name]
        lines.append(f"  {name:>16}  {cell(before):>16}  {cell(entry):>16}")
    return "\n".join(lines)


__all__ = [
    "describe_probe",
    "detected_pixels",
    "encode",
    "evaluate_perception",
    "probe_features",
    "probe_table",
]
