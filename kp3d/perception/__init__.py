"""Perception modules: images of calibrated cameras → keypoints and policy features.

Every method implements :class:`Perception` (see :mod:`kp3d.perception.base` for the contract)
and is built by name::

    from kp3d.perception import available_perceptions, make_perception

    module = make_perception("keypoint3d", num_cameras=3, image_size=64, num_keypoints=16)

Importing this package registers every method shipped with kp3d: ``keypoint3d``
(:class:`Keypoint3D`), ``keypoint2d`` (:class:`Keypoint2D`, its 2D ablation), and the CNN
baselines ``pixel`` (:class:`PixelEncoder`) and ``rad`` (:class:`RAD`, with random crops).
"""

from kp3d.perception.base import (
    Perception,
    PerceptionOutput,
    PerceptionVisuals,
    available_perceptions,
    images_from_observation,
    load_perception,
    load_perception_checkpoint,
    make_perception,
    perception_class,
    perception_hyperparameters,
    register_perception,
    save_perception,
)
from kp3d.perception.keypoint2d import Keypoint2D
from kp3d.perception.keypoint3d import Keypoint3D
from kp3d.perception.pixel import RAD, PixelEncoder

__all__ = [
    "RAD",
    "Keypoint2D",
    "Keypoint3D",
    "Perception",
    "PerceptionOutput",
    "PerceptionVisuals",
    "PixelEncoder",
    "available_perceptions",
    "images_from_observation",
    "load_perception",
    "load_perception_checkpoint",
    "make_perception",
    "perception_class",
    "perception_hyperparameters",
    "register_perception",
    "save_perception",
]
