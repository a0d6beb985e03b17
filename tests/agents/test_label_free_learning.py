"""Every label-free keypoint method learns: trained by its own pretrain config (shortened, on a
small Reach dataset), its keypoints locate the moving arm on held-out episodes better than its
untrained network's do.

The criterion is the landmark protocol's (``benchmarks/landmarks.py``): a linear probe from the
keypoints to each ground-truth keypoint, fitted on training episodes and scored on held-out ones;
training must cut the probe's error on each object the method learns at this scale to at most
``RATIO`` of the untrained network's. A random CNN's soft-argmax already carries some of the arm's
position, so a method whose training stops helping (or hurts, as a wrong loss sign or warp
direction does: flipping FSE's equivariance or Transporter's reconstruction sign fails these)
fails. The objects checked are those each method learns at the toy scale (the benchmark checks
every object at the configs' budgets): the static target needs more episodes than the toy
dataset holds for most methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.dataset import write_dataset
from agents.pretrain import load_pretrain_config, pretrain

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
RATIO = 0.7
ARM = ("elbow", "fingertip")
ELBOW_TARGET = ("elbow", "target")
EVERY = ("elbow", "fingertip", "target")


@dataclass(frozen=True)
class Toy:
    """A method's toy run: config overrides, the dataset's image side, the objects checked."""

    overrides: tuple[str, ...]
    size: int = 48
    objects: tuple[str, ...] = ARM
    slow: bool = False


# Per method: the overrides that shrink its config to a toy budget (3,000 frames, 48 px unless
# said). AutoLink at 300 x 8 missed the fingertip (9.2 -> 6.8 cm, 0.74x). FSE learns the elbow and
# the target at this scale but not the fingertip, at 48 or 64 px, at 300-600 x 8 (6.6 -> 13.8 cm at
# 300 x 8; it learns it on 20,000 frames at the config's budget). Transporter does not learn the
# fingertip at 48 px (10.6 -> 8.7 cm, 0.82x at 1000 x 8) and learns every object at 64 px.
TOY = {
    "keypoint2d": Toy(("steps=1000", "batch_size=16")),
    "zhang2018": Toy(("steps=200", "batch_size=8")),
    "fse": Toy(("steps=300", "batch_size=8"), objects=ELBOW_TARGET),
    "transporter": Toy(("steps=500", "batch_size=8"), size=64, objects=EVERY, slow=True),
    "autolink": Toy(("steps=600", "batch_size=8"), slow=True),
    "selftrain": Toy(
        (
            "steps=300",
            "batch_size=8",
            "perception.kwargs.warmup_steps=150",
            "perception.kwargs.round_steps=50",
            "perception.kwargs.rounds=2",
        ),
        slow=True,
    ),
}


@pytest.fixture(scope="module")
def reach_datasets(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """Reach datasets of 3,000 frames by image side, each written once per module."""
    written: dict[int, Path] = {}

    def dataset(size: int) -> Path:
        if size not in written:
            out = tmp_path_factory.mktemp(f"reach{size}")
            write_dataset("kp3d/Reach-v0", frames=3000, out=out, size=size, progress=False)
            written[size] = out
        return written[size]

    return dataset


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if toy.slow else m for m, toy in TOY.items()],
)
def test_training_locates_objects_better_than_the_untrained_network(
    method: str, reach_datasets: Callable[[int], Path], tmp_path: Path
) -> None:
    toy = TOY[method]
    overrides = [
        f"dataset={reach_datasets(toy.size)}",
        "eval_every=0",
        "eval_frames=600",
        "checkpoint_every=0",
        "progress_bar=false",
        "seed=0",
        *toy.overrides,
    ]
    config = load_pretrain_config(CONFIGS / f"reach_{method}.yaml", overrides)
    run_dir = pretrain(config, tmp_path / method)
    lines = (run_dir / "evaluations.jsonl").read_text().strip().splitlines()
    first, last = (json.loads(line)["probe_per_keypoint"] for line in (lines[0], lines[-1]))
    errors = {name: (first[name]["error_m"], last[name]["error_m"]) for name in toy.objects}
    for name, (untrained, trained) in errors.items():
        assert trained <= RATIO * untrained, f"{method} {name}: {errors}"
