"""Reading a LeRobotDataset directory (v2.0/v2.1 and v3.0) with pyarrow and PyAV: ``meta/info.json``, the task table,
the per-episode table (which parquet rows and which mp4 window hold each episode), columns and decoded frames.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.datamodules.converters.common import (
    MissingKeyError,
)

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
