"""Tests of the pixel baselines (:mod:`kp3d.perception.pixel`): ``pixel`` and ``rad``."""

from __future__ import annotations

import doctest

import pytest
import torch
from perception_fixtures import identity_cameras

from kp3d.perception import (
    RAD,
    PerceptionOutput,
    PixelEncoder,
    available_perceptions,
    layers,
    make_perception,
    perception_hyperparameters,
)

IMAGE = 64


def model(name: str = "pixel", num_cameras: int = 3, image_size=IMAGE, **kwargs) -> PixelEncoder:
    torch.manual_seed(0)
    options = {"camera_features": 32, **kwargs}
    return make_perception(name, num_cameras=num_cameras, image_size=image_size, **options)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Some valid ``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)``: the encoder ignores
    them."""
    return identity_cameras(count, 60.0, (32.0, 32.0))


def linear_inputs(module: PixelEncoder) -> int:
    """Input features of the (first) encoder's linear layer: the flattened conv grid."""
    return next(m for m in module.encoders[0] if isinstance(m, torch.nn.Linear)).in_features


@pytest.mark.parametrize(
    ("name", "num_cameras", "image_size", "shared", "flattened"),
    [
        ("pixel", 1, 64, True, 64 * 8 * 8),
        ("pixel", 3, 64, True, 64 * 8 * 8),
        ("pixel", 3, 64, False, 64 * 8 * 8),
        ("pixel", 2, (48, 64), False, 64 * 6 * 8),
        ("rad", 1, 64, True, 64 * 7 * 7),  # 56 px crops: NatureCNN's 3136 at 84 px
        ("rad", 3, (48, 64), True, 64 * 5 * 7),  # 40 x 56 crops
    ],
)
def test_output_contract(name, num_cameras, image_size, shared, flattened) -> None:
    module = model(name, num_cameras, image_size, shared_encoder=shared).train()
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    output = module(torch.rand(5, num_cameras, 3, height, width), *cameras(num_cameras))
    assert isinstance(output, PerceptionOutput) and module.keypoint_frame == "image"
    assert output.features.shape == (5, module.features_dim) == (5, 32 * num_cameras)
    assert output.keypoints.shape == (5, 0, 2) and output.keypoints.dtype == torch.float32
    assert output.confidence is None and output.losses == {}
    assert output.total_loss().item() == 0.0
    assert len(module.encoders) == (1 if shared else num_cameras)
    assert linear_inputs(module) == flattened
    visuals = output.visuals
    assert visuals.points is None and visuals.heatmaps is None
    if name == "rad":
        assert visuals.crop_size == module.input_size
        assert visuals.crop_origins.shape == (5, num_cameras, 2)
    else:
        assert visuals.crop_origins is None and visuals.crop_size is None


def test_gradients_reach_the_first_conv_of_every_encoder() -> None:
    for shared in (True, False):
        module = model(shared_encoder=shared).train()
        module(torch.rand(2, 3, 3, IMAGE, IMAGE), *cameras(3)).features.square().sum().backward()
        for encoder in module.encoders:
            first = encoder[0][0]
            assert isinstance(first, torch.nn.Conv2d) and first.kernel_size == (8, 8)
            assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_shared_encoder_sees_every_camera_alike() -> None:
    module = model().eval()
    view = torch.rand(2, 1, 3, IMAGE, IMAGE)
    features = module(view.expand(2, 3, 3, IMAGE, IMAGE), *cameras(3)).features.reshape(2, 3, 32)
    torch.testing.assert_close(features[:, 1], features[:, 0])
    torch.testing.assert_close(features[:, 2], features[:, 0])
    shared = sum(p.numel() for p in module.parameters())
    assert sum(p.numel() for p in model(shared_encoder=False).parameters()) == 3 * shared


def test_per_camera_encoders_keep_cameras_apart() -> None:
    module = model(shared_encoder=False).eval()
    images = torch.rand(2, 3, 3, IMAGE, IMAGE)
    before = module(images, *cameras(3)).features.reshape(2, 3, 32)
    images[:, 1] = torch.rand_like(images[:, 1])
    after = module(images, *cameras(3)).features.reshape(2, 3, 32)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_camera_matrices_are_validated_but_not_used() -> None:
    module = model().eval()
    images = torch.rand(2, 3, 3, IMAGE, IMAGE)
    intrinsics, extrinsics = cameras(3)
    torch.testing.assert_close(
        module(images, intrinsics, extrinsics).features,
        module(images, 2 * intrinsics, extrinsics.expand(2, 3, 4, 4)).features,
    )
    with pytest.raises(ValueError, match=r"intrinsics must have shape \(2, 3, 3, 3\)"):
        module(images, intrinsics[:1], extrinsics)


class TestRandomCrop:
    def test_training_crops_differ_between_forwards(self) -> None:
        module = model("rad").train()
        images = torch.rand(4, 3, 3, IMAGE, IMAGE)
        first, second = module(images, *cameras(3)), module(images, *cameras(3))
        assert not torch.equal(first.visuals.crop_origins, second.visuals.crop_origins)
        assert not torch.allclose(first.features, second.features)
        origins = torch.cat([first.visuals.crop_origins, second.visuals.crop_origins])
        assert origins.min() >= 0 and origins.max() <= IMAGE - 56

    def test_eval_crops_are_centred_and_deterministic(self) -> None:
        module = model("rad").eval()
        images = torch.rand(4, 3, 3, IMAGE, IMAGE)
        first, second = module(images, *cameras(3)), module(images, *cameras(3))
        assert (first.visuals.crop_origins == 4).all()
        torch.testing.assert_close(first.features, second.features)
        # The centred crop is what the encoder sees: the border does not matter.
        images[..., :4, :] = 0.0
        images[..., :, -4:] = 1.0
        torch.testing.assert_close(module(images, *cameras(3)).features, first.features)

    def test_without_random_crop_training_is_deterministic(self) -> None:
        module = model().train()
        images = torch.rand(2, 3, 3, IMAGE, IMAGE)
        torch.testing.assert_close(
            module(images, *cameras(3)).features, module(images, *cameras(3)).features
        )

    def test_crop_sizes(self) -> None:
        assert model().input_size == (64, 64)
        assert model("rad").input_size == (56, 56)
        assert model(random_crop="auto").input_size == (56, 56)
        assert model("rad", image_size=128).input_size == (112, 112)
        assert model("rad", random_crop=48).input_size == (48, 48)
        assert model("pixel", random_crop=(40, 48)).input_size == (40, 48)
        assert model("rad", random_crop=None).input_size == (64, 64)


def test_make_perception_builds_pixel_and_rad() -> None:
    assert {"pixel", "rad"} <= set(available_perceptions())
    assert type(model("pixel")) is PixelEncoder
    assert isinstance(model("rad"), RAD) and model("rad").random_crop
    assert not model("pixel").random_crop
    default = make_perception("pixel", num_cameras=2, image_size=IMAGE)
    assert default.features_dim == 2 * 512  # SB3's NatureCNN features_dim per camera
    for name in ("pixel", "rad"):
        assert perception_hyperparameters(name) == [
            "camera_features",
            "random_crop",
            "shared_encoder",
        ]
    with pytest.raises(TypeError, match=r"\['num_keypoints'\]; valid: .*'random_crop'"):
        make_perception("rad", num_cameras=1, image_size=IMAGE, num_keypoints=4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"random_crop": 80}, r"random_crop must be positive and at most the image size"),
        ({"random_crop": 0}, r"random_crop must be positive"),
        ({"camera_features": 0}, r"camera_features must be a positive int"),
        ({"image_size": 4}, r"views of \(4, 4\) px are too small"),
    ],
)
def test_bad_arguments(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        model(**options)


def test_bad_images() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 3, 64, 64\); got \(2, 3, 3, 56, 56\)"):
        model()(torch.rand(2, 3, 3, 56, 56), *cameras(3))


def test_layers_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(layers, verbose=False)
    assert tried > 0
    assert failures == 0
