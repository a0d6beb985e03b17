"""D2-Net on simulator frames: cross-view matching precision/recall and triangulation error.

Evaluates a D2-Net checkpoint written by ``kp3d pretrain`` (``configs/pretrain/ant_d2net.yaml``) on
frames of the held-out episodes of its dataset (:func:`kp3d.data.held_out_episodes`, the same
``--test-fraction`` as the training run), with :func:`kp3d.perception.d2net.evaluate_matching`:
for every pair of cameras of a step, the mutual nearest neighbours of their detections; a match is
correct within ``τ`` pixels of the true correspondence (from the rendered depth, with the occlusion
test); recall counts against the detections that have a detection of the other view within ``τ`` of
their true location; each match is triangulated from its two views and compared with the point of
the depth map, in millimetres.

Rows: the trained network with the test-time pyramid (0.5, 1, 2) and at a single scale, and the
same architecture untrained (its random initialisation, seeded) both ways, as a floor.

Usage:
    kp3d dataset kp3d/Ant-v0 --frames 3000 --out data/ant
    kp3d pretrain configs/pretrain/ant_d2net.yaml --run-dir runs/pretrain/ant_d2net
    python benchmarks/d2net_matching.py --dataset data/ant \\
        --checkpoint runs/pretrain/ant_d2net/perception.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kp3d.data import FrameDataset
from kp3d.perception import load_perception, load_perception_checkpoint, make_perception
from kp3d.perception.d2net import D2Net, evaluate_matching


def evenly(count: int, limit: int) -> np.ndarray:
    """At most ``limit`` indices spread evenly over ``range(count)``."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="a `kp3d dataset` directory")
    parser.add_argument("--checkpoint", required=True, help="perception.pt of a d2net pretraining")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="as in the training run")
    parser.add_argument("--frames", type=int, default=100, help="held-out frames evaluated")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--max-detections", type=int, default=128, help="per view")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="of the untrained baseline")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    trained = load_perception(args.checkpoint)
    if not isinstance(trained, D2Net):
        raise SystemExit(f"{args.checkpoint} holds a {type(trained).__name__}, not a D2Net")
    payload = load_perception_checkpoint(args.checkpoint)
    # The same architecture from its seeded random initialisation (not from the run's
    # trunk_weights, which a fine-tuning run started from).
    kwargs = {k: v for k, v in payload["kwargs"].items() if k != "trunk_weights"}
    torch.manual_seed(args.seed)
    untrained = make_perception(
        "d2net",
        num_cameras=payload["num_cameras"],
        image_size=tuple(payload["image_size"]),
        **kwargs,
    )
    test_set = FrameDataset(
        args.dataset, "test", args.test_fraction, load=("depth", "segmentation")
    )
    indices = evenly(len(test_set), args.frames)

    def batches():
        for start in range(0, len(indices), args.batch_size):
            yield test_set.frames(indices[start : start + args.batch_size])

    rows = {
        "trained, pyramid": (trained, None),
        "trained, single scale": (trained, (1.0,)),
        "untrained, pyramid": (untrained, None),
        "untrained, single scale": (untrained, (1.0,)),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (module, scales) in rows.items():
        start = time.perf_counter()
        results[name] = evaluate_matching(
            module, batches(), args.thresholds, scales=scales, max_detections=args.max_detections
        )
        results[name]["seconds"] = time.perf_counter() - start

    print(
        f"{args.dataset}: {len(indices)} held-out frames of {len(test_set)}, "
        f"{test_set.info.num_cameras} cameras, {args.max_detections} detections per view"
    )
    for name, metrics in results.items():
        print(f"\n{name} ({metrics['seconds']:.0f} s)")
        print(
            f"  detections/view {metrics['detections']:.1f}, matches/view pair "
            f"{metrics['matches']:.1f}, on moving bodies {100 * metrics['moving_fraction']:.1f}%"
        )
        for threshold in args.thresholds:
            key = f"{threshold:g}px"
            print(
                f"  τ = {key}: precision {100 * metrics[f'precision@{key}']:.1f}%, recall "
                f"{100 * metrics[f'recall@{key}']:.1f}%, precision on moving bodies "
                f"{100 * metrics[f'precision_moving@{key}']:.1f}%, triangulation median "
                f"{metrics[f'triangulation_median_mm@{key}']:.1f} mm (correct matches)"
            )
        print(
            f"  triangulation of all matches: median {metrics['triangulation_median_mm']:.1f} mm,"
            f" mean {metrics['triangulation_mean_mm']:.1f} mm"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
