"""Tests of Keypoint2D (:mod:`kp3d.perception.keypoint2d`), the 2D ablation of Keypoint3D.

An oracle detector (ideal heatmaps at known pixels) checks the pixel bookkeeping of ``forward``
exactly: crop offsets added back, coordinates normalised, separation within views only. Coloured
blobs drawn in 2D check that unsupervised training learns.
"""

from __future__ import annotations

import pytest
import torch
from perception_fixtures import identity_cameras, object_error

from kp3d.perception import (
    Keypoint2D,
    PerceptionOutput,
    available_perceptions,
    make_perception,
    perception_hyperparameters,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.keypoint2d import IMAGE_SEPARATION_SCALE
from kp3d.spatial import gaussian_maps, image_to_heatmap

IMAGE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """Run single-threaded: these tiny models are fastest so, and with more threads than free
    cores OpenMP's threads wait on each other (seconds per training step instead of ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(
    num_cameras: int = 3, image_size: int | tuple[int, int] = IMAGE, **kwargs
) -> Keypoint2D:
    torch.manual_seed(0)
    options = {"num_keypoints": 4, "base_filters": 4, **kwargs}
    return make_perception("keypoint2d", num_cameras=num_cameras, image_size=image_size, **options)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Some valid ``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)``: Keypoint2D ignores them."""
    return identity_cameras(count, 60.0, (32.0, 32.0))


# -- the output contract ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_cameras", "image_size", "crop", "heatmap"),
    [(1, 64, (56, 56), (14, 14)), (3, 64, (56, 56), (14, 14)), (2, (48, 64), (40, 56), (10, 14))],
)
def test_output_contract(num_cameras, image_size, crop, heatmap) -> None:
    model = small_model(num_cameras, image_size).train()
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = torch.rand(5, num_cameras, 3, height, width)
    output = model(images, *cameras(num_cameras))
    count, keypoints = num_cameras, 4
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    assert model.crop_size == crop and model.heatmap_size == heatmap
    assert output.features.shape == (5, model.features_dim) == (5, 3 * count * keypoints)
    assert output.keypoints.shape == (5, count * keypoints, 2)
    assert output.confidence.shape == (5, count * keypoints)
    # Attention is a distribution over the keypoints of each view.
    torch.testing.assert_close(output.confidence.reshape(5, count, 4).sum(-1), torch.ones(5, count))
    assert set(output.losses) == {"reconstruction", "separation"}
    assert all(term.ndim == 0 for term in output.losses.values())

    visuals = output.visuals
    assert visuals.points.shape == visuals.detections.shape == (5, count, keypoints, 2)
    torch.testing.assert_close(visuals.points, visuals.detections)
    # Keypoints are the per-view detections, camera-major.
    torch.testing.assert_close(output.keypoints, visuals.detections.flatten(1, 2))
    assert visuals.heatmaps.shape == (5, count, keypoints, *heatmap)
    assert visuals.reconstructions.shape == (5, count, 3, *crop)
    assert visuals.crop_size == crop
    origins = visuals.crop_origins
    assert origins.shape == (5, count, 2)
    assert origins.min() >= 0
    assert (origins[..., 0] <= width - crop[1]).all() and (
        origins[..., 1] <= height - crop[0]
    ).all()
    assert not visuals.points.requires_grad and not visuals.reconstructions.requires_grad

    # Features: [u, v] normalised by the image size, then attention, per camera and keypoint.
    per_keypoint = output.features.reshape(5, count, keypoints, 3)
    torch.testing.assert_close(
        per_keypoint[..., :2], normalized_coordinates(visuals.detections, (height, width))
    )
    torch.testing.assert_close(per_keypoint[..., 2].flatten(1), output.confidence)
    # Keypoints lie in the crop window they were found in.
    assert (visuals.detections >= origins[:, :, None]).all()


# -- an oracle detector ----------------------------------------------------------------------------


class OracleKeypoint2D(Keypoint2D):
    """Keypoint2D whose detector is replaced by ideal heatmaps (normalised Gaussians of one cell)
    at known full-image ``pixels (C, K, 2)``, seen through fixed crop ``origins (C, 2)``.

    A Gaussian of one cell sampled on the grid has its discrete mean at its centre to ~1e-6 px
    (aliasing ~ exp(-2π² sigma²), truncation by the grid's edges) when the centre lies 5 cells
    (20 px) or more inside the crop: full-image pixels in [28, 36] for every crop origin of a
    64 px view.
    """

    def __init__(self, pixels: torch.Tensor, origins: torch.Tensor, **kwargs) -> None:
        count, keypoints, _ = pixels.shape
        super().__init__(count, IMAGE, num_keypoints=keypoints, base_filters=4, **kwargs)
        self.pixels, self.origins = pixels, origins

    def crop_origins(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self.origins.expand(batch, *self.origins.shape).to(dtype)

    def detect(self, crops: torch.Tensor, crop_origins: torch.Tensor) -> torch.Tensor:
        centres = image_to_heatmap(
            self.pixels, self.heatmap_size, self.crop_size, self.origins[:, None]
        )
        # The log of a Gaussian is a logit map whose spatial softmax is that Gaussian, normalised.
        logits = gaussian_maps(centres, 1.0, self.heatmap_size).log()
        return logits.expand(crops.shape[0], *logits.shape)


KNOWN_PIXELS = torch.tensor(
    [[[28.3, 30.1], [35.7, 28.2], [33.0, 35.4]], [[29.5, 34.25], [35.9, 31.0], [30.2, 30.8]]],
    dtype=torch.float64,
)


@pytest.mark.parametrize(
    "origins", [[[4.0, 4.0], [4.0, 4.0]], [[0.0, 8.0], [7.0, 1.0]]], ids=["centred", "shifted"]
)
def test_oracle_keypoints_are_the_known_pixels_whatever_the_crop(origins) -> None:
    oracle = OracleKeypoint2D(KNOWN_PIXELS, torch.tensor(origins, dtype=torch.float64))
    oracle = oracle.double().eval()
    images = torch.rand(3, 2, 3, IMAGE, IMAGE, dtype=torch.float64)
    output = oracle(images, *cameras(2))
    expected = KNOWN_PIXELS.expand(3, 2, 3, 2)
    torch.testing.assert_close(output.keypoints, expected.flatten(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(output.visuals.points, expected, atol=1e-5, rtol=0)
    coordinates = output.features.reshape(3, 2, 3, 3)[..., :2]
    torch.testing.assert_close(coordinates, (expected / 32.0 - 1.0), atol=1e-5, rtol=0)


def test_separation_pairs_keypoints_within_each_view_only() -> None:
    # Two keypoints per view 8 px apart (d = 0.25 in normalised coordinates), at the same places
    # in both views: pairs across views (d = 0) or self-pairs would add penalties of 1.
    pixels = torch.tensor([[[28.0, 32.0], [36.0, 32.0]]] * 2, dtype=torch.float64)
    oracle = OracleKeypoint2D(pixels, torch.full((2, 2), 4.0, dtype=torch.float64)).double()
    output = oracle.eval()(torch.rand(1, 2, 3, IMAGE, IMAGE, dtype=torch.float64), *cameras(2))
    expected = 0.0025 / (IMAGE_SEPARATION_SCALE * 0.25**2 + 1.0)
    assert output.losses["separation"].item() == pytest.approx(expected, rel=1e-6)


# -- the module ------------------------------------------------------------------------------------


class TestKeypoint2D:
    def test_eval_is_deterministic_and_centred(self) -> None:
        model = small_model().eval()
        images = torch.rand(2, 3, 3, IMAGE, IMAGE)
        first, second = model(images, *cameras(3)), model(images, *cameras(3))
        torch.testing.assert_close(first.features, second.features)
        torch.testing.assert_close(first.total_loss(), second.total_loss())
        assert (first.visuals.crop_origins == 4).all()

    def test_training_crops_and_noise_are_random(self) -> None:
        model = small_model().train()
        images = torch.rand(8, 3, 3, IMAGE, IMAGE)
        first, second = model(images, *cameras(3)), model(images, *cameras(3))
        assert first.visuals.crop_origins.unique().numel() > 1
        assert not torch.allclose(first.keypoints, second.keypoints)

    def test_camera_matrices_are_validated_but_not_used(self) -> None:
        model = small_model().eval()
        images = torch.rand(2, 3, 3, IMAGE, IMAGE)
        intrinsics, extrinsics = cameras(3)
        moved = extrinsics.clone()
        moved[:, :3, 3] = torch.tensor([0.3, -0.2, 1.0])
        torch.testing.assert_close(
            model(images, intrinsics, extrinsics).features,
            model(images, 2 * intrinsics, moved.expand(2, 3, 4, 4)).features,
        )
        with pytest.raises(ValueError, match=r"extrinsics must have shape \(2, 3, 4, 4\)"):
            model(images, intrinsics, extrinsics[:2])

    def test_without_losses_skips_the_decoder(self) -> None:
        model = small_model().eval()
        images = torch.rand(2, 3, 3, IMAGE, IMAGE)
        output = model(images, *cameras(3), compute_losses=False)
        assert output.losses == {} and output.visuals.reconstructions is None
        torch.testing.assert_close(output.features, model(images, *cameras(3)).features)

    def test_weights_scale_and_select_the_terms(self) -> None:
        images = torch.rand(2, 3, 3, IMAGE, IMAGE)
        base = small_model().eval()(images, *cameras(3)).losses
        changed = (
            small_model(reconstruction_weight=10.0, separation_weight=0.0, sparsity_weight=1.0)
            .eval()(images, *cameras(3))
            .losses
        )
        assert set(changed) == {"reconstruction", "sparsity"}
        torch.testing.assert_close(changed["reconstruction"], 2 * base["reconstruction"])

    def test_gradients_reach_every_parameter(self) -> None:
        model = small_model(per_view_encoders=True, background=True, sparsity_weight=0.1).train()
        model.set_background(torch.rand(3, 3, IMAGE, IMAGE))
        model(torch.rand(2, 3, 3, IMAGE, IMAGE), *cameras(3)).total_loss().backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            assert torch.isfinite(parameter.grad).all(), name

    def test_per_view_encoders_keep_cameras_apart(self) -> None:
        model = small_model(per_view_encoders=True).eval()
        images = torch.rand(2, 3, 3, IMAGE, IMAGE)
        before = model(images, *cameras(3)).visuals
        images[:, 1] = torch.rand_like(images[:, 1])
        after = model(images, *cameras(3)).visuals
        for field in ("detections", "reconstructions"):
            torch.testing.assert_close(
                getattr(after, field)[:, [0, 2]], getattr(before, field)[:, [0, 2]]
            )
            assert not torch.allclose(getattr(after, field)[:, 1], getattr(before, field)[:, 1])

    def test_input_errors(self) -> None:
        model = small_model()
        with pytest.raises(ValueError, match=r"\(B, 3, 3, 64, 64\); got \(2, 2, 3, 64, 64\)"):
            model(torch.rand(2, 2, 3, IMAGE, IMAGE), *cameras(2))
        with pytest.raises(ValueError, match="separation_scale"):
            small_model(separation_scale=0.0)
        with pytest.raises(ValueError, match="separation_weight"):
            small_model(separation_weight=-1.0)
        with pytest.raises(ValueError, match="heatmap_stride"):
            small_model(heatmap_stride=2)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda(self) -> None:
        model = small_model().cuda().train()
        output = model(torch.rand(2, 3, 3, IMAGE, IMAGE).cuda(), *cameras(3))  # CPU matrices
        output.total_loss().backward()
        assert output.features.is_cuda and output.keypoints.is_cuda


@pytest.mark.parametrize("coordinates", [False, True])
def test_coordinate_channels_tell_identical_objects_apart(coordinates: bool) -> None:
    """Two identical dots far from the borders: without coordinates every heatmap's logits at
    the two dots are equal (a convolution sees the same patch), so a keypoint cannot prefer one;
    with them they differ."""
    model = small_model(1, coordinate_channels=coordinates).eval()
    images = torch.zeros(1, 1, 3, IMAGE, IMAGE)
    for u, v in ((20, 20), (44, 36)):  # both multiples of the stride from the centred crop
        images[..., 0, v - 1 : v + 2, u - 1 : u + 2] = 1.0
    origins = model.crop_origins(1, images.device, images.dtype)
    logits = model.detect(model.crop(images, origins), origins)[0, 0]  # (K, S, S)
    cells = [
        image_to_heatmap(
            torch.tensor([float(u), float(v)]), model.heatmap_size, model.crop_size, origins[0, 0]
        )
        .floor()
        .long()
        for u, v in ((20, 20), (44, 36))
    ]
    first, second = (logits[:, cell[1], cell[0]] for cell in cells)
    assert torch.allclose(first, second, atol=1e-6) != coordinates


def test_pixel_coordinates_are_full_image_positions() -> None:
    model = small_model(2, coordinate_channels=True)
    origins = torch.tensor([[[0.0, 0.0], [8.0, 3.0]]])
    grid = model.pixel_coordinates(origins)  # (1, 2, 2, 56, 56)
    assert grid.shape == (1, 2, 2, *model.crop_size)
    # Pixel (u, v) of the image has its centre at u + 0.5: (u + 0.5) / 64 * 2 - 1.
    assert grid[0, 0, 0, 0, 0] == pytest.approx(0.5 / 32 - 1)
    assert grid[0, 1, 0, 5, 10] == pytest.approx((8 + 10.5) / 32 - 1)
    assert grid[0, 1, 1, 5, 10] == pytest.approx((3 + 5.5) / 32 - 1)
    assert model.encoder[0].in_channels == 2 * 5


def test_make_perception_builds_keypoint2d() -> None:
    assert "keypoint2d" in available_perceptions()
    assert isinstance(small_model(), Keypoint2D)
    # The keywords Keypoint2D passes on to KeypointAutoencoder are its hyperparameters too.
    assert {"num_keypoints", "crop_size", "separation_scale", "separation_weight"} <= set(
        perception_hyperparameters("keypoint2d")
    )
    assert "mean_depth" not in perception_hyperparameters("keypoint2d")
    with pytest.raises(TypeError, match=r"\['mean_depth'\]; valid: .*'num_keypoints'"):
        make_perception("keypoint2d", num_cameras=1, image_size=IMAGE, mean_depth=1.0)


# -- learning --------------------------------------------------------------------------------------


def blob_images(count: int, num_cameras: int, size: int) -> torch.Tensor:
    """``(count, C, 3, size, size)`` views of a red and a green disc (radius 4 px) at random places
    over a fixed shaded background."""
    generator = torch.Generator().manual_seed(0)
    centres = 6 + torch.rand(count, num_cameras, 2, 2, generator=generator) * (size - 12)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    images = torch.full((count, num_cameras, 3, size, size), 0.35)
    images[:, :, 2] += 0.2 * v / size
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2]])
    for blob, colour in enumerate(colours):
        centre = centres[:, :, blob, :, None, None]
        distance = ((u - centre[:, :, 0]) ** 2 + (v - centre[:, :, 1]) ** 2).sqrt()
        alpha = (4.5 - distance).clamp(0, 1)[:, :, None]
        images = images * (1 - alpha) + alpha * colour[:, None, None]
    return images


def train_on_blobs(images: torch.Tensor, steps: int) -> tuple[float, float]:
    """Train Keypoint2D without labels on a fixed batch of two-camera 32 px views.

    Returns:
        The reconstruction loss (foreground-weighted, unscaled; eval mode) before and after
        training.
    """
    model = small_model(2, 32, base_filters=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def reconstruction_error() -> float:
        with torch.no_grad():
            output = model.eval()(images, *cameras(2))
        return output.losses["reconstruction"].item() / model.loss_weights["reconstruction"]

    before = reconstruction_error()
    for _ in range(steps):
        optimizer.zero_grad()
        model.train()(images, *cameras(2)).total_loss().backward()
        optimizer.step()
    return before, reconstruction_error()


def test_unsupervised_training_reduces_the_reconstruction_loss() -> None:
    before, after = train_on_blobs(blob_images(count=4, num_cameras=2, size=32), steps=40)
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_keypoints_carry_the_moving_blobs() -> None:
    """Reconstructing the blobs better than the mean image needs their positions: only the
    keypoints can carry them (0.17x the mean image's error on their pixels after 300 steps)."""
    images = blob_images(count=8, num_cameras=2, size=32)
    torch.manual_seed(0)
    model = small_model(2, 32, base_filters=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        model.train()(images, *cameras(2)).total_loss().backward()
        optimizer.step()
    with torch.no_grad():
        output = model.eval()(images, *cameras(2))
    crops = images[..., 2:30, 2:30]  # eval crops are centred: (32 - 28) / 2 = 2 px a side
    error, mean_image = object_error(output.visuals.reconstructions, crops)
    assert error < 0.5 * mean_image, (error, mean_image)
