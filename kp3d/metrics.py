"""Keypoint metrics: PCK for detectors, and the linear probe of unsupervised landmarks.

* :func:`pck`: the Percentage of Correct Keypoints. A visible keypoint is correct when its
  prediction lies within ``alpha * reference`` pixels of the truth, where the reference length is
  the image side (:func:`image_side`) or a length of the scene seen at the keypoint's depth
  (:func:`length_in_pixels`, e.g. the env's ``normalising_length``).
* :func:`linear_probe`: the evaluation protocol of unsupervised landmark learning (Thewlis et al.
  2017, Zhang et al. 2018): a linear map with a bias, fitted by least squares from the learned
  landmarks to the ground-truth keypoints on training frames, scored on held-out frames by the
  mean keypoint error divided by a normalising length (inter-ocular distance on faces; here the
  env's ``normalising_length``) and by R².

Everything here is NumPy (torch tensors are accepted and converted) and free of side effects.

Example:
    >>> import numpy as np
    >>> truth = np.array([[[10.0, 10.0], [30.0, 30.0]]])  # (B=1, K=2, 2)
    >>> guess = truth + np.array([[[1.0, 0.0], [9.0, 0.0]]])
    >>> result = pck(guess, truth, np.ones((1, 2), bool), alpha=0.05, reference=64)
    >>> result.per_keypoint.tolist(), result.mean
    ([1.0, 0.0], 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-12
"""Guard of divisions by a total that may be zero (no visible keypoint, constant targets)."""


def _array(value: Any, dtype: type = np.float64) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


@dataclass(frozen=True)
class PCKResult:
    """Result of :func:`pck`.

    Attributes:
        per_keypoint: ``(K,)`` fraction of each keypoint's visible instances that are correct;
            NaN for a keypoint never visible.
        mean: fraction of all visible instances that are correct (NaN if none is visible).
        visible: ``(K,)`` number of visible instances of each keypoint.
    """

    per_keypoint: np.ndarray
    mean: float
    visible: np.ndarray


def pck(predicted: Any, target: Any, visible: Any, alpha: float, reference: Any) -> PCKResult:
    """Percentage of Correct Keypoints over the visible ones.

    Args:
        predicted: ``(..., K, 2)`` predicted pixels.
        target: ``(..., K, 2)`` true pixels.
        visible: ``(..., K)`` bool; only visible keypoints count.
        alpha: the fraction of the reference length within which a prediction is correct.
        reference: the reference length in pixels, a scalar or anything broadcastable to
            ``(..., K)`` (e.g. :func:`length_in_pixels` per keypoint and view).

    Returns:
        :class:`PCKResult` (per keypoint and overall).

    Raises:
        ValueError: for mismatched shapes or a non-positive ``alpha``.
    """
    predicted, target = _array(predicted), _array(target)
    visible = _array(visible, bool)
    if predicted.shape != target.shape or predicted.shape[-1:] != (2,):
        raise ValueError(
            f"predicted and target must both be (..., K, 2); got {predicted.shape} and "
            f"{target.shape}"
        )
    if visible.shape != predicted.shape[:-1]:
        raise ValueError(f"visible must be {predicted.shape[:-1]}; got {visible.shape}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive; got {alpha}")
    threshold = alpha * np.broadcast_to(_array(reference), visible.shape)
    correct = (np.linalg.norm(predicted - target, axis=-1) <= threshold) & visible
    keypoints = visible.shape[-1]
    count = visible.reshape(-1, keypoints).sum(axis=0)
    hits = correct.reshape(-1, keypoints).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_keypoint = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    mean = float(hits.sum() / count.sum()) if count.sum() > 0 else float("nan")
    return PCKResult(per_keypoint=per_keypoint, mean=mean, visible=count)


def image_side(height: int, width: int) -> float:
    """The reference length of "PCK at alpha of the image side": the longer side, in pixels."""
    return float(max(height, width))


def length_in_pixels(length: float, depth: Any, focal: Any) -> np.ndarray:
    """How many pixels a length (m) at right angles to the optical axis spans at ``depth``.

    ``focal * length / depth`` (pinhole camera), the reference length of PCK at a fraction of a
    scene length such as an env's ``normalising_length``.

    Args:
        length: metres.
        depth: ``(..., K)`` camera-frame depth (m) of each keypoint.
        focal: focal length in pixels, broadcastable to ``depth`` (e.g. ``(..., 1)`` per view).

    Returns:
        ``(..., K)`` pixels.
    """
    return _array(focal) * length / np.maximum(_array(depth), EPS)


@dataclass(frozen=True)
class ProbeResult:
    """Result of :func:`linear_probe` on the held-out frames.

    Attributes:
        error: mean over frames and keypoints of the Euclidean error of the probe's prediction,
            divided by the normalising length (in metres if none was given).
        error_per_keypoint: ``(J,)`` the same per ground-truth keypoint.
        error_m: ``error`` in the targets' unit (not normalised).
        error_m_per_keypoint: ``(J,)`` mean error of each keypoint in the targets' unit.
        r2: coefficient of determination over all target coordinates together,
            ``1 - SS_res / SS_tot`` (sklearn's ``variance_weighted`` R²: coordinates that never
            vary, such as a planar arm's height, add nothing to either sum). Pooled over
            keypoints, it is dominated by the keypoints that move most: a random network already
            scores about 0.5 on Reach while missing the target entirely. Report
            :attr:`r2_per_keypoint` instead.
        r2_per_coordinate: ``(J, D)`` R² of each keypoint coordinate; NaN for a coordinate
            that does not vary over the held-out frames.
        r2_per_keypoint: ``(J,)`` each keypoint's R² on its worst varying coordinate (NaN for a
            keypoint that never moves): what says whether a keypoint is carried at all.
        weights: ``(F + 1, J * D)`` the fitted map, bias in the last row.
    """

    error: float
    error_per_keypoint: np.ndarray
    error_m: float
    error_m_per_keypoint: np.ndarray
    r2: float
    r2_per_coordinate: np.ndarray
    r2_per_keypoint: np.ndarray
    weights: np.ndarray


def fit_linear_map(features: Any, targets: Any) -> np.ndarray:
    """Least squares with a bias: ``W`` minimising ``||[X, 1] W - Y||²``.

    Args:
        features: ``(N, F)``.
        targets: ``(N, T)``.

    Returns:
        ``(F + 1, T)``; rank-deficient features get the minimum-norm solution.
    """
    features, targets = _array(features), _array(targets)
    if features.ndim != 2 or targets.ndim != 2 or len(features) != len(targets):
        raise ValueError(
            f"features must be (N, F) and targets (N, T); got {features.shape}, {targets.shape}"
        )
    design = np.hstack([features, np.ones((len(features), 1))])
    weights, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return weights


def apply_linear_map(weights: np.ndarray, features: Any) -> np.ndarray:
    """``[X, 1] W``: ``(N, T)`` predictions of a map from :func:`fit_linear_map`."""
    features = _array(features)
    return features @ weights[:-1] + weights[-1]


def linear_probe(
    train_features: Any,
    train_keypoints: Any,
    test_features: Any,
    test_keypoints: Any,
    normalising_length: float | None = None,
) -> ProbeResult:
    """Fit the linear probe on training frames and score it on held-out frames.

    Args:
        train_features: ``(N, F)`` learned landmarks of the training frames (e.g. flattened
            keypoints and their confidence).
        train_keypoints: ``(N, J, D)`` ground-truth keypoints of the same frames.
        test_features: ``(M, F)``.
        test_keypoints: ``(M, J, D)``.
        normalising_length: the length errors are divided by; ``None`` for 1.

    Returns:
        :class:`ProbeResult`.
    """
    train_keypoints, test_keypoints = _array(train_keypoints), _array(test_keypoints)
    if train_keypoints.ndim != 3 or test_keypoints.shape[1:] != train_keypoints.shape[1:]:
        raise ValueError(
            "keypoints must be (N, J, D) with the same J, D in both splits; got "
            f"{train_keypoints.shape} and {test_keypoints.shape}"
        )
    if normalising_length is not None and not normalising_length > 0:
        raise ValueError(f"normalising_length must be positive; got {normalising_length}")
    count, joints, dims = test_keypoints.shape
    weights = fit_linear_map(train_features, train_keypoints.reshape(len(train_keypoints), -1))
    predicted = apply_linear_map(weights, test_features).reshape(count, joints, dims)
    distances = np.linalg.norm(predicted - test_keypoints, axis=-1)
    scale = 1.0 if normalising_length is None else float(normalising_length)
    flat = test_keypoints.reshape(count, -1)
    residual = ((predicted.reshape(count, -1) - flat) ** 2).sum(axis=0)
    total = ((flat - flat.mean(axis=0)) ** 2).sum(axis=0)
    varies = total > EPS * max(float(total.max()), 1.0)
    per_coordinate = np.full(total.shape, np.nan)
    per_coordinate[varies] = 1.0 - residual[varies] / total[varies]
    per_coordinate = per_coordinate.reshape(joints, dims)
    moving = ~np.isnan(per_coordinate).all(axis=1)
    worst = np.full(joints, np.nan)
    worst[moving] = np.nanmin(per_coordinate[moving], axis=1)
    return ProbeResult(
        error=float(distances.mean() / scale),
        error_per_keypoint=distances.mean(axis=0) / scale,
        error_m=float(distances.mean()),
        error_m_per_keypoint=distances.mean(axis=0),
        r2=float(1.0 - residual.sum() / max(total.sum(), EPS)),
        r2_per_coordinate=per_coordinate,
        r2_per_keypoint=worst,
        weights=weights,
    )


__all__ = [
    "PCKResult",
    "ProbeResult",
    "apply_linear_map",
    "fit_linear_map",
    "image_side",
    "length_in_pixels",
    "linear_probe",
    "pck",
]
