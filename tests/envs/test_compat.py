"""Every supported MuJoCo release (:mod:`envs.compat`).

The whole of ``tests/envs`` also runs on MuJoCo 3.3 (which Meta-World pins) in the virtualenv of
``make test-metaworld``. Here, the 3.3 behaviours are also imitated on whichever release is
installed, so that the main test run checks the shim too.
"""

from __future__ import annotations

import types

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs  # noqa: F401
from envs import compat
from envs.cameras import Cameras, CameraSpec

# The first lines of mj_multiRay's docstring: MuJoCo 3.3.0, and a release with the normal argument.
MULTIRAY_3_3 = (
    "mj_multiRay(m: mujoco._structs.MjModel, d: mujoco._structs.MjData, pnt: numpy.ndarray["
    "numpy.float64[3, 1]], vec: numpy.ndarray[numpy.float64[m, 1]], geomgroup: Optional[numpy."
    "ndarray[numpy.uint8[6, 1]]], flg_static: int, bodyexclude: int, geomid: numpy.ndarray[numpy."
    "int32[m, 1], flags.writeable], dist: numpy.ndarray[numpy.float64[m, 1], flags.writeable], "
    "nray: int, cutoff: float) -> None\n\nIntersect multiple rays emanating from a single point."
)
MULTIRAY_4_0 = (
    "mj_multiRay(m: mujoco._structs.MjModel, d: mujoco._structs.MjData, pnt: ..., vec: ..., "
    "geomgroup: ... | None, flg_static: bool, bodyexclude: ..., geomid: ..., dist: ..., normal: "
    "typing.Annotated[numpy.typing.NDArray[numpy.float64], '[m, 1]', 'flags.writeable'] | None, "
    "nray: ..., cutoff: ...) -> None\n\nIntersect multiple rays emanating from a single point."
)


def fake_function(doc: str) -> types.FunctionType:
    def function(*args: object) -> None:
        pass

    function.__doc__ = doc
    return function


def model_with_an_orthographic_camera() -> mujoco.MjModel:
    """Cameras ``pinhole`` and ``ortho``, in the MJCF syntax of the installed release."""
    for attribute in ('projection="orthographic"', 'orthographic="true"'):  # later, 3.3
        xml = (
            '<mujoco><worldbody><camera name="pinhole"/>'
            f'<camera name="ortho" {attribute} fovy="1"/></worldbody></mujoco>'
        )
        try:
            return mujoco.MjModel.from_xml_string(xml)
        except ValueError:
            continue
    raise AssertionError("this MuJoCo knows neither syntax of orthographic cameras")


def test_orthographic_cameras_are_recognised() -> None:
    model = model_with_an_orthographic_camera()
    assert [compat.camera_is_orthographic(model, i) for i in range(2)] == [False, True]
    # Both layouts of the model, whichever release is installed.
    old = types.SimpleNamespace(cam_orthographic=np.array([0, 1], dtype=np.uint8))
    new = types.SimpleNamespace(cam_projection=np.array([0, 1], dtype=np.int32))
    for fake in (old, new):
        assert [compat.camera_is_orthographic(fake, i) for i in range(2)] == [False, True]
    with pytest.raises(ValueError, match="orthographic"):
        Cameras(model, [CameraSpec.named("ortho")])
    Cameras(model, [CameraSpec.named("pinhole")])


def test_multi_ray_signature_is_read_from_the_binding() -> None:
    assert not compat.multi_ray_takes_normal(fake_function(MULTIRAY_3_3))
    assert compat.multi_ray_takes_normal(fake_function(MULTIRAY_4_0))
    # The installed binding is read the same way: it must accept what multi_ray passes it.
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><geom name="wall" type="box" size="0.1 1 1" pos="1 0 0"/>'
        "</worldbody></mujoco>"
    )
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    directions = np.array([[1.0, 0, 0], [-1.0, 0, 0], [1.0, 0.1, 0]])
    geom_ids, distances = np.empty(3, np.int32), np.empty(3)
    compat.multi_ray(
        model, data, np.zeros(3), directions.ravel(), None, True, -1, geom_ids, distances, 3, 10.0
    )
    for ray, direction in enumerate(directions):
        geom = np.empty(1, np.int32)
        expected = mujoco.mj_ray(model, data, np.zeros(3), direction, None, True, -1, geom)
        assert geom_ids[ray] == geom[0]
        assert distances[ray] == pytest.approx(expected)
    assert geom_ids.tolist() == [0, -1, 0]


def multi_ray_of_mujoco_3_3(real):
    """``mj_multiRay`` as MuJoCo 3.3 binds it: no ``normal`` argument."""

    def mj_multiRay(m, d, pnt, vec, geomgroup, flg_static, bodyexclude, geomid, dist, nray, cutoff):  # noqa: N802
        arguments = [m, d, pnt, vec, geomgroup, flg_static, bodyexclude, geomid, dist]
        if compat.multi_ray_takes_normal(real):
            arguments.append(None)
        real(*arguments, nray, cutoff)

    mj_multiRay.__doc__ = MULTIRAY_3_3
    return mj_multiRay


def rollout_visibility(env_id: str, steps: int = 5) -> list[np.ndarray]:
    env = gym.make(env_id, obs_mode="state")
    try:
        env.action_space.seed(0)
        _, info = env.reset(seed=0)
        visible = [info["keypoints_visible"]]
        for _ in range(steps):
            _, _, _, _, info = env.step(env.action_space.sample())
            visible.append(info["keypoints_visible"])
        return visible
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["kp3d/Reach-v0", "kp3d/Ant-v0"])
def test_envs_cast_occlusion_rays_with_the_mujoco_3_3_function(
    env_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = rollout_visibility(env_id)
    monkeypatch.setattr(mujoco, "mj_multiRay", multi_ray_of_mujoco_3_3(mujoco.mj_multiRay))
    got = rollout_visibility(env_id)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    assert not np.concatenate(expected).all() if env_id == "kp3d/Ant-v0" else True


def update_camera_of_mujoco_3_3(real):
    """``mjv_updateCamera`` as MuJoCo 3.3 has it: each call moves a tracking camera's look-at
    point only a fifth of the way to the tracked body (a viewer's smoothing filter)."""

    def mjv_updateCamera(m, d, cam, scn):  # noqa: N802
        if cam.type != mujoco.mjtCamera.mjCAMERA_TRACKING:
            return real(m, d, cam, scn)
        lookat = cam.lookat + 0.2 * (d.subtree_com[cam.trackbodyid] - cam.lookat)
        orbit = mujoco.MjvCamera()  # a free camera orbits its look-at point as a tracking one
        orbit.type = mujoco.mjtCamera.mjCAMERA_FREE
        orbit.lookat[:] = lookat
        orbit.distance, orbit.azimuth, orbit.elevation = cam.distance, cam.azimuth, cam.elevation
        real(m, d, orbit, scn)
        cam.lookat[:] = lookat

    return mjv_updateCamera


@pytest.mark.parametrize("imitate_3_3", [False, True])
def test_tracking_cameras_are_placed_on_their_body_by_every_update(
    imitate_3_3: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body name="target" mocap="true" pos="0.3 0 0">'
        '<geom type="sphere" size="0.05"/></body></worldbody></mujoco>'
    )
    data = mujoco.MjData(model)
    if imitate_3_3:
        monkeypatch.setattr(
            mujoco, "mjv_updateCamera", update_camera_of_mujoco_3_3(mujoco.mjv_updateCamera)
        )
    spec = CameraSpec.tracking("follow", body="target", distance=2.0, elevation=-30.0)
    cameras = Cameras(model, [spec, CameraSpec.free("fixed", distance=2.0)], 32)
    for position in ([0.3, 0.0, 0.0], [0.5, -0.2, 0.1], [-0.4, 0.3, 0.2]):
        data.mocap_pos[0] = position
        mujoco.mj_forward(model, data)
        cameras.update(data)
        first = cameras.extrinsics
        cameras.update(data)  # a second placement (as every render makes) changes nothing
        np.testing.assert_array_equal(cameras.extrinsics, first)
        # The camera looks at the body from 2 m.
        centre = cameras.centres[0]
        assert np.linalg.norm(centre - data.subtree_com[1]) == pytest.approx(2.0, abs=1e-5)
        np.testing.assert_allclose(cameras.mjv_camera(0).lookat, data.subtree_com[1])
        forward = first[0, 2, :3]
        np.testing.assert_allclose(forward, (data.subtree_com[1] - centre) / 2.0, atol=1e-5)
