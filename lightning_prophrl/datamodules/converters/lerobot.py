"""LeRobotDataset (v2.0 / v2.1 / v3.0) -> WebDataset episode shards, read directly with pyarrow and PyAV.

The ``lerobot`` package cannot be installed next to this stack, so the on-disk layouts are read by hand:

* **v2.x**: ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, ``chunks_size``, ``data_path`` and
  ``video_path`` templates using ``episode_chunk`` / ``episode_index`` / ``video_key``), ``meta/episodes.jsonl``
  (``episode_index``, ``tasks``, ``length``), ``meta/tasks.jsonl`` (``task_index``, ``task``), one parquet per episode
  and one mp4 per episode and camera.
* **v3.0**: several episodes per parquet and per mp4 file (templates using ``chunk_index`` / ``file_index``); one row
  per episode in ``meta/episodes/chunk-*/file-*.parquet`` with ``data/chunk_index``, ``data/file_index``,
  ``dataset_from_index``, ``dataset_to_index``, ``tasks`` and, per camera, ``videos/<key>/chunk_index``,
  ``file_index``, ``from_timestamp``, ``to_timestamp``; ``meta/tasks.parquet`` maps task strings to ``task_index``.

Frames are the video frames whose presentation time lies in ``[from_timestamp, to_timestamp)`` (half a frame of
tolerance; v2 uses the whole file), and their count must equal the episode's parquet rows (one action per frame).
Cameras stored as ``dtype: image`` (PNG/JPEG bytes inside the parquet) are decoded from the parquet instead.

Validation: the action and state columns must have the width ``meta/info.json`` declares for them (``shape``; a
wider action column is an error naming both widths, never read as a second arm) and finite values; frames must be
``(T, H, W, 3) uint8``; every error names the episode, the parquet / video file and the column.

Success: LeRobot has no episode-level success flag. If the parquet has a ``success_key`` column (default
``"next.success"``, present in e.g. PushT), ``success = any(column)`` and the per-step flags are stored as
``meta["success_steps"]``; otherwise ``success = default_success`` (True: LeRobot datasets are demonstrations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.actions import SourceConvention
from lightning_prophrl.datamodules.converters.common import (
    FrameFormat,
    JointMapping,
    MissingKeyError,
    OnError,
    check_convention,
    check_frames,
    check_source_array,
    key_part,
    map_actions,
    postprocess_frames,
    run_conversion,
)
from lightning_prophrl.datamodules.converters.lerobot_format import (  # noqa: F401 (re-exported)
    INFO_PATH,
    _episode_table_v3,
    _ParquetCache,
    _read_jsonl,
    column_array,
    declared_width,
    decode_image_column,
    decode_video_window,
    episode_table,
    major_version,
    pick_image_key,
    read_info,
    read_tasks,
)
from lightning_prophrl.datamodules.shards import Episode


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------
def convert_lerobot(
    src: str | Path,
    out: str | Path,
    *,
    action_convention: SourceConvention,
    joint_mapping: JointMapping | None = None,
    action_key: str = "action",
    image_key: str | None = None,
    state_key: str | None = "observation.state",
    success_key: str | None = "next.success",
    default_success: bool = True,
    frame_format: FrameFormat = "mp4",
    resize: tuple[int, int] | None = None,
    max_episodes: int | None = None,
    instruction_override: str | None = None,
    embodiment: str | None = None,
    dataset_name: str | None = None,
    episodes_per_shard: int = 100,
    append: bool = False,
    on_error: OnError = "raise",
    progress: bool = True,
) -> dict[str, Any]:
    """Convert a local LeRobotDataset (v2.0, v2.1 or v3.0) into episode shards.

    Args:
        src: dataset root (holding ``meta/info.json``).
        out: output directory of the shards.
        action_convention: how ``action_key`` is written (see ``to_unified``); mandatory, never guessed.
        joint_mapping: with ``action_convention="joint"`` (SO-100, Koch, ALOHA, ...), the robot's forward kinematics:
            ``(T, D)`` joint actions -> ``(unified (T, 14) actions, mask (14,) bool)``; required there, refused
            otherwise.
        action_key: parquet column of the actions.
        image_key: camera feature to convert; None takes the first ``video`` feature of ``meta/info.json``.
        state_key: parquet column stored as ``state.npy`` when present (None: never).
        success_key: boolean parquet column giving per-step success (used when present, see the module docstring).
        default_success: episode success when ``success_key`` is absent.
        frame_format: ``"mp4"`` (H.264) or ``"npy"`` frames in the shards.
        resize: ``(height, width)`` of the stored frames, or None to keep the source size.
        max_episodes: convert only the first ``max_episodes`` episodes (by index).
        instruction_override: instruction for every episode instead of the dataset's task strings.
        embodiment: embodiment name; None takes ``robot_type`` from ``meta/info.json`` (else ``"unknown"``).
        dataset_name: dataset name in ``meta.json`` and keys; None takes the directory name.
        episodes_per_shard: episodes per tar shard.
        append: add to an existing shard directory.
        on_error: ``"raise"`` or ``"skip"`` episodes with bad data (length mismatch, undecodable video).
        progress: show a progress bar.

    Returns:
        Summary ``{"dataset", "out", "episodes", "frames", "skipped", "skipped_episodes", "source_format",
        "image_key"}``.
    """
    check_convention(action_convention, joint_mapping)
    src = Path(src)
    info = read_info(src)
    version = major_version(info)
    camera = pick_image_key(info, image_key, src)
    if action_key not in info["features"]:
        raise MissingKeyError(src / INFO_PATH, action_key, info["features"])
    tasks = read_tasks(src, version)
    episodes = episode_table(src, info, version, camera)
    if max_episodes is not None:
        episodes = episodes[: int(max_episodes)]
    name = dataset_name or src.name
    cfg = dict(
        src=src, info=info, camera=camera, tasks=tasks, convention=action_convention, action_key=action_key,
        joint_mapping=joint_mapping,
        state_key=state_key if state_key in info["features"] else None,
        success_key=success_key if success_key in info["features"] else None,
        default_success=default_success, resize=resize, instruction=instruction_override, dataset=name,
        embodiment=embodiment or info.get("robot_type") or "unknown", cache=_ParquetCache(),
        action_width=declared_width(info, action_key), info_path=src / INFO_PATH,
    )  # fmt: skip
    cfg["state_width"] = declared_width(info, cfg["state_key"]) if cfg["state_key"] else None
    jobs = ((f"{src} episode {ep['index']}", lambda ep=ep: _build_episode(ep, cfg)) for ep in episodes)
    summary = run_conversion(
        jobs, out, dataset=name, total=len(episodes), frame_format=frame_format, episodes_per_shard=episodes_per_shard,
        append=append, on_error=on_error, progress=progress, desc=f"lerobot {name}",
    )  # fmt: skip
    summary.update(source_format=f"lerobot-{info['codebase_version']}", image_key=camera)
    return summary


def _build_episode(ep: dict[str, Any], cfg: dict[str, Any]) -> Episode:
    """Read one episode's rows and frames and assemble the ``Episode``."""
    info, camera, index = cfg["info"], cfg["camera"], ep["index"]
    where = f"{cfg['src']} episode {index}"
    is_video = ep["video_file"] is not None
    columns = [cfg["action_key"], "episode_index"] + [k for k in (cfg["state_key"], cfg["success_key"]) if k]
    columns += [] if is_video else [camera]
    data_file, width_from = ep["data_file"], cfg["info_path"]
    rows = cfg["cache"].rows(data_file, index, columns, optional=("task_index",))
    if rows.num_rows == 0:
        raise ValueError(f"{where}: no rows in {data_file}")
    action_key = cfg["action_key"]
    actions, mask = map_actions(_column(rows, action_key, np.float64, where, data_file), cfg["convention"], where,
                                source=f"column {action_key!r} of {data_file}", width=cfg["action_width"],
                                width_from=width_from, joint_mapping=cfg["joint_mapping"])  # fmt: skip
    try:
        if is_video:
            frames = decode_video_window(ep["video_file"], ep["from_ts"], ep["to_ts"], float(info["fps"]))
            source = ep["video_file"]
        else:
            frames, source = decode_image_column(rows, camera), data_file
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if len(frames) != len(actions):
        raise ValueError(
            f"{where}: {len(frames)} frames of {camera!r} in {source} (window {ep['from_ts']:.3f}-{ep['to_ts']:.3f} s) "
            f"but {len(actions)} action rows in {data_file}: frame count must equal action count"
        )
    check_frames(frames, where, f"frames of {camera!r} in {source}")
    instruction = cfg["instruction"] or _instruction(ep, rows, cfg["tasks"], where)
    meta: dict[str, Any] = dict(
        dataset=cfg["dataset"], embodiment=cfg["embodiment"], instruction=instruction, fps=info["fps"], task=instruction,
        success=bool(cfg["default_success"]),
        source=dict(format="lerobot", codebase_version=info["codebase_version"], root=str(cfg["src"]),
                    episode_index=index, image_key=camera, action_key=cfg["action_key"],
                    action_convention=cfg["convention"]),
    )  # fmt: skip
    if cfg["success_key"]:
        steps = _column(rows, cfg["success_key"], bool, where, data_file).reshape(-1)
        meta.update(success=bool(steps.any()), success_steps=steps.tolist())
    state = None
    if cfg["state_key"]:
        state_key = cfg["state_key"]
        state = check_source_array(
            _column(rows, state_key, np.float32, where, data_file).reshape(rows.num_rows, -1), where,
            f"column {state_key!r} of {data_file}", length=len(actions), width=cfg["state_width"],
            width_from=width_from,
        )  # fmt: skip
    frames = postprocess_frames(frames, resize=cfg["resize"])
    return Episode(f"{key_part(cfg['dataset'])}/{index:06d}", frames, actions, mask, meta, state=state)


def _column(rows, key: str, dtype, where: str, path: Path) -> np.ndarray:
    """``column_array`` with the episode and the parquet file named in its error."""
    try:
        return column_array(rows, key, dtype)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {path}: {err}") from err


def _instruction(ep: dict[str, Any], rows, tasks: dict[int, str], where: str) -> str:
    """The episode's task string: its ``tasks`` entry in the episode metadata, else ``task_index`` of its first row."""
    if ep["tasks"]:
        return str(ep["tasks"][0])
    if "task_index" in rows.column_names:
        task_index = int(rows["task_index"][0].as_py())
        if task_index in tasks:
            return tasks[task_index]
    raise ValueError(f"{where}: no task string (episode metadata has no tasks); pass instruction_override")
