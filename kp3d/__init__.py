"""kp3d: robot learning from pixels through keypoints.

Subpackages: :mod:`kp3d.geometry` (the one camera convention), :mod:`kp3d.spatial` (heatmap
operations) and :mod:`kp3d.perception` (the perception modules, built by name with
:func:`make_perception`). The environments live in the top-level package ``envs`` and the
Stable-Baselines3 integration in ``agents``.

``import kp3d`` stays cheap: torch is imported only when a perception name below is first used.
"""

from typing import Any

__version__ = "0.1.0"

_PERCEPTION_EXPORTS = ("available_perceptions", "make_perception")


def __getattr__(name: str) -> Any:
    if name in _PERCEPTION_EXPORTS:
        from kp3d import perception

        return getattr(perception, name)
    raise AttributeError(f"module 'kp3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PERCEPTION_EXPORTS])
