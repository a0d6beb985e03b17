"""MultiReach: three identical arms, each reaching for its own target (``kp3d/MultiReach-v0``)."""

from __future__ import annotations

import numpy as np

from envs.base import MultiCameraMujocoEnv
from envs.cameras import CameraSpec
from envs.keypoints import KeypointSpec
from envs.tasks.reach import (
    CTRL_COST_WEIGHT,
    SUCCESS_DISTANCE,
    ReachEnv,
    reset_arm,
)

ARMS = 3
"""Number of arms in ``multi_reach.xml``."""

_PARTS = ("base", "elbow", "fingertip", "target")


class MultiReachEnv(MultiCameraMujocoEnv):
    r"""Three identical two-link arms, each moving its fingertip onto its own target.

    ## Description
    Three copies of the arm of :class:`~envs.tasks.reach.ReachEnv` stand at the corners of an
    equilateral triangle with 0.7 m sides (shoulders at (0, 0.304), (-0.35, -0.302) and
    (0.35, -0.302)), each pointing away from the triangle's centre when its joints are at zero.
    Each arm has its own red target ball within its reach. The arms' workspaces do not overlap,
    so every target belongs to the arm nearest to it, and the arms never touch. The arms look
    alike: a learner must tell them apart by where they are (``keypoint_instances`` gives each
    keypoint's arm). The MJCF is ``envs/assets/multi_reach.xml``.

    ## Action Space
    ``Box(-1, 1, (6,), float32)``: torques on the hinges of the three arms (i = 0, 1, 2).

    | Num    | Action                          | Min | Max | Name (in the MJCF) | Type (Unit)      |
    |--------|---------------------------------|-----|-----|--------------------|------------------|
    | 2i     | torque on arm i's shoulder      | -1  | 1   | arm<i>_shoulder    | torque (0.2 N m) |
    | 2i + 1 | torque on arm i's elbow         | -1  | 1   | arm<i>_elbow       | torque (0.2 N m) |

    ## Observation Space
    With ``obs_mode="pixels"`` (the default), a ``Dict``:

    - ``cam_front``, ``cam_side``, ``cam_top``: ``Box(0, 255, (64, 64, 3), uint8)`` images from a
      camera in front of the scene looking 50° down, one to its side looking 35° down, and one
      straight above it (the MJCF camera ``top``). Each shows all three workspaces.
    - ``state``: ``Box(low, high, (12,), float32)``: the six joint angles (rad; arm 0's shoulder
      and elbow, then arm 1's, then arm 2's), then their angular velocities (rad/s, clipped to
      ±10). The targets are only seen.

    With ``obs_mode="state"``: ``Box(-100, 100, (24,), float32)``: for each arm in turn, its
    joint angles, joint velocities, its target's x and y, and the x and y of the vector from its
    fingertip to its target (m); the 8 values of :class:`~envs.tasks.reach.ReachEnv`'s state.

    ## Rewards
    The mean over arms of the reward of :class:`~envs.tasks.reach.ReachEnv`:
    ``reward = reward_dist + reward_ctrl``, both in ``info``:

    - ``reward_dist = -mean_i d_i``, with ``d_i`` the distance (m) between the fingertip of arm i
      and the centre of its target;
    - ``reward_ctrl = -0.01 * ||action||^2 / 3``.

    ## Success
    ``info["is_success"]`` is true when every fingertip touches its own target: ``d_i < 0.06``
    m for all three arms.

    ## Starting State
    For each arm, as in :class:`~envs.tasks.reach.ReachEnv`: joint angles uniform within their
    ranges, at rest, and the target uniform over the annulus 0.08 m to 0.28 m from its shoulder,
    at least 0.1 m from its fingertip.

    ## Episode End
    No termination; the episode is truncated after 100 steps (5 s at 20 Hz control).

    ## Keypoints
    For each arm i: ``arm<i>_base``, ``arm<i>_elbow``, ``arm<i>_fingertip``, ``arm<i>_target``,
    all with instance ``i``; limbs base-elbow and elbow-fingertip of each arm.

    ## Arguments
    Only those of :class:`~envs.base.MultiCameraMujocoEnv`: ``cameras``, ``size``, ``obs_mode``,
    ``render_mode``. The number of arms is fixed by the MJCF.

    ## Version History
    * v0: initial version.
    """

    xml_file = "multi_reach.xml"
    frame_skip = 5
    default_cameras = (
        CameraSpec.free(
            "front", lookat=(0.0, 0.0, 0.03), distance=2.1, azimuth=90.0, elevation=-50.0
        ),
        CameraSpec.free(
            "side", lookat=(0.0, 0.0, 0.03), distance=2.1, azimuth=0.0, elevation=-35.0
        ),
        CameraSpec.named("top"),
    )
    robot_joints = tuple(
        f"arm{arm}_{joint}" for arm in range(ARMS) for joint in ReachEnv.robot_joints
    )
    max_joint_velocity = ReachEnv.max_joint_velocity
    keypoints = tuple(
        KeypointSpec(f"arm{arm}_{part}", f"arm{arm}_kp_{part}", instance=arm)
        for arm in range(ARMS)
        for part in _PARTS
    )
    limbs = tuple(
        (f"arm{arm}_{start}", f"arm{arm}_{end}")
        for arm in range(ARMS)
        for start, end in ReachEnv.limbs
    )
    max_episode_steps = 100
    learned_keypoints = 24
    """Keypoints to learn: with 16, those spent on the three static bases left targets without
    one in one seed of two; 24 find every target and fingertip (BENCHMARKS.md)."""
    normalising_length = ReachEnv.normalising_length
    """The upper arm's length (m) of one arm, as in :class:`~envs.tasks.reach.ReachEnv`."""

    # -- physics queries ----------------------------------------------------------------------
    def fingertip_to_target(self, arm: int) -> np.ndarray:
        """``(3,)`` vector from the fingertip centre of ``arm`` to its target centre (m)."""
        return (
            self.data.site(f"arm{arm}_kp_target").xpos
            - self.data.site(f"arm{arm}_kp_fingertip").xpos
        )

    def fingertip_to_target_distances(self) -> np.ndarray:
        """``(3,)`` distance between each arm's fingertip and its target centre (m)."""
        return np.array([np.linalg.norm(self.fingertip_to_target(arm)) for arm in range(ARMS)])

    # -- task ---------------------------------------------------------------------------------
    def reset_task(self) -> None:
        for arm in range(ARMS):
            reset_arm(self.model, self.data, self.np_random, prefix=f"arm{arm}_")

    def task_state(self) -> np.ndarray:
        qpos, qvel = self.data.qpos.reshape(ARMS, 2), self.data.qvel.reshape(ARMS, 2)
        return np.concatenate(
            [
                np.concatenate(
                    [
                        qpos[arm],
                        qvel[arm],
                        self.data.site(f"arm{arm}_kp_target").xpos[:2],
                        self.fingertip_to_target(arm)[:2],
                    ]
                )
                for arm in range(ARMS)
            ]
        )

    def task_reward(self, action: np.ndarray) -> tuple[float, dict[str, float]]:
        reward_dist = -float(np.mean(self.fingertip_to_target_distances()))
        reward_ctrl = -CTRL_COST_WEIGHT * float(np.sum(np.square(action))) / ARMS
        return reward_dist + reward_ctrl, {"reward_dist": reward_dist, "reward_ctrl": reward_ctrl}

    def is_success(self) -> bool:
        return bool(np.all(self.fingertip_to_target_distances() < SUCCESS_DISTANCE))
