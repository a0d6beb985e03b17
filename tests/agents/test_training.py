"""Training runs: run directories, checkpoints, resuming, loading and evaluating."""

from __future__ import annotations

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

import agents
from agents.config import ConfigError, config_from_dict
from agents.training import (
    RunDirectoryError,
    create_run_dir,
    read_run_config,
    run_name,
)
from kp3d.files import atomic_write


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_config) -> Path:
    """A 64-step Keypoint3D PPO run (two rollouts of 2 x 16) with normalised rewards, evaluated
    every 32 steps: at 64 only, the evaluation at 32 coming before the first update."""
    config = config_from_dict(tiny_config(n_timesteps=64, eval={"freq": 32, "episodes": 1}))
    return agents.train(config, run_dir=tmp_path_factory.mktemp("runs") / "run")


def _adam_steps(optimizer) -> float:
    return float(next(iter(optimizer.state_dict()["state"].values()))["step"])


def test_a_run_directory_holds_config_checkpoint_logs_and_evaluations(finished_run: Path) -> None:
    files = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*")}
    assert {"config.yaml", "model.zip", "vecnormalize.npz", "eval/evaluations.npz"} <= files
    assert any(re.fullmatch(r"logs/events\.out\.tfevents\..*", f) for f in files)
    assert "logs/progress.csv" in files
    assert not any(".partial" in f for f in files)
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert saved["n_timesteps"] == 64 and saved["ppo"]["gamma"] == 0.99  # resolved defaults
    with np.load(finished_run / "eval" / "evaluations.npz") as evaluations:
        assert list(evaluations["timesteps"]) == [64]  # none before the first update
        assert evaluations["successes"].shape == (1, 1)


def test_load_and_evaluate(finished_run: Path, tmp_path: Path) -> None:
    model = agents.load(finished_run, device="cpu")
    assert model.num_timesteps == 64
    result = agents.evaluate(finished_run, episodes=1, video=tmp_path / "rollout.mp4")
    assert result.returns.shape == (1,) and result.lengths.tolist() == [100]
    assert 0.0 <= result.success_rate <= 1.0
    assert "success rate" in result.summary()
    frames = iio.imread(result.video, plugin="FFMPEG")
    # agents.render's frames: the reset observation and one per step; three 192 px views (64 px
    # upscaled 3 times) in three rows, and the world panel beside them.
    assert frames.shape[0] == 101
    assert frames.shape[1] > 3 * 192 and frames.shape[2] > 3 * 192 + 3 * 192


def test_resume_continues_step_count_and_optimizer_state(finished_run: Path, tmp_path) -> None:
    run = tmp_path / "resumed"
    run.mkdir()
    for path in finished_run.rglob("*"):
        if path.is_file():
            target = run / path.relative_to(finished_run)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    before = agents.load(run, device="cpu")
    policy_steps, perception_steps = (
        _adam_steps(before.policy.optimizer),
        _adam_steps(before.perception_optimizer),
    )
    assert agents.resume(run, ["n_timesteps=128"]) == run
    after = agents.load(run, device="cpu")
    assert after.num_timesteps == 128
    # As many updates again: Adam's step counts doubled (a fresh optimizer would not).
    assert _adam_steps(after.policy.optimizer) == 2 * policy_steps
    assert _adam_steps(after.perception_optimizer) == 2 * perception_steps
    assert read_run_config(run).n_timesteps == 128
    with np.load(run / "eval" / "evaluations.npz") as evaluations:
        assert list(evaluations["timesteps"]) == [64, 96, 128]  # the history carried over
    assert (run / "logs" / "progress_from_64.csv").is_file()
    # A finished run resumes to nothing.
    agents.resume(run)
    assert agents.load(run, device="cpu").num_timesteps == 128


def test_a_resumed_run_keeps_its_agent(finished_run: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot change \['ppo'\].*n_timesteps"):
        agents.resume(finished_run, ["ppo.learning_rate=1e-3"])


def test_runs_never_overwrite_each_other(tmp_path: Path, tiny_config) -> None:
    config = config_from_dict(tiny_config())
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.zip").write_text("another run")
    with pytest.raises(RunDirectoryError, match=r"not empty.*--resume"):
        agents.train(config, run_dir=taken)
    assert (taken / "model.zip").read_text() == "another run"
    first = create_run_dir(config, None, tmp_path / "runs")
    second = create_run_dir(config, None, tmp_path / "runs")
    assert first != second and first.is_dir() and second.is_dir()
    assert re.fullmatch(r"kp3d-Reach-v0__tiny__0__\d+", run_name(config))
    with pytest.raises(RunDirectoryError, match="not a kp3d run directory"):
        agents.load(tmp_path)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.zip"
    target.write_text("old")

    def failing(path: str) -> None:
        Path(path).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.zip"]
    atomic_write(target, lambda path: Path(path).write_text("new"))
    assert target.read_text() == "new"


def test_bad_perception_arguments_fail_before_any_run_is_made(tmp_path, tiny_config) -> None:
    config = config_from_dict(tiny_config(perception={"kwargs": {"mean_depth": -1.0}}))
    with pytest.raises(ConfigError, match=r"'perception\.kwargs'.*mean_depth"):
        agents.train(config, runs_root=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_demo_s_keypoints_carry_the_arm_and_the_target(tmp_path: Path) -> None:
    """``configs/demo.yaml``'s recipe (dataset and pretraining, ~4 minutes): the keypoints it
    freezes carry the target and the fingertip on held-out episodes."""
    import json

    from agents.pipeline import prepare_perception

    config = agents.load_config(
        Path(__file__).parents[2] / "configs" / "demo.yaml", ["progress_bar=false", "verbose=0"]
    )
    prepared = prepare_perception(config, tmp_path)
    run = Path(str(prepared.perception.pretrained)).parent
    last = json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1])
    for keypoint in ("target", "fingertip", "elbow"):
        assert last["probe_per_keypoint"][keypoint]["r2"] > 0.95, (keypoint, last)


def test_evaluations_are_one_line_each_and_wait_for_an_update(
    tmp_path: Path, tiny_config, capsys
) -> None:
    config = config_from_dict(
        tiny_config(n_timesteps=64, verbose=1, eval={"freq": 16, "episodes": 1})
    )
    agents.train(config, run_dir=tmp_path / "run")
    lines = capsys.readouterr().out.splitlines()
    evaluations = [line for line in lines if line.startswith("eval @")]
    # Every 16 steps, but not before the first update (after the rollout of 32 steps).
    assert [line.split()[2] for line in evaluations] == ["48", "64"]
    assert all(
        re.fullmatch(r"eval @ \d+ steps: success \d+%, return -?[\d.]+ ± [\d.]+", line)
        for line in evaluations
    )
    assert not any("rollout/" in line or "----" in line for line in lines)  # no SB3 tables
    assert any(line.startswith("trained to step 64 in") for line in lines)
