"""Configs: every shipped file loads, overrides parse YAML, bad keys and values are named."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from agents.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from agents.config_checks import check_config
from kp3d.perception import available_perceptions

CONFIG_DIR = Path(__file__).parents[2] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_issue_s_task_and_method_grid_is_shipped() -> None:
    names = {path.stem for path in CONFIG_FILES}
    for task in ("reach", "push", "multireach", "ant"):
        for method in ("keypoint3d", "keypoint2d", "pixel", "rad", "state"):
            assert f"{task}_{method}_ppo" in names
    for task in ("reach", "push"):
        for method in ("keypoint3d", "pixel", "state"):
            assert f"{task}_{method}_sac" in names
    assert "demo" in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_checks(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a section its algo ignores
        config = load_config(path)
    assert isinstance(config, TrainConfig)
    assert config.exp_name
    name = config.perception.name
    assert name is None or name in available_perceptions(), name
    check_config(config)


def test_a_section_the_algorithm_ignores_is_named(write_config) -> None:
    path = write_config({"env_id": "kp3d/Reach-v0", "algo": "ppo", "sac": {"batch_size": 8}})
    with pytest.warns(UserWarning, match=r"section 'sac' does not apply to algo 'ppo'"):
        load_config(path)
    path = write_config({"env_id": "kp3d/Reach-v0", "algo": "sac", "unsupervised": {"steps": 2}})
    with pytest.warns(UserWarning, match=r"section 'unsupervised' does not apply to algo 'sac'"):
        load_config(path)
    # A run's saved config holds every section at its defaults: no warning.
    saved = config_to_dict(config_from_dict({"env_id": "kp3d/Reach-v0", "algo": "sac"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(write_config(saved))


def test_ppo_rounds_to_whole_rollouts_and_says_so() -> None:
    from agents.training import trained_steps

    config = config_from_dict({"env_id": "kp3d/Reach-v0", "n_envs": 4, "ppo": {"n_steps": 256}})
    assert trained_steps(config, 512) == 1024 and trained_steps(config, 2048) == 2048
    sac = config_from_dict({"env_id": "kp3d/Reach-v0", "algo": "sac"})
    assert trained_steps(sac, 512) == 512


def test_defaults_are_the_reference_ppo_hyperparameters() -> None:
    config = config_from_dict({"env_id": "kp3d/Reach-v0"})
    ppo = config.ppo
    assert (ppo.learning_rate, ppo.gamma, ppo.gae_lambda, ppo.clip_range) == (3e-4, 0.99, 0.95, 0.2)
    assert (ppo.batch_size, ppo.n_epochs, ppo.normalize_reward) == (64, 8, True)
    assert config.unsupervised.max_grad_norm == 1.5
    assert config.device == "auto"


def test_overrides_parse_yaml_scalars_into_nested_sections(write_config) -> None:
    path = write_config({"env_id": "kp3d/Reach-v0", "perception": {"kwargs": {"mean_depth": 1}}})
    config = load_config(
        path,
        [
            "ppo.learning_rate=1e-4",
            "n_timesteps=2e5",
            "ppo.target_kl=0.12",
            "perception.kwargs.num_keypoints=6",
            "eval.deterministic=false",
            "ppo.net_arch=[32, 32]",
            "device=cpu",
        ],
    )
    assert config.ppo.learning_rate == pytest.approx(1e-4)
    assert config.n_timesteps == 200_000 and isinstance(config.n_timesteps, int)
    assert config.ppo.target_kl == pytest.approx(0.12)
    assert config.perception.kwargs == {"mean_depth": 1, "num_keypoints": 6}
    assert config.eval.deterministic is False
    assert config.ppo.net_arch == [32, 32]
    assert config.device == "cpu"
    assert config.exp_name == path.stem
    state = load_config(path, ["perception.name=null", "env_kwargs.obs_mode=state"])
    assert state.perception.name is None and state.env_kwargs == {"obs_mode": "state"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"env_id": "kp3d/Reach-v0", "n_timestep": 5}, r"unknown key 'n_timestep'.*n_timesteps"),
        ({"env_id": "kp3d/Reach-v0", "ppo": {"lr": 1}}, r"'ppo.lr'.*of 'ppo'.*learning_rate"),
        ({"env_id": "kp3d/Reach-v0", "unsupervised": {"stepz": 1}}, r"buffer_size.*steps"),
        ({"env_id": "kp3d/Reach-v0", "ppo": {"n_steps": "many"}}, r"'ppo.n_steps' must be int"),
        ({"env_id": "kp3d/Reach-v0", "n_envs": 2.5}, r"'n_envs' must be int"),
        ({"env_id": "kp3d/Reach-v0", "algo": "dqn"}, r"'algo' must be 'ppo' or 'sac'"),
        ({"env_id": "kp3d/Reach-v0", "perception": 3}, r"section 'perception' must be a mapping"),
        ({"env_id": "kp3d/Reach-v0", "ppo": {"net_arch": [64, "x"]}}, r"'ppo.net_arch\[1\]'"),
        ({"algo": "ppo"}, r"missing required key 'env_id'"),
    ],
)
def test_bad_keys_and_values_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_bad_override_syntax_is_refused(write_config) -> None:
    path = write_config({"env_id": "kp3d/Reach-v0"})
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(path, ["ppo.learning_rate"])
    with pytest.raises(ConfigError, match=r"'ppo\.learning_rate' is not a section"):
        load_config(path, ["ppo.learning_rate=1", "ppo.learning_rate.x=2"])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("env_id: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(listing)


def test_saved_config_loads_back_identical(tmp_path: Path) -> None:
    config = config_from_dict(
        {"env_id": "kp3d/Push-v0", "exp_name": "x", "perception": {"kwargs": {"noise": 0.1}}}
    )
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"env_id": "kp3d/Nope-v0"}, r"unknown env_id 'kp3d/Nope-v0'.*kp3d/Reach-v0"),
        ({"env_id": "kp3d/Reach-v0", "perception": {"name": "nope"}}, r"available: \["),
        ({"env_id": "kp3d/Reach-v0", "perception": {"name": None}}, r"obs_mode: state"),
        (
            {"env_id": "kp3d/Reach-v0", "env_kwargs": {"obs_mode": "state"}},
            r"perception.name: null",
        ),
        ({"env_id": "kp3d/Reach-v0", "n_envs": 0}, r"'n_envs' must be at least 1"),
        ({"env_id": "kp3d/Reach-v0", "ppo": {"batch_size": 4096}}, r"exceeds a rollout"),
    ],
)
def test_check_config_names_what_is_wrong(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(config_from_dict(data))


def test_unknown_perception_kwargs_list_the_valid_ones() -> None:
    config = config_from_dict(
        {"env_id": "kp3d/Reach-v0", "perception": {"kwargs": {"num_keypoint": 4}}}
    )
    with pytest.raises(ConfigError, match=r"\['num_keypoint'\].*mean_depth.*num_keypoints"):
        check_config(config)


def test_the_config_reference_page_matches_the_code() -> None:
    from agents.config_reference import config_reference

    page = (CONFIG_DIR.parent / "docs" / "config.md").read_text()
    assert page == config_reference(), (
        "regenerate: python -m agents.config_reference > docs/config.md"
    )
    for key in ("`n_timesteps`", "`perception.pretrain.frames`", "`sac.ent_coef`", "`video.freq`"):
        assert key in page
