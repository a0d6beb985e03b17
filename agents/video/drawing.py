"""Drawing on ``(H, W, 3)`` uint8 frames in NumPy: text, line segments, disc, ring and square
markers, the keypoint palette, and nearest-neighbour resizing. Owns every pixel primitive that the
frame composer (:mod:`agents.video.compose`) and the demo videos draw with.

Pixel coordinates follow :mod:`kp3d.geometry`: ``(u, v)`` with ``(0, 0)`` the top-left corner of
the top-left pixel, so a point lies in the pixel ``(row, col) = (floor(v), floor(u))``. Costs stay
small next to the perception and the video encoder.

Text uses Pillow's built-in font (Pillow is a dependency of imageio and matplotlib; its default
font is embedded, so no font file is needed). Each character is rasterised once and cached as an
alpha mask; strings are assembled from the cached masks with NumPy (about 0.7 ms for a new line of
90 characters, against about 3 ms for Pillow to lay it out, on a busy 2-core machine) and
repeated strings (labels) come from a cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Color = Sequence[int] | np.ndarray

MASK_CACHE_SIZE = 512
"""Strings whose masks :class:`TextRenderer` keeps (labels repeat every frame)."""


def blend(image: np.ndarray, alpha: np.ndarray, color: Color, top: int, left: int) -> np.ndarray:
    """Paint ``color`` through an alpha mask into ``image`` in place, clipped to the image.

    Args:
        image: ``(H, W, 3)`` uint8.
        alpha: ``(h, w)`` uint8 coverage (255 = opaque) or float in ``[0, 1]``.
        color: RGB.
        top: image row of the mask's first row.
        left: image column of the mask's first column.

    Returns:
        ``image``.
    """
    height, width = image.shape[:2]
    mask_height, mask_width = alpha.shape
    row0, col0 = max(top, 0), max(left, 0)
    row1, col1 = min(top + mask_height, height), min(left + mask_width, width)
    if row0 >= row1 or col0 >= col1:
        return image
    weights = alpha[row0 - top : row1 - top, col0 - left : col1 - left]
    if weights.dtype == np.uint8:
        weights = weights.astype(np.float32) / 255.0
    region = image[row0:row1, col0:col1].astype(np.float32)
    target = np.asarray(color, dtype=np.float32)
    region += (target - region) * weights[..., None]
    image[row0:row1, col0:col1] = np.rint(region).astype(np.uint8)
    return image


class TextRenderer:
    """Single-line text from Pillow's built-in font, composed from cached glyph masks.

    Kerning is ignored (glyphs are placed by their advance widths), which is invisible at these
    sizes. Without FreeType in Pillow, its fixed-size bitmap font is used.

    Args:
        size: font size in pixels.

    Attributes:
        height: height in pixels of every rendered line.

    Example:
        >>> text = TextRenderer(13)
        >>> mask = text.mask("step 12")
        >>> mask.shape[0] == text.height, mask.dtype, mask.max() > 0
        (True, dtype('uint8'), np.True_)
    """

    def __init__(self, size: int = 13) -> None:
        from PIL import ImageFont, features

        if size < 6:
            raise ValueError(f"font size must be at least 6 pixels; got {size}")
        if features.check("freetype2"):
            self.font = ImageFont.load_default(size=size)
        else:
            self.font = ImageFont.load_default()
        top, bottom = self.font.getbbox("ÁHgjy|_")[1::2]
        self._top = min(int(top), 0)
        self.height = math.ceil(bottom) - self._top + 1
        self._glyphs: dict[str, tuple[np.ndarray, float]] = {}
        self._masks: dict[str, np.ndarray] = {}

    def _glyph(self, char: str) -> tuple[np.ndarray, float]:
        """``(mask, advance)``: the character drawn 1 px right of the mask's left edge."""
        if char not in self._glyphs:
            from PIL import Image, ImageDraw

            advance = float(self.font.getlength(char))
            right = self.font.getbbox(char)[2] if char.strip() else 0
            width = math.ceil(max(advance, right)) + 2
            canvas = Image.new("L", (width, self.height))
            ImageDraw.Draw(canvas).text((1, -self._top), char, fill=255, font=self.font)
            self._glyphs[char] = (np.asarray(canvas), advance)
        return self._glyphs[char]

    def width(self, text: str) -> int:
        """Width in pixels of the mask of ``text``."""
        return self.mask(text).shape[1]

    def mask(self, text: str) -> np.ndarray:
        """``(height, w)`` uint8 coverage mask of ``text`` on one line (cached: do not modify)."""
        if text in self._masks:
            return self._masks[text]
        if len(self._masks) >= MASK_CACHE_SIZE:
            self._masks.clear()
        glyphs = [self._glyph(char) for char in text]
        positions = np.cumsum([0.0] + [advance for _, advance in glyphs])
        width = max(
            (
                round(float(x)) + glyph.shape[1]
                for x, (glyph, _) in zip(positions, glyphs, strict=False)
            ),
            default=1,
        )
        mask = np.zeros((self.height, width), dtype=np.uint8)
        for x, (glyph, _) in zip(positions, glyphs, strict=False):
            left = round(float(x))
            region = mask[:, left : left + glyph.shape[1]]
            np.maximum(region, glyph, out=region)
        mask.flags.writeable = False
        self._masks[text] = mask
        return mask

    def draw(
        self,
        image: np.ndarray,
        text: str,
        top: int,
        left: int,
        color: Color = (235, 235, 235),
        background: Color | None = None,
        padding: int = 2,
    ) -> int:
        """Draw ``text`` in place with its top-left corner at ``(top, left)``.

        Args:
            image: ``(H, W, 3)`` uint8.
            text: one line.
            top: row of the text's top.
            left: column of the text's left edge.
            color: RGB of the text.
            background: RGB of a box behind the text (``padding`` px around it), or ``None``.
            padding: margin of that box.

        Returns:
            The column just right of what was drawn.
        """
        mask = self.mask(text)
        if background is not None:
            box = np.full((mask.shape[0] + 2 * padding, mask.shape[1] + 2 * padding), 255, np.uint8)
            blend(image, box, background, top - padding, left - padding)
        blend(image, mask, color, top, left)
        return left + mask.shape[1]


def clip_segments(
    starts: np.ndarray, ends: np.ndarray, width: float, height: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip segments to the rectangle ``[0, width] x [0, height]`` (Liang-Barsky).

    Args:
        starts: ``(N, 2)`` ``(u, v)`` first endpoints.
        ends: ``(N, 2)`` second endpoints.
        width: rectangle width.
        height: rectangle height.

    Returns:
        ``(starts, ends, kept)``: the clipped endpoints of the segments that cross the rectangle,
        and ``kept (N,)`` bool saying which those are.
    """
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    ends = np.asarray(ends, dtype=np.float64).reshape(-1, 2)
    delta = ends - starts
    low = np.zeros(len(starts))
    high = np.ones(len(starts))
    finite = np.isfinite(starts).all(axis=1) & np.isfinite(ends).all(axis=1)
    for axis, limit in ((0, width), (1, height)):
        for p, q in ((-delta[:, axis], starts[:, axis]), (delta[:, axis], limit - starts[:, axis])):
            parallel = p == 0
            finite &= ~(parallel & (q < 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(parallel, 0.0, q / np.where(parallel, 1.0, p))
            low = np.where(~parallel & (p < 0), np.maximum(low, ratio), low)
            high = np.where(~parallel & (p > 0), np.minimum(high, ratio), high)
    kept = finite & (low <= high)
    clipped_starts = starts[kept] + low[kept, None] * delta[kept]
    clipped_ends = starts[kept] + high[kept, None] * delta[kept]
    return clipped_starts, clipped_ends, kept


def draw_segments(
    image: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    colors: Color | np.ndarray,
    thickness: int = 1,
) -> np.ndarray:
    """Draw line segments in place (clipped to the image; no anti-aliasing).

    Each segment is sampled at one point per pixel of its longer side, and every sample fills the
    ``thickness x thickness`` square of pixels around it.

    Args:
        image: ``(H, W, 3)`` uint8.
        starts: ``(N, 2)`` ``(u, v)`` pixel coordinates.
        ends: ``(N, 2)``.
        colors: one RGB for all, or ``(N, 3)`` one per segment.
        thickness: line width in pixels.

    Returns:
        ``image``.
    """
    height, width = image.shape[:2]
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    colors = np.asarray(colors, dtype=np.uint8)
    per_segment = colors.ndim == 2
    # Clip to a rectangle one pixel inside the image so that floor() stays in range.
    starts, ends, kept = clip_segments(starts, ends, width - 1e-6, height - 1e-6)
    if not len(starts):
        return image
    if per_segment:
        colors = colors[kept]
    samples = np.ceil(np.abs(ends - starts).max(axis=1)).astype(np.int64) + 1
    segment = np.repeat(np.arange(len(starts)), samples)
    first = np.cumsum(samples) - samples
    t = (np.arange(segment.size) - first[segment]) / np.maximum(samples - 1, 1)[segment]
    points = starts[segment] + t[:, None] * (ends - starts)[segment]
    cols = np.floor(points[:, 0]).astype(np.int64)
    rows = np.floor(points[:, 1]).astype(np.int64)
    values = colors[segment] if per_segment else colors
    offset = (thickness - 1) // 2
    for dy in range(thickness):
        for dx in range(thickness):
            r = np.clip(rows + dy - offset, 0, height - 1)
            c = np.clip(cols + dx - offset, 0, width - 1)
            image[r, c] = values
    return image


_STENCILS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _stencil(radius: int, inner: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dy, dx)`` offsets of the pixels of a disc of ``radius`` minus one of ``inner``."""
    key = (radius, inner)
    if key not in _STENCILS:
        span = np.arange(-radius, radius + 1)
        dy, dx = np.meshgrid(span, span, indexing="ij")
        squared = dy**2 + dx**2
        # r^2 + r: the discretised disc looks round (no single-pixel nubs at the four tips).
        keep = squared <= radius * radius + radius
        if inner >= 0:
            keep &= squared > inner * inner + inner
        _STENCILS[key] = (dy[keep], dx[keep])
    return _STENCILS[key]


def draw_discs(
    image: np.ndarray,
    pixels: np.ndarray,
    colors: np.ndarray,
    radii: np.ndarray | int,
    outline: Color | None = (20, 20, 20),
    hollow: bool = False,
) -> np.ndarray:
    """Draw disc (or ring) markers in place, in order (later markers cover earlier ones).

    The marker of a point is centred on the pixel containing it, ``(floor(v), floor(u))``, which
    always takes the marker's colour.

    Args:
        image: ``(H, W, 3)`` uint8.
        pixels: ``(N, 2)`` ``(u, v)`` centres; non-finite ones are skipped.
        colors: ``(N, 3)`` uint8 (or one RGB for all).
        radii: ``(N,)`` or one radius in pixels (0: the centre pixel only).
        outline: RGB of a one-pixel border around each marker, or ``None``.
        hollow: draw rings (two pixels wide) instead of filled discs.

    Returns:
        ``image``.
    """
    height, width = image.shape[:2]
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    colors = np.broadcast_to(np.asarray(colors, dtype=np.uint8), (len(pixels), 3))
    radii = np.broadcast_to(np.asarray(radii, dtype=np.int64), (len(pixels),))
    for (u, v), color, radius in zip(pixels, colors, radii, strict=True):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        row, col = int(np.floor(v)), int(np.floor(u))
        if row < -radius - 2 or col < -radius - 2 or row > height + radius + 1:
            continue
        if col > width + radius + 1:
            continue
        layers = []
        inner = max(int(radius) - 2, 0) if hollow and radius >= 2 else -1
        if outline is not None:
            layers.append((_stencil(int(radius) + 1, inner - 1 if inner >= 0 else -1), outline))
        layers.append((_stencil(int(radius), inner), color))
        for (dy, dx), value in layers:
            r, c = dy + row, dx + col
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            image[r[inside], c[inside]] = value
    return image


def draw_rectangle(
    image: np.ndarray, top: int, left: int, bottom: int, right: int, color: Color
) -> np.ndarray:
    """Draw in place the one-pixel outline of rows ``top..bottom-1`` and columns
    ``left..right-1`` (the parts inside the image)."""
    height, width = image.shape[:2]
    row0, row1 = max(top, 0), min(bottom, height)
    col0, col1 = max(left, 0), min(right, width)
    if row0 >= row1 or col0 >= col1:
        return image
    for row in (top, bottom - 1):
        if row0 <= row < row1:
            image[row, col0:col1] = color
    for col in (left, right - 1):
        if col0 <= col < col1:
            image[row0:row1, col] = color
    return image


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``(h, w, ...)`` to ``(height, width, ...)``: output pixel
    ``(i, j)`` takes input pixel ``(floor(i h / height), floor(j w / width))``."""
    rows = np.arange(height) * image.shape[0] // height
    cols = np.arange(width) * image.shape[1] // width
    return image[rows[:, None], cols[None, :]]


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``(H, W, 3)`` image by an integer ``factor``."""
    if factor < 1:
        raise ValueError(f"upscale factor must be a positive integer; got {factor}")
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


# A fixed colour per keypoint index, across views and time (Tableau 10, then repeated).
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.uint8,
)


def keypoint_colors(count: int) -> np.ndarray:
    """``(count, 3)`` uint8 colours, one fixed colour per keypoint index."""
    return PALETTE[np.arange(count) % len(PALETTE)]


def draw_points(
    image: np.ndarray,
    pixels: np.ndarray,
    colors: np.ndarray,
    radius: int = 2,
    filled: np.ndarray | None = None,
) -> np.ndarray:
    """Draw square markers in place.

    Args:
        image: ``(H, W, 3)`` uint8 image, modified in place.
        pixels: ``(N, 2)`` marker centres in the pixel convention of :mod:`kp3d.geometry`
            (``(u, v)``; the pixel containing a point is ``(floor(v), floor(u))``).
        colors: ``(N, 3)`` uint8 colours.
        radius: half side of each square, in pixels.
        filled: ``(N,)`` bool; unfilled markers are drawn as outlines (e.g. occluded keypoints).

    Returns:
        ``image``.
    """
    height, width = image.shape[:2]
    for n, (u, v) in enumerate(np.asarray(pixels, dtype=np.float64)):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        col, row = int(np.floor(u)), int(np.floor(v))
        top, bottom = max(row - radius, 0), min(row + radius + 1, height)
        left, right = max(col - radius, 0), min(col + radius + 1, width)
        if top >= bottom or left >= right:
            continue
        if filled is None or filled[n]:
            image[top:bottom, left:right] = colors[n]
        else:
            image[top:bottom, [left, right - 1]] = colors[n]
            image[[top, bottom - 1], left:right] = colors[n]
    return image


__all__ = [
    "PALETTE",
    "TextRenderer",
    "blend",
    "clip_segments",
    "draw_discs",
    "draw_points",
    "draw_rectangle",
    "draw_segments",
    "keypoint_colors",
    "resize_nearest",
    "upscale",
]
