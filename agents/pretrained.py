"""Pretrained perceptions under an agent: the ``perception.pretrained`` checkpoint read for a
run's cameras and checked to fit its config, and its weights loaded into a policy's perception
extractors. (Freezing one — running it outside the policy — is :mod:`agents.features`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from agents.config import ConfigError, PerceptionConfig
from agents.extractor import PerceptionExtractor
from kp3d.perception import load_perception_checkpoint, perception_class


def pretrained_perception(
    perception: PerceptionConfig, camera_names: Sequence[str], image_size: Sequence[int]
) -> dict[str, Any]:
    """The checkpoint of ``perception.pretrained``, checked against the agent's config and env.

    Args:
        perception: the agent config's ``perception`` section (``pretrained`` set).
        camera_names: the env's camera order.
        image_size: ``(H, W)`` of the env's views.

    Returns:
        The payload of :func:`kp3d.perception.load_perception_checkpoint` (``kwargs`` are the
        module's hyperparameters, ``state_dict`` its weights).

    Raises:
        ConfigError: for a missing or unreadable file, or a checkpoint whose method, camera
            layout or hyperparameters differ from the config's and env's (the message lists
            every difference).
    """
    path = perception.pretrained
    if path is None:
        raise ConfigError("'perception.pretrained' is not set")
    try:
        payload = load_perception_checkpoint(path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"'perception.pretrained': {error}") from None
    differences = []
    if payload["name"] != perception.name:
        differences.append(
            f"method: the checkpoint holds {payload['name']!r}, perception.name is "
            f"{perception.name!r}"
        )
    if payload["num_cameras"] != len(camera_names):
        differences.append(
            f"cameras: the checkpoint has {payload['num_cameras']}, the env {len(camera_names)}"
        )
    if tuple(payload["image_size"]) != tuple(image_size):
        differences.append(
            f"image size: the checkpoint's is {tuple(payload['image_size'])}, the env's "
            f"{tuple(image_size)}"
        )
    names = payload["extra"].get("camera_names")
    if (
        names is not None
        and len(names) == len(camera_names)
        and tuple(names) != tuple(camera_names)
    ):
        differences.append(
            f"camera names: the checkpoint's are {list(names)}, the env's {list(camera_names)}"
        )
    # The checkpoint stores initialisation files as None (Perception.initialisation_files): a
    # config that still names the file agrees with it.
    try:
        files = set(perception_class(payload["name"]).initialisation_files)
    except ValueError:  # an unknown method: reported below as a difference of method
        files = set()
    if perception.kwargs and {
        key: value for key, value in perception.kwargs.items() if key not in files
    } != {key: value for key, value in payload["kwargs"].items() if key not in files}:
        differences.append(
            f"kwargs: the checkpoint's are {payload['kwargs']}, perception.kwargs are "
            f"{perception.kwargs} (leave perception.kwargs empty to use the checkpoint's)"
        )
    if differences:
        raise ConfigError(
            f"'perception.pretrained' {path} does not fit this run: " + "; ".join(differences)
        )
    return payload


def load_pretrained_weights(policy: torch.nn.Module, payload: dict[str, Any]) -> int:
    """Copy the checkpoint's weights into every perception extractor of ``policy`` (SAC's target
    critic keeps its own copy); return how many were loaded."""
    count = 0
    for module in policy.modules():
        if isinstance(module, PerceptionExtractor):
            module.perception.load_state_dict(payload["state_dict"])
            count += 1
    if count == 0:
        raise ValueError("the policy has no perception extractor to load pretrained weights into")
    return count


__all__ = ["load_pretrained_weights", "pretrained_perception"]
