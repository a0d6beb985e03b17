"""How well OpenPose finds and assembles instances: per-instance PCK and the fraction of
instances assembled correctly, from one view's predicted instances and its ground truth
(:func:`evaluate_assembly`), summed over views as :class:`AssemblyResult`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class AssemblyResult:
    """How well the instances of views were found and assembled (:func:`evaluate_assembly`).

    Attributes:
        parts_correct: visible ground-truth parts found within the threshold *in the instance
            matched to their own instance*.
        parts_visible: visible ground-truth parts.
        instances_correct: ground-truth instances (with >= 2 visible parts) assembled correctly:
            their matched instance has every visible part within the threshold and no part
            farther than it from the instance's own part.
        instances_total: ground-truth instances with >= 2 visible parts.
    """

    parts_correct: int = 0
    parts_visible: int = 0
    instances_correct: int = 0
    instances_total: int = 0

    @property
    def pck(self) -> float:
        """Per-instance PCK: ``parts_correct / parts_visible``."""
        return self.parts_correct / max(self.parts_visible, 1)

    @property
    def assembly_accuracy(self) -> float:
        """``instances_correct / instances_total``."""
        return self.instances_correct / max(self.instances_total, 1)

    def __add__(self, other: AssemblyResult) -> AssemblyResult:
        return AssemblyResult(
            self.parts_correct + other.parts_correct,
            self.parts_visible + other.parts_visible,
            self.instances_correct + other.instances_correct,
            self.instances_total + other.instances_total,
        )


def evaluate_assembly(
    points: np.ndarray,
    present: np.ndarray,
    truth: np.ndarray,
    visible: np.ndarray,
    threshold: float,
) -> AssemblyResult:
    """Score one view's instances against the ground truth.

    Predicted and true instances are paired by a Hungarian matching that maximises the number of
    visible parts found within ``threshold``; parts count only for the instance they are paired
    with (a part found in the wrong instance is a miss).

    Args:
        points: ``(N, P, 2)`` predicted parts (any units, e.g. image pixels).
        present: ``(N, P)`` bool: predicted parts that exist.
        truth: ``(M, P, 2)`` ground-truth parts, same units.
        visible: ``(M, P)`` bool.
        threshold: largest distance of a correct part.

    Returns:
        The counts of this view (add them up over views).
    """
    distance = np.linalg.norm(points[:, None] - truth[None], axis=-1)  # (N, M, P)
    close = present[:, None] & (distance <= threshold)
    hits = (close & visible[None]).sum(-1)  # (N, M)
    result = AssemblyResult(parts_visible=int(visible.sum()))
    result.instances_total = int((visible.sum(-1) >= 2).sum())
    if len(points) == 0:
        return result
    rows, columns = linear_sum_assignment(hits, maximize=True)
    for n, m in zip(rows.tolist(), columns.tolist(), strict=True):
        result.parts_correct += int(hits[n, m])
        complete = bool((close[n, m] | ~visible[m]).all())
        no_stray = bool((close[n, m] | ~present[n]).all())
        if visible[m].sum() >= 2 and complete and no_stray:
            result.instances_correct += 1
    return result


__all__ = ["AssemblyResult", "evaluate_assembly"]
