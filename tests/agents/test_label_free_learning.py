"""Every label-free keypoint method learns: trained by its own pretrain config (shortened, on a
small Reach dataset), its keypoints locate the moving arm on held-out episodes better than its
untrained network's do.

The criterion is the landmark protocol's (``benchmarks/landmarks.py``): a linear probe from the
keypoints to each ground-truth keypoint, fitted on training episodes and scored on held-out ones;
training must cut the probe's error on the elbow and the fingertip to at most ``RATIO`` of the
untrained network's. A random CNN's soft-argmax already carries some of the arm's position, so a
method whose training stops helping (or hurts, as a wrong loss sign or warp direction does) fails.
The static target needs many more episodes than a toy dataset holds; the benchmark measures it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.dataset import write_dataset
from agents.pretrain import load_pretrain_config, pretrain

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
RATIO = 0.7
ARM = ("elbow", "fingertip")

# Per method: the overrides that shrink its config to a toy budget (a few thousand frames at
# 48 px). AutoLink learns the arm (the test's criterion; it loses Reach's target even at its
# config's budget, BENCHMARKS.md); at 300 x 8 its fingertip missed (9.2 -> 6.8 cm, 0.74x).
# Not here (issue 17): Transporter and FSE, which learn every object at their configs' budgets
# on 20,000 frames at 64 px but not the fingertip on this toy dataset (1000 x 8 at 48 px:
# Transporter 10.6 -> 8.7 cm, 0.82x, 3.4 minutes; FSE 6.6 -> 16.0 cm, 5 minutes).
TOY = {
    "keypoint2d": ["steps=1000", "batch_size=16"],
    "zhang2018": ["steps=200", "batch_size=8"],
    "autolink": ["steps=600", "batch_size=8"],
    "selftrain": [
        "steps=300",
        "batch_size=8",
        "perception.kwargs.warmup_steps=150",
        "perception.kwargs.round_steps=50",
        "perception.kwargs.rounds=2",
    ],
}
SLOW = {"selftrain", "autolink"}  # about a minute; about 3 minutes


@pytest.fixture(scope="module")
def reach_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reach48")
    write_dataset("kp3d/Reach-v0", frames=3000, out=out, size=48, progress=False)
    return out


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in TOY]
)
def test_training_locates_the_arm_better_than_the_untrained_network(
    method: str, reach_dataset: Path, tmp_path: Path
) -> None:
    overrides = [
        f"dataset={reach_dataset}",
        "eval_every=0",
        "eval_frames=600",
        "checkpoint_every=0",
        "progress_bar=false",
        "seed=0",
        *TOY[method],
    ]
    config = load_pretrain_config(CONFIGS / f"reach_{method}.yaml", overrides)
    run_dir = pretrain(config, tmp_path / method)
    lines = (run_dir / "evaluations.jsonl").read_text().strip().splitlines()
    first, last = (json.loads(line)["probe_per_keypoint"] for line in (lines[0], lines[-1]))
    errors = {name: (first[name]["error_m"], last[name]["error_m"]) for name in ARM}
    for name, (untrained, trained) in errors.items():
        assert trained <= RATIO * untrained, f"{method} {name}: {errors}"
