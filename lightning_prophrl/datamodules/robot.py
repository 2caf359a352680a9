"""LightningDataModules over episode shards: world-model clips and policy chunks."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_prophrl import constants as K
from lightning_prophrl.actions import NormMode
from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec
from lightning_prophrl.datamodules.latent_clips import LatentClipIterable
from lightning_prophrl.datamodules.shards import OnError, load_stats
from lightning_prophrl.datamodules.slots import ShardSplit, SkippedSamplesReport, check_shard_split


def dataset_specs(datasets: list[DatasetSpec | dict[str, Any] | str], stride: int = 1) -> list[DatasetSpec]:
    """Mixture entries -> ``DatasetSpec``; a path to a corpus (a directory with ``corpus.json``, written by
    ``prophrl-data corpus``) stands for all its datasets at equal weight; ``stride`` is the default of entries that
    do not set their own."""
    out = []
    for d in datasets:
        if isinstance(d, DatasetSpec):
            out.append(d)
        elif isinstance(d, str):
            corpus = Path(d) / "corpus.json"
            if corpus.is_file():
                out.extend(DatasetSpec(path=p, stride=stride) for p in corpus_datasets(d))
            else:
                out.append(DatasetSpec(path=d, stride=stride))
        elif isinstance(d, dict):
            unknown = set(d) - {"path", "weight", "stride", "name"}
            if unknown or "path" not in d:
                raise ValueError(f"dataset entry {d}: needs 'path' and only path/weight/stride/name, got {sorted(d)}")
            out.append(DatasetSpec(**{"stride": stride, **d}))
        else:
            raise TypeError(f"dataset entry must be a path, a dict or a DatasetSpec, got {type(d).__name__}")
    return out


def corpus_datasets(corpus_dir: str | Path) -> list[str]:
    """The dataset directories of a corpus, ``<corpus_dir>/<camera>/<task>`` as listed in its ``corpus.json``."""
    corpus_dir = Path(corpus_dir)
    info = json.loads((corpus_dir / "corpus.json").read_text())
    paths = [str(corpus_dir.joinpath(*Path(p).parts[-2:])) for p in info.get("datasets", [])]
    missing = [p for p in paths if not Path(p).is_dir()]
    if not paths or missing:
        raise FileNotFoundError(f"{corpus_dir}/corpus.json: datasets {missing or '(none listed)'} not found; "
                                f"rerun `prophrl-data corpus --out {corpus_dir}` (finished datasets are kept)")  # fmt: skip
    return paths


class _ClipDataModuleBase(SkippedSamplesReport, L.LightningDataModule):
    train_set: ClipIterable | None = None
    val_set: ClipIterable | None = None

    def _loader(self, ds: ClipIterable, drop_last: bool = True, collate=None) -> DataLoader:
        ds.check_slots(self.hparams.num_workers, type(self).__name__)
        return DataLoader(
            ds,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            collate_fn=collate or collate_clips,
            drop_last=drop_last,
        )


class RobotClipDataModule(_ClipDataModuleBase):
    """Windows of (history, conditioning frame, action chunk, future frames) from a weighted dataset mixture.

    Batches carry the keys ``HISTORY``, ``HISTORY_MASK``, ``COND_FRAME``, ``FUTURE``, ``ACTIONS``, ``ACTION_MASK``,
    ``EE_POSES``, ``GRIPPER``, ``CAMERA_K``, ``CAMERA_EXTR``, ``HAS_CAMERA``, ``INSTRUCTION``, ``DATASET_ID``,
    ``SUCCESS``, ``CLIP_SUCCESS`` of ``lightning_prophrl.constants``.

    Args:
        datasets: the training mixture: paths, or dicts / ``DatasetSpec`` with ``path``, ``weight``, ``stride``; a
            corpus directory (``prophrl-data corpus``) stands for all its datasets.
        val_datasets: held-out datasets read in one deterministic pass (defaults to none).
        history_len: past frames per clip.
        chunk_len: action chunk length L (the paper: 20).
        image_size: output frames are resized to ``image_size`` x ``image_size``.
        batch_size: clips per batch per rank.
        num_workers: DataLoader workers per rank.
        samples_per_epoch: clips per training epoch over all ranks.
        windows_per_episode: clips drawn per decoded episode.
        shuffle_buffer: clips held for shuffling.
        norm_mode: action normalization, per dataset, from its ``stats.json``.
        seed: seeds the stream (with epoch, rank and worker).
        on_error: ``raise`` (default) or ``skip`` invalid samples.
        stats_from: directory whose ``stats.json`` normalizes every dataset (e.g. a multi-task corpus's pooled
            statistics: one normalization of the unified action space); None: each dataset's own.
        stride: source frames per model frame for the entries that do not set their own.
        shard_split: how rank x worker slots share each dataset (see ``lightning_prophrl.datamodules.slots``):
            ``"shards"`` (default) gives each slot whole shards, and fewer shards than ``devices x num_workers`` is an
            error; ``"samples"`` lets every slot read every shard and decode only its own samples (small datasets).
        latents: read pre-encoded latents (datasets written by ``prophrl-data encode``, train and validation alike):
            batches carry ``LATENT_COND`` / ``LATENT_FUTURE`` / ``LATENT_HISTORY`` (+ ``LATENT_ACTION_FRAMES``, the
            codec fingerprints; ``lightning_prophrl.constants``) instead of the frames, no video is decoded and the
            Prophet skips its codec (``LatentClipIterable``; docs/scale.md, "Pre-encoded latents").

    Attributes:
        skipped_samples: invalid samples skipped so far under ``on_error="skip"``, workers included.
    """

    def __init__(
        self,
        datasets: list[Any],
        val_datasets: list[Any] | None = None,
        history_len: int = 4,
        chunk_len: int = 20,
        image_size: int = 64,
        batch_size: int = 8,
        num_workers: int = 0,
        samples_per_epoch: int = 1024,
        windows_per_episode: int = 4,
        shuffle_buffer: int = 64,
        norm_mode: NormMode = "quantile",
        seed: int = 0,
        on_error: OnError = "raise",
        stats_from: str | None = None,
        stride: int = 1,
        shard_split: ShardSplit = "shards",
        latents: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_shard_split(shard_split)
        self.specs = dataset_specs(datasets, stride)
        self.val_specs = dataset_specs(val_datasets or [], stride)
        self.train_set: ClipIterable | None = None
        self.val_set: ClipIterable | None = None

    def _make(self, specs: list[DatasetSpec], eval_mode: bool) -> ClipIterable:
        h = self.hparams
        return (LatentClipIterable if h.latents else ClipIterable)(
            specs, h.history_len, h.chunk_len, h.image_size, True, h.samples_per_epoch, h.windows_per_episode,
            h.shuffle_buffer, h.norm_mode, 0, h.seed, h.on_error, eval_mode=eval_mode,
            stats=[load_stats(h.stats_from)] * len(specs) if h.stats_from else None, shard_split=h.shard_split,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(self.specs, eval_mode=False)
        if self.val_specs and self.val_set is None:
            self.val_set = self._make(self.val_specs, eval_mode=True)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, drop_last=False) if self.val_set is not None else []


class PolicyDataModule(_ClipDataModuleBase):
    """Observation frame + instruction (+ proprioception) -> normalized action chunk, for behaviour cloning.

    Batches carry ``OBS_IMAGE`` ``(B, 3, H, W)``, ``OBS_STATE`` ``(B, S)`` (when ``state_dim > 0``), ``INSTRUCTION``,
    ``ACTIONS`` ``(B, C, len(action_dims))`` normalized, and ``ACTION_MASK``.

    Args:
        datasets: demonstration datasets (paths or dicts, as in ``RobotClipDataModule``).
        chunk_len: action chunk length C predicted by the policy.
        action_dims: which of the 14 unified dims the policy models (Meta-World: dpos xyz + gripper = 0, 1, 2, 6).
        state_dim: proprioception width (0 disables).
        image_size, batch_size, num_workers, samples_per_epoch, windows_per_episode, shuffle_buffer, norm_mode, seed,
        on_error, shard_split: as in ``RobotClipDataModule``.
        stats_from: dataset directory whose ``stats.json`` normalizes every dataset (the policy's action space);
            defaults to each dataset's own statistics.
        val_datasets: held-out demonstration datasets read in one deterministic pass for validation (defaults to
            none; normalized like the training data when ``stats_from`` is given, else by their own statistics).

    Attributes:
        skipped_samples: invalid samples skipped so far under ``on_error="skip"``, workers included.
    """

    def __init__(
        self,
        datasets: list[Any],
        chunk_len: int = 4,
        action_dims: list[int] | None = None,
        state_dim: int = 0,
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        samples_per_epoch: int = 8192,
        windows_per_episode: int = 16,
        shuffle_buffer: int = 256,
        norm_mode: NormMode = "quantile",
        seed: int = 0,
        on_error: OnError = "raise",
        stats_from: str | None = None,
        shard_split: ShardSplit = "shards",
        val_datasets: list[Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_shard_split(shard_split)
        self.specs = dataset_specs(datasets)
        self.val_specs = dataset_specs(val_datasets or [])
        self.action_dims = list(action_dims) if action_dims is not None else list(range(K.ACTION_DIM))
        if any(not 0 <= d < K.ACTION_DIM for d in self.action_dims):
            raise ValueError(f"action_dims must lie in [0, {K.ACTION_DIM}), got {self.action_dims}")
        self.train_set: ClipIterable | None = None

    def _make(self, specs: list[DatasetSpec], eval_mode: bool) -> ClipIterable:
        h = self.hparams
        return ClipIterable(
            specs, 0, h.chunk_len, h.image_size, False, h.samples_per_epoch, h.windows_per_episode,
            h.shuffle_buffer, h.norm_mode, h.state_dim, h.seed, h.on_error, eval_mode=eval_mode,
            stats=[load_stats(h.stats_from)] * len(specs) if h.stats_from else None, shard_split=h.shard_split,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._make(self.specs, eval_mode=False)
        if self.val_specs and self.val_set is None:
            self.val_set = self._make(self.val_specs, eval_mode=True)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, collate=partial(collate_policy, action_dims=self.action_dims))

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(
            self.val_set, drop_last=False, collate=partial(collate_policy, action_dims=self.action_dims)
        )


def collate_policy(samples: list[dict[str, Any]], action_dims: list[int]) -> dict[str, Any]:
    """Collate clips and rename them to the policy's keys, keeping the modelled action dims."""
    batch = collate_clips(samples)
    out = dict(batch)
    out[K.OBS_IMAGE] = out.pop(K.COND_FRAME)
    out[K.ACTIONS] = batch[K.ACTIONS][..., action_dims]
    out[K.ACTION_MASK] = batch[K.ACTION_MASK][..., action_dims]
    return out


def collate_clips(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (branch prompts' ragged ``PREFIX_ACTIONS`` stay a list; any other ragged key is an error that names
    it), keep strings as lists, turn Python numbers into tensors."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            if all(v.shape == vals[0].shape for v in vals):
                out[key] = torch.stack(vals)
            elif key == K.PREFIX_ACTIONS:
                out[key] = vals
            else:
                raise ValueError(f"cannot batch key {key!r}: its tensors differ in shape "
                                 f"({sorted({tuple(v.shape) for v in vals})})")  # fmt: skip
        elif isinstance(vals[0], str):
            out[key] = vals
        elif isinstance(vals[0], bool | int):
            out[key] = torch.tensor(vals, dtype=torch.long)
        else:
            out[key] = torch.tensor(vals, dtype=torch.float32)
    return out
