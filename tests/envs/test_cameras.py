"""Camera geometry against what MuJoCo renders (:mod:`envs.cameras`).

The central check: a small emissive sphere, lit by nothing else on a black background, renders as
a disc whose intensity-weighted centroid must land where :meth:`Cameras.project` (through
:mod:`kp3d.geometry`) says, to a fraction of a pixel, for named, free and tracking cameras, several
image sizes (square and not) and several fields of view.
"""

from __future__ import annotations

# isort: off
# First: `import envs` sets MUJOCO_GL when unset, and mujoco.Renderer (used here as the reference)
# takes its GL backend from MUJOCO_GL when mujoco is first imported.
import envs  # noqa: F401
# isort: on

import copy
import math
import pickle
import re

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from envs.cameras import Cameras, CameraSpec, look_at_free_camera, parse_size
from envs.rendering import MultiViewRenderer, tile_views
from kp3d import geometry

BALL_RADIUS = 0.05
SIZES = [(64, 64), (96, 128), (128, 80)]  # (height, width)
FOVYS = (30.0, 45.0, 70.0)
# Each field of view at its own distance, so that the ball covers a similar number of pixels.
DISTANCES = {30.0: 2.0, 45.0: 1.3, 70.0: 0.9}
NAMED_VIEWS = {  # name: (fovy, azimuth, elevation) around the origin
    "near70": (70.0, 20.0, -35.0),
    "mid45": (45.0, 140.0, -20.0),
    "far30": (30.0, 250.0, -50.0),
}
FREE_VIEWS = {
    "free30": (30.0, 75.0, -30.0),
    "free45": (45.0, 200.0, 15.0),  # from below
    "free70": (70.0, 310.0, -60.0),
}
RIG_POSITION = np.array([0.0, -1.2, 0.6])


def eye_from_orbit(distance: float, azimuth: float, elevation: float) -> np.ndarray:
    """Where MuJoCo puts a free camera with these orbit parameters around the origin."""
    az, el = math.radians(azimuth), math.radians(elevation)
    forward = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return -distance * forward


def mjcf_camera(name: str, eye: np.ndarray, target: np.ndarray, fovy: float) -> str:
    """A ``<camera>`` at ``eye`` looking at ``target`` (MuJoCo cameras look along their -z)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    axes = " ".join(f"{v:.9f}" for v in (*right, *up))
    position = " ".join(f"{v:.9f}" for v in eye)
    return f'<camera name="{name}" pos="{position}" xyaxes="{axes}" fovy="{fovy}"/>'


def ball_scene_xml() -> str:
    named = "\n".join(
        mjcf_camera(name, eye_from_orbit(DISTANCES[fovy], az, el), np.zeros(3), fovy)
        for name, (fovy, az, el) in NAMED_VIEWS.items()
    )
    rig_camera = mjcf_camera("rig_cam", np.zeros(3), -RIG_POSITION, 50.0)
    return f"""
<mujoco model="ball">
  <visual>
    <headlight active="0"/>
    <quality shadowsize="0" offsamples="0"/>
    <global fovy="45"/>
  </visual>
  <asset><material name="glow" emission="1" rgba="1 1 1 1"/></asset>
  <worldbody>
    {named}
    <body name="rig" mocap="true" pos="{" ".join(map(str, RIG_POSITION))}">{rig_camera}</body>
    <body name="anchor" mocap="true" pos="0.05 0 0">
      <inertial pos="0 0 0" mass="1" diaginertia="0.01 0.01 0.01"/>
    </body>
    <body name="ball" mocap="true">
      <geom name="ball" type="sphere" size="{BALL_RADIUS}" material="glow"/>
    </body>
  </worldbody>
</mujoco>"""


def ball_specs() -> list[CameraSpec]:
    specs = [CameraSpec.named(name) for name in NAMED_VIEWS]
    specs.append(CameraSpec.named("rig", mjcf_name="rig_cam"))
    specs += [
        CameraSpec.free(name, distance=DISTANCES[fovy], azimuth=az, elevation=el, fovy=fovy)
        for name, (fovy, az, el) in FREE_VIEWS.items()
    ]
    specs.append(
        CameraSpec.tracking(
            "track", body="anchor", distance=1.2, azimuth=120.0, elevation=-40.0, fovy=55.0
        )
    )
    return specs


@pytest.fixture(scope="module")
def ball_model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(ball_scene_xml())


@pytest.fixture
def ball_data(ball_model: mujoco.MjModel) -> mujoco.MjData:
    data = mujoco.MjData(ball_model)
    mujoco.mj_forward(ball_model, data)
    return data


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def ball_views(request, ball_model):
    """Cameras and a renderer of the ball scene at one image size."""
    cameras = Cameras(ball_model, ball_specs(), request.param)
    renderer = MultiViewRenderer(ball_model, cameras)
    yield cameras, renderer
    renderer.close()


def move_scene(model: mujoco.MjModel, data: mujoco.MjData, rng: np.random.Generator) -> None:
    """Random ball, tracked anchor and camera rig positions; kinematics updated."""
    data.mocap_pos[model.body("ball").mocapid[0]] = rng.uniform(-0.1, 0.1, size=3)
    data.mocap_pos[model.body("anchor").mocapid[0]] = rng.uniform(-0.1, 0.1, size=3)
    data.mocap_pos[model.body("rig").mocapid[0]] = RIG_POSITION + rng.uniform(-0.1, 0.1, size=3)
    mujoco.mj_forward(model, data)


def blob_centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid ``(u, v)`` of an ``(H, W, 3)`` image, in kp3d pixels (the
    centre of pixel (row i, column j) is (j + 0.5, i + 0.5))."""
    weight = image.astype(np.float64).sum(axis=-1)
    rows, columns = np.indices(weight.shape)
    total = weight.sum()
    assert total > 0, "the ball is not in the image"
    return np.array([(weight * columns).sum() / total + 0.5, (weight * rows).sum() / total + 0.5])


def sphere_image_centre(
    centre: np.ndarray, radius: float, intrinsics: np.ndarray, extrinsics: np.ndarray
) -> np.ndarray:
    """Centre of the ellipse a sphere images to (its area centroid).

    Perspective moves it slightly outwards from the projected sphere centre: the silhouette is the
    cone ``(x . a)^2 = cos^2(alpha) |x|^2`` around the direction ``a`` of the centre, cut by the
    plane z = 1.
    """
    point = geometry.world_to_camera(centre[None], extrinsics)[0]
    distance = np.linalg.norm(point)
    axis = point / distance
    cone = np.outer(axis, axis) - (1.0 - (radius / distance) ** 2) * np.eye(3)
    normalized = -np.linalg.solve(cone[:2, :2], cone[:2, 2])
    return geometry.project_camera(np.array([[*normalized, 1.0]]), intrinsics)[0]


def mujoco_render(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    cameras: Cameras,
    index: int,
    height: int | None = None,
    width: int | None = None,
    mode: str = "rgb",
    set_model_fovy: bool = True,
) -> np.ndarray:
    """One view rendered by ``mujoco.Renderer`` with the camera's ``free_camera`` (or the MJCF
    camera's name for named cameras).

    A free camera takes its field of view from ``model.vis.global_.fovy``: with
    ``set_model_fovy`` it is set to the spec's ``fovy`` while rendering.
    """
    height, width = height or cameras.height, width or cameras.width
    camera = cameras.free_camera(index)
    if camera is None:
        camera = cameras.specs[index].mjcf_name
    saved_fovy = model.vis.global_.fovy
    if set_model_fovy and cameras.specs[index].kind != "named":
        model.vis.global_.fovy = cameras.specs[index].fovy  # what cameras.field_of_view(i) does
    try:
        with mujoco.Renderer(model, height, width) as renderer:
            if mode == "depth":
                renderer.enable_depth_rendering()
            elif mode == "segmentation":
                renderer.enable_segmentation_rendering()
            renderer.update_scene(data, camera)
            return renderer.render()
    finally:
        model.vis.global_.fovy = saved_fovy


# -- the camera matrices are what MuJoCo renders -------------------------------------------------


def test_ball_lands_where_projected(ball_model, ball_data, ball_views) -> None:
    cameras, renderer = ball_views
    rng = np.random.default_rng(len(cameras) * cameras.width + cameras.height)
    errors = []
    for _ in range(6):
        move_scene(ball_model, ball_data, rng)
        cameras.update(ball_data)
        images = renderer.render(ball_data)
        ball = ball_data.xpos[ball_model.body("ball").id]
        pixels, depth = cameras.project(ball[None])
        intrinsics, extrinsics = cameras.intrinsics, cameras.extrinsics
        for c, name in enumerate(cameras.names):
            expected = sphere_image_centre(ball, BALL_RADIUS, intrinsics[c], extrinsics[c])
            # The perspective shift of the disc is small: the projection is the centre.
            assert np.abs(expected - pixels[c, 0]).max() < 0.2, name
            assert depth[c, 0] > 0
            margin = 2 + 2 * BALL_RADIUS / depth[c, 0] * intrinsics[c, 1, 1]
            assert margin < pixels[c, 0, 0] < cameras.width - margin, name
            assert margin < pixels[c, 0, 1] < cameras.height - margin, name
            centroid = blob_centroid(images[c])
            assert np.abs(centroid - pixels[c, 0]).max() < 0.5, (name, centroid, pixels[c, 0])
            # Rasterising a disc of a few pixels moves its centroid by up to ~0.3 px.
            assert np.abs(centroid - expected).max() < 0.4, (name, centroid, expected)
            errors.append(centroid - expected)
    # No systematic offset (a half-pixel convention error or a wrong focal length would show
    # here) and sub-pixel on average, not only at worst.
    errors = np.array(errors)
    assert np.all(np.abs(errors.mean(axis=0)) < 0.06), errors.mean(axis=0)
    assert np.sqrt(np.mean(errors**2)) < 0.15


def test_intrinsics_match_field_of_view(ball_data, ball_views) -> None:
    cameras, _ = ball_views
    cameras.update(ball_data)
    height, width = cameras.height, cameras.width
    fovys = {
        **{n: v[0] for n, v in NAMED_VIEWS.items()},
        "rig": 50.0,
        **{n: v[0] for n, v in FREE_VIEWS.items()},
        "track": 55.0,
    }
    for c, name in enumerate(cameras.names):
        focal = 0.5 * height / math.tan(math.radians(fovys[name]) / 2)
        expected = [[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]]
        np.testing.assert_allclose(cameras.intrinsics[c], expected, rtol=1e-6, atol=1e-6)


def test_extrinsics_are_rigid_and_placed_like_mujoco(ball_model, ball_data) -> None:
    cameras = Cameras(ball_model, ball_specs(), 64)
    cameras.update(ball_data)
    extrinsics = cameras.extrinsics
    rotations = extrinsics[:, :3, :3]
    np.testing.assert_allclose(
        rotations @ rotations.swapaxes(1, 2), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-9
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-9)
    np.testing.assert_allclose(extrinsics[:, 3], np.broadcast_to([0, 0, 0, 1], (len(cameras), 4)))
    centres = geometry.camera_centers(extrinsics)
    for c, spec in enumerate(cameras.specs):
        if spec.kind == "named":
            camera = ball_model.camera(spec.mjcf_name).id
            np.testing.assert_allclose(centres[c], ball_data.cam_xpos[camera], atol=1e-6)
            # MuJoCo cameras look along their -z axis; OpenCV's z is forward.
            np.testing.assert_allclose(
                rotations[c, 2], -ball_data.cam_xmat[camera].reshape(3, 3)[:, 2], atol=1e-6
            )
        elif spec.kind == "free":
            eye = eye_from_orbit(spec.distance, spec.azimuth, spec.elevation)
            np.testing.assert_allclose(centres[c], eye, atol=1e-6)
        else:
            lookat = ball_data.subtree_com[ball_model.body("anchor").id]
            eye = lookat + eye_from_orbit(spec.distance, spec.azimuth, spec.elevation)
            np.testing.assert_allclose(centres[c], eye, atol=1e-6)


def test_moving_cameras(ball_model, ball_data) -> None:
    cameras = Cameras(ball_model, ball_specs(), 64)
    moving = dict(zip(cameras.names, cameras.moving, strict=True))
    assert moving == {
        "near70": False,
        "mid45": False,
        "far30": False,
        "rig": True,
        "free30": False,
        "free45": False,
        "free70": False,
        "track": True,
    }
    cameras.update(ball_data)
    before = cameras.extrinsics
    move_scene(ball_model, ball_data, np.random.default_rng(1))
    cameras.update(ball_data, only_moving=True)
    changed = np.abs(cameras.extrinsics - before).max(axis=(1, 2)) > 1e-6
    np.testing.assert_array_equal(changed, cameras.moving)
    # The tracking camera keeps its orientation and follows the body.
    track = cameras.index("track")
    np.testing.assert_allclose(cameras.extrinsics[track, :3, :3], before[track, :3, :3], atol=1e-9)


def test_look_at_free_camera_round_trip(ball_model, ball_data) -> None:
    eye, target = np.array([0.7, -0.4, 0.9]), np.array([0.1, 0.2, 0.05])
    spec = CameraSpec.free("look", lookat=target, **look_at_free_camera(eye, target))
    cameras = Cameras(ball_model, [spec], (48, 80))
    cameras.update(ball_data)
    np.testing.assert_allclose(geometry.camera_centers(cameras.extrinsics)[0], eye, atol=1e-6)
    pixels, _ = cameras.project(target[None])
    np.testing.assert_allclose(pixels[0, 0], [40.0, 24.0], atol=1e-6)
    with pytest.raises(ValueError, match="eye and target must differ"):
        look_at_free_camera(eye, eye)


def test_placing_a_free_camera_restores_the_model_fovy(ball_model, ball_data, ball_views) -> None:
    cameras, renderer = ball_views
    cameras.update(ball_data)
    renderer.render(ball_data)
    assert ball_model.vis.global_.fovy == 45.0


# -- the multi-view renderer draws exactly what mujoco.Renderer draws ------------------------------


def test_views_equal_mujoco_renderer(ball_model, ball_data, ball_views) -> None:
    cameras, renderer = ball_views
    move_scene(ball_model, ball_data, np.random.default_rng(2))
    cameras.update(ball_data)
    images = renderer.render(ball_data)
    assert images.shape == (len(cameras), cameras.height, cameras.width, 3)
    assert images.dtype == np.uint8
    for c, spec in enumerate(cameras.specs):
        np.testing.assert_array_equal(
            images[c], mujoco_render(ball_model, ball_data, cameras, c), err_msg=spec.name
        )


def test_free_camera_renders_its_own_field_of_view(ball_model, ball_data) -> None:
    """A free camera takes its field of view from ``model.vis.global_.fovy``: inside
    ``cameras.field_of_view(i)`` another renderer draws exactly the kp3d view; outside it, the
    model's own fovy (which kp3d leaves untouched) applies."""
    cameras = Cameras(ball_model, [CameraSpec.free("wide", distance=0.9, fovy=70.0)], 64)
    cameras.update(ball_data)
    renderer = MultiViewRenderer(ball_model, cameras)
    try:
        image = renderer.render(ball_data)[0]
    finally:
        renderer.close()
    assert ball_model.vis.global_.fovy == 45.0
    with mujoco.Renderer(ball_model, 64, 64) as reference_renderer:
        with cameras.field_of_view(0):
            reference_renderer.update_scene(ball_data, cameras.free_camera(0))
        assert ball_model.vis.global_.fovy == 45.0
        np.testing.assert_array_equal(reference_renderer.render(), image)
        reference_renderer.update_scene(ball_data, cameras.free_camera(0))
        assert not np.array_equal(reference_renderer.render(), image)


def test_free_camera_is_none_for_named_cameras(ball_model) -> None:
    cameras = Cameras(ball_model, ball_specs(), 64)
    for c, spec in enumerate(cameras.specs):
        camera = cameras.free_camera(c)
        assert (camera is None) == (spec.kind == "named")
        assert cameras.free_camera(spec.name) is camera
        assert isinstance(cameras.mjv_camera(c), mujoco.MjvCamera)
    assert cameras.mjv_camera("near70").type == mujoco.mjtCamera.mjCAMERA_FIXED
    assert cameras.mjv_camera("free45").type == mujoco.mjtCamera.mjCAMERA_FREE
    assert cameras.mjv_camera("track").type == mujoco.mjtCamera.mjCAMERA_TRACKING


def test_larger_render_matches_scaled_intrinsics(ball_model, ball_data) -> None:
    cameras = Cameras(
        ball_model,
        [CameraSpec.free("free45", distance=1.3, azimuth=200.0, elevation=15.0)],
        (48, 64),
    )
    rng = np.random.default_rng(3)
    for _ in range(3):
        move_scene(ball_model, ball_data, rng)
        cameras.update(ball_data)
        large = mujoco_render(ball_model, ball_data, cameras, 0, height=192, width=256)
        ball = ball_data.xpos[ball_model.body("ball").id]
        intrinsics = cameras.scaled_intrinsics(192, 256)[0]
        expected = sphere_image_centre(ball, BALL_RADIUS, intrinsics, cameras.extrinsics[0])
        np.testing.assert_allclose(blob_centroid(large), expected, atol=0.3)
    np.testing.assert_allclose(cameras.scaled_intrinsics(48, 64), cameras.intrinsics)


def test_scaled_intrinsics_with_another_aspect_ratio(ball_model, ball_data) -> None:
    """MuJoCo keeps the vertical field of view and widens the horizontal one when the aspect
    ratio changes: the intrinsics for another size must describe that render."""
    cameras = Cameras(
        ball_model,
        [CameraSpec.free("free45", distance=1.3, azimuth=200.0, elevation=15.0)],
        (64, 64),
    )
    move_scene(ball_model, ball_data, np.random.default_rng(4))
    cameras.update(ball_data)
    wide = mujoco_render(ball_model, ball_data, cameras, 0, height=64, width=128)
    ball = ball_data.xpos[ball_model.body("ball").id]
    expected = sphere_image_centre(
        ball, BALL_RADIUS, cameras.scaled_intrinsics(64, 128)[0], cameras.extrinsics[0]
    )
    np.testing.assert_allclose(blob_centroid(wide), expected, atol=0.3)


def test_render_into_out_and_tile(ball_data, ball_views) -> None:
    cameras, renderer = ball_views
    cameras.update(ball_data)
    out = np.zeros((len(cameras), cameras.height, cameras.width, 3), dtype=np.uint8)
    result = renderer.render(ball_data, out=out)
    assert result is out
    np.testing.assert_array_equal(out, renderer.render(ball_data))
    tiled = tile_views(out)
    assert tiled.shape == (cameras.height, len(cameras) * cameras.width, 3)
    np.testing.assert_array_equal(tiled[:, cameras.width : 2 * cameras.width], out[1])


def test_renderer_survives_other_gl_contexts(ball_model, ball_data, ball_views) -> None:
    """mujoco.Renderer makes its own GL context current; the shared kp3d context must come back."""
    cameras, renderer = ball_views
    move_scene(ball_model, ball_data, np.random.default_rng(5))
    cameras.update(ball_data)
    first = renderer.render(ball_data)
    assert first.any()
    mujoco_image = mujoco_render(ball_model, ball_data, cameras, 0)
    np.testing.assert_array_equal(renderer.render(ball_data), first)
    other = mujoco.Renderer(ball_model, 32, 32)  # left open: its context stays alive
    try:
        other.update_scene(ball_data, "near70")
        other.render()
        np.testing.assert_array_equal(renderer.render(ball_data), first)
    finally:
        other.close()
    np.testing.assert_array_equal(renderer.render(ball_data), first)
    np.testing.assert_array_equal(mujoco_image, first[0])


def test_new_renderer_after_another_gl_context_was_released(ball_model, ball_data) -> None:
    """A renderer created after some other GL context (here mujoco.Renderer's) was made current
    and freed must build its MuJoCo context in the shared kp3d context."""
    cameras = Cameras(ball_model, ball_specs()[:2], 64)
    cameras.update(ball_data)
    first = MultiViewRenderer(ball_model, cameras)
    second = MultiViewRenderer(ball_model, cameras)
    try:
        reference = first.render(ball_data)  # the shared context exists from here on
        mujoco_render(ball_model, ball_data, cameras, 0)  # makes, uses and frees its own context
        np.testing.assert_array_equal(second.render(ball_data), reference)
        np.testing.assert_array_equal(first.render(ball_data), reference)
    finally:
        first.close()
        second.close()


# -- depth and segmentation ------------------------------------------------------------------------

BOX_CENTRE = np.array([0.1, -0.05, 0.12])
BOX_HALF = np.array([0.1, 0.08, 0.12])
SPHERE_CENTRE = np.array([-0.2, 0.15, 0.1])
SPHERE_RADIUS = 0.1
SURFACE_XML = f"""
<mujoco model="surfaces">
  <visual><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <light pos="0 0 3" dir="0 0 -1"/>
    <geom name="floor" type="plane" size="1 1 0.1" rgba="0.5 0.5 0.5 1"/>
    <geom name="box" type="box" pos="{" ".join(map(str, BOX_CENTRE))}"
          size="{" ".join(map(str, BOX_HALF))}" euler="0 0 30" rgba="0.9 0.2 0.2 1"/>
    <body name="mover" pos="{" ".join(map(str, SPHERE_CENTRE))}">
      <freejoint/>
      <geom name="sphere" type="sphere" size="{SPHERE_RADIUS}" rgba="0.2 0.2 0.9 1"/>
      <geom name="hidden" type="sphere" size="0.3" group="3" rgba="0 1 0 1"/>
    </body>
    <camera name="above" pos="0.05 -0.7 1.0" xyaxes="1 0 0 0 0.8 0.6" fovy="60"/>
  </worldbody>
</mujoco>"""


@pytest.fixture(scope="module")
def surface_scene():
    model = mujoco.MjModel.from_xml_string(SURFACE_XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    cameras = Cameras(
        model,
        [
            CameraSpec.named("above"),
            CameraSpec.free(
                "side", lookat=(0, 0, 0.1), distance=1.2, azimuth=60, elevation=-25, fovy=50
            ),
            CameraSpec.tracking(
                "track", body="mover", distance=1.0, azimuth=200, elevation=-45, fovy=40
            ),
        ],
        (96, 128),
    )
    cameras.update(data)
    renderer = MultiViewRenderer(model, cameras)
    yield model, data, cameras, renderer
    renderer.close()


def unproject_image(
    depth: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray
) -> np.ndarray:
    """``(H, W, 3)`` world points of every pixel centre of a depth image."""
    rows, columns = np.indices(depth.shape)
    pixels = np.stack([columns + 0.5, rows + 0.5], axis=-1).reshape(-1, 2)
    points = geometry.unproject(
        pixels, depth.reshape(-1).astype(np.float64), intrinsics, extrinsics
    )
    return points.reshape(*depth.shape, 3)


def test_depth_unprojects_onto_surfaces(surface_scene) -> None:
    model, data, cameras, renderer = surface_scene
    depth = renderer.render_depth(data)
    segmentation = renderer.render_segmentation(data)
    assert depth.shape == (3, 96, 128) and depth.dtype == np.float32
    assert segmentation.shape == (3, 96, 128, 2) and segmentation.dtype == np.int32
    box_rotation = data.geom_xmat[model.geom("box").id].reshape(3, 3)
    for c in range(len(cameras)):
        points = unproject_image(depth[c], cameras.intrinsics[c], cameras.extrinsics[c])
        ids = segmentation[c, ..., 0]
        floor = points[ids == model.geom("floor").id]
        box = points[ids == model.geom("box").id]
        sphere = points[ids == model.geom("sphere").id]
        assert len(floor) > 500 and len(box) > 50 and len(sphere) > 50, cameras.names[c]
        np.testing.assert_allclose(floor[:, 2], 0.0, atol=3e-3)
        # Box points in the box frame lie on its surface: signed distance 0.
        local = (box - data.geom_xpos[model.geom("box").id]) @ box_rotation
        np.testing.assert_allclose(np.max(np.abs(local) - BOX_HALF, axis=1), 0.0, atol=3e-3)
        # The sphere is a tessellated mesh: its faces lie slightly inside the true sphere.
        radii = np.linalg.norm(sphere - data.xpos[model.body("mover").id], axis=1)
        assert np.all(radii < SPHERE_RADIUS + 3e-3) and np.all(radii > 0.97 * SPHERE_RADIUS)


def test_depth_and_segmentation_equal_mujoco_renderer(surface_scene) -> None:
    model, data, cameras, renderer = surface_scene
    depth = renderer.render_depth(data)
    segmentation = renderer.render_segmentation(data)
    for c in range(len(cameras)):
        reference_depth = mujoco_render(model, data, cameras, c, mode="depth")
        # Equal up to float32 rounding: a few pixels on triangle edges differ by micrometres.
        np.testing.assert_allclose(depth[c], reference_depth, rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(
            segmentation[c], mujoco_render(model, data, cameras, c, mode="segmentation")
        )


def test_segmentation_ids_are_the_visible_geoms(surface_scene) -> None:
    model, data, cameras, renderer = surface_scene
    segmentation = renderer.render_segmentation(data)
    ids, types = segmentation[..., 0], segmentation[..., 1]
    visible = {model.geom(name).id for name in ("floor", "box", "sphere")}
    assert set(np.unique(ids)) <= visible | {-1}
    assert visible <= set(np.unique(ids))
    assert np.all(types[ids >= 0] == mujoco.mjtObj.mjOBJ_GEOM)
    assert np.all(types[ids < 0] == -1)
    # Geom group 3 is never drawn.
    assert model.geom("hidden").id not in set(np.unique(ids))
    # The centre of each object projects onto its own pixels, in every camera.
    centres = np.stack([data.geom_xpos[model.geom("box").id], data.xpos[model.body("mover").id]])
    pixels, _ = cameras.project(centres)
    for c in range(len(cameras)):
        columns, rows = np.floor(pixels[c]).astype(int).T
        np.testing.assert_array_equal(
            ids[c, rows, columns], [model.geom("box").id, model.geom("sphere").id]
        )
    # Segmentation leaves the colour render unchanged.
    colour = renderer.render(data)
    assert len(np.unique(colour.reshape(-1, 3), axis=0)) > 10


# -- bad input -------------------------------------------------------------------------------------


def test_unknown_named_camera(ball_model) -> None:
    with pytest.raises(
        ValueError,
        match=r"no <camera name='nope'>.*\['near70', 'mid45', 'far30', "
        r"'rig_cam'\]",
    ):
        Cameras(ball_model, [CameraSpec.named("nope")])


def test_unknown_tracked_body(ball_model) -> None:
    with pytest.raises(ValueError, match=r"no body 'ghost'.*'anchor', 'ball'"):
        Cameras(ball_model, [CameraSpec.tracking("t", body="ghost")])


@pytest.mark.parametrize(
    ("size", "quoted"),
    [
        (0, "(0, 0)"),
        (-64, "(-64, -64)"),
        ((0, 64), "(0, 64)"),
        ((64, -1), "(64, -1)"),
        (64.0, "64.0"),
        ((64.0, 64), "(64.0, 64)"),
        ((64,), "(64,)"),
        ((64, 64, 3), "(64, 64, 3)"),
        ("64", "'64'"),
        (True, "True"),
        ((True, 64), "(True, 64)"),
        (None, "None"),
    ],
)
def test_bad_image_size(ball_model, size, quoted) -> None:
    with pytest.raises(ValueError, match="image size must be"):
        Cameras(ball_model, [CameraSpec.named("mid45")], size)
    with pytest.raises(ValueError, match=re.escape(quoted)):
        parse_size(size)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(64, (64, 64)), ((96, 128), (96, 128)), ([128, 80], (128, 80)), (np.int64(32), (32, 32))],
)
def test_image_size(size, expected) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_cameras_size_is_height_width_and_read_only(ball_model, size) -> None:
    cameras = Cameras(ball_model, [CameraSpec.named("mid45")], size)
    assert cameras.size == parse_size(size) == (cameras.height, cameras.width)
    with pytest.raises(AttributeError):
        cameras.size = (32, 32)
    assert cameras.size == parse_size(size)


def test_cameras_repr_names_size_kinds_and_motion(ball_model) -> None:
    specs = ball_specs()
    cameras = Cameras(ball_model, [specs[1], specs[3], specs[4], specs[-1]], (48, 80))
    assert repr(cameras) == (
        "Cameras(4 cameras, size=(48, 80): mid45 (named, fixed), rig (named, moving), "
        "free30 (free, fixed), track (tracking, moving))"
    )
    assert str(cameras) == repr(cameras)
    one = Cameras(ball_model, [CameraSpec.named("mid45")], 64)
    assert repr(one) == "Cameras(1 camera, size=(64, 64): mid45 (named, fixed))"


def test_env_cameras_size_and_repr() -> None:
    """What the README promises of ``env.unwrapped.cameras``; copies keep size and repr."""
    env = gym.make("kp3d/Reach-v0", size=(48, 80))
    try:
        cameras = env.unwrapped.cameras
        assert cameras.size == (48, 80)
        described = repr(cameras)
        assert described.startswith(f"Cameras({len(cameras)} cameras, size=(48, 80): ")
        for name, moving in zip(cameras.names, cameras.moving, strict=True):
            assert f"{name} (" in described
            assert ("moving" if moving else "fixed") in described
        for copied in (copy.deepcopy(cameras), pickle.loads(pickle.dumps(cameras))):
            assert copied.size == (48, 80)
            assert repr(copied) == described
    finally:
        env.close()


def test_duplicate_camera_names(ball_model) -> None:
    with pytest.raises(ValueError, match=r"unique; repeated: \['a'\]"):
        Cameras(
            ball_model,
            [CameraSpec.free("a"), CameraSpec.named("b", "mid45"), CameraSpec.named("a", "near70")],
        )


@pytest.mark.parametrize("fovy", [0.0, -10.0, 180.0, 270.0, float("nan")])
def test_bad_fovy(fovy) -> None:
    with pytest.raises(ValueError, match=r"fovy must be in \(0, 180\) degrees"):
        CameraSpec.free("f", fovy=fovy)
    with pytest.raises(ValueError, match=r"fovy must be in \(0, 180\) degrees"):
        CameraSpec.tracking("t", body="ball", fovy=fovy)


@pytest.mark.parametrize("distance", [0.0, -1.0, float("nan")])
def test_bad_distance(distance) -> None:
    with pytest.raises(ValueError, match="distance must be > 0"):
        CameraSpec.free("f", distance=distance)


@pytest.mark.parametrize("name", ["", "two words", "cam-1", "cam.0"])
def test_bad_camera_name(name) -> None:
    with pytest.raises(ValueError, match=r"letters, digits, '_'"):
        CameraSpec.free(name)


def test_bad_specs(ball_model) -> None:
    with pytest.raises(ValueError, match="kind must be 'named', 'free' or 'tracking'"):
        CameraSpec("x", kind="orbit")
    with pytest.raises(ValueError, match="needs the body it follows"):
        CameraSpec("x", kind="tracking")
    with pytest.raises(ValueError, match="lookat must have 3 values"):
        CameraSpec.free("x", lookat=(0.0, 1.0))
    with pytest.raises(ValueError, match="at least one camera"):
        Cameras(ball_model, [])
    with pytest.raises(TypeError, match="CameraSpec"):
        Cameras(ball_model, ["mid45"])


def test_bad_camera_index(ball_model) -> None:
    cameras = Cameras(ball_model, ball_specs(), 64)
    assert cameras.index(-1) == len(cameras) - 1
    assert cameras.index("track") == cameras.index(np.int64(7)) == 7
    for bad in ("nope", 8, -9, 1.0):
        with pytest.raises(ValueError, match=r"near70.*track"):
            cameras.free_camera(bad)


def test_matrices_before_update(ball_model) -> None:
    cameras = Cameras(ball_model, ball_specs(), 64)
    with pytest.raises(RuntimeError, match="not computed yet"):
        _ = cameras.intrinsics
    with pytest.raises(RuntimeError, match="not computed yet"):
        cameras.project(np.zeros((1, 3)))


def test_orthographic_camera_is_rejected() -> None:
    for attribute in ('projection="orthographic"', 'orthographic="true"'):  # later, MuJoCo 3.3
        try:
            model = mujoco.MjModel.from_xml_string(
                f'<mujoco><worldbody><camera name="ortho" {attribute} fovy="1"/></worldbody>'
                "</mujoco>"
            )
            break
        except ValueError:
            continue
    with pytest.raises(ValueError, match="orthographic"):
        Cameras(model, [CameraSpec.named("ortho")])
