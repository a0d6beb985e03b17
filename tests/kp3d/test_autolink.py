"""AutoLink (He et al. 2022): edge heatmaps, the shared edge graph, the mask, the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from perception_fixtures import identity_cameras

from kp3d.perception import (
    AutoLink,
    PerceptionOutput,
    available_perceptions,
    load_perception,
    make_perception,
    save_perception,
)
from kp3d.perception.autolink import (
    PerceptualLoss,
    edge_heatmaps,
    multiscale_l1,
    random_block_mask,
    vgg16_features,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.fse import diversity_loss
from kp3d.perception.scene import foreground_coverage

IMAGE = 32


def small_model(num_cameras: int = 2, image_size: int = IMAGE, **kwargs) -> AutoLink:
    torch.manual_seed(0)
    options = {"num_keypoints": 4, "base_filters": 4, "mask_blocks": 8, **kwargs}
    return make_perception("autolink", num_cameras=num_cameras, image_size=image_size, **options)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid ``intrinsics (C, 3, 3)`` and ``extrinsics (C, 4, 4)``: AutoLink ignores them."""
    return identity_cameras(count, 30.0, (16.0, 16.0))


# -- edge heatmaps ---------------------------------------------------------------------------------


def test_edge_heatmap_values() -> None:
    # A horizontal segment from (8, 8) to (24, 8) px on a 32 px image: distances in [-1, 1]
    # units are pixels / 16.
    keypoints = torch.tensor([[[8.0, 8.0], [24.0, 8.0]]], dtype=torch.float64)
    thickness = 0.01
    heatmap = edge_heatmaps(keypoints, (IMAGE, IMAGE), thickness)
    assert heatmap.shape == (1, 1, IMAGE, IMAGE)

    def expected(pixels: float) -> float:
        return math.exp(-((pixels / 16.0) ** 2) / thickness)

    # Above the middle of the segment: 4.5 px from it (pixel centre (16.5, 12.5)).
    assert heatmap[0, 0, 12, 16].item() == pytest.approx(expected(4.5), rel=1e-6)
    # On the segment's line, between its ends: 0.5 px off (centres lie half a pixel off).
    assert heatmap[0, 0, 8, 10].item() == pytest.approx(expected(0.5), rel=1e-6)
    # Beyond an end: the distance to that end, (4.5, 0.5) px from (24, 8).
    assert heatmap[0, 0, 8, 28].item() == pytest.approx(expected(math.hypot(4.5, 0.5)), rel=1e-6)
    assert heatmap[0, 0, 7, 3].item() == pytest.approx(expected(math.hypot(4.5, 0.5)), rel=1e-6)
    assert heatmap.max() <= 1.0 and heatmap.min() >= 0.0


def test_edge_heatmaps_match_a_brute_force_point_to_segment_distance() -> None:
    generator = np.random.default_rng(0)
    height, width, thickness = 12, 16, 0.05
    keypoints = generator.uniform(-4, 20, size=(3, 4, 2))
    keypoints[1, 2] = keypoints[1, 1]  # a degenerate segment is its point
    heatmaps = edge_heatmaps(torch.tensor(keypoints), (height, width), thickness).numpy()
    scale = np.array([2.0 / width, 2.0 / height])
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    for n in range(3):
        for index, (i, j) in enumerate(pairs):
            a, b = keypoints[n, i] * scale, keypoints[n, j] * scale
            for row in range(height):
                for column in range(width):
                    q = np.array([column + 0.5, row + 0.5]) * scale
                    segment = b - a
                    length = segment @ segment
                    t = 0.0 if length == 0 else np.clip((q - a) @ segment / length, 0, 1)
                    distance = np.linalg.norm(q - (a + t * segment))
                    value = np.exp(-(distance**2) / thickness)
                    assert heatmaps[n, index, row, column] == pytest.approx(value, abs=1e-7)


def test_edge_map_is_the_weighted_maximum_over_pairs() -> None:
    model = small_model().double()
    keypoints = torch.rand(3, 4, 2, dtype=torch.float64) * IMAGE
    edges = edge_heatmaps(keypoints, (IMAGE, IMAGE), model.edge_thickness)
    first, second = torch.triu_indices(4, 4, 1)
    weights = model.edge_weights()[first, second]
    expected = (edges * weights[:, None, None]).max(dim=1, keepdim=True).values
    torch.testing.assert_close(model.edge_map(keypoints), expected)
    # Only edge (1, 3) switched on: the map is that edge's heatmap.
    with torch.no_grad():
        model.edge_logits.fill_(-1.0)
        model.edge_logits[1, 3] = 3.0 / model.edge_lr_scale
    edge = edges[:, list(zip(first.tolist(), second.tolist(), strict=True)).index((1, 3))]
    torch.testing.assert_close(
        model.edge_map(keypoints)[:, 0],
        torch.nn.functional.softplus(torch.tensor(3.0)) * edge,
        atol=1e-6,
        rtol=1e-6,
    )


def test_edge_weights_are_symmetric_non_negative_and_shared() -> None:
    model = small_model(num_keypoints=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        weights = model.edge_weights()
        assert weights.shape == (5, 5)
        torch.testing.assert_close(weights, weights.T)
        assert (weights >= 0).all() and (weights.diagonal() == 0).all()
        # The reference's initialisation: softplus(-4 ± noise) ≈ 0.018.
        optimizer.zero_grad()
        model(torch.rand(2, 2, 3, IMAGE, IMAGE), *cameras(2)).total_loss().backward()
        assert model.edge_logits.grad is not None and model.edge_logits.grad.abs().sum() > 0
        optimizer.step()
    # One K x K matrix for every image and camera: a parameter of the module, not an output.
    assert [name for name, _ in model.named_parameters() if "edge" in name] == ["edge_logits"]


def test_initial_edge_weights_follow_the_reference() -> None:
    weights = small_model(num_keypoints=6).edge_weights()
    off_diagonal = weights[~torch.eye(6, dtype=torch.bool)]
    assert off_diagonal.min() > 0.01 and off_diagonal.max() < 0.03


# -- mask and losses -------------------------------------------------------------------------------


def test_block_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = random_block_mask(200, (32, 48), blocks=8, ratio=0.8, generator=generator)
    assert masks.shape == (200, 1, 32, 48) and set(masks.unique().tolist()) <= {0.0, 1.0}
    # Constant over each block of 4 x 6 pixels.
    blocks = masks.reshape(200, 8, 4, 8, 6)
    assert (blocks == blocks[:, :, :1, :, :1]).all()
    assert masks.mean().item() == pytest.approx(0.2, abs=0.01)


def test_eval_masks_are_fixed_and_training_masks_random() -> None:
    model = small_model()
    device = torch.device("cpu")
    torch.testing.assert_close(model.eval().masks(3, device), model.masks(3, device))
    assert not torch.equal(model.train().masks(3, device), model.masks(3, device))


def test_multiscale_l1() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert multiscale_l1(x, x).item() == 0.0
    y = x + 0.25
    assert multiscale_l1(y, x).item() == pytest.approx(0.25)
    # A checkerboard error averages out at coarser scales: (1 + 0 + 0) / 3 of its full-scale L1.
    checker = 2 * (torch.arange(16)[:, None] + torch.arange(16)).remainder(2).float() - 1
    assert multiscale_l1(x + checker, x).item() == pytest.approx(1.0 / 3.0, rel=1e-5)


def vgg_file(tmp_path, prefix: str = "features.", **changes) -> str:
    torch.manual_seed(0)
    state = {f"{prefix}{key}": value for key, value in vgg16_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)  # torchvision's files have more entries
    state.update(changes)
    path = tmp_path / "vgg16.pt"
    torch.save(state, path)
    return str(path)


def test_perceptual_loss_variant(tmp_path) -> None:
    path = vgg_file(tmp_path)
    loss = PerceptualLoss(path, image_size=32)
    x = torch.rand(2, 3, 16, 16)
    assert loss(x, x).item() == 0.0 and loss(x, torch.rand_like(x)).item() > 0
    # A state dict of the bare feature network loads too.
    PerceptualLoss(vgg_file(tmp_path, prefix=""), image_size=32)

    model = small_model(perceptual_weights=path, perceptual_size=32).eval()
    images = torch.rand(2, 2, 3, IMAGE, IMAGE)
    output = model(images, *cameras(2))
    views, reconstructions = images.flatten(0, 1), output.visuals.reconstructions.flatten(0, 1)
    torch.testing.assert_close(output.losses["reconstruction"], loss(reconstructions, views))
    # The frozen network is neither learnt nor saved.
    assert all(not name.startswith("_perceptual") for name, _ in model.named_parameters())
    assert not any("network" in key for key in model.state_dict())
    output.total_loss().backward()
    assert all(p.grad is None for p in model._perceptual[0].parameters())
    loaded = load_perception(save_perception(model, tmp_path / "autolink.pt"))
    assert loaded._perceptual


def test_perceptual_weights_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="perceptual_weights: no file"):
        small_model(perceptual_weights=str(tmp_path / "missing.pt"))
    wrong = vgg_file(tmp_path, **{"features.10.weight": torch.zeros(256, 64, 3, 3)})
    with pytest.raises(ValueError, match=r"'10.weight' has shape \(256, 64, 3, 3\), .* \(256, 128"):
        small_model(perceptual_weights=wrong)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"lacks VGG-16's '0\.weight'"):
        small_model(perceptual_weights=str(tmp_path / "other.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a torch state dict"):
        small_model(perceptual_weights=str(tmp_path / "text.pt"))


# -- the module ------------------------------------------------------------------------------------


def test_output_contract() -> None:
    model = small_model(num_cameras=2).train()
    images = torch.rand(5, 2, 3, IMAGE, IMAGE)
    output = model(images, *cameras(2))
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    assert not model.uses_pairs and not model.requires_labels
    assert output.features.shape == (5, model.features_dim) == (5, 2 * 2 * 4)
    assert output.keypoints.shape == (5, 8, 2) and output.confidence is None
    assert set(output.losses) == {"reconstruction"}
    visuals = output.visuals
    assert visuals.points.shape == (5, 2, 4, 2) and visuals.heatmaps.shape == (5, 2, 4, 8, 8)
    assert visuals.reconstructions.shape == images.shape
    torch.testing.assert_close(output.keypoints, visuals.points.flatten(1, 2))
    torch.testing.assert_close(
        output.features, normalized_coordinates(visuals.points, (IMAGE, IMAGE)).flatten(1)
    )
    assert model(images, *cameras(2), compute_losses=False).losses == {}


def test_eval_is_deterministic_and_views_independent() -> None:
    model = small_model(num_cameras=3).eval()
    images = torch.rand(2, 3, 3, IMAGE, IMAGE)
    first, second = model(images, *cameras(3)), model(images, *cameras(3))
    torch.testing.assert_close(first.total_loss(), second.total_loss())
    images[:, 1] = torch.rand_like(images[:, 1])
    after = model(images, *cameras(3)).visuals.points
    torch.testing.assert_close(after[:, [0, 2]], first.visuals.points[:, [0, 2]])


def test_ssim_term_is_added_to_the_l1() -> None:
    images = torch.rand(2, 2, 3, IMAGE, IMAGE)
    with_ssim = small_model().eval()(images, *cameras(2))
    without = small_model(ssim_weight=0.0).eval()(images, *cameras(2))
    views = images.flatten(0, 1)
    reconstructions = without.visuals.reconstructions.flatten(0, 1)
    torch.testing.assert_close(
        without.losses["reconstruction"], multiscale_l1(reconstructions, views)
    )
    assert with_ssim.losses["reconstruction"] > without.losses["reconstruction"]


def test_gradients_reach_every_parameter() -> None:
    model = small_model().train()
    model(torch.rand(2, 2, 3, IMAGE, IMAGE), *cameras(2)).total_loss().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        small_model(image_size=36)
    with pytest.raises(ValueError, match=r"num_keypoints must be an int >= 2"):
        small_model(num_keypoints=1)
    with pytest.raises(ValueError, match="mask_ratio"):
        small_model(mask_ratio=1.0)
    with pytest.raises(ValueError, match="edge_thickness"):
        small_model(edge_thickness=0.0)
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, K, 2\)"):
        edge_heatmaps(torch.rand(4, 2), (8, 8), 0.1)


def test_registered() -> None:
    assert "autolink" in available_perceptions()


# -- learning --------------------------------------------------------------------------------------


def test_training_reduces_the_reconstruction_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    v, u = torch.meshgrid(torch.arange(IMAGE) + 0.5, torch.arange(IMAGE) + 0.5, indexing="ij")
    centres = 6 + torch.rand(8, 2, generator=generator) * (IMAGE - 12)
    distance = (u - centres[:, 0, None, None]) ** 2 + (v - centres[:, 1, None, None]) ** 2
    alpha = (4.0 - distance.sqrt()).clamp(0, 1)[:, None, None]
    images = torch.full((8, 1, 3, IMAGE, IMAGE), 0.3) * (1 - alpha) + 0.9 * alpha
    model = small_model(num_cameras=1, base_filters=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> float:
        with torch.no_grad():
            return model.eval()(images, *cameras(1)).losses["reconstruction"].item()

    before = loss()
    model.train()
    for _ in range(25):
        optimizer.zero_grad()
        model(images, *cameras(1)).total_loss().backward()
        optimizer.step()
    after = loss()
    assert after < 0.5 * before, (before, after)


# -- options for views that are mostly floor (issue 17) --------------------------------------------


def test_self_loops_draw_a_dot_at_each_keypoint() -> None:
    keypoints = torch.tensor([[[8.0, 8.0], [24.0, 20.0]]], dtype=torch.float64)
    maps = edge_heatmaps(keypoints, (IMAGE, IMAGE), 0.01, self_loops=True)
    # Pairs (0, 0), (0, 1), (1, 1): the loops are dots peaking at their keypoint.
    assert maps.shape == (1, 3, IMAGE, IMAGE)
    torch.testing.assert_close(maps[:, 1], edge_heatmaps(keypoints, (IMAGE, IMAGE), 0.01)[:, 0])
    for index, (u, v) in ((0, (8, 8)), (2, (24, 20))):
        peak = divmod(int(maps[0, index].argmax()), IMAGE)
        assert peak in ((v - 1, u - 1), (v - 1, u), (v, u - 1), (v, u))
        assert maps[0, index, v, u + 4] < 0.2  # 4.5 px away: a dot, not a line
    model = small_model(num_keypoints=4, self_loops=True)
    weights = model.edge_weights()
    torch.testing.assert_close(weights, weights.T)
    assert (weights.diagonal() > 0).all()
    assert model.edge_map(torch.rand(2, 4, 2) * IMAGE).shape == (2, 1, IMAGE, IMAGE)


def test_dot_weight_draws_every_keypoint_whatever_the_learnt_weights() -> None:
    # Learnt weights at zero (a dead graph): without dots the edge map is empty; with them,
    # each keypoint is a dot of the fixed weight, and its gradient reaches the keypoints.
    keypoints = torch.tensor([[[8.0, 8.0], [24.0, 20.0], [8.0, 24.0]]], requires_grad=True)
    for self_loops, dot_weight in ((True, 0.0), (False, 0.5), (True, 0.5)):
        model = small_model(num_keypoints=3, self_loops=self_loops, dot_weight=dot_weight)
        with torch.no_grad():
            model.edge_logits.fill_(-1.0)  # softplus(-512) = 0
        if not dot_weight:
            assert model.edge_map(keypoints).detach().abs().max() < 1e-6
            continue
        edge_map = model.edge_map(keypoints)
        for u, v in ((8, 8), (24, 20), (8, 24)):
            assert edge_map[0, 0, v - 1 : v + 1, u - 1 : u + 1].max() > 0.4
        assert edge_map[0, 0, 14, 16] < 0.05  # between the keypoints: no edge
        (grad,) = torch.autograd.grad(edge_map[0, 0, 8, 9], keypoints)
        assert grad[0, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="dot_weight"):
        small_model(dot_weight=-1.0)


def test_diversity_term() -> None:
    images = torch.rand(3, 2, 3, IMAGE, IMAGE)
    model = small_model(diversity_weight=0.5, diversity_pool=2).eval()
    output = model(images, *cameras(2))
    assert set(output.losses) == {"reconstruction", "diversity"}
    heatmaps = output.visuals.heatmaps.flatten(0, 1)
    torch.testing.assert_close(
        output.losses["diversity"], 0.5 * diversity_loss(heatmaps, pool=2).mean()
    )
    model.train()
    model(images, *cameras(2)).losses["diversity"].backward()
    assert model.detector[-1].weight.grad.abs().sum() > 0
    assert "diversity" not in model(images, *cameras(2), compute_losses=False).losses
    with pytest.raises(ValueError, match="diversity_pool"):
        small_model(diversity_pool=0)
    with pytest.raises(ValueError, match="diversity_weight"):
        small_model(diversity_weight=-1.0)


def test_keypoint_maps_give_the_decoder_one_channel_per_keypoint() -> None:
    model = small_model(keypoint_maps=True, init="he").eval()
    assert model.decoder.stem[0].in_channels == 4 + 4
    views = torch.rand(2, 3, IMAGE, IMAGE)
    keypoints = torch.tensor([[[8.0, 8.0], [24.0, 20.0], [8.0, 24.0], [20.0, 8.0]]]).repeat(2, 1, 1)
    swapped = keypoints[:, [1, 0, 2, 3]]
    # Two keypoints swapped: with uniform edge weights the edge map is the same, the decoding
    # is not, since each keypoint has its own channel (without keypoint_maps it is the same).
    with torch.no_grad():
        model.edge_logits.fill_(0.0)
    torch.testing.assert_close(model.edge_map(keypoints), model.edge_map(swapped))
    assert not torch.allclose(
        model.reconstruct(views, keypoints), model.reconstruct(views, swapped)
    )
    plain = small_model(init="he").eval()
    with torch.no_grad():
        plain.edge_logits.fill_(0.0)
    torch.testing.assert_close(
        plain.reconstruct(views, keypoints), plain.reconstruct(views, swapped)
    )
    output = small_model(keypoint_maps=True)(torch.rand(2, 2, 3, IMAGE, IMAGE), *cameras(2))
    output.total_loss().backward()


def test_empty_scene_as_the_decoder_image() -> None:
    # The decoder sees the empty scene, not the view: two views with the same keypoints decode
    # alike, whatever their pixels.
    model = small_model(decoder_image="empty_scene", init="he").eval()
    model.set_background(torch.rand(2, 3, IMAGE, IMAGE))
    views = torch.rand(4, 3, IMAGE, IMAGE)
    keypoints = torch.rand(1, 4, 2).expand(4, -1, -1) * IMAGE
    decoded = model.reconstruct(views, keypoints)
    torch.testing.assert_close(decoded[0], decoded[2])  # camera 0 of two samples
    assert not torch.allclose(decoded[0], decoded[1])  # the other camera's empty scene
    masked = small_model(init="he").eval()
    decoded = masked.reconstruct(views, keypoints)
    assert not torch.allclose(decoded[0], decoded[2])


def test_foreground_weighted_multiscale_l1() -> None:
    targets = torch.zeros(2, 3, 16, 16)
    reconstructions = targets.clone()
    reconstructions[:, :, :2, :2] = 1.0  # wrong in a corner only
    uniform = multiscale_l1(reconstructions, targets)
    torch.testing.assert_close(
        multiscale_l1(reconstructions, targets, weights=torch.ones(2, 16, 16)), uniform
    )
    weights = torch.ones(2, 16, 16)
    weights[:, :4, :4] = 20.0
    assert multiscale_l1(reconstructions, targets, weights=weights) > 5 * uniform


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="decoder_image must be 'masked' or 'empty_scene'"):
        small_model(decoder_image="blank")
    with pytest.raises(ValueError, match="init must be 'he' or 'default'"):
        small_model(init="zeros")
    with pytest.raises(ValueError, match="foreground_weight"):
        small_model(foreground_weight=-2.0)


def test_foreground_prior_draws_keypoints_to_what_differs_from_the_empty_scene() -> None:
    """With a detector that prefers no cell (zero last conv), the prior alone puts every
    keypoint of every camera on that view's bright square, the only thing that differs from
    the black empty scene; without it they sit at the image centre."""
    images = torch.zeros(2, 2, 3, IMAGE, IMAGE)
    corners = torch.tensor([[[4, 8], [20, 4]], [[16, 20], [8, 24]]])  # (B, C, (row, col))
    for b in range(2):
        for c in range(2):
            row, col = corners[b, c].tolist()
            images[b, c, :, row : row + 4, col : col + 4] = 1.0
    expected = corners.flip(-1).float() + 2.0  # the squares' centres, (u, v) pixels
    for prior, target in ((30.0, expected), (0.0, torch.full_like(expected, IMAGE / 2))):
        model = small_model(foreground_prior=prior)
        torch.nn.init.zeros_(model.detector[-1].weight)
        torch.nn.init.zeros_(model.detector[-1].bias)
        model.set_background(torch.zeros(2, 3, IMAGE, IMAGE))
        output = model.eval()(images, *cameras(2), compute_losses=False)
        keypoints = output.keypoints.unflatten(1, (2, -1))  # (B, C, K, 2)
        error = (keypoints - target[:, :, None]).norm(dim=-1)
        assert error.max() < 1.0, (prior, error)
    with pytest.raises(ValueError, match="foreground_prior must be non-negative"):
        small_model(foreground_prior=-1.0)


# -- foreground coverage ---------------------------------------------------------------------------


def test_foreground_coverage_values_and_gradient() -> None:
    # One foreground pixel (centre (20.5, 10.5) px) of a 32 px view, one keypoint at (4.5, 10.5):
    # 16 px away, 1 in units of half the side.
    magnitude = torch.zeros(2, 1, IMAGE, IMAGE)
    magnitude[0, 0, 10, 20] = 0.5
    keypoints = torch.tensor([[[4.5, 10.5]], [[4.5, 10.5]]], dtype=torch.float64)
    keypoints.requires_grad_(True)
    coverage = foreground_coverage(keypoints, magnitude.double())
    torch.testing.assert_close(coverage, torch.tensor([1.0, 0.0], dtype=torch.float64))
    (grad,) = torch.autograd.grad(coverage.sum(), keypoints)
    assert grad[0, 0, 0] < 0 and grad[0, 0, 1].abs() < 1e-12  # descent moves it right, to it
    # Two objects, two keypoints: only the nearest keypoint of each pixel pays and is pulled.
    magnitude = torch.zeros(1, 1, IMAGE, IMAGE)
    magnitude[0, 0, 4:7, 4:7] = 1.0  # a 3 px square centred at (5.5, 5.5)
    magnitude[0, 0, 24:27, 24:27] = 1.0  # and one at (25.5, 25.5)
    covered = torch.tensor([[[5.5, 5.5], [25.5, 25.5]]])
    both_on_one = torch.tensor([[[5.5, 5.5], [6.0, 6.0]]], requires_grad=True)
    assert foreground_coverage(covered, magnitude) < 0.01
    lost = foreground_coverage(both_on_one, magnitude)
    assert lost > 0.5  # half the mass 20 px ≈ 1.25 units away, squared
    (grad,) = torch.autograd.grad(lost.sum(), both_on_one)
    assert (grad[0, 1] < 0).all()  # the nearer one goes to the far square
    assert foreground_coverage(covered, torch.zeros(1, 1, IMAGE, IMAGE)).item() == 0.0
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, K, 2\)"):
        foreground_coverage(torch.zeros(1, 2), magnitude)


def test_coverage_term_sends_a_keypoint_to_a_lone_object() -> None:
    """Trained on the coverage term alone, the keypoints of a view with a large body and a small
    square far from it cover both."""
    images = torch.zeros(1, 1, 3, IMAGE, IMAGE)
    images[..., 16:28, 2:14] = 1.0  # a 12 px body
    images[..., 3:6, 25:28] = 1.0  # a 3 px square centred at (26.5, 4.5)
    model = small_model(num_cameras=1, coverage_weight=1.0, reconstruction_weight=0.0, init="he")
    model.set_background(torch.zeros(1, 3, IMAGE, IMAGE))
    output = model(images, *cameras(1))
    assert set(output.losses) == {"coverage"}
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimiser.zero_grad()
        model(images, *cameras(1)).total_loss().backward()
        optimiser.step()
    keypoints = model.eval()(images, *cameras(1), compute_losses=False).keypoints[0]
    distance = (keypoints - torch.tensor([26.5, 4.5])).norm(dim=-1)
    assert distance.min() < 2.0, keypoints
    assert "coverage" not in model(images, *cameras(1), compute_losses=False).losses
    with pytest.raises(ValueError, match="coverage_weight"):
        small_model(coverage_weight=-1.0)
