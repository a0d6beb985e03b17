"""Tests of OpenPose (:mod:`kp3d.perception.openpose` and its ``openpose_fields``,
``openpose_assembly`` and ``openpose_evaluation`` modules): ground-truth maps and fields, the
loss's mask, the parser on synthetic maps with known instances (both matchers), the features' slot
order, the assembly metric, and a short training run that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from perception_fixtures import identity_cameras
from torch import nn

from kp3d.batch import FrameBatch
from kp3d.peaks import decode_peaks
from kp3d.perception import OpenPose, available_perceptions, make_perception
from kp3d.perception.openpose import MULTI_REACH_INSTANCES, MULTI_REACH_LIMBS
from kp3d.perception.openpose_assembly import (
    Instances,
    limb_scores,
    match_limbs,
    order_instances,
    parse_instances,
)
from kp3d.perception.openpose_evaluation import AssemblyResult, evaluate_assembly
from kp3d.perception.openpose_fields import (
    chain_limbs,
    check_limbs,
    confidence_targets,
    loss_masks,
    paf_targets,
    part_layout,
)

SIZE = (24, 32)  # map grid (H, W) of the synthetic tests
# MultiReach's tree: base-elbow-fingertip, base-target.
MULTI_REACH_TREE = np.array([[0, 1], [1, 2], [0, 3]])

# Three instances of four parts on the map grid (u, v), well apart, as MultiReach's arms.
INSTANCES = torch.tensor(
    [
        [[5.2, 5.7], [8.6, 7.1], [10.3, 10.8], [4.4, 10.2]],
        [[20.7, 4.3], [24.1, 6.6], [26.9, 4.2], [17.5, 8.1]],
        [[14.5, 18.3], [11.2, 20.4], [8.1, 18.9], [18.6, 20.7]],
    ],
    dtype=torch.float64,
)


def instance_maps(
    points: torch.Tensor = INSTANCES, visible: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth ``confidence (P, H, W)`` and ``pafs (2 L, H, W)`` of one view."""
    present = torch.ones(points.shape[:-1], dtype=torch.bool) if visible is None else visible
    confidence = confidence_targets(points[None], present[None], 1.5, SIZE)[0]
    pafs = paf_targets(points[None], present[None], MULTI_REACH_TREE, 1.0, SIZE)[0]
    return confidence, pafs


# -- layout ----------------------------------------------------------------------------------------


def test_part_layout_of_multireach() -> None:
    slots, parts, instances, num_parts = part_layout(MULTI_REACH_INSTANCES)
    assert (instances, num_parts) == (3, 4)
    assert slots.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert parts.tolist() == [0, 1, 2, 3] * 3
    slots, parts, _, _ = part_layout([7, 3, 7, 3])  # interleaved ids: ranks within each instance
    assert slots.tolist() == [1, 0, 1, 0] and parts.tolist() == [0, 0, 1, 1]


def test_part_layout_rejects_unequal_instances() -> None:
    with pytest.raises(ValueError, match="same number of keypoints"):
        part_layout([0, 0, 1])
    with pytest.raises(ValueError, match="at least one"):
        part_layout([])


@pytest.mark.parametrize(
    ("limbs", "match"),
    [
        ([[0, 1], [1, 2]], "3 pairs"),
        ([[0, 1], [1, 2], [2, 0]], "cycle"),
        ([[0, 1], [1, 2], [2, 4]], "3 pairs"),
        ([[0, 0], [1, 2], [2, 3]], "cycle"),
    ],
)
def test_check_limbs_wants_a_spanning_tree(limbs, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_limbs(limbs, 4)
    assert check_limbs(MULTI_REACH_TREE, 4).shape == (3, 2)


def test_the_chain_is_a_spanning_tree_of_any_parts() -> None:
    assert chain_limbs(4) == ((0, 1), (1, 2), (2, 3))
    assert chain_limbs(1) == ()
    for parts in range(1, 7):
        assert check_limbs(chain_limbs(parts), parts).shape == (parts - 1, 2)


# -- targets ---------------------------------------------------------------------------------------


def test_confidence_maps_peak_at_every_instance_of_a_part() -> None:
    confidence, _ = instance_maps()
    assert confidence.shape == (4, *SIZE)
    for part in range(4):
        for instance in INSTANCES[:, part]:
            column, row = int(instance[0]), int(instance[1])
            window = confidence[part, row - 1 : row + 2, column - 1 : column + 2]
            assert confidence[part, row, column] == window.max()  # a local maximum per instance
            # exp(-d² / sigma²) at the cell centre, d its distance to the keypoint (sigma = 1.5).
            centre = torch.tensor([column + 0.5, row + 0.5], dtype=torch.float64)
            expected = torch.exp(-((centre - instance) ** 2).sum() / 1.5**2)
            torch.testing.assert_close(confidence[part, row, column], expected)
    # A single instance decodes to its exact sub-pixel position.
    single = confidence_targets(
        INSTANCES[None, :1], torch.ones(1, 1, 4, dtype=torch.bool), 1.5, SIZE
    )
    pixels, _ = decode_peaks(single[0])
    torch.testing.assert_close(pixels, INSTANCES[0], atol=1e-9, rtol=0)


def test_invisible_keypoints_are_not_drawn() -> None:
    visible = torch.ones(3, 4, dtype=torch.bool)
    visible[1, 2] = False
    confidence, pafs = instance_maps(visible=visible)
    column, row = (int(c) for c in INSTANCES[1, 2])
    assert confidence[2, row, column] < 1e-6
    # The elbow-fingertip limb (limb 1) of instance 1 has an invisible end: not drawn.
    middle = (INSTANCES[1, 1] + INSTANCES[1, 2]) / 2
    assert pafs[2:4, int(middle[1]), int(middle[0])].abs().max() == 0


def test_paf_is_the_unit_vector_inside_the_limb_and_zero_outside() -> None:
    start, end = torch.tensor([4.0, 10.0]), torch.tensor([20.0, 10.0])  # horizontal, length 16
    points = torch.stack([start, end])[None, None].double()  # (B=1, M=1, P=2, 2)
    paf = paf_targets(points, torch.ones(1, 1, 2, dtype=torch.bool), np.array([[0, 1]]), 1.0, SIZE)
    assert paf.shape == (1, 2, *SIZE)
    x, y = paf[0]
    # Inside: rows 9 and 10 (centres 9.5, 10.5 within 1 of v = 10), columns 4..19 (on the segment).
    assert (x[9:11, 4:20] == 1).all() and (y[9:11, 4:20] == 0).all()
    assert (x[:8] == 0).all() and (x[12:] == 0).all()  # farther than the width across
    assert (x[:, :3] == 0).all() and (x[:, 21:] == 0).all()  # beyond the ends
    # A diagonal limb's vectors are unit length where drawn.
    diagonal = torch.tensor([[[[3.0, 3.0], [15.0, 12.0]]]], dtype=torch.float64)
    field = paf_targets(
        diagonal, torch.ones(1, 1, 2, dtype=torch.bool), np.array([[0, 1]]), 1.0, SIZE
    )
    norms = field[0].norm(dim=0)
    drawn = norms > 0
    assert drawn.sum() > 20
    torch.testing.assert_close(norms[drawn], torch.ones(int(drawn.sum()), dtype=torch.float64))
    torch.testing.assert_close(
        field[0, :, drawn][:, 0], torch.tensor([0.8, 0.6], dtype=torch.float64)
    )


def test_overlapping_limbs_are_averaged() -> None:
    """Two instances whose limbs cross at right angles: the crossing cell holds the mean."""
    points = torch.tensor(
        [[[[4.0, 10.0], [20.0, 10.0]], [[12.0, 2.0], [12.0, 18.0]]]], dtype=torch.float64
    )  # instance 0 along +u, instance 1 along +v, crossing at (12, 10)
    paf = paf_targets(points, torch.ones(1, 2, 2, dtype=torch.bool), np.array([[0, 1]]), 1.0, SIZE)
    torch.testing.assert_close(paf[0, :, 10, 12], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(paf[0, :, 10, 5], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(paf[0, :, 4, 12], torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_loss_masks_hide_what_is_unknown() -> None:
    visible = torch.ones(1, 3, 4, dtype=torch.bool)
    visible[0, 0, 2] = False  # instance 0's fingertip
    confidence_mask, paf_mask = loss_masks(
        INSTANCES[None], visible, MULTI_REACH_TREE, 1.5, 1.0, SIZE
    )
    assert confidence_mask.shape == (1, 4, *SIZE) and paf_mask.shape == (1, 6, *SIZE)
    column, row = (int(c) for c in INSTANCES[0, 2])
    assert confidence_mask[0, 2, row, column] == 0  # around the invisible keypoint, its part
    assert confidence_mask[0, 1, row, column] == 1  # other parts' channels count
    assert confidence_mask[0, 2].mean() > 0.9  # a small disc only
    middle = (INSTANCES[0, 1] + INSTANCES[0, 2]) / 2
    assert (paf_mask[0, 2:4, int(middle[1]), int(middle[0])] == 0).all()  # its limb's region
    assert (paf_mask[0, 0:2] == 1).all() and (paf_mask[0, 4:6] == 1).all()


# -- inference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("matcher", ["hungarian", "greedy"])
def test_parser_recovers_known_instances(matcher) -> None:
    confidence, pafs = instance_maps()
    found = parse_instances(confidence, pafs, MULTI_REACH_TREE, matcher=matcher)
    assert isinstance(found, Instances) and len(found) == 3 and found.present.all()
    order = np.argsort(found.points[:, 0, 0])  # match by the base's u
    truth = INSTANCES.numpy()[np.argsort(INSTANCES.numpy()[:, 0, 0])]
    np.testing.assert_allclose(found.points[order], truth, atol=1e-6)
    assert (found.scores > 0.8).all() and (found.score > 4).all()
    # NumPy maps give the same result as tensors.
    again = parse_instances(confidence.numpy(), pafs.numpy(), MULTI_REACH_TREE, matcher=matcher)
    np.testing.assert_allclose(again.points, found.points)


def test_parser_merges_partial_instances_of_any_limb_order() -> None:
    """Limbs listed so that the first two build separate pieces that the third joins."""
    limbs = np.array([[0, 1], [2, 3], [1, 2]])
    points = INSTANCES[:2]
    confidence = confidence_targets(points[None], torch.ones(1, 2, 4, dtype=torch.bool), 1.5, SIZE)
    pafs = paf_targets(points[None], torch.ones(1, 2, 4, dtype=torch.bool), limbs, 1.0, SIZE)
    found = parse_instances(confidence[0], pafs[0], limbs)
    assert len(found) == 2 and found.present.all()
    order = np.argsort(found.points[:, 0, 0])
    np.testing.assert_allclose(found.points[order], points.numpy(), atol=1e-6)


def test_parser_keeps_instances_with_missing_parts_and_drops_lone_peaks() -> None:
    visible = torch.ones(3, 4, dtype=torch.bool)
    visible[0, 3] = False  # instance 0 without its target
    visible[2, 1:] = False  # instance 2: its base alone
    confidence, pafs = instance_maps(visible=visible)
    found = parse_instances(confidence, pafs, MULTI_REACH_TREE)
    assert len(found) == 2
    parts = sorted(found.present.sum(1).tolist())
    assert parts == [3, 4]
    with_lone = parse_instances(confidence, pafs, MULTI_REACH_TREE, min_parts=1)
    assert len(with_lone) == 3 and sorted(with_lone.present.sum(1).tolist()) == [1, 3, 4]


def test_limb_scores_follow_the_papers_criteria() -> None:
    start, end = torch.tensor([4.0, 10.0]), torch.tensor([20.0, 10.0])
    points = torch.stack([start, end])[None, None].double()
    paf = paf_targets(points, torch.ones(1, 1, 2, dtype=torch.bool), np.array([[0, 1]]), 1.0, SIZE)
    field = paf[0].numpy()
    options = {"samples": 10, "paf_threshold": 0.05, "min_fraction": 0.8, "prior_length": 100.0}
    starts = np.array([[4.0, 10.0], [4.0, 16.0]])
    ends = np.array([[20.0, 10.0], [20.0, 16.0]])
    scores = limb_scores(field, starts, ends, **options)
    # Along the field: 1 at every sample but the two ends, which fall half-way between a drawn
    # cell and one beyond the segment (0.5 each, bilinearly).
    assert scores[0, 0] == pytest.approx(0.9)
    assert np.isneginf(scores[1, 1])  # a parallel segment off the field: too few samples
    assert np.isneginf(scores[0, 1]) and np.isneginf(scores[1, 0])  # diagonals leave the field
    backwards = limb_scores(field, ends[:1], starts[:1], **options)
    assert np.isneginf(backwards[0, 0])  # against the field's direction
    # The distance prior: limbs longer than prior_length lose min(prior / length - 1, 0).
    short_prior = limb_scores(field, starts[:1], ends[:1], **{**options, "prior_length": 12.0})
    assert short_prior[0, 0] == pytest.approx(scores[0, 0] + 12.0 / 16.0 - 1.0)
    assert limb_scores(field, np.zeros((0, 2)), ends, **options).shape == (0, 2)


def test_hungarian_maximises_the_total_and_greedy_takes_the_best_first() -> None:
    scores = np.array([[0.9, 0.8], [0.7, -np.inf]])
    assert sorted(match_limbs(scores, "hungarian")) == [(0, 1, 0.8), (1, 0, 0.7)]
    assert match_limbs(scores, "greedy") == [(0, 0, 0.9)]
    # Invalid candidates are never chosen, even if a full assignment would need them.
    lonely = np.array([[0.5, -np.inf], [-np.inf, -np.inf]])
    assert match_limbs(lonely, "hungarian") == [(0, 0, 0.5)] == match_limbs(lonely, "greedy")
    assert match_limbs(np.zeros((0, 3)), "hungarian") == []
    with pytest.raises(ValueError, match="matcher"):
        match_limbs(scores, "random")


def test_order_instances_left_to_right_padded() -> None:
    points = np.array(
        [
            [[20.0, 1.0], [np.nan, np.nan]],
            [[np.nan, np.nan], [3.0, 2.0]],  # no root: ordered by its first present part
            [[11.0, 5.0], [12.0, 6.0]],
        ]
    )
    scores = np.nan_to_num(points[..., 0] * 0 + 1.0)
    found = Instances(points, scores, np.array([3.0, 2.0, 1.0]))
    slots, slot_scores = order_instances(found, 4)
    np.testing.assert_allclose(slots[:3, :, 0], [[0.0, 3.0], [11.0, 12.0], [20.0, 0.0]])
    assert (slots[3] == 0).all() and (slot_scores[3] == 0).all()
    assert slot_scores[0].tolist() == [0.0, 1.0] and slot_scores[2].tolist() == [1.0, 0.0]
    best_two, _ = order_instances(found, 2)  # the two best-scoring, then left to right
    np.testing.assert_allclose(best_two[:, :, 0], [[0.0, 3.0], [20.0, 0.0]])
    # With anchors, each instance takes the slot nearest to it (a matching of the locations).
    anchors = np.array([[12.0, 5.0], [19.0, 0.0], [2.0, 3.0], [30.0, 30.0]])
    anchored, anchored_scores = order_instances(found, 4, anchors)
    np.testing.assert_allclose(anchored[:3, :, 0], [[11.0, 12.0], [20.0, 0.0], [0.0, 3.0]])
    assert (anchored[3] == 0).all() and (anchored_scores[3] == 0).all()


def test_evaluate_assembly_counts_parts_only_in_their_own_instance() -> None:
    truth = INSTANCES[:2].numpy()
    visible = np.ones((2, 4), dtype=bool)
    swapped = truth.copy()
    swapped[0, 2], swapped[1, 2] = truth[1, 2], truth[0, 2]  # fingertips exchanged
    result = evaluate_assembly(swapped, np.ones((2, 4), dtype=bool), truth, visible, 1.0)
    assert (result.parts_correct, result.parts_visible) == (6, 8)
    assert (result.instances_correct, result.instances_total) == (0, 2)
    exact = evaluate_assembly(truth[::-1], np.ones((2, 4), dtype=bool), truth, visible, 1.0)
    assert exact.pck == 1.0 and exact.assembly_accuracy == 1.0
    total = result + exact
    assert total == AssemblyResult(14, 16, 2, 4) and total.pck == 14 / 16
    empty = evaluate_assembly(np.zeros((0, 4, 2)), np.zeros((0, 4), bool), truth, visible, 1.0)
    assert empty.pck == 0.0 and empty.instances_total == 2


# -- the module ------------------------------------------------------------------------------------


def small_model(**kwargs) -> OpenPose:
    """A small OpenPose of MultiReach's layout: three instances of four parts, its tree."""
    torch.manual_seed(0)
    options = {
        "keypoint_instances": MULTI_REACH_INSTANCES,
        "limbs": MULTI_REACH_TREE.tolist(),
        "channels": 8,
        "map_stride": 2,
        **kwargs,
    }
    return make_perception("openpose", num_cameras=2, image_size=(48, 64), **options)


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    return identity_cameras(count, 60.0, (32.0, 24.0))


class OracleNetwork(nn.Module):
    """Returns the module's own target maps of fixed keypoints for every stage."""

    def __init__(self, model: OpenPose, pixels: torch.Tensor, visible: torch.Tensor) -> None:
        super().__init__()
        confidence, paf, _, _ = model.targets(pixels, visible)
        self.confidence, self.paf = confidence.float(), paf.float()

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [self.paf, self.paf], [self.confidence]


def test_registered_with_multireach_layout() -> None:
    assert "openpose" in available_perceptions()
    model = small_model()
    assert (model.num_instances, model.num_parts, model.map_size) == (3, 4, (24, 32))
    assert model.features_dim == 3 * 2 * 3 * 4 and model.keypoint_frame == "image"
    assert model.limbs.tolist() == MULTI_REACH_TREE.tolist() == [list(p) for p in MULTI_REACH_LIMBS]


def test_defaults_build_a_generic_tree() -> None:
    """Built by name with no hyperparameters (the registry's smoke tests), OpenPose keeps its
    instance layout and takes the chain through the parts, not one task's skeleton."""
    model = make_perception("openpose", num_cameras=1, image_size=32)
    assert (model.num_instances, model.num_parts) == (3, 4)
    assert model.limbs.tolist() == [[0, 1], [1, 2], [2, 3]]
    output = model.eval()(torch.rand(1, 1, 3, 32, 32), *cameras(1))
    assert output.features.shape == (1, model.features_dim)


def test_moved_names_are_still_importable_from_openpose() -> None:
    """``benchmarks/openpose_assembly.py`` and older code import these from the module."""
    from kp3d.perception import openpose, openpose_assembly, openpose_evaluation, openpose_fields

    for home in (openpose_assembly, openpose_evaluation, openpose_fields):
        for name in home.__all__:
            if name in openpose.__all__:
                assert getattr(openpose, name) is getattr(home, name), name
    for name in openpose.__all__:
        assert hasattr(openpose, name), name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"map_stride": 3}, "map_stride"),
        ({"limbs": [[0, 1], [1, 2]]}, "spanning tree"),
        ({"keypoint_instances": [0, 0, 1]}, "same number"),
        ({"matcher": "random"}, "matcher"),
        ({"channels": 7}, "even"),
    ],
)
def test_rejects_bad_hyperparameters(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


def oracle_model() -> tuple[OpenPose, torch.Tensor]:
    """A model whose network outputs the exact maps of :data:`INSTANCES` (2 px per map cell)
    in both views, and those keypoints ``(K, 2)`` in MultiReach's order."""
    model = small_model().eval()
    pixels = (INSTANCES.flatten(0, 1) * 2.0).float()  # within (64, 48)
    visible = torch.ones(12, dtype=torch.bool)
    model.network = OracleNetwork(model, pixels.expand(2, 12, 2), visible.expand(2, 12))
    return model, pixels


def test_oracle_features_follow_the_env_keypoint_order_once_anchored() -> None:
    model, pixels = oracle_model()
    assert torch.isnan(model.slot_anchors).all()
    # Anchors from labels: every arm's base, jittered around its place.
    jitter = torch.randn(5, 2, 12, 2, generator=torch.Generator().manual_seed(0))
    model.update_anchors(pixels + jitter, torch.ones(5, 2, 12, dtype=torch.bool))
    torch.testing.assert_close(model.anchor_counts, torch.full((2, 3), 5.0))
    expected = (pixels + jitter).reshape(5, 2, 3, 4, 2)[:, :, :, 0].mean(0)
    torch.testing.assert_close(model.slot_anchors, expected)

    output = model(torch.rand(1, 2, 3, 48, 64), *cameras(2))
    assert output.features.shape == (1, model.features_dim) and output.losses == {}
    assert output.keypoints.shape == (1, 24, 2) and output.confidence.shape == (1, 24)
    torch.testing.assert_close(output.keypoints[0], pixels.repeat(2, 1), atol=1e-3, rtol=0)
    torch.testing.assert_close(
        output.visuals.detections[0], pixels.expand(2, 12, 2), atol=1e-3, rtol=0
    )
    features = output.features.reshape(2, 12, 3)
    torch.testing.assert_close(features[..., 0], output.keypoints[0, :, 0].reshape(2, 12) / 32 - 1)
    torch.testing.assert_close(features[..., 1], output.keypoints[0, :, 1].reshape(2, 12) / 24 - 1)
    assert (output.confidence > 0.8).all()
    assert output.visuals.heatmaps.shape == (1, 2, 4, 24, 32)


def test_unanchored_slots_fill_left_to_right() -> None:
    model, pixels = oracle_model()
    output = model(torch.rand(1, 2, 3, 48, 64), *cameras(2))
    slots = output.visuals.detections[0].reshape(2, 3, 4, 2)  # (C, M, P, 2)
    left_to_right = pixels.reshape(3, 4, 2)[torch.argsort(INSTANCES[:, 0, 0])]
    for view in range(2):
        torch.testing.assert_close(slots[view], left_to_right, atol=1e-3, rtol=0)


def test_training_updates_the_anchors_and_they_are_saved(tmp_path) -> None:
    from kp3d.perception import load_perception, save_perception

    model = small_model().train()
    batch = synthetic_batch(3, seed=0)
    model.training_losses(batch)
    roots = batch.keypoints_pixels.reshape(3, 2, 3, 4, 2)[:, :, :, 0].mean(0)
    torch.testing.assert_close(model.slot_anchors, roots)
    loaded = load_perception(save_perception(model, tmp_path / "openpose.pt"))
    torch.testing.assert_close(loaded.slot_anchors, roots)


def test_training_losses_at_every_stage() -> None:
    model = small_model(paf_stages=2, confidence_stages=2).train()
    batch = synthetic_batch(2, seed=0)
    losses = model.training_losses(batch)
    assert sorted(losses) == ["confidence_0", "confidence_1", "paf_0", "paf_1"]
    sum(losses.values()).backward()
    assert model.network.backbone[0].weight.grad.abs().sum() > 0
    unlabelled = FrameBatch(batch.images, batch.intrinsics, batch.extrinsics)
    with pytest.raises(ValueError, match="ground-truth keypoints"):
        model.training_losses(unlabelled)
    fewer = FrameBatch(
        batch.images,
        batch.intrinsics,
        batch.extrinsics,
        keypoints_pixels=batch.keypoints_pixels[:, :, :8],
        keypoints_visible=batch.keypoints_visible[:, :, :8],
    )
    with pytest.raises(ValueError, match="reads 12 keypoints"):
        model.training_losses(fewer)


# -- learning --------------------------------------------------------------------------------------

PART_COLOURS = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.3, 1.0], [1.0, 0.9, 0.1], [1.0, 0.1, 0.1]])


def draw(
    points: torch.Tensor, sticks: list[tuple[int, int]], size: tuple[int, int]
) -> torch.Tensor:
    """Images of instances: a coloured disc (radius 2 px) per part, grey sticks between the
    parts of ``sticks``, on grey.

    Args:
        points: ``(B, C, M, P, 2)`` pixels.
        sticks: part pairs joined by a stick.
        size: ``(H, W)``.

    Returns:
        ``(B, C, 3, H, W)``.
    """
    v, u = torch.meshgrid(torch.arange(size[0]) + 0.5, torch.arange(size[1]) + 0.5, indexing="ij")
    grid = torch.stack([u, v], dim=-1)  # (H, W, 2)
    images = torch.full((*points.shape[:2], 3, *size), 0.5)
    for first, second in sticks:
        a, b = points[..., first, None, None, :], points[..., second, None, None, :]
        direction = b - a
        along = ((grid - a) * direction).sum(-1) / direction.pow(2).sum(-1).clamp(min=1e-6)
        distance = (grid - (a + along.clamp(0, 1)[..., None] * direction)).norm(dim=-1)
        stick = (1.2 - distance).clamp(0, 1).amax(dim=2)[:, :, None]  # over instances
        images = images * (1 - stick) + 0.8 * stick
    for part in range(points.shape[-2]):
        distance = (grid - points[..., part, None, None, :]).norm(dim=-1)
        disc = (2.0 - distance).clamp(0, 1).amax(dim=2)[:, :, None]
        images = images * (1 - disc) + PART_COLOURS[part, :, None, None] * disc
    return images


def labelled_batch(points: torch.Tensor, images: torch.Tensor) -> FrameBatch:
    batch, count = points.shape[:2]
    intrinsics, extrinsics = cameras(count)
    return FrameBatch(
        images,
        intrinsics.expand(batch, count, 3, 3),
        extrinsics.expand(batch, count, 4, 4),
        keypoints_pixels=points.flatten(2, 3),
        keypoints_visible=torch.ones(
            (*points.shape[:2], points.shape[2] * points.shape[3]), dtype=torch.bool
        ),
    )


def synthetic_batch(batch: int, seed: int) -> FrameBatch:
    """2 views of 48 x 64 px holding three "arms" of four parts (MultiReach's keypoint order)
    around fixed anchors."""
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.tensor([[14.0, 14.0], [48.0, 12.0], [30.0, 36.0]])
    offsets = (torch.rand(batch, 2, 3, 4, 2, generator=generator) - 0.5) * 16.0
    offsets[..., 0, :] = 0.0  # bases at the anchors
    points = anchors[:, None] + offsets  # (B, C, M, P, 2)
    return labelled_batch(points, draw(points, [(0, 1), (1, 2)], (48, 64)))


def stick_batch(batch: int, seed: int) -> FrameBatch:
    """One 32 x 32 view of two sticks (red head, blue tail) near two anchors."""
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.tensor([[9.0, 10.0], [23.0, 22.0]])
    heads = anchors + (torch.rand(batch, 1, 2, 2, generator=generator) - 0.5) * 4.0
    angle = torch.rand(batch, 1, 2, generator=generator) * 2 * np.pi
    length = 5.0 + 3.0 * torch.rand(batch, 1, 2, generator=generator)
    tails = heads + torch.stack([angle.cos(), angle.sin()], dim=-1) * length[..., None]
    points = torch.stack([heads, tails], dim=3)  # (B, 1, M=2, P=2, 2)
    images = draw(points, [(0, 1)], (32, 32))
    return labelled_batch(points, images)


def assembly(model: OpenPose, batch: FrameBatch, matcher: str) -> AssemblyResult:
    with torch.no_grad():
        pafs, confidences = model.stage_maps(batch.images)
    views = model.parse(confidences[-1].flatten(0, 1), pafs[-1].flatten(0, 1), matcher=matcher)
    result = AssemblyResult()
    truth = model.instance_points(batch.keypoints_pixels.flatten(0, 1)).numpy()
    for view, view_truth in zip(views, truth, strict=True):
        visible = np.ones(view_truth.shape[:2], dtype=bool)
        result = result + evaluate_assembly(view.points, view.present, view_truth, visible, 3.2)
    return result


def test_short_training_beats_its_initial_pck() -> None:
    torch.manual_seed(0)
    model = make_perception(
        "openpose",
        num_cameras=1,
        image_size=32,
        keypoint_instances=[0, 0, 1, 1],
        limbs=[[0, 1]],
        channels=16,
        paf_stages=1,
        confidence_stages=1,
        sigma=2.0,
    )
    batch = stick_batch(8, seed=1)
    initial = assembly(model.eval(), batch, "hungarian")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(60):
        loss = sum(model.training_losses(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = assembly(model.eval(), batch, "hungarian")
    assert initial.pck < 0.2
    assert final.pck > initial.pck + 0.4, (initial, final)
    assert final.instances_correct > initial.instances_correct
