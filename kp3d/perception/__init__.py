"""Perception modules: images of calibrated cameras → keypoints and policy features.

Every method implements :class:`Perception` (see :mod:`kp3d.perception.base` for the contract)
and is built by name::

    from kp3d.perception import available_perceptions, make_perception

    module = make_perception("keypoint3d", num_cameras=3, image_size=64, num_keypoints=16)

Importing this package registers every method shipped with kp3d:

* Keypoint3D and its ablation: ``keypoint3d`` (:class:`Keypoint3D`), ``keypoint2d``
  (:class:`Keypoint2D`).
* CNN baselines: ``pixel`` (:class:`PixelEncoder`) and ``rad`` (:class:`RAD`, random crops).
* Supervised detectors trained on the simulator's labels (``requires_labels``): ``hourglass``
  (:class:`StackedHourglass`, optionally triangulated to 3D), ``openpose`` (:class:`OpenPose`,
  part-affinity fields and multi-instance assembly), ``d2net`` (:class:`D2Net`, describe-and-detect
  features trained from simulator correspondences).
* Unsupervised landmark learners: ``fse`` (:class:`FactorizedSpatialEmbeddings`), ``zhang2018``
  (:class:`Zhang2018`), ``selftrain`` (:class:`SelfTrainingLandmarks`), ``autolink``
  (:class:`AutoLink`) and ``transporter`` (:class:`Transporter`).

Any of them trains offline with ``kp3d pretrain`` (:meth:`Perception.training_losses`), sits under
an agent (jointly trained, or pretrained and frozen) and is drawn by ``kp3d render``.

Layout: a method is one module named after it that registers its class (``openpose.py``); a method
too large for one file keeps its class there and puts its parts beside it under its name
(``openpose_fields.py``, ``openpose_assembly.py``, ``openpose_evaluation.py``; ``d2net_*``,
``selftrain_*``). What several methods share has a module named for what it is: ``base`` (the
interface and registry), ``coordinates``, ``image_keypoints``, ``layers``, ``equivariance``,
``keypoint_autoencoder``.
"""

from kp3d.perception.autolink import AutoLink
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
from kp3d.perception.d2net import D2Net
from kp3d.perception.fse import FactorizedSpatialEmbeddings
from kp3d.perception.hourglass import StackedHourglass
from kp3d.perception.keypoint2d import Keypoint2D
from kp3d.perception.keypoint3d import Keypoint3D
from kp3d.perception.openpose import OpenPose
from kp3d.perception.pixel import RAD, PixelEncoder
from kp3d.perception.selftrain import SelfTrainingLandmarks
from kp3d.perception.transporter import Transporter
from kp3d.perception.zhang2018 import Zhang2018

__all__ = [
    "RAD",
    "AutoLink",
    "D2Net",
    "FactorizedSpatialEmbeddings",
    "Keypoint2D",
    "Keypoint3D",
    "OpenPose",
    "Perception",
    "PerceptionOutput",
    "PerceptionVisuals",
    "PixelEncoder",
    "SelfTrainingLandmarks",
    "StackedHourglass",
    "Transporter",
    "Zhang2018",
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
