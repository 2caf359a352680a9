"""Small source datasets written on disk for the fault tests: a robomimic hdf5 file and a LeRobot v2.1 directory with
PNG image features (no video codec), each with one fault switched on by an argument."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

H, W = 8, 12
QUAT_XYZW = np.array([0.0, 0.0, 0.0, 1.0])  # identity, robomimic order


def frames(n: int, seed: int = 0) -> np.ndarray:
    """``(n, H, W, 3) uint8`` frames with a per-frame value."""
    f = np.zeros((n, H, W, 3), dtype=np.uint8)
    f[..., 0] = (np.arange(n, dtype=np.uint8) * 9 + seed)[:, None, None]
    f[:, : H // 2, :, 1] = 200
    return f


def write_robomimic(
    path: Path,
    lengths: dict[int, int],
    *,
    robots: tuple[str, ...] = ("Panda",),
    action_width: int = 7,
    edit=None,
) -> Path:
    """``data/demo_N`` groups with ``(T, action_width)`` actions, upright uint8 images, end-effector position,
    quaternion (xyzw) and fingers, rewards and dones. ``edit(name, group)`` may damage a demo after it is written."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": {"robots": list(robots)}})
        for i, n in lengths.items():
            g = data.create_group(f"demo_{i}")
            g.create_dataset("actions", data=rng.uniform(-1, 1, size=(n, action_width)))
            g.create_dataset("rewards", data=np.r_[np.zeros(n - 1), 1.0])
            g.create_dataset("dones", data=np.r_[np.zeros(n - 1), 1].astype(np.uint8))
            obs = g.create_group("obs")
            obs.create_dataset("agentview_image", data=frames(n, i))
            obs.create_dataset("robot0_eef_pos", data=np.stack([np.full(n, 0.1), 0.01 * np.arange(n), np.ones(n)], 1))
            obs.create_dataset("robot0_eef_quat", data=np.tile(QUAT_XYZW, (n, 1)))
            obs.create_dataset("robot0_gripper_qpos", data=np.tile([0.02, -0.02], (n, 1)))
            if edit is not None:
                edit(f"demo_{i}", g)
    return path


def replace(group, key: str, value) -> None:
    """Overwrite dataset ``key`` of an hdf5 group with ``value`` (any shape / dtype)."""
    del group[key]
    group.create_dataset(key, data=value)


def nan_rows(demo: str, key: str, step: int = 0, col: int = 0):
    """An ``edit`` for ``write_robomimic``: a NaN at ``(step, col)`` of ``key`` (``actions`` or an ``obs`` key) of
    ``demo``."""

    def edit(name, group):
        if name == demo:
            target = group if key == "actions" else group["obs"]
            value = np.array(target[key][()], dtype=np.float64)
            value[step, col] = np.nan
            replace(target, key, value)

    return edit


def write_lerobot(
    root: Path,
    lengths=(4, 5),
    *,
    declared_action: int = 8,
    action_width: int = 8,
    declared_state: int = 3,
    state_width: int = 3,
    state_nan: tuple[int, int] | None = None,
) -> Path:
    """A LeRobot v2.1 directory: one parquet per episode holding ``ee_abs_quat`` actions (``action_width`` values per
    row, ``declared_action`` in ``meta/info.json``), a state column and PNG frames (``dtype: image``).
    ``state_nan = (episode, step)`` puts a NaN into that episode's state."""
    rng = np.random.default_rng(1)
    cam = "observation.images.top"
    feats = {
        cam: {"dtype": "image", "shape": [H, W, 3], "names": None},
        "action": {"dtype": "float32", "shape": [declared_action], "names": None},
        "observation.state": {"dtype": "float32", "shape": [declared_state], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = dict(codebase_version="v2.1", robot_type="arm", fps=10, chunks_size=1000, features=feats,
                data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet")  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    episodes = []
    for e, n in enumerate(lengths):
        q = np.tile([1.0, 0.0, 0.0, 0.0], (n, action_width // 8))
        pos = rng.normal(scale=0.05, size=(n, 3 * (action_width // 8)))
        act = np.zeros((n, action_width), dtype=np.float32)
        for arm in range(action_width // 8):
            act[:, arm * 8 : arm * 8 + 3] = pos[:, arm * 3 : arm * 3 + 3]
            act[:, arm * 8 + 3 : arm * 8 + 7] = q[:, arm * 4 : arm * 4 + 4]
            act[:, arm * 8 + 7] = 0.5
        state = rng.normal(size=(n, state_width)).astype(np.float32)
        if state_nan is not None and state_nan[0] == e:
            state[state_nan[1], 0] = np.nan
        pngs = [cv2.imencode(".png", f[..., ::-1])[1].tobytes() for f in frames(n, e)]
        table = pa.table({
            "action": pa.array(list(act), pa.list_(pa.float32())),
            "observation.state": pa.array(list(state), pa.list_(pa.float32())),
            "episode_index": pa.array([e] * n),
            cam: pa.array([{"bytes": b, "path": None} for b in pngs]),
        })  # fmt: skip
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        episodes.append({"episode_index": e, "tasks": ["lift the cube"], "length": n})
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in episodes))
    return root


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (to check that nothing was lost or added)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
