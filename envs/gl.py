"""OpenGL context for offscreen rendering, one per process.

MuJoCo chooses its OpenGL backend from ``MUJOCO_GL`` when ``mujoco`` is first imported. kp3d
defaults it to ``egl`` (headless; GPU or Mesa) when it is unset and no display is available, and
creates its own context from the chosen backend, so kp3d's renderer works even when ``mujoco`` was
imported first (MuJoCo's own ``mujoco.Renderer`` then keeps the backend it chose: import ``envs``
first, or set ``MUJOCO_GL``, when you use both).

Switching between many GL contexts in one process is slow, so every renderer of a process shares a
single context that stays current; each renderer keeps its own ``MjrContext`` inside it. A forked
child never reuses its parent's context (see :func:`shared_context`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

BACKENDS = ("egl", "osmesa", "glfw")


class RenderingUnavailableError(RuntimeError):
    """No OpenGL context could be created for offscreen rendering."""


def default_backend() -> str:
    """The backend to use: ``MUJOCO_GL`` if set, else ``glfw`` with a display, else ``egl``."""
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen:
        return chosen
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return "glfw" if has_display or sys.platform == "darwin" else "egl"


def configure_environment() -> None:
    """Set ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM`` to match) and ``LP_NUM_THREADS`` when unset.

    Called when ``envs`` is imported, so that Gymnasium's MuJoCo renderer picks the same backend.
    """
    backend = default_backend()
    if backend not in BACKENDS:
        # mujoco itself would refuse the value when imported, with a less helpful message.
        raise RenderingUnavailableError(
            f"MUJOCO_GL={backend!r} is not supported by kp3d; valid values: {', '.join(BACKENDS)}"
        )
    os.environ.setdefault("MUJOCO_GL", backend)
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    # Mesa's software rasteriser (llvmpipe) splits every frame across a thread pool; for 64-128 px
    # frames the hand-offs cost more than they save (measured ~30% faster single-threaded on two
    # cores, and vectorised envs already use the cores). It only applies to llvmpipe; set
    # LP_NUM_THREADS yourself to override.
    os.environ.setdefault("LP_NUM_THREADS", "0")


def unavailable(backend: str, error: BaseException) -> RenderingUnavailableError:
    """The error to raise when no usable OpenGL context exists, naming the fixes."""
    return RenderingUnavailableError(
        f"could not create an OpenGL context with MUJOCO_GL={backend!r} ({error}). "
        "Offscreen rendering needs one of: MUJOCO_GL=egl (an NVIDIA driver or Mesa's libEGL: "
        "`apt-get install libegl1 libgl1`), MUJOCO_GL=osmesa (`apt-get install "
        "libosmesa6`), or MUJOCO_GL=glfw with a display. Set the variable before starting "
        "Python, or pass obs_mode='state' to run without rendering."
    )


def _create_context(backend: str, width: int, height: int) -> Any:
    try:
        if backend == "egl":
            from mujoco.egl import GLContext
        elif backend == "osmesa":
            from mujoco.osmesa import GLContext
        else:
            from mujoco.glfw import GLContext
        context = GLContext(width, height)
        context.make_current()
    except Exception as error:  # the backends raise ImportError, RuntimeError, OSError, GLError...
        raise unavailable(backend, error) from error
    return context


_context: Any = None
_context_pid: int | None = None
_egl: Any = None  # PyOpenGL's EGL module, with the EGL backend
_egl_handle: int | None = None  # the EGL context of _context


def _current_egl_handle() -> int | None:
    current = _egl.eglGetCurrentContext()
    return current.address if current else None  # None: no context is current


def shared_context() -> Any:
    """The process's GL context, created on first use, made current on every call.

    Returns:
        A ``mujoco`` ``GLContext``. It lives until the process exits.

    Raises:
        RenderingUnavailableError: when no backend can create a context; the message names the fix.
    """
    global _context, _context_pid, _egl, _egl_handle
    if _context is None or _context_pid != os.getpid():
        # A context inherited through fork() is unusable in the child: make a new one.
        backend = default_backend()
        _context = _create_context(backend, 16, 16)
        _context_pid = os.getpid()
        _egl_handle = None
        if backend == "egl":
            from OpenGL import EGL

            _egl = EGL
            _egl_handle = _current_egl_handle()
    elif _egl_handle is None or _current_egl_handle() != _egl_handle:
        # Another library (e.g. a mujoco.Renderer) may have made its own context current. (With
        # EGL, asking which context is current costs less than making ours current again.)
        _context.make_current()
    return _context


def context_exists() -> bool:
    """Whether this process has created its GL context (forking after that is unsafe)."""
    return _context is not None and _context_pid == os.getpid()
