"""Keypoint3D's forward and training step, with today's crops against those they replaced, in
one run.

Each view's window was cut by one advanced-index gather of single pixels, then copied again to
its layout and twice more by the encoder's input scaling (kept here as :func:`main_crops`, the
code of kp3d at f2bf3c8). It is now a slice (a view, no copy) when every window is at the same
place (evaluation, acting) or a gather of whole window rows from a strided view of every window
(training's random crops), written once, scaled, in the channels-last layout the convolutions
prefer (``kp3d.perception.keypoint_autoencoder.normalized_crops``). Each case is timed
alternately with either, ``repeats`` times, and the medians and their ratio are reported:

* ``act``: one observation (batch 1), eval mode, no losses: what an agent pays per env step;
* ``encode``: a batch, eval mode, no losses: a frozen perception's features, evaluation;
* ``train_step``: a batch in training mode (random crops) with the losses, backward included:
  one pretraining step (its frames/s are the batch over the time).

``train_step_plain_mse`` times the training step (fast crops) with ``foreground_weight=0``, the
paper's unweighted reconstruction error, beside ``train_step``: what the foreground weights cost.

Usage:
    python benchmarks/perception_speed.py --out perception_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from agents.runs import set_torch_threads
from kp3d.perception import keypoint_autoencoder, make_perception


def gather_crops(
    images: torch.Tensor, origins: torch.Tensor, size: int | Sequence[int]
) -> torch.Tensor:
    """kp3d's ``crop_images`` at f2bf3c8: one advanced-index gather of every pixel, then a copy
    to ``(*, ch, h, w)`` (validation left out)."""
    crop_height, crop_width = (size, size) if isinstance(size, int) else tuple(size)
    flat = images.reshape(-1, *images.shape[-3:])
    flat_origins = origins.reshape(-1, 2).long()
    rows = flat_origins[:, 1, None] + torch.arange(crop_height, device=images.device)
    columns = flat_origins[:, 0, None] + torch.arange(crop_width, device=images.device)
    batch = torch.arange(flat.shape[0], device=images.device)[:, None, None]
    crops = flat[batch, :, rows[:, :, None], columns[:, None, :]]
    return crops.permute(0, 3, 1, 2).reshape(*images.shape[:-2], crop_height, crop_width)


def main_crops(
    images: torch.Tensor, origins: torch.Tensor, size: int | Sequence[int]
) -> torch.Tensor:
    """The encoder's input at f2bf3c8: :func:`gather_crops`, then ``x * 2 - 1`` (two more
    tensors), in the default (channels-first) layout."""
    return gather_crops(images, origins, size) * 2.0 - 1.0


@contextlib.contextmanager
def crops(kind: str) -> Iterator[None]:
    """Within the block, Keypoint3D crops as today (``"fast"``) or as at f2bf3c8 (``"main"``)."""
    originals = keypoint_autoencoder.crop_images, keypoint_autoencoder.normalized_crops
    if kind == "main":
        keypoint_autoencoder.crop_images = gather_crops  # type: ignore[assignment]
        keypoint_autoencoder.normalized_crops = main_crops  # type: ignore[assignment]
    try:
        yield
    finally:
        keypoint_autoencoder.crop_images, keypoint_autoencoder.normalized_crops = originals


def median_seconds(function: Callable[[], object], calls: int) -> float:
    function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="pretraining's batch")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--heatmap-stride", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    set_torch_threads(1)
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, 3, args.size, args.size)
    intrinsics = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]).expand(3, 3, 3)
    extrinsics = torch.eye(4).expand(3, 4, 4).clone()
    extrinsics[:, 2, 3] = 1.0

    def training_step(foreground_weight: float) -> tuple[torch.nn.Module, Callable[[], None]]:
        """A Keypoint3D and one optimizer step of its losses on ``images``."""
        module = make_perception(
            "keypoint3d",
            num_cameras=3,
            image_size=args.size,
            num_keypoints=8,
            heatmap_stride=args.heatmap_stride,
            mean_depth=0.96,
            foreground_weight=foreground_weight,
        )
        module.set_background(torch.rand(3, 3, args.size, args.size))
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

        def step() -> None:
            loss = module.train()(images, intrinsics, extrinsics).total_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return module, step

    module, train_step = training_step(20.0)
    _, train_step_plain = training_step(0.0)

    @torch.no_grad()
    def act() -> None:
        module.eval()(images[:1], intrinsics, extrinsics, compute_losses=False)

    @torch.no_grad()
    def encode() -> None:
        module.eval()(images, intrinsics, extrinsics, compute_losses=False)

    cases = {"act": act, "encode": encode, "train_step": train_step}
    measured: dict[str, dict[str, list[float]]] = {case: {"fast": [], "main": []} for case in cases}
    plain_times: list[float] = []
    for _ in range(args.repeats):
        for case, function in cases.items():
            for kind in ("fast", "main"):
                with crops(kind):
                    measured[case][kind].append(median_seconds(function, args.calls))
        plain_times.append(median_seconds(train_step_plain, args.calls))
    results: dict[str, object] = {
        "batch_size": args.batch_size,
        "image_size": args.size,
        "heatmap_stride": args.heatmap_stride,
        "calls": args.calls,
        "repeats": args.repeats,
    }
    for case, times in measured.items():
        fast, main = statistics.median(times["fast"]), statistics.median(times["main"])
        results[case] = {
            "ms_fast_crops": 1000 * fast,
            "ms_main_crops": 1000 * main,
            "speedup": main / fast,
        }
    step = results["train_step"]
    assert isinstance(step, dict)
    results["train_step_plain_mse"] = {
        "ms": 1000 * statistics.median(plain_times),
        "foreground_weights_cost": step["ms_fast_crops"] / (1000 * statistics.median(plain_times))
        - 1.0,
    }
    results["pretraining_frames_per_second"] = {
        "fast_crops": 1000 * args.batch_size / step["ms_fast_crops"],
        "main_crops": 1000 * args.batch_size / step["ms_main_crops"],
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
