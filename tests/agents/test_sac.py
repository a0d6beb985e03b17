"""SAC with Keypoint3D: the critic and the auxiliary losses train the perception, the actor not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.utils import obs_as_tensor

from agents.sac import PerceptionSAC


@pytest.fixture(scope="module")
def trained(tiny_config, record_logs, make_agent) -> tuple:
    model = make_agent(tiny_config(algo="sac", n_timesteps=48))
    records = record_logs(model)
    before = {k: v.clone() for k, v in model.extractor.perception.state_dict().items()}
    model.learn(48, log_interval=1)
    return model, records, before


def test_the_critic_owns_the_extractor_and_the_actor_does_not(trained) -> None:
    model = trained[0]
    extractor = model.extractor
    assert model.critic.features_extractor is extractor
    assert model.critic_target.features_extractor is not extractor
    perception = {id(p) for p in extractor.perception.parameters()}
    actor_ids = {id(p) for group in model.actor.optimizer.param_groups for p in group["params"]}
    critic_ids = {id(p) for group in model.critic.optimizer.param_groups for p in group["params"]}
    assert not perception & actor_ids
    assert perception <= critic_ids


def test_actor_gradients_do_not_reach_the_perception(trained) -> None:
    model = trained[0]
    observation, _ = model.policy.obs_to_tensor(model.env.reset())
    model.policy.zero_grad(set_to_none=True)
    actions, log_prob = model.actor.action_log_prob(observation)
    (actions.sum() + log_prob.sum()).backward()
    assert all(p.grad is None for p in model.extractor.parameters())
    assert any(p.grad is not None for p in model.actor.mu.parameters())


def test_training_updates_the_perception_and_logs_auxiliary_losses(trained) -> None:
    model, records, before = trained
    assert model.num_timesteps == 48 and model._n_updates > 0
    after = model.extractor.perception.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    keys = records.keys
    assert {"kp3d/aux_loss", "kp3d/aux/reconstruction", "train/critic_loss"} <= keys


def test_target_critic_follows_the_critic_slowly(trained) -> None:
    model = trained[0]
    online = dict(model.critic.features_extractor.named_parameters())
    target = dict(model.critic_target.features_extractor.named_parameters())
    assert online.keys() == target.keys()
    assert any(not torch.equal(online[k], target[k]) for k in online)


def test_save_then_load_gives_identical_actions(trained, tmp_path: Path) -> None:
    model = trained[0]
    model.save(tmp_path / "sac.zip")
    loaded = PerceptionSAC.load(tmp_path / "sac.zip", device="cpu")
    observation = model.env.reset()
    expected, _ = model.predict(observation, deterministic=True)
    actual, _ = loaded.predict(observation, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
    batch = obs_as_tensor(observation, model.device)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.critic(batch, torch.as_tensor(expected))[0],
            model.critic(batch, torch.as_tensor(expected))[0],
        )


def test_state_based_sac_is_sb3_s_sac(tiny_config, record_logs, make_agent) -> None:
    model = make_agent(
        tiny_config(algo="sac", env_kwargs={"obs_mode": "state"}, perception={"name": None})
    )
    records = record_logs(model)
    assert model.extractor is None
    model.learn(32, log_interval=1)
    assert "train/critic_loss" in records.keys
