"""Frames labelled with the simulator's per-frame success flag, to train the video success classifier (paper: reward).

Each sample is the frame ``t`` of an episode (with the ``frame_stack - 1`` frames before it, ``stack_stride`` apart)
and its label ``meta["success_steps"][t]``. Several shard directories can be mixed with weights: this is how the
classifier is *domain-bridged* (paper: reward): mix real shards with shards of the same schema whose
frames a world model generated from the same action sequences, labelled with the simulator's success.

The validation split is by episode: an episode is held out when a stable hash of its key falls below
``val_fraction``, so the split never changes with shard layout, worker count or seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.clips import mix_streams, to_float_video
from lightning_prophrl.datamodules.robot import collate_clips
from lightning_prophrl.datamodules.shards import Episode, OnError, iter_episodes, list_shards
from lightning_prophrl.datamodules.slots import (
    ShardSplit,
    SkipCounter,
    SkippedSamplesReport,
    check_shard_split,
    check_slots,
    slot_info,
    slot_share,
)

FRAME_SUCCESS = "frame_success"  # (B,) float in {0, 1}, the success flag of the labelled (last) frame of the stack
Split = Literal["train", "val"]
Label = Literal["success", "outcome"]


def is_val_episode(key: str, val_fraction: float) -> bool:
    """Whether the episode ``key`` belongs to the held-out split (stable across processes and Python runs)."""
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < val_fraction


def frame_labels(ep: Episode, label: Label = "success") -> np.ndarray:
    """``(T,)`` bool per-frame labels of an episode.

    ``label="success"``: the simulator's per-frame success flags. Episodes without ``meta["success_steps"]`` are
    accepted only when they failed (every frame is then negative).

    ``label="outcome"``: every frame carries the episode's eventual success, so a classifier trained on them estimates
    the probability that the policy which recorded the episode succeeds from that frame on (a Monte Carlo value; the
    value head that scores the end of a short imagined branch). Branch replays (``meta["branch_of"]``) carry their
    source episode's outcome in ``meta["episode_success"]``: their own ``success`` covers the branch window only.

    Raises:
        ValueError: an unknown ``label``; a successful episode without flags, or flags whose length differs from the
            frame count; a branch replay without ``episode_success``.
    """
    if label == "outcome":
        if "branch_of" in ep.meta and "episode_success" not in ep.meta:
            raise ValueError(f"episode {ep.key!r} is a branch replay without meta['episode_success'] (made by an older "
                             "imagine_branch_dataset): delete its directory and build it again")  # fmt: skip
        return np.full(len(ep), bool(ep.meta.get("episode_success", ep.success)))
    if label != "success":
        raise ValueError(f"label must be 'success' or 'outcome', got {label!r}")
    steps = ep.meta.get("success_steps")
    if steps is None:
        if ep.success:
            raise ValueError(f"episode {ep.key!r}: success=True but meta has no 'success_steps' per-frame flags")
        return np.zeros(len(ep), dtype=bool)
    flags = np.asarray(steps, dtype=bool)
    if flags.shape != (len(ep),):
        raise ValueError(f"episode {ep.key!r}: meta['success_steps'] has {flags.size} flags for {len(ep)} frames")
    return flags


class SuccessFrameIterable(IterableDataset):
    """Weighted mixture of labelled frame stacks from episode shards (one split).

    Args:
        paths: dataset directories (shards + ``index.json``).
        weights: mixture weights (normalized; default uniform).
        split: ``"train"`` (an endless random stream cut to ``samples_per_epoch``) or ``"val"`` (one deterministic
            pass over the held-out episodes).
        val_fraction: share of episodes held out (by key hash).
        frame_stack: frames per sample; the label is the last one's.
        stack_stride: source frames between stacked frames (match the reward video's frame spacing, e.g. the
            policy's execution horizon for chunk-boundary rollout videos).
        image_size: square output size.
        samples_per_epoch: training samples per epoch over all ranks and workers.
        frames_per_episode: samples drawn per decoded training episode.
        shuffle_buffer: samples held for shuffling across episodes.
        positive_fraction: if set, each training draw from an episode with success frames picks one of them with this
            probability (positives are a few frames at the end of successful episodes); None draws uniformly.
        val_frames_per_episode: evenly spaced frames per held-out episode (None: every frame).
        seed: the stream is a deterministic function of (seed, epoch, rank, worker).
        on_error: ``raise`` or ``skip`` invalid samples.
        shard_split: how rank x worker slots share each dataset: ``"shards"`` or ``"samples"`` (see ``slots``).
        label: what a frame is labelled with (:func:`frame_labels`): its ``"success"`` flag or the episode's
            ``"outcome"``.

    Attributes:
        skips: ``SkipCounter`` of the skipped samples; ``skips.count`` in the building process includes its workers.
    """

    def __init__(
        self,
        paths: list[str],
        weights: list[float] | None = None,
        split: Split = "train",
        val_fraction: float = 0.1,
        frame_stack: int = 1,
        stack_stride: int = 1,
        image_size: int | None = 64,
        samples_per_epoch: int = 8192,
        frames_per_episode: int = 8,
        shuffle_buffer: int = 256,
        positive_fraction: float | None = None,
        val_frames_per_episode: int | None = None,
        seed: int = 0,
        on_error: OnError = "raise",
        shard_split: ShardSplit = "shards",
        label: Label = "success",
    ):
        super().__init__()
        check_shard_split(shard_split)
        if label not in ("success", "outcome"):
            raise ValueError(f"label must be 'success' or 'outcome', got {label!r}")
        if not paths:
            raise ValueError("datasets must name at least one shard directory")
        weights = [1.0] * len(paths) if weights is None else list(weights)
        if len(weights) != len(paths) or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be {len(paths)} positive numbers (one per dataset), got {weights}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if frame_stack < 1 or stack_stride < 1 or frames_per_episode < 1:
            raise ValueError("frame_stack, stack_stride and frames_per_episode must be >= 1")
        if positive_fraction is not None and not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1] or None, got {positive_fraction}")
        self.paths, self.shards = list(paths), [list_shards(p) for p in paths]
        self.probs = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.split, self.val_fraction = split, val_fraction
        self.frame_stack, self.stack_stride, self.image_size = frame_stack, stack_stride, image_size
        self.samples_per_epoch, self.frames_per_episode = samples_per_epoch, frames_per_episode
        self.shuffle_buffer, self.positive_fraction = shuffle_buffer, positive_fraction
        self.val_frames_per_episode, self.seed, self.on_error = val_frames_per_episode, seed, on_error
        self.shard_split, self.label = shard_split, label
        self.skips = SkipCounter(shared=True)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # 1. partitioning ------------------------------------------------------------------------------------------------
    def check_slots(self, num_workers: int, owner: str = "SuccessFrameIterable") -> None:
        """Raise in the main process when a dataset has too few shards for the rank x worker slots (``slots``)."""
        check_slots(owner, {repr(p): len(s) for p, s in zip(self.paths, self.shards, strict=True)}, num_workers,
                    self.shard_split)  # fmt: skip

    def _episodes(self, di: int, rng: np.random.Generator | None = None) -> Iterator[Episode]:
        """This slot's episodes of dataset ``di`` in this split (shards in a random order when ``rng`` is given)."""
        mine, share = slot_share(self.shards[di], repr(self.paths[di]), self.shard_split)
        if rng is not None:
            mine = [mine[i] for i in rng.permutation(len(mine))]
        for ep in iter_episodes(mine, self.on_error, skip_counter=self.skips, share=share):
            if is_val_episode(ep.key, self.val_fraction) == (self.split == "val"):
                yield ep

    # 2. iteration ---------------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.split == "val":
            for di in range(len(self.paths)):
                for ep in self._episodes(di):
                    t, flags = len(ep), frame_labels(ep, self.label)
                    n = t if self.val_frames_per_episode is None else min(t, self.val_frames_per_episode)
                    for c in np.unique(np.linspace(0, t - 1, n).round().astype(int)):
                        yield self.make_sample(ep, flags, int(c), di)
            return
        slot, nslots = slot_info()
        epoch = self.epoch
        self.epoch += 1  # persistent workers / in-process iteration advance the epoch on each new pass
        rng = np.random.default_rng([self.seed, epoch, slot])
        streams = [self._train_stream(di, rng) for di in range(len(self.paths))]
        yield from mix_streams(
            streams, self.probs, rng, math.ceil(self.samples_per_epoch / nslots), self.shuffle_buffer
        )

    def _train_stream(self, di: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        while True:  # cycle over this slot's shards, reshuffled on every pass
            got_any = False
            for ep in self._episodes(di, rng):
                got_any = True
                flags = frame_labels(ep, self.label)
                for c in self._draw_frames(flags, rng):
                    yield self.make_sample(ep, flags, int(c), di)
            if not got_any:
                slot, nslots = slot_info()
                raise RuntimeError(f"dataset {self.paths[di]!r}: slot {slot} of {nslots} (ranks x workers) found no "
                                   f"valid {self.split} episode of its own (shard_split={self.shard_split!r}, "
                                   f"skipped so far: {self.skips.count})")  # fmt: skip

    def _draw_frames(self, flags: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        m = self.frames_per_episode
        uniform = rng.integers(0, len(flags), size=m)
        pos = np.flatnonzero(flags)
        if self.positive_fraction is None or len(pos) == 0:
            return uniform
        pick_pos = rng.random(m) < self.positive_fraction
        return np.where(pick_pos, pos[rng.integers(0, len(pos), size=m)], uniform)

    # 3. one sample --------------------------------------------------------------------------------------------------
    def make_sample(self, ep: Episode, flags: np.ndarray, t: int, di: int) -> dict[str, Any]:
        """Stack frames ``t - (S - 1) * stride, ..., t`` (clamped at 0) and the label of frame ``t``."""
        idx = np.maximum(t - self.stack_stride * np.arange(self.frame_stack - 1, -1, -1), 0)
        return {
            K.VIDEO: to_float_video(ep.frames[idx], self.image_size),
            FRAME_SUCCESS: float(flags[t]),
            K.SUCCESS: float(ep.success),
            K.INSTRUCTION: str(ep.meta.get("instruction", "")),
            K.EPISODE_KEY: ep.key,
            K.FRAME_INDEX: t,
            K.DATASET_ID: di,
        }


class RewardDataModule(SkippedSamplesReport, L.LightningDataModule):
    """Labelled frame stacks for ``RewardModelModule``, from a weighted mixture of episode shard directories.

    Batches carry ``VIDEO`` ``(B, frame_stack, 3, H, W)`` in ``[-1, 1]``, ``FRAME_SUCCESS`` ``(B,)`` (the label of the
    last frame), ``SUCCESS`` ``(B,)`` (episode outcome), ``INSTRUCTION``, ``EPISODE_KEY``, ``FRAME_INDEX``,
    ``DATASET_ID``.

    Args:
        datasets: shard directories (e.g. real simulator episodes, plus world-model-generated episodes for bridging).
        weights: mixture weights, one per dataset (default uniform).
        image_size: frames are resized to ``image_size`` x ``image_size``.
        batch_size: samples per batch per rank.
        num_workers: DataLoader workers per rank.
        frame_stack: frames per sample (set it to the classifier's ``temporal_kernel``).
        stack_stride: source frames between stacked frames.
        val_fraction: share of episodes held out for validation (by key hash; 0 disables validation).
        samples_per_epoch: training samples per epoch over all ranks.
        frames_per_episode: samples drawn per decoded training episode.
        shuffle_buffer: samples held for shuffling.
        positive_fraction: oversampling of success frames (see ``SuccessFrameIterable``; None: uniform).
        val_frames_per_episode: evenly spaced frames per held-out episode (None: all).
        seed: seeds the training stream.
        on_error: ``raise`` (default) or ``skip`` invalid samples.
        shard_split: how rank x worker slots share each dataset (see ``lightning_prophrl.datamodules.slots``):
            ``"shards"`` (default) gives each slot whole shards, and fewer shards than ``devices x num_workers`` is an
            error; ``"samples"`` lets every slot read every shard and decode only its own samples (small datasets).
        label: ``"success"`` (default: the per-frame success flags) or ``"outcome"`` (the episode's eventual success:
            a value head; see :func:`frame_labels`).

    Attributes:
        skipped_samples: invalid samples skipped so far under ``on_error="skip"``, workers included.
    """

    def __init__(
        self,
        datasets: list[str],
        weights: list[float] | None = None,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        frame_stack: int = 1,
        stack_stride: int = 1,
        val_fraction: float = 0.1,
        samples_per_epoch: int = 8192,
        frames_per_episode: int = 8,
        shuffle_buffer: int = 256,
        positive_fraction: float | None = None,
        val_frames_per_episode: int | None = None,
        seed: int = 0,
        on_error: OnError = "raise",
        shard_split: ShardSplit = "shards",
        label: Label = "success",
    ):
        super().__init__()
        self.save_hyperparameters()
        check_shard_split(shard_split)
        if isinstance(datasets, str) or not datasets:
            raise ValueError(f"datasets must be a non-empty list of shard directories, got {datasets!r}")
        self.train_set: SuccessFrameIterable | None = None
        self.val_set: SuccessFrameIterable | None = None

    def _make(self, split: Split) -> SuccessFrameIterable:
        h = self.hparams
        return SuccessFrameIterable(
            list(h.datasets), h.weights, split, h.val_fraction, h.frame_stack, h.stack_stride, h.image_size,
            h.samples_per_epoch, h.frames_per_episode, h.shuffle_buffer, h.positive_fraction,
            h.val_frames_per_episode, h.seed, h.on_error, h.shard_split, h.label,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make("train")
        if self.hparams.val_fraction > 0 and self.val_set is None:
            self.val_set = self._make("val")

    def _loader(self, ds: SuccessFrameIterable, drop_last: bool) -> DataLoader:
        h = self.hparams
        ds.check_slots(h.num_workers, type(self).__name__)
        return DataLoader(ds, batch_size=h.batch_size, num_workers=h.num_workers, collate_fn=collate_clips,
                          persistent_workers=h.num_workers > 0, drop_last=drop_last)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, drop_last=False) if self.val_set is not None else []


def load_episode_videos(
    path: str,
    split: Split | None = "val",
    val_fraction: float = 0.1,
    image_size: int | None = 64,
    frame_stride: int = 1,
    max_episodes: int | None = None,
) -> dict[str, Any]:
    """Whole episodes of a shard directory as padded videos, for ``evaluate_reward_model``.

    Args:
        path: shard directory.
        split: ``"val"`` / ``"train"`` (the datamodule's split by key hash) or None for every episode.
        val_fraction: as in ``RewardDataModule``.
        image_size: output frame size.
        frame_stride: keep frames ``0, s, 2s, ...`` plus the last one (e.g. 4 to mimic chunk-boundary rollout videos).
        max_episodes: stop after this many episodes.

    Returns:
        ``{VIDEO: (N, T, 3, H, W), "lengths": (N,) long, SUCCESS: (N,) float, INSTRUCTION: list, EPISODE_KEY: list}``,
        shorter videos padded with their last frame.
    """
    videos, keys, instructions, success = [], [], [], []
    for ep in iter_episodes(path):
        if split is not None and is_val_episode(ep.key, val_fraction) != (split == "val"):
            continue
        idx = np.unique(np.append(np.arange(0, len(ep), frame_stride), len(ep) - 1))
        videos.append(to_float_video(ep.frames[idx], image_size))
        keys.append(ep.key)
        instructions.append(str(ep.meta.get("instruction", "")))
        success.append(float(ep.success))
        if max_episodes is not None and len(videos) >= max_episodes:
            break
    if not videos:
        raise ValueError(f"{path}: no episode in split {split!r} (val_fraction={val_fraction})")
    lengths = torch.tensor([len(v) for v in videos], dtype=torch.long)
    t_max = int(lengths.max())
    padded = [torch.cat([v, v[-1:].expand(t_max - len(v), *v.shape[1:])]) for v in videos]
    return {
        K.VIDEO: torch.stack(padded),
        "lengths": lengths,
        K.SUCCESS: torch.tensor(success),
        K.INSTRUCTION: instructions,
        K.EPISODE_KEY: keys,
    }
