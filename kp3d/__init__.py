"""kp3d: robot learning from pixels through keypoints.

Subpackages: :mod:`kp3d.geometry` (the one camera convention). The environments live in the
top-level package ``envs`` and the Stable-Baselines3 integration in ``agents``.
"""

__version__ = "0.1.0"
