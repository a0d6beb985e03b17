"""Tiny training configurations shared by the agent tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import KVWriter, Logger

TINY: dict[str, Any] = {
    "env_id": "kp3d/Reach-v0",
    "exp_name": "tiny",
    "algo": "ppo",
    "n_timesteps": 32,
    "n_envs": 2,
    "seed": 0,
    "perception": {
        "name": "keypoint3d",
        "kwargs": {"num_keypoints": 4, "base_filters": 4, "heatmap_stride": 8, "mean_depth": 0.95},
        "projection_dim": 32,
    },
    "ppo": {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "net_arch": [16]},
    "sac": {"buffer_size": 256, "learning_starts": 8, "batch_size": 8, "net_arch": [16]},
    "unsupervised": {"steps": 2, "batch_size": 4, "buffer_size": 48},
    "eval": {"freq": 0, "episodes": 1},
    "checkpoint_freq": 0,
    "progress_bar": False,
    "verbose": 0,
}
"""A Keypoint3D PPO run on Reach that trains in seconds: 2 envs x 16 steps per rollout, one
epoch, 2 unsupervised steps, a 4-keypoint perception with 4 base filters."""


def _tiny(**sections: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run each module of these tests on one torch thread, as training runs do by default
    (``torch_threads``): two threads on a busy 2-core machine wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: :data:`TINY` with top-level keys replaced and sections (dicts) updated."""
    return _tiny


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config mapping as YAML; returns the path."""

    def write(config: dict[str, Any], name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    return write


class RecordingFormat(KVWriter):
    """An SB3 logger output that keeps every dump, plus what is recorded but not dumped yet."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        self.dumps.append(dict(key_values))

    @property
    def keys(self) -> set[str]:
        """Every key dumped or pending."""
        return {key for dump in self.dumps for key in dump} | set(self.logger.name_to_value)


@pytest.fixture(scope="session")
def make_agent():
    """Factory: the agent (with its training envs) that ``kp3d train`` builds for a config
    mapping."""
    from agents.config import config_from_dict
    from agents.environment import camera_layout
    from agents.training import build_model, feature_encoder, make_run_env

    def make(config_data: dict[str, Any]) -> BaseAlgorithm:
        config = config_from_dict(config_data)
        layout = camera_layout(config.env_id, config.env_kwargs)
        encoder = feature_encoder(config, layout)
        env = make_run_env(
            config, layout, config.n_envs, config.seed, training=True, encoder=encoder
        )
        return build_model(config, env, layout)

    return make


@pytest.fixture(scope="session")
def record_logs():
    """Factory: give a model a logger that records into the returned :class:`RecordingFormat`."""

    def attach(model: BaseAlgorithm) -> RecordingFormat:
        logger = Logger(None, [])
        records = RecordingFormat(logger)
        logger.output_formats.append(records)
        model.set_logger(logger)
        return records

    return attach


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished run of :data:`TINY` for 64 steps (two rollouts), shared by the render and plot
    tests: periodic evaluations at steps 48 and 64 (one episode each; those at 16 and 32 come
    before the first update and are skipped) and periodic videos at steps 32 and 64 (episodes
    cut at 4 steps). Named like ``kp3d train`` names runs."""
    from agents.config import config_from_dict
    from agents.training import train

    config = config_from_dict(
        _tiny(n_timesteps=64, eval={"freq": 16, "episodes": 1}, video={"freq": 32, "max_steps": 4})
    )
    runs = tmp_path_factory.mktemp("trained")
    return train(config, run_dir=runs / "kp3d-Reach-v0__tiny__0__1700000000")
