"""Converters from public robot-dataset layouts to the project's WebDataset episode shards.

* ``convert_lerobot`` reads LeRobotDataset v2.0/v2.1 (one parquet + one mp4 per episode) and v3.0 (several episodes
  per parquet/mp4, located by per-episode rows in ``meta/episodes``) directly with pyarrow and PyAV.
* ``convert_hdf5`` reads robomimic / LIBERO hdf5 files (``data/demo_N/...``).

Both map actions through ``lightning_prophrl.actions.to_unified`` with a convention the caller names explicitly
(nothing is guessed), write with the atomic ``ShardWriter`` (``stats.json`` and ``index.json`` come with it) and return
a summary ``{"episodes", "frames", "skipped", "skipped_episodes", ...}``.

This module also holds the plumbing both converters share: the missing-key error, action mapping with the episode
named in errors, frame post-processing (flip / resize) and the conversion loop (progress bar, ``on_error``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from lightning_prophrl.actions import SourceConvention, to_unified
from lightning_prophrl.datamodules.shards import Episode, ShardWriter

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
Flip = Literal["none", "vertical", "rotate180"]
FrameFormat = Literal["npy", "mp4"]


class MissingKeyError(KeyError):
    """A key/column/dataset the conversion needs is absent. The message names the file and the key.

    Args:
        path: the file (or directory) that lacks the key.
        key: the missing key.
        available: what the container does hold, listed in the message to help pick the right key.
    """

    def __init__(self, path: str | Path, key: str, available: Iterable[str] | None = None):
        self.path, self.key = str(path), key
        hint = f" (available: {sorted(map(str, available))})" if available is not None else ""
        self.message = f"{self.path}: missing key {key!r}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def check_convention(convention: str) -> None:
    """Reject anything that is not a known ``SourceConvention`` (the argument is mandatory and never guessed)."""
    known = get_args(SourceConvention)
    if convention not in known:
        raise ValueError(f"action_convention must be one of {list(known)}, got {convention!r}")


def map_actions(actions: np.ndarray, convention: SourceConvention, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``to_unified`` with the episode named in any error.

    Args:
        actions: ``(T, D)`` source actions.
        convention: the source convention (see ``to_unified``).
        where: episode description used in error messages.

    Returns:
        ``(actions (T, 14) float32, mask (14,) bool)``.
    """
    try:
        return to_unified(actions, convention)
    except ValueError as err:
        raise ValueError(f"{where}: cannot map actions with convention {convention!r}: {err}") from err


def postprocess_frames(frames: np.ndarray, flip: Flip = "none", resize: tuple[int, int] | None = None) -> np.ndarray:
    """Flip and/or resize ``(T, H, W, 3) uint8`` frames.

    Args:
        frames: ``(T, H, W, 3) uint8``.
        flip: ``"none"``, ``"vertical"`` (rows reversed) or ``"rotate180"`` (rows and columns reversed).
        resize: ``(height, width)`` of the output (``cv2.INTER_AREA``), or None to keep the size.

    Returns:
        ``(T, H', W', 3) uint8`` contiguous frames.
    """
    if flip == "vertical":
        frames = frames[:, ::-1]
    elif flip == "rotate180":
        frames = frames[:, ::-1, ::-1]
    elif flip != "none":
        raise ValueError(f"flip must be 'none', 'vertical' or 'rotate180', got {flip!r}")
    if resize is not None:
        import cv2

        h, w = (int(v) for v in resize)
        if h < 1 or w < 1:
            raise ValueError(f"resize must be a positive (height, width), got {resize!r}")
        if frames.shape[1:3] != (h, w):
            frames = np.stack(
                [cv2.resize(np.ascontiguousarray(f), (w, h), interpolation=cv2.INTER_AREA) for f in frames]
            )
    return np.ascontiguousarray(frames, dtype=np.uint8)


def key_part(text: str) -> str:
    """Make ``text`` safe inside a WebDataset key (no dots, no separators): other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "dataset"


EpisodeJob = tuple[str, Callable[[], Episode]]


def run_conversion(
    jobs: Iterable[EpisodeJob],
    out: str | Path,
    *,
    dataset: str,
    total: int | None,
    frame_format: FrameFormat = "npy",
    episodes_per_shard: int = 100,
    append: bool = False,
    on_error: OnError = "raise",
    progress: bool = True,
    desc: str = "convert",
) -> dict[str, Any]:
    """Build and write episodes one by one; the shared loop of every converter.

    Args:
        jobs: ``(description, build)`` pairs; ``build()`` returns one ``Episode``.
        out: output directory of the shards.
        dataset: dataset name (``meta.json`` and ``stats.json``).
        total: number of jobs, for the progress bar.
        frame_format: ``"npy"`` or ``"mp4"`` frames in the shards.
        episodes_per_shard: episodes per tar shard.
        append: add shards to an existing output directory.
        on_error: ``"raise"`` stops at the first bad episode; ``"skip"`` skips it, logs it and lists it in the
            summary. Missing keys (``MissingKeyError``) always raise: they are a wrong argument, not a bad episode.
        progress: show a tqdm progress bar.
        desc: progress bar label.

    Returns:
        ``{"dataset", "out", "episodes", "frames", "skipped", "skipped_episodes"}``.
    """
    from tqdm.auto import tqdm

    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    summary: dict[str, Any] = {"dataset": dataset, "out": str(out), "episodes": 0, "frames": 0, "skipped": 0}
    summary["skipped_episodes"] = []
    writer = ShardWriter(out, dataset, max_count=episodes_per_shard, frame_format=frame_format, append=append)
    with writer, tqdm(total=total, desc=desc, unit="ep", disable=not progress) as bar:
        for where, build in jobs:
            try:
                ep = build()
                writer.write(ep)
            except MissingKeyError:
                raise
            except (ValueError, OSError) as err:
                if on_error == "raise":
                    raise
                log.warning("skipping %s: %s", where, err)
                summary["skipped"] += 1
                summary["skipped_episodes"].append({"episode": where, "reason": str(err)})
            else:
                summary["episodes"] += 1
                summary["frames"] += len(ep)
            bar.update(1)
    if summary["episodes"] == 0:
        reasons = summary["skipped_episodes"][:1]
        raise ValueError(f"no episode was converted into {out} (skipped {summary['skipped']}; first: {reasons})")
    return summary


from lightning_prophrl.datamodules.converters.hdf5 import convert_hdf5  # noqa: E402
from lightning_prophrl.datamodules.converters.lerobot import convert_lerobot  # noqa: E402

__all__ = [
    "MissingKeyError",
    "check_convention",
    "convert_hdf5",
    "convert_lerobot",
    "key_part",
    "map_actions",
    "postprocess_frames",
    "run_conversion",
]
