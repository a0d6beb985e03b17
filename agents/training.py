"""Training runs: build the envs and the agent from a config, learn, checkpoint, resume.

A run lives in one directory, by default ``runs/{env}__{exp_name}__{seed}__{unix time}``
(CleanRL's naming, with the env id's ``/`` as ``-``)::

    config.yaml        the resolved config (every field)
    model.zip          the latest checkpoint: policy, optimizers, step count (SB3 zip)
    perception.pt      the frozen perception the policy acts through (``perception.freeze``)
    vecnormalize.npz   reward normalisation statistics, when rewards are normalised
    replay_buffer.npz  SAC's replay buffer, when sac.save_replay_buffer is set
    .lock              held by the process training the run (one writer at a time)
    logs/              TensorBoard event files and progress*.csv
    eval/              evaluations.npz of the periodic evaluations (SB3 EvalCallback)
    videos/            rollout videos: step_<N>.mp4 (config ``video``), rollout.mp4
                       (``kp3d render``), eval.mp4 (``kp3d eval --video``)

Checkpoints are written every ``checkpoint_freq`` steps, at the end, and on Ctrl-C, each file to
a temporary name in the same directory and then renamed (``os.replace``), so that an interrupted
write never leaves a broken checkpoint; nothing is unpickled when they are read back
(:mod:`agents.checkpoints`). :func:`resume` continues a run from its checkpoint with the same
optimizer state and step count, up to the config's ``n_timesteps``. A run that fails during
start-up removes its directory, so that the name can be used again.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from agents.builder import (
    ALGORITHMS,
    PERCEPTION_FILE,
    build_model,
    check_perception,
    close_quietly,
    feature_encoder,
    frozen_perception,
    load_run_model,
    make_run_env,
    perception_kwargs,
    policy_arguments,
    pretrained_checkpoint,
    run_layout,
    sac_arguments,
)
from agents.callbacks import Evaluation, VideoCallback
from agents.checkpoints import (
    REPLAY_BUFFER_FILE,
    VEC_NORMALIZE_FILE,
    load_replay_buffer,
    save_checkpoint,
    saved_steps,
    warn_legacy_pickles,
)
from agents.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    save_config,
)
from agents.config_checks import check_config
from agents.environment import CameraLayout
from agents.runs import (  # the names kept in this module's namespace are re-exported
    CONFIG_FILE,
    EVAL_DIR,
    EVAL_SEED_OFFSET,
    LOG_DIR,
    MODEL_FILE,
    VIDEO_DIR,
    RunDirectoryError,
    check_new_run_dir,
    lock_run_dir,
    make_logger,
    new_run_dir,
    quoted,
    read_run_config,
    set_torch_threads,
    writing_new_run,
)
from kp3d.files import remove_stale_partials
from kp3d.interrupts import DeferredInterrupt

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


def remove_stale_files(run_dir: Path) -> None:
    """Delete the temporary files that writers killed by SIGKILL left in a run (checkpoints,
    perception, videos): :func:`kp3d.files.remove_stale_partials`."""
    for folder in (run_dir, run_dir / EVAL_DIR, run_dir / VIDEO_DIR):
        remove_stale_partials(folder)


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


def trained_steps(config: TrainConfig, remaining: int) -> int:
    """The env steps a ``learn`` of ``remaining`` steps takes: PPO collects whole rollouts of
    ``n_steps * n_envs`` steps (SB3 rounds up); SAC stops at the step asked for (within one
    ``train_freq`` of every env)."""
    if config.algo != "ppo" or remaining <= 0:
        return max(remaining, 0)
    rollout = config.ppo.n_steps * config.n_envs
    return -(-remaining // rollout) * rollout


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


EvaluationHook = Callable[[EvalCallback], None]
"""Called after each periodic evaluation with the evaluation callback (its
``evaluations_timesteps``, ``evaluations_results`` and ``evaluations_successes`` end with the new
evaluation), e.g. to report it to a hyperparameter search (:mod:`agents.sweep`)."""


class _AfterEvaluation(BaseCallback):
    """SB3's ``callback_after_eval`` hook calling an :data:`EvaluationHook`."""

    def __init__(self, hook: EvaluationHook) -> None:
        super().__init__()
        self.hook = hook

    def _on_step(self) -> bool:
        assert isinstance(self.parent, EvalCallback)
        self.hook(self.parent)
        return True


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    on_evaluation: EvaluationHook | None = None,
) -> Path:
    """Train a fresh agent as ``config`` says and return its run directory.

    Args:
        config: the run's configuration.
        run_dir: where the run goes; it must not hold anything yet. Default: a new
            ``{env}__{exp_name}__{seed}__{time}`` under ``runs_root``.
        runs_root: parent of default run directories.
        on_evaluation: called after each periodic evaluation (:data:`EvaluationHook`).

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
    layout = run_layout(config)
    check_perception(config, layout)
    path = create_run_dir(config, run_dir, runs_root)
    with writing_new_run(path, MODEL_FILE):
        save_config(config, path / CONFIG_FILE)
        return _learn(config, path, layout, resuming=False, on_evaluation=on_evaluation)


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    on_evaluation: EvaluationHook | None = None,
) -> Path:
    """Continue a run from its latest checkpoint up to its config's ``n_timesteps``.

    The optimizers, the step count, the ``VecNormalize`` statistics (and SAC's replay buffer, if
    it was saved) continue where they were; the envs start new episodes.

    Args:
        run_dir: the run directory.
        overrides: ``key=value`` changes to the run's config, limited to
            :data:`RESUMABLE_KEYS` (e.g. ``n_timesteps=2000000`` to extend the budget).
        on_evaluation: called after each periodic evaluation (:data:`EvaluationHook`).

    Raises:
        RunDirectoryError: if ``run_dir`` is not a run with a checkpoint.
        ConfigError: for an override of a key that defines the agent.
        TrainingInterrupted: on Ctrl-C, after saving a resumable checkpoint.
    """
    path = Path(run_dir)
    saved = read_run_config(path)
    if not (path / MODEL_FILE).is_file():
        raise RunDirectoryError(
            f"run {str(path)!r} has no checkpoint ({MODEL_FILE}) to resume; start a new run"
        )
    with lock_run_dir(path):
        return _resume(path, saved, overrides, on_evaluation)


def _resume(
    path: Path,
    saved: TrainConfig,
    overrides: Sequence[str],
    on_evaluation: EvaluationHook | None,
) -> Path:
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
    done = saved_steps(path / MODEL_FILE)
    if config.n_timesteps < done or (config.n_timesteps == done and "n_timesteps" in changed):
        raise ConfigError(
            f"'n_timesteps' {config.n_timesteps} is below the {done} steps run {str(path)!r} has "
            f"done; nothing was changed. To train on, --set n_timesteps=<more than {done}>"
        )
    if config.n_timesteps == done:
        print(
            f"run {quoted(path)} is complete ({done}/{config.n_timesteps} steps); nothing to do. "
            f"To train on: kp3d train --resume {quoted(path)} --set n_timesteps=<more>",
            flush=True,
        )
        return path
    if changed:
        save_config(config, path / CONFIG_FILE)
    layout = run_layout(config)
    return _learn(config, path, layout, resuming=True, on_evaluation=on_evaluation)


def _learn(
    config: TrainConfig,
    run_dir: Path,
    layout: CameraLayout | None,
    resuming: bool,
    on_evaluation: EvaluationHook | None = None,
) -> Path:
    set_torch_threads(config.torch_threads)
    remove_stale_files(run_dir)
    if resuming:
        warn_legacy_pickles(run_dir)
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
            model = load_run_model(config, run_dir, layout, env=env, device=config.device)
            # The envs are new: start fresh episodes instead of the saved last observation.
            model._last_obs = None  # type: ignore[assignment]
            replay_path = run_dir / REPLAY_BUFFER_FILE
            if save_replay and replay_path.is_file():
                load_replay_buffer(model.replay_buffer, replay_path)  # type: ignore[attr-defined]
            elif config.algo == "sac":
                # An empty replay buffer: refill it for learning_starts steps before updating.
                model.learning_starts = model.num_timesteps + config.sac.learning_starts  # type: ignore[attr-defined]
        else:
            model = build_model(config, env, layout)
        suffix = f"_from_{model.num_timesteps}" if resuming else ""
        model.set_logger(make_logger(run_dir, config.verbose >= 2, suffix))

        callbacks: list[BaseCallback] = []
        if config.checkpoint_freq > 0:
            callbacks.append(CheckpointCallback(run_dir, config.checkpoint_freq, save_replay))
        if config.eval.freq > 0:
            eval_env = make_run_env(
                config, layout, 1, config.seed + EVAL_SEED_OFFSET, training=False, encoder=encoder
            )
            evaluation = Evaluation(
                eval_env,
                n_eval_episodes=config.eval.episodes,
                eval_freq=max(config.eval.freq // config.n_envs, 1),
                log_path=str(run_dir / EVAL_DIR),
                deterministic=config.eval.deterministic,
                report=config.verbose >= 1,
                callback_after_eval=None
                if on_evaluation is None
                else _AfterEvaluation(on_evaluation),
            )
            if resuming:
                _restore_evaluations(evaluation, run_dir / EVAL_DIR / "evaluations.npz")
            callbacks.append(evaluation)
        if config.video.freq > 0:
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
            rounded = trained_steps(config, remaining)
            if rounded != remaining:
                print(
                    f"note: PPO trains whole rollouts of n_steps x n_envs = "
                    f"{config.ppo.n_steps * config.n_envs} steps: {remaining} steps to go become "
                    f"{rounded}",
                    flush=True,
                )
        started = time.perf_counter()
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
                f"saved in {run_dir}\nresume with: kp3d train --resume {quoted(run_dir)}",
                flush=True,
            )
            raise TrainingInterrupted(run_dir, model.num_timesteps) from None
        save_checkpoint(model, run_dir, save_replay)
        if config.verbose >= 1 and remaining > 0:
            minutes = (time.perf_counter() - started) / 60
            print(
                f"trained to step {model.num_timesteps} in {minutes:.1f} min; checkpoint: "
                f"{run_dir / MODEL_FILE}",
                flush=True,
            )
    finally:
        close_quietly(env)
        if eval_env is not None:
            close_quietly(eval_env)
    return run_dir


__all__ = [
    "ALGORITHMS",
    "CONFIG_FILE",
    "LOG_DIR",
    "MODEL_FILE",
    "PERCEPTION_FILE",
    "REPLAY_BUFFER_FILE",
    "RESUMABLE_KEYS",
    "VEC_NORMALIZE_FILE",
    "CheckpointCallback",
    "EvaluationHook",
    "RunDirectoryError",
    "TrainingInterrupted",
    "build_model",
    "create_run_dir",
    "feature_encoder",
    "frozen_perception",
    "load_run_model",
    "make_logger",
    "make_run_env",
    "new_run_dir",
    "perception_kwargs",
    "policy_arguments",
    "pretrained_checkpoint",
    "read_run_config",
    "remove_stale_files",
    "resume",
    "run_layout",
    "run_name",
    "sac_arguments",
    "save_checkpoint",
    "set_torch_threads",
    "train",
    "trained_steps",
]
