"""``ShardWriter``: episodes into size/count-rolled WebDataset tar shards, atomically, with ``stats.json`` and
``index.json`` beside them (schema: ``shards``)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import (
    ACTION_DIM,
    SHARD_ACTION_MASK,
    SHARD_ACTIONS,
    SHARD_FRAMES_MP4,
    SHARD_FRAMES_NPY,
    SHARD_META,
    SHARD_STATE,
    STATS_FILE,
)
from lightning_prophrl.datamodules.shard_reader import read_index
from lightning_prophrl.datamodules.shard_schema import INDEX_FILE, SHARD_EE_POSES, Episode, validate_arrays
from lightning_prophrl.datamodules.video import encode_mp4


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Write episodes into size/count-rolled tar shards, atomically.

    Each shard is written to ``<name>.tar.tmp`` and renamed to ``<name>.tar`` only once complete, so a crash never
    leaves a half-written shard under its final name; ``index.json`` and ``stats.json`` are rewritten (atomically)
    after every finished shard. An existing non-empty directory is refused unless ``append=True``.

    Args:
        out_dir: output directory (created).
        dataset: dataset name, stored in ``meta.json`` when an episode does not set it.
        max_count: episodes per shard before rolling.
        max_bytes: bytes per shard before rolling.
        frame_format: ``"npy"`` (raw uint8) or ``"mp4"`` (H.264).
        prefix: shard file prefix.
        append: continue numbering after existing shards instead of refusing a non-empty directory.
        gop: keyframe interval of mp4 frames.
    """

    def __init__(
        self,
        out_dir: str | Path,
        dataset: str,
        max_count: int = 100,
        max_bytes: int = 512 * 2**20,
        frame_format: Literal["npy", "mp4"] = "npy",
        prefix: str = "shard",
        append: bool = False,
        gop: int = 10,
    ):
        if frame_format not in ("npy", "mp4"):
            raise ValueError(f"frame_format must be 'npy' or 'mp4', got {frame_format!r}")
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.index = read_index(self.out_dir) if (self.out_dir / INDEX_FILE).exists() else {"shards": []}
        if self.index["shards"] and not append:
            raise FileExistsError(f"{self.out_dir} already holds shards; pass append=True or choose an empty directory")
        self.dataset, self.max_count, self.max_bytes = dataset, max_count, max_bytes
        self.frame_format, self.prefix, self.gop = frame_format, prefix, gop
        self._tar: tarfile.TarFile | None = None
        self._count = self._bytes = 0
        self._shard_id = len(self.index["shards"])
        self._keys: set[str] = set()
        self._actions: list[np.ndarray] = []
        self._mask = np.zeros(ACTION_DIM, dtype=bool)
        self._successes: list[bool] = []
        self._lengths: list[int] = []

    # 1. public API -------------------------------------------------------------------------------------------------
    def write(self, ep: Episode) -> None:
        """Validate and append one episode; rolls to a new shard when the current one is full."""
        sample = self._encode(ep)
        size = sum(len(v) for v in sample.values())
        if self._tar is not None and (self._count >= self.max_count or self._bytes + size > self.max_bytes):
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        for name, data in sample.items():
            info = tarfile.TarInfo(f"{ep.key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._bytes += size
        self._keys.add(ep.key)
        self._actions.append(ep.actions.astype(np.float32))
        self._mask |= ep.action_mask.astype(bool)
        self._successes.append(ep.success)
        self._lengths.append(len(ep))

    def close(self) -> None:
        """Finish the open shard and write ``stats.json`` / ``index.json``."""
        if self._tar is not None:
            self._finish_shard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # keep finished shards, drop the partial one
            self._tar.close()
            Path(self._tar.name).unlink(missing_ok=True)
            self._tar = None

    # 2. internals --------------------------------------------------------------------------------------------------
    def _encode(self, ep: Episode) -> dict[str, bytes]:
        if "." in ep.key:
            raise ValueError(f"episode key {ep.key!r} must not contain '.' (WebDataset splits keys at dots)")
        if ep.key in self._keys:
            raise ValueError(f"duplicate episode key {ep.key!r}")
        meta = {"dataset": self.dataset, **ep.meta}
        problem = validate_arrays(ep.frames, ep.actions, ep.action_mask, meta, ep.state, ep.ee_poses)
        if problem:
            raise ValueError(f"episode {ep.key!r}: {problem}")
        out = {SHARD_ACTIONS: _npy_bytes(ep.actions.astype(np.float32))}
        out[SHARD_ACTION_MASK] = _npy_bytes(ep.action_mask.astype(bool))
        if self.frame_format == "npy":
            out[SHARD_FRAMES_NPY] = _npy_bytes(ep.frames.astype(np.uint8))
        else:
            out[SHARD_FRAMES_MP4] = encode_mp4(ep.frames, fps=int(meta["fps"]), gop=self.gop)
        if ep.state is not None:
            out[SHARD_STATE] = _npy_bytes(ep.state.astype(np.float32))
        if ep.ee_poses is not None:
            out[SHARD_EE_POSES] = _npy_bytes(ep.ee_poses.astype(np.float32))
        for name, value in ep.extras.items():
            if isinstance(value, bytes | bytearray):  # already encoded (read back from a shard)
                out[name] = bytes(value)
            else:
                out[name] = _npy_bytes(value) if isinstance(value, np.ndarray) else json.dumps(value).encode()
        out[SHARD_META] = json.dumps(meta, default=_json_default).encode()
        return out

    def _shard_name(self) -> str:
        return f"{self.prefix}-{self._shard_id:06d}.tar"

    def _open_shard(self) -> None:
        tmp = self.out_dir / (self._shard_name() + ".tmp")
        self._tar = tarfile.open(tmp, "w")
        self._count = self._bytes = 0

    def _finish_shard(self) -> None:
        tmp = Path(self._tar.name)
        self._tar.close()
        self._tar = None
        final = self.out_dir / self._shard_name()
        os.replace(tmp, final)
        self.index["shards"].append({"name": final.name, "count": self._count})
        self._shard_id += 1
        self._write_metadata()

    def _write_metadata(self) -> None:
        stats = ActionStats.compute(self._actions, mask=self._mask)
        prev = self.out_dir / STATS_FILE
        stats.extra = {
            "dataset": self.dataset,
            "episodes": len(self._lengths),
            "success_rate": float(np.mean(self._successes)),
            "mean_length": float(np.mean(self._lengths)),
        }
        if prev.exists() and self._shard_id > len(self._successes):  # appended run: keep a note of the older stats
            stats.extra["note"] = "statistics cover the episodes written by the last writer session only"
        _atomic_write_text(prev, json.dumps(stats.to_dict(), indent=2))
        self.index["dataset"] = self.dataset
        _atomic_write_text(self.out_dir / INDEX_FILE, json.dumps(self.index, indent=2))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
