"""Tests of D2-Net (:mod:`kp3d.perception.d2net` and its ``d2net_network``, ``d2net_loss``,
``d2net_matching`` and ``d2net_evaluation`` modules) and of simulator correspondences
(:mod:`kp3d.correspondence`).

A tiny ray-cast scene (a textured floor, body 0, and a textured ball, body 1, seen by three
cameras at two time steps with the ball moved in between) gives exact depth, segmentation, body
poses and images, so that correspondences can be checked against the scene's own geometry and
the network can learn real, multi-view-consistent descriptors.
"""

from __future__ import annotations

import math

import pytest
import torch

from kp3d.batch import FrameBatch
from kp3d.correspondence import DEPTH_TOLERANCE, find_correspondences, move_with_bodies, sample_maps
from kp3d.geometry import camera_centers, project, unproject
from kp3d.perception import available_perceptions, make_perception, perception_hyperparameters
from kp3d.perception.d2net import D2Net
from kp3d.perception.d2net_evaluation import evaluate_matching
from kp3d.perception.d2net_loss import d2net_loss
from kp3d.perception.d2net_matching import (
    camera_pairs,
    mutual_nearest_neighbours,
    triangulate_pairs,
)
from kp3d.perception.d2net_network import (
    Detections,
    VGGTrunk,
    dense_descriptors,
    detect,
    hard_detections,
    level_size,
    soft_detection_scores,
)

SIZE = 32


# -- a ray-cast scene ------------------------------------------------------------------------------


def look_at(eye: list[float], target: list[float]) -> torch.Tensor:
    """World→camera ``(4, 4)`` of a camera at ``eye`` looking at ``target``, world z up (OpenCV
    axes: x right, y down, z forward)."""
    eye_t, target_t = torch.tensor(eye), torch.tensor(target)
    forward = torch.nn.functional.normalize(target_t - eye_t, dim=0)
    right = torch.nn.functional.normalize(
        torch.linalg.cross(forward, torch.tensor([0, 0, 1.0])), dim=0
    )
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack([right, down, forward])
    transform = torch.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = -rotation @ eye_t
    return transform


def rotation_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def texture(local: torch.Tensor, body: int) -> torch.Tensor:
    """``(*, 3)`` colours of body-local points: a smooth pattern that moves with the body."""
    x, y, z = local.unbind(-1)
    if body == 0:
        channels = [
            torch.sin(9 * x) * torch.cos(7 * y),
            torch.sin(5 * x + 11 * y),
            torch.cos(13 * y),
        ]
    else:
        channels = [torch.sin(40 * x + 9 * z), torch.cos(35 * y), torch.sin(30 * z + 20 * x)]
    return 0.5 + 0.4 * torch.stack(channels, dim=-1)


BALL_RADIUS = 0.15


def render(
    intrinsics: torch.Tensor, extrinsics: torch.Tensor, poses: torch.Tensor, size: int = SIZE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray-cast the floor ``z = 0`` (body 0, pose ``poses[0]``) and a ball of radius
    :data:`BALL_RADIUS` at ``poses[1]``'s origin (body 1).

    Returns:
        ``image (3, H, W)``, ``depth (H, W)`` and ``segmentation (H, W)`` (-1 where the ray
        misses both).
    """
    coordinates = torch.arange(size, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(coordinates, coordinates, indexing="ij")
    pixels = torch.stack([u, v], dim=-1).reshape(-1, 2)
    origin = camera_centers(extrinsics)
    directions = unproject(pixels, torch.ones(len(pixels)), intrinsics, extrinsics) - origin
    directions = torch.nn.functional.normalize(directions, dim=-1)
    far = torch.full((len(pixels),), float("inf"))
    floor = torch.where(directions[:, 2] < 0, -origin[2] / directions[:, 2], far)
    centre = poses[1, :3, 3]
    offset = origin - centre
    b = (directions * offset).sum(-1)
    disc = b**2 - (offset**2).sum() + BALL_RADIUS**2
    ball = torch.where(disc > 0, -b - disc.clamp(min=0).sqrt(), far)
    ball = torch.where(ball > 0, ball, far)
    hit = torch.minimum(floor, ball)
    body = torch.where(ball < floor, 1, torch.where(torch.isfinite(floor), 0, -1))
    points = origin + directions * hit.nan_to_num(posinf=0.0)[:, None]
    depth = project(points, intrinsics, extrinsics)[1]
    colours = torch.full((len(pixels), 3), 0.2)
    for index in (0, 1):
        pose = poses[index]
        local = (points - pose[:3, 3]) @ pose[:3, :3]
        colours = torch.where((body == index)[:, None], texture(local, index), colours)
    depth = torch.where(body >= 0, depth, 50.0)
    shape = (size, size)
    return colours.T.reshape(3, *shape), depth.reshape(shape), body.reshape(shape)


def scene_intrinsics(size: int = SIZE) -> torch.Tensor:
    focal = size * 1.2
    return torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])


EYES = ([1.6, 0.0, 1.2], [-0.8, 1.4, 1.2], [-0.8, -1.4, 1.0])


def ball_poses(position: list[float], angle: float = 0.0) -> torch.Tensor:
    poses = torch.eye(4).repeat(2, 1, 1)
    poses[1, :3, :3] = rotation_z(angle)
    poses[1, :3, 3] = torch.tensor(position)
    return poses


def scene_frames(
    positions: list[list[float]], angle: float = 0.0, size: int = SIZE, eyes=EYES
) -> FrameBatch:
    """One frame per ball position, seen by the cameras at ``eyes``; the ball turns by ``angle``
    about z per frame."""
    intrinsics = scene_intrinsics(size).expand(len(eyes), 3, 3)
    extrinsics = torch.stack([look_at(eye, [0.0, 0.0, 0.1]) for eye in eyes])
    images, depths, segmentations, poses = [], [], [], []
    for index, position in enumerate(positions):
        pose = ball_poses(position, angle * index)
        views = [render(intrinsics[c], extrinsics[c], pose, size) for c in range(len(eyes))]
        images.append(torch.stack([v[0] for v in views]))
        depths.append(torch.stack([v[1] for v in views]))
        segmentations.append(torch.stack([v[2] for v in views]))
        poses.append(pose)
    count = len(positions)
    return FrameBatch(
        torch.stack(images),
        intrinsics.expand(count, -1, -1, -1).clone(),
        extrinsics.expand(count, -1, -1, -1).clone(),
        depth=torch.stack(depths),
        segmentation=torch.stack(segmentations),
        body_poses=torch.stack(poses),
    )


def paired_batch(
    first: list[list[float]], second: list[list[float]], angle: float = 0.0, size: int = SIZE
) -> FrameBatch:
    """Frames with the ball at ``first`` positions, each paired with the ball at ``second``."""
    batch = scene_frames(first, size=size)
    moved = scene_frames(second, size=size)
    if angle:
        for index, position in enumerate(second):
            moved.body_poses[index] = ball_poses(position, angle)
            views = [
                render(
                    moved.intrinsics[index, c],
                    moved.extrinsics[index, c],
                    moved.body_poses[index],
                    size,
                )
                for c in range(moved.num_cameras)
            ]
            moved.images[index] = torch.stack([v[0] for v in views])
            moved.depth[index] = torch.stack([v[1] for v in views])
            moved.segmentation[index] = torch.stack([v[2] for v in views])
    batch.pair = moved
    return batch


def all_pixels(size: int = SIZE) -> torch.Tensor:
    coordinates = torch.arange(size, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(coordinates, coordinates, indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(1, -1, 2)


def view(batch: FrameBatch, camera: int, sample: int = 0):
    """The correspondence arguments of one view."""
    return (
        batch.depth[sample : sample + 1, camera],
        batch.segmentation[sample : sample + 1, camera],
        batch.intrinsics[sample : sample + 1, camera],
        batch.extrinsics[sample : sample + 1, camera],
    )


# -- correspondences -------------------------------------------------------------------------------


def test_sample_maps_reads_pixel_centres_and_rejects_silhouettes() -> None:
    depth = torch.arange(16.0).reshape(1, 4, 4)
    segmentation = torch.zeros(1, 4, 4, dtype=torch.long)
    segmentation[0, :, 2:] = 1
    pixels = torch.tensor(
        [[[0.5, 0.5], [1.0, 0.5], [2.5, 3.5], [2.0, 1.5], [4.0, 1.0], [3.9, 3.9]]]
    )
    values, bodies, inside = sample_maps(depth, segmentation, pixels)
    torch.testing.assert_close(values[0, :4], torch.tensor([0.0, 0.5, 14.0, 5.5]))
    assert values[0, 5] == 15.0  # half a pixel from the border: the border pixel's value
    assert bodies[0].tolist() == [0, 0, 1, -1, -1, 1]  # (2.0, 1.5) straddles bodies 0 and 1
    assert inside[0].tolist() == [True, True, True, True, False, True]


def test_same_time_correspondences_land_on_the_target_depth() -> None:
    batch = scene_frames([[0.1, 0.05, BALL_RADIUS]])
    pixels = all_pixels()
    found = find_correspondences(pixels, *view(batch, 0), *view(batch, 1))
    assert found.valid.sum() > 200
    valid = found.valid[0]
    depth_b, _, _ = sample_maps(batch.depth[:, 1], batch.segmentation[:, 1], found.target)
    difference = (found.target_depth[0, valid] - depth_b[0, valid]).abs()
    assert difference.max() <= DEPTH_TOLERANCE
    assert difference.quantile(0.95) < 2e-3  # the ball's curvature between pixel centres
    # The point seen in view b is the point seen in view a.
    seen = unproject(found.target, depth_b, batch.intrinsics[:, 1], batch.extrinsics[:, 1])
    distance = (seen[0, valid] - found.points[0, valid]).norm(dim=-1)
    assert distance.quantile(0.95) < 2e-3 and distance.max() < 2 * DEPTH_TOLERANCE
    # Both bodies take part, and images agree at corresponding pixels.
    assert set(found.bodies[0, valid].tolist()) == {0, 1}
    colours_a = batch.images[0, 0].flatten(1).T[valid]
    u, v = found.target[0, valid].floor().long().unbind(-1)
    colours_b = batch.images[0, 1][:, v, u].T
    assert (colours_a - colours_b).abs().amax(-1).median() < 0.1


def test_occluded_points_are_rejected() -> None:
    """Floor points hidden behind the ball in view b have no correspondence; the identical scene
    without the ball gives them one."""
    with_ball = scene_frames([[0.0, 0.0, BALL_RADIUS]])
    without = scene_frames([[0.0, 0.0, -5.0]])  # the ball sunk far below the floor
    pixels = all_pixels()
    found = find_correspondences(pixels, *view(with_ball, 0), *view(with_ball, 1))
    free = find_correspondences(pixels, *view(without, 0), *view(without, 1))
    floor = found.bodies[0] == 0
    behind_ball = with_ball.segmentation[0, 1].flatten()  # what view b shows where floor lands
    u, v = found.target[0].floor().long().clamp(0, SIZE - 1).unbind(-1)
    hidden = floor & (behind_ball.reshape(SIZE, SIZE)[v, u] == 1) & free.valid[0]
    assert hidden.sum() > 5
    assert not found.valid[0, hidden].any()
    # Floor points visible in both views of the scene without the ball keep their
    # correspondences with it, unless the ball hides them (or they lie next to its silhouette).
    assert found.valid[0, floor & free.valid[0] & ~hidden].float().mean() > 0.8


def test_time_correspondences_follow_the_moving_body() -> None:
    start, end = [0.1, 0.0, BALL_RADIUS], [-0.15, 0.2, BALL_RADIUS]
    batch = paired_batch([start], [end], angle=0.6)
    pair = batch.pair
    pixels = all_pixels()
    found = find_correspondences(
        pixels, *view(batch, 0), *view(pair, 0), batch.body_poses, pair.body_poses
    )
    valid = found.valid[0]
    on_ball = valid & (found.bodies[0] == 1)
    on_floor = valid & (found.bodies[0] == 0)
    assert on_ball.sum() > 10 and on_floor.sum() > 100
    # A ball point keeps its body-local coordinates: world point = R(0.6) (X - start) + end.
    depth_a = sample_maps(batch.depth[:, 0], batch.segmentation[:, 0], pixels)[0]
    before = unproject(pixels, depth_a, batch.intrinsics[:, 0], batch.extrinsics[:, 0])[0]
    expected = (before - torch.tensor(start)) @ rotation_z(0.6).T + torch.tensor(end)
    torch.testing.assert_close(found.points[0, on_ball], expected[on_ball], atol=1e-4, rtol=0)
    # ... and that is where the same camera sees it in the second frame.
    depth_b = sample_maps(pair.depth[:, 0], pair.segmentation[:, 0], found.target)[0]
    seen = unproject(found.target, depth_b, pair.intrinsics[:, 0], pair.extrinsics[:, 0])[0]
    # (up to the depth map's interpolation between pixel centres 5 cm apart on the ball)
    distance = (seen[on_ball] - expected[on_ball]).norm(dim=-1)
    assert distance.median() < 5e-3 and distance.max() < 2 * DEPTH_TOLERANCE
    # Floor points stay put.
    torch.testing.assert_close(found.points[0, on_floor], before[on_floor])
    # Without the body poses the ball's points would be taken as static, and mostly fail.
    static = find_correspondences(pixels, *view(batch, 0), *view(pair, 0))
    assert static.valid[0, found.bodies[0] == 1].float().mean() < 0.2


def test_move_with_bodies_and_errors() -> None:
    poses_from = ball_poses([0.0, 0.0, 0.0])[None]
    poses_to = ball_poses([1.0, 2.0, 3.0], math.pi / 2)[None]
    points = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    bodies = torch.tensor([[1, 0, -1]])
    moved = move_with_bodies(points, bodies, poses_from, poses_to)
    torch.testing.assert_close(
        moved[0], torch.tensor([[1.0, 3.0, 3.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    )
    with pytest.raises(ValueError, match="below the number of body poses"):
        move_with_bodies(points, torch.tensor([[2, 0, 0]]), poses_from, poses_to)
    batch = scene_frames([[0.0, 0.0, BALL_RADIUS]])
    with pytest.raises(ValueError, match="both body_poses_a and body_poses_b"):
        find_correspondences(all_pixels(), *view(batch, 0), *view(batch, 1), batch.body_poses)
    with pytest.raises(TypeError, match="integer body ids"):
        depth, segmentation, K, T = view(batch, 0)
        find_correspondences(all_pixels(), depth, segmentation.float(), K, T, *view(batch, 1))


# -- detection -------------------------------------------------------------------------------------


def test_hard_rule_on_planted_maxima() -> None:
    features = torch.zeros(1, 3, 8, 8)
    features[0, :, :, :] = 0.1
    features[0, 1, 2, 2] = 1.0  # local max of channel 1, which is its argmax: detected
    features[0, 2, 5, 5] = 0.8  # a local max of channel 2 ...
    features[0, 0, 5, 5] = 0.9  # ... but channel 0 wins there, and 0.9 is not a max of channel 0
    features[0, 0, 5, 6] = 1.2
    features[0, 1, 2, 3] = 0.7  # not a local max of channel 1 (its neighbour is 1.0)
    detected = hard_detections(features)[0]
    assert detected[2, 2]
    assert not detected[2, 3]
    assert not detected[5, 5]
    assert detected[5, 6]
    # A flat plateau (ties everywhere) is not detected, nor is a map of zeros; a two-cell tie
    # is not a strict maximum either.
    assert not detected[7, 0]
    tie = torch.zeros(1, 2, 5, 5)
    tie[0, 0, 2, 1:3] = 1.0
    assert not hard_detections(tie).any()
    assert not hard_detections(torch.zeros(2, 4, 5, 5)).any()
    assert hard_detections(torch.rand(2, 3, 4, 6, 7)).shape == (2, 3, 6, 7)


def test_soft_scores_sum_to_one_and_prefer_local_maxima() -> None:
    torch.manual_seed(0)
    features = torch.rand(2, 3, 5, 9, 11)
    scores = soft_detection_scores(features)
    assert scores.shape == (2, 3, 9, 11)
    assert (scores >= 0).all()
    torch.testing.assert_close(scores.sum(dim=(-2, -1)), torch.ones(2, 3))
    peaked = torch.full((1, 4, 7, 7), 0.5)
    peaked[0, 2, 3, 3] = 3.0
    score = soft_detection_scores(peaked)[0]
    assert score.argmax() == 3 * 7 + 3
    # By hand at the peak: alpha = e^3 / (e^3 + 8 e^0.5), beta = 1.
    alpha = math.exp(3) / (math.exp(3) + 8 * math.exp(0.5))
    gamma_flat = (1 / 9) * 1.0  # a flat interior cell: alpha = 1/9, beta = 1
    assert score[3, 3] / score[5, 5] == pytest.approx(alpha / gamma_flat, rel=1e-5)
    # At a corner, the five neighbours outside the map count as D = 0.
    gamma_corner = math.exp(0.5) / (4 * math.exp(0.5) + 5)
    assert score[6, 6] / score[5, 5] == pytest.approx(gamma_corner / gamma_flat, rel=1e-5)
    # Descriptors are the features' directions; a zero feature stays zero.
    descriptors = dense_descriptors(torch.cat([features, torch.zeros(2, 3, 5, 1, 11)], dim=-2))
    norms = descriptors.norm(dim=-3)
    torch.testing.assert_close(norms[..., :9, :], torch.ones(2, 3, 9, 11))
    assert (norms[..., 9, :] == 0).all()
    # Large responses stay finite (the neighbourhood softmax is computed stably).
    assert torch.isfinite(soft_detection_scores(features * 1e4)).all()


def test_trunk_sizes_and_strides() -> None:
    images = torch.rand(2, 3, 32, 48)
    for stride in (1, 2, 4):
        trunk = VGGTrunk((4, 4, 8, 6), stride)
        features = trunk(images)
        assert features.shape == (2, 6, 32 // stride, 48 // stride)
        assert (features >= 0).all()
        assert len(trunk.convs()) == 10
    with pytest.raises(ValueError, match="stride"):
        VGGTrunk((4, 4, 8, 6), 3)
    with pytest.raises(ValueError, match="widths"):
        VGGTrunk((4, 4, 8), 2)


def test_trunk_loads_user_weights(tmp_path) -> None:
    torch.manual_seed(0)
    source = VGGTrunk((4, 4, 8, 6), 4)
    path = tmp_path / "trunk.pt"
    torch.save(source.state_dict(), path)
    target = VGGTrunk((4, 4, 8, 6), 2)  # a different stride uses the same weights
    target.load_weights(path)
    for a, b in zip(source.convs(), target.convs(), strict=True):
        torch.testing.assert_close(a.weight, b.weight)
    # A VGG-like state dict with other key names (e.g. torchvision's `features.N`), nested.
    renamed = {
        f"features.{i}.{k.split('.')[-1]}": v
        for i, (k, v) in enumerate(source.state_dict().items())
    }
    torch.save({"model": renamed}, path)
    fresh = VGGTrunk((4, 4, 8, 6), 2)
    fresh.load_weights(path)
    torch.testing.assert_close(fresh.convs()[9].bias, source.convs()[9].bias)
    with pytest.raises(ValueError, match="widths"):
        VGGTrunk((8, 4, 8, 6), 2).load_weights(path)
    with pytest.raises(FileNotFoundError):
        VGGTrunk().load_weights(tmp_path / "missing.pt")
    module = make_perception(
        "d2net", num_cameras=2, image_size=32, widths=(4, 4, 8, 6), trunk_weights=str(path)
    )
    torch.testing.assert_close(module.trunk.convs()[0].weight, source.convs()[0].weight)


def test_pyramid_levels_and_pixels() -> None:
    torch.manual_seed(0)
    trunk = VGGTrunk((4, 4, 8, 6), 2)
    assert level_size((32, 48), 0.5, 2) == (16, 24)
    assert level_size((30, 30), 0.5, 4) == (16, 16)  # rounded to a multiple of the stride
    images = torch.rand(3, 3, 32, 48)
    found = detect(trunk, images, scales=(2.0, 0.5, 1.0), max_detections=40)
    assert found.pixels.shape == (3, 40, 2) and found.descriptors.shape == (3, 40, 6)
    assert found.scores.shape == found.valid.shape == (3, 40)
    pixels = found.pixels[found.valid]
    assert ((pixels >= 0) & (pixels <= torch.tensor([48.0, 32.0]))).all()
    # Pixels are cell centres of one of the levels (cells of 4, 2 or 1 px).
    fractions = {round(float(f), 3) for f in (pixels % 1).flatten()}
    assert fractions <= {0.0, 0.5}
    torch.testing.assert_close(
        found.descriptors[found.valid].norm(dim=-1), torch.ones(int(found.valid.sum()))
    )
    # Scores are sorted, invalid slots padded.
    assert (found.scores[:, :-1] >= found.scores[:, 1:]).all()
    many = detect(trunk, images, scales=(1.0,), max_detections=1000)  # more than 16·24 cells
    assert many.pixels.shape == (3, 1000, 2)
    assert many.valid.sum(1).max() <= 16 * 24 and not many.valid[:, 16 * 24 :].any()
    assert torch.isnan(many.pixels[~many.valid]).all()


def test_single_scale_detections_are_the_hard_rule() -> None:
    torch.manual_seed(0)
    trunk = VGGTrunk((4, 4, 8, 6), 2)
    images = torch.rand(1, 3, 32, 32)
    found = detect(trunk, images, scales=(1.0,), max_detections=256)
    expected = hard_detections(trunk(images))[0]  # (16, 16)
    cells = (found.pixels[0, found.valid[0]] / 2).floor().long()
    marked = torch.zeros(16, 16, dtype=torch.bool)
    marked[cells[:, 1], cells[:, 0]] = True
    assert torch.equal(marked, expected)


def test_coarse_detections_are_not_repeated_at_finer_levels() -> None:
    """A blob that every level detects at the same place is reported once, at the coarsest."""
    torch.manual_seed(0)
    trunk = VGGTrunk((4, 4, 8, 6), 2)
    images = torch.rand(1, 3, 32, 32)
    found = detect(trunk, images, max_detections=2000)
    coarse = detect(trunk, images, scales=(0.5,), max_detections=2000)
    coarse_cells = coarse.pixels[0, coarse.valid[0]]  # 4 px cells at half scale
    pixels = found.pixels[0, found.valid[0]]
    fine = pixels[(pixels % 4 != 2).any(-1)]  # not a 4 px cell centre: from a finer level
    # No finer detection lies in a cell that the coarsest level detected.
    fine_cells = (fine / 4).floor()
    coarse_ids = set(map(tuple, (coarse_cells / 4).floor().tolist()))
    assert not any(tuple(c) in coarse_ids for c in fine_cells.tolist())


# -- loss ------------------------------------------------------------------------------------------


def test_loss_prefers_matching_descriptors() -> None:
    torch.manual_seed(0)
    features = torch.rand(2, 16, 8, 8)
    shuffled = features.flatten(2)[:, :, torch.randperm(64)].reshape(2, 16, 8, 8)
    maps = torch.cat(
        [features, features, shuffled]
    )  # images 0, 1; their copies 2, 3; shuffled 4, 5
    # Every cell of image a lands on the same cell of image b.
    cells = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy"), -1)
    target = (cells.reshape(1, -1, 2) * 4 + 2).expand(2, -1, -1)
    valid = torch.ones(2, 64, dtype=torch.bool)
    matching, used = d2net_loss(maps, torch.tensor([[0, 2], [1, 3]]), target, valid, (32, 32))
    mismatched, _ = d2net_loss(maps, torch.tensor([[0, 4], [1, 5]]), target, valid, (32, 32))
    assert used == 2
    assert matching < mismatched - 0.5
    # Too few correspondences: the pair is skipped, and the zero keeps a graph.
    leaf = features.clone().requires_grad_()
    empty, used = d2net_loss(
        leaf, torch.tensor([[0, 1], [1, 0]]), target, torch.zeros(2, 64, dtype=torch.bool), (32, 32)
    )
    assert used == 0 and empty == 0
    empty.backward()
    assert leaf.grad is not None
    with pytest.raises(ValueError, match="view_pairs"):
        d2net_loss(features, torch.tensor([[0, 2]]), target[:1], valid[:1], (32, 32))


def reference_loss(features, view_pairs, target, valid, image_size, margin, radius):
    """D2-Net's loss written out correspondence by correspondence (slow, obvious)."""
    _, _, height, width = features.shape
    descriptors = torch.nn.functional.normalize(features, dim=1)
    scores = soft_detection_scores(features)
    losses = []
    for (a, b), points, mask in zip(view_pairs.tolist(), target, valid, strict=True):
        numerator = denominator = 0.0
        for cell in mask.nonzero()[:, 0].tolist():
            row, column = divmod(cell, width)
            u, v = points[cell].tolist()
            column_b = min(int(u * width / image_size[1]), width - 1)
            row_b = min(int(v * height / image_size[0]), height - 1)
            d_a, d_b = descriptors[a, :, row, column], descriptors[b, :, row_b, column_b]
            negatives = [float("inf")]
            for i in range(height):
                for j in range(width):
                    if max(abs(i - row_b), abs(j - column_b)) > radius:
                        negatives.append(2 - 2 * float(d_a @ descriptors[b, :, i, j]))
                    if max(abs(i - row), abs(j - column)) > radius:
                        negatives.append(2 - 2 * float(descriptors[a, :, i, j] @ d_b))
            positive = 2 - 2 * float(d_a @ d_b)
            weight = float(scores[a, row, column] * scores[b, row_b, column_b])
            numerator += weight * max(0.0, margin + positive - min(negatives))
            denominator += weight
        losses.append(numerator / denominator)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_loss_matches_a_direct_implementation(radius) -> None:
    torch.manual_seed(radius)
    features = torch.rand(3, 6, 4, 5)
    view_pairs = torch.tensor([[0, 1], [2, 0], [1, 1]])
    target = torch.rand(3, 20, 2) * torch.tensor([20.0, 16.0])
    valid = torch.rand(3, 20) < 0.6
    loss, used = d2net_loss(
        features, view_pairs, target, valid, (16, 20), 0.7, radius, min_correspondences=1
    )
    expected = reference_loss(features, view_pairs, target, valid, (16, 20), 0.7, radius)
    assert used == 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_by_hand_on_one_correspondence() -> None:
    """One correspondence on 1 x 4 maps: p, n and the margin as in the paper, with the closest
    negative inside the safe radius ignored."""
    maps = torch.zeros(2, 2, 1, 4)  # image a, image b
    maps[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # source cell 0
    maps[0, :, 0, 3] = torch.tensor([0.6, 0.8])  # a negative in a, 3 cells away
    maps[1, :, 0, 0] = torch.tensor([0.0, 1.0])  # a negative in b
    maps[1, :, 0, 2] = torch.tensor([1.0, 0.0])  # the source's twin, but next to its target
    maps[1, :, 0, 3] = torch.tensor([0.8, 0.6])  # where cell 0 lands
    target = torch.tensor([[[3.5, 0.5], [0.5, 0.5], [1.5, 0.5], [2.5, 0.5]]])
    valid = torch.tensor([[True, False, False, False]])
    maps.requires_grad_()
    loss, used = d2net_loss(
        maps,
        torch.tensor([[0, 1]]),
        target,
        valid,
        (1, 4),
        margin=1.0,
        safe_radius=1,
        min_correspondences=1,
    )
    positive = 2 - 2 * 0.8  # ||(1, 0) - (0.8, 0.6)||²
    negative_b = 2 - 2 * 0.0  # to (0, 1) in b (cells 1 and 2 are within 1 cell of cell 3)
    negative_a = 2 - 2 * (0.6 * 0.8 + 0.8 * 0.6)  # (0.8, 0.6) to (0.6, 0.8) in a
    expected = max(0.0, 1.0 + positive - min(negative_a, negative_b))
    assert used == 1
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # The gradient reaches the cells that define the loss, not the ignored twin (whose only
    # path, through the scores of its neighbour, cancels: one correspondence's weight divides out).
    loss.backward()
    gradient = maps.grad.abs().sum(dim=1)[:, 0]  # (2 images, 4 cells)
    assert (gradient[0, [0, 3]] > 1e-3).all() and gradient[1, 3] > 1e-3
    assert gradient[1, 2] < 1e-6


# -- the perception module -------------------------------------------------------------------------


def small_model(num_cameras: int = 3, **kwargs) -> D2Net:
    torch.manual_seed(0)
    options = {"widths": (8, 8, 16, 16), "max_detections": 24, "num_points": 6, **kwargs}
    return make_perception("d2net", num_cameras=num_cameras, image_size=SIZE, **options)


def test_registered_with_its_hyperparameters() -> None:
    assert "d2net" in available_perceptions()
    assert {"widths", "stride", "scales", "num_points", "trunk_weights"} <= set(
        perception_hyperparameters("d2net")
    )
    with pytest.raises(ValueError, match="multiple of stride"):
        make_perception("d2net", num_cameras=2, image_size=30, stride=4)


def test_forward_contract_and_order() -> None:
    batch = scene_frames([[0.1, 0.0, BALL_RADIUS], [-0.1, 0.1, BALL_RADIUS]])
    model = small_model().eval()
    output = model(batch.images, batch.intrinsics, batch.extrinsics)
    assert model.keypoint_frame == "world" and model.features_dim == 24
    assert output.features.shape == (2, 24)
    assert output.keypoints.shape == (2, 6, 3) and output.confidence.shape == (2, 6)
    assert output.losses == {}
    torch.testing.assert_close(output.features[:, :18], output.keypoints.flatten(1))
    torch.testing.assert_close(output.features[:, 18:], output.confidence)
    assert (output.confidence[:, :-1] >= output.confidence[:, 1:]).all()  # best match first
    assert output.visuals.detections.shape == output.visuals.points.shape == (2, 3, 6, 2)
    # Each shown point comes from detections in exactly two views.
    seen = torch.isfinite(output.visuals.detections).all(-1).sum(1)  # (B, K)
    assert (output.confidence > 0).any()
    assert set(seen[output.confidence > 0].tolist()) <= {2}
    assert (seen[output.confidence == 0] <= 2).all()
    # One camera: nothing to match, every point is padding.
    single = small_model(num_cameras=1).eval()
    alone = single(batch.images[:, :1], batch.intrinsics[:, :1], batch.extrinsics[:, :1])
    assert (alone.keypoints == 0).all() and (alone.confidence == 0).all()
    assert torch.isnan(alone.visuals.points).all()


def test_mutual_nearest_neighbours_and_triangulation() -> None:
    descriptors = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    order = torch.tensor([3, 0, 4, 1, 2])
    valid_b = torch.tensor([True, True, True, True, False])
    match, similarity = mutual_nearest_neighbours(
        descriptors, torch.ones(5, dtype=torch.bool), descriptors[order], valid_b
    )
    inverse = torch.argsort(order)
    expected = torch.where(inverse == 4, -1, inverse)
    assert torch.equal(match, expected)
    torch.testing.assert_close(similarity[match >= 0], torch.ones(4))
    # Two-view triangulation of matches with their own camera pairs.
    batch = scene_frames([[0.0, 0.0, BALL_RADIUS]])
    points = torch.tensor([[0.1, -0.05, 0.2], [0.0, 0.1, 0.05]])
    cameras = torch.tensor([[0, 1], [1, 2]])
    K, T = batch.intrinsics[0, cameras], batch.extrinsics[0, cameras]  # (2, 2, ...)
    pixels = project(points[:, None, None], K, T)[0][..., 0, :]  # (2, 2 cameras, 2)
    found = triangulate_pairs(pixels[:, 0], pixels[:, 1], K, T)
    torch.testing.assert_close(found, points, atol=1e-4, rtol=0)
    assert camera_pairs(3) == [(0, 1), (0, 2), (1, 2)]


def test_training_losses_need_ground_truth_and_pairs() -> None:
    batch = paired_batch([[0.0, 0.0, BALL_RADIUS]], [[0.1, 0.0, BALL_RADIUS]])
    model = small_model()
    losses = model.training_losses(batch)
    assert set(losses) == {"ranking"} and losses["ranking"] > 0
    bare = FrameBatch(batch.images, batch.intrinsics, batch.extrinsics, pair=batch.pair)
    with pytest.raises(ValueError, match="depth"):
        model.training_losses(bare)
    unpaired = FrameBatch(
        batch.images,
        batch.intrinsics,
        batch.extrinsics,
        depth=batch.depth,
        segmentation=batch.segmentation,
        body_poses=batch.body_poses,
    )
    with pytest.raises(ValueError, match="pair"):
        model.training_losses(unpaired)


def test_view_pairs_and_cell_sources() -> None:
    model = small_model(num_cameras=2)
    assert model.view_pairs() == [
        (0, 0, 0, 1),
        (0, 1, 0, 0),
        (0, 0, 1, 0),
        (0, 0, 1, 1),
        (0, 1, 1, 0),
        (0, 1, 1, 1),
    ]
    sources = model.source_pixels()
    assert sources.shape == (256, 2)
    torch.testing.assert_close(sources[:2], torch.tensor([[1.0, 1.0], [3.0, 1.0]]))


def test_ignored_bodies_leave_the_loss() -> None:
    batch = paired_batch([[0.0, 0.0, BALL_RADIUS]], [[0.1, 0.0, BALL_RADIUS]])
    _, _, every = small_model().correspondences(batch)
    _, _, ball_only = small_model(ignore_bodies=(0,)).correspondences(batch)
    assert ball_only.any() and (ball_only <= every).all()
    assert ball_only.sum() < 0.3 * every.sum()  # the floor is most of every view


def test_short_training_lowers_the_loss() -> None:
    batch = paired_batch([[0.1, 0.0, BALL_RADIUS]], [[0.0, -0.1, BALL_RADIUS]])
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = model.training_losses(batch)["ranking"].item()
    for _ in range(15):
        loss = model.training_losses(batch)["ranking"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.training_losses(batch)["ranking"].item()
    assert after < 0.7 * before


class OracleD2Net(D2Net):
    """Detections given in advance instead of computed (for testing the evaluation)."""

    detections: Detections

    def detect(self, images, scales=None, max_detections=None) -> Detections:
        return self.detections


def oracle_detections(batch: FrameBatch, shuffle: bool = False) -> Detections:
    """The pixel centres of view 0 that every view sees, projected into every view, each point's
    descriptor a one-hot code of its index (shuffled across points in views 1 and 2 if asked)."""
    pixels = all_pixels()[:, ::7]  # (1, P, 2), a spread of pixel centres
    visible = torch.ones(pixels.shape[1], dtype=torch.bool)
    found = []
    for camera in range(batch.num_cameras):
        found.append(find_correspondences(pixels, *view(batch, 0), *view(batch, camera)))
        visible &= found[-1].valid[0]
    count = int(visible.sum())
    codes = torch.eye(count)
    views = []
    for camera, correspondence in enumerate(found):
        order = torch.randperm(count) if shuffle and camera > 0 else torch.arange(count)
        views.append((correspondence.target[0, visible], codes[order]))
    return Detections(
        pixels=torch.stack([v[0] for v in views])[None],
        descriptors=torch.stack([v[1] for v in views])[None],
        scores=torch.ones(1, batch.num_cameras, count),
        valid=torch.ones(1, batch.num_cameras, count, dtype=torch.bool),
    )


def test_evaluate_matching_with_an_oracle() -> None:
    batch = scene_frames([[0.1, 0.05, BALL_RADIUS]])
    oracle = OracleD2Net(3, SIZE, widths=(4, 4, 4, 4))
    oracle.detections = oracle_detections(batch)
    count = oracle.detections.valid.shape[-1]
    assert count > 20
    result = evaluate_matching(oracle, batch, thresholds=(0.5, 2.0))
    assert result["pairs"] == 3 and result["detections"] == count
    assert result["matches"] == count
    assert result["precision@0.5px"] == result["recall@0.5px"] == 1.0
    assert result["triangulation_median_mm"] < 1.0  # exact pixels: depth interpolation only
    torch.manual_seed(0)
    oracle.detections = oracle_detections(batch, shuffle=True)
    shuffled = evaluate_matching(oracle, batch, thresholds=(0.5, 2.0))
    assert shuffled["precision@2px"] < 0.2 and shuffled["recall@2px"] < 0.2
    assert shuffled["triangulation_median_mm"] > 50.0
    with pytest.raises(ValueError, match="depth"):
        evaluate_matching(oracle, FrameBatch(batch.images, batch.intrinsics, batch.extrinsics))


def test_forward_triangulates_oracle_matches_into_the_scene() -> None:
    """Exact detections with unique descriptors: every returned point is a surface point of the
    scene seen by two cameras, with full confidence."""
    batch = scene_frames([[0.1, 0.05, BALL_RADIUS]])
    oracle = OracleD2Net(3, SIZE, widths=(4, 4, 4, 4), num_points=10).eval()
    oracle.detections = oracle_detections(batch)
    output = oracle(batch.images, batch.intrinsics, batch.extrinsics)
    torch.testing.assert_close(output.confidence, torch.ones(1, 10))
    pixels = oracle.detections.pixels[0, 0]  # view 0's detections, the scene's points
    depth = sample_maps(batch.depth[:, 0], batch.segmentation[:, 0], pixels[None])[0]
    truth = unproject(pixels[None], depth, batch.intrinsics[:, 0], batch.extrinsics[:, 0])[0]
    distance = torch.cdist(output.keypoints[0], truth).amin(dim=1)  # nearest true point
    assert distance.max() < 0.005
    # The visuals: each point's two detections, and the point reprojected onto them.
    shown = torch.isfinite(output.visuals.detections[0]).all(-1)  # (C, K)
    assert (shown.sum(0) == 2).all()
    gap = (output.visuals.points[0] - output.visuals.detections[0]).norm(dim=-1)[shown]
    assert gap.max() < 0.1


def test_moved_names_are_still_importable_from_d2net() -> None:
    """``benchmarks/d2net_matching.py`` and older code import these from the module."""
    from kp3d.perception import d2net, d2net_evaluation, d2net_loss, d2net_matching, d2net_network

    for home in (d2net_evaluation, d2net_loss, d2net_matching, d2net_network):
        for name in home.__all__:
            if name in d2net.__all__:
                assert getattr(d2net, name) is getattr(home, name), name
    for name in d2net.__all__:
        assert hasattr(d2net, name), name
