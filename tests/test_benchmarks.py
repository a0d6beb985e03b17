"""The benchmark scripts still run: the figures of BENCHMARKS.md come from them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_landmark_table_reports_each_moving_keypoint_untrained_and_trained() -> None:
    landmarks = load("landmarks")

    def evaluation(r2: float) -> dict:
        return {
            "probe_per_keypoint": {
                "base": {"r2": None, "error_m": 0.0},
                "target": {"r2": r2, "error_m": 0.1 * (1 - r2)},
            }
        }

    result = {
        "method": "keypoint3d",
        "steps": 10,
        "batch_size": 4,
        "first": evaluation(0.5),
        "last": evaluation(0.99),
        "wall_s": 30.0,
        "frames_per_s": 12.0,
    }
    table = landmarks.table([result], ["base", "target"], ratio=0.7)
    assert "target: R², error (cm)" in table and "base" not in table
    assert "0.50 → **0.99**, 5.0 → 0.1 ✓ | yes |" in table
    result["last"] = evaluation(0.4)  # trained error 6.0 cm > 0.7 x 5.0 cm: did not learn it
    assert "0.50 → **0.40**, 5.0 → 6.0 | no |" in landmarks.table([result], ["base", "target"], 0.7)
    failed = {"method": "fse", "error": "fse failed:\nTraceback ...\nRuntimeError: no points"}
    rows = landmarks.table([result, failed], ["base", "target"], 0.7).splitlines()
    assert rows[-1] == "| fse | failed: RuntimeError: no points |"
    header, rule, _row = landmarks.table([failed], ["base", "target"], 0.7).splitlines()
    assert header.count("|") == rule.count("|")  # every method failed: still a valid table
    assert header == "| method | steps x batch | learns every object | wall (s) | frames/s |"


def test_landmark_configs_follow_the_dataset_task() -> None:
    landmarks = load("landmarks")
    assert landmarks.task_of("kp3d/Push-v0") == "push"
    assert landmarks.config_for("hourglass", "push").name == "push_hourglass.yaml"
    assert landmarks.config_for("fse", "push").name == "push_fse.yaml"
    assert landmarks.config_for("autolink", "push").name == "reach_autolink.yaml"  # none: Reach's
    with pytest.raises(SystemExit, match=r"methods with a config: .*keypoint2d"):
        landmarks.config_for("nonexistent", "reach")


def test_perception_speed_compares_the_crops(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "perception_speed.py"),
            "--batch-size",
            "4",
            "--calls",
            "1",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    for case in ("act", "encode", "train_step"):
        assert figures[case]["ms_fast_crops"] > 0 and figures[case]["ms_main_crops"] > 0
    assert figures["pretraining_frames_per_second"]["fast_crops"] > 0
