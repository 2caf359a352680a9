"""Rank x DataLoader-worker slots: who reads what, and skip counts that reach the main process.

Each DDP rank ``r`` of ``R`` runs ``W`` DataLoader workers (reading in-process counts as ``W = 1``); the ``R * W``
*slots* ``s = r * W + w`` read disjoint shares of every dataset, chosen here and nowhere else (WebDataset's own node
and worker splitting is switched off in ``shards.iter_episodes``). The ``shard_split`` option of the datamodules picks
the share:

* ``"shards"`` (default): slot ``s`` reads the whole shards ``shards[s::R * W]``. A dataset with fewer shards than
  slots is an error naming the dataset, its shard count, ``num_workers`` and the ways out.
* ``"samples"``: every slot opens every shard but decodes only the samples it owns; sample ``i`` of shard ``j``
  belongs to slot ``(i + j) % (R * W)``. Disjoint and complete for any number of shards, at the cost of every slot
  reading (not decoding) the bytes of every shard: meant for small datasets such as a held-out set in a few shards.

Samples skipped under ``on_error="skip"`` are counted by a ``SkipCounter`` whose counts live in shared memory, so the
process that built a dataset sees the skips of all its DataLoader workers (``dataset.skips.count``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Literal

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

ShardSplit = Literal["shards", "samples"]
SHARD_SPLITS = ("shards", "samples")


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from torch.distributed when initialised, else from the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def slot_info() -> tuple[int, int]:
    """``(slot, num_slots)`` of this process and DataLoader worker: ``rank * workers + worker_id``."""
    rank, world = dist_info()
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


def check_shard_split(split: str) -> None:
    if split not in SHARD_SPLITS:
        raise ValueError(f"shard_split must be one of {SHARD_SPLITS}, got {split!r}")


def too_few_shards(name: str, num_shards: int, num_workers: int | None = None) -> str | None:
    """Why ``shard_split="shards"`` cannot serve a dataset of ``num_shards`` shards, or None when it can.

    Args:
        name: the dataset as the message names it, e.g. ``"'sft' (/data/sft)"``.
        num_shards: its shard count.
        num_workers: DataLoader workers per rank; None reads them from the current worker (main process: 1).
    """
    _, world = dist_info()
    if num_workers is None:
        info = get_worker_info()
        num_workers = info.num_workers if info is not None else 0
    workers = max(num_workers, 1)
    slots = world * workers
    if num_shards >= slots:
        return None
    most = num_shards // world
    fix = f"set num_workers <= {most}" if most >= 1 else f"use at most {num_shards} device(s)"
    return (
        f"dataset {name} has {num_shards} shard(s) but {world} rank(s) x {workers} DataLoader worker(s) "
        f"(num_workers={num_workers}) = {slots} slots, and with shard_split='shards' each slot reads whole shards of "
        f"its own: {fix}, rewrite the dataset in at least {slots} smaller shards (`prophrl-data metaworld "
        "--per-shard`, `ShardWriter(max_count=...)`), or set shard_split='samples' (every slot reads every shard and "
        "decodes only its own samples)"
    )


def check_slots(owner: str, shard_counts: dict[str, int], num_workers: int, split: ShardSplit) -> None:
    """Raise in the main process, before any DataLoader worker starts, when ``split="shards"`` cannot serve a dataset.

    Args:
        owner: the datamodule or dataset class, named first in the message.
        shard_counts: shard count of each dataset, keyed by how the message names it (see ``too_few_shards``).
        num_workers: DataLoader workers per rank.
        split: the ``shard_split`` option.

    Raises:
        ValueError: naming ``owner``, the dataset, its shard count, ``num_workers`` and what to do.
    """
    check_shard_split(split)
    if split != "shards":
        return
    for name, count in shard_counts.items():
        problem = too_few_shards(name, count, num_workers)
        if problem:
            raise ValueError(f"{owner}: {problem}")


class SampleShare:
    """The samples a slot owns under ``shard_split="samples"``: sample ``i`` of shard ``shards[j]`` when
    ``(i + j) % num_slots == slot``.

    Args:
        shards: the dataset's shards, in the dataset's order (the order a training stream reads them in may differ).
        slot: this slot.
        num_slots: ranks x workers.
    """

    def __init__(self, shards: list[str], slot: int, num_slots: int):
        self.offsets = {url: j for j, url in enumerate(shards)}
        self.slot, self.num_slots = slot, num_slots

    def __call__(self, url: str, position: int) -> bool:
        return (position + self.offsets[url]) % self.num_slots == self.slot


def slot_share(shards: list[str], name: str, split: ShardSplit = "shards") -> tuple[list[str], SampleShare | None]:
    """This slot's share of a dataset: the shards it opens and, under ``"samples"``, which of their samples it keeps.

    Raises:
        ValueError: ``"shards"`` with fewer shards than slots (see ``too_few_shards``).
    """
    check_shard_split(split)
    slot, nslots = slot_info()
    if split == "samples":
        return list(shards), SampleShare(shards, slot, nslots)
    problem = too_few_shards(name, len(shards))
    if problem:
        raise ValueError(problem)
    return shards[slot::nslots], None


def _sample_id(err: Exception) -> int:
    """A stable 63-bit id of the sample an error is about: its shard and key (the message when it names neither)."""
    shard, key = getattr(err, "shard", None), getattr(err, "key", None)
    text = f"{shard}\0{key}" if shard is not None else str(err)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1 | 1


class SkipCounter:
    """Counts the distinct samples skipped under ``on_error="skip"`` and logs each one once.

    A sample is identified by its shard and key, so one damaged sample counts once however often it is read (a
    training stream cycles over its shards every epoch). With ``shared=True`` the counts live in shared memory: in
    the process that built the counter, ``count`` is the total of that process and all its DataLoader workers,
    during and after iteration, with persistent or fresh workers (a new worker reloads what its slot counted).

    Args:
        shared: keep the counts in shared memory (for datasets read by DataLoader workers); unshared, each process
            (or worker) counts in its own copy.
        capacity: distinct skipped samples remembered per worker; beyond it, a sample may count again when a fresh
            (non-persistent) worker re-reads it in a later epoch.
    """

    MAX_WORKERS = 64

    def __init__(self, shared: bool = False, capacity: int = 256):
        # row 0: the building process, row 1 + w: DataLoader worker w; column 0: count, then ids of skipped samples
        self._table = torch.zeros(self.MAX_WORKERS + 1 if shared else 1, capacity + 1, dtype=torch.long)
        if shared:
            self._table.share_memory_()
        self.errors: list[str] = []
        self._row, self._seen = -1, set()

    @property
    def count(self) -> int:
        """Distinct samples skipped by this process and its DataLoader workers."""
        return int(self._table[:, 0].sum())

    def __call__(self, err: Exception) -> bool:
        row = self._this_row()
        sid = _sample_id(err)
        if sid in self._seen:
            return True
        self._seen.add(sid)
        n = int(self._table[row, 0]) + 1
        if n < self._table.shape[1]:
            self._table[row, n] = sid
        self._table[row, 0] = n
        self.errors.append(str(err))
        log.warning("skipping invalid sample (%d distinct so far in this process): %s", n, err)
        return True

    def _this_row(self) -> int:
        info = get_worker_info()
        row = 0 if info is None or self._table.shape[0] == 1 else info.id + 1  # unshared: this process's own copy
        if row >= self._table.shape[0]:
            raise ValueError(f"SkipCounter(shared=True) serves at most {self.MAX_WORKERS} DataLoader workers per "
                             f"process, got worker {row - 1}: use fewer workers")  # fmt: skip
        if row != self._row:  # first skip in this process or worker: what this slot counted before
            n = min(int(self._table[row, 0]), self._table.shape[1] - 1)
            self._row, self._seen = row, set(self._table[row, 1 : n + 1].tolist())
        return row


class SkippedSamplesReport:
    """Mixin of the shard datamodules: ``skipped_samples`` over ``train_set`` / ``val_set`` (datasets with a
    ``skips`` counter), and one warning at teardown when any were skipped."""

    train_set = None
    val_set = None

    @property
    def skipped_samples(self) -> int:
        """Distinct invalid samples skipped so far under ``on_error="skip"`` by this rank's training and validation
        loaders, DataLoader workers included (each damaged sample counts once, however often it is read)."""
        return sum(ds.skips.count for ds in (self.train_set, self.val_set) if ds is not None)

    def teardown(self, stage: str) -> None:
        if self.skipped_samples:
            log.warning("%s skipped %d invalid sample(s) (on_error='skip'); the warnings above name them",
                        type(self).__name__, self.skipped_samples)  # fmt: skip
