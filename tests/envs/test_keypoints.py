"""Ground-truth keypoints (:mod:`envs.keypoints`): positions, pixels and ray-cast visibility,
checked against segmentation renders."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from envs.cameras import Cameras, CameraSpec
from envs.keypoints import Keypoints, KeypointSpec
from envs.rendering import MultiViewRenderer
from kp3d import geometry

# The named camera "front_cam" looks along +y from (0, -2, 0.5); the free camera "back_cam" looks
# along -y from (0, 2, 0.5). The box "front" stands between front_cam and the box "back", so each
# camera sees one of the two and not the other.
SCENE_XML = """
<mujoco model="two_boxes">
  <visual><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="5 5 0.1" rgba="0.5 0.5 0.5 1"/>
    <camera name="front_cam" pos="0 -2 0.5" xyaxes="1 0 0 0 0 1" fovy="45"/>
    <body name="front" pos="0 -1 0.5">
      <geom name="front" type="box" size="0.15 0.15 0.15" rgba="0.9 0.2 0.2 1"/>
    </body>
    <body name="back" pos="0 0 0.5">
      <geom name="back" type="box" size="0.1 0.1 0.1" rgba="0.2 0.9 0.2 1"/>
    </body>
    <body name="side" pos="0.6 0 0.5">
      <geom name="side" type="box" size="0.1 0.1 0.1" rgba="0.2 0.2 0.9 1"/>
      <!-- The lid's origin lies on the top face of its parent, "side". -->
      <body name="lid" pos="0 0 0.1">
        <geom name="lid" type="box" pos="0 0 0.01" size="0.1 0.1 0.01" rgba="0.9 0.9 0.2 1"/>
      </body>
    </body>
    <!-- Never rendered (group 3), so it must not hide "side" from front_cam. -->
    <body name="ghost" pos="0.3 -1 0.5">
      <geom name="ghost" type="sphere" size="0.1" group="3"/>
    </body>
    <body name="buried" pos="-0.4 0 -0.15">
      <geom name="buried" type="sphere" size="0.05" rgba="1 0 1 1"/>
    </body>
    <body name="far_out" pos="3 0 0.5">
      <geom type="sphere" size="0.05"/>
    </body>
    <body name="behind" pos="0 -3 0.5">
      <geom type="sphere" size="0.05"/>
    </body>
  </worldbody>
</mujoco>"""

NAMES = ("front", "back", "side", "lid", "ghost", "buried", "far_out", "behind")
EXPECTED_VISIBLE = {
    # keypoint:  (front_cam, back_cam)
    "front": (True, False),  # behind "back" for back_cam
    "back": (False, True),  # behind "front" for front_cam
    "side": (True, True),  # the group-3 ghost does not occlude
    "lid": (True, True),  # on its parent's surface
    "ghost": (True, True),  # a body without rendered geoms, in plain view
    "buried": (False, False),  # under the floor
    "far_out": (False, False),  # outside both images
    "behind": (False, False),  # behind front_cam; hidden by both boxes for back_cam
}
SIZE = (64, 96)


@pytest.fixture(scope="module")
def scene():
    model = mujoco.MjModel.from_xml_string(SCENE_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    cameras = Cameras(
        model,
        [
            CameraSpec.named("front_cam"),
            CameraSpec.free(
                "back_cam", lookat=(0, 0, 0.5), distance=2.0, azimuth=-90.0, elevation=0.0
            ),
        ],
        SIZE,
    )
    cameras.update(data)
    renderer = MultiViewRenderer(model, cameras)
    yield model, data, cameras, renderer
    renderer.close()


@pytest.fixture(scope="module")
def keypoints(scene) -> Keypoints:
    return Keypoints.from_bodies(scene[0], NAMES)


def body_at(model: mujoco.MjModel, segmentation: np.ndarray, pixel: np.ndarray) -> int:
    """Body whose geom covers the pixel containing the continuous coordinates ``pixel`` (-1 for
    none)."""
    column, row = np.floor(pixel).astype(int)
    geom, kind = segmentation[row, column]
    if geom < 0:
        return -1
    assert kind == mujoco.mjtObj.mjOBJ_GEOM
    return int(model.geom_bodyid[geom])


def test_ground_truth_shapes_and_values(scene, keypoints) -> None:
    model, data, cameras, _ = scene
    truth = keypoints.ground_truth(data, cameras)
    J, C = len(NAMES), len(cameras)
    assert keypoints.names == NAMES and len(keypoints) == J
    expected_shapes = {
        "keypoints_world": (J, 3),
        "keypoints_pixels": (C, J, 2),
        "keypoints_depth": (C, J),
        "keypoints_visible": (C, J),
        "camera_intrinsics": (C, 3, 3),
        "camera_extrinsics": (C, 4, 4),
    }
    assert {key: value.shape for key, value in truth.items()} == expected_shapes
    assert truth["keypoints_visible"].dtype == bool
    bodies = [model.body(name).id for name in NAMES]
    np.testing.assert_array_equal(truth["keypoints_world"], data.xpos[bodies])
    pixels, depth = geometry.project(data.xpos[bodies], cameras.intrinsics, cameras.extrinsics)
    np.testing.assert_allclose(truth["keypoints_pixels"], pixels)
    np.testing.assert_allclose(truth["keypoints_depth"], depth)
    np.testing.assert_array_equal(truth["camera_intrinsics"], cameras.intrinsics)
    np.testing.assert_array_equal(truth["camera_extrinsics"], cameras.extrinsics)
    # The returned arrays are the caller's: changing them does not change the next ground truth.
    truth["keypoints_world"][:] = 0.0
    np.testing.assert_array_equal(keypoints.world(data), data.xpos[bodies])


def test_visibility_table(scene, keypoints) -> None:
    _, data, cameras, _ = scene
    visible = keypoints.ground_truth(data, cameras)["keypoints_visible"]
    expected = np.array([EXPECTED_VISIBLE[name] for name in NAMES]).T
    for c, camera in enumerate(cameras.names):
        for j, name in enumerate(NAMES):
            assert visible[c, j] == expected[c, j], f"{name} in {camera}"


def test_visible_keypoints_lie_on_their_body(scene, keypoints) -> None:
    """Every visible keypoint's pixel shows its own body (or the parent it sits on); every
    occluded keypoint inside the image shows another body."""
    model, data, cameras, renderer = scene
    truth = keypoints.ground_truth(data, cameras)
    segmentation = renderer.render_segmentation(data)
    checked_hidden = 0
    for c in range(len(cameras)):
        for j, name in enumerate(NAMES):
            pixel, depth = truth["keypoints_pixels"][c, j], truth["keypoints_depth"][c, j]
            in_image = depth > 0 and 0 <= pixel[0] < SIZE[1] and 0 <= pixel[1] < SIZE[0]
            body = model.body(name).id
            own = {body, int(model.body_parentid[body])} - {0}  # the world never stands for one
            if name == "ghost":
                continue  # nothing of it is drawn: what shows is what lies behind it
            shown = body_at(model, segmentation[c], pixel) if in_image else None
            if truth["keypoints_visible"][c, j]:
                assert shown in own, f"{name} in {cameras.names[c]} shows body {shown}"
            elif in_image:
                assert shown not in own, f"{name} in {cameras.names[c]} shows its own body"
                checked_hidden += 1
    assert checked_hidden >= 4  # back, front, buried (x2), behind in back_cam


def test_occluders_are_named(scene, keypoints) -> None:
    model, data, cameras, renderer = scene
    truth = keypoints.ground_truth(data, cameras)
    segmentation = renderer.render_segmentation(data)
    pixels = truth["keypoints_pixels"]
    index = {name: j for j, name in enumerate(NAMES)}
    front_cam, back_cam = cameras.index("front_cam"), cameras.index("back_cam")
    assert (
        body_at(model, segmentation[front_cam], pixels[front_cam, index["back"]])
        == model.body("front").id
    )
    assert (
        body_at(model, segmentation[back_cam], pixels[back_cam, index["front"]])
        == model.body("back").id
    )
    for camera in (front_cam, back_cam):
        assert body_at(model, segmentation[camera], pixels[camera, index["buried"]]) == 0  # floor


def test_outside_image_and_behind_camera(scene, keypoints) -> None:
    _, data, cameras, _ = scene
    truth = keypoints.ground_truth(data, cameras)
    far_out, behind = NAMES.index("far_out"), NAMES.index("behind")
    front_cam = cameras.index("front_cam")
    assert np.all(truth["keypoints_depth"][:, far_out] > 0)
    u = truth["keypoints_pixels"][:, far_out, 0]
    assert np.all((u < 0) | (u > SIZE[1]))
    assert truth["keypoints_depth"][front_cam, behind] < 0
    assert not truth["keypoints_visible"][:, [far_out]].any()
    assert not truth["keypoints_visible"][front_cam, behind]


def test_image_border_counts_as_outside(scene) -> None:
    """Keypoints exactly at u = W or v = H are outside; at u = 0 or v = 0 inside."""
    model, data, cameras, _ = scene
    keypoints = Keypoints.from_bodies(model, ["ghost"])
    points = data.xpos[[model.body("ghost").id]]
    depth = np.ones((len(cameras), 1))
    for pixel, inside in (
        ((0.0, 10.0), True),
        ((10.0, 0.0), True),
        ((SIZE[1], 10.0), False),
        ((10.0, SIZE[0]), False),
        ((-1e-9, 10.0), False),
    ):
        pixels = np.broadcast_to(np.array(pixel), (len(cameras), 1, 2))
        visible = keypoints.visibility(data, cameras, points, pixels, depth)
        assert visible.shape == (len(cameras), 1)
        assert np.all(visible == inside), pixel


def test_ray_cast_visibility_agrees_with_segmentation() -> None:
    """Randomly placed boxes: wherever the keypoint's pixel is not on an object's edge, the ray
    cast says visible exactly when the segmentation shows the keypoint's own body."""
    xml = (
        """
<mujoco>
  <visual><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <geom name="floor" type="plane" size="3 3 0.1"/>
    <camera name="cam" pos="0 -2 1.2" xyaxes="1 0 0 0 0.6 0.8" fovy="50"/>
    """
        + "\n".join(
            f'<body name="box{i}" mocap="true"><geom type="box" size="0.08 0.06 0.1"/></body>'
            for i in range(6)
        )
        + """
  </worldbody>
</mujoco>"""
    )
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    cameras = Cameras(
        model,
        [
            CameraSpec.named("cam"),
            CameraSpec.free(
                "free", lookat=(0, 0, 0.1), distance=1.8, azimuth=50, elevation=-35, fovy=55
            ),
        ],
        (80, 96),
    )
    keypoints = Keypoints.from_bodies(model)
    renderer = MultiViewRenderer(model, cameras)
    rng = np.random.default_rng(0)
    compared = hidden = 0
    try:
        for _ in range(8):
            data.mocap_pos[:] = rng.uniform([-0.5, -0.5, 0.1], [0.5, 0.5, 0.3], size=(6, 3))
            mujoco.mj_forward(model, data)
            cameras.update(data)
            truth = keypoints.ground_truth(data, cameras)
            segmentation = renderer.render_segmentation(data)[..., 0]
            for c in range(len(cameras)):
                for j, body in enumerate(range(1, model.nbody)):
                    column, row = np.floor(truth["keypoints_pixels"][c, j]).astype(int)
                    if not (1 <= column < 95 and 1 <= row < 79):
                        assert (
                            not truth["keypoints_visible"][c, j]
                            or column in (0, 95)
                            or row in (0, 79)
                        )
                        continue
                    window = segmentation[c, row - 1 : row + 2, column - 1 : column + 2]
                    if np.any(window != window[1, 1]):
                        continue  # an edge: rasterisation and ray may disagree
                    shows_own = model.geom_bodyid[window[1, 1]] == body
                    assert truth["keypoints_visible"][c, j] == shows_own
                    compared += 1
                    hidden += not shows_own
    finally:
        renderer.close()
    assert compared > 60 and hidden > 3


def test_from_bodies_default_and_skeleton() -> None:
    model = mujoco.MjModel.from_xml_string(SCENE_XML)
    everything = Keypoints.from_bodies(model)
    assert everything.names == tuple(model.body(i).name for i in range(1, model.nbody))
    # Limbs go from parent to child.
    names = everything.names
    assert [(names[a], names[b]) for a, b in everything.skeleton] == [("side", "lid")]
    chosen = Keypoints.from_bodies(model, ["lid", "front"])
    assert chosen.skeleton.shape == (0, 2)  # lid's parent is not a keypoint
    np.testing.assert_array_equal(chosen.instances, [0, 0])


def test_from_specs_sites() -> None:
    model = mujoco.MjModel.from_xml_string("""
<mujoco><worldbody>
  <body name="a" pos="0 0 1"><geom size="0.1"/><site name="tip" pos="0.1 0 0"/>
    <body name="b" pos="0 0 0.5"><geom size="0.1"/><site name="end"/></body>
  </body>
</worldbody></mujoco>""")
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    keypoints = Keypoints.from_specs(
        model,
        [KeypointSpec("tip", "tip"), KeypointSpec("end", "end", instance=2)],
        limbs=[("tip", "end")],
    )
    np.testing.assert_allclose(keypoints.world(data), [[0.1, 0, 1], [0, 0, 1.5]])
    np.testing.assert_array_equal(keypoints.instances, [0, 2])
    np.testing.assert_array_equal(keypoints.skeleton, [[0, 1]])


def test_bad_input() -> None:
    model = mujoco.MjModel.from_xml_string(SCENE_XML)
    with pytest.raises(ValueError, match=r"no body 'nope'.*'front', 'back'"):
        Keypoints.from_bodies(model, ["front", "nope"])
    with pytest.raises(ValueError, match="either sites or bodies"):
        Keypoints(model, ["a"])
    with pytest.raises(ValueError, match="either sites or bodies"):
        Keypoints(model, ["a"], sites=[0], bodies=[1])
    with pytest.raises(ValueError, match="no site 'missing'"):
        Keypoints.from_specs(model, [KeypointSpec("k", "missing")])
    site_model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><body name="a"><geom size="0.1"/><site name="s"/></body>'
        "</worldbody></mujoco>"
    )
    with pytest.raises(ValueError, match=r"unique; got \['k', 'k'\]"):
        Keypoints.from_specs(site_model, [KeypointSpec("k", "s"), KeypointSpec("k", "s")])
    with pytest.raises(ValueError, match=r"unknown keypoints \['z'\]"):
        Keypoints.from_specs(site_model, [KeypointSpec("k", "s")], limbs=[("k", "z")])
    with pytest.raises(ValueError, match=r"keypoint 'k': no body 'nobody'"):
        Keypoints.from_specs(site_model, [KeypointSpec("k", "s", bodies=("nobody",))])
