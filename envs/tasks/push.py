"""Push: a round pusher shoves a cube onto a goal disc (``kp3d/Push-v0``)."""

from __future__ import annotations

import numpy as np

from envs.base import MultiCameraMujocoEnv
from envs.cameras import CameraSpec
from envs.keypoints import KeypointSpec

GOAL_RADIUS = 0.05
"""Radius (m) of the goal disc; the cube is on the goal when its centre is inside the disc."""

NEAR_WEIGHT = 0.5
"""Weight of the pusher-to-cube distance in the reward (as in Gymnasium's Pusher)."""

CTRL_COST_WEIGHT = 0.01
"""Weight of the squared-action penalty in the reward."""

CUBE_RANGE = 0.2
"""Cubes start with their centre in ``[-0.2, 0.2]^2``: at least 0.11 m from the walls, so that
the pusher can get behind them from every side."""

GOAL_RANGE = 0.25
"""Goals are placed with their centre in ``[-0.25, 0.25]^2``."""

PUSHER_RANGE = 0.3
"""Pushers start in ``[-0.3, 0.3]^2`` (their joints allow ±0.32 m)."""

MIN_CUBE_TO_GOAL = 0.15
"""Smallest start distance (m) between the cube and goal centres."""

MIN_PUSHER_TO_CUBE = 0.1
"""Smallest start distance (m) between the pusher and cube centres (they touch at 0.065 m)."""


class PushEnv(MultiCameraMujocoEnv):
    r"""A ball-shaped pusher shoves a cube onto a goal disc on the floor.

    ## Description
    A walled 0.7 m x 0.7 m arena on the floor holds a blue pusher ball (radius 0.03 m), an orange
    cube (0.07 m sides) and a green goal disc (radius 0.05 m). Two motors move the pusher in x and
    y; its joints are damped so strongly that an action acts as a velocity command (top speed
    0.5 m/s). The cube slides and turns in the floor plane (slide x, slide y, hinge z) against dry
    friction, so it moves only while pushed and never tips. The goal is a mocap body that nothing
    touches. The MJCF is ``envs/assets/push.xml``; in it, joint positions are world coordinates.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``: forces on the pusher.

    | Num | Action              | Min | Max | Name (in the MJCF) | Type (Unit)          |
    |-----|---------------------|-----|-----|--------------------|----------------------|
    | 0   | force along world x | -1  | 1   | pusher_x           | force (5 N), slide   |
    | 1   | force along world y | -1  | 1   | pusher_y           | force (5 N), slide   |

    ## Observation Space
    With ``obs_mode="pixels"`` (the default), a ``Dict``:

    - ``cam_front``, ``cam_side``, ``cam_top``: ``Box(0, 255, (64, 64, 3), uint8)`` images from a
      camera in front of the arena looking 50° down, one to its side looking 40° down, and one
      straight above it (the MJCF camera ``top``). Each shows the whole arena.
    - ``state``: ``Box(low, high, (4,), float32)``, the pusher's proprioception: its x and y (m)
      and velocities (m/s, clipped to ±1). The cube and the goal are only seen.

    With ``obs_mode="state"``: ``Box(-100, 100, (13,), float32)``: pusher x, y; pusher velocity
    x, y; cube x, y; ``cos(4 yaw)``, ``sin(4 yaw)`` of the cube (its orientation up to its
    90° symmetry); cube velocity x, y and yaw rate; goal x, y.

    ## Rewards
    ``reward = reward_dist + reward_near + reward_ctrl`` (the terms of Gymnasium's Pusher), all in
    ``info``:

    - ``reward_dist = -||cube - goal||``, horizontal distance (m) of the cube centre from the goal
      centre;
    - ``reward_near = -0.5 * ||pusher - cube||``, horizontal distance (m) of the pusher centre from
      the cube centre;
    - ``reward_ctrl = -0.01 * ||action||^2``.

    ## Success
    ``info["is_success"]`` is true when the cube centre is inside the goal disc:
    ``||cube - goal|| < 0.05`` m.

    ## Starting State
    The cube centre is uniform in ``[-0.2, 0.2]^2`` with a uniform yaw; the goal centre is uniform
    in ``[-0.25, 0.25]^2`` at least 0.15 m from the cube; the pusher is uniform in
    ``[-0.3, 0.3]^2`` at least 0.1 m from the cube centre. Everything starts at rest.

    ## Episode End
    No termination; the episode is truncated after 150 steps (7.5 s at 20 Hz control: physics at
    100 Hz, 5 physics steps per action).

    ## Keypoints
    ``pusher`` (ball centre), ``cube`` (cube centre) and ``goal`` (disc centre, on the floor); no
    limbs.

    ## Arguments
    Only those of :class:`~envs.base.MultiCameraMujocoEnv`: ``cameras``, ``size``, ``obs_mode``,
    ``render_mode``.

    ## Version History
    * v0: initial version.
    """

    xml_file = "push.xml"
    frame_skip = 5
    default_cameras = (
        CameraSpec.free(
            "front", lookat=(0.0, 0.0, 0.0), distance=1.3, azimuth=90.0, elevation=-50.0
        ),
        CameraSpec.free(
            "side", lookat=(0.0, 0.0, 0.0), distance=1.35, azimuth=0.0, elevation=-40.0
        ),
        CameraSpec.named("top"),
    )
    robot_joints = ("pusher_x", "pusher_y")
    max_joint_velocity = 1.0
    keypoints = (
        KeypointSpec("pusher", "kp_pusher"),
        KeypointSpec("cube", "kp_cube"),
        KeypointSpec("goal", "kp_goal"),
    )
    limbs = ()
    max_episode_steps = 150
    normalising_length = 0.07
    """The cube's side (m): the scale of the object being pushed (an error of one cube side
    puts the pusher beside the cube instead of on it)."""

    # -- physics queries ----------------------------------------------------------------------
    def pusher_xy(self) -> np.ndarray:
        """``(2,)`` horizontal position of the pusher centre (m)."""
        return self.data.site("kp_pusher").xpos[:2].copy()

    def cube_xy(self) -> np.ndarray:
        """``(2,)`` horizontal position of the cube centre (m)."""
        return self.data.site("kp_cube").xpos[:2].copy()

    def goal_xy(self) -> np.ndarray:
        """``(2,)`` horizontal position of the goal centre (m)."""
        return self.data.site("kp_goal").xpos[:2].copy()

    def cube_to_goal_distance(self) -> float:
        """Horizontal distance between the cube and goal centres (m)."""
        return float(np.linalg.norm(self.goal_xy() - self.cube_xy()))

    def pusher_to_cube_distance(self) -> float:
        """Horizontal distance between the pusher and cube centres (m)."""
        return float(np.linalg.norm(self.cube_xy() - self.pusher_xy()))

    # -- task ---------------------------------------------------------------------------------
    def reset_task(self) -> None:
        rng = self.np_random
        cube = rng.uniform(-CUBE_RANGE, CUBE_RANGE, size=2)
        goal = rng.uniform(-GOAL_RANGE, GOAL_RANGE, size=2)
        while np.linalg.norm(goal - cube) < MIN_CUBE_TO_GOAL:
            goal = rng.uniform(-GOAL_RANGE, GOAL_RANGE, size=2)
        pusher = rng.uniform(-PUSHER_RANGE, PUSHER_RANGE, size=2)
        while np.linalg.norm(pusher - cube) < MIN_PUSHER_TO_CUBE:
            pusher = rng.uniform(-PUSHER_RANGE, PUSHER_RANGE, size=2)
        qpos = self.data.qpos
        qpos[self._qpos("pusher_x")], qpos[self._qpos("pusher_y")] = pusher
        qpos[self._qpos("cube_x")], qpos[self._qpos("cube_y")] = cube
        qpos[self._qpos("cube_yaw")] = rng.uniform(-np.pi, np.pi)
        self.data.mocap_pos[self.model.body("goal").mocapid[0], :2] = goal

    def task_state(self) -> np.ndarray:
        qvel = self.data.qvel
        yaw = self.data.qpos[self._qpos("cube_yaw")]
        return np.concatenate(
            [
                self.pusher_xy(),
                [qvel[self._dof("pusher_x")], qvel[self._dof("pusher_y")]],
                self.cube_xy(),
                [np.cos(4 * yaw), np.sin(4 * yaw)],
                [qvel[self._dof("cube_x")], qvel[self._dof("cube_y")], qvel[self._dof("cube_yaw")]],
                self.goal_xy(),
            ]
        )

    def task_reward(self, action: np.ndarray) -> tuple[float, dict[str, float]]:
        components = {
            "reward_dist": -self.cube_to_goal_distance(),
            "reward_near": -NEAR_WEIGHT * self.pusher_to_cube_distance(),
            "reward_ctrl": -CTRL_COST_WEIGHT * float(np.sum(np.square(action))),
        }
        return sum(components.values()), components

    def is_success(self) -> bool:
        return self.cube_to_goal_distance() < GOAL_RADIUS

    def _qpos(self, joint: str) -> int:
        return int(self.model.joint(joint).qposadr[0])

    def _dof(self, joint: str) -> int:
        return int(self.model.joint(joint).dofadr[0])
