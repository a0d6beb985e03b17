"""Import ``envs`` before anything imports ``mujoco``, so that MuJoCo's own renderer (used by some
tests as a reference) picks the headless GL backend that ``envs`` configures."""

import envs  # noqa: F401
