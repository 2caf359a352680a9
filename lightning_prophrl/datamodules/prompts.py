"""Prompts for RL: initial states (frame + instruction + task + simulator seed), with a held-out evaluation split,
sampled per RL update so that a resumed run and a run on any number of processes see the same prompts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from typing_extensions import override

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


def update_prompt_indices(num_items: int, num_prompts: int, seed: int, pool_version: int, update: int) -> np.ndarray:
    """The ``num_prompts`` prompt indices of RL update ``update`` (0-based over the whole run), drawn with replacement
    from ``range(num_items)`` by a generator seeded with ``(seed, pool_version, update)`` alone: the prompts of an
    update do not depend on how many updates ran in this process, on the epoch, or on the number of processes."""
    rng = np.random.default_rng([seed % 2**64, pool_version, update])
    return rng.integers(0, num_items, size=num_prompts)


class PromptSampler(DistributedSampler):
    """This process's share of each RL update's prompts, for the updates of one epoch from the datamodule's position.

    Update ``u`` draws ``num_prompts`` prompts (``update_prompt_indices``); process ``rank`` of ``world_size`` takes
    the ``num_prompts / world_size`` consecutive ones from ``rank * num_prompts / world_size``. A prompt is one group
    of G rollouts (the environment repeats it), so groups are never split across processes, the processes' shares are
    disjoint and together make the update's prompts, and an epoch has ``updates`` batches on any number of processes.

    Epochs are aligned on the update index: with ``n`` updates per epoch (``epoch_length()``), epoch ``e`` trains
    updates ``e * n .. e * n + n - 1``, and a pass starting at position ``p`` yields the updates left in ``p``'s epoch.
    So a run resumed in the middle of an epoch finishes that epoch where the uninterrupted run would have.

    A ``DistributedSampler`` subclass only so that Lightning keeps it under DDP (Lightning replaces any other sampler
    with a ``DistributedSampler`` over all the prompts, which changes the number of updates per epoch).

    Args:
        num_items: number of training prompts.
        num_prompts: prompts per update over all processes.
        updates: updates per epoch (the sampler's length).
        seed, pool_version: the generator's seed (see ``update_prompt_indices``).
        rank, world_size: this process and the number of processes.
        position: returns the index of the next update when a pass starts (read at each ``iter``).
        on_update: called with ``u + 1`` when update ``u``'s indices start being drawn.
        epoch_length: returns the updates per epoch when a pass starts (default ``updates``; fewer when the trainer
            runs fewer batches per epoch, ``limit_train_batches``).
    """

    def __init__(self, num_items: int, num_prompts: int, updates: int, seed: int, pool_version: int, rank: int,
                 world_size: int, position: Callable[[], int], on_update: Callable[[int], None] | None = None,
                 epoch_length: Callable[[], int] | None = None):  # fmt: skip
        if num_items < 1 or updates < 1:
            raise ValueError(f"PromptSampler needs prompts and updates, got {num_items} prompts, {updates} updates")
        check_prompt_share(num_prompts, world_size)
        super().__init__(range(num_items), num_replicas=world_size, rank=rank, shuffle=False, seed=seed)
        self.num_items, self.num_prompts, self.updates = num_items, num_prompts, updates
        self.pool_version = pool_version
        self.per_rank = num_prompts // world_size
        self.position, self.on_update = position, on_update
        self.epoch_length = epoch_length or (lambda: updates)

    @override
    def __iter__(self) -> Iterator[int]:
        first, n = int(self.position()), max(1, min(int(self.epoch_length()), self.updates))
        lo = self.rank * self.per_rank
        for u in range(first, (first // n + 1) * n):
            if self.on_update is not None:
                self.on_update(u + 1)
            idx = update_prompt_indices(self.num_items, self.num_prompts, self.seed, self.pool_version, u)
            yield from (int(i) for i in idx[lo : lo + self.per_rank])

    @override
    def __len__(self) -> int:
        return self.updates * self.per_rank


def check_prompt_share(num_prompts: int, world_size: int) -> int:
    """Prompts per process: ``num_prompts`` must split into ``world_size`` equal, whole shares."""
    if num_prompts < 1 or num_prompts % world_size:
        raise ValueError(f"data.init_args.num_prompts={num_prompts} does not split into {world_size} equal shares "
                         f"(one per process, whole groups): use a multiple of {world_size}")  # fmt: skip
    return num_prompts // world_size


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
    same start can be branched for real as well as in imagination (``envs.branches.within_start_outcomes``).
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

    Each RL update takes ``num_prompts`` prompts (P in P x G rollouts), drawn with replacement by a generator seeded
    with ``(seed, pool version, update index)`` (``update_prompt_indices``). The datamodule counts the updates whose
    prompts reached training (``position``) and keeps that count and the seed in its ``state_dict``, which Lightning
    saves in checkpoints: a run resumed with ``ckpt_path`` at any update sees the same prompts from there on as the
    uninterrupted run (epoch ``e`` trains updates ``e * updates_per_epoch ..``, so a run resumed mid-epoch finishes
    that epoch), and the next epoch continues the sequence. Under DDP each process takes a disjoint share of
    every update's prompts (whole groups; ``num_prompts`` must be a multiple of the number of processes), so an epoch
    is ``updates_per_epoch`` updates of ``num_prompts`` prompts on any number of processes (``PromptSampler``); the
    environment of each process takes ``prompts_per_rank`` prompts. Without a trainer (a loader iterated by hand),
    the position advances as batches are drawn.

    Args:
        datasets: shard directories whose episodes' first frames become prompts.
        tasks: simulator task names for seed prompts (e.g. ``["pick-place-v3"]``).
        instructions: instruction per task for seed prompts (defaults to ``envs.instructions.instruction_for``).
        train_seeds: ``[start, stop)`` simulator seeds for training prompts.
        eval_seeds: ``[start, stop)`` simulator seeds held out for evaluation (disjoint from ``train_seeds``).
        eval_fraction: fraction of shard episodes held out for evaluation (by key hash).
        num_prompts: prompts per RL update (P), over all processes.
        image_size: frame size of shard prompts.
        updates_per_epoch: batches (RL updates) per training epoch, on any number of processes.
        seed: seeds the prompt sampling (restored from a checkpoint's ``state_dict`` when resuming).
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
        self._position = 0  # RL updates whose prompts reached training, in the checkpoint (``state_dict``)
        self._seed = seed

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
        ``train_dataloader`` draws update ``u``'s prompts from the new pool with ``(seed, pool_version, u)``
        (``pool_version`` given: that version, to restore a run's pool on resume); the update position carries on. An
        empty new pool leaves the old one in place. Returns the size of the new pool (0 when it was empty)."""
        train: list[dict[str, Any]] = []
        self._add_shard_prompts(datasets, train, [])
        if train:
            self.train_prompts = train
            self._pool_version = self._pool_version + 1 if pool_version is None else int(pool_version)
        return len(train)

    @property
    def position(self) -> int:
        """Index of the next RL update whose prompts the training loader yields (updates consumed so far)."""
        return self._position

    @property
    def prompts_per_rank(self) -> int:
        """Prompts of each update this process trains on (``num_prompts`` / number of processes)."""
        return check_prompt_share(self.hparams.num_prompts, self._rank_and_world()[1])

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return int(self.trainer.global_rank), int(self.trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _epoch_length(self) -> int:
        """Updates per epoch: ``updates_per_epoch``, or the trainer's batches per epoch when it runs fewer."""
        n = getattr(self.trainer, "num_training_batches", None)
        return n if isinstance(n, int) and n > 0 else self.hparams.updates_per_epoch

    def _drawn(self, position: int) -> None:
        """Without a trainer the position advances as the loader draws batches (with one, as training gets them)."""
        if self.trainer is None:
            self._position = position

    @override
    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        rank, world = self._rank_and_world()
        sampler = PromptSampler(len(self.train_prompts), h.num_prompts, h.updates_per_epoch, self._seed,
                                self._pool_version, rank, world, lambda: self._position, self._drawn,
                                self._epoch_length)  # fmt: skip
        return DataLoader(PromptDataset(self.train_prompts, self.branches), batch_size=sampler.per_rank,
                          sampler=sampler, collate_fn=collate_clips)  # fmt: skip

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch reached the training step: one more update's prompts consumed (the loader's prefetched
        batch is not counted, so a checkpoint saved after update ``k`` resumes at ``k + 1``)."""
        if self.trainer is not None and self.trainer.training:
            self._position += 1
        return batch

    @override
    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: the next update's index and the seed (the pool is restored by whoever replaced it,
        ``callbacks.OnPolicyBranchStarts``)."""
        return {"position": self._position, "seed": self._seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._position, self._seed = int(state_dict["position"]), int(state_dict["seed"])

    def eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """The held-out prompts in a fixed order."""
        return DataLoader(PromptDataset(self.eval_prompts, self.branches),
                          batch_size=batch_size or self.hparams.num_prompts, shuffle=False,
                          collate_fn=collate_clips)  # fmt: skip

    @staticmethod
    def seeds(batch: dict[str, Any]) -> np.ndarray:
        return batch[K.SEED].cpu().numpy()
