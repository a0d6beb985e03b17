"""The README's examples work: its Python block runs, and every ``kp3d`` command it shows parses
with the real command line (each command's behaviour is tested with the command itself)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from agents.cli import build_parser

README = Path(__file__).parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_the_python_example_runs(capsys) -> None:
    (example,) = blocks("python")
    exec(compile(example, str(README), "exec"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([1, 8, 3]) (4, 3)"


def readme_commands() -> list[list[str]]:
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            for command in line.split(" | "):
                command = re.sub(r"\[[^\]]*\]", "", command).strip()  # optional parts
                if command.startswith("kp3d "):
                    commands.append(shlex.split(command)[1:])
    return commands


def test_the_readme_is_short_and_shows_every_command() -> None:
    assert len(README.read_text().splitlines()) < 150
    shown = {command[0] for command in readme_commands()}
    assert shown == {
        "train",
        "eval",
        "render",
        "plot",
        "dataset",
        "pretrain",
        "bench",
        "envs",
        "demo",
        "sweep",
        "report",
    }


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_every_command_in_the_readme_parses(command: list[str]) -> None:
    build_parser().parse_args(command)
