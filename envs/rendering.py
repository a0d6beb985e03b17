"""Drawing the views of a :class:`~envs.cameras.Cameras` into images, all of them in one pass.

:class:`MultiViewRenderer` draws every camera side by side into one offscreen framebuffer and reads
them back at once; it also renders depth, segmentation and the empty scene.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mujoco
import numpy as np

from envs import gl

if TYPE_CHECKING:
    from envs.cameras import Cameras

# Geom groups the renderer draws: groups 0-2 (MuJoCo's default); kp3d assets put keypoint sites and
# other helpers in higher groups so that they never appear in observations.
VISIBLE_GROUPS = (0, 1, 2)
HIDDEN_GROUP = 5
"""A geom group kp3d never renders: :meth:`MultiViewRenderer.render_background` moves the geoms of
movable bodies there for one render."""


class MultiViewRenderer:
    """Renders all cameras of a :class:`Cameras` in one pass.

    The views are drawn side by side into one offscreen framebuffer (one viewport per camera) and
    read back with a single ``mjr_readPixels``; the scene's geometry is built once per frame and
    only the camera changes between views. The GL context is the process's shared one
    (:func:`envs.gl.shared_context`) and is created on the first render.

    Args:
        model: the MuJoCo model.
        cameras: the cameras to draw.
        max_geom: capacity of the scene.
        fast: render without shadow maps and multisampling whatever the model asks for (a 4096²
            shadow map costs ~15 ms per 64 px frame on a CPU rasteriser); ``False`` keeps the
            model's ``<quality>`` settings.
    """

    def __init__(
        self, model: mujoco.MjModel, cameras: Cameras, max_geom: int = 1000, fast: bool = True
    ) -> None:
        self._fast = fast
        self._max_geom = max_geom
        self._model = model
        self._cameras = cameras
        self._scene = mujoco.MjvScene(model, maxgeom=max_geom)
        self._option = mujoco.MjvOption()
        self._option.geomgroup[:] = 0
        self._option.sitegroup[:] = 0
        for group in VISIBLE_GROUPS:
            self._option.geomgroup[group] = 1
            self._option.sitegroup[group] = 1
        self._perturb = mujoco.MjvPerturb()
        height, width, count = cameras.height, cameras.width, len(cameras)
        self._viewports = [mujoco.MjrRect(i * width, 0, width, height) for i in range(count)]
        self._full = mujoco.MjrRect(0, 0, count * width, height)
        self._rgb = np.empty((height, count * width, 3), dtype=np.uint8)
        self._depth: np.ndarray | None = None
        self._context: mujoco.MjrContext | None = None

    def __getstate__(self) -> dict[str, Any]:
        # MuJoCo's scene, options and GL context cannot be pickled (or shared by two renderers): a
        # copy is built anew from the same arguments and makes its GL context on its first render.
        return {
            "model": self._model,
            "cameras": self._cameras,
            "max_geom": self._max_geom,
            "fast": self._fast,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _ensure_context(self) -> mujoco.MjrContext:
        if self._context is None:
            gl.shared_context()
            global_visual = self._model.vis.global_
            needed_width = self._full.width
            needed_height = self._full.height
            quality = self._model.vis.quality
            saved = (
                global_visual.offwidth,
                global_visual.offheight,
                quality.shadowsize,
                quality.offsamples,
            )
            # The context is made for this model's settings: set ours just for its creation.
            global_visual.offwidth = max(saved[0], needed_width)
            global_visual.offheight = max(saved[1], needed_height)
            if self._fast:
                quality.shadowsize, quality.offsamples = 0, 0
            try:
                self._context = mujoco.MjrContext(self._model, mujoco.mjtFontScale.mjFONTSCALE_100)
            except mujoco.FatalError as error:  # e.g. GLFW without a display fails only here
                raise gl.unavailable(gl.default_backend(), error) from error
            finally:
                (
                    global_visual.offwidth,
                    global_visual.offheight,
                    quality.shadowsize,
                    quality.offsamples,
                ) = saved
            # Depth reads as 0 at the far plane and 1 at the near one (what _linear_depth inverts).
            self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
            if self._context.offWidth < needed_width or self._context.offHeight < needed_height:
                raise ValueError(
                    f"{len(self._cameras)} views of {self._cameras.width}x{self._cameras.height} "
                    f"need a {needed_width}x{needed_height} framebuffer; this GL driver allows "
                    f"{self._context.offWidth}x{self._context.offHeight}. Use fewer or smaller "
                    "views."
                )
        else:
            gl.shared_context()
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        return self._context

    def _draw(self, data: mujoco.MjData, segmentation: bool = False) -> mujoco.MjrContext:
        context = self._ensure_context()
        cameras = self._cameras
        mujoco.mjv_updateScene(
            self._model,
            data,
            self._option,
            self._perturb,
            cameras.mjv_camera(0),
            mujoco.mjtCatBit.mjCAT_ALL,
            self._scene,
        )
        if segmentation:
            flags = self._scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
            flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        for index, viewport in enumerate(self._viewports):
            # mjv_updateScene placed camera 0 with the model's free-camera fovy: place every
            # camera with its own parameters.
            cameras.place(data, index, self._scene)
            mujoco.mjr_render(viewport, self._scene, context)
        return context

    def render(self, data: mujoco.MjData, out: np.ndarray | None = None) -> np.ndarray:
        """Render every camera.

        Args:
            data: simulation state with current kinematics.
            out: optional ``(C, H, W, 3)`` uint8 array to write into.

        Returns:
            ``(C, H, W, 3)`` uint8 images, row 0 at the top.
        """
        context = self._draw(data)
        mujoco.mjr_readPixels(self._rgb, None, self._full, context)
        return self._split(self._rgb, out)

    def render_background(self, data: mujoco.MjData) -> np.ndarray:
        """Render every camera with only the static scene: the geoms of bodies that can move
        (any body not welded to the world, mocap bodies included) are left out.

        This is the empty scene that keypoint autoencoders weight their reconstruction error
        against (:mod:`kp3d.reconstruction`); the cameras are placed as for :meth:`render`, so
        moving cameras get the background of their current view.

        Args:
            data: simulation state with current kinematics (placing the cameras).

        Returns:
            ``(C, H, W, 3)`` uint8 images, row 0 at the top.
        """
        model = self._model
        moving = model.body_weldid[model.geom_bodyid] != 0
        saved = model.geom_group.copy()
        model.geom_group[moving] = HIDDEN_GROUP
        try:
            return self.render(data).copy()
        finally:
            model.geom_group[:] = saved

    def render_depth(self, data: mujoco.MjData) -> np.ndarray:
        """``(C, H, W)`` float32 depth (camera-frame z, metres) of every camera."""
        context = self._draw(data)
        if self._depth is None:
            self._depth = np.empty(self._rgb.shape[:2], dtype=np.float32)
        mujoco.mjr_readPixels(None, self._depth, self._full, context)
        return self._split(self._linear_depth(self._depth))

    def render_segmentation(self, data: mujoco.MjData) -> np.ndarray:
        """``(C, H, W, 2)`` int32 (object id, object type) per pixel; ``(-1, -1)`` is background."""
        try:
            context = self._draw(data, segmentation=True)
            mujoco.mjr_readPixels(self._rgb, None, self._full, context)
        finally:  # _draw sets the segmentation flags only: every other render has them off
            self._scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = False
            self._scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = False
        segment_ids = (
            self._rgb[..., 0].astype(np.int64)
            + (self._rgb[..., 1].astype(np.int64) << 8)
            + (self._rgb[..., 2].astype(np.int64) << 16)
        )
        lookup = np.full((self._scene.ngeom + 1, 2), -1, dtype=np.int32)
        for geom in self._scene.geoms[: self._scene.ngeom]:
            if geom.segid >= 0:
                lookup[geom.segid + 1] = (geom.objid, geom.objtype)
        return self._split(lookup[segment_ids])

    def _linear_depth(self, buffer: np.ndarray) -> np.ndarray:
        # MuJoCo renders with reversed z: window depth d maps to metric z = near*far / (near +
        # d*(far - near))... expressed as in mujoco.Renderer to match its float32 rounding.
        extent = self._model.stat.extent
        near = np.float32(self._model.vis.map.znear * extent)
        far = np.float32(self._model.vis.map.zfar * extent)
        c_coef = np.float32(-0.5) * (-(far + near) / (far - near)) - np.float32(0.5)
        d_coef = np.float32(-0.5) * (-(np.float32(2) * far * near) / (far - near))
        return (d_coef / (buffer.astype(np.float64) + c_coef)).astype(np.float32)

    def _split(self, tiled: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        count, width = len(self._cameras), self._cameras.width
        height = self._cameras.height
        # GL rows start at the bottom: flip, then cut the row of views into cameras.
        views = tiled[::-1].reshape(height, count, width, *tiled.shape[2:]).swapaxes(0, 1)
        if out is None:
            return np.ascontiguousarray(views)
        out[...] = views
        return out

    def close(self) -> None:
        """Free the GL resources of this renderer (the shared GL context stays)."""
        if self._context is not None:
            gl.shared_context()
            self._context.free()
            self._context = None


def tile_views(images: np.ndarray) -> np.ndarray:
    """``(C, H, W, 3)`` views side by side as one ``(H, C * W, 3)`` image."""
    count, height, width = images.shape[:3]
    return images.swapaxes(0, 1).reshape(height, count * width, *images.shape[3:])
