"""Agents: Stable-Baselines3 integration of the perception modules, training runs, videos.

- :func:`train`, :func:`resume`, :func:`load`, :func:`evaluate`: runs from configs
  (:mod:`agents.training`, :mod:`agents.evaluation`), configs in :mod:`agents.config`;
- :class:`~agents.extractor.PerceptionExtractor`: any registered perception module as an SB3
  features extractor; :class:`~agents.environment.CameraMatricesObservation` for moving cameras;
- :class:`~agents.ppo.PerceptionPPO` (Keypoint3D's joint and unsupervised training) and
  :class:`~agents.sac.PerceptionSAC` (DrQ/SAC-AE-style critic-trained perception);
- :func:`render_rollout`, :func:`render_video` (:mod:`agents.render`): keypoint rollout videos of
  agents or perception modules; :func:`plot_learning_curves` (:mod:`agents.plot`): learning
  curves of runs; :mod:`agents.video`: writing MP4/GIF videos safely;
- :func:`write_dataset` (:mod:`agents.dataset`, ``kp3d dataset``) and
  :func:`agents.pretrain.pretrain`, :func:`resume_pretrain` (``kp3d pretrain``): frame datasets
  with ground truth, and offline training of perception modules on them.

``import agents`` stays cheap (env worker processes import it): torch and SB3 load when one of the
names below is first used.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "train": "agents.pipeline",
    "resume": "agents.training",
    "load": "agents.evaluation",
    "evaluate": "agents.evaluation",
    "load_config": "agents.config",
    "TrainConfig": "agents.config",
    "ConfigError": "agents.config",
    "PerceptionExtractor": "agents.extractor",
    "PerceptionPPO": "agents.ppo",
    "PerceptionSAC": "agents.sac",
    "CameraMatricesObservation": "agents.environment",
    "render_rollout": "agents.render",
    "render_video": "agents.render",
    "plot_learning_curves": "agents.plot",
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
