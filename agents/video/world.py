"""The world panel's virtual camera: where it looks, how it projects, and the ground it draws.

Owns :class:`WorldView`, a look-at camera (:func:`kp3d.geometry.look_at`) fitted to the ground
area that the env's cameras see, with its ground grid and world axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agents.video.drawing import draw_segments
from kp3d.geometry import camera_centers, look_at, project

GRID_COLOR = np.array((70, 70, 80), np.uint8)
AXIS_COLORS = np.array([(230, 80, 80), (90, 200, 90), (90, 140, 240)], np.uint8)
"""World axes x, y, z."""
ZOOM = 0.7
"""The world panel fits a sphere of this fraction of the cameras' ground area (the robot and
objects lie near its middle; the views' corners mostly show floor)."""


def _nice_step(length: float) -> float:
    """The largest of 1, 2 or 5 times a power of ten that does not exceed ``length``."""
    power = 10.0 ** math.floor(math.log10(length))
    return max(m * power for m in (1, 2, 5) if m * power <= length)


def _format_length(metres: float) -> str:
    return f"{metres * 100:g} cm" if metres < 1 else f"{metres:g} m"


class WorldView:
    """A virtual camera for the world panel, fitted to what the env's cameras see.

    The view looks at the centre of the ground area (``z = 0``) seen by the env's cameras, from
    ``elevation`` degrees above the ground and ``azimuth`` degrees around the vertical, from far
    enough that a sphere of :data:`ZOOM` times the area's radius fills the panel.

    Args:
        size: side of the square panel in pixels.
        elevation: degrees above the horizon.
        azimuth: degrees counter-clockwise from the world x axis (of the direction from the target
            to the eye).
        fov: field of view in degrees.

    Attributes:
        intrinsics: ``(3, 3)`` of the panel.
        extrinsics: ``(4, 4)`` world→virtual camera, after :meth:`fit`.
        centre: ``(3,)`` ground point looked at.
        radius: radius of the ground area shown, world units.
    """

    def __init__(
        self, size: int, elevation: float = 30.0, azimuth: float = -60.0, fov: float = 40.0
    ) -> None:
        self.size = size
        self.elevation = math.radians(elevation)
        self.azimuth = math.radians(azimuth)
        self.half_fov = math.radians(fov) / 2
        focal = size / 2 / math.tan(self.half_fov)
        self.intrinsics = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
        self.extrinsics = np.eye(4)
        self.centre = np.zeros(3)
        self.radius = 1.0

    def fit(
        self, intrinsics: np.ndarray, extrinsics: np.ndarray, image_size: Sequence[int]
    ) -> None:
        """Aim at the ground seen by the env's cameras.

        Each camera's optical axis meets the ground at depth ``d`` (a camera looking less than
        about 6° down is taken to look at a point 1 m ahead); the view centres on the mean of
        those points, with a radius that holds each point plus the half-width of its camera's
        view at depth ``d``.

        Args:
            intrinsics: ``(C, 3, 3)`` of the env's cameras.
            extrinsics: ``(C, 4, 4)`` world→camera of this step.
            image_size: ``(H, W)`` of their images.
        """
        centres = camera_centers(np.asarray(extrinsics, float))
        axes = np.asarray(extrinsics, float)[:, 2, :3]  # each camera's z axis in world coordinates
        downward = -axes[:, 2]
        depth = np.where(downward > 0.1, centres[:, 2] / np.maximum(downward, 0.1), 1.0)
        depth = np.maximum(depth, 0.1)
        hits = centres + depth[:, None] * axes
        height, width = image_size
        half_tan = np.maximum(
            width / 2 / np.asarray(intrinsics)[:, 0, 0],
            height / 2 / np.asarray(intrinsics)[:, 1, 1],
        )
        centre = hits.mean(axis=0)
        centre[2] = 0.0
        offsets = np.linalg.norm(hits[:, :2] - centre[:2], axis=1)
        self.centre = centre
        self.radius = float(np.max(offsets + depth * half_tan))
        distance = ZOOM * self.radius / math.sin(self.half_fov)
        direction = np.array(
            [
                math.cos(self.elevation) * math.cos(self.azimuth),
                math.cos(self.elevation) * math.sin(self.azimuth),
                math.sin(self.elevation),
            ]
        )
        self.extrinsics = look_at(centre + distance * direction, centre)

    def project(self, points: np.ndarray) -> np.ndarray:
        """``(..., N, 3)`` world points → ``(..., N, 2)`` panel pixels (NaN behind the view)."""
        pixels, depth = project(np.asarray(points, float), self.intrinsics, self.extrinsics)
        return np.where((depth > 0)[..., None], pixels, np.nan)

    @property
    def grid_step(self) -> float:
        """Spacing of the ground grid, world units."""
        return _nice_step(self.radius / 2)

    @property
    def grid_label(self) -> str:
        """The legend of the ground grid, e.g. ``grid 10 cm``."""
        return f"grid {_format_length(self.grid_step)}"

    def draw_ground(self, panel: np.ndarray) -> None:
        """Draw the ground grid around the centre and the world axes at the origin."""
        step = self.grid_step
        reach = 1.5 * self.radius
        low = np.floor((self.centre[:2] - reach) / step) * step
        high = np.ceil((self.centre[:2] + reach) / step) * step
        xs = np.arange(low[0], high[0] + step / 2, step)
        ys = np.arange(low[1], high[1] + step / 2, step)
        starts = [(x, low[1], 0.0) for x in xs] + [(low[0], y, 0.0) for y in ys]
        ends = [(x, high[1], 0.0) for x in xs] + [(high[0], y, 0.0) for y in ys]
        pixels = self.project(np.array(starts + ends))
        draw_segments(panel, pixels[: len(starts)], pixels[len(starts) :], GRID_COLOR)
        if np.all(np.abs(self.centre[:2]) <= reach + step):
            axes = self.project(np.vstack([np.zeros(3), np.eye(3) * step]))
            draw_segments(panel, np.repeat(axes[:1], 3, axis=0), axes[1:], AXIS_COLORS, 2)


__all__ = ["AXIS_COLORS", "GRID_COLOR", "ZOOM", "WorldView"]
