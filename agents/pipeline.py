"""From nothing to a trained agent in one ``kp3d train``: dataset, pretraining, agent.

When a config has ``perception.pretrain`` (:class:`agents.config.PretrainRecipe`), :func:`train`

1. writes a random-policy dataset of the env (:func:`agents.dataset.write_dataset`) under
   ``<runs>/cache/datasets/``,
2. pretrains the perception on it (:func:`agents.pretrain.pretrain`) under
   ``<runs>/cache/pretrain/``,
3. trains the agent from that checkpoint (``perception.pretrained``; with ``perception.freeze``
   on its features, :mod:`agents.features`).

Each cache directory is named by a hash of everything that decides its content (env, its
arguments, frames and seed; then the perception, its hyperparameters and the recipe), so a later
run with the same settings reuses it, a run with other settings never does, and an interrupted
stage continues where it stopped (datasets and pretraining runs both resume). The task-dependent
hyperparameters that the config leaves out (``num_keypoints``, ``mean_depth``) come from the env
(:func:`envs.perception_defaults`); the run's saved config records the values used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from agents.config import ConfigError, TrainConfig
from agents.config_checks import check_config
from agents.dataset import write_dataset
from agents.pretrain import (
    CHECKPOINT_FILE,
    PretrainConfig,
    PretrainPerceptionConfig,
    pretrain,
    resume_pretrain,
)
from agents.runs import check_new_run_dir, lock_run_dir
from agents.training import EvaluationHook
from agents.training import train as train_agent
from kp3d.perception import load_perception_checkpoint, perception_hyperparameters

CACHE_DIR = "cache"
"""Below the runs' root: the datasets and pretrained perceptions of recipes."""

DATASET_ARGUMENTS = ("size",)
"""The env arguments a recipe's dataset can be written with (those of ``kp3d dataset``)."""


def cache_key(payload: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable mapping."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def recipe_kwargs(config: TrainConfig) -> dict[str, Any]:
    """``perception.kwargs`` with the env's suggestions for the task-dependent hyperparameters the
    perception takes and the config leaves out."""
    from envs import perception_defaults

    name = str(config.perception.name)
    taken = set(perception_hyperparameters(name))
    suggested = perception_defaults(config.env_id, config.env_kwargs)
    return {
        **{key: value for key, value in suggested.items() if key in taken},
        **config.perception.kwargs,
    }


def _progress(message: str, config: TrainConfig) -> None:
    if config.verbose >= 1:
        print(message, flush=True)


def prepare_perception(config: TrainConfig, runs_root: str | Path = "runs") -> TrainConfig:
    """Run the ``perception.pretrain`` recipe's dataset and pretraining stages (or reuse their
    cached results); return the config with ``perception.pretrained`` set to the checkpoint and
    ``perception.kwargs`` to the hyperparameters used. A config without a recipe is returned as
    it is.

    Raises:
        ConfigError: for a recipe together with ``perception.pretrained``, or env arguments a
            dataset cannot be written with.
    """
    perception = config.perception
    recipe = perception.pretrain
    if recipe is None or perception.name is None:
        return config
    if perception.pretrained is not None:
        raise ConfigError(
            "'perception.pretrain' (pretrain first) and 'perception.pretrained' (start from this "
            "checkpoint) are both set: keep one"
        )
    unsupported = sorted(set(config.env_kwargs) - {*DATASET_ARGUMENTS, "obs_mode"})
    if unsupported:
        raise ConfigError(
            f"'perception.pretrain' writes its dataset with `kp3d dataset`, which takes the env "
            f"arguments {list(DATASET_ARGUMENTS)}; env_kwargs also set {unsupported}: pretrain "
            "with `kp3d dataset` and `kp3d pretrain` yourself and set perception.pretrained"
        )
    cache = Path(runs_root) / CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    # Runs started together with one recipe (a sweep's seeds) take turns: the first writes the
    # dataset and pretrains, the others wait and reuse them.
    with lock_run_dir(cache, wait=True):
        return _prepare(config, cache)


def _prepare(config: TrainConfig, cache: Path) -> TrainConfig:
    """The dataset and pretraining stages of :func:`prepare_perception`, under the cache's lock."""
    perception = config.perception
    recipe = perception.pretrain
    assert recipe is not None
    env_name = config.env_id.replace("/", "-")
    size = config.env_kwargs.get("size")
    data_identity = {
        "env_id": config.env_id,
        "size": size,
        "frames": recipe.frames,
        "seed": recipe.seed,
    }
    data = cache / "datasets" / f"{env_name}__{cache_key(data_identity)}"
    _progress(f"[1/3] dataset: {recipe.frames} random-policy frames in {data}", config)
    write_dataset(
        config.env_id,
        recipe.frames,
        data,
        size=size,
        seed=recipe.seed,
        progress=config.progress_bar,
    )

    kwargs = recipe_kwargs(config)
    pretrain_config = PretrainConfig(
        dataset=str(data),
        perception=PretrainPerceptionConfig(str(perception.name), dict(kwargs)),
        exp_name="pretrain",
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        eval_every=0,
        checkpoint_every=500,
        seed=recipe.seed,
        device=config.device,
        torch_threads=config.torch_threads,
        progress_bar=config.progress_bar,
    )
    settings = dataclasses.asdict(pretrain_config)
    for volatile in ("dataset", "device", "torch_threads", "progress_bar", "checkpoint_every"):
        del settings[volatile]  # the dataset by what it holds; the rest changes no result
    identity = {"data": data_identity, **settings}
    run = cache / "pretrain" / f"{env_name}__{perception.name}__{cache_key(identity)}"
    checkpoint = run / CHECKPOINT_FILE
    if checkpoint.is_file():
        step = int(load_perception_checkpoint(checkpoint)["extra"]["step"])
        if step < recipe.steps:
            _progress(f"[2/3] pretraining: continuing {run} from step {step}", config)
            resume_pretrain(run)
        else:
            _progress(f"[2/3] pretraining: reusing {checkpoint}", config)
    else:
        if run.exists():
            shutil.rmtree(run)  # a start that failed before its first checkpoint: nothing to keep
        _progress(f"[2/3] pretraining {perception.name} for {recipe.steps} steps in {run}", config)
        pretrain(pretrain_config, run)
    _progress("[3/3] agent", config)
    resolved = dataclasses.replace(perception, kwargs=kwargs, pretrained=str(checkpoint))
    return dataclasses.replace(config, perception=resolved)


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    on_evaluation: EvaluationHook | None = None,
) -> Path:
    """Train an agent as ``config`` says, pretraining its perception first when the config has a
    ``perception.pretrain`` recipe (:func:`prepare_perception`); return the run directory.

    Arguments and errors as :func:`agents.training.train`.
    """
    check_config(config)
    if run_dir is not None:
        check_new_run_dir(Path(run_dir))  # before the long stages, not after them
    return train_agent(prepare_perception(config, runs_root), run_dir, runs_root, on_evaluation)


__all__ = ["CACHE_DIR", "cache_key", "prepare_perception", "recipe_kwargs", "train"]
