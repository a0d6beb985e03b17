"""Tests of Zhang et al. 2018 (:mod:`kp3d.perception.zhang2018`).

Hand-made channel maps check the landmark statistics and the constraints' values; an oracle
detector that finds a planted red dot checks the two equivariance terms: zero under random warps
and under the true motion of a scene whose only body moves, large for a detector that ignores the
image.
"""

from __future__ import annotations

import math

import pytest
import torch
from perception_fixtures import identity_cameras, losses_before_and_after_training

from kp3d.batch import FrameBatch
from kp3d.perception import PerceptionOutput, Zhang2018, available_perceptions, make_perception
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.zhang2018 import (
    channel_landmarks,
    concentration_loss,
    decoding_masks,
    landmark_motion,
    landmark_separation_loss,
)
from kp3d.spatial import gaussian_maps

IMAGE = 32
FOCAL = 40.0


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)``: pinhole cameras at the origin
    looking along +z (world = camera frame)."""
    return identity_cameras(count, FOCAL, (IMAGE / 2, IMAGE / 2))


def small_model(num_cameras: int = 1, **kwargs) -> Zhang2018:
    torch.manual_seed(0)
    options = {
        "num_keypoints": 2,
        "channels": 8,
        "feature_channels": 4,
        "descriptor_dim": 3,
        "decoder_levels": 2,
        **kwargs,
    }
    return make_perception("zhang2018", num_cameras=num_cameras, image_size=IMAGE, **options)


def dot_images(pixels: torch.Tensor) -> torch.Tensor:
    """Grey ``(N, 3, H, W)`` images with a red dot (std 1 px) at each of ``pixels (N, 2)``."""
    dot = gaussian_maps(pixels, 1.0, IMAGE)
    return torch.stack([0.5 + 0.5 * dot, 0.5 - 0.5 * dot, 0.5 - 0.5 * dot], dim=1)


class DotOracle(Zhang2018):
    """Zhang2018 whose first landmark channel is the image's red mass (scaled to a peak of 1),
    the others and the background sharing the rest: landmark 0 is the red dot, wherever it is."""

    def detect(self, views: torch.Tensor) -> torch.Tensor:
        redness = (views[:, 0] - views[:, 1:].mean(dim=1)).clamp(min=0.0)
        pooled = torch.nn.functional.avg_pool2d(redness[:, None], 2)[:, 0]  # (N, S, S)
        dot = pooled / (pooled.amax(dim=(-2, -1), keepdim=True) + 1e-9)
        rest = (1.0 - dot)[:, None] / self.num_keypoints
        return torch.cat([dot[:, None], rest.expand(-1, self.num_keypoints, -1, -1)], dim=1)


class ConstantDetector(Zhang2018):
    """Zhang2018 whose channel maps ignore the image (uniform): landmarks at the centre."""

    def detect(self, views: torch.Tensor) -> torch.Tensor:
        count = self.num_keypoints + 1
        return views.new_full((views.shape[0], count, *self.grid_size), 1.0 / count)


def test_registered() -> None:
    assert "zhang2018" in available_perceptions()


@pytest.mark.parametrize("num_cameras", [1, 2])
def test_output_contract(num_cameras) -> None:
    model = small_model(num_cameras).train()
    images = torch.rand(2, num_cameras, 3, IMAGE, IMAGE)
    output = model(images, *cameras(num_cameras))
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    count = num_cameras * 2
    assert output.features.shape == (2, model.features_dim) == (2, 2 * count)
    assert output.keypoints.shape == (2, count, 2)
    assert output.confidence.shape == (2, count) and (output.confidence > 0).all()
    assert set(output.losses) == {"reconstruction", "concentration", "separation", "equivariance"}
    assert all(term.ndim == 0 and torch.isfinite(term) for term in output.losses.values())
    visuals = output.visuals
    assert visuals.points.shape == (2, num_cameras, 2, 2)
    torch.testing.assert_close(output.keypoints, visuals.points.flatten(1, 2))
    torch.testing.assert_close(
        output.features, normalized_coordinates(visuals.points, (IMAGE, IMAGE)).flatten(1)
    )
    assert visuals.heatmaps.shape == (2, num_cameras, 2, 16, 16)
    torch.testing.assert_close(visuals.heatmaps.sum(dim=(-2, -1)), torch.ones(2, num_cameras, 2))
    assert visuals.reconstructions.shape == (2, num_cameras, 3, IMAGE, IMAGE)
    assert not visuals.reconstructions.requires_grad
    rollout = model(images, *cameras(num_cameras), compute_losses=False)
    assert rollout.losses == {} and rollout.visuals.reconstructions is None
    # Every term reaches the networks it should train.
    model.zero_grad()
    output.total_loss().backward()
    for network in (model.detector, model.feature_encoder, model.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_eval_is_deterministic() -> None:
    model = small_model().eval()
    images = torch.rand(2, 1, 3, IMAGE, IMAGE)
    one, two = model(images, *cameras(1)), model(images, *cameras(1))
    for name in one.losses:
        torch.testing.assert_close(one.losses[name], two.losses[name], rtol=0, atol=0)


def test_channel_landmarks_on_hand_made_maps() -> None:
    maps = torch.zeros(2, 4, 6)  # K = 2 channels on a 4 x 6 grid
    maps[0, 1, 2] = 0.8  # one cell: row 1, column 2, centre (2.5, 1.5)
    maps[1, 0, 0] = maps[1, 0, 4] = 0.5  # two cells of row 0, centres (0.5, .5) and (4.5, .5)
    means, variances, mass = channel_landmarks(maps)
    torch.testing.assert_close(means, torch.tensor([[2.5, 1.5], [2.5, 0.5]]))
    torch.testing.assert_close(variances, torch.tensor([[0.0, 0.0], [4.0, 0.0]]))
    torch.testing.assert_close(mass, torch.tensor([0.8, 1.0]))


def test_concentration_loss() -> None:
    variances = torch.tensor([[0.01, 0.02], [0.0, 0.0]])
    expected = torch.tensor([2 * math.pi * math.e * 0.03**2, 0.0])
    torch.testing.assert_close(concentration_loss(variances), expected)


def test_separation_loss() -> None:
    on_top = torch.tensor([[[0.3, 0.3], [0.3, 0.3]]])
    torch.testing.assert_close(landmark_separation_loss(on_top, 0.05), torch.tensor([2.0]))
    apart = torch.tensor([[[0.0, 0.0], [0.05, 0.0], [1.0, 1.0]]])
    # One pair at one bandwidth (both orders: 2 e^-1/2), the rest far apart.
    torch.testing.assert_close(
        landmark_separation_loss(apart, 0.05), torch.tensor([2 * math.exp(-0.5)]), atol=1e-6, rtol=0
    )
    assert landmark_separation_loss(torch.zeros(3, 1, 2), 0.1).abs().max() == 0


def test_decoding_masks() -> None:
    landmarks = torch.tensor([[[2.5, 2.5], [12.5, 9.5]]])
    masks = decoding_masks(landmarks, 1.0, (16, 16))
    assert masks.shape == (1, 3, 16, 16)
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(1, 16, 16))
    assert masks[0, 0, 2, 2] > 0.95 and masks[0, 1, 9, 12] > 0.95  # at each landmark, its own
    assert masks[0, 2, 15, 0] > 0.99  # far from both, the background


def test_warp_equivariance_is_zero_for_an_oracle_and_large_for_a_constant() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(16, 2, generator=generator) * IMAGE / 2 + IMAGE / 4
    images = dot_images(pixels)[:, None]
    torch.manual_seed(3)
    oracle = DotOracle(1, IMAGE, num_keypoints=1, channels=8, equivariance_weight=1.0)
    output = oracle.train()(images, *cameras(1))
    # The oracle finds the dots.
    torch.testing.assert_close(output.keypoints[:, 0], pixels, atol=0.05, rtol=0)
    # Units of the image side: 1 px is 1/32. The oracle follows the warps to ~0.1 px (the
    # deformed dot's centroid on a grid of 2 px cells); the warps move the image centre by
    # pixels, which a constant cannot follow.
    aligned = output.losses["equivariance"]
    assert aligned < (0.2 / IMAGE) ** 2, aligned
    constant = ConstantDetector(1, IMAGE, num_keypoints=2, channels=8, equivariance_weight=1.0)
    misaligned = constant.train()(images, *cameras(1)).losses["equivariance"]
    assert misaligned > (0.5 / IMAGE) ** 2, misaligned


def moving_scene(shift: float) -> tuple[FrameBatch, FrameBatch, torch.Tensor, torch.Tensor]:
    """Two frames of one camera watching a wall 2 m away (body 1) that moves ``shift`` metres
    along x between them, with a red dot painted on it; the dot's pixels in both frames."""
    count = 4
    generator = torch.Generator().manual_seed(1)
    first = torch.rand(count, 2, generator=generator) * IMAGE / 2 + IMAGE / 4
    second = first + torch.tensor([FOCAL * shift / 2.0, 0.0])
    intrinsics, extrinsics = cameras(1)

    def frame(pixels: torch.Tensor, offset: float) -> FrameBatch:
        poses = torch.eye(4).repeat(count, 2, 1, 1)
        poses[:, 1, 0, 3] = offset
        return FrameBatch(
            images=dot_images(pixels)[:, None],
            intrinsics=intrinsics.expand(count, 1, 3, 3),
            extrinsics=extrinsics.expand(count, 1, 4, 4),
            depth=torch.full((count, 1, IMAGE, IMAGE), 2.0),
            segmentation=torch.ones(count, 1, IMAGE, IMAGE, dtype=torch.long),
            body_poses=poses,
        )

    return frame(first, 0.0), frame(second, shift), first, second


def test_landmark_motion_is_the_true_motion() -> None:
    batch, pair, first, second = moving_scene(0.2)  # 4 px to the right
    flow, known = landmark_motion(first[:, None], batch, pair)
    assert known.all()
    torch.testing.assert_close(flow[:, 0], second - first, atol=1e-4, rtol=0)


def test_motion_equivariance_is_zero_when_landmarks_follow_the_motion() -> None:
    batch, pair, _, _ = moving_scene(0.2)
    oracle = DotOracle(1, IMAGE, num_keypoints=1, channels=8, motion_weight=1.0).train()
    with pytest.raises(ValueError, match="pairs"):
        oracle.training_losses(batch)
    batch.pair = pair
    following = oracle.training_losses(batch)["motion"]
    assert following < (0.1 / IMAGE) ** 2, following
    # A dot that does not move with the wall (the pair shows it where it was) is penalised.
    batch.pair = FrameBatch(**{**vars(pair), "images": batch.images})
    assert oracle.training_losses(batch)["motion"] > (3.0 / IMAGE) ** 2
    # Without depth, segmentation or body poses the motion is unknown.
    batch.pair = FrameBatch(pair.images, pair.intrinsics, pair.extrinsics)
    with pytest.raises(ValueError, match=r"batch\.pair\.depth"):
        oracle.training_losses(batch)
    # With motion_weight=0 no pair is needed, and there is no motion term.
    batch.pair = None
    without = DotOracle(1, IMAGE, num_keypoints=1, channels=8, motion_weight=0.0).train()
    assert "motion" not in without.training_losses(batch)


def test_training_decreases_the_loss_on_a_fixed_batch() -> None:
    model = small_model()
    images = dot_images(torch.tensor([[10.0, 12.0], [20.0, 18.0]]))[:, None]
    before, after = losses_before_and_after_training(
        model, images, cameras(1), steps=8, lr=1e-2, seed=5
    )
    assert after < 0.7 * before, (before, after)


def test_errors() -> None:
    with pytest.raises(ValueError, match="image sides must be even"):
        make_perception("zhang2018", num_cameras=1, image_size=(31, 32))
    with pytest.raises(ValueError, match="channels must be a positive multiple of 4"):
        make_perception("zhang2018", num_cameras=1, image_size=32, channels=6)
    with pytest.raises(ValueError, match="depth must be an int"):
        make_perception("zhang2018", num_cameras=1, image_size=32, depth=5)
    with pytest.raises(ValueError, match="separation_bandwidth must be positive"):
        make_perception("zhang2018", num_cameras=1, image_size=32, separation_bandwidth=0.0)
