"""One ``kp3d train`` from nothing: the dataset and pretraining stages of a recipe, cached by
their settings (:mod:`agents.pipeline`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agents.config import ConfigError, config_from_dict
from agents.pipeline import CACHE_DIR, prepare_perception, train
from agents.training import PERCEPTION_FILE, read_run_config
from kp3d.perception import load_perception, load_perception_checkpoint

RECIPE = {"frames": 1010, "steps": 4, "batch_size": 4}


def recipe_config(tiny_config, **perception: object) -> dict:
    return tiny_config(
        algo="sac",
        n_envs=1,
        n_timesteps=12,
        perception={
            "kwargs": {"base_filters": 4, "heatmap_stride": 8},
            "freeze": True,
            "pretrain": RECIPE,
            **perception,
        },
    )


def test_a_recipe_pretrains_then_trains_and_reuses_its_cache(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = config_from_dict(recipe_config(tiny_config))
    run = train(config, run_dir=tmp_path / "one", runs_root=tmp_path / "runs")
    saved = read_run_config(run)
    # The run names its perception, the checkpoint it started from, and the env's suggestions.
    assert saved.perception.name == "keypoint3d" and saved.perception.pretrain is not None
    assert saved.perception.kwargs["num_keypoints"] == 8
    assert saved.perception.kwargs["mean_depth"] == pytest.approx(0.96)
    checkpoint = Path(str(saved.perception.pretrained))
    assert checkpoint.is_relative_to(tmp_path / "runs" / CACHE_DIR / "pretrain")
    assert load_perception_checkpoint(checkpoint)["extra"]["step"] == RECIPE["steps"]
    frozen = load_perception(run / PERCEPTION_FILE).state_dict()
    for name, value in load_perception(checkpoint).state_dict().items():
        torch.testing.assert_close(frozen[name], value, equal_nan=True, msg=name)
    # The same settings again: nothing is written or trained twice.
    before = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    again = config_from_dict(recipe_config(tiny_config) | {"verbose": 1})
    prepared = prepare_perception(again, tmp_path / "runs")
    assert prepared.perception.pretrained == str(checkpoint)
    assert checkpoint.stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().out
    # Other settings: another cache entry.
    other = config_from_dict(recipe_config(tiny_config, pretrain={**RECIPE, "steps": 5}))
    assert prepare_perception(other, tmp_path / "runs").perception.pretrained != str(checkpoint)


def test_an_interrupted_pretraining_continues(tiny_config, tmp_path: Path, monkeypatch) -> None:
    from agents.pretrain import PretrainInterrupted
    from kp3d.perception import Keypoint3D

    original = Keypoint3D.training_losses
    calls = 0

    def interrupted(self, batch):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return original(self, batch)

    config = config_from_dict(recipe_config(tiny_config))
    monkeypatch.setattr(Keypoint3D, "training_losses", interrupted)
    with pytest.raises(PretrainInterrupted):
        prepare_perception(config, tmp_path)
    monkeypatch.setattr(Keypoint3D, "training_losses", original)
    prepared = prepare_perception(config, tmp_path)
    payload = load_perception_checkpoint(prepared.perception.pretrained)
    assert payload["extra"]["step"] == RECIPE["steps"]
    # It continued: one pretraining run, with the log of its interrupted start.
    run = Path(str(prepared.perception.pretrained)).parent
    assert len(list(run.parent.iterdir())) == 1
    assert any(name.name.endswith("_from_2.csv") for name in (run / "logs").iterdir())


def test_recipe_errors(tiny_config, tmp_path: Path) -> None:
    both = config_from_dict(recipe_config(tiny_config, pretrained=str(tmp_path / "p.pt")))
    with pytest.raises(ConfigError, match="both set"):
        prepare_perception(both, tmp_path)
    cameras = recipe_config(tiny_config)
    cameras["env_kwargs"] = {"cameras": ["top"]}
    with pytest.raises(ConfigError, match=r"env_kwargs also set \['cameras'\]"):
        prepare_perception(config_from_dict(cameras), tmp_path)
    bad = recipe_config(tiny_config, pretrain={**RECIPE, "steps": 0})
    with pytest.raises(ConfigError, match=r"'perception.pretrain.steps' must be at least 1"):
        train(config_from_dict(bad), run_dir=tmp_path / "bad", runs_root=tmp_path)
    assert not (tmp_path / CACHE_DIR).exists()  # checked before any stage ran
