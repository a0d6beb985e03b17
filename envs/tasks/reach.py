"""Reach: a two-link planar arm moves its fingertip onto a target (``kp3d/Reach-v0``)."""

from __future__ import annotations

import functools
import math

import mujoco
import numpy as np

from envs.base import MultiCameraMujocoEnv
from envs.cameras import CameraSpec
from envs.keypoints import KeypointSpec

SUCCESS_DISTANCE = 0.06
"""Fingertip-target distance (m) below which the arm has reached: the fingertip ball (radius
0.03 m) touches the target ball (radius 0.03 m)."""

CTRL_COST_WEIGHT = 0.01
"""Weight of the squared-action penalty in the reward."""

TARGET_RANGE = (0.08, 0.28)
"""Horizontal distance (m) from the shoulder axis at which targets are placed: every such target
is within reach of the fingertip (0.30 m at full stretch; 0.05 m when the elbow is bent to its
160 degree limit)."""

MIN_START_DISTANCE = 0.1
"""Smallest fingertip-target distance (m) at the start, so that no episode starts solved."""


def reset_arm(
    model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator, prefix: str = ""
) -> None:
    """Randomise one arm and its target.

    The shoulder and elbow angles are uniform within their ranges, with the arm at rest; the
    target is uniform over the annulus :data:`TARGET_RANGE` around the shoulder axis, at the
    arm's height, and at least :data:`MIN_START_DISTANCE` from the fingertip.

    Args:
        model: a model holding the arm (``reach.xml`` or ``multi_reach.xml``).
        data: its data; joint positions, velocities and the target's mocap position are written.
        rng: the only source of randomness.
        prefix: prefix of the arm's names in the MJCF (``"arm1_"`` for ``arm1_shoulder``).
    """
    for name in ("shoulder", "elbow"):
        joint = model.joint(prefix + name)
        data.qpos[joint.qposadr[0]] = rng.uniform(*joint.range)
        data.qvel[joint.dofadr[0]] = 0.0
    mujoco.mj_kinematics(model, data)
    shoulder = data.site(prefix + "kp_base").xpos
    fingertip = data.site(prefix + "kp_fingertip").xpos
    inner, outer = TARGET_RANGE
    while True:
        radius = np.sqrt(rng.uniform(inner**2, outer**2))  # uniform over the annulus's area
        angle = rng.uniform(-np.pi, np.pi)
        target = shoulder + radius * np.array([np.cos(angle), np.sin(angle), 0.0])
        if np.linalg.norm(target - fingertip) >= MIN_START_DISTANCE:
            break
    data.mocap_pos[model.body(prefix + "target").mocapid[0]] = target


class ReachEnv(MultiCameraMujocoEnv):
    r"""A two-link planar arm moves its fingertip onto a randomly placed target.

    ## Description
    The arm of dm_control's reacher, standing on a floor and seen in 3D: a black post at the origin
    carries a blue upper arm and a purple forearm (0.15 m each) that turn about vertical hinges in
    the plane 0.04 m above the floor; a yellow fingertip ball (radius 0.03 m) ends the forearm. The
    target is a red ball of the same size in the same plane (a mocap body). Nothing in the scene
    collides. The MJCF is ``envs/assets/reach.xml``.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``: torques on the two hinges.

    | Num | Action                       | Min | Max | Name (in the MJCF) | Type (Unit)      |
    |-----|------------------------------|-----|-----|--------------------|------------------|
    | 0   | torque on the shoulder hinge | -1  | 1   | shoulder           | torque (0.2 N m) |
    | 1   | torque on the elbow hinge    | -1  | 1   | elbow              | torque (0.2 N m) |

    ## Observation Space
    With ``obs_mode="pixels"`` (the default), a ``Dict``:

    - ``cam_front``, ``cam_side``, ``cam_top``: ``Box(0, 255, (64, 64, 3), uint8)`` images from a
      camera in front of the arm looking 50° down, one to its side looking 35° down, and one
      straight above it (the MJCF camera ``top``). Each shows the whole workspace.
    - ``state``: ``Box(low, high, (4,), float32)``, the arm's proprioception: shoulder and elbow
      angles (rad) and angular velocities (rad/s, clipped to ±10). The target is only seen.

    With ``obs_mode="state"``: ``Box(-100, 100, (8,), float32)``: the two joint angles, the two
    joint velocities, the target's x and y, and the x and y of the vector from the fingertip to
    the target (m).

    ## Rewards
    ``reward = reward_dist + reward_ctrl``, both in ``info``:

    - ``reward_dist = -d``, with ``d`` the distance (m) between the fingertip and target centres;
    - ``reward_ctrl = -0.01 * ||action||^2``.

    ## Success
    ``info["is_success"]`` is true when ``d < 0.06`` m, i.e. the fingertip touches the target.

    ## Starting State
    Both joint angles are uniform within their ranges (shoulder ±180°, elbow ±160°) and the arm is
    at rest. The target is uniform over the annulus 0.08 m to 0.28 m from the shoulder axis, so it
    is always within reach, and at least 0.1 m from the fingertip, so no episode starts solved.

    ## Episode End
    No termination; the episode is truncated after 100 steps (5 s at 20 Hz control: physics at
    100 Hz, 5 physics steps per action).

    ## Keypoints
    ``base`` (the shoulder axis), ``elbow``, ``fingertip`` and ``target``; limbs base-elbow and
    elbow-fingertip.

    ## Arguments
    Only those of :class:`~envs.base.MultiCameraMujocoEnv`: ``cameras``, ``size``, ``obs_mode``,
    ``render_mode``.

    ## Version History
    * v0: initial version.
    """

    xml_file = "reach.xml"
    frame_skip = 5
    default_cameras = (
        CameraSpec.free(
            "front", lookat=(0.0, 0.0, 0.03), distance=0.95, azimuth=90.0, elevation=-50.0
        ),
        CameraSpec.free(
            "side", lookat=(0.0, 0.0, 0.03), distance=0.95, azimuth=0.0, elevation=-35.0
        ),
        CameraSpec.named("top"),
    )
    robot_joints = ("shoulder", "elbow")
    max_joint_velocity = 10.0
    keypoints = (
        KeypointSpec("base", "kp_base"),
        KeypointSpec("elbow", "kp_elbow"),
        KeypointSpec("fingertip", "kp_fingertip"),
        KeypointSpec("target", "kp_target"),
    )
    limbs = (("base", "elbow"), ("elbow", "fingertip"))
    max_episode_steps = 100
    normalising_length = 0.15
    """The upper arm's length (m, base to elbow keypoint): the arm's own scale, as a person's
    torso or head size normalises PCK."""

    # -- physics queries ----------------------------------------------------------------------
    @functools.cached_property
    def _fingertip_and_target_sites(self) -> tuple[int, int]:
        return self.model.site("kp_fingertip").id, self.model.site("kp_target").id

    def fingertip_to_target(self) -> np.ndarray:
        """``(3,)`` vector from the fingertip centre to the target centre (m)."""
        fingertip, target = self._fingertip_and_target_sites
        return self.data.site_xpos[target] - self.data.site_xpos[fingertip]

    def fingertip_to_target_distance(self) -> float:
        """Distance between the fingertip and target centres (m)."""
        offset = self.fingertip_to_target()
        return math.sqrt(offset.dot(offset))  # np.linalg.norm's arithmetic, without its overhead

    # -- task ---------------------------------------------------------------------------------
    def reset_task(self) -> None:
        reset_arm(self.model, self.data, self.np_random)

    def task_state(self) -> np.ndarray:
        return np.concatenate(
            [
                self.data.qpos,
                self.data.qvel,
                self.data.site("kp_target").xpos[:2],
                self.fingertip_to_target()[:2],
            ]
        )

    def task_reward(self, action: np.ndarray) -> tuple[float, dict[str, float]]:
        reward_dist = -self.fingertip_to_target_distance()
        reward_ctrl = -CTRL_COST_WEIGHT * float(np.square(action).sum())
        return reward_dist + reward_ctrl, {"reward_dist": reward_dist, "reward_ctrl": reward_ctrl}

    def is_success(self) -> bool:
        return self.fingertip_to_target_distance() < SUCCESS_DISTANCE
