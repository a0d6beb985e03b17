"""Rollout frames: what one frame shows (:class:`StepView`) and how it is laid out and drawn
(:class:`FrameComposer`); also :func:`frame_grid`, a thumbnail sheet of frames. NumPy only: the
rollout that fills a :class:`StepView` is :mod:`agents.rollouts`.

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
* **World panel** (:class:`~agents.video.world.WorldView`): the world seen by a virtual camera
  (elevation 30°) fitted to the ground area that the env's cameras see (re-fitted every step
  when they move, so that it follows the robot): the learned world keypoints (modules whose
  ``keypoint_frame`` is ``"world"``) as coloured discs with a trail of their last positions, the
  ground-truth keypoints as grey rings joined by the env's skeleton, a ground grid (its spacing in
  the legend) and the world axes (x red, y green, z blue) at the origin.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.video.drawing import (
    TextRenderer,
    blend,
    draw_discs,
    draw_rectangle,
    draw_segments,
    keypoint_colors,
    resize_nearest,
    upscale,
)
from agents.video.world import WorldView

ROWS = ("keypoints", "reconstruction", "heatmaps")
"""Rows of camera panels, top to bottom (``keypoints``: the camera images, always shown)."""

BACKGROUND = np.array((24, 24, 28), np.uint8)
PANEL_BACKGROUND = np.array((40, 40, 46), np.uint8)
TEXT_COLOR = (235, 235, 235)
MUTED_COLOR = (150, 150, 160)
SUCCESS_COLOR = (90, 200, 110)
GROUND_TRUTH_COLOR = np.array((205, 205, 210), np.uint8)
SKELETON_COLOR = np.array((120, 120, 130), np.uint8)
CROP_COLOR = (150, 150, 150)
GAP = 2
"""Pixels between panels."""


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
            self._label(frame, self.world.grid_label, bottom, column, None)

    def _label(
        self, frame: np.ndarray, text: str, top: int, left: int, box: Sequence[int] | None
    ) -> int:
        mask = self.text.mask(text)
        if box is not None:
            shade = np.full((mask.shape[0] + 4, mask.shape[1] + 6), 150, np.uint8)
            blend(frame, shade, box, top - 2, left - 3)
        blend(frame, mask, TEXT_COLOR, top, left)
        return left + mask.shape[1]


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


__all__ = [
    "GAP",
    "MUTED_COLOR",
    "ROWS",
    "SUCCESS_COLOR",
    "TEXT_COLOR",
    "FrameComposer",
    "StepView",
    "frame_grid",
]
