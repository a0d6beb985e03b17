"""Transporter (Kulkarni et al. 2019): the transport equation, the module's contract, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from perception_fixtures import identity_cameras

from kp3d.batch import FrameBatch
from kp3d.perception import (
    PerceptionOutput,
    Transporter,
    available_perceptions,
    load_perception,
    make_perception,
    perception_hyperparameters,
    save_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.transporter import transport_features
from kp3d.spatial import gaussian_maps

IMAGE = 32


def small_model(num_cameras: int = 2, image_size: int = IMAGE, **kwargs) -> Transporter:
    torch.manual_seed(0)
    options = {"num_keypoints": 3, "base_filters": 4, **kwargs}
    return make_perception("transporter", num_cameras=num_cameras, image_size=image_size, **options)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid ``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)``: Transporter ignores them."""
    return identity_cameras(count, 30.0, (16.0, 16.0))


def frame_batch(images: torch.Tensor, pair: torch.Tensor | None = None) -> FrameBatch:
    count = images.shape[1]
    intrinsics, extrinsics = cameras(count)
    batch = images.shape[0]
    matrices = (intrinsics.expand(batch, -1, -1, -1), extrinsics.expand(batch, -1, -1, -1))
    return FrameBatch(images, *matrices, pair=None if pair is None else FrameBatch(pair, *matrices))


# -- the transport equation ------------------------------------------------------------------------


def sprite_frames(
    positions: list[tuple[int, int]], size: int = 12, channels: int = 3
) -> torch.Tensor:
    """``(1, channels, size, size)`` "features" of a black scene with one lit cell of a distinct
    value per object at the ``(row, column)`` cells given."""
    frame = torch.zeros(1, channels, size, size, dtype=torch.float64)
    for index, (row, column) in enumerate(positions):
        frame[0, :, row, column] = torch.arange(1, channels + 1, dtype=torch.float64) * (index + 1)
    return frame


def maps_at(positions: list[tuple[int, int]], size: int = 12, std: float = 0.6) -> torch.Tensor:
    """``(1, K, size, size)`` Gaussians of peak 1 centred on the cells ``(row, column)``."""
    centres = torch.tensor([[column + 0.5, row + 0.5] for row, column in positions])
    return gaussian_maps(centres.double()[None], std, size)


SOURCE_CELLS = [(2, 3), (8, 9)]
TARGET_CELLS = [(4, 6), (7, 2)]  # both objects moved


def test_transport_reproduces_the_target_when_keypoints_cover_the_change() -> None:
    # Identity encoder and decoder: the frames are their own features. The keypoints of each
    # frame sit on its objects, so the source's objects are erased and the target's pasted in.
    source, target = sprite_frames(SOURCE_CELLS), sprite_frames(TARGET_CELLS)
    transported = transport_features(source, target, maps_at(SOURCE_CELLS), maps_at(TARGET_CELLS))
    torch.testing.assert_close(transported, target, rtol=0, atol=1e-12)


def test_transport_misses_what_the_keypoints_do_not_cover() -> None:
    source, target = sprite_frames(SOURCE_CELLS), sprite_frames(TARGET_CELLS)
    # The target's keypoints sit on one object only: the other is not pasted in, and the
    # source's copy of it stays where the source's keypoint is not.
    transported = transport_features(
        source, target, maps_at(SOURCE_CELLS[:1] * 2), maps_at(TARGET_CELLS[:1] * 2)
    )
    row, column = TARGET_CELLS[1]
    assert transported[0, 0, row, column] < 1e-9 and target[0, 0, row, column] == 2
    row, column = SOURCE_CELLS[1]
    torch.testing.assert_close(transported[..., row, column], source[..., row, column])


def test_transport_keeps_static_features_away_from_the_keypoints() -> None:
    generator = torch.Generator().manual_seed(0)
    background = torch.rand(1, 4, 12, 12, generator=generator, dtype=torch.float64)
    target = background + sprite_frames(TARGET_CELLS, channels=4)
    source = background + sprite_frames(SOURCE_CELLS, channels=4)
    transported = transport_features(source, target, maps_at(SOURCE_CELLS), maps_at(TARGET_CELLS))
    far = torch.ones(12, 12, dtype=torch.bool)
    for row, column in SOURCE_CELLS + TARGET_CELLS:
        far[max(row - 3, 0) : row + 4, max(column - 3, 0) : column + 4] = False
    torch.testing.assert_close(transported[..., far], target[..., far], rtol=0, atol=1e-6)


def test_transport_is_the_per_keypoint_recursion() -> None:
    generator = torch.Generator().manual_seed(1)
    source, target = (torch.rand(2, 5, 6, 7, generator=generator) for _ in range(2))
    source_maps, target_maps = (torch.rand(2, 3, 6, 7, generator=generator) for _ in range(2))
    expected = source
    for k in range(3):
        s, t = source_maps[:, k : k + 1], target_maps[:, k : k + 1]
        expected = (1 - s) * (1 - t) * expected + t * target
    torch.testing.assert_close(
        transport_features(source, target, source_maps, target_maps), expected
    )
    # One keypoint: Eq. (1) of the paper.
    s, t = source_maps[:, :1], target_maps[:, :1]
    torch.testing.assert_close(
        transport_features(source, target, s, t), (1 - s) * (1 - t) * source + t * target
    )


def test_transport_shape_errors() -> None:
    features, maps = torch.rand(2, 5, 6, 6), torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match="source_features and target_features"):
        transport_features(features, features[:1], maps, maps)
    with pytest.raises(ValueError, match=r"target_maps must have shape \(2, K, 6, 6\)"):
        transport_features(features, features, maps, maps[..., :5])
    with pytest.raises(ValueError, match="same shape"):
        transport_features(features, features, maps, maps[:, :2])


class OracleTransporter(Transporter):
    """A Transporter whose ``Φ`` is 4x4 average pooling of the image, whose ``Ψ`` puts Gaussians
    on the known object cells of each frame, and whose decoder upsamples back to the image: what
    it reconstructs is ``Φ̂``."""

    def __init__(self, frames: list[tuple[torch.Tensor, list[tuple[int, int]]]]) -> None:
        super().__init__(1, 48, num_keypoints=2, base_filters=2)
        self.frames = frames  # (view (3, 48, 48), its object cells on the 12 x 12 grid)

    def features(self, views: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(views, 4)

    def keypoint_maps(self, views: torch.Tensor):
        cells = [next(c for frame, c in self.frames if torch.equal(frame, v)) for v in views]
        maps = torch.cat([maps_at(c) for c in cells]).to(views.dtype)
        return maps / maps.sum((-2, -1), keepdim=True), torch.zeros(len(views), 2, 2), maps

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(features, scale_factor=4.0, mode="nearest")


def test_module_transports_from_the_pair_to_the_batch_frames() -> None:
    # A 48 px view on a 12 x 12 grid. The reconstruction (here Φ̂ itself, upsampled) must be the
    # target's features: the batch's own frame, transported from the pair.
    source = F.interpolate(sprite_frames(SOURCE_CELLS).float() / 10, scale_factor=4.0)
    target = F.interpolate(sprite_frames(TARGET_CELLS).float() / 10, scale_factor=4.0)
    oracle = OracleTransporter([(source[0], SOURCE_CELLS), (target[0], TARGET_CELLS)]).eval()
    output = oracle._encode(target[:, None], source[:, None], compute_losses=True)
    torch.testing.assert_close(output.visuals.reconstructions[:, 0], target, atol=1e-6, rtol=0)
    # The other way round reconstructs the source instead.
    swapped = oracle._encode(source[:, None], target[:, None], compute_losses=True)
    torch.testing.assert_close(swapped.visuals.reconstructions[:, 0], source, atol=1e-6, rtol=0)


# -- the module ------------------------------------------------------------------------------------


def test_output_contract() -> None:
    model = small_model(num_cameras=2).train()
    images = torch.rand(5, 2, 3, IMAGE, IMAGE)
    output = model(images, *cameras(2))
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    assert model.heatmap_size == (8, 8) and model.uses_pairs
    assert output.features.shape == (5, model.features_dim) == (5, 2 * 2 * 3)
    assert output.keypoints.shape == (5, 6, 2) and output.confidence is None
    assert set(output.losses) == {"reconstruction"} and output.losses["reconstruction"].ndim == 0
    visuals = output.visuals
    assert visuals.points.shape == visuals.detections.shape == (5, 2, 3, 2)
    assert visuals.heatmaps.shape == (5, 2, 3, 8, 8)
    torch.testing.assert_close(visuals.heatmaps.sum((-2, -1)), torch.ones(5, 2, 3))
    assert visuals.reconstructions.shape == images.shape
    assert not visuals.points.requires_grad and not visuals.reconstructions.requires_grad
    torch.testing.assert_close(output.keypoints, visuals.points.flatten(1, 2))
    torch.testing.assert_close(
        output.features, normalized_coordinates(visuals.points, (IMAGE, IMAGE)).flatten(1)
    )
    assert (output.keypoints >= 0).all() and (output.keypoints <= IMAGE).all()


def test_views_are_encoded_independently() -> None:
    model = small_model(num_cameras=3).eval()
    images = torch.rand(2, 3, 3, IMAGE, IMAGE)
    before = model(images, *cameras(3), compute_losses=False).visuals.points
    images[:, 1] = torch.rand_like(images[:, 1])
    after = model(images, *cameras(3), compute_losses=False).visuals.points
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_source_of_the_transport_loss() -> None:
    model = small_model().eval()
    images = torch.rand(3, 2, 3, IMAGE, IMAGE)
    intrinsics, extrinsics = cameras(2)
    # Without a set source, the source of each sample is the previous sample of the batch.
    rolled = model(images, intrinsics, extrinsics).losses["reconstruction"]
    expected = model.training_losses(frame_batch(images, images.roll(1, dims=0)))
    torch.testing.assert_close(rolled, expected["reconstruction"])
    # A batch of one has no other sample: no transport loss.
    assert model(images[:1], intrinsics, extrinsics).losses == {}
    # A fixed source frame per camera.
    source = torch.rand(2, 3, IMAGE, IMAGE)
    model.set_source(source)
    fixed = model(images, intrinsics, extrinsics).losses["reconstruction"]
    expected = model.training_losses(frame_batch(images, source.expand_as(images)))
    torch.testing.assert_close(fixed, expected["reconstruction"])
    assert "reconstruction" in model(images[:1], intrinsics, extrinsics).losses
    model.set_source(None)
    torch.testing.assert_close(
        model(images, intrinsics, extrinsics).losses["reconstruction"], rolled
    )
    # No losses asked: none computed, and the keypoints are the same.
    output = model(images, intrinsics, extrinsics, compute_losses=False)
    assert output.losses == {} and output.visuals.reconstructions is None


def test_offline_source_from_another_episode() -> None:
    # source="batch": offline training transports from the batch's previous sample (another
    # episode), as forward does, whatever the pair holds; "episode" uses the pair.
    images = torch.rand(3, 2, 3, IMAGE, IMAGE)
    pair = torch.rand_like(images)
    episode = small_model(init="he").eval()
    batch = small_model(source="batch", init="he").eval()
    rolled = episode.training_losses(frame_batch(images, images.roll(1, dims=0)))
    from_pair = episode.training_losses(frame_batch(images, pair))
    torch.testing.assert_close(batch.training_losses(frame_batch(images, pair)), rolled)
    assert not torch.allclose(from_pair["reconstruction"], rolled["reconstruction"])


def test_foreground_weighted_reconstruction() -> None:
    # With the empty scene known, the error counts more where the view differs from it.
    model = small_model(foreground_weight=20.0).eval()
    plain = small_model().eval()
    background = torch.rand(2, 3, IMAGE, IMAGE)
    images = background.expand(3, -1, -1, -1, -1).clone()
    images[:, :, :, 10:14, 10:14] = 1.0  # a small object
    model.set_background(background)
    reconstructions = images.flatten(0, 1).clone()
    reconstructions[:, :, 10:14, 10:14] = 0.0  # the object missed: 16 px of 1024
    weighted = model.reconstruction_loss(reconstructions, images)
    unweighted = plain.reconstruction_loss(reconstructions, images)
    assert weighted > 5 * unweighted
    # Exact where nothing is missed.
    assert model.reconstruction_loss(images.flatten(0, 1), images) == 0


def test_he_init_spreads_the_heatmap_logits() -> None:
    # PyTorch's default init leaves the logits almost flat across a view; He init does not.
    views = torch.rand(4, 3, IMAGE, IMAGE)

    def logit_spread(model: Transporter) -> float:
        return model.keypoint_head(model.keypoint_encoder(views * 2 - 1)).std(dim=(-2, -1)).mean()

    assert logit_spread(small_model(init="he")) > 10 * logit_spread(small_model())


def test_source_frame_is_saved_with_the_module(tmp_path) -> None:
    model = small_model()
    source = torch.rand(2, 3, IMAGE, IMAGE)
    model.set_source(source)
    loaded = load_perception(save_perception(model, tmp_path / "transporter.pt"))
    assert bool(loaded.has_source)
    torch.testing.assert_close(loaded.source, source)


def test_training_losses_need_pairs() -> None:
    model = small_model()
    with pytest.raises(ValueError, match=r"no FrameBatch\.pair"):
        model.training_losses(frame_batch(torch.rand(2, 2, 3, IMAGE, IMAGE)))


def test_gradients_reach_every_parameter() -> None:
    model = small_model().train()
    images = torch.rand(2, 2, 3, IMAGE, IMAGE)
    losses = model.training_losses(frame_batch(images, torch.rand_like(images)))
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        small_model(image_size=30)
    with pytest.raises(ValueError, match="gaussian_std"):
        small_model(gaussian_std=0.0)
    with pytest.raises(ValueError, match="num_keypoints"):
        small_model(num_keypoints=0)
    with pytest.raises(ValueError, match="source must be 'episode' or 'batch'"):
        small_model(source="video")
    with pytest.raises(ValueError, match="init must be 'he' or 'default'"):
        small_model(init="xavier")
    with pytest.raises(ValueError, match="foreground_weight"):
        small_model(foreground_weight=-1.0)
    model = small_model()
    with pytest.raises(ValueError, match=r"source images must have shape \(2, 3, 32, 32\)"):
        model.set_source(torch.rand(3, 3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match=r"\(B, 2, 3, 32, 32\)"):
        model(torch.rand(2, 3, 3, IMAGE, IMAGE), *cameras(3))


def test_registered() -> None:
    assert "transporter" in available_perceptions()
    assert set(perception_hyperparameters("transporter")) == {
        "base_filters",
        "foreground_weight",
        "gaussian_std",
        "init",
        "num_keypoints",
        "reconstruction_weight",
        "source",
    }


# -- learning --------------------------------------------------------------------------------------


def moving_disc_pairs(count: int, size: int = IMAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count, 1, 3, size, size)`` target and source frames: a red disc (radius 3 px) at a
    random place on a fixed shaded background, at another random place in the source."""
    generator = torch.Generator().manual_seed(0)
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def frames() -> torch.Tensor:
        centres = 5 + torch.rand(count, 2, generator=generator) * (size - 10)
        images = torch.full((count, 1, 3, size, size), 0.3)
        images[:, :, 2] += 0.3 * v / size
        distance = (u - centres[:, 0, None, None]) ** 2 + (v - centres[:, 1, None, None]) ** 2
        alpha = (3.5 - distance.sqrt()).clamp(0, 1)[:, None, None]
        colour = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
        return images * (1 - alpha) + alpha * colour

    return frames(), frames()


def test_training_reduces_the_transport_loss() -> None:
    targets, sources = moving_disc_pairs(8)
    batch = frame_batch(targets, sources)
    model = small_model(num_cameras=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = model.eval().training_losses(batch)["reconstruction"].item()
    model.train()
    for _ in range(25):
        optimizer.zero_grad()
        sum(model.training_losses(batch).values()).backward()
        optimizer.step()
    with torch.no_grad():
        after = model.eval().training_losses(batch)["reconstruction"].item()
    assert after < 0.35 * before, (before, after)
