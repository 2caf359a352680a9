"""robomimic / LIBERO hdf5 demonstrations -> WebDataset episode shards.

Layout (both): ``data/demo_N/{actions, obs/<image_key>, obs/<eef position>, obs/<eef orientation>,
obs/<gripper fingers>, dones, rewards}`` with JSON attributes on ``data``. The two layouts differ in key names and
conventions, captured by ``LAYOUTS``:

============ ====================== ====================== ============================================================
layout       image                  end effector           notes
============ ====================== ====================== ============================================================
robomimic    ``agentview_image``    ``robot0_eef_pos``,    ``env_args`` JSON holds ``env_name`` (no language: the
                                    ``robot0_eef_quat``    instruction is the env name unless ``instruction_override``);
                                    (quaternion xyzw)      images are stored upright.
libero       ``agentview_rgb``      ``ee_pos``, ``ee_ori`` ``problem_info`` JSON holds ``language_instruction``; images
                                    (axis-angle)           are stored as rendered by OpenGL, upside down: the default
                                                           ``flip="rotate180"`` matches the OpenVLA/openpi LIBERO
                                                           pipelines.
============ ====================== ====================== ============================================================

Gripper opening in [0, 1] is the finger gap ``(q_left - q_right) / gripper_width`` (Panda: 0.08 m), clipped. When
position, orientation and fingers are present, ``ee_poses.npy`` ``(T, 1, 8)`` (xyz, quaternion wxyz, opening) is
stored. ``action_key="ee_poses"`` derives the actions from those poses instead of the stored controller commands
(with ``action_convention="ee_abs_quat"``): the stored robosuite OSC actions are scaled controller units, not metres.

Validation: images must be ``(T, H, W, 3) uint8``; actions, state keys and the pose keys must have one finite row per
frame (positions 3 values, orientations 3 or 4 by ``ori_format``); an action width that the convention would read as
more arms than the file's ``env_kwargs.robots`` declares (one per single-arm robot: Panda, Sawyer, ...) is an error
naming both widths. Every error names the file,
the demo and the key.

Success: ``success_from="reward_or_done"`` (default) is ``rewards[-1] > 0 or dones[-1]``; ``"reward"`` and ``"done"``
use one of them, ``"always"`` marks every demo successful. Per-step flags ``rewards > 0`` go to
``meta["success_steps"]`` when rewards exist.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from lightning_prophrl.actions import SourceConvention
from lightning_prophrl.datamodules.converters.common import (
    Flip,
    FrameFormat,
    JointMapping,
    MissingKeyError,
    OnError,
    check_arm_count,
    check_convention,
    check_frames,
    check_source_array,
    key_part,
    map_actions,
    postprocess_frames,
    run_conversion,
)
from lightning_prophrl.datamodules.shards import Episode

Layout = Literal["robomimic", "libero"]
OrientationFormat = Literal["quat_xyzw", "quat_wxyz", "axis_angle"]
SuccessFrom = Literal["reward_or_done", "reward", "done", "always"]
EE_POSES_ACTION = "ee_poses"
# robosuite robots with one arm: a file whose ``env_kwargs.robots`` lists only these declares that many arms.
SINGLE_ARM_ROBOTS = frozenset({"panda", "sawyer", "iiwa", "jaco", "kinova3", "ur5e", "xarm7"})


@dataclass(frozen=True)
class LayoutDefaults:
    """Key names and conventions of one hdf5 layout (obs keys are relative to ``data/demo_N/obs``)."""

    image_key: str
    pos_key: str
    ori_key: str
    ori_format: OrientationFormat
    gripper_key: str
    flip: Flip
    embodiment: str


LAYOUTS: dict[str, LayoutDefaults] = {
    "robomimic": LayoutDefaults(
        "agentview_image", "robot0_eef_pos", "robot0_eef_quat", "quat_xyzw", "robot0_gripper_qpos", "none", "unknown"
    ),
    "libero": LayoutDefaults("agentview_rgb", "ee_pos", "ee_ori", "axis_angle", "gripper_states", "rotate180", "panda"),
}


# ---------------------------------------------------------------------------------------------------------------------
# Pose helpers
# ---------------------------------------------------------------------------------------------------------------------
def axis_angle_to_quat_wxyz(v: np.ndarray) -> np.ndarray:
    """Axis-angle vectors ``(..., 3)`` (axis * angle, radians) -> unit quaternions wxyz ``(..., 4)``."""
    v = np.asarray(v, dtype=np.float64)
    angle = np.linalg.norm(v, axis=-1, keepdims=True)
    half = angle / 2.0
    # sin(a/2)/a -> 1/2 as a -> 0 (second-order series below 1e-8)
    scale = np.where(angle > 1e-8, np.sin(half) / np.maximum(angle, 1e-12), 0.5 - angle**2 / 48.0)
    return np.concatenate([np.cos(half), v * scale], axis=-1)


def orientation_to_quat_wxyz(ori: np.ndarray, fmt: OrientationFormat) -> np.ndarray:
    """``(T, 3|4)`` orientations in ``fmt`` -> ``(T, 4)`` unit quaternions wxyz."""
    ori = np.asarray(ori, dtype=np.float64)
    if fmt == "axis_angle":
        if ori.shape[-1] != 3:
            raise ValueError(f"axis-angle orientations must have 3 values, got shape {ori.shape}")
        return axis_angle_to_quat_wxyz(ori)
    if ori.shape[-1] != 4:
        raise ValueError(f"quaternion orientations must have 4 values, got shape {ori.shape}")
    q = ori[..., [3, 0, 1, 2]] if fmt == "quat_xyzw" else ori
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def gripper_opening(qpos: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Finger joint positions ``(T, 2)`` (left +, right -) or a gap ``(T, 1)`` -> opening in [0, 1] ``(T,)``."""
    q = np.asarray(qpos, dtype=np.float64).reshape(len(qpos), -1)
    gap = q[:, 0] - q[:, 1] if q.shape[1] >= 2 else q[:, 0]
    return np.clip(gap / float(width), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# File reading
# ---------------------------------------------------------------------------------------------------------------------
def _read(group, key: str, path: Path) -> np.ndarray:
    """``group[key]`` as numpy, or ``MissingKeyError`` naming the file and the full key."""
    if key not in group:
        raise MissingKeyError(path, f"{group.name.strip('/')}/{key}", list(group.keys()))
    return np.asarray(group[key][()])


def _attr_json(attrs, name: str) -> dict:
    raw = attrs.get(name)
    if raw is None:
        return {}
    raw = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {}


def file_info(f, layout: Layout) -> dict[str, Any]:
    """Task, instruction, embodiment and control rate from the ``data`` attributes of an open hdf5 file."""
    attrs = f["data"].attrs
    env_args = _attr_json(attrs, "env_args")
    problem = _attr_json(attrs, "problem_info") or env_args.get("problem_info", {})
    kwargs = env_args.get("env_kwargs", {})
    env_name = env_args.get("env_name") or attrs.get("env_name") or attrs.get("env")
    env_name = env_name.decode() if isinstance(env_name, bytes) else env_name
    robots = kwargs.get("robots")
    robot = robots[0] if isinstance(robots, list) and robots else robots
    names = [robots] if isinstance(robots, str) else list(robots or [])
    single = names and all(str(r).lower() in SINGLE_ARM_ROBOTS for r in names)
    arms = len(names) if single else None  # an unknown or bimanual robot (e.g. Baxter) declares no arm count
    return {
        "arms": arms,
        "task": problem.get("problem_name") or env_name,
        "instruction": problem.get("language_instruction"),
        "env_name": env_name,
        "embodiment": str(robot).lower() if robot else LAYOUTS[layout].embodiment,
        "fps": kwargs.get("control_freq"),
    }


def demo_names(f, path: Path, filter_key: str | None = None) -> list[str]:
    """Demo groups of ``data`` in natural order (``demo_2`` before ``demo_10``), optionally from ``mask/<filter_key>``."""
    if "data" not in f:
        raise MissingKeyError(path, "data", list(f.keys()))
    if filter_key is not None:
        if "mask" not in f:
            raise MissingKeyError(path, f"mask/{filter_key}", list(f.keys()))
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _read(f["mask"], filter_key, path)]
    else:
        names = list(f["data"].keys())
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


def _success(demo, path: Path, rule: SuccessFrom) -> tuple[bool, list[bool] | None]:
    rewards = np.asarray(demo["rewards"][()]).reshape(-1) if "rewards" in demo else None
    dones = np.asarray(demo["dones"][()]).reshape(-1) if "dones" in demo else None
    steps = (rewards > 0).tolist() if rewards is not None and len(rewards) else None
    if rule == "always":
        return True, steps
    need = {"reward": ["rewards"], "done": ["dones"], "reward_or_done": ["rewards", "dones"]}.get(rule)
    if need is None:
        raise ValueError(f"success_from must be one of {list(get_args(SuccessFrom))}, got {rule!r}")
    if all(k not in demo for k in need):
        raise MissingKeyError(path, f"{demo.name.strip('/')}/{' or '.join(need)}", list(demo.keys()))
    by_reward = rewards is not None and len(rewards) > 0 and bool(rewards[-1] > 0) and rule != "done"
    by_done = dones is not None and len(dones) > 0 and bool(dones[-1]) and rule != "reward"
    return by_reward or by_done, steps


def _key(group, key: str) -> str:
    """The full hdf5 key of ``group[key]``, quoted, for messages."""
    return repr(f"{group.name.strip('/')}/{key}")


def _ee_poses(obs, path: Path, cfg: dict[str, Any], required: bool, where: str, length: int) -> np.ndarray | None:
    """``(T, 1, 8)`` xyz + quaternion wxyz + opening, or None when a pose key is absent (and not ``required``).
    Each key must hold ``length`` finite rows of the expected width."""
    keys = (cfg["pos_key"], cfg["ori_key"], cfg["gripper_key"])
    missing = [k for k in keys if k not in obs]
    if missing:
        if required:
            raise MissingKeyError(path, f"{obs.name.strip('/')}/{missing[0]}", list(obs.keys()))
        return None
    ori_width = 3 if cfg["ori_format"] == "axis_angle" else 4
    pos, ori, grip = (
        check_source_array(_read(obs, k, path), where, _key(obs, k), length=length, width=w)
        for k, w in zip(keys, (3, ori_width, None))
    )
    if ori_width == 4 and (np.linalg.norm(ori, axis=-1) < 1e-12).any():
        step = int(np.argmax(np.linalg.norm(ori, axis=-1) < 1e-12))
        raise ValueError(f"{where}: {_key(obs, cfg['ori_key'])} holds a zero quaternion (first at step {step})")
    quat = orientation_to_quat_wxyz(ori, cfg["ori_format"])
    opening = gripper_opening(grip, cfg["gripper_width"])
    return np.concatenate([pos, quat, opening[:, None]], -1)[:, None, :]


def _build_episode(f, path: Path, file_idx: int, name: str, cfg: dict[str, Any]) -> Episode:
    """Read ``data/<name>`` of an open file and assemble the ``Episode``."""
    where = f"{path} demo {name!r}"
    demo = f["data"].get(name)
    if demo is None:
        raise MissingKeyError(path, f"data/{name}", list(f["data"].keys()))
    if "obs" not in demo:
        raise MissingKeyError(path, f"data/{name}/obs", list(demo.keys()))
    obs, info = demo["obs"], cfg["file_info"]
    frames = _read(obs, cfg["image_key"], path)
    from_poses = cfg["action_key"] == EE_POSES_ACTION
    if from_poses:
        ee = _ee_poses(obs, path, cfg, True, where, len(frames))
        actions, mask = map_actions(ee[:, 0, :], cfg["convention"], where, source="the end-effector poses")
    else:
        source, action_key, arms = _read(demo, cfg["action_key"], path), _key(demo, cfg["action_key"]), info["arms"]
        width = source.shape[1] if source.ndim == 2 else 1
        check_arm_count(width, cfg["convention"], arms, where, action_key, f"{path} (env_kwargs.robots)")
        actions, mask = map_actions(source, cfg["convention"], where, source=action_key,
                                    joint_mapping=cfg["joint_mapping"])  # fmt: skip
        ee = _ee_poses(obs, path, cfg, False, where, len(actions))
    if len(frames) != len(actions):
        raise ValueError(
            f"{where}: {len(frames)} frames in obs/{cfg['image_key']} but {len(actions)} steps of "
            f"{cfg['action_key']!r}: frame count must equal action count"
        )
    state = None
    if cfg["state_keys"] is None:  # layout default: end-effector pose + fingers when all present
        keys = [k for k in (cfg["pos_key"], cfg["ori_key"], cfg["gripper_key"]) if k in obs]
        state_keys = keys if len(keys) == 3 else []
    else:
        state_keys = list(cfg["state_keys"])
    if state_keys:
        parts = []
        for k in state_keys:
            value = _read(obs, k, path)
            parts.append(check_source_array(value.reshape(len(value), -1), where, _key(obs, k), length=len(actions)))
        state = np.concatenate(parts, -1)
    success, steps = _success(demo, path, cfg["success_from"])
    meta: dict[str, Any] = dict(
        dataset=cfg["dataset"], embodiment=cfg["embodiment"] or info["embodiment"], fps=cfg["fps"] or info["fps"] or 20,
        instruction=cfg["instruction"] or info["instruction"] or info["task"] or info["env_name"] or "",
        success=success, task=info["task"],
        source=dict(format=cfg["layout"], file=str(path), demo=name, image_key=cfg["image_key"],
                    action_key=cfg["action_key"], action_convention=cfg["convention"], state_keys=state_keys),
    )  # fmt: skip
    if not meta["instruction"]:
        raise ValueError(f"{where}: no instruction in the file attributes; pass instruction_override")
    if steps is not None and len(steps) == len(actions):
        meta["success_steps"] = steps
    frames = postprocess_frames(check_frames(frames, where, _key(obs, cfg["image_key"])), cfg["flip"], cfg["resize"])
    key = f"{key_part(cfg['dataset'])}/{file_idx:03d}-{key_part(name)}"
    return Episode(key, frames, actions, mask, meta, state=state, ee_poses=ee)


def convert_hdf5(
    src: str | Path,
    out: str | Path,
    *,
    action_convention: SourceConvention,
    joint_mapping: JointMapping | None = None,
    layout: Layout = "robomimic",
    image_key: str | None = None,
    action_key: str = "actions",
    pos_key: str | None = None,
    ori_key: str | None = None,
    ori_format: OrientationFormat | None = None,
    gripper_key: str | None = None,
    gripper_width: float = 0.08,
    state_keys: list[str] | None = None,
    flip: Flip | None = None,
    resize: tuple[int, int] | None = None,
    success_from: SuccessFrom = "reward_or_done",
    filter_key: str | None = None,
    frame_format: FrameFormat = "mp4",
    max_episodes: int | None = None,
    instruction_override: str | None = None,
    embodiment: str | None = None,
    dataset_name: str | None = None,
    fps: int | None = None,
    episodes_per_shard: int = 100,
    append: bool = False,
    on_error: OnError = "raise",
    progress: bool = True,
) -> dict[str, Any]:
    """Convert robomimic / LIBERO hdf5 demonstrations into episode shards.

    Args:
        src: an hdf5 file, or a directory whose ``*.hdf5`` files (sorted) are all converted (LIBERO: one per task).
        out: output directory of the shards.
        action_convention: how the actions are written (see ``to_unified``); mandatory, never guessed.
        joint_mapping: with ``action_convention="joint"``, the robot's forward kinematics (as in ``convert_lerobot``).
        layout: ``"robomimic"`` or ``"libero"``; picks the default keys and conventions (module docstring).
        image_key: camera under ``obs``; None takes the layout's (``agentview_image`` / ``agentview_rgb``).
        action_key: dataset under ``data/demo_N`` holding the actions, or ``"ee_poses"`` to derive the actions from
            the end-effector poses (use ``action_convention="ee_abs_quat"``).
        pos_key: end-effector position under ``obs``; None takes the layout's.
        ori_key: end-effector orientation under ``obs``; None takes the layout's.
        ori_format: ``"quat_xyzw"``, ``"quat_wxyz"`` or ``"axis_angle"``; None takes the layout's.
        gripper_key: finger joint positions under ``obs``; None takes the layout's.
        gripper_width: finger gap (m) of a fully open gripper (Panda: 0.08).
        state_keys: ``obs`` keys concatenated into ``state.npy``; None: position + orientation + fingers when all
            three exist; ``[]``: no state.
        flip: ``"none"``, ``"vertical"`` or ``"rotate180"``; None takes the layout's (LIBERO: ``"rotate180"``).
        resize: ``(height, width)`` of the stored frames, or None to keep the source size.
        success_from: success rule (module docstring).
        filter_key: convert only the demos listed in ``mask/<filter_key>`` (robomimic train/valid splits).
        frame_format: ``"mp4"`` (H.264) or ``"npy"`` frames in the shards.
        max_episodes: convert at most this many demos in total.
        instruction_override: instruction for every episode (robomimic has no language).
        embodiment: embodiment name; None takes ``env_kwargs.robots`` (else the layout's).
        dataset_name: dataset name; None takes the file (or directory) name.
        fps: frame rate; None takes ``env_kwargs.control_freq`` (else 20).
        episodes_per_shard: episodes per tar shard.
        append: add to an existing shard directory.
        on_error: ``"raise"`` or ``"skip"`` demos with bad data (length mismatch, bad frames).
        progress: show a progress bar.

    Returns:
        Summary ``{"dataset", "out", "episodes", "frames", "skipped", "skipped_episodes", "source_format", "files"}``.
    """
    import h5py

    check_convention(action_convention, joint_mapping)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    for arg, value, options in (("success_from", success_from, SuccessFrom), ("flip", flip, Flip)):
        if value is not None and value not in get_args(options):
            raise ValueError(f"{arg} must be one of {list(get_args(options))}, got {value!r}")
    if action_key == EE_POSES_ACTION and action_convention != "ee_abs_quat":
        raise ValueError(
            "action_key='ee_poses' gives xyz + quaternion wxyz + gripper: use action_convention='ee_abs_quat'"
        )
    src = Path(src)
    files = sorted(src.glob("*.hdf5")) if src.is_dir() else [src]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no hdf5 file at {src}")
    d = LAYOUTS[layout]
    cfg: dict[str, Any] = dict(
        layout=layout, convention=action_convention, joint_mapping=joint_mapping, action_key=action_key, image_key=image_key or d.image_key,
        pos_key=pos_key or d.pos_key, ori_key=ori_key or d.ori_key, ori_format=ori_format or d.ori_format,
        gripper_key=gripper_key or d.gripper_key, gripper_width=gripper_width, state_keys=state_keys,
        flip=flip or d.flip, resize=resize, success_from=success_from, instruction=instruction_override,
        embodiment=embodiment, fps=fps, dataset=dataset_name or (src.stem if src.is_file() else src.name),
    )  # fmt: skip
    plan = []
    for path in files:
        with h5py.File(path, "r") as f:
            plan.append((path, demo_names(f, path, filter_key)))
    total = sum(len(names) for _, names in plan)
    total = min(total, int(max_episodes)) if max_episodes is not None else total

    def jobs():
        emitted = 0
        for file_idx, (path, names) in enumerate(plan):
            with h5py.File(path, "r") as f:
                cfg["file_info"] = file_info(f, layout)
                for name in names:
                    if emitted >= total:
                        return
                    emitted += 1
                    yield (
                        f"{path} demo {name!r}",
                        lambda n=name, f=f, p=path, i=file_idx: _build_episode(f, p, i, n, cfg),
                    )

    summary = run_conversion(
        jobs(), out, dataset=cfg["dataset"], total=total, frame_format=frame_format, append=append,
        episodes_per_shard=episodes_per_shard, on_error=on_error, progress=progress, desc=f"{layout} {cfg['dataset']}",
    )  # fmt: skip
    summary.update(source_format=layout, files=[str(p) for p in files])
    return summary
