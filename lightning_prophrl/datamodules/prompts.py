"""Prompts for RL: initial states (frame + instruction + task + simulator seed), with a held-out evaluation split."""

from __future__ import annotations

import hashlib
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.clips import to_float_video
from lightning_prophrl.datamodules.robot import collate_clips
from lightning_prophrl.datamodules.shards import iter_episodes


def is_heldout(key: str, eval_fraction: float, salt: str = "prophrl-prompts") -> bool:
    """Deterministic, order-independent split: an episode is held out when the hash of its key falls below the
    fraction (so adding data never moves an existing prompt between splits)."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big")
    return h / 2**64 < eval_fraction


class PromptDataset(Dataset):
    """A list of prompt dicts with keys ``COND_FRAME`` (optional), ``INSTRUCTION``, ``TASK_ID``, ``SEED``."""

    def __init__(self, prompts: list[dict[str, Any]]):
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.prompts[i]


class PromptDataModule(L.LightningDataModule):
    """Initial states for RL rollouts and their held-out evaluation split.

    Two sources, which can be combined: episode shards (the first frame of each episode, for world-model rollouts),
    and simulator seeds (``tasks`` x seed ranges, for simulator rollouts, which render their own first frame).
    Each training batch holds ``num_prompts`` prompts (P in P x G rollouts); the loader samples them with
    replacement from a seeded generator so that an RL run of any length sees a reproducible prompt sequence.

    Args:
        datasets: shard directories whose episodes' first frames become prompts.
        tasks: simulator task names for seed prompts (e.g. ``["pick-place-v3"]``).
        instructions: instruction per task for seed prompts (defaults to ``envs.instructions.instruction_for``).
        train_seeds: ``[start, stop)`` simulator seeds for training prompts.
        eval_seeds: ``[start, stop)`` simulator seeds held out for evaluation (disjoint from ``train_seeds``).
        eval_fraction: fraction of shard episodes held out for evaluation (by key hash).
        num_prompts: prompts per batch (P).
        image_size: frame size of shard prompts.
        updates_per_epoch: batches per training epoch.
        seed: seeds the prompt sampling.
    """

    def __init__(
        self,
        datasets: list[str] | None = None,
        tasks: list[str] | None = None,
        instructions: dict[str, str] | None = None,
        train_seeds: tuple[int, int] = (2000, 3000),
        eval_seeds: tuple[int, int] = (1000, 1060),
        eval_fraction: float = 0.2,
        num_prompts: int = 4,
        image_size: int = 64,
        updates_per_epoch: int = 10,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not datasets and not tasks:
            raise ValueError("PromptDataModule needs `datasets` (shard prompts) or `tasks` (simulator seed prompts)")
        tr, ev = range(*train_seeds), range(*eval_seeds)
        if set(tr) & set(ev):
            raise ValueError(f"train_seeds {train_seeds} and eval_seeds {eval_seeds} overlap")
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        self.task_names: list[str] = list(tasks or [])
        self.train_prompts: list[dict[str, Any]] = []
        self.eval_prompts: list[dict[str, Any]] = []

    def task_id(self, task: str) -> int:
        if task not in self.task_names:
            self.task_names.append(task)
        return self.task_names.index(task)

    def setup(self, stage: str | None = None) -> None:
        if self.train_prompts or self.eval_prompts:
            return
        h = self.hparams
        instr = h.instructions or {}
        for task in h.tasks or []:
            if task not in instr:
                from lightning_prophrl.envs.instructions import instruction_for

                instr = {**instr, task: instruction_for(task)}
            for split, seeds in (("train", h.train_seeds), ("eval", h.eval_seeds)):
                dest = self.train_prompts if split == "train" else self.eval_prompts
                for s in range(*seeds):
                    dest.append({K.INSTRUCTION: instr[task], K.TASK_ID: self.task_id(task), K.SEED: s, K.TASK: task})
        for d in h.datasets or []:
            for ep in iter_episodes(d):
                frame = to_float_video(ep.frames[:1], h.image_size)[0]
                task = str(ep.meta.get("task", ep.meta["dataset"]))
                p = {
                    K.COND_FRAME: frame,
                    K.INSTRUCTION: str(ep.meta["instruction"]),
                    K.TASK_ID: self.task_id(task),
                    K.SEED: int(ep.meta.get("seed", -1)),
                    K.TASK: task,
                }
                if ep.state is not None:
                    p[K.OBS_STATE] = torch.from_numpy(ep.state[0].astype(np.float32))
                (self.eval_prompts if is_heldout(ep.key, h.eval_fraction) else self.train_prompts).append(p)
        if not self.train_prompts:
            raise ValueError("no training prompts: check `datasets`, `tasks` and `train_seeds`")

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        gen = torch.Generator().manual_seed(h.seed)
        sampler = torch.utils.data.RandomSampler(
            self.train_prompts, replacement=True, num_samples=h.num_prompts * h.updates_per_epoch, generator=gen
        )
        return DataLoader(PromptDataset(self.train_prompts), batch_size=h.num_prompts, sampler=sampler,
                          collate_fn=collate_clips)  # fmt: skip

    def eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The held-out prompts in a fixed order."""
        return DataLoader(PromptDataset(self.eval_prompts), batch_size=batch_size or self.hparams.num_prompts,
                          shuffle=False, collate_fn=collate_clips)  # fmt: skip

    @staticmethod
    def seeds(batch: dict[str, Any]) -> np.ndarray:
        return batch[K.SEED].cpu().numpy()
