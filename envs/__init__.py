"""Multi-camera MuJoCo environments for Gymnasium, with exact camera geometry and ground truth.

``import envs`` registers ``kp3d/Reach-v0``, ``kp3d/Push-v0``, ``kp3d/MultiReach-v0`` and
``kp3d/Ant-v0`` (``gymnasium.make("envs:kp3d/Reach-v0")`` imports and registers in one go, also in
subprocess workers). Every step returns images from several calibrated cameras, the camera matrices
and ground-truth keypoints; see :class:`envs.base.MultiCameraMujocoEnv`.
"""

from envs import gl

gl.configure_environment()  # before anything imports mujoco's GL backend

from envs.base import MultiCameraMujocoEnv, perception_defaults  # noqa: E402
from envs.cameras import Cameras, CameraSpec  # noqa: E402
from envs.keypoints import Keypoints, KeypointSpec  # noqa: E402
from envs.registration import TASKS, register_all  # noqa: E402
from envs.rendering import MultiViewRenderer  # noqa: E402
from envs.vector import make_vec_env  # noqa: E402
from envs.wrappers import MultiCameraWrapper, make_metaworld  # noqa: E402

register_all()

__all__ = [
    "TASKS",
    "CameraSpec",
    "Cameras",
    "KeypointSpec",
    "Keypoints",
    "MultiCameraMujocoEnv",
    "MultiCameraWrapper",
    "MultiViewRenderer",
    "make_metaworld",
    "make_vec_env",
    "perception_defaults",
]
