"""Tests of ``kp3d pretrain`` (:mod:`agents.pretrain`) and of agents that start from its
checkpoints (``perception.pretrained``, ``perception.freeze``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from agents.config import ConfigError
from agents.dataset import write_dataset
from agents.extractor import perception_extractor
from agents.pretrain import (
    CHECKPOINT_FILE,
    EVALUATIONS_FILE,
    PretrainInterrupted,
    load_pretrain_config,
    pretrain,
    resume_pretrain,
)
from kp3d.batch import FrameBatch
from kp3d.perception import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    available_perceptions,
    load_perception,
    load_perception_checkpoint,
    make_perception,
    perception_class,
    perception_hyperparameters,
)
from kp3d.perception import base as perception_base

KEYPOINT3D = {"num_keypoints": 4, "base_filters": 4, "heatmap_stride": 8, "mean_depth": 0.95}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two Reach episodes at 32 px (101 + 39 frames): with test_fraction 0.5 the second one is
    held out."""
    directory = tmp_path_factory.mktemp("reach32")
    write_dataset("kp3d/Reach-v0", 140, directory, size=32, progress=False)
    return directory


@pytest.fixture
def write_pretrain_config(tmp_path: Path, dataset: Path):
    def write(name: str = "tiny", **changes: Any) -> Path:
        config = {
            "dataset": str(dataset),
            "perception": {"name": "keypoint3d", "kwargs": KEYPOINT3D},
            "steps": 4,
            "batch_size": 4,
            "test_fraction": 0.5,
            "eval_every": 2,
            "eval_frames": 16,
            "checkpoint_every": 2,
            "log_every": 1,
            "progress_bar": False,
            **changes,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def evaluations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / EVALUATIONS_FILE).read_text().splitlines()]


def test_pretrain_command_writes_a_loadable_checkpoint_and_resumes(
    tmp_path: Path, write_pretrain_config
) -> None:
    run = tmp_path / "run"
    config = write_pretrain_config()
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli", "pretrain", str(config), "--run-dir", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"checkpoint: {run / CHECKPOINT_FILE}" in result.stdout
    module = load_perception(run / CHECKPOINT_FILE)
    assert module.construction["kwargs"] == KEYPOINT3D
    extra = load_perception_checkpoint(run / CHECKPOINT_FILE)["extra"]
    assert extra["step"] == 4 and extra["camera_names"] == ["front", "side", "top"]
    assert [e["step"] for e in evaluations(run)] == [0, 2, 4]
    assert all(
        np.isfinite(e["probe_error"]) and "probe_per_keypoint" in e for e in evaluations(run)
    )
    assert (run / "logs" / "progress.csv").is_file()

    resume_pretrain(run, ["steps=6"])
    assert load_perception_checkpoint(run / CHECKPOINT_FILE)["extra"]["step"] == 6
    assert [e["step"] for e in evaluations(run)] == [0, 2, 4, 6]
    with pytest.raises(ConfigError, match=r"cannot change \['batch_size'\]"):
        resume_pretrain(run, ["batch_size=8"])


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, write_pretrain_config) -> None:
    """Optimizer state, step count and random streams survive the checkpoint exactly."""
    straight = pretrain(load_pretrain_config(write_pretrain_config(steps=5)), tmp_path / "a")
    split = pretrain(load_pretrain_config(write_pretrain_config(steps=3)), tmp_path / "b")
    resume_pretrain(split, ["steps=5"])
    one = load_perception_checkpoint(straight / CHECKPOINT_FILE)
    two = load_perception_checkpoint(split / CHECKPOINT_FILE)
    assert one["extra"]["step"] == two["extra"]["step"] == 5
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_ctrl_c_saves_a_checkpoint_to_resume_from(
    tmp_path: Path, write_pretrain_config, monkeypatch
) -> None:
    config = load_pretrain_config(write_pretrain_config(steps=6, checkpoint_every=0))
    method = perception_class(config.perception.name)
    original = method.training_losses
    calls = 0

    def interrupted(self: Perception, batch: FrameBatch) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(method, "training_losses", interrupted)
    with pytest.raises(PretrainInterrupted) as caught:
        pretrain(config, tmp_path / "run")
    assert caught.value.step == 3
    assert load_perception_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["extra"]["step"] == 3
    monkeypatch.setattr(method, "training_losses", original)
    resume_pretrain(tmp_path / "run")
    assert load_perception_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["extra"]["step"] == 6


def test_config_errors_name_the_key(tmp_path: Path, write_pretrain_config) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'stpes'.*steps"):
        load_pretrain_config(write_pretrain_config(stpes=3))
    bad_name = load_pretrain_config(write_pretrain_config(perception={"name": "nope"}))
    with pytest.raises(ConfigError, match=r"unknown 'perception.name' 'nope'"):
        pretrain(bad_name, tmp_path / "a")
    bad_kwargs = {"name": "keypoint3d", "kwargs": {"keypoints": 3}}
    with pytest.raises(ConfigError, match=r"unknown 'perception.kwargs' \['keypoints'\]"):
        pretrain(load_pretrain_config(write_pretrain_config(perception=bad_kwargs)), tmp_path / "b")
    missing = load_pretrain_config(write_pretrain_config(dataset=str(tmp_path / "none")))
    with pytest.raises(ConfigError, match=r"'dataset'.*not a kp3d dataset"):
        pretrain(missing, tmp_path / "c")
    pixel = load_pretrain_config(write_pretrain_config(perception={"name": "pixel"}))
    with pytest.raises(ValueError, match="no training losses"):
        pretrain(pixel, tmp_path / "d")


class LearnedPoints(Perception):
    """A labelled toy detector: learnable per-view pixels, trained towards the labels."""

    requires_labels = True

    def __init__(self, num_cameras: int, image_size: Any, num_keypoints: int = 1) -> None:
        super().__init__(num_cameras, image_size)
        self.points = nn.Parameter(torch.zeros(num_cameras, num_keypoints, 2))

    @property
    def features_dim(self) -> int:
        return self.points.numel()

    def forward(self, images, intrinsics, extrinsics, compute_losses=True) -> PerceptionOutput:
        batch = images.shape[0]
        points = self.points.expand(batch, *self.points.shape)
        return PerceptionOutput(
            features=points.flatten(1),
            keypoints=points.flatten(1, 2),
            visuals=PerceptionVisuals(detections=points.detach()),
        )

    def training_losses(self, batch: FrameBatch) -> dict[str, torch.Tensor]:
        error = (self.points - batch.keypoints_pixels).pow(2).sum(-1)
        return {"pixels": (error * batch.keypoints_visible).mean()}


@pytest.fixture
def learned_points():
    perception_base.register_perception("test_learned_points")(LearnedPoints)
    yield "test_learned_points"
    del perception_base._REGISTRY["test_learned_points"]


def test_labelled_modules_get_pck_that_training_improves(
    tmp_path: Path, write_pretrain_config, learned_points: str
) -> None:
    config = load_pretrain_config(
        write_pretrain_config(
            perception={"name": learned_points},
            steps=150,
            batch_size=16,
            learning_rate=0.5,
            eval_every=0,
            eval_frames=200,
            checkpoint_every=0,
            log_every=50,
        )
    )
    run = pretrain(config, tmp_path / "run")
    first, last = evaluations(run)[0], evaluations(run)[-1]
    assert {"pck@0.05", "pck@0.1", "pck@0.5L", "pck@0.1_per_keypoint"} <= set(last)
    assert len(last["pck@0.1_per_keypoint"]) == 4
    assert first["pck@0.1"] == 0.0  # every point starts in the image corner
    # A constant guess per view (the mean of each keypoint) catches the base and the keypoints
    # that stay near their mean.
    assert last["pck@0.1"] > 0.2 and last["pck@0.5L"] >= last["pck@0.05"]
    assert "keypoint_error" not in last  # its keypoints are pixels, not the env's 3D points
    # The number of keypoints came from the dataset (the module's default is 1).
    assert load_perception_checkpoint(run / CHECKPOINT_FILE)["kwargs"] == {"num_keypoints": 4}


# -- agents on pretrained perceptions -------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pretrained")
    config_path = directory / "k3d.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "dataset": str(dataset),
                "perception": {"name": "keypoint3d", "kwargs": KEYPOINT3D},
                "steps": 2,
                "batch_size": 4,
                "test_fraction": 0.5,
                "eval_frames": 8,
                "progress_bar": False,
            }
        )
    )
    return pretrain(load_pretrain_config(config_path), directory / "run") / CHECKPOINT_FILE


def agent_config(tiny_config, checkpoint: Path, **perception: Any) -> dict:
    return tiny_config(
        env_kwargs={"size": 32},
        perception={"kwargs": {}, "pretrained": str(checkpoint), **perception},
    )


def test_an_agent_starts_from_the_pretrained_weights(tiny_config, make_agent, checkpoint) -> None:
    model = make_agent(agent_config(tiny_config, checkpoint))
    extractor = model.policy.features_extractor
    saved = load_perception(checkpoint).eval()
    extractor.perception.eval()
    images = torch.rand(3, 3, 3, 32, 32)
    intrinsics = extractor.intrinsics
    extrinsics = extractor.extrinsics
    with torch.no_grad():
        expected = saved(images, intrinsics, extrinsics, compute_losses=False).features
        actual = extractor.perception(images, intrinsics, extrinsics, compute_losses=False)
    torch.testing.assert_close(actual.features, expected)


def test_a_frozen_perception_is_the_checkpoint_outside_the_policy(
    tiny_config, make_agent, checkpoint
) -> None:
    model = make_agent(agent_config(tiny_config, checkpoint, freeze=True))
    assert perception_extractor(model.policy) is None  # an MLP on the perception's features
    encoder = model.get_env().encoder
    saved = load_perception(checkpoint)
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(
            encoder.perception.state_dict()[name], value, equal_nan=True, msg=name
        )
    assert not encoder.perception.training


def test_a_fine_tuned_perception_changes(tiny_config, make_agent, checkpoint) -> None:
    model = make_agent(agent_config(tiny_config, checkpoint))
    perception = model.policy.features_extractor.perception
    before = {k: v.clone() for k, v in perception.state_dict().items()}
    model.learn(32)
    assert any(not torch.equal(v, before[k]) for k, v in perception.state_dict().items())


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(
    tiny_config, make_agent, checkpoint, tmp_path: Path
) -> None:
    from agents.config import config_from_dict
    from agents.training import train

    wrong_size = tiny_config(perception={"kwargs": {}, "pretrained": str(checkpoint)})
    with pytest.raises(ConfigError, match=r"image size: the checkpoint's is \(32, 32\)"):
        train(config_from_dict(wrong_size), run_dir=tmp_path / "a")
    wrong_name = agent_config(tiny_config, checkpoint, name="keypoint2d")
    with pytest.raises(ConfigError, match="the checkpoint holds 'keypoint3d'"):
        train(config_from_dict(wrong_name), run_dir=tmp_path / "b")
    wrong_kwargs = agent_config(tiny_config, checkpoint, kwargs={"num_keypoints": 8})
    with pytest.raises(ConfigError, match=r"leave perception.kwargs empty"):
        train(config_from_dict(wrong_kwargs), run_dir=tmp_path / "c")
    missing = agent_config(tiny_config, tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="no perception checkpoint"):
        train(config_from_dict(missing), run_dir=tmp_path / "d")


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[2] / "configs" / "pretrain").glob("*.yaml")),
    ids=lambda path: path.name,
)
def test_shipped_pretrain_configs_are_valid(path: Path) -> None:
    config = load_pretrain_config(path)
    assert config.exp_name == path.stem
    assert config.perception.name in available_perceptions()
    valid = perception_hyperparameters(config.perception.name)
    assert set(config.perception.kwargs) <= set(valid)
    make_perception(
        config.perception.name, num_cameras=3, image_size=64, **config.perception.kwargs
    )


def test_pretraining_that_fails_at_start_up_leaves_no_run(
    tmp_path: Path, dataset: Path, write_pretrain_config
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    shard = next(damaged.glob("shard_*.npz"))
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    config = load_pretrain_config(write_pretrain_config(dataset=str(damaged)))
    with pytest.raises((ValueError, OSError)):
        pretrain(config, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert shard.stat().st_size == 1000  # the user's data is untouched


def test_openpose_limbs_come_from_the_skeleton_as_a_tree_of_parts() -> None:
    from agents.pretrain import part_limbs

    multireach_skeleton = np.array([[0, 1], [1, 2], [4, 5], [5, 6], [8, 9], [9, 10]])
    instances = np.repeat([0, 1, 2], 4)
    limbs = part_limbs(multireach_skeleton, instances)
    assert limbs == [[0, 1], [1, 2], [0, 3]]  # the targets joined to the base, as configured
    module = make_perception(
        "openpose",
        num_cameras=3,
        image_size=32,
        keypoint_instances=instances.tolist(),
        limbs=limbs,
    )
    assert module is not None
    assert part_limbs(np.array([[0, 1], [1, 2], [2, 0]]), np.zeros(3, int)) == [[0, 1], [1, 2]]
