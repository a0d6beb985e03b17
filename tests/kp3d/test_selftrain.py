"""Self-training correspondence (Mallis et al. 2020/2021): clustering, labels, losses, stages."""

from __future__ import annotations

import pytest
import torch
from perception_fixtures import identity_cameras

from kp3d.batch import FrameBatch
from kp3d.perception import (
    PerceptionOutput,
    SelfTrainingLandmarks,
    available_perceptions,
    load_perception,
    make_perception,
    save_perception,
)
from kp3d.perception.coordinates import normalized_coordinates
from kp3d.perception.selftrain_clustering import (
    assign_to_centroids,
    constrained_kmeans,
    nearest_per_cluster,
)
from kp3d.perception.selftrain_labels import generic_keypoints
from kp3d.perception.selftrain_losses import contrastive_descriptor_loss, target_heatmaps
from kp3d.perception.selftrain_network import sample_descriptors

IMAGE = 32


def small_model(num_cameras: int = 2, **kwargs) -> SelfTrainingLandmarks:
    torch.manual_seed(0)
    options = {
        "num_keypoints": 3,
        "num_clusters": 6,
        "base_filters": 4,
        "descriptor_dim": 8,
        "max_points": 10,
        "reservoir_size": 32,
        **kwargs,
    }
    return make_perception("selftrain", num_cameras=num_cameras, image_size=IMAGE, **options)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return identity_cameras(count, 30.0, (16.0, 16.0))


def square_images(count: int, num_cameras: int = 2, seed: int = 0) -> torch.Tensor:
    """``(count, C, 3, 32, 32)``: a red and a green 7 px square at random places on grey."""
    generator = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(IMAGE) + 0.5, torch.arange(IMAGE) + 0.5, indexing="ij")
    centres = 7 + torch.rand(count, num_cameras, 2, 2, generator=generator) * (IMAGE - 14)
    images = torch.full((count, num_cameras, 3, IMAGE, IMAGE), 0.25)
    for index, colour in enumerate(([0.9, 0.1, 0.1], [0.1, 0.8, 0.2])):
        centre = centres[:, :, index, :, None, None]
        inside = ((u - centre[:, :, 0]).abs() < 3.5) & ((v - centre[:, :, 1]).abs() < 3.5)
        alpha = inside.float()[:, :, None]
        images = images * (1 - alpha) + alpha * torch.tensor(colour)[:, None, None]
    return images


def frame_batch(images: torch.Tensor) -> FrameBatch:
    intrinsics, extrinsics = cameras(images.shape[1])
    shape = (images.shape[0], -1, -1, -1)
    return FrameBatch(images, intrinsics.expand(*shape), extrinsics.expand(*shape))


# -- the constrained K-means -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_nearest_per_cluster_keeps_one_nearest_point_per_group_and_cluster(seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 6, (200,), generator=generator)
    clusters = torch.randint(-1, 5, (200,), generator=generator)
    distances = torch.rand(200, generator=generator).round(decimals=1)  # ties happen
    keep = nearest_per_cluster(groups, clusters, distances)
    assert not keep[clusters < 0].any()
    for group in range(6):
        for cluster in range(5):
            members = torch.nonzero((groups == group) & (clusters == cluster))[:, 0]
            kept = members[keep[members]]
            assert len(kept) == (1 if len(members) else 0)
            if len(members):
                assert distances[kept[0]] == distances[members].min()
                # Ties go to the first point.
                assert kept[0] == members[distances[members] == distances[members].min()][0]


@pytest.mark.parametrize("seed", range(8))
def test_constrained_kmeans_never_gives_one_image_two_points_in_a_cluster(seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    images, per_image, k = 12, 9, 5
    groups = torch.arange(images).repeat_interleave(per_image)
    features = torch.nn.functional.normalize(
        torch.randn(len(groups), 4, generator=generator), dim=1
    )
    centroids, clusters = constrained_kmeans(features, groups, k, seed=seed)
    assert centroids.shape == (k, 4) and clusters.shape == groups.shape
    distances = torch.cdist(features, centroids)
    for image in range(images):
        mine = groups == image
        kept = clusters[mine][clusters[mine] >= 0]
        # At most one point per cluster, so at most K points per image.
        assert len(kept) == len(kept.unique()) <= k
        for cluster in range(k):
            nearest_here = mine & (distances.argmin(dim=1) == cluster)
            chosen = torch.nonzero(mine & (clusters == cluster))[:, 0]
            # A cluster keeps a point of an image iff some point of it is nearest that centroid,
            # and it keeps the nearest of them.
            assert len(chosen) == int(nearest_here.any())
            if len(chosen):
                assert distances[chosen[0], cluster] == distances[nearest_here, cluster].min()
    # Kept points belong to their nearest centroid.
    kept = clusters >= 0
    assert (distances[kept].argmin(dim=1) == clusters[kept]).all()


def test_assign_to_centroids_ignores_negative_groups() -> None:
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [0.05, 0.0]])
    centroids = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    ids = assign_to_centroids(features, torch.tensor([0, 0, 0, -1]), centroids)
    assert ids.tolist() == [0, -1, 1, -1]
    ids = assign_to_centroids(features, torch.tensor([0, 1, 0, 2]), centroids)
    assert ids.tolist() == [0, 0, 1, 0]


def test_constrained_kmeans_errors() -> None:
    with pytest.raises(ValueError, match="cannot make 5 clusters of 3 points"):
        constrained_kmeans(torch.rand(3, 2), torch.zeros(3, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"features must be \(P, D\)"):
        constrained_kmeans(torch.rand(3, 2), torch.zeros(4, dtype=torch.long), 2)


# -- generic keypoints, descriptors, losses --------------------------------------------------------


@pytest.mark.parametrize("detector", ["gftt", "harris"])
def test_corner_detectors_find_the_corners_of_a_square(detector) -> None:
    image = torch.zeros(1, 3, IMAGE, IMAGE)
    # Rows 8-19, columns 10-25: the corners are at u in {10, 26}, v in {8, 20}.
    image[:, :, 8:20, 10:26] = 1.0
    pixels, valid = generic_keypoints(image, detector, max_points=8, window=5)
    assert pixels.shape == (1, 8, 2) and valid.shape == (1, 8)
    found = pixels[valid]
    assert 4 <= len(found) <= 8
    corners = torch.tensor([[10.0, 8.0], [26.0, 8.0], [10.0, 20.0], [26.0, 20.0]])
    nearest = torch.cdist(corners, found).min(dim=1).values
    assert (nearest <= 1.5).all(), nearest
    # Strongest first: the four corners lead.
    assert torch.cdist(found[:4], corners).min(dim=1).values.max() <= 1.5


def test_sift_finds_a_blob_centre() -> None:
    v, u = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    image = (((u - 20) ** 2 + (v - 30) ** 2).sqrt() < 4).float().expand(1, 3, 64, 64)
    pixels, valid = generic_keypoints(image, "sift", max_points=4)
    assert valid.sum() >= 1
    assert (pixels[valid] - torch.tensor([20.0, 30.0])).norm(dim=-1).min() < 1.0


def test_sample_descriptors_at_cell_centres() -> None:
    field = torch.randn(2, 5, 6, 7)
    cells = torch.tensor([[[0.5, 0.5], [3.5, 2.5]], [[6.5, 5.5], [1.5, 4.5]]])
    sampled = sample_descriptors(field, cells)
    expected = torch.stack(
        [field[0, :, 0, 0], field[0, :, 2, 3], field[1, :, 5, 6], field[1, :, 4, 1]]
    ).reshape(2, 2, 5)
    torch.testing.assert_close(sampled, torch.nn.functional.normalize(expected, dim=-1))


def test_target_heatmaps() -> None:
    cells = torch.tensor([[[2.5, 3.5], [6.5, 1.5], [0.5, 7.5]]])
    target = target_heatmaps(cells, torch.tensor([[True, True, False]]), 1.0, (8, 8))
    assert target.shape == (1, 1, 8, 8)
    assert target[0, 0, 3, 2] == 1.0 and target[0, 0, 1, 6] == 1.0
    assert target[0, 0, 7, 0] < 1e-3  # the invalid point is not drawn


def test_contrastive_loss_by_hand() -> None:
    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    second = torch.tensor([[[0.6, 0.8], [0.0, 1.0]]])
    positives = torch.tensor([[[True, False], [False, True]]])
    # One negative pair in view 1: the two points, 2^0.5 apart (beyond the margin: no cost), and
    # one in view 2 at distance ||(0.6, -0.2)|| = 0.632 (cost (0.8 - 0.632)²).
    negatives = [
        (first[:, :1], first[:, 1:], torch.tensor([[True]])),
        (second[:, :1], second[:, 1:], torch.tensor([[True]])),
    ]
    loss = contrastive_descriptor_loss(first, second, positives, negatives, margin=0.8)
    positive = (1 - 0.6) ** 2 + 0.8**2 + 0.0
    negative = (0.8 - (0.6**2 + 0.2**2) ** 0.5) ** 2
    assert loss.item() == pytest.approx((positive + negative) / 4, rel=1e-5)


# -- the module ------------------------------------------------------------------------------------


def test_output_contract() -> None:
    model = small_model(num_cameras=2).eval()
    images = square_images(3)
    output = model(images, *cameras(2))
    assert isinstance(output, PerceptionOutput) and model.keypoint_frame == "image"
    assert model.features_dim == 3 * 2 * 3 and output.features.shape == (3, 18)
    assert output.keypoints.shape == (3, 6, 2) and output.confidence.shape == (3, 6)
    assert set(output.losses) == {"detector", "descriptor"}  # stage 0: warm-up
    # Eval mode draws fixed warps and negatives: the losses are deterministic.
    again = model(images, *cameras(2)).losses
    assert all(torch.equal(again[name], value) for name, value in output.losses.items())
    visuals = output.visuals
    assert visuals.points.shape == (3, 2, 3, 2) and visuals.heatmaps.shape == (3, 2, 3, 16, 16)
    torch.testing.assert_close(visuals.heatmaps.sum((-2, -1)), torch.ones(3, 2, 3))
    per_keypoint = output.features.reshape(3, 2, 3, 3)
    torch.testing.assert_close(
        per_keypoint[..., :2], normalized_coordinates(visuals.points, (IMAGE, IMAGE))
    )
    torch.testing.assert_close(per_keypoint[..., 2].flatten(1), output.confidence)
    assert (output.keypoints >= 0).all() and (output.keypoints <= IMAGE).all()
    # The keypoints are the peaks of the landmark maps.
    maps = model.landmark_maps(images.flatten(0, 1)).reshape(3, 2, 3, 16 * 16)
    cells = (visuals.points / 2).floor()  # 2 px cells
    peaks = maps.argmax(dim=-1)
    torch.testing.assert_close(cells[..., 0] + 16 * cells[..., 1], peaks.float())
    assert model(images, *cameras(2), compute_losses=False).losses == {}


def test_schedule_runs_the_stages_and_keeps_the_state(tmp_path) -> None:
    model = small_model(
        warmup_steps=3, round_steps=2, rounds=1, detection_threshold=-1.0, kmeans_iterations=5
    )
    batch = frame_batch(square_images(4))
    stages = []
    for _ in range(7):
        losses = model.training_losses(batch)
        stages.append((model.stage_name, sorted(losses)))
    assert [name for name, _ in stages] == ["warmup"] * 3 + ["correspondence"] * 2 + [
        "landmarks"
    ] * 2
    assert stages[0][1] == stages[3][1] == ["descriptor", "detector"]
    assert stages[-1][1] == ["landmarks"]
    assert int(model.steps) == 7 and int(model.rounds_done) == 1
    assert model.reservoir_count == 32  # the latest 32 of the 7 x 8 views seen
    # The teacher is the network at the last clustering.
    for name, parameter in model.network.named_parameters():
        assert getattr(model.teacher, name.replace(".", "__")).shape == parameter.shape
    with pytest.raises(RuntimeError, match="already in the last stage"):
        model.advance_stage()

    loaded = load_perception(save_perception(model, tmp_path / "selftrain.pt"))
    assert loaded.stage_name == "landmarks" and int(loaded.steps) == 7
    torch.testing.assert_close(loaded.landmark_centroids, model.landmark_centroids)
    torch.testing.assert_close(loaded.teacher.state_dict(), model.teacher.state_dict())
    images = batch.images
    torch.testing.assert_close(
        loaded.eval()(images, *cameras(2)).features, model.eval()(images, *cameras(2)).features
    )


def test_pseudo_labels_keep_one_point_per_cluster_and_view() -> None:
    model = small_model(detection_threshold=-1.0, kmeans_iterations=5)
    views = square_images(6).flatten(0, 1)
    statistics = model.advance_stage(views)  # warm-up → correspondence
    assert statistics["kept_per_view"] <= 3 and statistics["points_per_view"] == 10
    for stage, count in ((1, int(model.cluster_count)), (2, 3)):
        model.stage.fill_(stage)
        cells, ids = model.pseudo_labels(views)
        assert cells.shape == (12, 10, 2) and ids.shape == (12, 10)
        assert ids.max() < count
        for view in ids:
            labelled = view[view >= 0]
            assert len(labelled) == len(labelled.unique())
        if stage == 2:
            assert ((ids >= 0).sum(dim=1) <= 3).all()


def test_warmup_labels_are_the_generic_keypoints() -> None:
    model = small_model()
    views = square_images(2).flatten(0, 1)
    cells, ids = model.pseudo_labels(views)
    pixels, valid = generic_keypoints(views, "gftt", max_points=10)
    torch.testing.assert_close(cells * 2, pixels)  # 2 px cells
    assert ((ids >= 0) == valid).all()


def test_recluster_errors_without_detections() -> None:
    model = small_model(detection_threshold=10.0)
    with pytest.raises(RuntimeError, match="only 0 points detected on 4 views"):
        model.recluster(square_images(2).flatten(0, 1))
    with pytest.raises(RuntimeError, match="reservoir is empty"):
        model.recluster()


def test_gradients_reach_the_heads_of_each_stage() -> None:
    model = small_model(detection_threshold=-1.0, kmeans_iterations=5)
    batch = frame_batch(square_images(3))
    for stage, heads in ((0, ("network.",)), (2, ("landmark_head.", "network.backbone."))):
        if stage:
            model.advance_stage(batch.images.flatten(0, 1))
            model.advance_stage(batch.images.flatten(0, 1))
        model.zero_grad()
        sum(model.training_losses(batch).values()).backward()
        for name, parameter in model.named_parameters():
            if name.startswith(heads) and not (stage == 2 and "detector" in name):
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(not name.startswith("teacher") for name, _ in model.named_parameters())


def test_input_errors() -> None:
    with pytest.raises(ValueError, match=r"num_clusters \(M\) must be an int larger than"):
        small_model(num_clusters=3)
    with pytest.raises(ValueError, match="generic_detector"):
        small_model(generic_detector="orb")
    with pytest.raises(ValueError, match="multiples of 8"):
        make_perception("selftrain", num_cameras=1, image_size=36)
    with pytest.raises(ValueError, match="nms_window"):
        small_model(nms_window=4)


def test_registered() -> None:
    assert "selftrain" in available_perceptions()


# -- learning --------------------------------------------------------------------------------------


def test_warmup_training_reduces_the_losses() -> None:
    model = small_model(num_cameras=1, base_filters=8)
    batch = frame_batch(square_images(6, num_cameras=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        torch.manual_seed(1)  # the same warps every step: a fixed problem
        losses = model.training_losses(batch)
        history.append({name: value.item() for name, value in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert model.stage_name == "warmup"
    for term in ("detector", "descriptor"):
        assert history[-1][term] < 0.7 * history[0][term], (term, history)


def test_landmark_training_reduces_the_loss() -> None:
    model = small_model(num_cameras=1, base_filters=8, detection_threshold=-1.0)
    batch = frame_batch(square_images(6, num_cameras=1))
    model.advance_stage(batch.images.flatten(0, 1))
    model.advance_stage(batch.images.flatten(0, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(12):
        torch.manual_seed(1)
        losses = model.training_losses(batch)
        history.append(losses["landmarks"].item())
        optimizer.zero_grad()
        losses["landmarks"].backward()
        optimizer.step()
    assert history[-1] < 0.5 * history[0], history


def test_moved_names_are_still_importable_from_selftrain() -> None:
    """Older code imports these from the module itself."""
    from kp3d.perception import (
        selftrain,
        selftrain_clustering,
        selftrain_labels,
        selftrain_losses,
        selftrain_network,
    )

    for home in (selftrain_clustering, selftrain_labels, selftrain_losses, selftrain_network):
        for name in home.__all__:
            if name in selftrain.__all__:
                assert getattr(selftrain, name) is getattr(home, name), name
    for name in selftrain.__all__:
        assert hasattr(selftrain, name), name
