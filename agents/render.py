"""Keypoint rollout videos: what an agent (or a perception module alone) sees, step by step.

A rollout frame shows, for every camera side by side, one column of panels, and the world on the
right::

    +---------------------------------------------------------------------------+
    | env | perception | policy                                                 |
    | episode e/E   step t/T   return R   success                               |
    +----------------+----------------+----------------+------------------------+
    | camera 0       | camera 1       | camera 2       |                        |
    | + keypoints    | + keypoints    | + keypoints    |   world: 3D keypoints  |
    +----------------+----------------+----------------+   with short trails,   |
    | reconstruction | reconstruction | reconstruction |   ground truth,        |
    +----------------+----------------+----------------+   ground grid, axes    |
    | heatmaps       | heatmaps       | heatmaps       |                        |
    +----------------+----------------+----------------+------------------------+

* **Camera rows**: the view (nearest-neighbour upscaled so that a 64 px view is readable) with the
  keypoints the perception reports for it (:attr:`PerceptionVisuals.points`: for Keypoint3D the
  fused 3D keypoints projected with that step's camera matrices) as discs, one fixed colour per
  keypoint across views and time, disc area proportional to the keypoint's attention (relative to
  the most attended one; at least 40% of its radius); its per-view detections before fusion,
  where they differ, as rings of the same colour; the window the perception sees (its crop) as a
  grey rectangle.
* **Reconstruction row** (when the module decodes): the decoded view, placed over its crop window.
* **Heatmap row** (when the module has heatmaps): one tile per keypoint, in its colour, brightness
  ``heatmap / max(heatmap)``.
* **World panel**: the world seen by a virtual camera (elevation 30°, through
  :mod:`kp3d.geometry`) fitted to the ground area that the env's cameras see (re-fitted every step
  when they move, so that it follows the robot): the learned world keypoints (modules whose
  ``keypoint_frame`` is ``"world"``) as coloured discs with a trail of their last positions, the
  ground-truth keypoints as grey rings joined by the env's skeleton, a ground grid (its spacing in
  the legend) and the world axes (x red, y green, z blue) at the origin.

Rows appear only for what the module provides: a pixel encoder shows camera rows and the world
panel's ground truth. Each episode has ``steps + 1`` frames: the reset observation, then the
observation after every step, headed by the return so far and that step's ``info["is_success"]``.

Entry points: :func:`render_rollout` (frames, for Python), :func:`render_video` (an MP4 or GIF,
written atomically, for ``kp3d render`` and ``kp3d eval --video``), and :class:`VideoCallback`
(periodic videos during training, config section ``video``).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import get_device

from agents.drawing import (
    TextRenderer,
    blend,
    draw_discs,
    draw_rectangle,
    draw_segments,
    resize_nearest,
)
from agents.environment import CAMERA_PREFIX, EXTRINSICS_KEY, make_env
from agents.evaluation import load_policy
from agents.extractor import perception_extractor
from agents.features import FeatureEncoder, FeaturePolicy
from agents.progress import progress_bar
from agents.training import EVAL_SEED_OFFSET, read_run_config, set_torch_threads
from agents.video import ffmpeg_available, keypoint_colors, upscale, write_video
from kp3d.geometry import camera_centers, project
from kp3d.perception import Perception, images_from_observation, load_perception

VIDEO_DIR = "videos"
"""Folder of a run directory that holds its rollout videos."""

ROWS = ("keypoints", "reconstruction", "heatmaps")
"""Rows of camera panels, top to bottom (``keypoints``: the camera images, always shown)."""

MIN_VIEW_SIDE = 160
"""The default upscaling makes every view at least this many pixels on its shorter side."""

BACKGROUND = np.array((24, 24, 28), np.uint8)
PANEL_BACKGROUND = np.array((40, 40, 46), np.uint8)
TEXT_COLOR = (235, 235, 235)
MUTED_COLOR = (150, 150, 160)
SUCCESS_COLOR = (90, 200, 110)
GROUND_TRUTH_COLOR = np.array((205, 205, 210), np.uint8)
SKELETON_COLOR = np.array((120, 120, 130), np.uint8)
GRID_COLOR = np.array((70, 70, 80), np.uint8)
AXIS_COLORS = np.array([(230, 80, 80), (90, 200, 90), (90, 140, 240)], np.uint8)
CROP_COLOR = (150, 150, 150)
GAP = 2
"""Pixels between panels."""
ZOOM = 0.7
"""The world panel fits a sphere of this fraction of the cameras' ground area (the robot and
objects lie near its middle; the views' corners mostly show floor)."""


# -- the world panel ------------------------------------------------------------------------------


def look_at(eye: np.ndarray, target: np.ndarray, up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """World→camera extrinsics ``(4, 4)`` of a camera at ``eye`` looking at ``target``, in the
    convention of :mod:`kp3d.geometry` (x right, y down, z forward), with ``up`` pointing up in
    the image.

    Raises:
        ValueError: if ``eye == target`` or the view direction is parallel to ``up``.
    """
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm == 0:
        raise ValueError("look_at needs eye and target apart")
    forward /= norm
    right = np.cross(forward, np.asarray(up, float))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"the view direction {forward} is parallel to up {up}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = np.stack([right, down, forward])
    extrinsics[:3, 3] = -extrinsics[:3, :3] @ eye
    return extrinsics


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


# -- frames ---------------------------------------------------------------------------------------


@dataclass
class StepView:
    """What one frame shows, as NumPy arrays of one scene (C: the cameras shown).

    Attributes:
        images: ``(C, H, W, 3)`` uint8 camera images.
        points: ``(C, K, 2)`` keypoints in each view, full-image pixels.
        detections: ``(C, K, 2)`` per-view detections before fusion.
        attention: ``(C, K)`` weight of each keypoint (marker size).
        heatmaps: ``(C, K, S_h, S_w)``.
        reconstructions: ``(C, h, w, 3)`` uint8 decoded views of the crop windows.
        crop_origins: ``(C, 2)`` ``(u, v)`` of the crop windows; ``None``: the whole image.
        crop_size: ``(h, w)`` of the crop windows; ``None``: the whole image.
        keypoints_world: ``(K, 3)`` learned world keypoints.
        world_attention: ``(K,)`` their weights.
        ground_truth: ``(J, 3)`` ground-truth world keypoints.
        camera_intrinsics: ``(C_env, 3, 3)`` of all the env's cameras (fits the world view).
        camera_extrinsics: ``(C_env, 4, 4)`` of this step.
    """

    images: np.ndarray
    points: np.ndarray | None = None
    detections: np.ndarray | None = None
    attention: np.ndarray | None = None
    heatmaps: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    crop_origins: np.ndarray | None = None
    crop_size: tuple[int, int] | None = None
    keypoints_world: np.ndarray | None = None
    world_attention: np.ndarray | None = None
    ground_truth: np.ndarray | None = None
    camera_intrinsics: np.ndarray | None = None
    camera_extrinsics: np.ndarray | None = None


def _marker_radii(attention: np.ndarray | None, count: int, largest: int) -> np.ndarray:
    """Radii with area proportional to attention relative to the most attended keypoint's
    (``largest``), but at least 40% of ``largest`` and 2 px, so that every marker stays visible."""
    if attention is None or count == 0:
        return np.full(count, largest)
    attention = np.clip(np.asarray(attention, float), 0, None)
    relative = attention / max(float(attention.max()), 1e-12)
    smallest = min(largest, max(2, round(0.4 * largest)))
    return np.clip(np.rint(largest * np.sqrt(relative)), smallest, largest).astype(np.int64)


class FrameComposer:
    """Lays out and draws rollout frames (see the module docstring for the layout).

    Args:
        camera_names: names of the cameras shown, left to right.
        image_size: ``(H, W)`` of their images.
        factor: nearest-neighbour upscaling of the views.
        rows: which of :data:`ROWS` to show (``keypoints`` always is).
        num_keypoints: ``K`` of the perception (colours and heatmap tiles), 0 for none.
        world_panel: show the world panel.
        learned_world: the perception reports world keypoints (the world panel's legend).
        title: first header line.
        skeleton: ``(L, 2)`` ground-truth keypoint index pairs joined in the world panel.
        trail: positions in each learned keypoint's trail, the current one included (1: none).
        font_size: pixels.

    Attributes:
        shape: ``(height, width, 3)`` of every frame (both even, as MP4 needs).
        view_size: ``(h, w)`` of a camera panel.
    """

    def __init__(
        self,
        camera_names: Sequence[str],
        image_size: Sequence[int],
        factor: int,
        rows: Sequence[str] = ("keypoints",),
        num_keypoints: int = 0,
        world_panel: bool = True,
        learned_world: bool = True,
        title: str = "",
        skeleton: np.ndarray | None = None,
        trail: int = 8,
        font_size: int = 13,
    ) -> None:
        unknown = sorted(set(rows) - set(ROWS))
        if unknown or "keypoints" not in rows:
            raise ValueError(f"rows must include 'keypoints' and be among {ROWS}; got {rows}")
        if factor < 1:
            raise ValueError(f"factor must be a positive integer; got {factor}")
        self.camera_names = tuple(camera_names)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.factor = int(factor)
        self.rows = tuple(row for row in ROWS if row in rows)
        self.num_keypoints = int(num_keypoints)
        self.colors = keypoint_colors(self.num_keypoints)
        self.learned_world = learned_world and self.num_keypoints > 0
        self.title = title
        self.skeleton = (
            np.zeros((0, 2), np.int64) if skeleton is None else np.asarray(skeleton, np.int64)
        )
        self.text = TextRenderer(font_size)
        self.marker_radius = self.factor + 1

        self.view_size = (self.image_size[0] * self.factor, self.image_size[1] * self.factor)
        view_h, view_w = self.view_size
        self.header_height = 2 * self.text.height + 12
        grid_height = len(self.rows) * (view_h + GAP) - GAP
        grid_width = len(self.camera_names) * (view_w + GAP)
        self.world_size = max(grid_height, 256) if world_panel else 0
        self.world = WorldView(self.world_size) if world_panel else None
        height = self.header_height + max(grid_height, self.world_size)
        width = grid_width + self.world_size - (0 if world_panel else GAP)
        self.shape = (height + height % 2, width + width % 2, 3)
        self.trails: deque[np.ndarray] = deque(maxlen=max(trail, 1))
        self._template = self._draw_template()

    # -- geometry of the layout
    def view_origin(self, row: str, camera: int) -> tuple[int, int]:
        """``(top, left)`` frame pixel of the panel of ``row`` (one of :attr:`rows`) and camera
        index ``camera``."""
        view_h, view_w = self.view_size
        return (
            self.header_height + self.rows.index(row) * (view_h + GAP),
            camera * (view_w + GAP),
        )

    @property
    def world_origin(self) -> tuple[int, int]:
        """``(top, left)`` frame pixel of the world panel."""
        return self.header_height, len(self.camera_names) * (self.view_size[1] + GAP)

    def _panel(self, frame: np.ndarray, row: str, camera: int) -> np.ndarray:
        top, left = self.view_origin(row, camera)
        return frame[top : top + self.view_size[0], left : left + self.view_size[1]]

    def _draw_template(self) -> np.ndarray:
        frame = np.empty(self.shape, np.uint8)
        frame[:] = BACKGROUND
        for row in self.rows:
            for camera in range(len(self.camera_names)):
                self._panel(frame, row, camera)[:] = PANEL_BACKGROUND
        if self.world is not None:
            top, left = self.world_origin
            frame[top : top + self.world_size, left : left + self.world_size] = PANEL_BACKGROUND
        self.text.draw(frame, self.title, 5, 6, TEXT_COLOR)
        return frame

    def reset(self) -> None:
        """Forget the keypoint trails (at the start of an episode)."""
        self.trails.clear()

    # -- drawing
    def compose(
        self, step: StepView, status: Sequence[tuple[str, Sequence[int]]] = ()
    ) -> np.ndarray:
        """Draw one frame.

        Args:
            step: what to show; its camera arrays hold the cameras of :attr:`camera_names`.
            status: second header line, as ``(text, rgb)`` pieces.

        Returns:
            ``(height, width, 3)`` uint8 frame of :attr:`shape`.
        """
        count = len(self.camera_names)
        if step.images.shape[:3] != (count, *self.image_size):
            raise ValueError(
                f"images must have shape ({count}, {self.image_size[0]}, {self.image_size[1]}, 3)"
                f"; got {step.images.shape}"
            )
        frame = self._template.copy()
        left = 6
        for text, color in status:
            left = self.text.draw(frame, text, 8 + self.text.height, left, color) + 18
        for camera in range(count):
            self._draw_camera(self._panel(frame, "keypoints", camera), step, camera)
            if "reconstruction" in self.rows and step.reconstructions is not None:
                self._draw_reconstruction(
                    self._panel(frame, "reconstruction", camera), step, camera
                )
            if "heatmaps" in self.rows and step.heatmaps is not None:
                self._draw_heatmaps(self._panel(frame, "heatmaps", camera), step.heatmaps[camera])
        if self.world is not None:
            top, left = self.world_origin
            self._draw_world(
                frame[top : top + self.world_size, left : left + self.world_size], step
            )
        self._draw_labels(frame)
        return frame

    def _crop_window(self, step: StepView, camera: int) -> tuple[np.ndarray, tuple[int, int]]:
        """``(u, v)`` origin and ``(h, w)`` of the camera's crop window, full-image pixels."""
        size = self.image_size if step.crop_size is None else tuple(step.crop_size)
        origin = np.zeros(2) if step.crop_origins is None else np.asarray(step.crop_origins[camera])
        return origin, (int(size[0]), int(size[1]))

    def _draw_camera(self, panel: np.ndarray, step: StepView, camera: int) -> None:
        factor = self.factor
        panel[:] = upscale(step.images[camera], factor)
        origin, size = self._crop_window(step, camera)
        if size != self.image_size:
            u0, v0 = np.rint(origin * factor).astype(int)
            draw_rectangle(panel, v0, u0, v0 + size[0] * factor, u0 + size[1] * factor, CROP_COLOR)
        if step.points is None:
            return
        points = np.asarray(step.points[camera], float)
        attention = None if step.attention is None else step.attention[camera]
        radii = _marker_radii(attention, len(points), self.marker_radius)
        if step.detections is not None:
            detections = np.asarray(step.detections[camera], float)
            if np.nanmax(np.abs(detections - points), initial=0.0) > 0.5:
                draw_discs(
                    panel, detections * factor, self.colors, self.marker_radius + 2, None, True
                )
        # The most attended keypoints are drawn last, on top.
        order = np.argsort(radii, kind="stable")
        draw_discs(panel, points[order] * factor, self.colors[order], radii[order])

    def _draw_reconstruction(self, panel: np.ndarray, step: StepView, camera: int) -> None:
        origin, (height, width) = self._crop_window(step, camera)
        factor = self.factor
        decoded = step.reconstructions[camera]
        u0, v0 = np.clip(np.rint(origin * factor).astype(int), 0, None)
        window = panel[v0 : v0 + height * factor, u0 : u0 + width * factor]
        if decoded.shape[:2] == (height, width) and window.shape[:2] == (
            height * factor,
            width * factor,
        ):
            window[:] = upscale(decoded, factor)
        else:
            window[:] = resize_nearest(decoded, height * factor, width * factor)[
                : window.shape[0], : window.shape[1]
            ]

    def _draw_heatmaps(self, panel: np.ndarray, heatmaps: np.ndarray) -> None:
        count = len(heatmaps)
        if count == 0:
            return
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        cell_h = (panel.shape[0] - (rows + 1) * GAP) // rows
        cell_w = (panel.shape[1] - (columns + 1) * GAP) // columns
        map_h, map_w = heatmaps.shape[1:]
        scale = min(cell_h / map_h, cell_w / map_w)
        if scale >= 1:
            scale = math.floor(scale)  # whole pixels per heatmap cell
        tile_h, tile_w = max(1, int(map_h * scale)), max(1, int(map_w * scale))
        peaks = np.maximum(heatmaps.reshape(count, -1).max(axis=1), 1e-12)
        brightness = heatmaps / peaks[:, None, None]  # (K, S_h, S_w)
        colored = brightness[..., None] * self.colors[:, None, None, :].astype(np.float32)
        colored = np.rint(colored.transpose(1, 2, 0, 3)).astype(np.uint8)  # (S_h, S_w, K, 3)
        if scale >= 1:
            tiles = colored.repeat(scale, axis=0).repeat(scale, axis=1)  # (h, w, K, 3)
        else:
            tiles = resize_nearest(colored, tile_h, tile_w)
        for k in range(count):
            row, column = divmod(k, columns)
            top = GAP + row * (cell_h + GAP) + (cell_h - tile_h) // 2
            left = GAP + column * (cell_w + GAP) + (cell_w - tile_w) // 2
            panel[top : top + tile_h, left : left + tile_w] = tiles[:, :, k]

    def _draw_world(self, panel: np.ndarray, step: StepView) -> None:
        world = self.world
        assert world is not None
        if step.camera_intrinsics is not None and step.camera_extrinsics is not None:
            world.fit(step.camera_intrinsics, step.camera_extrinsics, self.image_size)
        world.draw_ground(panel)
        ring = max(3, self.world_size // 120)
        if step.ground_truth is not None and len(step.ground_truth):
            truth = world.project(step.ground_truth)
            if len(self.skeleton):
                draw_segments(
                    panel, truth[self.skeleton[:, 0]], truth[self.skeleton[:, 1]], SKELETON_COLOR, 2
                )
            draw_discs(panel, truth, GROUND_TRUTH_COLOR, ring + 1, None, hollow=True)
        if step.keypoints_world is None:
            return
        learned = np.asarray(step.keypoints_world, float)
        self.trails.append(learned)
        trail = world.project(np.stack(self.trails))  # (T, K, 2)
        if len(trail) > 1:
            # Older segments fade into the background.
            weights = np.arange(1, len(trail))[:, None, None] / len(trail)  # (T - 1, 1, 1)
            colors = BACKGROUND + weights * (self.colors.astype(float) - BACKGROUND)
            draw_segments(
                panel,
                trail[:-1].reshape(-1, 2),
                trail[1:].reshape(-1, 2),
                np.rint(colors).astype(np.uint8).reshape(-1, 3),
                2,
            )
        radii = _marker_radii(step.world_attention, len(learned), ring + 2)
        order = np.argsort(radii, kind="stable")
        draw_discs(panel, trail[-1][order], self.colors[order], radii[order])

    def _draw_labels(self, frame: np.ndarray) -> None:
        box = (0, 0, 0)
        for row in self.rows:
            for camera, name in enumerate(self.camera_names):
                top, left = self.view_origin(row, camera)
                if row == "keypoints":
                    label = f"{name}: keypoints" if self.num_keypoints else name
                else:
                    label = row
                self._label(frame, label, top + 4, left + 4, box)
        if self.world is not None:
            top, left = self.world_origin
            self._label(frame, "world", top + 4, left + 4, box)
            bottom = top + self.world_size - self.text.height - 6
            column = left + 8
            legend: list[tuple[str, np.ndarray | None, bool]] = []
            if self.learned_world:
                legend.append(("learned 3D keypoints", np.array(TEXT_COLOR, np.uint8), False))
            legend.append(("ground truth", GROUND_TRUTH_COLOR, True))
            for text, color, hollow in legend:
                centre = np.array([[column + 5.5, bottom + self.text.height / 2]])
                draw_discs(frame, centre, color, 4, None if hollow else (20, 20, 20), hollow)
                column = self._label(frame, text, bottom, column + 14, None) + 12
            grid = f"grid {_format_length(self.world.grid_step)}"
            self._label(frame, grid, bottom, column, None)

    def _label(
        self, frame: np.ndarray, text: str, top: int, left: int, box: Sequence[int] | None
    ) -> int:
        mask = self.text.mask(text)
        if box is not None:
            shade = np.full((mask.shape[0] + 4, mask.shape[1] + 6), 150, np.uint8)
            blend(frame, shade, box, top - 2, left - 3)
        blend(frame, mask, TEXT_COLOR, top, left)
        return left + mask.shape[1]


# -- rollouts -------------------------------------------------------------------------------------


def default_upscale(image_size: Sequence[int]) -> int:
    """Smallest integer factor making the shorter image side at least :data:`MIN_VIEW_SIDE`."""
    return max(1, math.ceil(MIN_VIEW_SIDE / min(image_size)))


def _numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().float().cpu().numpy()


class RolloutRenderer:
    """Rolls out a policy in a fresh env and yields one composed frame per step.

    Give a trained agent (a run directory or an SB3 model), or an env id with ``random_policy``;
    the perception module drawn is the agent's (the features extractor's), or ``perception``.
    Iterate it once; use it as a context manager (or call :meth:`close`) to free the env.

    Args:
        source: a run directory written by ``kp3d train``, an SB3 model, or ``None``.
        env_id: the env (default: the run's); required with a model or without a source.
        env_kwargs: keyword arguments of ``gymnasium.make`` (default: the run's).
        perception: a :class:`~kp3d.perception.Perception` module, or the path of a checkpoint
            written by ``kp3d pretrain`` (:func:`~kp3d.perception.save_perception`), for an agent
            without a perception module or no agent.
        random_policy: act uniformly at random instead of with the agent.
        episodes: episodes to roll out.
        deterministic: act with the policy's mean action.
        cameras: names of the cameras to show (default: all, in the env's order).
        seed: seed of the env's first reset and of the random actions (default: the run's
            evaluation seed, so that a run's video shows its evaluation episodes; 0 otherwise).
        max_steps: cut episodes after this many steps (default: the env's time limit).
        upscale: nearest-neighbour upscaling of the views (default: :func:`default_upscale`).
        trail: positions in the trail of each learned world keypoint.
        device: torch device of a loaded agent or checkpoint (``auto``: CUDA when present).
            A run directory also sets torch's CPU threads to its config's ``torch_threads``.

    Attributes:
        returns: undiscounted return of each finished episode.
        lengths: steps of each finished episode.
        successes: ``info["is_success"]`` at each finished episode's end.
        position: ``(episode, step)`` of the frame last yielded.
        composer: the :class:`FrameComposer` (set once the first frame is drawn).

    Raises:
        ValueError: for a missing env id or policy, a perception module given twice or not
            matching the env's cameras, unknown camera names, or bad counts.
    """

    def __init__(
        self,
        source: str | os.PathLike | BaseAlgorithm | None = None,
        *,
        env_id: str | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        perception: Perception | str | os.PathLike | None = None,
        random_policy: bool = False,
        episodes: int = 1,
        deterministic: bool = True,
        cameras: Sequence[str] | None = None,
        seed: int | None = None,
        max_steps: int | None = None,
        upscale: int | None = None,
        trail: int = 8,
        device: str = "auto",
    ) -> None:
        if episodes < 1:
            raise ValueError(f"episodes must be at least 1; got {episodes}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1; got {max_steps}")
        if upscale is not None and upscale < 1:
            raise ValueError(f"upscale must be a positive integer; got {upscale}")
        model: BaseAlgorithm | FeaturePolicy | None = None
        policy_label = "random actions"
        if isinstance(source, (str, os.PathLike)):
            config = read_run_config(source)
            if env_id is not None and env_id != config.env_id:
                raise ValueError(
                    f"run {str(source)!r} was trained on {config.env_id}; cannot render it on "
                    f"{env_id}"
                )
            env_id = config.env_id
            env_kwargs = config.env_kwargs if env_kwargs is None else env_kwargs
            seed = config.seed + EVAL_SEED_OFFSET if seed is None else seed
            # As the run trained and evaluate() evaluates: small convs gain nothing from more
            # threads on a CPU, and their threads wait for each other when cores are busy.
            set_torch_threads(config.torch_threads)
            model = load_policy(source, device=device)
            if not random_policy:
                policy_label = f"{Path(source).name}, {model.num_timesteps} steps"
        elif isinstance(source, (BaseAlgorithm, FeaturePolicy)):
            model = source
            if not random_policy:
                policy_label = f"{type(model).__name__}, {model.num_timesteps} steps"
        elif source is not None:
            raise TypeError(
                f"source must be a run directory, an SB3 model or None; got {type(source)}"
            )
        if env_id is None:
            raise ValueError("name the env (env_id=...) when rendering without a run directory")
        if model is None and not random_policy:
            raise ValueError(
                "no policy to act with: give a run directory or a trained model, or "
                "random_policy=True"
            )
        if random_policy or model is None:
            model_policy = None
        else:
            model_policy = model
            policy_label += ", deterministic" if deterministic else ", sampled actions"

        module = None
        if isinstance(model, FeaturePolicy):
            module = model.encoder.perception
        elif model is not None and (extractor := perception_extractor(model.policy)) is not None:
            module = extractor.perception
        if perception is not None:
            if module is not None:
                raise ValueError(
                    "the agent already has a perception module; pass perception= only for an "
                    "agent without one, or without an agent"
                )
            if isinstance(perception, Perception):
                module = perception
            else:
                module = load_perception(perception, device=get_device(device))

        if isinstance(model, FeaturePolicy):
            needs_matrices = model.encoder.layout.any_moving
        else:
            needs_matrices = (
                model is not None
                and hasattr(model.observation_space, "spaces")
                and EXTRINSICS_KEY in model.observation_space.spaces
            )
        self.env = make_env(env_id, env_kwargs, camera_matrices=needs_matrices)
        try:
            self._setup(module, cameras, max_steps)
        except Exception:
            self.env.close()
            raise
        self.env_id = env_id
        self.model = model_policy
        self.perception = module
        self.episodes = episodes
        self.deterministic = deterministic
        self.seed = 0 if seed is None else int(seed)
        self.factor = upscale or default_upscale(self.image_size)
        self.trail = trail
        self.policy_label = policy_label
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.successes: list[bool] = []
        self.position = (0, 0)
        self.composer: FrameComposer | None = None
        self._used = False

    def _setup(
        self, module: Perception | None, cameras: Sequence[str] | None, max_steps: int | None
    ) -> None:
        base = self.env.unwrapped
        env_cameras = base.cameras
        self.camera_names = tuple(env_cameras.names)
        self.image_size = (int(env_cameras.height), int(env_cameras.width))
        shown = list(self.camera_names) if cameras is None else list(cameras)
        unknown = [name for name in shown if name not in self.camera_names]
        if unknown or not shown:
            raise ValueError(f"unknown cameras {unknown}; this env's cameras: {self.camera_names}")
        self.shown = [self.camera_names.index(name) for name in shown]
        if module is not None:
            if module.num_cameras != len(self.camera_names) or module.image_size != self.image_size:
                raise ValueError(
                    f"the perception module takes {module.num_cameras} cameras of "
                    f"{module.image_size}; {self.env.spec.id} has {len(self.camera_names)} of "
                    f"{self.image_size}"
                )
            if getattr(base, "obs_mode", "pixels") == "state":
                raise ValueError("the env observes states (obs_mode='state'): no perception input")
        self.skeleton = getattr(base, "skeleton", None)
        limit = self.env.spec.max_episode_steps if self.env.spec is not None else None
        limits = [x for x in (max_steps, limit) if x is not None]
        self.max_steps = min(limits) if limits else None

    @property
    def total_frames(self) -> int | None:
        """Frames of the whole rollout if no episode ends early (``None``: no step limit)."""
        return None if self.max_steps is None else self.episodes * (self.max_steps + 1)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> RolloutRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _views(self, observation: Any) -> np.ndarray:
        """``(C, H, W, 3)`` uint8 images of all the env's cameras."""
        if isinstance(observation, Mapping) and f"{CAMERA_PREFIX}{self.camera_names[0]}" in (
            observation
        ):
            return np.stack([observation[f"{CAMERA_PREFIX}{n}"] for n in self.camera_names])
        return self.env.unwrapped.render_views()

    @torch.no_grad()
    def _perceive(self, views: np.ndarray, info: Mapping[str, Any]) -> StepView:
        shown = self.shown
        step = StepView(
            images=views[shown],
            ground_truth=info.get("keypoints_world"),
            camera_intrinsics=info.get("camera_intrinsics"),
            camera_extrinsics=info.get("camera_extrinsics"),
        )
        module = self.perception
        if module is None:
            return step
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        observation = {
            f"{CAMERA_PREFIX}{n}": views[i][None] for i, n in enumerate(self.camera_names)
        }
        images = images_from_observation(observation, self.camera_names, device=device)
        intrinsics = torch.as_tensor(info["camera_intrinsics"], dtype=torch.float32, device=device)
        extrinsics = torch.as_tensor(info["camera_extrinsics"], dtype=torch.float32, device=device)
        training = module.training
        module.eval()
        try:
            output = module(images, intrinsics[None], extrinsics[None], compute_losses=True)
        finally:
            module.train(training)
        visuals = output.visuals
        if visuals.points is not None:
            step.points = _numpy(visuals.points)[0][shown]
        if visuals.detections is not None:
            step.detections = _numpy(visuals.detections)[0][shown]
        if visuals.heatmaps is not None:
            step.heatmaps = _numpy(visuals.heatmaps)[0][shown]
        if visuals.reconstructions is not None:
            decoded = _numpy(visuals.reconstructions)[0][shown].transpose(0, 2, 3, 1)
            step.reconstructions = np.rint(np.clip(decoded, 0, 1) * 255).astype(np.uint8)
        if visuals.crop_origins is not None:
            step.crop_origins = _numpy(visuals.crop_origins)[0][shown]
        step.crop_size = visuals.crop_size
        confidence = _numpy(output.confidence)
        per_view = step.points.shape[1] if step.points is not None else 0
        if confidence is not None and per_view:
            confidence = confidence[0]
            if confidence.size == per_view:
                step.attention = np.broadcast_to(confidence, (len(self.camera_names), per_view))
            elif confidence.size == len(self.camera_names) * per_view:
                step.attention = confidence.reshape(len(self.camera_names), per_view)
            if step.attention is not None:
                step.attention = step.attention[shown]
        if module.keypoint_frame == "world" and output.keypoints.shape[-1] == 3:
            step.keypoints_world = _numpy(output.keypoints)[0]
            if confidence is not None and confidence.size == len(step.keypoints_world):
                step.world_attention = confidence
        return step

    def _composer(self, step: StepView) -> FrameComposer:
        rows = ["keypoints"]
        if step.reconstructions is not None:
            rows.append("reconstruction")
        if step.heatmaps is not None:
            rows.append("heatmaps")
        count = 0
        for array in (step.points, step.heatmaps, step.keypoints_world):
            if array is not None:
                count = max(
                    count, array.shape[1] if array is not step.keypoints_world else len(array)
                )
        module = self.perception
        if module is None:
            perception = "no perception module"
        else:
            name = getattr(module, "construction", {}).get("name", type(module).__name__)
            perception = f"{name}, {count} keypoints" if count else name
        title = f"{self.env_id}   |   {perception}   |   policy: {self.policy_label}"
        return FrameComposer(
            [self.camera_names[i] for i in self.shown],
            self.image_size,
            self.factor,
            rows,
            num_keypoints=count,
            world_panel=step.ground_truth is not None or step.keypoints_world is not None,
            learned_world=step.keypoints_world is not None,
            title=title,
            skeleton=self.skeleton,
            trail=self.trail,
        )

    def _frame(
        self,
        observation: Any,
        info: Mapping[str, Any],
        episode: int,
        steps: int,
        episode_return: float,
    ) -> np.ndarray:
        step = self._perceive(self._views(observation), info)
        if self.composer is None:
            self.composer = self._composer(step)
        limit = "" if self.max_steps is None else f"/{self.max_steps}"
        success = bool(info.get("is_success", False))
        status = [
            (f"episode {episode + 1}/{self.episodes}", TEXT_COLOR),
            (f"step {steps}{limit}", TEXT_COLOR),
            (f"return {episode_return:.2f}", TEXT_COLOR),
            ("success" if success else "no success yet", SUCCESS_COLOR if success else MUTED_COLOR),
        ]
        self.position = (episode, steps)
        return self.composer.compose(step, status)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used:
            raise RuntimeError("a RolloutRenderer renders once; make a new one")
        self._used = True
        env = self.env
        env.action_space.seed(self.seed)
        for episode in range(self.episodes):
            observation, info = env.reset(seed=self.seed if episode == 0 else None)
            if self.composer is not None:
                self.composer.reset()
            steps, episode_return = 0, 0.0
            yield self._frame(observation, info, episode, steps, episode_return)
            while True:
                if self.model is None:
                    action = env.action_space.sample()
                else:
                    action, _ = self.model.predict(observation, deterministic=self.deterministic)
                observation, reward, terminated, truncated, info = env.step(action)
                steps += 1
                episode_return += float(reward)
                yield self._frame(observation, info, episode, steps, episode_return)
                if (
                    terminated
                    or truncated
                    or (self.max_steps is not None and steps >= self.max_steps)
                ):
                    break
            self.returns.append(episode_return)
            self.lengths.append(steps)
            self.successes.append(bool(info.get("is_success", False)))


def render_rollout(
    source: str | os.PathLike | BaseAlgorithm | None = None, **options: Any
) -> list[np.ndarray]:
    """Roll out an agent (or random actions) and return the rollout's frames.

    Args:
        source: a run directory, an SB3 model, or ``None`` (then ``env_id=`` and
            ``random_policy=True``).
        **options: the keyword arguments of :class:`RolloutRenderer` (``env_id``,
            ``perception``, ``random_policy``, ``episodes``, ``deterministic``, ``cameras``,
            ``seed``, ``max_steps``, ``upscale``, ...).

    Returns:
        ``(H, W, 3)`` uint8 frames, ``steps + 1`` per episode, all of one (even) size. A 100-step
        episode of three 64 px views with all rows is about 100 x 2 MB: use :func:`render_video`
        for long rollouts, which streams frames to the file.

    Example:
        >>> frames = render_rollout(  # doctest: +SKIP
        ...     env_id="kp3d/Reach-v0", perception="pretrain/perception.pt", random_policy=True
        ... )
    """
    with RolloutRenderer(source, **options) as renderer:
        return list(renderer)


@dataclass(frozen=True)
class RenderedVideo:
    """Result of :func:`render_video`.

    Attributes:
        path: the file written (``.gif`` where an MP4 was asked for but ffmpeg is missing).
        frames: frames written.
        frame_shape: ``(H, W, 3)`` of the frames.
        returns: ``(N,)`` return of each episode.
        lengths: ``(N,)`` steps of each episode.
        successes: ``(N,)`` ``info["is_success"]`` at each episode's end.
        seconds: wall time of rollout, drawing and encoding.
    """

    path: Path
    frames: int
    frame_shape: tuple[int, int, int]
    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray
    seconds: float

    def summary(self) -> str:
        """One line: episodes, returns, successes, frames and speed."""
        returns = ", ".join(f"{r:.2f}" for r in self.returns)
        height, width = self.frame_shape[:2]
        return (
            f"{len(self.returns)} episodes (returns {returns}; success "
            f"{int(self.successes.sum())}/{len(self.successes)}), {self.frames} frames of "
            f"{width}x{height} in {self.seconds:.1f} s ({self.frames / self.seconds:.1f} frames/s)"
        )


def resolve_video_path(path: str | os.PathLike) -> Path:
    """``path``, or the same name ending in ``.gif`` when it ends in ``.mp4`` and ffmpeg is not
    available (with a warning)."""
    path = Path(path)
    if path.suffix.lower() == ".mp4" and not ffmpeg_available():
        gif = path.with_suffix(".gif")
        warnings.warn(
            f"ffmpeg (imageio-ffmpeg) is not available: writing {gif} instead of {path}",
            stacklevel=2,
        )
        return gif
    return path


def render_video(
    source: str | os.PathLike | BaseAlgorithm | None = None,
    out: str | os.PathLike | None = None,
    *,
    fps: float | None = None,
    progress: bool = False,
    **options: Any,
) -> RenderedVideo:
    """Render a rollout (see :class:`RolloutRenderer`) into an MP4 or GIF file.

    Frames are streamed to the encoder (memory stays flat however long the rollout). The file is
    written under a temporary name and renamed when complete: an error or Ctrl-C leaves no
    truncated file under ``out`` (and any previous file there untouched).

    Args:
        source: a run directory, an SB3 model, or ``None``.
        out: ``.mp4`` or ``.gif`` file; an ``.mp4`` becomes a ``.gif`` when ffmpeg is missing.
        fps: frames per second (default: the env's ``render_fps``, real time).
        progress: show a progress bar (tqdm, when installed).
        **options: keyword arguments of :class:`RolloutRenderer`.

    Returns:
        :class:`RenderedVideo`.
    """
    if out is None:
        raise ValueError("render_video needs out=, the .mp4 or .gif file to write")
    path = resolve_video_path(out)
    start = time.perf_counter()
    with RolloutRenderer(source, **options) as renderer:
        rate = fps or float(renderer.env.metadata.get("render_fps", 20))
        bar = progress_bar(
            renderer.total_frames, unit="frame", description="render", enabled=progress
        )
        count = 0

        def frames() -> Iterator[np.ndarray]:
            nonlocal count
            for frame in renderer:
                count += 1
                bar.update()
                yield frame

        try:
            write_video(path, frames(), fps=rate)
        finally:
            bar.close()
        shape = renderer.composer.shape if renderer.composer is not None else (0, 0, 3)
        return RenderedVideo(
            path=path,
            frames=count,
            frame_shape=shape,
            returns=np.array(renderer.returns),
            lengths=np.array(renderer.lengths),
            successes=np.array(renderer.successes),
            seconds=time.perf_counter() - start,
        )


# -- during training ------------------------------------------------------------------------------


def frame_grid(frames: Sequence[np.ndarray], columns: int = 2, shrink: int = 2) -> np.ndarray:
    """Frames shrunk by ``shrink`` (block means) and tiled ``columns`` wide, ``(H, W, 3)`` uint8
    (missing tiles are black)."""
    if not frames:
        raise ValueError("frame_grid needs at least one frame")
    height, width = (side // shrink * shrink for side in frames[0].shape[:2])
    small = [
        f[:height, :width]
        .reshape(height // shrink, shrink, width // shrink, shrink, 3)
        .mean((1, 3))
        for f in frames
    ]
    rows = math.ceil(len(small) / columns)
    blank = np.zeros_like(small[0])
    small += [blank] * (rows * columns - len(small))
    grid = np.concatenate(
        [np.concatenate(small[r * columns : (r + 1) * columns], axis=1) for r in range(rows)]
    )
    return np.rint(grid).astype(np.uint8)


class VideoCallback(BaseCallback):
    """Every ``freq`` env steps, renders the agent being trained into ``videos/step_<N>.mp4`` of
    the run directory and logs four of its frames (first episode, evenly spaced, at half size) to
    TensorBoard as the image ``kp3d/rollout``.

    The rollout runs in a fresh env of its own (``deterministic`` actions by default), in the
    perception's eval mode (restored afterwards) and on a forked torch RNG, so that a video never
    changes what training does next.

    Args:
        run_dir: the run directory.
        env_id: the run's env.
        env_kwargs: its ``gymnasium.make`` arguments.
        freq: env steps between videos.
        episodes: episodes per video.
        deterministic: act with the mean action.
        max_steps: cut episodes after this many steps (``None``: the env's time limit).
        seed: seed of each video's env (the same episodes every time, to compare).
        verbose: 1 prints each video's path.
        encoder: the frozen perception in front of the policy, for a model trained on its
            features (:mod:`agents.features`).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None,
        freq: int,
        episodes: int = 1,
        deterministic: bool = True,
        max_steps: int | None = None,
        seed: int = 0,
        verbose: int = 0,
        encoder: FeatureEncoder | None = None,
    ) -> None:
        super().__init__(verbose)
        if freq < 1:
            raise ValueError(f"freq must be at least 1; got {freq}")
        self.run_dir = Path(run_dir)
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.freq = freq
        self.episodes = episodes
        self.deterministic = deterministic
        self.max_steps = max_steps
        self.seed = seed
        self.encoder = encoder
        self._done_at = 0

    def _init_callback(self) -> None:
        self._done_at = self.num_timesteps // self.freq

    def _on_step(self) -> bool:
        if self.num_timesteps // self.freq > self._done_at:
            self._done_at = self.num_timesteps // self.freq
            self.record()
        return True

    def record(self) -> Path:
        """Render and log the current agent now; returns the video's path."""
        path = resolve_video_path(self.run_dir / VIDEO_DIR / f"step_{self.num_timesteps}.mp4")
        kept: list[np.ndarray] = []
        device = self.model.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with (
            torch.random.fork_rng(devices=devices),
            RolloutRenderer(
                self.model if self.encoder is None else FeaturePolicy(self.model, self.encoder),
                env_id=self.env_id,
                env_kwargs=self.env_kwargs,
                episodes=self.episodes,
                deterministic=self.deterministic,
                max_steps=self.max_steps,
                seed=self.seed,
            ) as renderer,
        ):
            steps = renderer.max_steps or 0
            wanted = {round(i * steps / 3) for i in range(4)}
            first_episode: list[np.ndarray] = []

            def frames() -> Iterator[np.ndarray]:
                for frame in renderer:
                    episode, step = renderer.position
                    if episode == 0:
                        if step in wanted:
                            kept.append(frame)
                        first_episode[:] = [frame]
                    yield frame

            write_video(path, frames(), fps=float(renderer.env.metadata.get("render_fps", 20)))
        # An episode that ended early: show its last frame.
        if first_episode and not any(first_episode[0] is frame for frame in kept):
            kept.append(first_episode[0])
        self._log_image(frame_grid(kept))
        if self.verbose >= 1:
            print(f"video: {path}")
        return path

    def _log_image(self, grid: np.ndarray) -> None:
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        for output in self.logger.output_formats:
            if isinstance(output, TensorBoardOutputFormat):
                output.writer.add_image("kp3d/rollout", grid, self.num_timesteps, dataformats="HWC")
                output.writer.flush()


__all__ = [
    "ROWS",
    "VIDEO_DIR",
    "FrameComposer",
    "RenderedVideo",
    "RolloutRenderer",
    "StepView",
    "VideoCallback",
    "WorldView",
    "default_upscale",
    "frame_grid",
    "look_at",
    "render_rollout",
    "render_video",
    "resolve_video_path",
]
