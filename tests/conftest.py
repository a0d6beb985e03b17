"""Import ``envs`` before anything imports ``mujoco``, so that MuJoCo's own renderer (used by some
tests as a reference) picks the headless GL backend that ``envs`` configures."""

import torch

import envs  # noqa: F401

# The models under test are tiny: one thread avoids oversubscribing the cores when tests, envs in
# worker processes and other jobs share a small machine (measured: 8 ms vs ~1 s per training step
# on a loaded 2-core machine), and makes CPU results reproducible.
torch.set_num_threads(1)
