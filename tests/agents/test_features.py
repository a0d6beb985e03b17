"""A frozen perception runs once per env step, outside the policy, and the buffers hold its
features (:mod:`agents.features`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper

from agents.config import config_from_dict
from agents.environment import build_vec_env, camera_layout
from agents.extractor import perception_extractor
from agents.features import FeatureEncoder, FeaturePolicy, PerceptionFeatures
from agents.training import (
    PERCEPTION_FILE,
    build_model,
    feature_encoder,
    train,
)
from kp3d.perception import load_perception


class Recorder(VecEnvWrapper):
    """Keeps every raw observation the wrapped env returns, final observations included."""

    def __init__(self, venv: Any) -> None:
        super().__init__(venv)
        self.observations: list[dict[str, np.ndarray]] = []
        self.finals: list[dict[str, np.ndarray]] = []

    def reset(self) -> Any:
        observation = self.venv.reset()
        self.observations.append({k: v.copy() for k, v in observation.items()})
        return observation

    def step_wait(self) -> Any:
        observation, rewards, dones, infos = self.venv.step_wait()
        self.observations.append({k: v.copy() for k, v in observation.items()})
        for info in infos:
            if "terminal_observation" in info:
                self.finals.append(info["terminal_observation"])
        return observation, rewards, dones, infos


def frozen_setup(tiny_config, algo: str, **sections: Any) -> tuple[Any, Recorder, FeatureEncoder]:
    config = config_from_dict(
        tiny_config(algo=algo, n_envs=1, perception={"freeze": True}, **sections)
    )
    layout = camera_layout(config.env_id, config.env_kwargs)
    encoder = feature_encoder(config, layout)
    assert encoder is not None
    raw = build_vec_env(
        config.env_id, config.env_kwargs, 1, config.seed, layout, transpose_images=False
    )
    recorder = Recorder(raw)
    env = PerceptionFeatures(recorder, encoder)
    return build_model(config, env, layout), recorder, encoder


def encode_all(encoder: FeatureEncoder, observations: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([encoder.encode(observation) for observation in observations])


def test_sac_replays_the_features_computed_once_per_step(tiny_config) -> None:
    model, recorder, encoder = frozen_setup(
        tiny_config, "sac", sac={"learning_starts": 8, "batch_size": 8, "net_arch": [16]}
    )
    assert perception_extractor(model.policy) is None  # an MLP on features, as state SAC
    calls = []
    hook = encoder.perception.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0])
    )
    before = {k: v.clone() for k, v in encoder.perception.state_dict().items()}
    model.learn(120)  # past the end of the first 100-step episode
    hook.remove()
    # Once per env step (plus the reset and the episode's final observation), whatever the
    # number of gradient steps.
    assert sum(calls) == 120 + 1 + len(recorder.finals) and len(recorder.finals) == 1
    for name, value in encoder.perception.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, equal_nan=True, msg=name)
    # What the replay buffer holds equals the features recomputed from the raw observations.
    buffer = model.replay_buffer
    stored = buffer.observations[: buffer.pos, 0]
    expected = encode_all(encoder, recorder.observations[:-1])
    # The observation after the episode's end is the next episode's first: SB3 stores the
    # final observation as that transition's next observation.
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)
    ended = int(np.flatnonzero(buffer.dones[: buffer.pos, 0])[0])
    np.testing.assert_allclose(
        buffer.next_observations[ended, 0], encoder.encode(_batched(recorder.finals[0]))[0]
    )
    assert buffer.observations.nbytes / buffer.buffer_size < 300  # bytes per transition


def _batched(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[None] for key, value in observation.items()}


def test_ppo_rollouts_hold_the_features(tiny_config) -> None:
    model, recorder, encoder = frozen_setup(tiny_config, "ppo", unsupervised={"steps": 0})
    model.learn(model.n_steps)
    features = encoder.perception.features_dim + 4  # and the arm's joint angles and velocities
    stored = model.rollout_buffer.observations.reshape(-1, features)  # one env: in step order
    expected = encode_all(encoder, recorder.observations[: model.n_steps])
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)


def test_a_frozen_run_keeps_its_perception(tiny_config, tmp_path: Path) -> None:
    config = config_from_dict(
        tiny_config(algo="sac", n_envs=1, n_timesteps=12, perception={"freeze": True})
    )
    run = train(config, run_dir=tmp_path / "run")
    saved = load_perception(run / PERCEPTION_FILE)
    layout = camera_layout(config.env_id, config.env_kwargs)
    # The run's perception, not a new one: resuming and evaluating rebuild the same features.
    encoder = feature_encoder(config, layout, run)
    assert encoder is not None
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(
            encoder.perception.state_dict()[name], value, equal_nan=True, msg=name
        )
    from agents.evaluation import evaluate, load_policy

    policy = load_policy(run)
    assert isinstance(policy, FeaturePolicy)
    result = evaluate(run, episodes=1)
    assert result.lengths.tolist() == [100]
    # Acting on raw observations, one or a batch.
    env = build_vec_env(config.env_id, {}, 2, 0, layout, transpose_images=False)
    observations = env.reset()
    actions, _ = policy.predict(observations)
    single, _ = policy.predict({key: value[0] for key, value in observations.items()})
    assert actions.shape == (2, 2) and single.shape == (2,)
    np.testing.assert_allclose(actions[0], single, rtol=1e-5)
    env.close()


def test_the_encoder_must_fit_the_cameras() -> None:
    from kp3d.perception import make_perception

    layout = camera_layout("kp3d/Reach-v0")
    module = make_perception("keypoint3d", num_cameras=3, image_size=32, num_keypoints=2)
    with pytest.raises(ValueError, match=r"the env has 3 of \(64, 64\)"):
        FeatureEncoder(module, layout)
