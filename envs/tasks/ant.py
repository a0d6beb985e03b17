"""Ant: Gymnasium's Ant-v5 quadruped walking forward, seen by cameras that follow it
(``kp3d/Ant-v0``)."""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from envs.base import MultiCameraMujocoEnv
from envs.cameras import CameraSpec
from envs.keypoints import KeypointSpec

LEGS = (1, 2, 3, 4)
"""Leg numbers as in the MJCF's joint names ``hip_<leg>`` and ``ankle_<leg>``."""

TORSO_HEIGHT_BOUNDS = (0.0, 2.0)
"""Clip range of the torso height (m) in the proprioception."""

TORSO_LINEAR_VELOCITY_LIMIT = 10.0
"""Clip bound of the torso's linear velocity (m/s) in the proprioception."""

TORSO_ANGULAR_VELOCITY_LIMIT = 30.0
"""Clip bound of the torso's angular velocity (rad/s) in the proprioception."""


class AntEnv(MultiCameraMujocoEnv):
    r"""Gymnasium's Ant-v5 quadruped walks forward while three cameras follow it.

    ## Description
    The ant of Gymnasium's ``Ant-v5`` (a torso ball with four two-link legs, eight hinges; the
    model of ``envs/assets/ant.xml`` is Gymnasium's with keypoint sites added and cheaper
    rendering settings, and simulates identically). The goal is to move forward, in the +x
    direction. The cameras follow the ant, so their extrinsics change every step
    (``info["camera_extrinsics"]``). The reward, start state and termination are Ant-v5's.

    ## Action Space
    ``Box(-1, 1, (8,), float32)``: torques on the eight hinges, in Ant-v5's order.

    | Num | Action                           | Min | Max | Name (in the MJCF) | Type (Unit)      |
    |-----|----------------------------------|-----|-----|--------------------|------------------|
    | 0   | torque at leg 4's hip (on torso) | -1  | 1   | hip_4              | torque (150 N m) |
    | 1   | torque at leg 4's knee           | -1  | 1   | ankle_4            | torque (150 N m) |
    | 2   | torque at leg 1's hip (on torso) | -1  | 1   | hip_1              | torque (150 N m) |
    | 3   | torque at leg 1's knee           | -1  | 1   | ankle_1            | torque (150 N m) |
    | 4   | torque at leg 2's hip (on torso) | -1  | 1   | hip_2              | torque (150 N m) |
    | 5   | torque at leg 2's knee           | -1  | 1   | ankle_2            | torque (150 N m) |
    | 6   | torque at leg 3's hip (on torso) | -1  | 1   | hip_3              | torque (150 N m) |
    | 7   | torque at leg 3's knee           | -1  | 1   | ankle_3            | torque (150 N m) |

    Leg 1 points to (+x, +y) at rest, leg 2 to (-x, +y), leg 3 to (-x, -y), leg 4 to (+x, -y).

    ## Observation Space
    With ``obs_mode="pixels"`` (the default), a ``Dict``:

    - ``cam_back``, ``cam_front_left``, ``cam_front_right``: ``Box(0, 255, (64, 64, 3), uint8)``
      images from cameras 3.8 m from the ant's centre of mass, 30° above it, behind it (azimuth
      0°) and at azimuths 120° apart; they follow the centre of mass, not the ant's rotation.
    - ``state``: ``Box(low, high, (27,), float32)``, Ant-v5's observation without the contact
      forces, clipped: torso height (m, to [0, 2]), torso orientation quaternion (w, x, y, z), the
      eight hinge angles (rad, in the order hip_1, ankle_1, ..., hip_4, ankle_4), torso linear
      velocity (m/s, to ±10), torso angular velocity (rad/s, to ±30), the eight hinge velocities
      (rad/s, to ±30).

    With ``obs_mode="state"``: ``Box(-100, 100, (29,), float32)``: the torso's x and y (m), then
    the 27 values of the proprioception without their clipping (clipped to ±100 instead).

    ## Rewards
    As in Ant-v5, ``reward = reward_forward + reward_survive + reward_ctrl + reward_contact``, all
    in ``info``:

    - ``reward_forward = forward_reward_weight * dx / dt``, the torso's velocity along +x over the
      step (``dt = 0.05`` s);
    - ``reward_survive = healthy_reward`` while the ant is healthy, else 0;
    - ``reward_ctrl = -ctrl_cost_weight * ||action||^2``;
    - ``reward_contact = -contact_cost_weight * ||F||^2``, with ``F`` the external forces and
      torques on the bodies (``cfrc_ext``), clipped to ``contact_force_range``.

    ## Success
    ``info["is_success"]`` is true while the torso is at least ``success_distance`` (5 m by
    default, an average 0.5 m/s over a full episode) further along +x than where it started; a
    random policy rarely gets past 3 m.

    ## Starting State
    As in Ant-v5: the model's rest position (torso 0.75 m up, upright, all hinges at 0) plus
    uniform noise in ``[-reset_noise_scale, reset_noise_scale]`` on every position coordinate,
    and normal noise of standard deviation ``reset_noise_scale`` on every velocity coordinate.

    ## Episode End
    - Termination (when ``terminate_when_unhealthy``): the ant is unhealthy, i.e. its state is not
      finite or the torso height is outside ``healthy_z_range``.
    - Truncation: after 200 steps (10 s at 20 Hz control: physics at 100 Hz with RK4, 5 physics
      steps per action).

    ## Keypoints
    ``torso`` (the torso centre) and, for each leg i = 1..4, ``hip_<i>`` (the hip_i joint),
    ``knee_<i>`` (the ankle_i joint) and ``foot_<i>`` (the end of the lower leg); limbs
    torso-hip, hip-knee and knee-foot of each leg.

    ## Arguments
    Those of :class:`~envs.base.MultiCameraMujocoEnv` (``cameras``, ``size``, ``obs_mode``,
    ``render_mode``) and:

    | Parameter                  | Type  | Default      | Description                         |
    |----------------------------|-------|--------------|-------------------------------------|
    | `forward_reward_weight`    | float | `1`          | weight of ``reward_forward``        |
    | `ctrl_cost_weight`         | float | `0.5`        | weight of the control cost          |
    | `contact_cost_weight`      | float | `5e-4`       | weight of the contact cost          |
    | `healthy_reward`           | float | `1`          | ``reward_survive`` per healthy step |
    | `terminate_when_unhealthy` | bool  | `True`       | end the episode when unhealthy      |
    | `healthy_z_range`          | tuple | `(0.2, 1.0)` | healthy torso heights (m)           |
    | `contact_force_range`      | tuple | `(-1, 1)`    | clip range of the contact forces    |
    | `reset_noise_scale`        | float | `0.1`        | scale of the start-state noise      |
    | `success_distance`         | float | `5.0`        | forward progress (m) for success    |

    ## Version History
    * v0: initial version (Ant-v5's model, reward, start state and termination).
    """

    xml_file = "ant.xml"
    frame_skip = 5
    default_cameras = (
        CameraSpec.tracking("back", body="torso", distance=3.8, azimuth=0.0, elevation=-30.0),
        CameraSpec.tracking(
            "front_left", body="torso", distance=3.8, azimuth=240.0, elevation=-30.0
        ),
        CameraSpec.tracking(
            "front_right", body="torso", distance=3.8, azimuth=120.0, elevation=-30.0
        ),
    )
    robot_joints = tuple(f"{kind}_{leg}" for leg in LEGS for kind in ("hip", "ankle"))
    max_joint_velocity = 30.0
    keypoints = (
        KeypointSpec("torso", "kp_torso"),
        *(
            KeypointSpec(f"{part}_{leg}", f"kp_{part}_{leg}")
            for leg in LEGS
            for part in ("hip", "knee", "foot")
        ),
    )
    limbs = tuple(
        pair
        for leg in LEGS
        for pair in (
            ("torso", f"hip_{leg}"),
            (f"hip_{leg}", f"knee_{leg}"),
            (f"knee_{leg}", f"foot_{leg}"),
        )
    )
    max_episode_steps = 200
    learned_keypoints = 16
    normalising_length = 0.5
    """The torso's diameter (m, a sphere of radius 0.25): the body's size, as a person's torso
    normalises PCK; a leg's segments are 0.28 m and 0.57 m long."""

    def __init__(
        self,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.5,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        success_distance: float = 5.0,
        **kwargs: Any,
    ) -> None:
        if healthy_z_range[0] >= healthy_z_range[1]:
            raise ValueError(
                f"healthy_z_range must be (low, high) with low < high; got {healthy_z_range}"
            )
        if contact_force_range[0] >= contact_force_range[1]:
            raise ValueError(
                f"contact_force_range must be (low, high) with low < high; "
                f"got {contact_force_range}"
            )
        if reset_noise_scale < 0:
            raise ValueError(f"reset_noise_scale must be >= 0; got {reset_noise_scale}")
        self.forward_reward_weight = forward_reward_weight
        self.ctrl_cost_weight = ctrl_cost_weight
        self.contact_cost_weight = contact_cost_weight
        self.healthy_reward = healthy_reward
        self.terminate_when_unhealthy = terminate_when_unhealthy
        self.healthy_z_range = healthy_z_range
        self.contact_force_range = contact_force_range
        self.reset_noise_scale = reset_noise_scale
        self.success_distance = success_distance
        self._start_x = 0.0
        self._previous_x = 0.0
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None
        super().__init__(**kwargs)

    # -- physics queries ----------------------------------------------------------------------
    def torso_x(self) -> float:
        """Position of the torso along +x (m)."""
        return float(self.data.qpos[0])

    def is_healthy(self) -> bool:
        """Ant-v5's health: a finite state and the torso height within ``healthy_z_range``."""
        low, high = self.healthy_z_range
        finite = np.isfinite(self.data.qpos).all() and np.isfinite(self.data.qvel).all()
        return bool(finite and low <= self.data.qpos[2] <= high)

    def contact_forces(self) -> np.ndarray:
        """``(nbody - 1, 6)`` external forces and torques on the bodies, clipped as in Ant-v5."""
        # mj_step does not compute cfrc_ext unless a sensor needs it (Gymnasium calls this too).
        mujoco.mj_rnePostConstraint(self.model, self.data)
        return np.clip(self.data.cfrc_ext[1:], *self.contact_force_range)

    # -- task ---------------------------------------------------------------------------------
    def reset_task(self) -> None:
        scale = self.reset_noise_scale
        rng = self.np_random
        self.data.qpos[:] = self.model.qpos0 + rng.uniform(-scale, scale, size=self.model.nq)
        self.data.qvel[:] = scale * rng.standard_normal(self.model.nv)
        self._start_x = self._previous_x = self.torso_x()

    def task_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def proprioception(self) -> np.ndarray:
        low, high = self.proprioception_bounds()
        state = np.concatenate([self.data.qpos[2:], self.data.qvel])
        return np.clip(state, low, high).astype(np.float32)

    def proprioception_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self._bounds is None:
            # The base class bounds the hinges (angles within their ranges, velocities by
            # max_joint_velocity); add the torso's height, orientation and velocities to them.
            joints_low, joints_high = super().proprioception_bounds()
            hinges = len(self.robot_joints)
            linear = np.full(3, TORSO_LINEAR_VELOCITY_LIMIT)
            angular = np.full(3, TORSO_ANGULAR_VELOCITY_LIMIT)
            low = np.concatenate(
                [
                    [TORSO_HEIGHT_BOUNDS[0]],
                    -np.ones(4),
                    joints_low[:hinges],
                    -linear,
                    -angular,
                    joints_low[hinges:],
                ]
            )
            high = np.concatenate(
                [
                    [TORSO_HEIGHT_BOUNDS[1]],
                    np.ones(4),
                    joints_high[:hinges],
                    linear,
                    angular,
                    joints_high[hinges:],
                ]
            )
            self._bounds = (low.astype(np.float32), high.astype(np.float32))
        return self._bounds

    def task_reward(self, action: np.ndarray) -> tuple[float, dict[str, float]]:
        # The base class calls this once per step, after simulating it: the torso's x from the
        # previous call (or from the reset) is its position before the step.
        x = self.torso_x()
        velocity = (x - self._previous_x) / self.dt
        self._previous_x = x
        components = {
            "reward_forward": self.forward_reward_weight * velocity,
            "reward_ctrl": -self.ctrl_cost_weight * float(np.sum(np.square(action))),
            "reward_contact": -self.contact_cost_weight
            * float(np.sum(np.square(self.contact_forces()))),
            "reward_survive": self.healthy_reward * self.is_healthy(),
        }
        return sum(components.values()), components

    def is_success(self) -> bool:
        return self.torso_x() - self._start_x >= self.success_distance

    def is_terminated(self) -> bool:
        return self.terminate_when_unhealthy and not self.is_healthy()
