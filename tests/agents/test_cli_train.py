"""``kp3d train`` and ``kp3d eval`` as a user runs them: subprocesses, tiny budgets, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import agents


def _kp3d(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_then_eval_from_the_command_line(tmp_path: Path, write_config, tiny_config) -> None:
    run = tmp_path / "run"
    result = _kp3d("train", str(write_config(tiny_config())), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    assert f"run: {run}\ntensorboard: tensorboard --logdir {run / 'logs'}" in result.stdout
    assert agents.load(run, device="cpu").num_timesteps == 32
    result = _kp3d("eval", str(run), "--episodes", "1", "--no-deterministic")
    assert result.returncode == 0, result.stderr
    assert "1 episodes: return" in result.stdout and "success rate" in result.stdout
    result = _kp3d("eval", str(run), "--episodes", "2", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)  # stdout holds the JSON object and nothing else
    assert set(figures) == {
        "success_rate",
        "return_mean",
        "return_std",
        "episode_lengths",
        "episodes",
        "seed",
    }
    assert figures["episodes"] == 2 and figures["episode_lengths"] == [100, 100]
    assert 0.0 <= figures["success_rate"] <= 1.0 and figures["seed"] == 10_000


def test_bad_configs_and_arguments_exit_2_with_a_message(
    tmp_path: Path, write_config, tiny_config
) -> None:
    result = _kp3d("train", str(write_config(tiny_config(ppo={"lr": 1e-3}))))
    assert result.returncode == 2
    assert "unknown key 'ppo.lr'" in result.stderr and "learning_rate" in result.stderr
    result = _kp3d("train", str(write_config(tiny_config())), "--set", "ppo.n_epochs=many")
    assert result.returncode == 2 and "'ppo.n_epochs' must be int" in result.stderr
    result = _kp3d("train")
    assert result.returncode == 2 and "--resume" in result.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").touch()
    result = _kp3d("train", str(write_config(tiny_config())), "--run-dir", str(taken))
    assert result.returncode == 2 and "not empty" in result.stderr
    result = _kp3d("eval", str(tmp_path))
    assert result.returncode == 2 and "not a kp3d run directory" in result.stderr


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path: Path, write_config, tiny_config) -> None:
    run = tmp_path / "run"
    config = write_config(tiny_config(n_timesteps=1_000_000))
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "train", str(config), "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The logger's files exist once the model is built and learning starts.
        deadline = time.monotonic() + 120
        while not (run / "logs" / "progress.csv").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        time.sleep(2.0)
        os.kill(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert f"resume with: kp3d train --resume {run}" in stdout
    model = agents.load(run, device="cpu")
    assert 0 < model.num_timesteps < 1_000_000


def test_sb3_tables_only_with_verbose(tmp_path: Path, write_config, tiny_config, capsys) -> None:
    from agents.cli import main

    config = write_config(tiny_config(verbose=1))
    assert main(["train", str(config), "--run-dir", str(tmp_path / "quiet")]) == 0
    quiet = capsys.readouterr().out
    assert "time/" not in quiet and "trained to step 32" in quiet
    assert main(["train", str(config), "--run-dir", str(tmp_path / "loud"), "-v"]) == 0
    assert "time/" in capsys.readouterr().out  # SB3's table
    assert agents.load(tmp_path / "loud", device="cpu").num_timesteps == 32
