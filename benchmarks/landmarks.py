"""The landmark-evaluation protocol of the unsupervised-keypoint literature, for every method.

Each perception module is trained offline with ``kp3d pretrain`` on the same ``kp3d dataset``
directory, for the same number of training frames (``--frames``, i.e. ``steps x batch_size``
of its config), with its own config under ``configs/pretrain/``. The pretrain run's held-out
evaluation then fits a linear map (least squares with a bias) from the module's keypoints (+
confidences) to the ground-truth keypoints on training episodes and scores it on held-out
episodes: per ground-truth keypoint, the R² of its worst axis and its mean error in metres (and
the error normalised by the env's length, as MAFL normalises by the inter-ocular distance). The
untrained network is scored too (step 0), beside every figure, because a random CNN's
soft-argmax already carries information a linear probe can read.

Cost: training frames per CPU-second of the run's process (one torch thread), so that runs that
shared the machine are still comparable.

Usage:
    python benchmarks/landmarks.py --dataset runs/datasets/reach --frames 8000 \
        --methods keypoint3d keypoint2d fse zhang2018 transporter autolink selftrain --jobs 2 \
        --set selftrain:perception.kwargs.warmup_steps=250 \
        --set selftrain:perception.kwargs.round_steps=100 --set selftrain:perception.kwargs.rounds=2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"


def batch_size_of(config: Path) -> int:
    import yaml

    return int(yaml.safe_load(config.read_text()).get("batch_size", 32))


def run_method(method: str, args: argparse.Namespace) -> dict:
    """Pretrain ``method`` for ``args.frames`` frames; return its first and last evaluation."""
    config = CONFIGS / f"{args.env_prefix}_{method}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"no pretrain config {config} for method {method!r}")
    batch = batch_size_of(config)
    steps = max(1, args.frames // batch)
    run_dir = Path(args.out) / method
    command = [
        sys.executable,
        "-m",
        "agents.cli",
        "pretrain",
        str(config),
        "--run-dir",
        str(run_dir),
        "--set",
        f"dataset={args.dataset}",
        "--set",
        f"steps={steps}",
        "--set",
        "eval_every=0",
        "--set",
        f"eval_frames={args.eval_frames}",
        "--set",
        "checkpoint_every=0",
        "--set",
        f"log_every={max(1, steps // 10)}",
        "--set",
        "progress_bar=false",
        "--set",
        f"seed={args.seed}",
    ]
    for override in args.set:
        target, _, assignment = override.partition(":")
        if target == method:
            command += ["--set", assignment]
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    lines = (run_dir / "evaluations.jsonl").read_text().strip().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    return {
        "method": method,
        "steps": steps,
        "batch_size": batch,
        "wall_s": time.perf_counter() - started,
        # children's CPU time is only exact when the jobs do not overlap (--jobs 1); with
        # overlapping jobs the frames/s below come from the run's own log instead.
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "first": first,
        "last": last,
        "frames_per_s": training_frames_per_second(run_dir),
    }


def training_frames_per_second(run_dir: Path) -> float | None:
    """Median of the run's logged training frames/s (wall clock of the training steps only)."""
    progress = run_dir / "logs" / "progress.csv"
    if not progress.is_file():
        return None
    import csv

    with progress.open() as file:
        values = [
            float(row["time/frames_per_second"])
            for row in csv.DictReader(file)
            if row.get("time/frames_per_second")
        ]
    return sorted(values)[len(values) // 2] if values else None


def table(results: list[dict], keypoint_names: list[str]) -> str:
    """Markdown: per method, each ground-truth keypoint's held-out R² (worst axis) and mean error
    untrained → trained, then the training cost. Keypoints that never move are left out."""
    moving = [
        name
        for name in keypoint_names
        if any(r["last"]["probe_per_keypoint"][name]["r2"] is not None for r in results)
    ]
    header = " | ".join(f"{name}: R², error (cm)" for name in moving)
    lines = [
        f"| method | steps x batch | {header} | training frames/s |",
        "|---|---|" + "---|" * len(moving) + "---|",
    ]

    def cell(first: dict, last: dict) -> str:
        if last["r2"] is None:
            return "—"
        return (
            f"{first['r2']:.2f} → **{last['r2']:.2f}**, "
            f"{100 * first['error_m']:.1f} → {100 * last['error_m']:.1f}"
        )

    for result in results:
        first = result["first"]["probe_per_keypoint"]
        last = result["last"]["probe_per_keypoint"]
        cells = " | ".join(cell(first[name], last[name]) for name in moving)
        fps = "—" if result["frames_per_s"] is None else f"{result['frames_per_s']:.1f}"
        lines.append(
            f"| {result['method']} | {result['steps']} x {result['batch_size']} | {cells} | {fps} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a `kp3d dataset` directory")
    parser.add_argument("--env-prefix", default="reach", help="configs/pretrain/<prefix>_<m>.yaml")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--frames", type=int, default=8000, help="training frames per method")
    parser.add_argument("--eval-frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="methods trained at once")
    parser.add_argument("--out", default="runs/landmarks")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a config override for one method, e.g. selftrain:perception.kwargs.rounds=2",
    )
    args = parser.parse_args()

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda m: run_method(m, args), args.methods))
    meta = json.loads((Path(args.dataset) / "meta.json").read_text())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results, meta["keypoint_names"]))


if __name__ == "__main__":
    main()
