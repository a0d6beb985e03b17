"""PPO with Keypoint3D on Reach: trains jointly, logs its losses, saves and loads exactly."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ppo import PerceptionPPO
from kp3d.perception import available_perceptions, perception_class


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.fixture(scope="module")
def trained(tiny_config, record_logs, make_agent) -> tuple:
    """Two updates (2 envs x 16 steps each) of joint training plus 2 unsupervised steps each."""
    model = make_agent(tiny_config())
    records = record_logs(model)
    extractor = model.extractor
    before = (_snapshot(extractor.perception), _snapshot(model.policy.action_net))
    model.learn(64)
    return model, records, before[0], before[1]


def test_joint_training_updates_perception_and_policy(trained) -> None:
    model, _, perception_before, action_before = trained
    assert model.num_timesteps == 64
    assert _changed(perception_before, model.extractor.perception)
    assert _changed(action_before, model.policy.action_net)
    # 64 frames went into a 48-frame ring buffer: it is full.
    assert len(model.frame_buffer) == 48


def test_auxiliary_and_unsupervised_losses_are_logged(trained) -> None:
    _, records, _, _ = trained
    expected = {
        "kp3d/joint_aux_loss",
        "kp3d/joint_aux/reconstruction",
        "kp3d/joint_aux/multiview",
        "kp3d/joint_aux/separation",
        "kp3d/perception_grad_norm",
        "kp3d/unsupervised_loss",
        "kp3d/unsupervised/reconstruction",
        "kp3d/unsupervised_grad_norm",
        "kp3d/frame_buffer_frames",
        "train/policy_gradient_loss",
    }
    assert expected <= records.keys
    for dump in records.dumps:
        for key, value in dump.items():
            if key.startswith("kp3d/"):
                assert np.isfinite(value), key


def test_save_then_load_gives_identical_actions_and_optimizers(trained, tmp_path: Path) -> None:
    model = trained[0]
    path = tmp_path / "model.zip"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        assert "perception_optimizer.pth" in archive.namelist()
    loaded = PerceptionPPO.load(path, device="cpu")
    observation = model.env.reset()
    expected, _ = model.predict(observation, deterministic=True)
    actual, _ = loaded.predict(observation, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
    for original, restored in (
        (model.policy.optimizer, loaded.policy.optimizer),
        (model.perception_optimizer, loaded.perception_optimizer),
    ):
        first, second = original.state_dict()["state"], restored.state_dict()["state"]
        assert first.keys() == second.keys() and first
        for index in first:
            for name, value in first[index].items():
                torch.testing.assert_close(second[index][name], value)
    # The frame buffer is not saved: a loaded model starts an empty one.
    assert len(loaded.frame_buffer) == 0


def test_separate_training_leaves_the_perception_to_its_own_losses(
    tiny_config, record_logs, make_agent
) -> None:
    """``joint=False`` without unsupervised steps: PPO updates never touch the perception."""
    model = make_agent(tiny_config(perception={"joint": False}, unsupervised={"steps": 0}))
    records = record_logs(model)
    before = _snapshot(model.extractor.perception)
    action_before = _snapshot(model.policy.action_net)
    model.learn(64)
    assert not _changed(before, model.extractor.perception)
    assert _changed(action_before, model.policy.action_net)
    assert model.frame_buffer is None
    assert not any(key.startswith("kp3d/joint_aux") for key in records.keys)


def test_state_based_ppo_is_sb3_s_ppo(tiny_config, record_logs, make_agent) -> None:
    model = make_agent(tiny_config(env_kwargs={"obs_mode": "state"}, perception={"name": None}))
    records = record_logs(model)
    assert model.extractor is None and model.perception_optimizer is None
    model.learn(64)
    assert "train/value_loss" in records.keys
    assert not any(key.startswith("kp3d/") for key in records.keys)


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in available_perceptions()
        # Not the CNN baselines (no auxiliary losses) nor d2net, whose training signal is the
        # simulator's correspondences (depth, segmentation): agents' observations have neither.
        if not perception_class(name).requires_labels and name not in ("pixel", "rad", "d2net")
    ],
)
def test_every_unsupervised_perception_trains_jointly_with_ppo(
    name: str, tiny_config, make_agent, record_logs
) -> None:
    """Each label-free keypoint method sits under PPO: its auxiliary losses join the PPO loss,
    its unsupervised steps run, and its parameters change (defaults, only the keypoint count
    reduced)."""
    kwargs = {} if name in ("keypoint3d", "keypoint2d") else {"num_keypoints": 4}
    model = make_agent(
        tiny_config(
            env_kwargs={"size": 32},
            perception={"name": name, "kwargs": kwargs},
            unsupervised={"steps": 1, "batch_size": 2},
        )
    )
    records = record_logs(model)
    perception = model.policy.features_extractor.perception
    before = {k: v.clone() for k, v in perception.state_dict().items()}
    model.learn(32)
    assert any(key.startswith("kp3d/joint_aux/") for key in records.keys), sorted(records.keys)
    assert any(key.startswith("kp3d/unsupervised/") for key in records.keys)
    changed = [k for k, v in perception.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"{name}: no parameter changed"
