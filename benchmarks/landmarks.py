"""The landmark-evaluation protocol of the unsupervised-keypoint literature, for every method.

Each perception module is trained offline with ``kp3d pretrain`` on the same ``kp3d dataset``
directory with its own config (``configs/pretrain/<task>_<method>.yaml``, where ``<task>`` is the
dataset's env, e.g. ``push`` for ``kp3d/Push-v0``; Reach's config where the task has none: the
dataset, not the config, decides the scene). By default each method trains for its config's own
budget (``steps x batch_size``), the setting a user of that config gets; ``--frames N`` gives
every method the same number of training frames instead.

The pretrain run's held-out evaluation fits a linear map (least squares with a bias) from the
module's keypoints (+ confidences) to the ground-truth keypoints on training episodes and scores
it on held-out episodes: per ground-truth keypoint (the arm's joints, the target, the cube, the
goal), the R² of its worst axis and its mean error in metres. The untrained network is scored
too (step 0), beside every figure, because a random CNN's soft-argmax already carries information
a linear probe can read. A method *learns* an object when training cuts that object's error to at
most ``--learned-ratio`` (0.7) of the untrained network's.

Cost: wall-clock seconds of each run and its median training frames/s (one torch thread per run;
``--jobs`` runs at once, by default one per CPU core).

Outputs in ``--out``: one pretrain run directory per method, ``results.json`` (per method its
``first`` and ``last`` evaluations, with ``probe_per_keypoint`` and
``probe_error_per_keypoint``, and the cost; a method that failed has its ``error`` instead, and
the script exits with 1 after the others finish) and ``table.md`` (also printed).

Usage:
    kp3d dataset kp3d/Reach-v0 --frames 20000 --out runs/datasets/reach
    python benchmarks/landmarks.py --dataset runs/datasets/reach \
        --methods keypoint2d transporter fse zhang2018 selftrain autolink --out runs/landmarks/reach
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
FALLBACK_TASK = "reach"


def task_of(env_id: str) -> str:
    """``kp3d/Push-v0`` -> ``push``: the prefix of the task's pretrain configs."""
    return env_id.split("/")[-1].rsplit("-v", 1)[0].lower()


def config_for(method: str, task: str) -> Path:
    """The method's pretrain config for ``task``, or Reach's where the task has none."""
    for prefix in dict.fromkeys([task, FALLBACK_TASK]):
        config = CONFIGS / f"{prefix}_{method}.yaml"
        if config.is_file():
            return config
    available = sorted(p.stem.split("_", 1)[1] for p in CONFIGS.glob(f"{FALLBACK_TASK}_*.yaml"))
    raise SystemExit(
        f"no pretrain config for method {method!r} (looked for {task}_{method}.yaml and "
        f"{FALLBACK_TASK}_{method}.yaml in {CONFIGS}); methods with a config: "
        + ", ".join(available)
    )


def run_method(method: str, args: argparse.Namespace, task: str) -> dict:
    """Pretrain ``method`` on ``args.dataset``; return its first and last evaluation and cost."""
    config = config_for(method, task)
    settings = yaml.safe_load(config.read_text())
    batch = int(settings.get("batch_size", 32))
    steps = max(1, args.frames // batch) if args.frames else int(settings["steps"])
    run_dir = Path(args.out) / method
    command = [sys.executable, "-m", "agents.cli", "pretrain", str(config)]
    command += ["--run-dir", str(run_dir)]
    overrides = {
        "dataset": args.dataset,
        "steps": steps,
        "eval_every": 0,
        "eval_frames": args.eval_frames,
        "checkpoint_every": 0,
        "log_every": max(1, steps // 20),
        "progress_bar": "false",
        "seed": args.seed,
    }
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    for override in args.set:
        target, _, assignment = override.partition(":")
        if target == method:
            command += ["--set", assignment]
    print(f"{method}: {config.name}, {steps} steps x {batch}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    lines = (run_dir / "evaluations.jsonl").read_text().strip().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    print(f"{method}: done in {wall:.0f} s", flush=True)
    return {
        "method": method,
        "config": str(config.relative_to(CONFIGS.parents[1])),
        "steps": steps,
        "batch_size": batch,
        "wall_s": wall,
        "first": first,
        "last": last,
        "frames_per_s": training_frames_per_second(run_dir),
    }


def training_frames_per_second(run_dir: Path) -> float | None:
    """Median of the run's logged training frames/s (wall clock of the training steps only)."""
    progress = run_dir / "logs" / "progress.csv"
    if not progress.is_file():
        return None
    with progress.open() as file:
        values = [
            float(row["time/frames_per_second"])
            for row in csv.DictReader(file)
            if row.get("time/frames_per_second")
        ]
    return sorted(values)[len(values) // 2] if values else None


def learned(first: dict, last: dict, ratio: float) -> bool:
    """Training cut this keypoint's held-out error to at most ``ratio`` of the untrained one's."""
    return last["error_m"] <= ratio * first["error_m"]


def table(results: list[dict], keypoint_names: list[str], ratio: float) -> str:
    """Markdown: per method, each moving ground-truth keypoint's held-out R² (worst axis) and mean
    error untrained → trained (✓ where the error fell to at most ``ratio`` of the untrained),
    then the training cost. Keypoints that never move (R² undefined) are left out."""
    finished = [r for r in results if "error" not in r]
    moving = [
        name
        for name in keypoint_names
        if any(r["last"]["probe_per_keypoint"][name]["r2"] is not None for r in finished)
    ]
    columns = [
        "method",
        "steps x batch",
        *(f"{name}: R², error (cm)" for name in moving),
        "learns every object",
        "wall (s)",
        "frames/s",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def cell(first: dict, last: dict) -> str:
        mark = " ✓" if learned(first, last, ratio) else ""
        return (
            f"{first['r2']:.2f} → **{last['r2']:.2f}**, "
            f"{100 * first['error_m']:.1f} → {100 * last['error_m']:.1f}{mark}"
        )

    for result in results:
        if "error" in result:
            last_line = result["error"].strip().splitlines()[-1]
            lines.append(f"| {result['method']} | failed: {last_line} |")
            continue
        first = result["first"]["probe_per_keypoint"]
        last = result["last"]["probe_per_keypoint"]
        cells = " | ".join(cell(first[name], last[name]) for name in moving)
        every = all(learned(first[name], last[name], ratio) for name in moving)
        fps = "—" if result["frames_per_s"] is None else f"{result['frames_per_s']:.0f}"
        lines.append(
            f"| {result['method']} | {result['steps']} x {result['batch_size']} | {cells} | "
            f"{'yes' if every else 'no'} | {result['wall_s']:.0f} | {fps} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a `kp3d dataset` directory")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="training frames for every method (default: each config's steps x batch_size)",
    )
    parser.add_argument("--eval-frames", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="methods trained at once"
    )
    parser.add_argument("--learned-ratio", type=float, default=0.7)
    parser.add_argument("--out", default="runs/landmarks")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="a config override for one method, e.g. selftrain:perception.kwargs.rounds=2",
    )
    args = parser.parse_args()
    meta_file = Path(args.dataset) / "meta.json"
    if not meta_file.is_file():
        parser.error(f"{args.dataset} is not a `kp3d dataset` directory (no meta.json)")
    meta = json.loads(meta_file.read_text())
    task = task_of(meta["env_id"])
    for method in args.methods:
        config_for(method, task)  # every config exists before anything trains

    def attempt(method: str) -> dict:
        # One method's failure is reported in its row; the others' runs and results stay.
        try:
            return run_method(method, args, task)
        except RuntimeError as error:
            print(error, file=sys.stderr, flush=True)
            return {"method": method, "error": str(error)[-2000:]}

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(attempt, args.methods))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, meta["keypoint_names"], args.learned_ratio)
    (out / "table.md").write_text(text + "\n")
    print(text)
    if any("error" in result for result in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
