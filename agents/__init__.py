"""Agents: Stable-Baselines3 glue for the perception modules, and the ``kp3d`` command line.

Where things live (arrows run agents → envs → kp3d; ``make lint`` checks it):

- runs: :mod:`~agents.runs` (run directories, locks, config file, logger, device, seeds and
  threads — one route for train, pretrain, datasets and benchmarks), :mod:`~agents.config` and
  :mod:`~agents.config_checks` (YAML configs and their valid ranges), :mod:`~agents.checkpoints`
  (checkpoint files, read without unpickling);
- the agent: :mod:`~agents.builder` (envs, perception, SB3 algorithm from a config; loading a
  trained one back: :func:`load`, ``load_policy``), :mod:`~agents.extractor` (a perception as
  SB3 features extractor), :mod:`~agents.features` (a frozen perception in front of the policy),
  :mod:`~agents.pretrained` (``perception.pretrained`` checkpoints), :mod:`~agents.ppo` and
  :mod:`~agents.sac` (SB3 subclasses), :mod:`~agents.buffers`, :mod:`~agents.environment`;
- running it: :mod:`~agents.training` (:func:`train` via :mod:`~agents.pipeline`,
  :func:`resume`), :mod:`~agents.evaluation` (:func:`evaluate`), :mod:`~agents.callbacks`;
- seeing it: :mod:`~agents.rollouts` (episodes with the perception's outputs),
  :mod:`agents.video` (drawing, frame composition, writing), :mod:`~agents.render`
  (:func:`render_rollout`, :func:`render_video`), :mod:`~agents.plot` (learning curves);
- many runs: :mod:`~agents.sweep` (``kp3d sweep`` on Ray Tune, Optuna searches),
  :mod:`~agents.report` (``kp3d report``: IQM and bootstrap intervals by rliable);
- data: :mod:`~agents.dataset` (``kp3d dataset``), :mod:`~agents.pretrain` and
  :mod:`~agents.probing` (``kp3d pretrain`` and its held-out metrics);
- :mod:`~agents.cli`: the ``kp3d`` command (``sweep`` and ``report`` in
  :mod:`~agents.cli_sweep`); a new command is a ``_cmd_<name>`` function and a subparser there.

``import agents`` stays cheap (env worker processes import it): torch and SB3 load when one of the
names below is first used.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "train": "agents.pipeline",
    "resume": "agents.training",
    "load": "agents.builder",
    "evaluate": "agents.evaluation",
    "load_config": "agents.config",
    "TrainConfig": "agents.config",
    "ConfigError": "agents.config",
    "PerceptionExtractor": "agents.extractor",
    "PerceptionPPO": "agents.ppo",
    "PerceptionSAC": "agents.sac",
    "CameraMatricesObservation": "envs.observations",
    "render_rollout": "agents.render",
    "render_video": "agents.render",
    "plot_learning_curves": "agents.plot",
    "run_sweep": "agents.sweep",
    "write_report": "agents.report",
    "write_dataset": "agents.dataset",
    "resume_pretrain": "agents.pretrain",
    "load_pretrain_config": "agents.pretrain",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
