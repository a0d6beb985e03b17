"""The registered kp3d environments (one place for ids, entry points and episode lengths)."""

from __future__ import annotations

import importlib

import gymnasium as gym

TASKS: dict[str, str] = {
    "kp3d/Reach-v0": "envs.tasks.reach:ReachEnv",
    "kp3d/Push-v0": "envs.tasks.push:PushEnv",
    "kp3d/MultiReach-v0": "envs.tasks.multi_reach:MultiReachEnv",
    "kp3d/Ant-v0": "envs.tasks.ant:AntEnv",
}
"""Environment id → ``module:class`` of its task."""


def task_class(env_id: str) -> type:
    """The task class registered under ``env_id``."""
    if env_id not in TASKS:
        raise ValueError(f"unknown kp3d environment {env_id!r}; registered: {sorted(TASKS)}")
    module, name = TASKS[env_id].split(":")
    return getattr(importlib.import_module(module), name)


def register_all() -> None:
    """Register every task with Gymnasium (idempotent)."""
    for env_id, entry_point in TASKS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=entry_point,
                max_episode_steps=task_class(env_id).max_episode_steps,
            )
