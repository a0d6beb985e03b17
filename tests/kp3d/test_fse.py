"""Tests of factorized spatial embeddings (:mod:`kp3d.perception.fse`, Thewlis et al. 2017).

An oracle detector that finds a planted red dot is equivariant by construction: its alignment
loss on warped pairs must be ~0, and that of a detector that ignores the image must not be.
"""

from __future__ import annotations

import pytest
import torch
from perception_fixtures import identity_cameras, losses_before_and_after_training
from torch import nn

from kp3d.perception import (
    FactorizedSpatialEmbeddings,
    PerceptionOutput,
    available_perceptions,
    make_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.fse import diversity_loss
from kp3d.perception.scene import foreground_coverage
from kp3d.spatial import gaussian_maps

IMAGE = 32


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid ``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)``; FSE ignores them."""
    return identity_cameras(count, 40.0, (16.0, 16.0))


def small_model(num_cameras: int = 2, **kwargs) -> FactorizedSpatialEmbeddings:
    torch.manual_seed(0)
    options = {"num_keypoints": 3, "base_filters": 4, **kwargs}
    return make_perception("fse", num_cameras=num_cameras, image_size=IMAGE, **options)


def dot_images(count: int, seed: int, size: int = IMAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey ``(N, 3, H, W)`` images with one red dot (std 1 px) each, and the dots' pixels
    ``(N, 2)``, in the central half of the image (so that warps keep them inside)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(count, 2, generator=generator) * size / 2 + size / 4
    dot = gaussian_maps(pixels, 1.0, size)  # (N, H, W), peak 1
    grey = torch.full((count, 3, size, size), 0.5)
    red = torch.stack([0.5 + 0.5 * dot, 0.5 - 0.5 * dot, 0.5 - 0.5 * dot], dim=1)
    return torch.where(dot[:, None] > 1e-3, red, grey), pixels


class DotOracle(FactorizedSpatialEmbeddings):
    """FSE whose every heatmap is the red mass of the image pooled onto the heatmap grid: its
    landmarks are the red dot's centroid, wherever a warp moves the dot."""

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        redness = (images[:, 0] - images[:, 1:].mean(dim=1)).clamp(min=0.0)
        pooled = torch.nn.functional.avg_pool2d(redness[:, None], IMAGE // self.heatmap_size[0])
        return (pooled + 1e-9).log().expand(-1, self.num_keypoints, -1, -1)


class ConstantDetector(FactorizedSpatialEmbeddings):
    """FSE whose heatmaps ignore the image: uniform maps, landmarks at the image centre."""

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(images.shape[0], self.num_keypoints, *self.heatmap_size)


def test_registered() -> None:
    assert "fse" in available_perceptions()


@pytest.mark.parametrize(("num_cameras", "stride", "grid"), [(1, 2, 16), (2, 4, 8), (3, 1, 32)])
def test_output_contract(num_cameras, stride, grid) -> None:
    model = small_model(num_cameras, heatmap_stride=stride).train()
    images = torch.rand(2, num_cameras, 3, IMAGE, IMAGE)
    output = model(images, *cameras(num_cameras))
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    assert model.heatmap_size == (grid, grid)
    assert output.features.shape == (2, model.features_dim) == (2, 2 * num_cameras * 3)
    assert output.keypoints.shape == (2, num_cameras * 3, 2)
    assert output.confidence is None
    assert set(output.losses) == {"equivariance", "diversity"}
    assert all(term.ndim == 0 and torch.isfinite(term) for term in output.losses.values())
    visuals = output.visuals
    assert visuals.points.shape == visuals.detections.shape == (2, num_cameras, 3, 2)
    assert visuals.heatmaps.shape == (2, num_cameras, 3, grid, grid)
    torch.testing.assert_close(visuals.heatmaps.sum(dim=(-2, -1)), torch.ones(2, num_cameras, 3))
    torch.testing.assert_close(output.keypoints, visuals.points.flatten(1, 2))
    torch.testing.assert_close(
        output.features, normalized_coordinates(visuals.points, (IMAGE, IMAGE)).flatten(1)
    )
    assert (output.keypoints >= 0).all() and (output.keypoints <= IMAGE).all()
    assert model(images, *cameras(num_cameras), compute_losses=False).losses == {}


def test_eval_is_deterministic_and_zero_weights_drop_terms() -> None:
    model = small_model().eval()
    images = torch.rand(2, 2, 3, IMAGE, IMAGE)
    one, two = model(images, *cameras(2)), model(images, *cameras(2))
    for name in one.losses:
        torch.testing.assert_close(one.losses[name], two.losses[name], rtol=0, atol=0)
    assert set(small_model(diversity_weight=0.0)(images, *cameras(2)).losses) == {"equivariance"}


def test_diversity_loss() -> None:
    # Disjoint one-hot maps: no cell is shared, the loss is 0.
    disjoint = torch.zeros(2, 3, 4, 4)
    disjoint[:, 0, 0, 0] = disjoint[:, 1, 2, 3] = disjoint[:, 2, 3, 1] = 1.0
    torch.testing.assert_close(diversity_loss(disjoint), torch.zeros(2))
    # Identical maps: K - 1, whatever they are.
    identical = torch.rand(4, 4).div(16.0)
    identical = (identical / identical.sum()).expand(2, 3, 4, 4)
    torch.testing.assert_close(diversity_loss(identical), torch.full((2,), 2.0))
    # Two maps sharing half their mass: 0.5.
    halves = torch.zeros(2, 4, 4)
    halves[0, 0, 0] = halves[0, 1, 1] = halves[1, 1, 1] = halves[1, 2, 2] = 0.5
    torch.testing.assert_close(diversity_loss(halves), torch.tensor(0.5))
    with pytest.raises(ValueError, match=r"\(\*, K, S_h, S_w\)"):
        diversity_loss(torch.zeros(4, 4))


def test_pooled_diversity_loss_needs_landmarks_a_block_apart() -> None:
    # Two one-hot maps in neighbouring cells: free for the paper's loss, a full overlap once
    # the cells are pooled into 2 x 2 blocks, free again when they are a block apart.
    neighbours = torch.zeros(2, 5, 5)
    neighbours[0, 2, 2] = neighbours[1, 2, 3] = 1.0
    torch.testing.assert_close(diversity_loss(neighbours), torch.tensor(0.0))
    torch.testing.assert_close(diversity_loss(neighbours, pool=2), torch.tensor(1.0))
    apart = torch.zeros(2, 5, 5)
    apart[0, 0, 0] = apart[1, 4, 4] = 1.0  # the last, partial block counts as one
    torch.testing.assert_close(diversity_loss(apart, pool=2), torch.tensor(0.0))
    # Pooling keeps every map's mass: identical maps still cost K - 1.
    identical = torch.rand(7, 7)
    identical = (identical / identical.sum()).expand(3, 7, 7)
    torch.testing.assert_close(diversity_loss(identical, pool=3), torch.tensor(2.0))
    with pytest.raises(ValueError, match="pool"):
        diversity_loss(neighbours, pool=0)
    with pytest.raises(ValueError, match="diversity_pool"):
        make_perception("fse", num_cameras=1, image_size=64, diversity_pool=0)


def test_equivariance_loss_is_zero_for_an_equivariant_oracle_and_large_for_a_constant() -> None:
    images, pixels = dot_images(16, seed=0)
    images = images[:, None]  # one camera
    torch.manual_seed(1)
    oracle = DotOracle(1, IMAGE, num_keypoints=2, equivariance_weight=1.0, diversity_weight=0.0)
    found = oracle.eval()(images, *cameras(1))
    # The oracle finds the dots (its maps are the dots' red mass).
    torch.testing.assert_close(found.keypoints[:, 0], pixels, atol=0.05, rtol=0)
    aligned = oracle.train()(images, *cameras(1)).losses["equivariance"]
    constant = ConstantDetector(1, IMAGE, num_keypoints=2, equivariance_weight=1.0)
    misaligned = constant.train()(images, *cameras(1)).losses["equivariance"]
    # Normalised units: 1 px is 2 / IMAGE. The oracle follows the warps to ~0.1 px; they move
    # the image centre by pixels, which the constant detector cannot follow.
    pixel = 2.0 / IMAGE
    assert aligned < (0.15 * pixel) ** 2, aligned
    assert misaligned > (0.75 * pixel) ** 2, misaligned


def test_training_decreases_the_loss_on_a_fixed_batch() -> None:
    model = small_model(num_cameras=1, num_keypoints=2)
    images, _ = dot_images(4, seed=2)
    images = images[:, None]
    before, after = losses_before_and_after_training(
        model, images, cameras(1), steps=30, lr=1e-2, seed=7
    )
    assert after < 0.7 * before, (before, after)


def test_errors() -> None:
    with pytest.raises(ValueError, match="divisible by heatmap_stride"):
        make_perception("fse", num_cameras=1, image_size=(62, 64), heatmap_stride=4)
    with pytest.raises(ValueError, match="heatmap_stride must be 1, 2 or 4"):
        make_perception("fse", num_cameras=1, image_size=64, heatmap_stride=3)
    with pytest.raises(ValueError, match="diversity_weight must be non-negative"):
        make_perception("fse", num_cameras=1, image_size=64, diversity_weight=-1.0)
    model = small_model()
    with pytest.raises(ValueError, match="images must have shape"):
        model(torch.rand(2, 3, 3, IMAGE, IMAGE), *cameras(3))


def test_foreground_prior_draws_landmarks_to_what_differs_from_the_empty_scene() -> None:
    """With a detector that prefers no cell (zero head), the prior alone places every landmark
    on the red dot, the only thing that differs from the grey empty scene; in warped training
    views the prior moves with the dot, so this oracle is equivariant (loss ~ 0)."""
    images, pixels = dot_images(4, seed=3)
    model = small_model(1, foreground_prior=30.0, heatmap_stride=1)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    model.set_background(torch.full((1, 3, IMAGE, IMAGE), 0.5))
    output = model.eval()(images[:, None], *cameras(1), compute_losses=False)
    error = (output.keypoints - pixels[:, None]).norm(dim=-1)
    assert error.max() < 1.0, error
    assert model.detector_inputs(images[:, None]).shape == (4, 4, IMAGE, IMAGE)
    losses = model.train().auxiliary_losses(model.detector_inputs(images[:, None]))
    plain = small_model(1, heatmap_stride=1)
    nn.init.zeros_(plain.head.weight)
    nn.init.zeros_(plain.head.bias)
    constant = plain.train().auxiliary_losses(plain.detector_inputs(images[:, None]))
    assert losses["equivariance"] < 0.05 * constant["equivariance"]
    with pytest.raises(ValueError, match="foreground_prior must be non-negative"):
        small_model(foreground_prior=-1.0)


def test_coverage_term_on_the_undeformed_views_landmarks() -> None:
    """The coverage term is :func:`foreground_coverage` of the forward's landmarks against the
    difference from the empty scene, with the prior's magnitude channel or without the prior;
    it reaches the detector."""
    images = torch.full((2, 1, 3, IMAGE, IMAGE), 0.5)
    images[0, 0, :, 2:5, 3:6] = 1.0
    images[1, 0, :, 10:14, 20:24] = 0.0
    background = torch.full((1, 3, IMAGE, IMAGE), 0.5)
    magnitude = (images[:, 0] - background).abs().amax(1, keepdim=True)
    for prior in (0.0, 5.0):
        model = small_model(1, coverage_weight=2.0, foreground_prior=prior, init="he").eval()
        model.set_background(background)
        output = model(images, *cameras(1))
        assert set(output.losses) == {"equivariance", "diversity", "coverage"}
        expected = 2.0 * foreground_coverage(output.keypoints, magnitude).mean()
        torch.testing.assert_close(output.losses["coverage"], expected)
        model.train()(images, *cameras(1)).losses["coverage"].backward()
        assert model.head.weight.grad.abs().sum() > 0
        assert "coverage" not in model(images, *cameras(1), compute_losses=False).losses
    with pytest.raises(ValueError, match="coverage_weight must be non-negative"):
        small_model(coverage_weight=-1.0)
