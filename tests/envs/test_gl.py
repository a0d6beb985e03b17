"""OpenGL set-up: default backend, and a clear error when no context can be made."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from envs import gl

SCRIPT = """
import gymnasium as gym
import envs
env = gym.make("kp3d/Reach-v0")
env.reset(seed=0)
"""


def _run(environment: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )


def test_unsupported_backend_names_the_valid_ones() -> None:
    result = _run({"MUJOCO_GL": "vulkan"})
    assert result.returncode != 0
    assert "RenderingUnavailableError" in result.stderr
    assert "valid values: egl, osmesa, glfw" in result.stderr


def test_missing_backend_names_the_fix() -> None:
    # GLFW without a display cannot create a context on a headless machine.
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("a display is available, so GLFW works here")
    result = _run({"MUJOCO_GL": "glfw", "DISPLAY": ""})
    assert result.returncode != 0
    assert "could not create an OpenGL context with MUJOCO_GL='glfw'" in result.stderr
    assert "MUJOCO_GL=egl" in result.stderr and "obs_mode='state'" in result.stderr


def test_state_mode_needs_no_opengl() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        pytest.skip("a display is available, so GLFW works here")
    script = SCRIPT.replace('"kp3d/Reach-v0"', '"kp3d/Reach-v0", obs_mode="state"')
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.update({"MUJOCO_GL": "glfw", "DISPLAY": ""})
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_headless_default_is_egl(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    if sys.platform != "darwin":
        assert gl.default_backend() == "egl"
    monkeypatch.setenv("MUJOCO_GL", "OSMesa ")
    assert gl.default_backend() == "osmesa"
