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
    """A list of prompt dicts with keys ``COND_FRAME`` (optional), ``INSTRUCTION``, ``TASK_ID``, ``SEED``; branch
    prompts (see ``PromptDataModule``) are stored as ``(episode, frame)`` references and materialized on access."""

    def __init__(self, prompts: list[dict[str, Any]], branches: BranchStarts | None = None):
        self.prompts, self.branches = prompts, branches

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.prompts[i]
        return self.branches.materialize(p) if self.branches is not None and BRANCH in p else p


BRANCH = "branch"  # (episode index, frame index) of a branch prompt, resolved by BranchStarts


class BranchStarts:
    """Branch starts inside recorded episodes (short imagined rollouts from real states, MBPO style).

    A start at frame ``t`` of an episode gives the prompt ``COND_FRAME = frames[t]``, ``OBS_STATE = state[t]``,
    ``COND_TARGET`` (the commanded end-effector target at ``t``, when the episode has ``target_poses.npy``) and
    ``HISTORY`` / ``HISTORY_MASK``: the ``history_len`` frames ``t - history_stride * j`` (``j = history_len .. 1``,
    oldest first, masked where ``< 0``), i.e. the memory a world model would have built had it imagined the episode up to
    ``t`` at ``history_stride`` steps per frame. Starts are every ``every`` frames, strictly before the episode's first
    successful frame
    (``meta["success_steps"]``; a state after success has nothing left to learn) and at least ``margin`` actions before
    its end, so that a branch of ``margin`` actions stays within the real step budget. ``PREFIX_ACTIONS`` (the
    recorded actions ``0 .. t - 1``) let a simulator replay its way to the same state (``MetaWorldEnv.reset``), so the
    same start can be branched for real as well as in imagination (``envs.agreement.within_start_outcomes``).
    """

    def __init__(self, every: int, margin: int, history_len: int, history_stride: int, image_size: int):
        if every < 1 or margin < 0 or history_len < 0 or history_stride < 1:
            raise ValueError(f"branch_every={every} and history_stride={history_stride} must be >= 1, branch_margin="
                             f"{margin} and history_len={history_len} >= 0")  # fmt: skip
        self.every, self.margin, self.history_len, self.history_stride = every, margin, history_len, history_stride
        self.image_size = image_size
        self.episodes: list[Any] = []

    def add(self, ep: Any, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Register an episode; returns its branch prompts (``base`` plus the ``BRANCH`` reference)."""
        steps = ep.meta.get("success_steps")
        n_actions = len(ep) - 1 if steps is not None and len(steps) == len(ep) else len(ep)
        first = next((t for t, s in enumerate(steps) if s), len(ep)) if steps is not None else len(ep)
        last = min(first - 1, n_actions - self.margin)  # the first success frame is already a successful state
        idx = len(self.episodes)
        self.episodes.append(ep)
        return [{**base, BRANCH: (idx, t)} for t in range(0, last + 1, self.every)]

    def materialize(self, prompt: dict[str, Any]) -> dict[str, Any]:
        idx, t = prompt[BRANCH]
        ep = self.episodes[idx]
        hist = [t - self.history_stride * j for j in range(self.history_len, 0, -1)]
        frames = to_float_video(ep.frames[[max(h, 0) for h in hist] + [t]], self.image_size)
        out = {k: v for k, v in prompt.items() if k != BRANCH}
        out[K.COND_FRAME], out[K.FRAME_INDEX] = frames[-1], t
        out[K.HISTORY] = frames[:-1]
        out[K.HISTORY_MASK] = torch.tensor([h >= 0 for h in hist], dtype=torch.bool)
        if ep.state is not None:
            out[K.OBS_STATE] = torch.from_numpy(ep.state[t].astype(np.float32))
        out[K.PREFIX_ACTIONS] = torch.from_numpy(np.asarray(ep.actions[:t], dtype=np.float32))
        if ep.target_poses is not None:
            out[K.COND_TARGET] = torch.from_numpy(ep.target_poses[t, 0, :3].astype(np.float32))
        return out


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
        branch_every: 0: one prompt per shard episode, its first frame; ``k > 0``: a prompt every ``k`` frames of every
            shard episode, with its recorded memory (``BranchStarts``), for short imagined branches from real states.
        branch_margin: actions a branch start keeps before its episode's end.
        history_len: past frames of a branch prompt (the world model's memory length).
        history_stride: environment steps between a branch prompt's past frames (one world-model frame).
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
        branch_every: int = 0,
        branch_margin: int = 0,
        history_len: int = 0,
        history_stride: int = 1,
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
        self.branches = (
            BranchStarts(branch_every, branch_margin, history_len, history_stride, image_size)
            if branch_every > 0
            else None
        )
        self._pool_version = 0

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
        self._add_shard_prompts(h.datasets or [], self.train_prompts, self.eval_prompts)
        if not self.train_prompts:
            raise ValueError("no training prompts: check `datasets`, `tasks` and `train_seeds`")

    def _add_shard_prompts(self, datasets: list[str], train: list[dict[str, Any]], held: list[dict[str, Any]]) -> None:
        h = self.hparams
        for d in datasets:
            for ep in iter_episodes(d):
                task = str(ep.meta.get("task", ep.meta["dataset"]))
                p = {
                    K.INSTRUCTION: str(ep.meta["instruction"]),
                    K.TASK_ID: self.task_id(task),
                    K.SEED: int(ep.meta.get("seed", -1)),
                    K.TASK: task,
                }
                dest = held if is_heldout(ep.key, h.eval_fraction) else train
                if self.branches is not None:
                    dest.extend(self.branches.add(ep, p))
                    continue
                p[K.COND_FRAME] = to_float_video(ep.frames[:1], h.image_size)[0]
                if ep.state is not None:
                    p[K.OBS_STATE] = torch.from_numpy(ep.state[0].astype(np.float32))
                dest.append(p)

    @property
    def pool_version(self) -> int:
        """How many times the training prompts were replaced (``replace_train_datasets``)."""
        return self._pool_version

    def replace_train_datasets(self, datasets: list[str], pool_version: int | None = None) -> int:
        """Replace the training prompts with the (non-held-out) prompts of ``datasets``, read with the same settings
        (on-policy branch starts, ``callbacks.OnPolicyBranchStarts``). The held-out prompts stay, and the next
        ``train_dataloader`` samples the new pool with a new generator seed (that of ``pool_version`` when given, to
        restore a run's pool on resume). An empty new pool leaves the old one in place. Returns the size of the new
        pool (0 when it was empty)."""
        train: list[dict[str, Any]] = []
        self._add_shard_prompts(datasets, train, [])
        if train:
            self.train_prompts = train
            self._pool_version = self._pool_version + 1 if pool_version is None else int(pool_version)
        return len(train)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        # pool 0 keeps the run's seed; every replaced pool draws its own sequence
        gen = torch.Generator().manual_seed(h.seed + 7919 * self._pool_version)
        sampler = torch.utils.data.RandomSampler(
            self.train_prompts, replacement=True, num_samples=h.num_prompts * h.updates_per_epoch, generator=gen
        )
        return DataLoader(PromptDataset(self.train_prompts, self.branches), batch_size=h.num_prompts, sampler=sampler,
                          collate_fn=collate_clips)  # fmt: skip

    def eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The held-out prompts in a fixed order."""
        return DataLoader(PromptDataset(self.eval_prompts, self.branches),
                          batch_size=batch_size or self.hparams.num_prompts, shuffle=False,
                          collate_fn=collate_clips)  # fmt: skip

    @staticmethod
    def seeds(batch: dict[str, Any]) -> np.ndarray:
        return batch[K.SEED].cpu().numpy()
