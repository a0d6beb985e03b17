"""What a training config's types cannot say: the valid range of every number, names that become
parts of paths, the env id and its keyword arguments, the perception and its hyperparameters.

:func:`check_config` runs before a run directory is made (``kp3d train``, ``--resume`` with
``--set``, the pipeline), so that a bad value is a one-line :class:`~agents.config.ConfigError`
naming the key and its valid range instead of a traceback, or a run that trains on nonsense
(``ppo.gamma: 2``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agents.config import ConfigError, TrainConfig, config_to_dict


@dataclass(frozen=True)
class Range:
    """A closed or open interval; ``None`` ends are unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def __str__(self) -> str:
        if self.high is None:
            return f"{'greater than' if self.low_open else 'at least'} {_number(self.low)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


def _number(value: float | None) -> str:
    return f"{int(value)}" if value is not None and float(value).is_integer() else f"{value:g}"


COUNT = Range(1)
"""At least one."""
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
BATCH = Range(2)
"""A batch that trains a network with batch statistics (one sample has none)."""
FRACTION = Range(0, 1)
LEARNING_RATE = Range(0, 1, low_open=True)
SEED = Range(0, 2**32 - 1)
"""NumPy's seed range."""

RANGES: dict[str, Range] = {
    "n_timesteps": COUNT,
    "n_envs": COUNT,
    "seed": SEED,
    "checkpoint_freq": NON_NEGATIVE,
    "torch_threads": COUNT,
    "perception.aux_loss_coef": NON_NEGATIVE,
    "perception.aux_batch_size": BATCH,
    "perception.max_grad_norm": POSITIVE,
    "perception.projection_dim": COUNT,
    "perception.pretrain.frames": COUNT,
    "perception.pretrain.steps": COUNT,
    "perception.pretrain.batch_size": BATCH,
    "perception.pretrain.learning_rate": LEARNING_RATE,
    "perception.pretrain.seed": SEED,
    "ppo.learning_rate": LEARNING_RATE,
    "ppo.n_steps": COUNT,
    "ppo.batch_size": BATCH,
    "ppo.n_epochs": COUNT,
    "ppo.gamma": FRACTION,
    "ppo.gae_lambda": FRACTION,
    "ppo.clip_range": POSITIVE,
    "ppo.ent_coef": NON_NEGATIVE,
    "ppo.vf_coef": NON_NEGATIVE,
    "ppo.max_grad_norm": POSITIVE,
    "ppo.target_kl": POSITIVE,
    "ppo.net_arch[]": COUNT,
    "sac.learning_rate": LEARNING_RATE,
    "sac.buffer_size": COUNT,
    "sac.learning_starts": NON_NEGATIVE,
    "sac.batch_size": BATCH,
    "sac.tau": Range(0, 1, low_open=True),
    "sac.gamma": FRACTION,
    "sac.train_freq": COUNT,
    "sac.gradient_steps": NON_NEGATIVE,
    "sac.ent_coef": POSITIVE,
    "sac.net_arch[]": COUNT,
    "unsupervised.steps": NON_NEGATIVE,
    "unsupervised.batch_size": BATCH,
    "unsupervised.buffer_size": COUNT,
    "unsupervised.learning_rate": LEARNING_RATE,
    "unsupervised.max_grad_norm": POSITIVE,
    "eval.freq": NON_NEGATIVE,
    "eval.episodes": COUNT,
    "video.freq": NON_NEGATIVE,
    "video.episodes": COUNT,
    "video.max_steps": COUNT,
    "verbose": Range(0, 2),
}
"""The valid range of every numeric key (``[]``: each item of a list). ``null`` values of
optional keys are not checked."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
"""Names that become a part of a path (``exp_name``): letters, digits, ``. _ + -``, no
separators, not starting with a dot."""

ENT_COEF_PATTERN = re.compile(r"auto(_[0-9.eE+-]+)?")


def _numbers(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str, float]]:
    """``(key, range key, value)`` of every number in a nested config mapping."""
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name in ("env_kwargs", "kwargs"):
            continue  # free-form: checked by the env and the perception themselves
        if isinstance(value, Mapping):
            yield from _numbers(value, f"{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield f"{key}[{i}]", f"{key}[]", float(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, key, float(value)


def check_name(key: str, value: str) -> None:
    """A name that becomes part of a path must not leave its folder (``x/../../escaped``).

    Raises:
        ConfigError: naming the key and the characters allowed.
    """
    if not NAME_PATTERN.fullmatch(value) or value.strip(".") == "":
        raise ConfigError(
            f"{key!r} becomes part of the run directory's name and must be 1-128 letters, digits "
            f"or '._+-', not starting with '.' or '-'; got {value!r}"
        )


def check_ranges(config: TrainConfig) -> None:
    """Every number finite and in its :data:`RANGES` interval.

    Raises:
        ConfigError: naming the key, the value and the valid range.
    """
    for key, range_key, value in _numbers(config_to_dict(config)):
        if not math.isfinite(value):
            raise ConfigError(f"{key!r} must be a finite number; got {value}")
        valid = RANGES.get(range_key)
        if valid is not None and value not in valid:
            raise ConfigError(f"{key!r} must be {valid}; got {value:g}")
    ent_coef = config.sac.ent_coef
    if isinstance(ent_coef, str) and not ENT_COEF_PATTERN.fullmatch(ent_coef):
        raise ConfigError(
            f"'sac.ent_coef' must be a positive number, 'auto' or 'auto_<initial value>' "
            f"(e.g. auto_0.1); got {ent_coef!r}"
        )


def check_device(device: str) -> None:
    """``auto``, or a device torch can name (``cpu``, ``cuda``, ``cuda:1``, ``mps``...).

    Raises:
        ConfigError: for a string torch does not read as a device.
    """
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"'device' must be auto, cpu, cuda, cuda:<index> or another torch device; "
            f"got {device!r}"
        ) from None


def check_perception_choice(name: str, kwargs: Mapping[str, Any]) -> None:
    """Check that ``perception.name`` is registered and takes every key of ``perception.kwargs``
    (their values are checked when the module is built for its cameras).

    Raises:
        ConfigError: listing the available perceptions, or the valid hyperparameters.
    """
    from kp3d.perception import available_perceptions, perception_hyperparameters

    if name not in available_perceptions():
        raise ConfigError(
            f"unknown 'perception.name' {name!r}; available: {available_perceptions()}"
        )
    valid = perception_hyperparameters(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown 'perception.kwargs' {unknown} for {name!r}; valid: {', '.join(valid)}"
        )


def check_config(config: TrainConfig) -> None:
    """Check what the types alone cannot: ranges, names, the device, the env id, the perception
    and the names of its ``kwargs`` (their values, and ``env_kwargs``, are checked when a run
    builds the env and the module for its cameras, before its directory is made).

    Raises:
        ConfigError: naming the key at fault and what would be valid.
    """
    import gymnasium as gym

    import envs  # noqa: F401  (registers the kp3d ids)

    if config.exp_name is not None:
        check_name("exp_name", config.exp_name)
    check_ranges(config)
    check_device(config.device)
    if config.env_id not in gym.registry:
        kp3d_ids = sorted(i for i in gym.registry if i.startswith("kp3d/"))
        raise ConfigError(f"unknown env_id {config.env_id!r}; kp3d environments: {kp3d_ids}")
    if config.ppo.batch_size > config.ppo.n_steps * config.n_envs and config.algo == "ppo":
        raise ConfigError(
            f"'ppo.batch_size' ({config.ppo.batch_size}) exceeds a rollout of "
            f"n_steps * n_envs = {config.ppo.n_steps * config.n_envs} transitions"
        )
    state_mode = config.env_kwargs.get("obs_mode", "pixels") == "state"
    name = config.perception.name
    if name is None and not state_mode:
        raise ConfigError(
            "'perception.name' is null (a state-based policy) but the env observes pixels: "
            "set env_kwargs.obs_mode: state, or name a perception"
        )
    if name is not None and state_mode:
        raise ConfigError(
            f"'perception.name' is {name!r} but env_kwargs.obs_mode is 'state' (no images): "
            "set perception.name: null for a state-based run"
        )
    if name is not None:
        check_perception_choice(name, config.perception.kwargs)
    if config.perception.pretrain is not None and name is None:
        raise ConfigError(
            "'perception.pretrain' pretrains a perception, but 'perception.name' is null"
        )


__all__ = [
    "RANGES",
    "Range",
    "check_config",
    "check_device",
    "check_name",
    "check_perception_choice",
    "check_ranges",
]
