"""Agents: Stable-Baselines3 integration and rollout videos.

Currently :mod:`agents.video` (writing MP4/GIF videos safely); the perception-driven SB3 agents and
the training CLI arrive with the Keypoint3D work.
"""
