"""WebDataset shards of robot episodes: the schema, an atomic writer and a validating reader.

One WebDataset sample is one episode:

==================== ================================================================================================
key                  content
==================== ================================================================================================
``__key__``          unique episode id (``<dataset>/<index>`` style, no dots)
``frames.npy``       ``(T, H, W, 3) uint8`` (small data), or ``frames.mp4`` (H.264 via PyAV, real data)
``actions.npy``      ``(T, 14) float32`` in the unified space (``lightning_prophrl.actions``); ``actions[t]`` is taken
                     at ``frames[t]``
``action_mask.npy``  ``(14,) bool`` real dimensions
``state.npy``        optional ``(T, S) float32`` proprioception
``ee_poses.npy``     optional ``(T, n_arms, 8) float32`` end-effector xyz + quaternion wxyz + gripper opening [0, 1]
                     (world frame), the measured pose
``target_poses.npy`` optional, same layout: the commanded target pose of each frame (e.g. a mocap / servo target;
                     ``target_poses[t]`` is the target after ``actions[t - 1]``, the gripper entry the commanded
                     opening); when present it is what action frames show (see ``RobotClipDataModule``)
``meta.json``        ``dataset``, ``embodiment``, ``instruction``, ``fps``, ``success`` (required); optional
                     ``camera`` = ``{"K": 3x3, "extrinsics": 4x4 world->camera (OpenCV), "width", "height"}``,
                     ``task``, ``seed``, ``success_steps`` (per-step success flags) and anything else
==================== ================================================================================================

End-effector poses live in their own ``.npy`` rather than in ``meta.json`` because they are
per-step arrays; the camera, which is constant per episode, stays in ``meta.json``.

Beside the shards, ``stats.json`` holds the dataset's action statistics (``ActionStats``) and ``index.json`` lists
the finished shards with their sample counts, so readers never open a half-written file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from lightning_prophrl.datamodules.slots import SampleShare
from lightning_prophrl.datamodules.slots import SkipCounter as SkipCounter  # re-exported: part of the reader's API

log = logging.getLogger(__name__)

SHARD_EE_POSES = "ee_poses.npy"
SHARD_TARGET_POSES = "target_poses.npy"
INDEX_FILE = "index.json"
REQUIRED_META = ("dataset", "embodiment", "instruction", "fps", "success")
OnError = Literal["raise", "skip"]


class ShardFormatError(ValueError):
    """A sample in a shard is invalid. The message names the shard, the sample key and the problem.

    Built from a single message (how a DataLoader re-raises an error of one of its workers, and how pickle rebuilds
    it), the type survives and ``shard`` / ``key`` / ``problem`` are read back from the message's last such line.
    """

    def __init__(self, shard: str, key: str | None = None, problem: str | None = None):
        if key is None and problem is None:
            super().__init__(shard)
            found = _FORMAT_ERROR_LINE.findall(shard)
            self.shard, self.key, self.problem = found[-1] if found else (None, None, None)
            return
        super().__init__(f"{shard}: sample {key!r}: {problem}")
        self.shard, self.key, self.problem = shard, key, problem


_FORMAT_ERROR_LINE = re.compile(r"^(?:\S*ShardFormatError: )?(.+?): sample '(.*?)': (.+)$", re.MULTILINE)


@dataclass
class Episode:
    """One robot episode in memory (see the module docstring for the on-disk schema)."""

    key: str
    frames: np.ndarray
    actions: np.ndarray
    action_mask: np.ndarray
    meta: dict[str, Any]
    state: np.ndarray | None = None
    ee_poses: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def success(self) -> bool:
        return bool(self.meta.get("success", False))

    @property
    def target_poses(self) -> np.ndarray | None:
        """Commanded target poses ``(T, n_arms, 8)`` (``target_poses.npy``), or None."""
        value = self.extras.get(SHARD_TARGET_POSES)
        return value if isinstance(value, np.ndarray) else None


# ---------------------------------------------------------------------------------------------------------------------
# Video encoding (PyAV)
# ---------------------------------------------------------------------------------------------------------------------
def encode_mp4(frames: np.ndarray, fps: int = 10, crf: int = 18, gop: int = 10) -> bytes:
    """``(T, H, W, 3) uint8`` -> H.264 mp4 bytes (yuv420p, even sizes required by the codec; a keyframe every
    ``gop`` frames keeps random access cheap)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(int(gop))}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes | str | Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Decode mp4 bytes or a file into ``(T, H, W, 3) uint8`` frames ``[start, stop)`` (sequential decode)."""
    import av

    src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else str(data)
    out = []
    with av.open(src) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if stop is not None and i >= stop:
                break
            if i >= start:
                out.append(frame.to_ndarray(format="rgb24"))
    if not out:
        raise ValueError("no frames decoded")
    return np.stack(out)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ---------------------------------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
# Validation and reading
# ---------------------------------------------------------------------------------------------------------------------
def validate_arrays(frames, actions, action_mask, meta, state=None, ee_poses=None) -> str | None:
    """Return a description of the first problem with an episode's arrays, or None if it is valid."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        return f"meta.json is missing key(s) {missing}"
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        return f"actions must have shape (T, {ACTION_DIM}) in the unified space, got {tuple(actions.shape)}"
    if not np.isfinite(actions).all():
        bad = np.argwhere(~np.isfinite(actions))[0]
        return f"actions contain NaN/inf (first at step {bad[0]}, dim {bad[1]})"
    if action_mask.shape != (ACTION_DIM,):
        return f"action_mask must have shape ({ACTION_DIM},), got {tuple(action_mask.shape)}"
    if frames is not None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            return f"frames must be (T, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}"
        if frames.shape[0] != actions.shape[0]:
            return f"frame/action length mismatch: {frames.shape[0]} frames vs {actions.shape[0]} actions"
    if state is not None and (state.ndim != 2 or state.shape[0] != actions.shape[0]):
        return f"state must be (T, S) with T={actions.shape[0]}, got {tuple(state.shape)}"
    if ee_poses is not None and (ee_poses.ndim != 3 or ee_poses.shape[0] != actions.shape[0] or ee_poses.shape[2] != 8):
        return f"ee_poses must be (T, n_arms, 8) with T={actions.shape[0]}, got {tuple(ee_poses.shape)}"
    return None


def decode_episode(sample: dict[str, Any], shard: str = "?", decode_frames: bool = True) -> Episode:
    """Turn a raw WebDataset sample (bytes per extension) into a validated ``Episode``.

    Raises:
        ShardFormatError: naming the shard, the sample key and the problem.
    """
    key = sample.get("__key__", "?")
    shard = sample.get("__url__", shard)
    for required in (SHARD_ACTIONS, SHARD_ACTION_MASK, SHARD_META):
        if required not in sample:
            raise ShardFormatError(shard, key, f"missing key {required!r}")
    if SHARD_FRAMES_NPY not in sample and SHARD_FRAMES_MP4 not in sample:
        raise ShardFormatError(shard, key, f"missing key {SHARD_FRAMES_NPY!r} or {SHARD_FRAMES_MP4!r}")
    try:
        meta = json.loads(sample[SHARD_META])
        actions = _npy_load(sample[SHARD_ACTIONS])
        mask = _npy_load(sample[SHARD_ACTION_MASK])
        state = _npy_load(sample[SHARD_STATE]) if SHARD_STATE in sample else None
        ee = _npy_load(sample[SHARD_EE_POSES]) if SHARD_EE_POSES in sample else None
        target = _npy_load(sample[SHARD_TARGET_POSES]) if SHARD_TARGET_POSES in sample else None
    except Exception as err:  # noqa: BLE001 - any decode failure is reported with its location
        raise ShardFormatError(shard, key, f"cannot decode arrays/meta: {err}") from err
    frames = None
    if decode_frames:
        try:
            if SHARD_FRAMES_NPY in sample:
                frames = _npy_load(sample[SHARD_FRAMES_NPY])
            else:
                frames = decode_mp4(sample[SHARD_FRAMES_MP4])
        except Exception as err:  # noqa: BLE001
            raise ShardFormatError(shard, key, f"undecodable video: {err}") from err
    problem = validate_arrays(frames, actions, mask, meta, state, ee)
    if problem is None and target is not None:
        problem = validate_arrays(None, actions, mask, meta, None, target)
        problem = problem and problem.replace("ee_poses", "target_poses")
    if problem:
        raise ShardFormatError(shard, key, problem)
    known = {
        SHARD_ACTIONS,
        SHARD_ACTION_MASK,
        SHARD_META,
        SHARD_STATE,
        SHARD_EE_POSES,
        SHARD_FRAMES_NPY,
        SHARD_FRAMES_MP4,
    }
    extras = {k: v for k, v in sample.items() if not k.startswith("__") and k not in known}
    if target is not None:
        extras[SHARD_TARGET_POSES] = target.astype(np.float32)
    return Episode(key, frames, actions.astype(np.float32), mask.astype(bool), meta, state, ee, extras)


def list_shards(data_dir: str | Path) -> list[str]:
    """Finished shards of a dataset directory, from ``index.json`` (falls back to ``*.tar``)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"dataset directory {d} does not exist")
    if (d / INDEX_FILE).exists():
        names = [s["name"] for s in read_index(d)["shards"]]
    else:
        names = sorted(p.name for p in d.glob("*.tar"))
    if not names:
        raise FileNotFoundError(f"no shards in {d}")
    return [str(d / n) for n in names]


def read_index(data_dir: str | Path) -> dict:
    path = Path(data_dir) / INDEX_FILE
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err


def load_stats(data_dir: str | Path) -> ActionStats:
    path = Path(data_dir) / STATS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `prophrl-data stats {data_dir}` to compute it")
    return ActionStats.load(path)


def iter_episodes(
    data_dir_or_urls: str | Path | list[str],
    on_error: OnError = "raise",
    decode_frames: bool = True,
    skip_counter: SkipCounter | None = None,
    share: SampleShare | None = None,
) -> Iterator[Episode]:
    """Iterate over every episode of a dataset directory (or shard list) in order, in this process.

    The shards are read as given: no rank or worker splitting happens here (``slots.slot_share`` chooses them).

    Args:
        data_dir_or_urls: dataset directory or explicit shard paths.
        on_error: ``"raise"`` (default) raises ``ShardFormatError``; ``"skip"`` skips, counts and logs.
        decode_frames: decode video (False reads only actions/meta, for statistics).
        skip_counter: receives the skipped samples when ``on_error="skip"``.
        share: decode only the samples this slot owns (``shard_split="samples"``); a damaged sample is reported by its
            owner only, so each is counted once over all slots.

    A shard that ends before the sample count its directory's ``index.json`` lists (a truncated copy that happens to
    stop at a tar block boundary reads as a clean end of archive) is reported like an unreadable tar.
    """
    import webdataset as wds

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    urls = data_dir_or_urls if isinstance(data_dir_or_urls, list) else list_shards(data_dir_or_urls)
    counter = skip_counter or SkipCounter()
    listed = _listed_counts(urls)

    def report(err: ShardFormatError) -> bool:
        if on_error == "raise":
            raise err
        return counter(err)

    for url in urls:
        position = [0]  # samples read so far from this shard (a tar error is reported by the owner of this position)

        def on_tar_error(err: Exception, url: str = url, position: list[int] = position) -> bool:
            if share is not None and not share(url, position[0]):
                return True  # another slot owns this position and reports it
            if not isinstance(err, ShardFormatError):
                err = ShardFormatError(url, "?", f"unreadable tar: {type(err).__name__}: {err}")
            return report(err)

        # one shard per pipeline, already chosen for this rank and worker: no second split by WebDataset
        ds = wds.WebDataset([url], shardshuffle=False, nodesplitter=None, workersplitter=None, handler=on_tar_error)
        for sample in ds:
            mine = share is None or share(url, position[0])
            position[0] += 1
            if not mine:
                continue
            try:
                ep = decode_episode(sample, url, decode_frames)
            except ShardFormatError as err:
                report(err)
                continue
            yield ep
        expected = listed.get(os.path.normpath(url))
        if expected is not None and position[0] < expected and (share is None or share(url, position[0])):
            report(ShardFormatError(url, "?", f"unreadable tar: it ends after {position[0]} of the {expected} samples "
                                              f"{INDEX_FILE} lists (truncated?)"))  # fmt: skip


def _listed_counts(urls: list[str]) -> dict[str, int]:
    """Sample count of each shard as its directory's ``index.json`` lists it (normalized path -> count)."""
    out: dict[str, int] = {}
    for parent in {os.path.dirname(os.path.normpath(u)) for u in urls}:
        if os.path.isfile(os.path.join(parent, INDEX_FILE)):
            for entry in read_index(parent).get("shards", []):
                out[os.path.normpath(os.path.join(parent, entry["name"]))] = int(entry["count"])
    return out
