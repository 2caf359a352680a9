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

import json
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.actions import SourceConvention
from lightning_prophrl.datamodules.converters import (
    FrameFormat,
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
from lightning_prophrl.datamodules.shards import Episode

INFO_PATH = "meta/info.json"


# ---------------------------------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise MissingKeyError(path.parent, path.name, [p.name for p in path.parent.iterdir()])
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_info(src: str | Path) -> dict:
    """Load ``meta/info.json`` and check the keys every version needs."""
    path = Path(src) / INFO_PATH
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {src} is not a LeRobotDataset directory")
    info = json.loads(path.read_text())
    for key in ("codebase_version", "fps", "features", "data_path"):
        if key not in info:
            raise MissingKeyError(path, key, info)
    return info


def declared_width(info: dict, key: str) -> int | None:
    """Values per step of feature ``key`` as ``meta/info.json`` declares it (the product of its ``shape``), or None
    when the feature or its shape is not declared."""
    shape = info["features"].get(key, {}).get("shape")
    if not isinstance(shape, list | tuple) or not all(isinstance(v, int) for v in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def major_version(info: dict) -> int:
    """2 for v2.0/v2.1, 3 for v3.x; anything else is refused."""
    version = str(info["codebase_version"])
    if version.startswith("v2."):
        return 2
    if version.startswith("v3."):
        return 3
    raise ValueError(f"unsupported LeRobotDataset codebase_version {version!r}; expected v2.0, v2.1 or v3.0")


def pick_image_key(info: dict, image_key: str | None, src: Path) -> str:
    """The camera to convert: ``image_key`` if given, else the first ``video`` feature (else the first ``image``)."""
    feats = info["features"]
    if image_key is not None:
        if image_key not in feats or feats[image_key].get("dtype") not in ("video", "image"):
            cams = [k for k, f in feats.items() if f.get("dtype") in ("video", "image")]
            raise MissingKeyError(src / INFO_PATH, image_key, cams)
        return image_key
    for dtype in ("video", "image"):
        keys = [k for k, f in feats.items() if f.get("dtype") == dtype]
        if keys:
            return keys[0]
    raise ValueError(f"{src / INFO_PATH}: no video or image feature; pass image_key explicitly")


def read_tasks(src: Path, version: int) -> dict[int, str]:
    """``task_index -> task string`` from ``meta/tasks.jsonl`` (v2) or ``meta/tasks.parquet`` (v3)."""
    if version == 2:
        path = src / "meta/tasks.jsonl"
        return {int(r["task_index"]): str(r["task"]) for r in _read_jsonl(path)} if path.exists() else {}
    import pyarrow.parquet as pq

    path = src / "meta/tasks.parquet"
    if not path.exists():
        return {}
    table = pq.read_table(path)
    names = [n for n in ("task", "__index_level_0__") if n in table.column_names]
    if "task_index" not in table.column_names or not names:
        raise MissingKeyError(path, "task_index/task", table.column_names)
    return dict(zip(map(int, table["task_index"].to_pylist()), map(str, table[names[0]].to_pylist())))


def episode_table(src: Path, info: dict, version: int, image_key: str) -> list[dict[str, Any]]:
    """One dict per episode, sorted by index: ``index``, ``length``, ``tasks``, ``data_file``, ``video_file``
    (None for image features), ``from_ts``, ``to_ts`` (video window in seconds; v2: ``0`` and ``inf``)."""
    is_video = info["features"][image_key].get("dtype") == "video"
    if is_video and not info.get("video_path"):
        raise MissingKeyError(src / INFO_PATH, "video_path", info)
    if version == 2:
        chunks = int(info.get("chunks_size", 1000))
        eps = []
        for row in _read_jsonl(src / "meta/episodes.jsonl"):
            i, chunk = int(row["episode_index"]), int(row["episode_index"]) // chunks
            video = (
                info["video_path"].format(episode_chunk=chunk, video_key=image_key, episode_index=i) if is_video else ""
            )
            eps.append(
                dict(index=i, length=row.get("length"), tasks=list(row.get("tasks", [])), from_ts=0.0, to_ts=np.inf,
                     data_file=src / info["data_path"].format(episode_chunk=chunk, episode_index=i),
                     video_file=src / video if is_video else None)
            )  # fmt: skip
        return sorted(eps, key=lambda e: e["index"])
    return _episode_table_v3(src, info, image_key, is_video)


def _episode_table_v3(src: Path, info: dict, image_key: str, is_video: bool) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted((src / "meta/episodes").glob("*/*.parquet"))
    if not files:
        raise MissingKeyError(
            src / "meta", "episodes/chunk-*/file-*.parquet", [p.name for p in (src / "meta").iterdir()]
        )
    v = f"videos/{image_key}/"
    need = ["episode_index", "data/chunk_index", "data/file_index"]
    need += [v + k for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")] if is_video else []
    eps = []
    for path in files:
        cols = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
        for key in need:
            if key not in cols:
                raise MissingKeyError(path, key, cols)
        for r in pq.read_table(path, columns=cols).to_pylist():
            data = info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
            ep = dict(index=int(r["episode_index"]), length=r.get("length"), tasks=list(r.get("tasks") or []),
                      data_file=src / data, video_file=None, from_ts=0.0, to_ts=np.inf)  # fmt: skip
            if is_video:
                video = info["video_path"].format(
                    video_key=image_key, chunk_index=r[v + "chunk_index"], file_index=r[v + "file_index"]
                )
                ep.update(
                    video_file=src / video, from_ts=float(r[v + "from_timestamp"]), to_ts=float(r[v + "to_timestamp"])
                )
            eps.append(ep)
    return sorted(eps, key=lambda e: e["index"])


# ---------------------------------------------------------------------------------------------------------------------
# Data and frames
# ---------------------------------------------------------------------------------------------------------------------
class _ParquetCache:
    """Keeps the last parquet file read (v3 episodes of one file are consecutive)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.table = None

    def rows(self, path: Path, episode_index: int, columns: list[str], optional: tuple[str, ...] = ()):
        """The rows of ``episode_index`` in ``path``: ``columns`` (required) plus the ``optional`` ones present."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if path != self.path:
            if not path.exists():
                raise FileNotFoundError(f"{path}: data file of episode {episode_index} not found")
            names = pq.read_schema(path).names
            for key in columns:
                if key not in names:
                    raise MissingKeyError(path, key, names)
            wanted = sorted(set(columns) | {k for k in optional if k in names})
            self.path, self.table = path, pq.read_table(path, columns=wanted)
        return self.table.filter(pc.equal(self.table["episode_index"], episode_index))


def column_array(table, key: str, dtype=np.float32) -> np.ndarray:
    """A parquet column of scalars or fixed-length lists -> ``(N,)`` or ``(N, D)`` numpy."""
    import pyarrow as pa

    col = table[key].combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type)):
        return col.to_numpy(zero_copy_only=False).astype(dtype)
    n, flat = len(col), col.flatten().to_numpy(zero_copy_only=False)
    if n and flat.size % n:
        raise ValueError(f"column {key!r} has rows of different lengths")
    return flat.reshape(n, -1).astype(dtype)


def decode_video_window(path: Path, start_s: float, stop_s: float, fps: float) -> np.ndarray:
    """Frames of ``path`` with presentation time in ``[start_s, stop_s)`` (half a frame of tolerance).

    Seeks to the keyframe before ``start_s`` and decodes forward, so packed v3 files are not decoded from the start.

    Returns:
        ``(T, H, W, 3) uint8``.
    """
    import av

    if not path.exists():
        raise FileNotFoundError(f"{path}: video file not found")
    half = 0.5 / float(fps)
    out = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if start_s > half:
                container.seek(int((start_s - half) / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(out) / fps
                if t >= stop_s - half:
                    break
                if t >= start_s - half:
                    out.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as err:
        raise ValueError(f"{path}: cannot decode video: {err}") from err
    if not out:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return np.stack(out)


def decode_image_column(table, key: str) -> np.ndarray:
    """A ``dtype: image`` column (structs with encoded ``bytes``) -> ``(T, H, W, 3) uint8`` RGB."""
    import cv2

    frames = []
    for item in table[key].to_pylist():
        data = item.get("bytes") if isinstance(item, dict) else item
        if data is None:
            raise ValueError(f"image column {key!r} holds a row without bytes (image paths are not supported)")
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"image column {key!r} holds undecodable bytes")
        frames.append(img[..., ::-1])
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------
def convert_lerobot(
    src: str | Path,
    out: str | Path,
    *,
    action_convention: SourceConvention,
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
        action_convention: how ``action_key`` is written (see ``to_unified``); mandatory, never guessed. Joint-space
            datasets (``"joint"``) are refused: they need forward kinematics.
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
    check_convention(action_convention)
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
                                width_from=width_from)  # fmt: skip
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
