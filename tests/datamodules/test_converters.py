"""Converters: tiny LeRobot v2.1 / v3.0 and robomimic / LIBERO datasets built on disk, converted, read back."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_prophrl.actions import to_unified
from lightning_prophrl.constants import STATS_FILE
from lightning_prophrl.datamodules.converters import MissingKeyError, convert_hdf5, convert_lerobot
from lightning_prophrl.datamodules.converters.lerobot import decode_video_window
from lightning_prophrl.datamodules.shards import encode_mp4, iter_episodes, load_stats

FPS, H, W, TOL = 10, 32, 48, 6.0
TASKS = ["pick up the red cube", "open the top drawer"]


def colour(g: int, camera: int = 0) -> np.ndarray:
    """A flat colour per global frame ``g``: channels 12 levels apart between frames (>> H.264 error)."""
    c = np.array([10 + 12 * g, 250 - 12 * g, 30 + (97 * g) % 200], dtype=np.int64)
    return (c if camera == 0 else 255 - c).astype(np.uint8)


def flat_frames(gs, camera: int = 0) -> np.ndarray:
    return np.stack([np.broadcast_to(colour(g, camera), (H, W, 3)) for g in gs]).astype(np.uint8)


def assert_colours(frames: np.ndarray, gs, camera: int = 0) -> None:
    means = frames.reshape(len(frames), -1, 3).mean(1)
    want = np.stack([colour(g, camera) for g in gs]).astype(np.float64)
    assert means.shape == want.shape
    np.testing.assert_allclose(means, want, atol=TOL)


def write_mp4(path, frames) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps=FPS))


def feature(dtype: str, shape) -> dict:
    return {"dtype": dtype, "shape": list(shape), "names": None}


# ---------------------------------------------------------------------------------------------------------------------
# LeRobot builders
# ---------------------------------------------------------------------------------------------------------------------
def make_v21(root, lengths=(6, 4, 5), short_video: int | None = None, image_dtype: bool = False):
    """v2.1: per-episode parquet + per-episode mp4 for two cameras; ``ee_delta_euler`` (T, 7) actions."""
    rng = np.random.default_rng(0)
    cams = ["observation.images.top", "observation.images.wrist"]
    feats = {c: feature("image" if image_dtype else "video", (H, W, 3)) for c in cams}
    feats.update(action=feature("float32", (7,)), **{"observation.state": feature("float32", (4,))})
    feats["action.extra"] = feature("float32", (2,))  # declared but absent from the parquet files
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        feats[k] = feature("int64", (1,))
    info = dict(codebase_version="v2.1", robot_type="so100", fps=FPS, chunks_size=1000, features=feats,
                data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                video_path=None if image_dtype else "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    eps, start, truth = [], 0, []
    for e, n in enumerate(lengths):
        gs = list(range(start, start + n))
        act = rng.normal(size=(n, 7)).astype(np.float32)
        state = rng.normal(size=(n, 4)).astype(np.float32)
        cols = {"action": pa.array(list(act), pa.list_(pa.float32())),
                "observation.state": pa.array(list(state), pa.list_(pa.float32())),
                "timestamp": pa.array(np.arange(n) / FPS, pa.float32()), "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array([e] * n), "index": pa.array(gs), "task_index": pa.array([e % 2] * n)}  # fmt: skip
        if image_dtype:
            import cv2

            for c, cam in enumerate(cams):
                png = [cv2.imencode(".png", f[..., ::-1])[1].tobytes() for f in flat_frames(gs, c)]
                cols[cam] = pa.array([{"bytes": b, "path": None} for b in png])
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        if not image_dtype:
            for c, cam in enumerate(cams):
                video_gs = gs[:-1] if short_video == e else gs
                write_mp4(root / f"videos/chunk-000/{cam}/episode_{e:06d}.mp4", flat_frames(video_gs, c))
        eps.append({"episode_index": e, "tasks": [TASKS[e % 2]], "length": n})
        truth.append((gs, act, state))
        start += n
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eps))
    return truth


def make_v30(root, lengths=(5, 7, 4), video_order=(2, 0, 1)):
    """v3.0: episodes 0-1 in data file-000, episode 2 in file-001; all three in ONE mp4 in ``video_order``;
    ``ee_abs_quat`` (T, 8) actions; a ``next.success`` column; episode 1 has no ``tasks`` (task_index fallback)."""
    rng = np.random.default_rng(1)
    key = "observation.images.front"
    feats = {
        key: feature("video", (H, W, 3)),
        "action": feature("float32", (8,)),
        "next.success": feature("bool", (1,)),
    }
    info = dict(codebase_version="v3.0", robot_type="koch", fps=FPS, chunks_size=1000, features=feats,
                data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")  # fmt: skip
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    pq.write_table(pa.table({"task": TASKS, "task_index": [0, 1]}), root / "meta/tasks.parquet")
    starts = np.concatenate([[0], np.cumsum(lengths)])
    v_start, t = {}, 0.0
    for e in video_order:  # the packed video holds the episodes in another order than their indices
        v_start[e] = t
        t += lengths[e] / FPS
    video = np.concatenate([flat_frames(range(starts[e], starts[e + 1])) for e in video_order])
    write_mp4(root / f"videos/{key}/chunk-000/file-000.mp4", video)
    truth, data_rows, ep_rows = [], {0: [], 1: []}, []
    for e, n in enumerate(lengths):
        pos = rng.normal(scale=0.1, size=(n, 3))
        q = rng.normal(size=(n, 4))
        act = np.concatenate([pos, q / np.linalg.norm(q, axis=1, keepdims=True), rng.uniform(size=(n, 1))], 1)
        act = act.astype(np.float32)
        success = [False] * n if e == 1 else [False] * (n - 1) + [True]
        file_index = 0 if e < 2 else 1
        for i in range(n):
            data_rows[file_index].append({"action": act[i], "next.success": success[i], "episode_index": e,
                                          "index": int(starts[e] + i), "timestamp": i / FPS, "task_index": e % 2})  # fmt: skip
        ep_rows.append({"episode_index": e, "tasks": [] if e == 1 else [TASKS[e % 2]], "length": n,
                        "data/chunk_index": 0, "data/file_index": file_index, "dataset_from_index": int(starts[e]),
                        "dataset_to_index": int(starts[e + 1]), f"videos/{key}/chunk_index": 0,
                        f"videos/{key}/file_index": 0, f"videos/{key}/from_timestamp": v_start[e],
                        f"videos/{key}/to_timestamp": v_start[e] + n / FPS, "stats/action/mean": [0.0] * 8})  # fmt: skip
        truth.append((list(range(starts[e], starts[e + 1])), act, success))
    for file_index, rows in data_rows.items():
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        cols["action"] = pa.array(cols["action"], pa.list_(pa.float32(), 8))
        path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
    ep_cols = {k: [r[k] for r in ep_rows] for k in ep_rows[0]}
    ep_cols["tasks"] = pa.array(ep_cols["tasks"], pa.list_(pa.string()))
    pq.write_table(pa.table(ep_cols), root / "meta/episodes/chunk-000/file-000.parquet")
    return truth


# ---------------------------------------------------------------------------------------------------------------------
# LeRobot tests
# ---------------------------------------------------------------------------------------------------------------------
def test_lerobot_v21_round_trip(tmp_path):
    truth = make_v21(tmp_path / "src")
    summary = convert_lerobot(tmp_path / "src", tmp_path / "out", action_convention="ee_delta_euler",
                              frame_format="npy", progress=False)  # fmt: skip
    assert (summary["episodes"], summary["frames"], summary["skipped"]) == (3, 15, 0)
    assert summary["image_key"] == "observation.images.top"  # first video feature
    eps = list(iter_episodes(tmp_path / "out"))
    assert [e.key for e in eps] == ["src/000000", "src/000001", "src/000002"]
    for e, ep, (gs, act, state) in zip(range(3), eps, truth):
        want, mask = to_unified(act, "ee_delta_euler")
        np.testing.assert_array_equal(ep.actions, want)
        np.testing.assert_array_equal(ep.action_mask, mask)
        np.testing.assert_array_equal(ep.state, state)
        assert_colours(ep.frames, gs)
        assert ep.meta["instruction"] == TASKS[e % 2]
        assert ep.meta["dataset"] == "src" and ep.meta["embodiment"] == "so100" and ep.meta["fps"] == FPS
        assert ep.meta["success"] is True and ep.meta["source"]["episode_index"] == e
    stats = load_stats(tmp_path / "out")
    assert stats.count == 15 and stats.extra["episodes"] == 3


def test_lerobot_v21_other_camera_mp4_resize(tmp_path):
    truth = make_v21(tmp_path / "src")
    convert_lerobot(tmp_path / "src", tmp_path / "out", action_convention="ee_delta_euler", progress=False,
                    image_key="observation.images.wrist", resize=(16, 24), frame_format="mp4", max_episodes=2,
                    instruction_override="do it", embodiment="arm", dataset_name="my.set")  # fmt: skip
    eps = list(iter_episodes(tmp_path / "out"))
    assert [e.key for e in eps] == ["my_set/000000", "my_set/000001"]
    for ep, (gs, _, _) in zip(eps, truth):
        assert ep.frames.shape == (len(gs), 16, 24, 3)
        assert_colours(ep.frames, gs, camera=1)
        assert (ep.meta["instruction"], ep.meta["embodiment"], ep.meta["dataset"]) == ("do it", "arm", "my.set")


def test_lerobot_v21_image_features_are_exact(tmp_path):
    truth = make_v21(tmp_path / "src", image_dtype=True)
    convert_lerobot(tmp_path / "src", tmp_path / "out", action_convention="ee_delta_euler", frame_format="npy",
                    image_key="observation.images.wrist", progress=False)  # fmt: skip
    for ep, (gs, _, _) in zip(iter_episodes(tmp_path / "out"), truth):
        np.testing.assert_array_equal(ep.frames, flat_frames(gs, camera=1))


def test_lerobot_v30_packed_episodes(tmp_path):
    truth = make_v30(tmp_path / "src")
    summary = convert_lerobot(tmp_path / "src", tmp_path / "out", action_convention="ee_abs_quat", frame_format="npy",
                              progress=False)  # fmt: skip
    assert (summary["episodes"], summary["frames"], summary["source_format"]) == (3, 16, "lerobot-v3.0")
    eps = list(iter_episodes(tmp_path / "out"))
    assert [len(e) for e in eps] == [5, 7, 4]
    for e, ep, (gs, act, success) in zip(range(3), eps, truth):
        want, mask = to_unified(act, "ee_abs_quat")
        np.testing.assert_array_equal(ep.actions, want)
        np.testing.assert_array_equal(ep.action_mask, mask)
        assert_colours(ep.frames, gs)  # boundaries come from from/to timestamps, not from the packing order
        assert ep.meta["instruction"] == TASKS[e % 2]  # episode 1 falls back to task_index -> tasks.parquet
        assert ep.meta["success"] is any(success) and ep.meta["success_steps"] == success
        assert ep.meta["embodiment"] == "koch" and ep.meta["source"]["codebase_version"] == "v3.0"
    assert [e.success for e in eps] == [True, False, True]
    assert load_stats(tmp_path / "out").extra["success_rate"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("codec", ["libsvtav1", "libx264"])
def test_decode_video_window_seeks_between_keyframes(tmp_path, codec):
    """LeRobot's default codec is AV1; keyframes every 8 frames so the window start needs a real seek."""
    import av

    gs = list(range(20))
    with av.open(str(tmp_path / "v.mp4"), "w") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        s.options = {"g": "8", "preset": "12" if codec == "libsvtav1" else "veryfast", "crf": "10"}
        for f in flat_frames(gs):
            c.mux(
                s.encode(
                    av.VideoFrame.from_ndarray(np.ascontiguousarray(np.tile(f, (2, 2, 1))[:64, :64]), format="rgb24")
                )
            )
        c.mux(s.encode())
    frames = decode_video_window(tmp_path / "v.mp4", 1.1, 1.7, FPS)
    assert_colours(frames, gs[11:17])


def test_lerobot_frame_count_must_match(tmp_path):
    make_v21(tmp_path / "src", short_video=1)
    with pytest.raises(ValueError, match=r"episode 1: 3 frames .* but 4 action rows"):
        convert_lerobot(tmp_path / "src", tmp_path / "out", action_convention="ee_delta_euler", progress=False)
    summary = convert_lerobot(tmp_path / "src", tmp_path / "out2", action_convention="ee_delta_euler",
                              on_error="skip", progress=False)  # fmt: skip
    assert (summary["episodes"], summary["skipped"]) == (2, 1)
    assert "episode 1" in summary["skipped_episodes"][0]["episode"]
    assert [e.key for e in iter_episodes(tmp_path / "out2")] == ["src/000000", "src/000002"]


def test_lerobot_missing_keys_are_named(tmp_path):
    make_v21(tmp_path / "src")
    with pytest.raises(MissingKeyError, match=r"info\.json: missing key 'act'"):
        convert_lerobot(tmp_path / "src", tmp_path / "o1", action_convention="unified", action_key="act")
    with pytest.raises(MissingKeyError, match=r"episode_000000\.parquet: missing key 'action\.extra'"):
        convert_lerobot(tmp_path / "src", tmp_path / "o2", action_convention="unified", action_key="action.extra")
    with pytest.raises(MissingKeyError, match="missing key 'observation.images.side'"):
        convert_lerobot(
            tmp_path / "src", tmp_path / "o3", action_convention="unified", image_key="observation.images.side"
        )


def test_lerobot_conventions_are_explicit(tmp_path):
    make_v21(tmp_path / "src")
    with pytest.raises(ValueError, match="forward-kinematics"):
        convert_lerobot(tmp_path / "src", tmp_path / "o1", action_convention="joint", progress=False)
    with pytest.raises(ValueError, match="action_convention must be one of"):
        convert_lerobot(tmp_path / "src", tmp_path / "o2", action_convention="auto")
    with pytest.raises(ValueError, match=r"episode 0: cannot map actions with convention 'metaworld'"):
        convert_lerobot(tmp_path / "src", tmp_path / "o3", action_convention="metaworld", progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# robomimic / LIBERO builders
# ---------------------------------------------------------------------------------------------------------------------
QUAT_Z90_WXYZ = np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])  # 90 degrees about z


def patterned_frames(n: int, seed: int) -> np.ndarray:
    """Frames whose top and bottom halves and left/right differ, with a per-frame value."""
    f = np.zeros((n, 8, 12, 3), dtype=np.uint8)
    f[:, :4, :, 0] = 200
    f[:, :, :6, 1] = 120
    f[..., 2] = (np.arange(n, dtype=np.uint8) * 7 + seed)[:, None, None]
    return f


def make_hdf5(path, layout: str, lengths, fail=(), instruction="put the bowl on the plate", mismatch=None):
    """Demos whose end effector moves +1 cm along world y per step while rotated 90 degrees about z (so along the
    tool x axis), fingers opening linearly; random (T, 7) stored actions."""
    rng = np.random.default_rng(len(path.name))
    truth = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        kwargs = {"robots": ["Panda"], "control_freq": 20}
        if layout == "libero":
            data.attrs["problem_info"] = json.dumps(
                {"problem_name": "libero_kitchen", "language_instruction": instruction}
            )
            data.attrs["env_args"] = json.dumps({"env_name": "Libero_Kitchen", "env_kwargs": kwargs})
        else:
            data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": kwargs})
        for i, n in lengths.items():
            g = data.create_group(f"demo_{i}")
            act = rng.uniform(-1, 1, size=(n, 7)).astype(np.float32)
            g.create_dataset("actions", data=act)
            rewards, dones = np.zeros(n), np.zeros(n, dtype=np.uint8)
            if i not in fail:
                rewards[-1], dones[-1] = 1.0, 1
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=dones)
            pos = np.stack([np.full(n, 0.1), 0.01 * np.arange(n), np.full(n, 0.9)], 1)
            opening = np.linspace(0.0, 1.0, n)
            fingers = np.stack([0.04 * opening, -0.04 * opening], 1)
            frames = patterned_frames(n if mismatch != i else n - 1, seed=i)
            obs = g.create_group("obs")
            if layout == "libero":
                obs.create_dataset("agentview_rgb", data=frames)
                obs.create_dataset("ee_pos", data=pos)
                obs.create_dataset("ee_ori", data=np.tile([0.0, 0.0, np.pi / 2], (n, 1)))  # axis-angle
                obs.create_dataset("gripper_states", data=fingers)
            else:
                obs.create_dataset("agentview_image", data=frames)
                obs.create_dataset("robot0_eef_pos", data=pos)
                obs.create_dataset("robot0_eef_quat", data=np.tile(QUAT_Z90_WXYZ[[1, 2, 3, 0]], (n, 1)))  # xyzw
                obs.create_dataset("robot0_gripper_qpos", data=fingers)
            truth[f"demo_{i}"] = (act, frames, pos, opening)
        f.create_group("mask").create_dataset("train", data=np.array([b"demo_0", b"demo_2"]))
    return truth


# ---------------------------------------------------------------------------------------------------------------------
# robomimic / LIBERO tests
# ---------------------------------------------------------------------------------------------------------------------
def test_robomimic_round_trip(tmp_path):
    truth = make_hdf5(tmp_path / "lift.hdf5", "robomimic", {0: 4, 1: 5, 2: 3, 10: 6}, fail=(2,))
    summary = convert_hdf5(tmp_path / "lift.hdf5", tmp_path / "out", action_convention="ee_delta_euler",
                           frame_format="npy", progress=False)  # fmt: skip
    assert (summary["episodes"], summary["frames"], summary["skipped"]) == (4, 18, 0)
    eps = list(iter_episodes(tmp_path / "out"))
    assert [e.meta["source"]["demo"] for e in eps] == ["demo_0", "demo_1", "demo_2", "demo_10"]  # natural order
    assert [e.key for e in eps][-1] == "lift/000-demo_10"
    for ep in eps:
        act, frames, pos, opening = truth[ep.meta["source"]["demo"]]
        want, mask = to_unified(act, "ee_delta_euler")
        np.testing.assert_array_equal(ep.actions, want)
        np.testing.assert_array_equal(ep.action_mask, mask)
        np.testing.assert_array_equal(ep.frames, frames)  # robomimic images are stored upright: no flip
        assert ep.ee_poses.shape == (len(act), 1, 8)
        np.testing.assert_allclose(ep.ee_poses[:, 0, :3], pos, atol=1e-6)
        np.testing.assert_allclose(ep.ee_poses[:, 0, 3:7], np.tile(QUAT_Z90_WXYZ, (len(act), 1)), atol=1e-6)
        np.testing.assert_allclose(ep.ee_poses[:, 0, 7], opening, atol=1e-6)
        assert ep.state.shape == (len(act), 3 + 4 + 2)
        assert (ep.meta["instruction"], ep.meta["task"], ep.meta["embodiment"], ep.meta["fps"]) == (
            "Lift", "Lift", "panda", 20)  # fmt: skip
    assert [e.success for e in eps] == [True, True, False, True]
    assert eps[0].meta["success_steps"] == [False, False, False, True]
    assert load_stats(tmp_path / "out").extra["success_rate"] == 0.75


def test_robomimic_filter_key_override_and_mp4(tmp_path):
    make_hdf5(tmp_path / "lift.hdf5", "robomimic", {0: 4, 1: 5, 2: 3})
    summary = convert_hdf5(tmp_path / "lift.hdf5", tmp_path / "out", action_convention="ee_delta_euler",
                           filter_key="train", instruction_override="lift the cube", resize=(16, 24), progress=False)  # fmt: skip
    assert summary["episodes"] == 2
    eps = list(iter_episodes(tmp_path / "out"))
    assert [e.meta["source"]["demo"] for e in eps] == ["demo_0", "demo_2"]
    assert all(e.meta["instruction"] == "lift the cube" and e.frames.shape[1:] == (16, 24, 3) for e in eps)


def test_libero_directory_flip_and_instruction(tmp_path):
    (tmp_path / "suite").mkdir()
    t_a = make_hdf5(tmp_path / "suite/a_demo.hdf5", "libero", {0: 4, 1: 3}, instruction="open the drawer")
    t_b = make_hdf5(tmp_path / "suite/b_demo.hdf5", "libero", {0: 5}, fail=(0,), instruction="close the door")
    summary = convert_hdf5(tmp_path / "suite", tmp_path / "out", action_convention="ee_delta_euler", layout="libero",
                           frame_format="npy", progress=False)  # fmt: skip
    assert (summary["episodes"], summary["frames"]) == (3, 12)
    eps = list(iter_episodes(tmp_path / "out"))
    assert [e.key for e in eps] == ["suite/000-demo_0", "suite/000-demo_1", "suite/001-demo_0"]
    assert [e.meta["instruction"] for e in eps] == ["open the drawer", "open the drawer", "close the door"]
    assert [e.success for e in eps] == [True, True, False]
    for ep, (act, frames, _, _) in zip(eps, [t_a["demo_0"], t_a["demo_1"], t_b["demo_0"]]):
        np.testing.assert_array_equal(ep.frames, frames[:, ::-1, ::-1])  # default flip for LIBERO: rotate 180
        np.testing.assert_array_equal(ep.actions, to_unified(act, "ee_delta_euler")[0])
        np.testing.assert_allclose(ep.ee_poses[:, 0, 3:7], np.tile(QUAT_Z90_WXYZ, (len(act), 1)), atol=1e-7)
    assert eps[0].meta["task"] == "libero_kitchen" and eps[0].meta["embodiment"] == "panda"
    flipped = convert_hdf5(tmp_path / "suite/a_demo.hdf5", tmp_path / "out2", action_convention="ee_delta_euler",
                           layout="libero", flip="vertical", frame_format="npy", progress=False)  # fmt: skip
    assert flipped["episodes"] == 2
    np.testing.assert_array_equal(next(iter_episodes(tmp_path / "out2")).frames, t_a["demo_0"][1][:, ::-1])


@pytest.mark.parametrize("layout", ["robomimic", "libero"])
def test_actions_from_ee_poses_closed_form(tmp_path, layout):
    """World +y motion with the hand turned 90 degrees about z is +x in the tool frame: dpos = (0.01, 0, 0)."""
    make_hdf5(tmp_path / "d.hdf5", layout, {0: 5})
    convert_hdf5(tmp_path / "d.hdf5", tmp_path / "out", action_convention="ee_abs_quat", action_key="ee_poses",
                 layout=layout, frame_format="npy", progress=False)  # fmt: skip
    (ep,) = iter_episodes(tmp_path / "out")
    want = np.zeros((5, 14), dtype=np.float32)
    want[:-1, 0] = 0.01
    want[:, 6] = np.linspace(0.0, 1.0, 5)
    np.testing.assert_allclose(ep.actions, want, atol=1e-7)
    np.testing.assert_array_equal(ep.action_mask, np.arange(14) < 7)


def test_hdf5_errors_are_named(tmp_path):
    make_hdf5(tmp_path / "d.hdf5", "robomimic", {0: 4, 1: 5}, mismatch=1)
    with pytest.raises(MissingKeyError, match=r"d\.hdf5: missing key 'data/demo_0/obs/eye_in_hand_image'"):
        convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o1", action_convention="unified", image_key="eye_in_hand_image")
    with pytest.raises(MissingKeyError, match=r"d\.hdf5: missing key 'data/demo_0/delta_actions'"):
        convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o2", action_convention="unified", action_key="delta_actions")
    with pytest.raises(ValueError, match="forward-kinematics"):
        convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o3", action_convention="joint", progress=False)
    with pytest.raises(ValueError, match="flip must be one of"):
        convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o0", action_convention="unified", flip="upside")
    with pytest.raises(ValueError, match="use action_convention='ee_abs_quat'"):
        convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o4", action_convention="unified", action_key="ee_poses")
    with pytest.raises(ValueError, match=r"demo 'demo_1': 4 frames .* but 5 steps"):
        convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o5", action_convention="ee_delta_euler", progress=False)
    summary = convert_hdf5(tmp_path / "d.hdf5", tmp_path / "o6", action_convention="ee_delta_euler", on_error="skip",
                           progress=False)  # fmt: skip
    assert (summary["episodes"], summary["skipped"]) == (1, 1)
    assert (tmp_path / "o6" / STATS_FILE).exists()


def test_lerobot_joint_space_robot_converts_through_its_forward_kinematics(tmp_path, capsys):
    """A joint-space dataset (``action_convention="joint"``) goes through the caller's forward kinematics, from Python
    and from ``prophrl-data --joint-mapping MODULE:FUNCTION``; without one, or with a bad one, it is refused by name."""
    from lightning_prophrl.data_cli import main
    from tests.datamodules.joint_fk import planar_to_unified

    truth = make_v21(tmp_path / "src")
    convert_lerobot(tmp_path / "src", tmp_path / "py", action_convention="joint", joint_mapping=planar_to_unified,
                    frame_format="npy", progress=False)  # fmt: skip
    main(["convert", "lerobot", str(tmp_path / "src"), "--out", str(tmp_path / "cli"), "--action-convention", "joint",
          "--joint-mapping", "tests.datamodules.joint_fk:planar_to_unified", "--frame-format", "npy"])  # fmt: skip
    for out in ("py", "cli"):
        eps = list(iter_episodes(tmp_path / out))
        assert len(eps) == 3
        for ep, (_, act, _) in zip(eps, truth, strict=True):
            want, mask = planar_to_unified(act.astype(np.float64))
            np.testing.assert_allclose(ep.actions, want, rtol=0, atol=1e-6)
            np.testing.assert_array_equal(ep.action_mask, mask)

    with pytest.raises(ValueError, match="joint_mapping"):
        convert_lerobot(tmp_path / "src", tmp_path / "none", action_convention="joint", progress=False)
    with pytest.raises(ValueError, match="only with action_convention 'joint'"):
        convert_lerobot(tmp_path / "src", tmp_path / "other", action_convention="ee_delta_euler",
                        joint_mapping=planar_to_unified, progress=False)  # fmt: skip
    capsys.readouterr()  # the successful conversions' progress and summary
    for spec in ("no_colon", "tests.datamodules.joint_fk:missing", "no_such_module_xyz:f"):
        with pytest.raises(SystemExit):
            main(["convert", "lerobot", str(tmp_path / "src"), "--out", str(tmp_path / "bad"), "--action-convention",
                  "joint", "--joint-mapping", spec])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --joint-mapping") and spec in err[0]
        assert not (tmp_path / "bad").exists()


ARM_URDF = """<?xml version="1.0"?>
<robot name="arm6">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="l4"/><link name="l5"/>
  <link name="l6"/><link name="tool"/>
{joints}
  <joint name="tool_joint" type="fixed"><parent link="l6"/><child link="tool"/><origin xyz="0.05 0 0" rpy="0 0 0"/></joint>
</robot>
"""
# (origin xyz, rotation axis) of the six revolute joints: base -> l1 -> ... -> l6
ARM_JOINTS = [((0, 0, 0.1), (0, 0, 1)), ((0, 0, 0.05), (0, 1, 0)), ((0.2, 0, 0), (0, 1, 0)),
              ((0.15, 0, 0), (1, 0, 0)), ((0.05, 0, 0), (0, 1, 0)), ((0.04, 0, 0), (1, 0, 0))]  # fmt: skip


def write_arm_urdf(path):
    links = ["base", "l1", "l2", "l3", "l4", "l5", "l6"]
    joints = "\n".join(
        f'  <joint name="j{i + 1}" type="revolute"><parent link="{links[i]}"/><child link="{links[i + 1]}"/>'
        f'<origin xyz="{" ".join(map(str, xyz))}" rpy="0 0 0"/><axis xyz="{" ".join(map(str, axis))}"/>'
        f'<limit lower="-6" upper="6" effort="1" velocity="1"/></joint>'
        for i, (xyz, axis) in enumerate(ARM_JOINTS)
    )
    path.write_text(ARM_URDF.format(joints=joints))
    return path


def arm_fk(q):
    """The same arm's tool pose by hand (homogeneous transforms, Rodrigues' rotations): ``(4, 4)``."""
    pose = np.eye(4)
    for angle, (xyz, axis) in zip(q, ARM_JOINTS, strict=True):
        k = np.array(axis, float)
        skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        step = np.eye(4)
        step[:3, :3] = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew
        shift = np.eye(4)
        shift[:3, 3] = xyz
        pose = pose @ shift @ step
    tool = np.eye(4)
    tool[0, 3] = 0.05
    return pose @ tool


def quat_to_matrix(q):
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])  # fmt: skip


def test_lerobot_joint_space_robot_converts_through_its_urdf(tmp_path, capsys):
    """``--urdf PATH --ee-link NAME``: each step's joint positions go through the URDF's forward kinematics (checked
    against the same chain by hand), and the poses are mapped like end-effector data."""
    pytest.importorskip("pytorch_kinematics")
    from lightning_prophrl.data_cli import main
    from lightning_prophrl.datamodules.converters.kinematics import URDFJointMapping

    urdf = write_arm_urdf(tmp_path / "arm.urdf")
    truth = make_v21(tmp_path / "src")  # (T, 7) actions: 6 joint positions + gripper
    mapping = URDFJointMapping(urdf, "tool")
    assert mapping.width == 7 and mapping.joint_names == [[f"j{i}" for i in range(1, 7)]]
    for _, act, _ in truth:
        poses = mapping.end_effector_poses(act)
        for q, pose in zip(act.astype(np.float64), poses, strict=True):
            want = arm_fk(q[:6])
            np.testing.assert_allclose(pose[:3], want[:3, 3], atol=1e-9)
            np.testing.assert_allclose(quat_to_matrix(pose[3:7]), want[:3, :3], atol=1e-9)
            assert pose[7] == np.clip(q[6], 0, 1)

    main(["convert", "lerobot", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--action-convention", "joint",
          "--urdf", str(urdf), "--ee-link", "tool", "--frame-format", "npy"])  # fmt: skip
    for ep, (_, act, _) in zip(iter_episodes(tmp_path / "out"), truth, strict=True):
        want, mask = to_unified(mapping.end_effector_poses(act), "ee_abs_quat")
        np.testing.assert_allclose(ep.actions, want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ep.action_mask, mask)
    capsys.readouterr()

    bad = [(["--urdf", str(urdf)], "--urdf and --ee-link go together"),
           (["--urdf", str(urdf), "--ee-link", "hand"], "--ee-link 'hand' is not a link"),
           (["--urdf", str(tmp_path / "none.urdf"), "--ee-link", "tool"], "--urdf"),
           ([], "--action-convention joint needs the robot's forward kinematics: --urdf PATH --ee-link NAME")]  # fmt: skip
    for flags, message in bad:
        with pytest.raises(SystemExit):
            main(["convert", "lerobot", str(tmp_path / "src"), "--out", str(tmp_path / "bad"), "--action-convention",
                  "joint", *flags])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "bad").exists()
