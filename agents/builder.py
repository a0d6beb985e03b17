"""A run's agent and envs, built from its config: the env's cameras, the perception (trained
with the policy, or frozen in front of it), the SB3 algorithm and its policy, the vectorised envs;
and the agent loaded back from a run's checkpoint (:func:`load_run_model`).

:mod:`agents.training` starts, resumes and checkpoints runs with these; evaluation, rendering and
datasets load trained agents through :func:`load_run_model`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from agents.checkpoints import load_model, saved_perception_kwargs
from agents.config import ConfigError, TrainConfig
from agents.environment import CameraLayout, build_vec_env, camera_layout
from agents.extractor import PerceptionExtractor, perception_extractor
from agents.features import FeatureEncoder, FeaturePolicy, PerceptionFeatures
from agents.ppo import PerceptionPPO
from agents.pretrained import load_pretrained_weights, pretrained_perception
from agents.runs import MODEL_FILE, RunDirectoryError, read_run_config, resolve_device
from agents.sac import PerceptionSAC

PERCEPTION_FILE = "perception.pt"
"""The frozen perception a ``perception.freeze`` run's policy acts through."""

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PerceptionPPO, "sac": PerceptionSAC}
"""``config.algo`` → algorithm class."""

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def pretrained_checkpoint(config: TrainConfig, layout: CameraLayout | None) -> dict | None:
    """The ``perception.pretrained`` checkpoint, checked against the config and the cameras
    (:func:`agents.pretrained.pretrained_perception`); ``None`` when the config names none."""
    if config.perception.pretrained is None or layout is None:
        return None
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


def policy_arguments(
    config: TrainConfig,
    layout: CameraLayout | None,
    saved_perception_kwargs: dict[str, Any] | None = None,
) -> tuple[str, dict]:
    """The SB3 policy name and ``policy_kwargs`` of a config (``MlpPolicy`` on states, and on
    a frozen perception's features); ``saved_perception_kwargs`` (a checkpoint's) instead of
    :func:`perception_kwargs`."""
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
        "perception_kwargs": (
            perception_kwargs(config, layout)
            if saved_perception_kwargs is None
            else saved_perception_kwargs
        ),
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
        load_pretrained_weights(model.policy, checkpoint)
    if layout is not None and layout.background is not None:
        import torch

        background = torch.as_tensor(layout.background).permute(0, 3, 1, 2).float() / 255.0
        for module in model.policy.modules():
            if isinstance(module, PerceptionExtractor):
                module.perception.set_background(background.to(model.device))
    return model


def _build_algorithm(
    config: TrainConfig,
    env: VecEnv,
    layout: CameraLayout | None,
    saved_perception_kwargs: dict[str, Any] | None = None,
) -> BaseAlgorithm:
    policy, policy_kwargs = policy_arguments(config, layout, saved_perception_kwargs)
    common = {
        "policy_kwargs": policy_kwargs,
        "seed": config.seed,
        "device": resolve_device(config.device),
        "verbose": max(config.verbose - 1, 0),  # SB3's own messages from verbose: 2
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


def run_layout(config: TrainConfig) -> CameraLayout | None:
    """The env's cameras (:func:`agents.environment.camera_layout`); an env that refuses
    ``env_kwargs`` is a :class:`ConfigError` naming them."""
    try:
        return camera_layout(config.env_id, config.env_kwargs)
    except TypeError as error:
        raise ConfigError(
            f"'env_kwargs' {config.env_kwargs} do not fit {config.env_id}: {error}"
        ) from None


def load_run_model(
    config: TrainConfig,
    run_dir: Path,
    layout: CameraLayout | None,
    env: VecEnv | None = None,
    device: str = "auto",
) -> BaseAlgorithm:
    """A run's agent at its checkpoint, read without unpickling anything
    (:func:`agents.checkpoints.load_model`): the fields SB3 would unpickle come from an agent
    built from the run's config, with the perception hyperparameters the checkpoint names.

    Raises:
        RunDirectoryError: for a missing, damaged or foreign ``model.zip``.
    """
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise RunDirectoryError(f"run {str(run_dir)!r} has no checkpoint ({MODEL_FILE}) yet")
    template_env = env
    if template_env is None:
        encoder = feature_encoder(config, layout, run_dir)
        template_env = make_run_env(config, layout, 1, config.seed, training=False, encoder=encoder)
    try:
        template = _build_algorithm(config, template_env, layout, saved_perception_kwargs(path))
    finally:
        if env is None:
            close_quietly(template_env)
    return load_model(path, template, env=env, device=str(resolve_device(device)))


def load(run_dir: str | Path, device: str = "auto", env: object | None = None) -> BaseAlgorithm:
    """The agent of a run directory at its latest checkpoint.

    Args:
        run_dir: a directory written by :func:`agents.train`.
        device: torch device.
        env: optional vectorised env to attach (needed to continue training, not to act).

    Nothing in the run directory is unpickled (:mod:`agents.checkpoints`).

    Raises:
        RunDirectoryError: if ``run_dir`` is not a run, has no checkpoint yet, or its checkpoint
            does not fit its config.
    """
    path = Path(run_dir)
    config = read_run_config(path)
    layout = run_layout(config)
    return load_run_model(config, path, layout, env=env, device=device)  # type: ignore[arg-type]


def load_policy(run_dir: str | Path, device: str = "auto") -> BaseAlgorithm | FeaturePolicy:
    """What acts on the env's raw observations for a run: its SB3 model, or, for a run whose
    frozen perception runs outside the policy (``perception.freeze``), the model with that
    perception in front (:class:`~agents.features.FeaturePolicy`)."""
    model = load(run_dir, device=device)
    config = read_run_config(run_dir)
    if not frozen_perception(config):
        return model
    layout = run_layout(config)
    encoder = feature_encoder(config, layout, Path(run_dir))
    assert encoder is not None
    return FeaturePolicy(model, encoder)


def close_quietly(env: VecEnv) -> None:
    """Close a vectorised env, also when its workers are already gone."""
    # After Ctrl-C, worker processes may already have exited: their pipes are gone.
    with contextlib.suppress(EOFError, OSError):
        env.close()


__all__ = [
    "ACTIVATIONS",
    "ALGORITHMS",
    "PERCEPTION_FILE",
    "build_model",
    "check_perception",
    "close_quietly",
    "feature_encoder",
    "frozen_perception",
    "load",
    "load_policy",
    "load_run_model",
    "make_run_env",
    "perception_kwargs",
    "policy_arguments",
    "ppo_arguments",
    "pretrained_checkpoint",
    "run_layout",
    "sac_arguments",
]
