"""Tests of kp3d's camera convention (:mod:`kp3d.geometry`).

Every function gets smoke, hand-computed, batch/broadcast, round-trip, NumPy-vs-torch, gradcheck and
error-case tests, in the manner of kornia's ``test_perspective.py``.
"""

from __future__ import annotations

import doctest
import math
import re

import numpy as np
import pytest
import torch

from kp3d import geometry
from kp3d.geometry import (
    camera_centers,
    camera_to_world,
    invert_extrinsics,
    project,
    project_camera,
    transform_points,
    unproject,
    unproject_camera,
    world_to_camera,
)

# -- helpers ---------------------------------------------------------------------------------------


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_extrinsics(rng: np.random.Generator, count: int | None = None) -> np.ndarray:
    """Random rigid world→camera transforms ``(4, 4)`` or ``(count, 4, 4)``."""
    shape = () if count is None else (count,)
    transforms = np.zeros((*shape, 4, 4))
    transforms[..., 3, 3] = 1.0
    for index in np.ndindex(*shape):
        transforms[index][:3, :3] = random_rotation(rng)
        transforms[index][:3, 3] = rng.normal(size=3)
    return transforms


def random_intrinsics(rng: np.random.Generator, count: int | None = None) -> np.ndarray:
    shape = () if count is None else (count,)
    intrinsics = np.zeros((*shape, 3, 3))
    intrinsics[..., 0, 0] = rng.uniform(40, 120, size=shape)
    intrinsics[..., 1, 1] = rng.uniform(40, 120, size=shape)
    intrinsics[..., 0, 2] = rng.uniform(20, 60, size=shape)
    intrinsics[..., 1, 2] = rng.uniform(20, 60, size=shape)
    intrinsics[..., 2, 2] = 1.0
    return intrinsics


def points_in_front(rng: np.random.Generator, extrinsics: np.ndarray, count: int) -> np.ndarray:
    """World points with camera-frame depth in [0.5, 4] for a ``(4, 4)`` transform (computed with
    a general matrix inverse, independently of the functions under test)."""
    camera_points = np.concatenate(
        [rng.uniform(-1, 1, size=(count, 2)), rng.uniform(0.5, 4.0, size=(count, 1))], axis=1
    )
    homogeneous = np.concatenate([camera_points, np.ones((count, 1))], axis=1)
    return (homogeneous @ np.linalg.inv(extrinsics).T)[:, :3]


def to_torch(*arrays: np.ndarray, grad: bool = False) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(a, dtype=torch.float64, requires_grad=grad) for a in arrays)


# Looking straight down from (0, 0, 2): camera x = world x, camera y = world -y, forward = world -z.
DOWN_LOOKING = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, 2.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
K_64 = intrinsics_matrix(50.0, 60.0, 32.0, 30.0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(params=["numpy", "torch"])
def backend(request: pytest.FixtureRequest):
    """Converts NumPy inputs to the backend under test and results back to NumPy."""
    if request.param == "numpy":
        return lambda a: np.asarray(a, dtype=np.float64), np.asarray
    return (
        lambda a: torch.tensor(np.asarray(a), dtype=torch.float64),
        lambda t: t.detach().numpy(),
    )


# -- documentation -------------------------------------------------------------------------------


def test_module_docstring_example_runs() -> None:
    failures, tried = doctest.testmod(geometry, verbose=False)
    assert tried > 0
    assert failures == 0


# -- hand-computed values --------------------------------------------------------------------------


class TestHandComputed:
    def test_point_on_optical_axis_lands_on_principal_point(self, backend) -> None:
        to, back = backend
        for depth in (0.1, 1.0, 7.5):
            pixels, z = project(to([[0.0, 0.0, depth]]), to(K_64), to(np.eye(4)))
            np.testing.assert_allclose(back(pixels), [[32.0, 30.0]])
            np.testing.assert_allclose(back(z), [depth])

    def test_pinhole_formula(self, backend) -> None:
        to, back = backend
        pixels = project_camera(to([[0.1, -0.2, 2.0], [-1.0, 0.5, 4.0]]), to(K_64))
        expected = [[50 * 0.05 + 32, 60 * -0.1 + 30], [50 * -0.25 + 32, 60 * 0.125 + 30]]
        np.testing.assert_allclose(back(pixels), expected)

    def test_down_looking_camera(self, backend) -> None:
        to, back = backend
        # World (0.5, 0.25, 0) is (0.5, -0.25, 2) in the camera frame: right of and above centre.
        pixels, depth = project(to([[0.5, 0.25, 0.0]]), to(K_64), to(DOWN_LOOKING))
        np.testing.assert_allclose(back(pixels), [[50 * 0.25 + 32, 60 * -0.125 + 30]])
        np.testing.assert_allclose(back(depth), [2.0])
        np.testing.assert_allclose(back(camera_centers(to(DOWN_LOOKING))), [0.0, 0.0, 2.0])
        np.testing.assert_allclose(
            back(world_to_camera(to([[0.5, 0.25, 0.0]]), to(DOWN_LOOKING))), [[0.5, -0.25, 2.0]]
        )

    def test_opencv_axes_x_right_y_down(self, backend) -> None:
        to, back = backend
        pixels = back(project_camera(to([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0]]), to(K_64)))
        assert pixels[0, 0] > 32.0 and pixels[0, 1] == pytest.approx(30.0)  # +x: right
        assert pixels[1, 1] > 30.0 and pixels[1, 0] == pytest.approx(32.0)  # +y: down

    @pytest.mark.parametrize(
        ("height", "width", "fovy"), [(64, 64, 45.0), (96, 128, 30.0), (80, 128, 70.0)]
    )
    def test_pixel_corner_convention(self, height: int, width: int, fovy: float) -> None:
        """(0, 0) is the top-left corner of the image and (W, H) the bottom-right one; the centre of
        pixel (row i, column j) is (j + 0.5, i + 0.5)."""
        focal = 0.5 * height / math.tan(math.radians(fovy) / 2)
        K = intrinsics_matrix(focal, focal, width / 2, height / 2)
        half_y = math.tan(math.radians(fovy) / 2)
        half_x = half_y * width / height
        corners = np.array([[-half_x, -half_y, 1.0], [half_x, half_y, 1.0]]) * 3.0
        np.testing.assert_allclose(
            project_camera(corners, K), [[0.0, 0.0], [width, height]], atol=1e-9
        )
        # The centre of the top-left pixel lies half a pixel inside the corner, on both axes.
        ray = unproject_camera(np.array([[0.5, 0.5]]), np.array([1.0]), K)[0]
        np.testing.assert_allclose(ray[:2], [-half_x + 0.5 / focal, -half_y + 0.5 / focal])

    def test_transform_points_matches_homogeneous_product(self, rng) -> None:
        T = random_extrinsics(rng)
        T[3] = [0.0, 0.0, 0.0, 1.0]
        points = rng.normal(size=(7, 3))
        expected = (np.concatenate([points, np.ones((7, 1))], axis=1) @ T.T)[:, :3]
        np.testing.assert_allclose(transform_points(T, points), expected)

    def test_invert_extrinsics_matches_matrix_inverse(self, rng) -> None:
        T = random_extrinsics(rng, 4)
        np.testing.assert_allclose(invert_extrinsics(T), np.linalg.inv(T), atol=1e-12)

    def test_camera_centers_are_at_depth_zero(self, rng) -> None:
        T = random_extrinsics(rng, 5)
        centres = camera_centers(T)
        assert centres.shape == (5, 3)
        np.testing.assert_allclose(world_to_camera(centres[:, None], T), 0.0, atol=1e-12)
        np.testing.assert_allclose(centres, np.linalg.inv(T)[:, :3, 3], atol=1e-12)

    def test_points_behind_camera_stay_finite_with_negative_depth(self, backend) -> None:
        to, back = backend
        pixels, depth = project(to([[0.1, 0.1, -1.0], [0.1, 0.1, 0.0]]), to(K_64), to(np.eye(4)))
        assert np.all(np.isfinite(back(pixels)))
        np.testing.assert_allclose(back(depth), [-1.0, 0.0])
        # Divided by eps instead of the depth: far outside any image.
        assert np.all(np.abs(back(pixels) - [32.0, 30.0]) > 1e4)


# -- batch and broadcast ---------------------------------------------------------------------------


class TestBatch:
    def test_shared_points_into_many_cameras(self, rng, backend) -> None:
        to, back = backend
        K, T = random_intrinsics(rng, 3), random_extrinsics(rng, 3)
        points = rng.normal(size=(5, 3))
        pixels, depth = project(to(points), to(K), to(T))
        assert back(pixels).shape == (3, 5, 2) and back(depth).shape == (3, 5)
        for c in range(3):
            single_pixels, single_depth = project(points, K[c], T[c])
            np.testing.assert_allclose(back(pixels)[c], single_pixels, rtol=1e-12)
            np.testing.assert_allclose(back(depth)[c], single_depth, rtol=1e-12)

    def test_batch_of_views_with_per_camera_matrices(self, rng, backend) -> None:
        to, back = backend
        B, C, N = 2, 3, 4
        K, T = random_intrinsics(rng, C), random_extrinsics(rng, C)
        points = rng.normal(size=(B, C, N, 3))
        pixels, depth = project(to(points), to(K), to(T))
        assert back(pixels).shape == (B, C, N, 2) and back(depth).shape == (B, C, N)
        world = unproject(pixels, depth, to(K), to(T))
        assert back(world).shape == (B, C, N, 3)
        for b in range(B):
            for c in range(C):
                single_pixels, single_depth = project(points[b, c], K[c], T[c])
                np.testing.assert_allclose(back(pixels)[b, c], single_pixels, rtol=1e-12)
                np.testing.assert_allclose(back(depth)[b, c], single_depth, rtol=1e-12)

    def test_broadcast_singleton_camera_dimension(self, rng, backend) -> None:
        to, back = backend
        K, T = random_intrinsics(rng, 3), random_extrinsics(rng, 3)
        points = rng.normal(size=(2, 1, 4, 3))
        pixels, _ = project(to(points), to(K), to(T))
        assert back(pixels).shape == (2, 3, 4, 2)
        np.testing.assert_allclose(back(pixels)[1, 2], project(points[1, 0], K[2], T[2])[0])

    @pytest.mark.parametrize("function", [invert_extrinsics, camera_centers])
    def test_matrix_functions_keep_leading_dimensions(self, rng, backend, function) -> None:
        to, back = backend
        T = random_extrinsics(rng, 6).reshape(2, 3, 4, 4)
        batched = back(function(to(T)))
        for i in range(2):
            for j in range(3):
                np.testing.assert_allclose(batched[i, j], function(T[i, j]), rtol=1e-12)

    @pytest.mark.parametrize("function", [transform_points, world_to_camera, camera_to_world])
    def test_frame_changes_broadcast(self, rng, backend, function) -> None:
        to, back = backend
        T = random_extrinsics(rng, 3)
        points = rng.normal(size=(2, 3, 5, 3))
        if function is transform_points:
            result, single = (
                back(function(to(T), to(points))),
                lambda b, c: function(T[c], points[b, c]),
            )
        else:
            result, single = (
                back(function(to(points), to(T))),
                lambda b, c: function(points[b, c], T[c]),
            )
        assert result.shape == (2, 3, 5, 3)
        np.testing.assert_allclose(result[1, 2], single(1, 2), rtol=1e-12)

    def test_zero_points(self, backend) -> None:
        to, back = backend
        pixels, depth = project(
            to(np.zeros((2, 0, 3))), to(np.stack([K_64] * 2)), to(np.stack([np.eye(4)] * 2))
        )
        assert back(pixels).shape == (2, 0, 2) and back(depth).shape == (2, 0)


# -- round trips -----------------------------------------------------------------------------------


class TestRoundTrip:
    def test_unproject_inverts_project(self, rng, backend) -> None:
        to, back = backend
        K, T = random_intrinsics(rng, 3), random_extrinsics(rng, 3)
        points = np.stack([points_in_front(rng, T[c], 20) for c in range(3)])
        pixels, depth = project(to(points), to(K), to(T))
        assert np.all(back(depth) > 0)
        np.testing.assert_allclose(back(unproject(pixels, depth, to(K), to(T))), points, atol=1e-10)

    def test_project_inverts_unproject(self, rng, backend) -> None:
        to, back = backend
        K, T = random_intrinsics(rng), random_extrinsics(rng)
        pixels = rng.uniform(0, 64, size=(4, 10, 2))
        depth = rng.uniform(0.2, 5.0, size=(4, 10))
        reprojected, z = project(unproject(to(pixels), to(depth), to(K), to(T)), to(K), to(T))
        np.testing.assert_allclose(back(reprojected), pixels, atol=1e-9)
        np.testing.assert_allclose(back(z), depth, atol=1e-12)

    def test_camera_frame_round_trip(self, rng, backend) -> None:
        to, back = backend
        K = random_intrinsics(rng, 2)
        camera_points = np.concatenate(
            [rng.normal(size=(2, 6, 2)), rng.uniform(0.1, 3, size=(2, 6, 1))], axis=-1
        )
        pixels = project_camera(to(camera_points), to(K))
        back_points = unproject_camera(pixels, to(camera_points[..., 2]), to(K))
        np.testing.assert_allclose(back(back_points), camera_points, atol=1e-12)

    def test_world_camera_world(self, rng, backend) -> None:
        to, back = backend
        T = random_extrinsics(rng, 4)
        points = rng.normal(size=(4, 9, 3))
        there = world_to_camera(to(points), to(T))
        np.testing.assert_allclose(back(camera_to_world(there, to(T))), points, atol=1e-12)
        # camera_to_world is transform_points with the inverse transform.
        np.testing.assert_allclose(
            back(camera_to_world(there, to(T))),
            back(transform_points(invert_extrinsics(to(T)), there)),
            atol=1e-12,
        )

    def test_invert_extrinsics_composes_to_identity(self, rng, backend) -> None:
        to, back = backend
        T = random_extrinsics(rng, 5)
        inverse = back(invert_extrinsics(to(T)))
        np.testing.assert_allclose(inverse @ T, np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
        np.testing.assert_allclose(T @ inverse, np.broadcast_to(np.eye(4), T.shape), atol=1e-12)
        np.testing.assert_allclose(back(invert_extrinsics(to(inverse))), T, atol=1e-12)

    def test_camera_centre_is_translation_of_inverse(self, rng, backend) -> None:
        to, back = backend
        T = random_extrinsics(rng, 3)
        np.testing.assert_allclose(
            back(camera_centers(to(T))), back(invert_extrinsics(to(T)))[:, :3, 3], atol=1e-12
        )


# -- NumPy and torch agree -------------------------------------------------------------------------


class TestNumpyTorchAgree:
    def test_all_functions(self, rng) -> None:
        K, T = random_intrinsics(rng, 3), random_extrinsics(rng, 3)
        points = rng.normal(size=(2, 3, 4, 3)) + np.array([0.0, 0.0, 3.0])
        pixels = rng.uniform(0, 64, size=(2, 3, 4, 2))
        depth = rng.uniform(0.5, 4, size=(2, 3, 4))
        tK, tT, tp, tpix, td = to_torch(K, T, points, pixels, depth)
        pairs = [
            (project(points, K, T), project(tp, tK, tT)),
            ((unproject(pixels, depth, K, T),), (unproject(tpix, td, tK, tT),)),
            ((project_camera(points, K),), (project_camera(tp, tK),)),
            ((unproject_camera(pixels, depth, K),), (unproject_camera(tpix, td, tK),)),
            ((world_to_camera(points, T),), (world_to_camera(tp, tT),)),
            ((camera_to_world(points, T),), (camera_to_world(tp, tT),)),
            ((transform_points(T, points),), (transform_points(tT, tp),)),
            ((invert_extrinsics(T),), (invert_extrinsics(tT),)),
            ((camera_centers(T),), (camera_centers(tT),)),
        ]
        for numpy_results, torch_results in pairs:
            for numpy_result, torch_result in zip(numpy_results, torch_results, strict=True):
                assert isinstance(numpy_result, np.ndarray)
                assert isinstance(torch_result, torch.Tensor)
                np.testing.assert_allclose(
                    torch_result.numpy(), numpy_result, rtol=1e-12, atol=1e-12
                )

    def test_float32_tensors_stay_float32(self) -> None:
        K = torch.tensor(K_64, dtype=torch.float32)
        pixels, depth = project(torch.tensor([[0.1, 0.2, 2.0]]), K, torch.eye(4))
        assert pixels.dtype == torch.float32 and depth.dtype == torch.float32
        assert unproject(pixels, depth, K, torch.eye(4)).dtype == torch.float32


# -- gradients -------------------------------------------------------------------------------------


class TestGradients:
    def test_gradcheck_project(self, rng) -> None:
        K, T = random_intrinsics(rng, 2), random_extrinsics(rng, 2)
        points = np.stack([points_in_front(rng, T[c], 3) for c in range(2)])
        inputs = to_torch(points, K, T, grad=True)
        assert torch.autograd.gradcheck(lambda p, k, t: project(p, k, t), inputs)

    def test_gradcheck_unproject(self, rng) -> None:
        K, T = random_intrinsics(rng, 2), random_extrinsics(rng, 2)
        pixels = rng.uniform(0, 64, size=(2, 3, 2))
        depth = rng.uniform(0.5, 3.0, size=(2, 3))
        inputs = to_torch(pixels, depth, K, T, grad=True)
        assert torch.autograd.gradcheck(unproject, inputs)

    def test_gradcheck_camera_frame_functions(self, rng) -> None:
        K = random_intrinsics(rng)
        camera_points = np.concatenate([rng.normal(size=(4, 2)), rng.uniform(1, 2, (4, 1))], 1)
        assert torch.autograd.gradcheck(project_camera, to_torch(camera_points, K, grad=True))
        pixels, depth = rng.uniform(0, 64, (4, 2)), rng.uniform(1, 2, 4)
        assert torch.autograd.gradcheck(unproject_camera, to_torch(pixels, depth, K, grad=True))

    def test_gradcheck_rigid_functions(self, rng) -> None:
        T = random_extrinsics(rng, 2)
        points = rng.normal(size=(2, 3, 3))
        assert torch.autograd.gradcheck(invert_extrinsics, to_torch(T, grad=True))
        assert torch.autograd.gradcheck(camera_centers, to_torch(T, grad=True))
        assert torch.autograd.gradcheck(world_to_camera, to_torch(points, T, grad=True))
        assert torch.autograd.gradcheck(camera_to_world, to_torch(points, T, grad=True))

    def test_projection_gradient_matches_formula(self) -> None:
        """d u / d x = fx / z and d u / d z = -fx x / z^2 at a hand-picked point."""
        (point,) = to_torch(np.array([[0.3, -0.1, 2.0]]), grad=True)
        pixels, _ = project(point, torch.tensor(K_64), torch.eye(4, dtype=torch.float64))
        pixels[0, 0].backward()
        np.testing.assert_allclose(point.grad.numpy(), [[50 / 2.0, 0.0, -50 * 0.3 / 4.0]])


# -- errors ----------------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize("shape", [(3,), (5, 2), (5, 4), (2, 5, 4)])
    def test_project_rejects_bad_points(self, shape) -> None:
        with pytest.raises(ValueError, match=re_shape(shape)):
            project(np.zeros(shape), K_64, np.eye(4))

    @pytest.mark.parametrize("shape", [(3,), (2, 3), (4, 4), (2, 3, 4)])
    def test_project_rejects_bad_intrinsics(self, shape) -> None:
        with pytest.raises(ValueError, match=r"intrinsics.*" + re_shape(shape)):
            project(np.zeros((5, 3)), np.zeros(shape), np.eye(4))
        with pytest.raises(ValueError, match=r"intrinsics.*" + re_shape(shape)):
            project_camera(torch.zeros(5, 3), torch.zeros(shape))

    @pytest.mark.parametrize("shape", [(4,), (3, 4), (3, 3), (2, 4, 3)])
    def test_rejects_bad_extrinsics(self, shape) -> None:
        bad = np.zeros(shape)
        for call in (
            lambda: project(np.zeros((5, 3)), K_64, bad),
            lambda: unproject(np.zeros((5, 2)), np.ones(5), K_64, bad),
            lambda: world_to_camera(np.zeros((5, 3)), bad),
            lambda: camera_to_world(np.zeros((5, 3)), bad),
            lambda: invert_extrinsics(bad),
            lambda: camera_centers(bad),
        ):
            with pytest.raises(
                ValueError, match=r"must have shape \(\*, 4, 4\).*" + re_shape(shape)
            ):
                call()

    def test_errors_name_the_argument_of_the_function_called(self) -> None:
        """``project`` and ``world_to_camera`` take ``extrinsics`` and ``points_world``: their
        errors must use those names, not those of the internal ``transform_points``."""
        for call in (
            lambda: project(np.zeros((5, 3)), K_64, np.eye(3)),
            lambda: world_to_camera(np.zeros((5, 3)), np.eye(3)),
        ):
            with pytest.raises(ValueError, match=r"^extrinsics must have shape.*\(3, 3\)"):
                call()
        for call in (
            lambda: project(np.zeros((5, 2)), K_64, np.eye(4)),
            lambda: world_to_camera(np.zeros((5, 2)), np.eye(4)),
        ):
            with pytest.raises(ValueError, match=r"^points_world must have shape.*\(5, 2\)"):
                call()

    def test_transform_points_rejects_bad_shapes(self) -> None:
        with pytest.raises(ValueError, match=r"transform.*\(3, 3\)"):
            transform_points(np.eye(3), np.zeros((2, 3)))
        with pytest.raises(ValueError, match=r"points.*\(2, 2\)"):
            transform_points(np.eye(4), np.zeros((2, 2)))

    @pytest.mark.parametrize("shape", [(2,), (5, 3), (5, 1)])
    def test_unproject_rejects_bad_pixels(self, shape) -> None:
        with pytest.raises(ValueError, match=r"pixels.*" + re_shape(shape)):
            unproject(np.zeros(shape), np.ones(shape[:-1]), K_64, np.eye(4))
        with pytest.raises(ValueError, match=r"pixels.*" + re_shape(shape)):
            unproject_camera(torch.zeros(shape), torch.ones(shape[:-1]), torch.eye(3))

    @pytest.mark.parametrize("shape", [(4,), (5, 1), (1, 5), ()])
    def test_unproject_rejects_depth_not_matching_pixels(self, shape) -> None:
        with pytest.raises(ValueError, match=r"depth must have shape \(5,\).*" + re_shape(shape)):
            unproject(np.zeros((5, 2)), np.ones(shape), K_64, np.eye(4))

    def test_camera_frame_functions_reject_bad_points(self) -> None:
        with pytest.raises(ValueError, match=r"points_camera.*\(4, 2\)"):
            project_camera(np.zeros((4, 2)), K_64)
        with pytest.raises(ValueError, match=r"points_camera.*\(3,\)"):
            camera_to_world(np.zeros(3), np.eye(4))


def re_shape(shape: tuple[int, ...]) -> str:
    """A regex matching ``shape`` as Python prints a tuple."""
    return re.escape(str(tuple(shape)))


# -- look-at cameras ------------------------------------------------------------------------------


class TestLookAt:
    def test_hand_computed(self) -> None:
        # From (0, -2, 0) towards the origin: right = +x, down = -z (world up is image up),
        # forward = +y; the camera's centre is 2 in front of the world origin along its z.
        T = geometry.look_at(np.array([0.0, -2.0, 0.0]), np.zeros(3))
        np.testing.assert_array_equal(T[:3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]])
        np.testing.assert_array_equal(T[:3, 3], [0, 0, 2])
        np.testing.assert_array_equal(T[3], [0, 0, 0, 1])
        # Looking straight down with world y up in the image: DOWN_LOOKING.
        down = geometry.look_at([0.0, 0.0, 2.0], [0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])
        np.testing.assert_allclose(down, DOWN_LOOKING, atol=1e-15)

    def test_camera_sits_at_eye_and_sees_target_at_the_principal_point(self, rng) -> None:
        for _ in range(20):
            eye, target = rng.normal(size=3), rng.normal(size=3)
            T = geometry.look_at(eye, target)
            rotation = T[:3, :3]
            np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
            np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
            np.testing.assert_allclose(camera_centers(T), eye, atol=1e-12)
            (pixel,), (depth,) = project(target[None], K_64, T)
            np.testing.assert_allclose(pixel, K_64[:2, 2], atol=1e-9)
            np.testing.assert_allclose(depth, np.linalg.norm(target - eye), rtol=1e-12)
            # Up in the world is up in the image (smaller v), and the horizon stays level.
            above, _ = project((target + np.array([0.0, 0.0, 0.1]))[None], K_64, T)
            assert above[0, 1] < pixel[1]
            np.testing.assert_allclose(above[0, 0], pixel[0], atol=1e-9)

    def test_up_need_not_be_perpendicular(self) -> None:
        tilted = geometry.look_at([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], up=[0.3, 0.1, 2.0])
        plain = geometry.look_at([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], up=[0.0, 0.0, 1.0])
        assert not np.allclose(tilted, plain)
        # Any up in the plane of the view direction and world z gives the default frame.
        forward = -np.array([1.0, 2.0, 3.0]) / np.linalg.norm([1.0, 2.0, 3.0])
        up = np.array([0.0, 0.0, 5.0]) + 2.0 * forward
        np.testing.assert_allclose(
            geometry.look_at([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], up=up), plain, atol=1e-12
        )

    @pytest.mark.parametrize(
        ("eye", "target", "up", "match"),
        [
            ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], (0, 0, 1), "eye and target apart"),
            ([0.0, 0.0, 2.0], [0.0, 0.0, 0.0], (0, 0, 1), "parallel to up"),
            ([0.0, 0.0], [0.0, 0.0, 0.0], (0, 0, 1), r"eye must have shape \(3,\)"),
            ([0.0, 0.0, 1.0], [[0.0, 0.0, 0.0]], (0, 0, 1), r"target must have shape \(3,\)"),
        ],
    )
    def test_errors(self, eye, target, up, match) -> None:
        with pytest.raises(ValueError, match=match):
            geometry.look_at(eye, target, up)


# -- triangulation ---------------------------------------------------------------------------------


def look_at_extrinsics(rng: np.random.Generator, count: int, distance: float = 2.0) -> np.ndarray:
    """``(count, 4, 4)`` world→camera transforms of cameras on a sphere around the origin, each
    looking at it (OpenCV axes: z forward, y down)."""
    transforms = np.zeros((count, 4, 4))
    for c in range(count):
        direction = rng.normal(size=3)
        direction[2] = abs(direction[2]) + 0.3  # above the scene, like the envs' cameras
        transforms[c] = geometry.look_at(
            distance * direction / np.linalg.norm(direction), np.zeros(3)
        )
    return transforms


def observe(points: np.ndarray, K: np.ndarray, T: np.ndarray) -> np.ndarray:
    """``(*, C, N, 2)`` pixels of ``points (*, N, 3)`` in every camera of ``K, T (*, C, ...)``."""
    return project(points[..., None, :, :], K, T)[0]


@pytest.fixture
def scene(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two samples of 3 cameras looking at 5 points near the origin: ``points (2, 5, 3)``,
    ``K (2, 3, 3, 3)``, ``T (2, 3, 4, 4)`` and ``pixels (2, 3, 5, 2)``."""
    T = np.stack([look_at_extrinsics(rng, 3) for _ in range(2)])
    K = np.stack([random_intrinsics(rng, 3) for _ in range(2)])
    points = rng.uniform(-0.3, 0.3, size=(2, 5, 3))
    return points, K, T, observe(points, K, T)


class TestTriangulate:
    def test_exact_on_noise_free_views(self, scene, backend) -> None:
        to, back = backend
        points, K, T, pixels = scene
        result = back(geometry.triangulate(to(pixels), to(K), to(T)))
        assert result.shape == (2, 5, 3)
        np.testing.assert_allclose(result, points, atol=1e-9)

    def test_two_views_suffice(self, scene) -> None:
        points, K, T, pixels = scene
        result = geometry.triangulate(pixels[:, :2], K[:, :2], T[:, :2])
        np.testing.assert_allclose(result, points, atol=1e-9)

    def test_shared_intrinsics_broadcast_over_the_batch(self, scene) -> None:
        points, _, T, _ = scene
        K = random_intrinsics(np.random.default_rng(1), 3)  # (C, 3, 3) for every sample
        pixels = observe(points, K, T)
        np.testing.assert_allclose(geometry.triangulate(pixels, K, T), points, atol=1e-9)

    def test_float32_accuracy_at_the_envs_scale(self, scene) -> None:
        points, K, T, pixels = scene
        single = geometry.triangulate(
            *(torch.tensor(a, dtype=torch.float32) for a in (pixels, K, T))
        )
        assert single.dtype == torch.float32
        np.testing.assert_allclose(single.numpy(), points, atol=1e-4)  # a tenth of a millimetre

    def test_weights_downweight_an_outlier_view(self, rng) -> None:
        T, K = look_at_extrinsics(rng, 4), random_intrinsics(rng, 4)
        points = rng.uniform(-0.3, 0.3, size=(6, 3))
        pixels = observe(points, K, T)
        pixels[3] += 8.0  # camera 3 sees every point 8 px off
        weights = np.ones((4, 6))
        uniform = np.linalg.norm(geometry.triangulate(pixels, K, T, weights) - points, axis=-1)
        weights[3] = 0.01
        downweighted = geometry.triangulate(pixels, K, T, weights)
        down_error = np.linalg.norm(downweighted - points, axis=-1)
        assert np.all(uniform > 1e-3)  # the outlier moves the unweighted solution by millimetres
        assert np.all(down_error < uniform / 20)
        weights[3] = 0.0  # ignored altogether: exact again
        np.testing.assert_allclose(geometry.triangulate(pixels, K, T, weights), points, atol=1e-9)

    def test_weights_scale_invariant(self, scene, backend) -> None:
        to, back = backend
        _, K, T, pixels = scene
        weights = np.random.default_rng(2).uniform(0.1, 1.0, size=(2, 3, 5))
        pixels = pixels + np.random.default_rng(3).normal(scale=0.5, size=pixels.shape)
        one = back(geometry.triangulate(to(pixels), to(K), to(T), to(weights)))
        scaled = back(geometry.triangulate(to(pixels), to(K), to(T), to(weights * 7.0)))
        np.testing.assert_allclose(one, scaled, atol=1e-9)

    def test_fewer_than_two_weighted_views_give_nan(self, scene, backend) -> None:
        to, back = backend
        points, K, T, pixels = scene
        weights = np.ones((2, 3, 5))
        weights[0, 1:, 0] = 0.0  # sample 0, point 0: one view left
        weights[1, :, 2] = 0.0  # sample 1, point 2: no view
        result = back(geometry.triangulate(to(pixels), to(K), to(T), to(weights)))
        assert np.isnan(result[0, 0]).all() and np.isnan(result[1, 2]).all()
        finite = np.ones((2, 5), dtype=bool)
        finite[0, 0] = finite[1, 2] = False
        np.testing.assert_allclose(result[finite], points[finite], atol=1e-9)

    def test_single_camera_gives_nan(self, scene, backend) -> None:
        to, back = backend
        _, K, T, pixels = scene
        result = back(geometry.triangulate(to(pixels[:, :1]), to(K[:, :1]), to(T[:, :1])))
        assert result.shape == (2, 5, 3) and np.isnan(result).all()

    def test_ignored_views_may_hold_nan(self, scene) -> None:
        """A zero-weight observation is ignored, NaN pixels included, gradients too."""
        points, K, T, pixels = scene
        pixels = pixels.copy()
        pixels[:, 2] = np.nan
        weights = np.ones((2, 3, 5))
        weights[:, 2] = 0.0
        np.testing.assert_allclose(geometry.triangulate(pixels, K, T, weights), points, atol=1e-9)
        pixels_t, K_t, T_t, weights_t = to_torch(pixels, K, T, weights, grad=True)
        geometry.triangulate(pixels_t, K_t, T_t, weights_t).sum().backward()
        for tensor in (pixels_t, K_t, T_t, weights_t):
            assert torch.isfinite(tensor.grad).all()
        assert (pixels_t.grad[:, 2] == 0).all() and (weights_t.grad[:, 2] == 0).all()

    def test_gradient_of_degenerate_points_is_finite(self, scene) -> None:
        _, K, T, pixels = scene
        weights = np.ones((2, 3, 5))
        weights[:, 1:, 0] = 0.0
        inputs = to_torch(pixels, K, T, weights, grad=True)
        result = geometry.triangulate(*inputs)
        torch.nan_to_num(result).sum().backward()
        assert all(torch.isfinite(tensor.grad).all() for tensor in inputs)

    def test_gradcheck(self, rng) -> None:
        T, K = look_at_extrinsics(rng, 3), random_intrinsics(rng, 3)
        points = rng.uniform(-0.3, 0.3, size=(2, 3))
        pixels = observe(points, K, T) + rng.normal(scale=0.5, size=(3, 2, 2))
        weights = rng.uniform(0.2, 1.0, size=(3, 2))
        assert torch.autograd.gradcheck(
            geometry.triangulate, to_torch(pixels, K, T, weights, grad=True)
        )

    def test_gradient_moves_the_point_with_the_pixel(self, scene) -> None:
        """Moving a pixel along the image u axis moves the point along the camera's x axis."""
        _, K, T, pixels = scene
        pixels_t, K_t, T_t = to_torch(pixels[0], K[0], T[0])
        pixels_t.requires_grad_(True)
        point = geometry.triangulate(pixels_t, K_t, T_t)[0]  # point 0 of sample 0
        camera_x = torch.tensor(T[0, 0, 0, :3])
        (point @ camera_x).backward()
        assert pixels_t.grad[0, 0, 0] > 0  # u of camera 0 pushes the point along its x

    @pytest.mark.parametrize(
        ("points", "K", "T", "weights", "match"),
        [
            ((3, 5, 3), (3, 3, 3), (3, 4, 4), None, r"points must have shape.*\(3, 5, 3\)"),
            ((5, 2), (3, 3, 3), (3, 4, 4), None, r"points must have shape.*\(5, 2\)"),
            ((3, 5, 2), (2, 3, 3), (3, 4, 4), None, r"intrinsics.*C = 3.*\(2, 3, 3\)"),
            ((3, 5, 2), (3, 3, 3), (3, 3, 4), None, r"extrinsics.*\(3, 3, 4\)"),
            ((3, 5, 2), (3, 3, 3), (3, 4, 4), (5, 3), r"weights.*3, 5\).*\(5, 3\)"),
        ],
    )
    def test_rejects_bad_shapes(self, points, K, T, weights, match) -> None:
        weights = None if weights is None else np.ones(weights)
        with pytest.raises(ValueError, match=match):
            geometry.triangulate(np.zeros(points), np.zeros(K), np.zeros(T), weights)
