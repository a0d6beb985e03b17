"""Training runs: build the envs and the agent from a config, learn, checkpoint, resume.

A run lives in one directory, by default ``runs/{env}__{exp_name}__{seed}__{unix time}``
(CleanRL's naming, with the env id's ``/`` as ``-``)::

    config.yaml        the resolved config (every field)
    model.zip          the latest checkpoint: policy, optimizers, step count (SB3 zip)
    perception.pt      the frozen perception the policy acts through (``perception.freeze``)
    vecnormalize.pkl   reward normalisation statistics, when rewards are normalised
    replay_buffer.pkl  SAC's replay buffer, when sac.save_replay_buffer is set
    logs/              TensorBoard event files and progress*.csv
    eval/              evaluations.npz of the periodic evaluations (SB3 EvalCallback)
    videos/            rollout videos: step_<N>.mp4 (config ``video``), rollout.mp4
                       (``kp3d render``), eval.mp4 (``kp3d eval --video``)

Checkpoints are written every ``checkpoint_freq`` steps, at the end, and on Ctrl-C, each file to
a temporary name in the same directory and then renamed (``os.replace``), so that an interrupted
write never leaves a broken checkpoint. :func:`resume` continues a run from its checkpoint with
the same optimizer state and step count, up to the config's ``n_timesteps``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from agents.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_config,
    config_from_dict,
    config_to_dict,
    save_config,
)
from agents.environment import CameraLayout, build_vec_env, camera_layout
from agents.extractor import PerceptionExtractor, perception_extractor
from agents.features import FeatureEncoder, PerceptionFeatures
from agents.ppo import PerceptionPPO
from agents.runs import (
    LOG_DIR,
    RunDirectoryError,
    check_new_run_dir,
    make_logger,
    new_run_dir,
    resolve_device,
    set_torch_threads,
)
from agents.sac import PerceptionSAC
from kp3d.files import atomic_write
from kp3d.interrupts import DeferredInterrupt

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.zip"
PERCEPTION_FILE = "perception.pt"
VEC_NORMALIZE_FILE = "vecnormalize.pkl"
REPLAY_BUFFER_FILE = "replay_buffer.pkl"
EVAL_DIR = "eval"

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PerceptionPPO, "sac": PerceptionSAC}
"""``config.algo`` → algorithm class."""

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}

RESUMABLE_KEYS = (
    "n_timesteps",
    "checkpoint_freq",
    "eval",
    "video",
    "device",
    "torch_threads",
    "progress_bar",
    "verbose",
)
"""Config keys a resumed run may change (``--set``); the others define the agent."""

EVAL_SEED_OFFSET = 10_000
"""The evaluation env's seed is the run's seed plus this, away from the training envs' seeds."""


class StopOnInterrupt(BaseCallback):
    """Stops ``learn`` at the next env step once a :class:`~kp3d.interrupts.DeferredInterrupt`
    has recorded a Ctrl-C."""

    def __init__(self, interrupt: DeferredInterrupt) -> None:
        super().__init__()
        self.interrupt = interrupt

    def _on_step(self) -> bool:
        return not self.interrupt.requested


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the resumable checkpoint was saved.

    Attributes:
        run_dir: the run, to pass to :func:`resume`.
        num_timesteps: env steps done.
    """

    def __init__(self, run_dir: Path, num_timesteps: int) -> None:
        super().__init__(f"training interrupted at step {num_timesteps}; resume {run_dir}")
        self.run_dir = run_dir
        self.num_timesteps = num_timesteps


# -- run directories and checkpoints --------------------------------------------------------------


def run_name(config: TrainConfig, timestamp: int | None = None) -> str:
    """``{env}__{exp_name}__{seed}__{unix time}``, the env id's ``/`` written as ``-``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"{config.env_id.replace('/', '-')}__{config.exp_name}__{config.seed}__{stamp}"


def create_run_dir(config: TrainConfig, run_dir: str | Path | None, root: str | Path) -> Path:
    """Make a fresh run directory: ``run_dir`` if given (it must not hold anything yet), else
    :func:`run_name` under ``root`` (with a ``_2``, ``_3``... suffix if taken)."""
    return new_run_dir(run_dir, Path(root) / run_name(config))


def save_checkpoint(model: BaseAlgorithm, run_dir: Path, replay_buffer: bool = False) -> None:
    """Write the model (with optimizers and step count), the ``VecNormalize`` statistics and,
    if asked, the replay buffer into ``run_dir``, each file atomically."""
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        atomic_write(run_dir / VEC_NORMALIZE_FILE, vec_normalize.save)
    if replay_buffer and hasattr(model, "save_replay_buffer"):
        atomic_write(run_dir / REPLAY_BUFFER_FILE, model.save_replay_buffer)
    atomic_write(run_dir / MODEL_FILE, model.save)


class CheckpointCallback(BaseCallback):
    """Saves a resumable checkpoint (:func:`save_checkpoint`) every ``freq`` env steps."""

    def __init__(self, run_dir: Path, freq: int, replay_buffer: bool = False) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.freq = freq
        self.replay_buffer = replay_buffer
        self._saved_at = 0

    def _init_callback(self) -> None:
        self._saved_at = self.num_timesteps // self.freq

    def _on_step(self) -> bool:
        if self.num_timesteps // self.freq > self._saved_at:
            self._saved_at = self.num_timesteps // self.freq
            save_checkpoint(self.model, self.run_dir, self.replay_buffer)
        return True


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config of a run directory."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{str(run_dir)!r} is not a kp3d run directory (no {CONFIG_FILE})")
    return config_from_dict(yaml.safe_load(path.read_text()))


# -- building the agent ---------------------------------------------------------------------------


def pretrained_checkpoint(config: TrainConfig, layout: CameraLayout | None) -> dict | None:
    """The ``perception.pretrained`` checkpoint, checked against the config and the cameras
    (:func:`agents.pretrain.pretrained_perception`); ``None`` when the config names none."""
    if config.perception.pretrained is None or layout is None:
        return None
    from agents.pretrain import pretrained_perception

    return pretrained_perception(config.perception, layout.names, layout.image_size)


def perception_kwargs(config: TrainConfig, layout: CameraLayout | None) -> dict[str, Any]:
    """The perception's hyperparameters: ``perception.kwargs``, or a pretrained checkpoint's."""
    checkpoint = pretrained_checkpoint(config, layout)
    return dict(checkpoint["kwargs"] if checkpoint else config.perception.kwargs)


def check_perception(config: TrainConfig, layout: CameraLayout | None) -> None:
    """Build the configured perception once for the env's cameras, so that bad ``kwargs`` (or a
    pretrained checkpoint that does not fit) fail before any env or model is built
    (``ConfigError`` quoting the module's message)."""
    if config.perception.name is None or layout is None:
        return
    from kp3d.perception import make_perception

    kwargs = perception_kwargs(config, layout)
    try:
        make_perception(
            config.perception.name,
            num_cameras=len(layout.names),
            image_size=layout.image_size,
            **kwargs,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"'perception.kwargs': {error}") from None


def frozen_perception(config: TrainConfig) -> bool:
    """Whether the run's perception is frozen, i.e. runs outside the policy
    (:mod:`agents.features`)."""
    return config.perception.name is not None and config.perception.freeze


def feature_encoder(
    config: TrainConfig, layout: CameraLayout | None, run_dir: Path | None = None
) -> FeatureEncoder | None:
    """The frozen perception of a ``perception.freeze`` run as a :class:`FeatureEncoder`
    (``None`` for other runs).

    It is read from the run's ``perception.pt`` when there is one; otherwise it is built from
    ``perception.pretrained`` (or, without one, initialised with the run's seed: a fixed random
    network) and, given ``run_dir``, written there, so that the run keeps the perception its
    policy was trained with.
    """
    if not frozen_perception(config) or layout is None:
        return None
    import torch

    from kp3d.perception import load_perception, make_perception, save_perception

    path = None if run_dir is None else Path(run_dir) / PERCEPTION_FILE
    if path is not None and path.is_file():
        module = load_perception(path)
    else:
        checkpoint = pretrained_checkpoint(config, layout)
        torch.manual_seed(config.seed)
        module = make_perception(
            str(config.perception.name),
            num_cameras=len(layout.names),
            image_size=layout.image_size,
            **perception_kwargs(config, layout),
        )
        if checkpoint is not None:
            module.load_state_dict(checkpoint["state_dict"])
        if path is not None:
            save_perception(module, path, pretrained=config.perception.pretrained)
    device = resolve_device(config.device)
    return FeatureEncoder(module, layout, config.perception.use_state, device)


def policy_arguments(config: TrainConfig, layout: CameraLayout | None) -> tuple[str, dict]:
    """The SB3 policy name and ``policy_kwargs`` of a config (``MlpPolicy`` on states, and on
    a frozen perception's features)."""
    section = config.ppo if config.algo == "ppo" else config.sac
    kwargs: dict[str, Any] = {
        "net_arch": list(section.net_arch),
        "activation_fn": ACTIVATIONS[section.activation],
    }
    if config.perception.name is None or layout is None or frozen_perception(config):
        return "MlpPolicy", kwargs
    kwargs["features_extractor_class"] = PerceptionExtractor
    kwargs["features_extractor_kwargs"] = {
        "perception": config.perception.name,
        "camera_names": list(layout.names),
        "intrinsics": layout.intrinsics.tolist(),
        "extrinsics": None if layout.any_moving else layout.extrinsics.tolist(),
        "perception_kwargs": perception_kwargs(config, layout),
        "use_state": config.perception.use_state,
        "projection_dim": config.perception.projection_dim,
    }
    return "MultiInputPolicy", kwargs


def ppo_arguments(config: TrainConfig) -> dict[str, Any]:
    """SB3 ``PPO`` keyword arguments of a config's ``ppo`` section."""
    ppo = config.ppo
    return {
        "learning_rate": ppo.learning_rate,
        "n_steps": ppo.n_steps,
        "batch_size": ppo.batch_size,
        "n_epochs": ppo.n_epochs,
        "gamma": ppo.gamma,
        "gae_lambda": ppo.gae_lambda,
        "clip_range": ppo.clip_range,
        "ent_coef": ppo.ent_coef,
        "vf_coef": ppo.vf_coef,
        "max_grad_norm": ppo.max_grad_norm,
        "target_kl": ppo.target_kl,
    }


def sac_arguments(config: TrainConfig) -> dict[str, Any]:
    """SB3 ``SAC`` keyword arguments of a config's ``sac`` section."""
    sac = config.sac
    return {
        "learning_rate": sac.learning_rate,
        "buffer_size": sac.buffer_size,
        "learning_starts": sac.learning_starts,
        "batch_size": sac.batch_size,
        "tau": sac.tau,
        "gamma": sac.gamma,
        "train_freq": sac.train_freq,
        "gradient_steps": sac.gradient_steps,
        "ent_coef": sac.ent_coef,
    }


def build_model(config: TrainConfig, env: VecEnv, layout: CameraLayout | None) -> BaseAlgorithm:
    """A fresh :class:`~agents.ppo.PerceptionPPO` or :class:`~agents.sac.PerceptionSAC`, its
    perception starting from ``perception.pretrained`` when the config names a checkpoint and
    told the env's empty scene (:meth:`~kp3d.perception.Perception.set_background`). A frozen
    perception is not part of the model: ``env`` holds it (:func:`make_run_env`)."""
    model = _build_algorithm(config, env, layout)
    if perception_extractor(model.policy) is None:
        return model
    checkpoint = pretrained_checkpoint(config, layout)
    if checkpoint is not None:
        from agents.pretrain import load_pretrained_weights

        load_pretrained_weights(model.policy, checkpoint)
    if layout is not None and layout.background is not None:
        import torch

        background = torch.as_tensor(layout.background).permute(0, 3, 1, 2).float() / 255.0
        for module in model.policy.modules():
            if isinstance(module, PerceptionExtractor):
                module.perception.set_background(background.to(model.device))
    return model


def _build_algorithm(
    config: TrainConfig, env: VecEnv, layout: CameraLayout | None
) -> BaseAlgorithm:
    policy, policy_kwargs = policy_arguments(config, layout)
    common = {
        "policy_kwargs": policy_kwargs,
        "seed": config.seed,
        "device": config.device,
        "verbose": config.verbose,
        "joint": config.perception.joint,
        "aux_loss_coef": config.perception.aux_loss_coef,
        "aux_batch_size": config.perception.aux_batch_size,
    }
    if config.algo == "ppo":
        unsupervised = config.unsupervised
        return PerceptionPPO(
            policy,
            env,
            **ppo_arguments(config),
            perception_max_grad_norm=config.perception.max_grad_norm,
            unsupervised_steps=unsupervised.steps,
            unsupervised_batch_size=unsupervised.batch_size,
            unsupervised_buffer_size=unsupervised.buffer_size,
            unsupervised_learning_rate=unsupervised.learning_rate,
            unsupervised_max_grad_norm=unsupervised.max_grad_norm,
            **common,
        )
    return PerceptionSAC(
        policy,
        env,
        **sac_arguments(config),
        **common,
    )


def _normalize_reward(config: TrainConfig) -> tuple[bool, float]:
    section = config.ppo if config.algo == "ppo" else config.sac
    return section.normalize_reward, section.gamma


def make_run_env(
    config: TrainConfig,
    layout: CameraLayout | None,
    n_envs: int,
    seed: int,
    training: bool,
    vec_normalize_path: Path | None = None,
    encoder: FeatureEncoder | None = None,
) -> VecEnv:
    """The vectorised env of a run (:func:`agents.environment.build_vec_env`), observing a
    frozen perception's features when ``encoder`` is given (:func:`feature_encoder`)."""
    normalize, gamma = _normalize_reward(config)
    vec_env = build_vec_env(
        config.env_id,
        config.env_kwargs,
        n_envs=n_envs,
        seed=seed,
        layout=layout,
        vectorization=config.vectorization if training else "dummy",
        normalize_reward=normalize,
        gamma=gamma,
        training=training,
        vec_normalize_path=vec_normalize_path,
        transpose_images=encoder is None,
    )
    return vec_env if encoder is None else PerceptionFeatures(vec_env, encoder)


def _progress_bar_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("tqdm", "rich"))


def _restore_evaluations(callback: EvalCallback, path: Path) -> None:
    """Carry an interrupted run's evaluation history over, so that ``evaluations.npz`` keeps it."""
    if not path.is_file():
        return
    with np.load(path) as data:
        callback.evaluations_timesteps = list(data["timesteps"])
        callback.evaluations_results = [list(r) for r in data["results"]]
        callback.evaluations_length = [list(n) for n in data["ep_lengths"]]
        if "successes" in data:
            callback.evaluations_successes = [list(s) for s in data["successes"]]


# -- the entry points -----------------------------------------------------------------------------


def train(
    config: TrainConfig, run_dir: str | Path | None = None, runs_root: str | Path = "runs"
) -> Path:
    """Train a fresh agent as ``config`` says and return its run directory.

    Args:
        config: the run's configuration.
        run_dir: where the run goes; it must not hold anything yet. Default: a new
            ``{env}__{exp_name}__{seed}__{time}`` under ``runs_root``.
        runs_root: parent of default run directories.

    Raises:
        ConfigError: for an invalid config.
        RunDirectoryError: for a ``run_dir`` that holds something.
        TrainingInterrupted: on Ctrl-C, after saving a resumable checkpoint.
    """
    if config.exp_name is None:
        raise ConfigError("'exp_name' is not set (load_config sets it to the config file's stem)")
    check_config(config)
    if run_dir is not None:
        check_new_run_dir(Path(run_dir))
    layout = camera_layout(config.env_id, config.env_kwargs)
    check_perception(config, layout)
    path = create_run_dir(config, run_dir, runs_root)
    save_config(config, path / CONFIG_FILE)
    return _learn(config, path, layout, resuming=False)


def resume(run_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """Continue a run from its latest checkpoint up to its config's ``n_timesteps``.

    The optimizers, the step count, the ``VecNormalize`` statistics (and SAC's replay buffer, if
    it was saved) continue where they were; the envs start new episodes.

    Args:
        run_dir: the run directory.
        overrides: ``key=value`` changes to the run's config, limited to
            :data:`RESUMABLE_KEYS` (e.g. ``n_timesteps=2000000`` to extend the budget).

    Raises:
        RunDirectoryError: if ``run_dir`` is not a run with a checkpoint.
        ConfigError: for an override of a key that defines the agent.
        TrainingInterrupted: on Ctrl-C, after saving a resumable checkpoint.
    """
    path = Path(run_dir)
    saved = read_run_config(path)
    if not (path / MODEL_FILE).is_file():
        raise RunDirectoryError(f"run {str(path)!r} has no checkpoint ({MODEL_FILE}) to resume")
    before = config_to_dict(saved)
    config = config_from_dict(apply_overrides(before, overrides))
    after = config_to_dict(config)
    changed = sorted(key for key in after if after[key] != before[key])
    fixed = [key for key in changed if key not in RESUMABLE_KEYS]
    if fixed:
        raise ConfigError(
            f"a resumed run keeps its agent: cannot change {fixed}; resumable keys: "
            f"{', '.join(RESUMABLE_KEYS)}"
        )
    check_config(config)
    if changed:
        save_config(config, path / CONFIG_FILE)
    layout = camera_layout(config.env_id, config.env_kwargs)
    return _learn(config, path, layout, resuming=True)


def _close(env: VecEnv) -> None:
    # After Ctrl-C, worker processes may already have exited: their pipes are gone.
    with contextlib.suppress(EOFError, OSError):
        env.close()


def _learn(config: TrainConfig, run_dir: Path, layout: CameraLayout | None, resuming: bool) -> Path:
    set_torch_threads(config.torch_threads)
    stats = run_dir / VEC_NORMALIZE_FILE
    encoder = feature_encoder(config, layout, run_dir)
    env = make_run_env(
        config,
        layout,
        config.n_envs,
        config.seed,
        training=True,
        vec_normalize_path=stats if resuming and stats.is_file() else None,
        encoder=encoder,
    )
    eval_env = None
    save_replay = config.algo == "sac" and config.sac.save_replay_buffer
    try:
        if resuming:
            model = ALGORITHMS[config.algo].load(
                run_dir / MODEL_FILE, env=env, device=config.device
            )
            # The envs are new: start fresh episodes instead of the saved last observation.
            model._last_obs = None  # type: ignore[assignment]
            replay_path = run_dir / REPLAY_BUFFER_FILE
            if save_replay and replay_path.is_file():
                model.load_replay_buffer(replay_path)  # type: ignore[attr-defined]
            elif config.algo == "sac":
                # An empty replay buffer: refill it for learning_starts steps before updating.
                model.learning_starts = model.num_timesteps + config.sac.learning_starts  # type: ignore[attr-defined]
        else:
            model = build_model(config, env, layout)
        suffix = f"_from_{model.num_timesteps}" if resuming else ""
        model.set_logger(make_logger(run_dir, config.verbose, suffix))

        callbacks: list[BaseCallback] = []
        if config.checkpoint_freq > 0:
            callbacks.append(CheckpointCallback(run_dir, config.checkpoint_freq, save_replay))
        if config.eval.freq > 0:
            eval_env = make_run_env(
                config, layout, 1, config.seed + EVAL_SEED_OFFSET, training=False, encoder=encoder
            )
            evaluation = EvalCallback(
                eval_env,
                n_eval_episodes=config.eval.episodes,
                eval_freq=max(config.eval.freq // config.n_envs, 1),
                log_path=str(run_dir / EVAL_DIR),
                deterministic=config.eval.deterministic,
                verbose=config.verbose,
            )
            if resuming:
                _restore_evaluations(evaluation, run_dir / EVAL_DIR / "evaluations.npz")
            callbacks.append(evaluation)
        if config.video.freq > 0:
            # Imported here: agents.render loads agents through agents.evaluation, which
            # imports this module.
            from agents.render import VideoCallback

            callbacks.append(
                VideoCallback(
                    run_dir,
                    config.env_id,
                    config.env_kwargs,
                    config.video.freq,
                    episodes=config.video.episodes,
                    deterministic=config.video.deterministic,
                    max_steps=config.video.max_steps,
                    seed=config.seed + EVAL_SEED_OFFSET,
                    verbose=config.verbose,
                    encoder=encoder,
                )
            )

        remaining = config.n_timesteps - model.num_timesteps
        if config.verbose >= 1:
            print(f"run: {run_dir}  ({model.num_timesteps}/{config.n_timesteps} steps done)")
        try:
            # The first Ctrl-C stops learning at the next env step (a signal raised inside a
            # ctypes call of the renderer would escape `except KeyboardInterrupt`).
            with DeferredInterrupt() as interrupt:
                if remaining > 0:
                    model.learn(
                        total_timesteps=remaining,
                        callback=[*callbacks, StopOnInterrupt(interrupt)],
                        reset_num_timesteps=not resuming,
                        progress_bar=config.progress_bar and _progress_bar_available(),
                    )
                interrupt.check()
        except KeyboardInterrupt:
            save_checkpoint(model, run_dir, save_replay)
            print(
                f"\ninterrupted at step {model.num_timesteps}/{config.n_timesteps}; checkpoint "
                f"saved in {run_dir}\nresume with: kp3d train --resume {run_dir}",
                flush=True,
            )
            raise TrainingInterrupted(run_dir, model.num_timesteps) from None
        save_checkpoint(model, run_dir, save_replay)
    finally:
        _close(env)
        if eval_env is not None:
            _close(eval_env)
    return run_dir


__all__ = [
    "ALGORITHMS",
    "CONFIG_FILE",
    "LOG_DIR",
    "MODEL_FILE",
    "PERCEPTION_FILE",
    "RESUMABLE_KEYS",
    "VEC_NORMALIZE_FILE",
    "CheckpointCallback",
    "RunDirectoryError",
    "TrainingInterrupted",
    "build_model",
    "create_run_dir",
    "feature_encoder",
    "frozen_perception",
    "make_logger",
    "make_run_env",
    "new_run_dir",
    "perception_kwargs",
    "policy_arguments",
    "pretrained_checkpoint",
    "read_run_config",
    "resume",
    "run_name",
    "sac_arguments",
    "save_checkpoint",
    "set_torch_threads",
    "train",
]
