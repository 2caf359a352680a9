"""Clip windows over episode shards: the iterable dataset behind every datamodule.

A clip (strided time, ``stride`` source frames per step) is cut at a conditioning index ``c``:

* ``history``: the ``history_len`` frames ``c - history_len .. c - 1`` (masked where ``< 0``);
* ``cond_frame``: frame ``c``;
* ``actions``: ``a[c .. c + L - 1]`` (action ``t`` is taken at frame ``t`` and leads to frame ``t + 1``);
* ``future``: frames ``c + 1 .. c + L``.

Past the end of an episode the last frame repeats and the actions are "hold still" (zero motion, last gripper
command), so short episodes (e.g. stopped at success) still yield full clips. Frame-rate alignment: with stride ``s``
the frames are subsampled ``[::s]`` and the ``s`` unified deltas between two kept frames are summed (exact for pure
translations, a small-rotation approximation for rotations); the gripper takes the last command.

Decoding: episodes are read with their mp4 frames still encoded (``iter_episodes(lazy_frames=True)``); once the
window starts of an episode are drawn, the frames those windows need are decoded in one pass and nothing else
(``ClipIterable.load_windows``), giving the same pixels as decoding the whole episode.

Distribution (``slots``): each rank x DataLoader-worker slot reads a disjoint share of every dataset (whole shards by
default, or its own samples of every shard with ``shard_split="samples"``), so ranks and workers never see the same
episode; every slot stops after the same number of samples (``with_epoch`` in WebDataset terms), so DDP ranks run the
same number of steps even when shard counts are uneven.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats, NormMode
from lightning_prophrl.datamodules.lazy_frames import FrameSource
from lightning_prophrl.datamodules.shards import (
    Episode,
    OnError,
    ShardFormatError,
    iter_episodes,
    list_shards,
    load_stats,
)
from lightning_prophrl.datamodules.slots import (
    SampleShare,
    ShardSplit,
    SkipCounter,
    check_shard_split,
    check_slots,
    slot_info,
    slot_share,
)


@dataclass
class DatasetSpec:
    """One dataset of a mixture.

    Args:
        path: directory holding the shards, ``index.json`` and ``stats.json``.
        weight: mixture weight (normalized over the mixture).
        stride: source frames per model frame (frame-rate alignment across datasets).
        name: display name (defaults to the directory name).
    """

    path: str
    weight: float = 1.0
    stride: int = 1
    name: str | None = None

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"dataset {self.path}: weight must be > 0, got {self.weight}")
        if self.stride < 1:
            raise ValueError(f"dataset {self.path}: stride must be >= 1, got {self.stride}")
        self.name = self.name or Path(self.path).name


def mix_streams(
    streams: list[Iterator[Any]], probs: np.ndarray, rng: np.random.Generator, n: int, shuffle_buffer: int
) -> Iterator[Any]:
    """Exactly ``n`` items drawn from a weighted mixture of infinite ``streams`` through a shuffle buffer."""
    buffer: list[Any] = []
    produced = 0
    while produced < n:
        buffer.append(next(streams[int(rng.choice(len(streams), p=probs))]))
        if len(buffer) >= shuffle_buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))
            produced += 1


def to_float_video(frames: np.ndarray, size: int | None) -> torch.Tensor:
    """``(T, H, W, 3) uint8`` -> ``(T, 3, size, size)`` float in [-1, 1] (antialiased area resize)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def stride_episode(ep: Episode, stride: int) -> Episode:
    """Subsample an episode in time, summing the motion deltas between kept frames."""
    if stride == 1:
        return ep
    t = len(ep)
    keep = np.arange(0, t, stride)
    acts = np.zeros((len(keep), K.ACTION_DIM), dtype=np.float32)
    for i, s in enumerate(keep):
        block = ep.actions[s : min(s + stride, t)]
        acts[i] = block.sum(0)
        acts[i, 6], acts[i, 13] = block[-1, 6], block[-1, 13]  # grippers take the last command
    meta = dict(ep.meta)
    if "success_steps" in meta:
        flags = np.asarray(meta["success_steps"], dtype=bool)
        meta["success_steps"] = [bool(flags[s : s + stride].any()) for s in keep]
    meta["fps"] = float(meta["fps"]) / stride
    return Episode(
        ep.key,
        _subsample_frames(ep.frames, keep),
        acts,
        ep.action_mask,
        meta,
        None if ep.state is None else ep.state[keep],
        None if ep.ee_poses is None else ep.ee_poses[keep],
        {k: v[keep] if isinstance(v, np.ndarray) and v.shape[:1] == (t,) else v for k, v in ep.extras.items()},
    )


def _subsample_frames(frames: np.ndarray | FrameSource | None, keep: np.ndarray) -> np.ndarray | FrameSource | None:
    if isinstance(frames, FrameSource):
        return frames.select(keep)  # decodes nothing: the clip sampler asks for its windows' frames later
    return None if frames is None else frames[keep]


class ClipIterable(IterableDataset):
    """Infinite-by-design weighted mixture of clip windows, cut to ``samples_per_epoch`` per epoch.

    Args:
        datasets: the mixture.
        history_len: past frames per clip (0 disables history).
        chunk_len: action chunk length L (and number of future frames).
        image_size: square output size, or None to keep the stored size.
        with_future: emit the future frames (False for policy data).
        samples_per_epoch: clips per epoch summed over all ranks and workers.
        windows_per_episode: clips drawn from each episode before moving on; the frames of all its windows are
            decoded in one pass, and of an mp4 episode only the groups of pictures that hold them.
        shuffle_buffer: clips held for shuffling across episodes.
        norm_mode: action normalization (``quantile`` maps q01/q99 to -1/+1).
        state_dim: pad/truncate proprioception to this width (0: no state key).
        seed: base seed; the stream is a deterministic function of (seed, epoch, rank, worker).
        on_error: ``raise`` or ``skip`` invalid samples (see ``iter_episodes``).
        stats: per-dataset statistics overriding each dataset's ``stats.json`` (e.g. the SFT data's statistics).
        eval_mode: one deterministic pass instead of a random stream: every episode of this slot's shards, in order,
            with ``windows_per_episode`` evenly spaced clips (validation / evaluation).
        shard_split: how rank x worker slots share each dataset: ``"shards"`` (whole shards each; fewer shards than
            slots is an error) or ``"samples"`` (every slot reads every shard, decodes only its own samples; see
            ``slots``).

    Attributes:
        skips: ``SkipCounter`` of the samples skipped under ``on_error="skip"``; ``skips.count`` in the process that
            built the dataset includes its DataLoader workers.
    """

    def __init__(
        self,
        datasets: list[DatasetSpec],
        history_len: int = 4,
        chunk_len: int = 20,
        image_size: int | None = 64,
        with_future: bool = True,
        samples_per_epoch: int = 1024,
        windows_per_episode: int = 4,
        shuffle_buffer: int = 64,
        norm_mode: NormMode = "quantile",
        state_dim: int = 0,
        seed: int = 0,
        on_error: OnError = "raise",
        stats: list[ActionStats] | None = None,
        eval_mode: bool = False,
        shard_split: ShardSplit = "shards",
    ):
        super().__init__()
        check_shard_split(shard_split)
        if not datasets:
            raise ValueError("at least one dataset is required")
        if chunk_len < 1 or history_len < 0:
            raise ValueError(f"chunk_len must be >= 1 and history_len >= 0, got {chunk_len}, {history_len}")
        self.datasets = datasets
        self.shards = [list_shards(d.path) for d in datasets]
        self.stats = stats or [load_stats(d.path) for d in datasets]
        w = np.array([d.weight for d in datasets], dtype=np.float64)
        self.probs = w / w.sum()
        self.history_len, self.chunk_len, self.image_size = history_len, chunk_len, image_size
        self.with_future, self.samples_per_epoch = with_future, samples_per_epoch
        self.windows_per_episode, self.shuffle_buffer = windows_per_episode, shuffle_buffer
        self.norm_mode, self.state_dim, self.seed, self.on_error = norm_mode, state_dim, seed, on_error
        self.eval_mode, self.shard_split = eval_mode, shard_split
        self.skips = SkipCounter(shared=True)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # 1. partitioning ------------------------------------------------------------------------------------------------
    def my_share(self, di: int) -> tuple[list[str], SampleShare | None]:
        """This slot's shards of dataset ``di`` and, under ``shard_split="samples"``, which samples it keeps."""
        return slot_share(self.shards[di], self._label(di), self.shard_split)

    def _label(self, di: int) -> str:
        return f"{self.datasets[di].name!r} ({self.datasets[di].path})"

    def check_slots(self, num_workers: int, owner: str = "ClipIterable") -> None:
        """Raise in the main process when a dataset has too few shards for the rank x worker slots (``slots``)."""
        counts = {self._label(di): len(shards) for di, shards in enumerate(self.shards)}
        check_slots(owner, counts, num_workers, self.shard_split)

    # 2. iteration ---------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.eval_mode:
            yield from self._eval_pass()
            return
        slot, nslots = slot_info()
        epoch = self.epoch
        self.epoch += 1  # persistent workers / in-process iteration advance the epoch on each new pass
        rng = np.random.default_rng([self.seed, epoch, slot])
        streams = [self._episode_clips(di, rng) for di in range(len(self.datasets))]
        yield from mix_streams(
            streams, self.probs, rng, math.ceil(self.samples_per_epoch / nslots), self.shuffle_buffer
        )

    def _eval_pass(self) -> Iterator[dict[str, Any]]:
        for di, spec in enumerate(self.datasets):
            shards, share = self.my_share(di)
            for ep in self.read_episodes(di, shards, share):
                ep = stride_episode(ep, spec.stride)
                starts = self.window_starts(ep, None)
                if self.load_windows(ep, starts):
                    for c in starts:
                        yield self.make_clip(ep, int(c), di)

    def _episode_clips(self, di: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        shards, share = self.my_share(di)
        spec = self.datasets[di]
        while True:  # cycle over this slot's shards, reshuffled on every pass
            order = rng.permutation(len(shards))
            got_any = False
            for ep in self.read_episodes(di, [shards[i] for i in order], share):
                ep = stride_episode(ep, spec.stride)
                starts = self.window_starts(ep, rng)
                if not self.load_windows(ep, starts):
                    continue
                got_any = True
                for c in starts:
                    yield self.make_clip(ep, int(c), di)
            if not got_any:
                slot, nslots = slot_info()
                raise RuntimeError(f"dataset {self._label(di)}: slot {slot} of {nslots} (ranks x workers) "
                                   f"found no valid episode of its own in shards {shards} "
                                   f"(shard_split={self.shard_split!r}, skipped so far: {self.skips.count})")  # fmt: skip

    def read_episodes(self, di: int, shards: list[str], share: SampleShare | None) -> Iterator[Episode]:
        """This slot's episodes of dataset ``di`` in ``shards``, in order (frames held encoded until indexed)."""
        return iter_episodes(shards, self.on_error, skip_counter=self.skips, share=share, lazy_frames=True)

    def window_starts(self, ep: Episode, rng: np.random.Generator | None) -> np.ndarray:
        """Conditioning indices of the clips drawn from a (strided) episode: ``windows_per_episode`` random ones, or
        evenly spaced ones when ``rng`` is None (evaluation)."""
        if rng is None:
            return np.linspace(0, len(ep) - 1, self.windows_per_episode).round().astype(int)
        return rng.integers(0, len(ep), size=self.windows_per_episode)

    # 3. one clip ----------------------------------------------------------------------------------------------------
    def frame_indices(self, t: int, c: int) -> list[int]:
        """Frames of the clip at ``c`` of a ``t``-frame episode: ``[c, future..., history...]`` (clamped to it)."""
        need = [c]
        if self.with_future:
            need += np.minimum(np.arange(c + 1, c + self.chunk_len + 1), t - 1).tolist()
        return need + np.maximum(np.arange(c - self.history_len, c), 0).tolist()

    def load_windows(self, ep: Episode, starts: np.ndarray) -> bool:
        """Decode, in one pass, the frames the clips at ``starts`` need (frames held lazily; arrays need nothing).

        Returns False when the video fails to decode under ``on_error="skip"`` (counted in ``skips``).
        """
        if not isinstance(ep.frames, FrameSource):
            return True
        try:
            ep.frames.load(sorted({i for c in starts for i in self.frame_indices(len(ep), int(c))}))
        except ShardFormatError as err:
            if self.on_error == "raise":
                raise
            self.skips(err)
            return False
        return True

    def make_clip(self, ep: Episode, c: int, di: int) -> dict[str, Any]:
        """Cut the clip at conditioning index ``c`` of a (strided) episode."""
        t, hl, cl = len(ep), self.history_len, self.chunk_len
        last = t - 1
        fut_idx = np.minimum(np.arange(c + 1, c + cl + 1), last)
        act_idx = np.arange(c, c + cl)
        acts = ep.actions[np.minimum(act_idx, last)].copy()
        past = act_idx > last
        if past.any():  # hold still after the episode ends, keep the last gripper command
            acts[past] = 0.0
            acts[past, 6], acts[past, 13] = ep.actions[last, 6], ep.actions[last, 13]
        stats = self.stats[di]
        out: dict[str, Any] = {
            K.ACTIONS: torch.from_numpy(stats.normalize(acts, self.norm_mode)),
            K.ACTION_MASK: torch.from_numpy(ep.action_mask.copy()),
            K.INSTRUCTION: str(ep.meta["instruction"]),
            K.DATASET_ID: di,
            K.EPISODE_KEY: ep.key,
            K.FRAME_INDEX: c,
            K.SUCCESS: float(ep.success),
            K.CLIP_SUCCESS: self._clip_success(ep, int(fut_idx[-1])),
        }
        out.update(self.clip_frames(ep, c))
        if hl > 0:
            out[K.HISTORY_MASK] = torch.from_numpy(np.arange(c - hl, c) >= 0)
        if self.state_dim > 0:
            out[K.OBS_STATE] = self._state(ep, c)
        if self.with_future:
            out.update(self._geometry(ep, fut_idx))
        return out

    def clip_frames(self, ep: Episode, c: int) -> dict[str, torch.Tensor]:
        """The pixels of the clip at ``c``: ``COND_FRAME``, ``FUTURE`` (``with_future``), ``HISTORY`` (history)."""
        video = to_float_video(ep.frames[self.frame_indices(len(ep), c)], self.image_size)
        out = {K.COND_FRAME: video[0]}
        if self.with_future:
            out[K.FUTURE] = video[1 : 1 + self.chunk_len]
        if self.history_len > 0:
            out[K.HISTORY] = video[len(video) - self.history_len :]
        return out

    @staticmethod
    def _clip_success(ep: Episode, end: int) -> float:
        steps = ep.meta.get("success_steps")
        if steps is not None:
            return float(bool(np.asarray(steps[: end + 1], dtype=bool).any()))
        return float(ep.success and end >= len(ep) - 1)

    def _state(self, ep: Episode, c: int) -> torch.Tensor:
        s = np.zeros(self.state_dim, dtype=np.float32)
        if ep.state is not None:
            v = ep.state[c][: self.state_dim]
            s[: len(v)] = v
        return torch.from_numpy(s)

    def _geometry(self, ep: Episode, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """End-effector poses of the future frames and the camera, for rendering action frames: the commanded target
        poses when the episode stores them (``target_poses.npy``: what an action says, reproducible from actions alone
        in imagination), else the measured ``ee_poses``."""
        poses = np.zeros((len(idx), K.NUM_ARMS, 7), dtype=np.float32)  # zero quaternion: an arm that is not drawn
        grip = np.zeros((len(idx), K.NUM_ARMS), dtype=np.float32)
        cam = ep.meta.get("camera")
        source = ep.target_poses if ep.target_poses is not None else ep.ee_poses
        has_cam = source is not None and cam is not None
        if source is not None:
            n = min(source.shape[1], K.NUM_ARMS)
            poses[:, :n] = source[idx, :n, :7]
            grip[:, :n] = source[idx, :n, 7]
        k_mat, extr = np.eye(3, dtype=np.float32), np.eye(4, dtype=np.float32)
        if cam is not None:
            k_mat = np.asarray(cam["K"], dtype=np.float32).copy()
            extr = np.asarray(cam["extrinsics"], dtype=np.float32)
            if self.image_size is not None:  # intrinsics follow the resize
                k_mat[0] *= self.image_size / float(cam["width"])
                k_mat[1] *= self.image_size / float(cam["height"])
        return {
            K.EE_POSES: torch.from_numpy(poses),
            K.GRIPPER: torch.from_numpy(grip),
            K.CAMERA_K: torch.from_numpy(k_mat),
            K.CAMERA_EXTR: torch.from_numpy(extr),
            K.HAS_CAMERA: torch.tensor(has_cam),
        }
