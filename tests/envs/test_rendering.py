"""FastRenderer: the fast path renders what mujoco.Renderer renders, and the camera model (K, extrinsics, projection)
agrees with the rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_prophrl.envs.rendering import (  # first: sets MUJOCO_GL before mujoco is imported
    CAMERA_PRESETS,
    FastRenderer,
    FreeCamera,
    fovy_to_intrinsics,
    pose_to_extrinsics,
    project_points,
)

mujoco = pytest.importorskip("mujoco")
pytest.importorskip("metaworld")

from lightning_prophrl.envs.metaworld import make_seeded_env, reset_seeded  # noqa: E402

GRIPPER_BODIES = ("hand", "rightclaw", "rightpad", "leftclaw", "leftpad", "right_hand")


@pytest.fixture(scope="module")
def env():
    env = make_seeded_env("pick-place-v3")
    reset_seeded(env, 1000)
    return env


def _geoms_of_bodies(model, names) -> np.ndarray:
    ids = {model.body(n).id for n in names}
    return np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in ids])


def test_fast_path_is_pixel_identical_to_mujoco_renderer(env):
    cam = CAMERA_PRESETS["workspace"]
    with FastRenderer(env.model, env.data, (48, 64), "workspace") as fast:
        img = fast.render()
        ref_renderer = mujoco.Renderer(env.model, 48, 64)
        try:
            ref_renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            ref_renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            mjv_cam = mujoco.MjvCamera()
            mjv_cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            mjv_cam.lookat[:], mjv_cam.distance = cam.lookat, cam.distance
            mjv_cam.azimuth, mjv_cam.elevation = cam.azimuth, cam.elevation
            ref_renderer.update_scene(env.data, mjv_cam)
            ref = ref_renderer.render()
        finally:
            ref_renderer.close()
        again = fast.render()  # the shared GL context is made current again after another context was used
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert env.model.vis.quality.offsamples == 0
    np.testing.assert_array_equal(img, ref)
    np.testing.assert_array_equal(again, ref)


def test_intrinsics_closed_form():
    k = fovy_to_intrinsics(45.0, 64, 96)
    f = 32.0 / np.tan(np.deg2rad(22.5))
    np.testing.assert_allclose(k, [[f, 0, 47.5], [0, f, 31.5], [0, 0, 1]])


def test_extrinsics_match_free_camera_and_centre_lookat(env):
    cam = FreeCamera(lookat=(0.1, 0.6, 0.05), distance=0.9, azimuth=120.0, elevation=-50.0)
    with FastRenderer(env.model, env.data, (60, 80), cam) as r:
        extr, k = r.extrinsics(), r.intrinsics()
        uv, depth = r.project(np.array(cam.lookat))
    np.testing.assert_allclose(extr, pose_to_extrinsics(*cam.pose()), atol=1e-6)  # MuJoCo's pose == closed form
    rot = extr[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(uv, [39.5, 29.5], atol=1e-4)  # the looked-at point is the image centre
    assert depth == pytest.approx(0.9, abs=1e-6)
    # Back-projection with K^-1 and the inverse extrinsics recovers world points exactly.
    pts = np.array([[0.0, 0.7, 0.0], [0.2, 0.5, 0.3], [-0.1, 0.8, 0.1]])
    uv, depth = project_points(pts, k, extr)
    cam_pts = (np.linalg.inv(k) @ np.c_[uv, np.ones(3)].T).T * depth[:, None]
    world = (np.linalg.inv(extr) @ np.c_[cam_pts, np.ones(3)].T).T[:, :3]
    np.testing.assert_allclose(world, pts, atol=1e-9)


@pytest.mark.parametrize("camera", ["workspace", "overview"])
def test_projection_lands_on_rendered_object_and_gripper(env, camera):
    with FastRenderer(env.model, env.data, 128, camera) as r:
        seg = r.render_segmentation()
        # The puck: the centroid of its visible pixels is its projected centre.
        puck = env.model.geom("objGeom").id
        rows, cols = np.nonzero(seg == puck)
        assert len(rows) >= 20
        uv, depth = r.project(env.data.geom_xpos[puck])
        assert depth > 0
        np.testing.assert_allclose(uv, [cols.mean(), rows.mean()], atol=1.0)
        # The hand position (obs[:3]) projects inside the bounding box of the rendered gripper.
        rows, cols = np.nonzero(np.isin(seg, _geoms_of_bodies(env.model, GRIPPER_BODIES)))
        (u, v), _ = r.project(env.data.body("hand").xpos)
        assert cols.min() - 1 <= u <= cols.max() + 1 and rows.min() - 1 <= v <= rows.max() + 1


def test_images_are_upright(env):
    with FastRenderer(env.model, env.data, 64, "workspace") as r:
        seg = r.render_segmentation()
        table_rows = np.nonzero(np.isin(seg, _geoms_of_bodies(env.model, ("tablelink",))))[0]
        arm_rows = np.nonzero(np.isin(seg, _geoms_of_bodies(env.model, ("right_l4", "right_l5"))))[0]
        (_, v_low), _ = r.project(np.array([0.0, 0.6, 0.0]))
        (_, v_high), _ = r.project(np.array([0.0, 0.6, 0.3]))
    assert table_rows.mean() > 32  # the table fills the lower half
    assert arm_rows.mean() < table_rows.mean()  # the upper arm is above it
    assert v_high < v_low  # world up is image up


def test_workspace_preset_keeps_the_puck_and_goal_in_view_and_larger():
    env = make_seeded_env("pick-place-v3")
    puck = env.model.geom("objGeom").id
    with (
        FastRenderer(env.model, env.data, 64, "workspace") as ws,
        FastRenderer(env.model, env.data, 64, "overview") as ov,
    ):
        for seed in (1000, 1001, 1002):
            reset_seeded(env, seed)
            for point in (env.data.geom_xpos[puck], env._target_pos, env.data.body("hand").xpos):
                uv, depth = ws.project(point)
                assert depth > 0 and (uv >= 2).all() and (uv <= 61).all(), (seed, point, uv)
            ws_pixels = (ws.render_segmentation() == puck).sum()
            assert ws_pixels >= 4
            assert ws_pixels > (ov.render_segmentation() == puck).sum()


def test_bad_camera_arguments(env):
    with pytest.raises(ValueError, match="nor in"):
        FastRenderer(env.model, env.data, 64, "no-such-camera")
    with pytest.raises(ValueError, match="elevation"):
        FreeCamera(elevation=-90.0)
    with pytest.raises(ValueError, match="size"):
        FastRenderer(env.model, env.data, 0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        project_points(np.zeros((2, 2)), np.eye(3), np.eye(4))


def test_renderers_of_one_task_share_a_render_context_and_render_as_if_alone():
    from lightning_prophrl.envs import rendering

    def frame_alone(seed: int) -> np.ndarray:
        e = make_seeded_env("window-open-v3")
        reset_seeded(e, seed)
        with FastRenderer(e.model, e.data, 64, "workspace") as r:
            assert rendering._RENDER_CONTEXTS[r._key][1] == 1
            return r.render()

    alone = {s: frame_alone(s) for s in (1000, 1001)}  # each from a context of its own, freed after
    envs = [make_seeded_env("window-open-v3") for _ in range(3)]
    for e, s in zip(envs, (1000, 1001, 1000)):
        reset_seeded(e, s)
    shared = [FastRenderer(e.model, e.data, 64, "workspace") for e in envs]
    other = make_seeded_env("drawer-open-v3")
    own = FastRenderer(other.model, other.data, 64, "workspace")
    try:
        assert shared[0]._context is shared[1]._context is shared[2]._context is not own._context
        assert rendering._RENDER_CONTEXTS[shared[0]._key][1] == 3
        np.testing.assert_array_equal(shared[0].render(), alone[1000])
        np.testing.assert_array_equal(shared[1].render(), alone[1001])  # another state through the same context
        shared[0].close()
        shared[1].close()
        np.testing.assert_array_equal(shared[2].render(), alone[1000])  # the last user keeps it alive
        assert rendering._RENDER_CONTEXTS[shared[2]._key][1] == 1
    finally:
        key = shared[2]._key
        for r in (*shared, own):
            r.close()
    assert key not in rendering._RENDER_CONTEXTS  # freed with the last renderer
    with pytest.raises(RuntimeError, match="closed"):
        shared[2].render()
