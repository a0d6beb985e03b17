"""Held-out instance assembly of a trained OpenPose: per-instance PCK and instances assembled
correctly, with the Hungarian and the greedy limb matcher.

On the held-out episodes of a ``kp3d dataset`` directory of a scene with several instances
(``kp3d/MultiReach-v0``), a checkpoint of ``kp3d pretrain`` predicts the part confidence maps and
PAFs of every view once; each matcher then parses every view
(:meth:`kp3d.perception.OpenPose.parse`), and :func:`kp3d.perception.openpose.evaluate_assembly`
pairs the found instances with the true ones:

* **per-instance PCK**: visible true parts found within ``alpha`` x the image side *in the instance
  paired with their own instance* (a part found in another instance is a miss);
* **assembled correctly**: true instances (with >= 2 visible parts) whose paired instance has all
  their visible parts within the threshold and no part farther than it from the true part.

Also the number of views where the two matchers assemble different instances (and, since
MultiReach's arms never come close, the same comparison on crowded synthetic scenes:
:func:`crowded_comparison`), the PCK of the
module's ``forward`` output in the env's keypoint order (instance slots placed by the anchors
learned in training), what a policy receives and what ``kp3d pretrain`` reports, and the parsing
time per view of each matcher.

Usage:
    python benchmarks/openpose_assembly.py runs/pretrain/multireach_openpose/perception.pt \\
        data/multireach [--frames 1000] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kp3d.data import FrameDataset
from kp3d.metrics import image_side, pck
from kp3d.perception import OpenPose, load_perception
from kp3d.perception.openpose import (
    MATCHERS,
    AssemblyResult,
    Instances,
    confidence_targets,
    evaluate_assembly,
    paf_targets,
    parse_instances,
)


def same_instances(first: Instances, second: Instances) -> bool:
    """Whether two parses of a view hold the same instances (in any order)."""
    if len(first) != len(second):
        return False
    if len(first) == 0:
        return True
    keys = [
        np.nan_to_num(found.points, nan=-1.0).reshape(len(found), -1) for found in (first, second)
    ]
    order = [np.lexsort(key.T[::-1]) for key in keys]
    return bool(np.array_equal(keys[0][order[0]], keys[1][order[1]]))


@torch.no_grad()
def evaluate(
    module: OpenPose, dataset: FrameDataset, frames: int, alphas: tuple[float, ...]
) -> dict[str, object]:
    module.eval()
    info = dataset.info
    side = image_side(*info.image_size)
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(frames, len(dataset))).astype(int))
    totals = {(matcher, alpha): AssemblyResult() for matcher in MATCHERS for alpha in alphas}
    seconds = dict.fromkeys(MATCHERS, 0.0)
    slot_pixels, truths, visibles = [], [], []
    views = differing = 0
    for start in range(0, len(indices), 32):
        batch = dataset.frames(indices[start : start + 32])
        pafs, confidences = module.stage_maps(batch.images)
        confidence, fields = confidences[-1].flatten(0, 1), pafs[-1].flatten(0, 1)
        pixels = batch.keypoints_pixels.flatten(0, 1)
        visible = batch.keypoints_visible.flatten(0, 1)
        truth = module.instance_points(pixels).numpy()  # (N, M, P, 2)
        truth_visible = module.instance_points(visible[..., None])[..., 0].numpy()
        views += len(truth)
        parsed = {}
        for matcher in MATCHERS:
            clock = time.perf_counter()
            found = module.parse(confidence, fields, matcher=matcher)
            seconds[matcher] += time.perf_counter() - clock
            parsed[matcher] = found
            for view, view_truth, view_visible in zip(found, truth, truth_visible, strict=True):
                for alpha in alphas:
                    totals[matcher, alpha] = totals[matcher, alpha] + evaluate_assembly(
                        view.points, view.present, view_truth, view_visible, alpha * side
                    )
        differing += sum(not same_instances(a, b) for a, b in zip(*parsed.values(), strict=True))
        output = module(batch.images, batch.intrinsics, batch.extrinsics, compute_losses=False)
        slot_pixels.append(output.visuals.detections.numpy())
        truths.append(batch.keypoints_pixels.numpy())
        visibles.append(batch.keypoints_visible.numpy())

    results: dict[str, object] = {
        "env_id": info.env_id,
        "frames": len(indices),
        "views": views,
        "parser": module.parser_options,
        "views_where_the_matchers_differ": differing,
    }
    for matcher in MATCHERS:
        for alpha in alphas:
            total = totals[matcher, alpha]
            results[f"{matcher}@{alpha:g}"] = {
                "instance_pck": round(total.pck, 4),
                "assembled_correctly": round(total.assembly_accuracy, 4),
                "parts": f"{total.parts_correct}/{total.parts_visible}",
                "instances": f"{total.instances_correct}/{total.instances_total}",
            }
        results[f"{matcher}_ms_per_view"] = round(1e3 * seconds[matcher] / views, 2)
    predicted, truth, visible = (np.concatenate(a) for a in (slot_pixels, truths, visibles))
    for alpha in alphas:
        slot = pck(predicted, truth, visible, alpha, side)
        results[f"slot_pck@{alpha:g}"] = slot.mean
        results[f"slot_pck@{alpha:g}_per_keypoint"] = slot.per_keypoint.round(4).tolist()
    return results


def crowded_comparison(scenes: int, instances: int, seed: int = 0) -> dict[str, object]:
    """The two matchers on crowded synthetic scenes, where they can disagree.

    Each scene is a 32 x 32 map grid holding ``instances`` sticks of two parts and one limb, at
    uniform positions, directions and lengths (4 to 12 cells), drawn as exact ground-truth maps
    (:func:`~kp3d.perception.openpose.confidence_targets`, sigma 1.5;
    :func:`~kp3d.perception.openpose.paf_targets`, width 1): crossing and nearby sticks share PAF
    cells (averaged) and make limb candidates compete. Scored at 1 cell.
    """
    generator = torch.Generator().manual_seed(seed)
    heads = torch.rand(scenes, instances, 2, generator=generator, dtype=torch.float64) * 24 + 4
    angles = torch.rand(scenes, instances, generator=generator, dtype=torch.float64) * 2 * np.pi
    lengths = torch.rand(scenes, instances, generator=generator, dtype=torch.float64) * 8 + 4
    tails = heads + lengths[..., None] * torch.stack([angles.cos(), angles.sin()], dim=-1)
    points = torch.stack([heads, tails], dim=2)  # (S, M, 2 parts, 2)
    present = ((points >= 0) & (points <= 32)).all(-1)
    limbs = np.array([[0, 1]])
    confidence = confidence_targets(points, present, 1.5, (32, 32))
    fields = paf_targets(points, present, limbs, 1.0, (32, 32))
    results: dict[str, object] = {"scenes": scenes, "instances_per_scene": instances}
    parsed = {}
    for matcher in MATCHERS:
        total = AssemblyResult()
        parsed[matcher] = []
        for scene in range(scenes):
            found = parse_instances(confidence[scene], fields[scene], limbs, matcher=matcher)
            parsed[matcher].append(found)
            truth, visible = points[scene].numpy(), present[scene].numpy()
            total = total + evaluate_assembly(found.points, found.present, truth, visible, 1.0)
        results[matcher] = {
            "instance_pck": round(total.pck, 4),
            "assembled_correctly": round(total.assembly_accuracy, 4),
        }
    results["scenes_where_the_matchers_differ"] = sum(
        not same_instances(a, b) for a, b in zip(*parsed.values(), strict=True)
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="perception.pt of a kp3d pretrain run of openpose")
    parser.add_argument("dataset", help="the kp3d dataset directory it was trained on")
    parser.add_argument("--frames", type=int, default=1000, help="held-out frames to score")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument(
        "--crowded",
        type=int,
        nargs="*",
        default=[3, 6, 10],
        help="also compare the matchers on 500 synthetic scenes of this many sticks each",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    module = load_perception(args.checkpoint)
    if not isinstance(module, OpenPose):
        raise SystemExit(f"{args.checkpoint} holds a {type(module).__name__}, not OpenPose")
    dataset = FrameDataset(args.dataset, "test", args.test_fraction, load=("keypoints",))
    results = evaluate(module, dataset, args.frames, tuple(args.alphas))
    for count in args.crowded:
        results[f"crowded_{count}"] = crowded_comparison(500, count)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
