"""Dataset statistics and inspection of an episode-shard directory (``prophrl-data stats`` / ``inspect``).

* ``dataset_stats`` (re)computes ``stats.json`` by streaming actions only (video is never decoded) and writes it
  atomically, with the same ``extra`` fields as ``ShardWriter``.
* ``inspect_dataset`` summarises a dataset (episode count, lengths, success rate, instructions, frame size, action
  statistics) and draws a contact sheet PNG: one row per episode, ``n_frames`` evenly spaced frames per row.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import ACTION_DIM, STATS_FILE
from lightning_prophrl.datamodules.shards import INDEX_FILE, iter_episodes, read_index


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _scan(data_dir: str | Path) -> dict[str, Any]:
    """One pass over actions and meta (no video): actions, mask, lengths, successes, instructions, datasets."""
    scan: dict[str, Any] = {"actions": [], "lengths": [], "success": [], "instructions": Counter(), "datasets": set()}
    scan["mask"] = np.zeros(ACTION_DIM, dtype=bool)
    scan["fps"] = set()
    for ep in iter_episodes(data_dir, decode_frames=False):
        scan["actions"].append(ep.actions)
        scan["mask"] |= ep.action_mask
        scan["lengths"].append(len(ep))
        scan["success"].append(ep.success)
        scan["instructions"][str(ep.meta.get("instruction", ""))] += 1
        scan["datasets"].add(str(ep.meta.get("dataset", "")))
        scan["fps"].add(ep.meta.get("fps"))
    if not scan["lengths"]:
        raise ValueError(f"{data_dir}: the dataset holds no episodes")
    return scan


def _stats_from_scan(scan: dict[str, Any], data_dir: Path) -> ActionStats:
    stats = ActionStats.compute(scan["actions"], mask=scan["mask"])
    name = read_index(data_dir).get("dataset") if (data_dir / INDEX_FILE).exists() else None
    stats.extra = {
        "dataset": name or ",".join(sorted(scan["datasets"])),
        "episodes": len(scan["lengths"]),
        "success_rate": float(np.mean(scan["success"])),
        "mean_length": float(np.mean(scan["lengths"])),
    }
    return stats


def dataset_stats(data_dir: str | Path, recompute: bool = False) -> dict[str, Any]:
    """Return the dataset's action statistics, computing and writing ``stats.json`` when needed.

    Args:
        data_dir: shard directory.
        recompute: recompute from the shards even if ``stats.json`` exists (e.g. after appending shards).

    Returns:
        The ``ActionStats`` dict (``mean``, ``std``, ``q01``, ``q99``, ``min``, ``max``, ``mask``, ``count``,
        ``extra``), each statistic a list of 14 floats.
    """
    data_dir = Path(data_dir)
    path = data_dir / STATS_FILE
    if path.exists() and not recompute:
        return ActionStats.load(path).to_dict()
    stats = _stats_from_scan(_scan(data_dir), data_dir)
    _atomic_write(path, json.dumps(stats.to_dict(), indent=2))
    return stats.to_dict()


def _contact_sheet(data_dir: Path, n_episodes: int, n_frames: int) -> tuple[np.ndarray, list[str], list[list[int]]]:
    """Rows of evenly spaced frames from the first ``n_episodes`` episodes.

    Returns:
        ``(sheet (rows * H, n_frames * W, 3) uint8, episode keys, frame indices per row)``; every frame is resized to
        the first episode's size.
    """
    import cv2

    rows, keys, indices = [], [], []
    size: tuple[int, int] | None = None
    for ep in iter_episodes(data_dir, decode_frames=True):
        if len(rows) >= n_episodes:
            break
        idx = np.linspace(0, len(ep.frames) - 1, n_frames).round().astype(int)
        frames = ep.frames[idx]
        size = size or (frames.shape[1], frames.shape[2])
        if frames.shape[1:3] != size:
            frames = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])
        rows.append(np.concatenate(list(frames), axis=1))
        keys.append(ep.key)
        indices.append(idx.tolist())
    return np.concatenate(rows, axis=0), keys, indices


def inspect_dataset(
    data_dir: str | Path, out_png: str | Path | None = None, n_episodes: int = 4, n_frames: int = 8
) -> dict[str, Any]:
    """Summarise a shard directory and optionally write a contact sheet.

    Args:
        data_dir: shard directory.
        out_png: contact sheet path (rows = the first ``n_episodes`` episodes, columns = ``n_frames`` evenly spaced
            frames, pixel size ``(rows * H, n_frames * W)``); None skips the file.
        n_episodes: episodes in the contact sheet (and decoded to measure the frame size).
        n_frames: frames per contact-sheet row.

    Returns:
        ``{"episodes", "frames", "length": {"min", "mean", "max"}, "success_rate", "instructions" (instruction ->
        count), "datasets", "fps", "frame_size" [H, W], "actions": {"count", "mask", "mean", "std", "min", "max"}
        over the real dims, "stats_json": bool, "contact_sheet": {"path", "episodes", "frame_indices", "size"}}``.
    """
    if n_episodes < 1 or n_frames < 1:
        raise ValueError(f"n_episodes and n_frames must be >= 1, got {n_episodes} and {n_frames}")
    data_dir = Path(data_dir)
    scan = _scan(data_dir)
    stats = _stats_from_scan(scan, data_dir)
    real = np.flatnonzero(scan["mask"])
    lengths = np.asarray(scan["lengths"])
    sheet, keys, indices = _contact_sheet(data_dir, n_episodes, n_frames)
    height, width = sheet.shape[0] // len(keys), sheet.shape[1] // n_frames
    report: dict[str, Any] = {
        "episodes": int(len(lengths)),
        "frames": int(lengths.sum()),
        "length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "success_rate": float(np.mean(scan["success"])),
        "instructions": dict(scan["instructions"].most_common()),
        "datasets": sorted(scan["datasets"]),
        "fps": sorted(scan["fps"], key=str),
        "frame_size": [int(height), int(width)],
        "actions": {
            "count": stats.count,
            "mask": real.tolist(),
            **{k: [getattr(stats, k)[i] for i in real] for k in ("mean", "std", "min", "max")},
        },
        "stats_json": (data_dir / STATS_FILE).exists(),
        "contact_sheet": {"path": None, "episodes": keys, "frame_indices": indices, "size": list(sheet.shape[:2])},
    }
    if out_png is not None:
        import cv2

        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out_png), np.ascontiguousarray(sheet[..., ::-1])):
            raise OSError(f"cannot write the contact sheet to {out_png}")
        report["contact_sheet"]["path"] = str(out_png)
    return report
