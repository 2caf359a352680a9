"""Reading shards: the finished shard list, statistics, and a validating episode iterator (schema: ``shards``)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import (
    SHARD_ACTION_MASK,
    SHARD_ACTIONS,
    SHARD_FRAMES_MP4,
    SHARD_FRAMES_NPY,
    SHARD_LATENTS,
    SHARD_META,
    SHARD_STATE,
    STATS_FILE,
)
from lightning_prophrl.datamodules.shard_schema import (
    INDEX_FILE,
    SHARD_EE_POSES,
    SHARD_TARGET_POSES,
    Episode,
    OnError,
    ShardFormatError,
    validate_arrays,
)
from lightning_prophrl.datamodules.slots import SampleShare, SkipCounter
from lightning_prophrl.datamodules.video import Mp4Frames, decode_mp4

_NPY_LAYOUTS: dict[bytes, tuple[np.dtype, tuple[int, ...], str]] = {}  # npy header -> dtype, shape, memory order


def _npy_load(data: bytes) -> np.ndarray:
    """``np.load`` of ``.npy`` bytes (no pickles). Each distinct header is parsed once by NumPy; later arrays with
    that header are copied straight out of the bytes (same values, dtype, shape and memory order)."""
    head = 10 + int.from_bytes(data[8:10], "little") if data[6:7] == b"\x01" else 0  # format 1.0: 2-byte length
    layout = _NPY_LAYOUTS.get(data[:head]) if data[:6] == b"\x93NUMPY" and head else None
    if layout is not None:
        dtype, shape, order = layout
        count = int(np.prod(shape))
        if len(data) >= head + count * dtype.itemsize:
            return np.frombuffer(data, dtype, count, head).reshape(shape, order=order).copy(order="K")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if head and data[:6] == b"\x93NUMPY" and not arr.dtype.hasobject and len(_NPY_LAYOUTS) < 4096:
        _NPY_LAYOUTS[data[:head]] = (arr.dtype, arr.shape, "F" if arr.ndim > 1 and not arr.flags.c_contiguous else "C")
    return arr


def decode_episode(
    sample: dict[str, Any], shard: str = "?", decode_frames: bool = True, lazy_frames: bool = False
) -> Episode:
    """Turn a raw WebDataset sample (bytes per extension) into a validated ``Episode``.

    Args:
        sample: the sample's bytes by extension, with ``__key__`` (and ``__url__``).
        shard: shard path for messages when the sample has no ``__url__``.
        decode_frames: read the frames (False: ``Episode.frames`` is None, for statistics).
        lazy_frames: keep mp4 frames encoded as an ``Mp4Frames`` that decodes only the frames indexed (its container
            index is read, so the frame count is still checked); npy frames are arrays either way.

    Raises:
        ShardFormatError: naming the shard, the sample key and the problem.
    """
    key = sample.get("__key__", "?")
    shard = sample.get("__url__", shard)
    for required in (SHARD_ACTIONS, SHARD_ACTION_MASK, SHARD_META):
        if required not in sample:
            raise ShardFormatError(shard, key, f"missing key {required!r}")
    if SHARD_FRAMES_NPY not in sample and SHARD_FRAMES_MP4 not in sample:
        if SHARD_LATENTS not in sample:
            raise ShardFormatError(shard, key, f"missing key {SHARD_FRAMES_NPY!r} or {SHARD_FRAMES_MP4!r}")
        if decode_frames:  # written by `prophrl-data encode --drop-frames`: latents only
            raise ShardFormatError(shard, key, f"holds pre-encoded latents ({SHARD_LATENTS!r}) and no frames "
                                               "(`prophrl-data encode --drop-frames`): read it with latents: true, "
                                               "or encode the source again without --drop-frames")  # fmt: skip
    try:
        meta = json.loads(sample[SHARD_META])
        actions = _npy_load(sample[SHARD_ACTIONS])
        mask = _npy_load(sample[SHARD_ACTION_MASK])
        state = _npy_load(sample[SHARD_STATE]) if SHARD_STATE in sample else None
        ee = _npy_load(sample[SHARD_EE_POSES]) if SHARD_EE_POSES in sample else None
        target = _npy_load(sample[SHARD_TARGET_POSES]) if SHARD_TARGET_POSES in sample else None
    except Exception as err:  # noqa: BLE001 - any decode failure is reported with its location
        raise ShardFormatError(shard, key, f"cannot decode arrays/meta: {err}") from err
    frames = _read_frames(sample, shard, key, lazy_frames) if decode_frames else None
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


def _read_frames(sample: dict[str, Any], shard: str, key: str, lazy: bool) -> np.ndarray | Mp4Frames:
    if lazy and SHARD_FRAMES_NPY not in sample:
        return Mp4Frames(sample[SHARD_FRAMES_MP4], shard, key)  # raises ShardFormatError itself
    try:
        if SHARD_FRAMES_NPY in sample:
            return _npy_load(sample[SHARD_FRAMES_NPY])
        return decode_mp4(sample[SHARD_FRAMES_MP4])
    except Exception as err:  # noqa: BLE001 - any decode failure is reported with its location
        raise ShardFormatError(shard, key, f"undecodable video: {err}") from err


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
    lazy_frames: bool = False,
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
        lazy_frames: mp4 frames stay encoded and decode on indexing (``decode_episode``): a clip sampler decodes only
            the frames its windows need. A picture that fails to decode then raises when it is indexed, not here.

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
                ep = decode_episode(sample, url, decode_frames, lazy_frames)
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
