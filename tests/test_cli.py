"""The kp3d command line, run as a subprocess like a user would."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio

import envs
from agents.cli import build_parser


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


def test_demo_writes_one_titled_video_per_environment_and_lists_them(tmp_path: Path) -> None:
    result = _kp3d("demo", "--out", str(tmp_path), "--steps", "6", "--upscale", "2")
    assert result.returncode == 0, result.stderr
    videos = sorted(tmp_path.glob("*.mp4"))
    assert len(videos) == len(envs.TASKS)
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(envs.TASKS), result.stdout  # a heading, then one line a video
    for env_id in envs.TASKS:
        (line,) = [line for line in lines if env_id in line]
        path = tmp_path / f"{env_id.split('/')[-1]}.mp4"
        assert line.rstrip().endswith(str(path)) and path in videos
        cameras = gym.make(env_id).unwrapped.cameras.names
        assert ", ".join(cameras) in line
    frames = iio.imread(videos[0], plugin="FFMPEG")
    strip = frames.shape[1] - 128
    # Three 64 px views upscaled twice, under a title strip (task, camera names) of even height.
    assert frames.shape[0] == 6 and frames.shape[2:] == (3 * 128, 3)
    assert 20 <= strip <= 80 and strip % 2 == 0
    title = frames[:, :strip].astype(int)
    assert (title.max(axis=-1) > 150).sum(axis=(1, 2)).min() > 100  # text on every frame
    assert (title.max(axis=-1) < 60).mean() > 0.5  # on a dark background


def test_every_command_and_option_has_help_stating_its_default() -> None:
    parser = build_parser()
    missing = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, command in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{prefix} {name}: no help line")
                    if not command.description:
                        missing.append(f"{prefix} {name}: no description")
                    walk(command, f"{prefix} {name}")
                continue
            name = f"{prefix} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(f"{name}: no help")
                continue
            default = action.default
            states_default = "%(default)" in action.help or "(default" in action.help
            if default not in (None, False, []) and not states_default:
                missing.append(f"{name}: help does not state its default {default!r}")

    walk(parser, "kp3d")
    assert not missing, "\n".join(missing)
    # Each subcommand is listed once in `kp3d --help`.
    text = parser.format_help()
    for name in parser._subparsers._group_actions[0].choices:
        listed = [line for line in text.splitlines() if line.split()[:1] == [name]]
        assert len(listed) == 1, (name, text)
        assert f"kp3d {name}" not in text, text


def test_bench_envs_prints_the_ratio_to_the_floor_and_where_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ("--steps", "3", "--repeats", "1", "--sizes", "32", "--workers", "0")
    result = _kp3d("bench", "envs", *args, "--json", str(out))
    assert result.returncode == 0, result.stderr
    header, _, row = result.stdout.splitlines()[1:4]
    assert "vs the floor's (lower is better)" in header.split("|")[4]
    ratio = json.loads(out.read_text())["sizes"]["32"]["env_time_vs_floor"]
    assert row.split("|")[4].strip() == f"{ratio:.2f}x"
    assert "1.00x = as fast as a bare mujoco.Renderer loop" in result.stdout
    assert result.stdout.rstrip().endswith(f"results: {out}")


def test_bad_arguments_exit_with_a_message() -> None:
    result = _kp3d("demo", "--steps", "0")
    assert result.returncode == 2
    assert "positive integer" in result.stderr
    result = _kp3d("bench", "envs", "--env", "kp3d/Nope-v0", "--workers", "0")
    assert result.returncode == 2
    assert "unknown environment" in result.stderr
