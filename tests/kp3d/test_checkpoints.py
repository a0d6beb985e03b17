"""Perception checkpoints (save_perception / load_perception) and the offline training hook."""

import pytest
import torch

from kp3d.batch import FrameBatch
from kp3d.perception import (
    available_perceptions,
    load_perception,
    load_perception_checkpoint,
    make_perception,
    perception_class,
    save_perception,
)
from kp3d.perception.keypoint3d import Keypoint3D


def _matrices(cameras: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    intrinsics = torch.tensor([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]).expand(
        batch, cameras, 3, 3
    )
    extrinsics = torch.eye(4).repeat(batch, cameras, 1, 1)
    extrinsics[..., 2, 3] = 1.0
    return intrinsics, extrinsics


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    module = make_perception("keypoint3d", num_cameras=2, image_size=32, num_keypoints=4).eval()
    path = save_perception(module, tmp_path / "sub" / "perception.pt", step=7)
    loaded = load_perception(path).eval()
    assert type(loaded) is Keypoint3D and loaded.num_keypoints == 4
    intrinsics, extrinsics = _matrices(2, 3)
    intrinsics = intrinsics * torch.tensor([0.5, 0.5, 1.0]).view(3, 1)
    images = torch.rand(3, 2, 3, 32, 32)
    with torch.no_grad():
        expected = module(images, intrinsics, extrinsics).keypoints
        actual = loaded(images, intrinsics, extrinsics).keypoints
    torch.testing.assert_close(actual, expected)
    assert load_perception_checkpoint(path)["extra"] == {"step": 7}
    assert not list(path.parent.glob(".*partial*"))


def test_saving_a_directly_built_module_is_refused(tmp_path):
    module = Keypoint3D(1, 32, num_keypoints=2)
    with pytest.raises(ValueError, match="make_perception"):
        save_perception(module, tmp_path / "p.pt")


def test_loading_a_foreign_file_names_it(tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"something": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a kp3d perception checkpoint"):
        load_perception(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt"):
        load_perception(garbage)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_perception(tmp_path / "missing.pt")


def test_training_losses_default_is_the_auxiliary_losses():
    torch.manual_seed(0)
    module = make_perception("keypoint3d", num_cameras=2, image_size=32, num_keypoints=4)
    intrinsics, extrinsics = _matrices(2, 2)
    batch = FrameBatch(torch.rand(2, 2, 3, 32, 32), intrinsics, extrinsics)
    losses = module.training_losses(batch)
    assert set(losses) == {"multiview", "reconstruction", "separation"}
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_training_losses_refuses_missing_labels_and_pairs():
    intrinsics, extrinsics = _matrices(1, 2)
    batch = FrameBatch(torch.rand(2, 1, 3, 32, 32), intrinsics, extrinsics)
    needs_labels = [n for n in available_perceptions() if perception_class(n).requires_labels]
    needs_pairs = [n for n in available_perceptions() if perception_class(n).uses_pairs]
    for name in needs_labels:
        module = make_perception(name, num_cameras=1, image_size=32)
        with pytest.raises(ValueError, match="ground-truth keypoints"):
            module.training_losses(batch)
    for name in needs_pairs:
        module = make_perception(name, num_cameras=1, image_size=32)
        with pytest.raises(ValueError, match="pairs"):
            module.training_losses(batch)


def test_frame_batch_checks_shapes_and_moves():
    intrinsics, extrinsics = _matrices(2, 2)
    with pytest.raises(ValueError, match="extrinsics"):
        FrameBatch(torch.rand(2, 2, 3, 8, 8), intrinsics, extrinsics[:, :1])
    with pytest.raises(ValueError, match="depth"):
        FrameBatch(torch.rand(2, 2, 3, 8, 8), intrinsics, extrinsics, depth=torch.zeros(2, 2, 4, 4))
    batch = FrameBatch(torch.rand(2, 2, 3, 8, 8), intrinsics, extrinsics)
    paired = FrameBatch(batch.images, intrinsics, extrinsics, pair=batch)
    moved = paired.to("cpu")
    assert moved.pair is not None and moved.batch_size == 2 and moved.num_cameras == 2
    assert not moved.has_labels


def test_initialisation_files_are_not_needed_to_load_a_checkpoint(tmp_path):
    """``d2net``'s ``trunk_weights`` only initialises the trunk: its checkpoint loads, and an
    agent config builds from it, after the file is deleted."""
    from agents.config import PerceptionConfig
    from agents.pretrained import pretrained_perception

    assert perception_class("d2net").initialisation_files == ("trunk_weights",)
    assert perception_class("autolink").initialisation_files == ()
    options = {"widths": (4, 4, 8, 6), "num_points": 4}
    torch.manual_seed(0)
    weights = tmp_path / "trunk.pt"
    source = make_perception("d2net", num_cameras=2, image_size=32, **options)
    torch.save(source.trunk.state_dict(), weights)
    torch.manual_seed(1)  # a different random initialisation, replaced by the file's weights
    module = make_perception(
        "d2net", num_cameras=2, image_size=32, trunk_weights=str(weights), **options
    )
    path = save_perception(module, tmp_path / "d2net.pt")
    weights.unlink()

    payload = load_perception_checkpoint(path)
    assert payload["kwargs"] == {**options, "trunk_weights": None}
    loaded = load_perception(path)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(
        loaded.trunk.convs()[0].weight, source.trunk.convs()[0].weight, rtol=0, atol=0
    )

    # An agent config that still names the (deleted) file agrees with the checkpoint, and the
    # hyperparameters it builds from do not name the file.
    config = PerceptionConfig(
        name="d2net",
        kwargs={**options, "trunk_weights": str(weights)},
        pretrained=str(path),
    )
    checkpoint = pretrained_perception(config, ["a", "b"], (32, 32))
    assert checkpoint["kwargs"]["trunk_weights"] is None
    rebuilt = make_perception("d2net", num_cameras=2, image_size=32, **checkpoint["kwargs"])
    rebuilt.load_state_dict(checkpoint["state_dict"])

    # A checkpoint written before the path was dropped loads too.
    legacy = torch.load(path, weights_only=True)
    legacy["kwargs"]["trunk_weights"] = str(weights)
    torch.save(legacy, tmp_path / "legacy.pt")
    assert load_perception(tmp_path / "legacy.pt").construction["kwargs"]["trunk_weights"] is None
