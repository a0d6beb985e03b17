"""Tests of :mod:`kp3d.metrics` on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp3d.metrics import (
    apply_linear_map,
    fit_linear_map,
    image_side,
    length_in_pixels,
    linear_probe,
    pck,
)


def test_pck_counts_visible_keypoints_within_the_threshold() -> None:
    truth = np.zeros((2, 3, 2))
    guess = np.array(
        [
            [[3.0, 0.0], [0.0, 3.3], [10.0, 0.0]],  # within 3.2 px, beyond, far
            [[0.0, 0.0], [3.0, 0.0], [0.0, 0.0]],
        ]
    )
    visible = np.array([[True, True, True], [True, True, False]])
    result = pck(guess, truth, visible, alpha=0.05, reference=image_side(64, 48))  # 3.2 px
    np.testing.assert_allclose(result.per_keypoint, [1.0, 0.5, 0.0])
    assert result.mean == pytest.approx(3 / 5)
    np.testing.assert_array_equal(result.visible, [2, 2, 1])


def test_pck_is_inclusive_at_the_threshold_and_ignores_hidden_misses() -> None:
    truth = np.zeros((1, 2, 2))
    guess = np.array([[[3.0, 4.0], [100.0, 0.0]]])  # 5 px exactly; a hidden far miss
    result = pck(guess, truth, np.array([[True, False]]), alpha=0.5, reference=10.0)
    assert result.mean == 1.0
    assert result.per_keypoint[0] == 1.0 and np.isnan(result.per_keypoint[1])


def test_pck_with_a_per_keypoint_reference_length() -> None:
    """A 0.1 m length 1 m away spans 10 px with a focal length of 100 px, 5 px at 2 m."""
    reference = length_in_pixels(0.1, depth=np.array([[1.0, 2.0]]), focal=100.0)
    np.testing.assert_allclose(reference, [[10.0, 5.0]])
    truth = np.zeros((1, 2, 2))
    guess = np.array([[[4.0, 0.0], [4.0, 0.0]]])  # within half of 10 px, not of 5 px
    result = pck(guess, truth, np.ones((1, 2), bool), alpha=0.5, reference=reference)
    np.testing.assert_allclose(result.per_keypoint, [1.0, 0.0])


def test_pck_accepts_tensors_and_checks_shapes() -> None:
    truth = torch.zeros(4, 3, 5, 2)  # (B, C, K, 2)
    result = pck(truth + 0.1, truth, torch.ones(4, 3, 5, dtype=torch.bool), 0.05, 64)
    assert result.mean == 1.0 and result.per_keypoint.shape == (5,)
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 2\)"):
        pck(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2, bool), 0.1, 1.0)
    with pytest.raises(ValueError, match="visible must be"):
        pck(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((2, 2), bool), 0.1, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        pck(np.zeros((2, 3, 2)), np.zeros((2, 3, 2)), np.ones((2, 3), bool), 0.0, 1.0)
    nothing = pck(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), np.zeros((1, 2), bool), 0.1, 1.0)
    assert np.isnan(nothing.mean)


def test_linear_map_recovers_an_affine_function() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 4))
    truth = rng.normal(size=(4, 6))
    targets = features @ truth + np.arange(6)
    weights = fit_linear_map(features, targets)
    np.testing.assert_allclose(weights[:-1], truth, atol=1e-10)
    np.testing.assert_allclose(weights[-1], np.arange(6), atol=1e-10)
    np.testing.assert_allclose(apply_linear_map(weights, features), targets, atol=1e-10)


def test_linear_probe_scores_held_out_frames() -> None:
    """Landmarks that are an affine function of the keypoints probe perfectly; noise of known
    size gives a known normalised error; features unrelated to the keypoints give R² <= 0."""
    rng = np.random.default_rng(1)
    keypoints = rng.uniform(-1, 1, size=(400, 3, 3))
    keypoints[..., 2] = 0.04  # a planar arm: one coordinate never varies
    mixing = rng.normal(size=(9, 12))
    landmarks = keypoints.reshape(400, -1) @ mixing + 0.3
    train, test = slice(0, 300), slice(300, 400)
    exact = linear_probe(landmarks[train], keypoints[train], landmarks[test], keypoints[test], 0.5)
    assert exact.error == pytest.approx(0.0, abs=1e-9) and exact.r2 == pytest.approx(1.0)
    assert exact.error_per_keypoint.shape == (3,)
    np.testing.assert_allclose(exact.r2_per_coordinate[:, :2], 1.0)
    assert np.all(np.isnan(exact.r2_per_coordinate[:, 2]))  # the height never varies

    offset = np.zeros_like(keypoints)
    offset[..., 0] = 0.1  # every test keypoint is 0.1 off in x: error 0.1 / 0.5 = 0.2
    shifted = linear_probe(
        landmarks[train], keypoints[train], landmarks[test], keypoints[test] + offset[test], 0.5
    )
    assert shifted.error == pytest.approx(0.2, abs=1e-9)
    assert shifted.error_m == pytest.approx(0.1, abs=1e-9)
    assert 0.9 < shifted.r2 < 1.0

    noise = rng.normal(size=(400, 12))
    chance = linear_probe(noise[train], keypoints[train], noise[test], keypoints[test])
    assert chance.r2 < 0.05 and chance.error > 0.5


def test_linear_probe_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(N, J, D\)"):
        linear_probe(np.zeros((5, 2)), np.zeros((5, 6)), np.zeros((5, 2)), np.zeros((5, 6)))
    with pytest.raises(ValueError, match="normalising_length"):
        linear_probe(
            np.zeros((5, 2)), np.zeros((5, 1, 3)), np.zeros((5, 2)), np.zeros((5, 1, 3)), 0.0
        )
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        fit_linear_map(np.zeros((5, 2)), np.zeros((4, 3)))
