"""The kp3d command line, run as a subprocess like a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio

import envs


def _kp3d(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_envs_lists_every_registered_environment() -> None:
    result = _kp3d("envs")
    assert result.returncode == 0, result.stderr
    for env_id in envs.TASKS:
        assert env_id in result.stdout
    assert "cam_" in result.stdout and "keypoints" in result.stdout


def test_demo_writes_one_video_per_environment(tmp_path: Path) -> None:
    result = _kp3d("demo", "--out", str(tmp_path), "--steps", "6", "--upscale", "2")
    assert result.returncode == 0, result.stderr
    videos = sorted(tmp_path.glob("*.mp4"))
    assert len(videos) == len(envs.TASKS)
    frames = iio.imread(videos[0], plugin="FFMPEG")
    assert frames.shape == (6, 128, 3 * 128, 3)
    for video in videos:
        assert str(video) in result.stdout


def test_bad_arguments_exit_with_a_message() -> None:
    result = _kp3d("demo", "--steps", "0")
    assert result.returncode == 2
    assert "positive integer" in result.stderr
    result = _kp3d("bench", "envs", "--env", "kp3d/Nope-v0", "--workers", "0")
    assert result.returncode == 2
    assert "unknown environment" in result.stderr
