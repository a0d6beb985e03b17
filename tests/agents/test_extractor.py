"""The features extractor: output size, gradients into the perception, losses, camera matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.environment import EXTRINSICS_KEY, camera_layout
from agents.extractor import PerceptionExtractor
from kp3d.perception import available_perceptions

SMALL = {"num_keypoints": 4, "base_filters": 4, "heatmap_stride": 8, "mean_depth": 0.95}


@pytest.fixture(scope="module")
def layout():
    return camera_layout("kp3d/Reach-v0")


def _space(names, channels_first: bool = True, moving: bool = False) -> spaces.Dict:
    shape = (3, 64, 64) if channels_first else (64, 64, 3)
    entries = {f"cam_{name}": spaces.Box(0, 255, shape, np.uint8) for name in names}
    entries["state"] = spaces.Box(-1, 1, (4,), np.float32)
    if moving:
        entries[EXTRINSICS_KEY] = spaces.Box(-np.inf, np.inf, (len(names), 4, 4), np.float32)
    return spaces.Dict(entries)


def _observation(space: spaces.Dict, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.rand((batch, *box.shape), generator=generator)
        for key, box in space.spaces.items()
    }


def _extractor(layout, perception="keypoint3d", kwargs=SMALL, **options) -> PerceptionExtractor:
    space = options.pop("space", None) or _space(layout.names)
    options.setdefault("extrinsics", layout.extrinsics)
    torch.manual_seed(0)
    return PerceptionExtractor(
        space,
        perception,
        camera_names=layout.names,
        intrinsics=layout.intrinsics,
        perception_kwargs=kwargs,
        **options,
    )


@pytest.mark.parametrize("name", available_perceptions())
def test_output_size_is_the_perception_s_plus_the_state(layout, name: str) -> None:
    kwargs = SMALL if name == "keypoint3d" else {}
    raw = _extractor(layout, name, kwargs, projection_dim=None).eval()
    assert raw.features_dim == raw.perception.features_dim + 4
    observation = _observation(_space(layout.names), batch=3)
    with torch.no_grad():
        assert raw(observation).shape == (3, raw.features_dim)
    projected = _extractor(layout, name, kwargs, projection_dim=32).eval()
    with torch.no_grad():
        features = projected(observation)
    assert projected.features_dim == 32 and features.shape == (3, 32)
    assert (features >= 0).all()  # ReLU


def test_policy_gradients_reach_the_perception_unless_detached(layout) -> None:
    extractor = _extractor(layout).train()
    observation = _observation(_space(layout.names), batch=4)
    extractor(observation).sum().backward()
    gradients = [p.grad for p in extractor.perception.encoder.parameters()]
    assert all(g is not None for g in gradients)
    assert sum(float(g.abs().sum()) for g in gradients) > 0

    extractor.zero_grad(set_to_none=True)
    extractor.detach_features = True
    extractor(observation).sum().backward()
    assert all(p.grad is None for p in extractor.perception.parameters())
    assert extractor.projection[0].weight.grad is not None  # the head still learns


def test_losses_are_computed_only_when_asked_and_dropped_after(layout) -> None:
    extractor = _extractor(layout).train()
    observation = _observation(_space(layout.names), batch=2)
    extractor(observation)
    assert extractor.last_losses == {}
    with extractor.computing_losses():
        extractor(observation)
        losses = dict(extractor.last_losses)
    assert {"reconstruction", "multiview", "separation"} <= set(losses)
    assert all(term.requires_grad for term in losses.values())
    assert extractor.last_losses == {}
    assert extractor.last_visuals.points is not None
    assert extractor.last_visuals.points.shape == (2, 3, 4, 2)


def test_image_layouts_give_the_same_features(layout) -> None:
    first = _extractor(layout).eval()
    last = _extractor(layout, space=_space(layout.names, channels_first=False)).eval()
    last.load_state_dict(first.state_dict())
    observation = _observation(_space(layout.names), batch=2)
    transposed = {
        key: value.permute(0, 2, 3, 1) if key.startswith("cam_") else value
        for key, value in observation.items()
    }
    with torch.no_grad():
        torch.testing.assert_close(first(observation), last(transposed))


def test_moving_cameras_use_the_extrinsics_of_the_observation(layout) -> None:
    """Shifting the world by ``t`` (same images, extrinsics ``E @ T(-t)``) shifts the world-frame
    keypoints by ``t``: the extractor lifts with the observation's matrices, not its buffer."""
    space = _space(layout.names, moving=True)
    extractor = _extractor(layout, space=space, extrinsics=None).eval()
    observation = _observation(space, batch=2)
    observation[EXTRINSICS_KEY] = torch.as_tensor(layout.extrinsics).expand(2, 3, 4, 4)
    shift = torch.tensor([0.3, -0.2, 0.1])
    inverse_translation = torch.eye(4)
    inverse_translation[:3, 3] = -shift
    shifted = dict(observation)
    shifted[EXTRINSICS_KEY] = observation[EXTRINSICS_KEY] @ inverse_translation
    with torch.no_grad():
        before = extractor.perceive(observation).keypoints
        after = extractor.perceive(shifted).keypoints
    torch.testing.assert_close(after, before + shift, atol=1e-4, rtol=1e-4)


def test_bad_layouts_are_refused(layout) -> None:
    with pytest.raises(ValueError, match="do not match the observation's camera keys"):
        _extractor(layout, space=_space(["front", "back", "top"]))
    with pytest.raises(ValueError, match="fixed cameras need their extrinsics"):
        _extractor(layout, extrinsics=None)
    with pytest.raises(ValueError, match=r"intrinsics must have shape \(3, 3, 3\)"):
        PerceptionExtractor(_space(layout.names), "keypoint3d", layout.names, np.eye(3))
    space = _space(layout.names)
    del space.spaces["state"]
    with pytest.raises(ValueError, match="no 'state'"):
        _extractor(layout, space=space)


def test_losses_on_a_sub_batch_keep_every_feature(layout) -> None:
    extractor = _extractor(layout, projection_dim=None).eval()  # eval: no random crops or noise
    observation = _observation(_space(layout.names), batch=6)
    with torch.no_grad():
        whole = extractor(observation)
        with extractor.computing_losses():
            extractor(observation)
            all_losses = dict(extractor.last_losses)
        with extractor.computing_losses(samples=2):
            split = extractor(observation)
            some_losses = dict(extractor.last_losses)
        first_two = {key: value[:2] for key, value in observation.items()}
        with extractor.computing_losses():
            extractor(first_two)
            expected = dict(extractor.last_losses)
    torch.testing.assert_close(split, whole)
    assert set(some_losses) == set(all_losses)
    for name, value in expected.items():
        torch.testing.assert_close(some_losses[name], value, msg=name)


def test_training_processes_keep_freed_memory() -> None:
    from agents.runs import keep_freed_memory

    assert keep_freed_memory()  # glibc's mallopt took both settings (this is a Linux machine)
