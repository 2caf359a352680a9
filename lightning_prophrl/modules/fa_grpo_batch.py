"""What one FA-GRPO update works on: the prompts of a training batch, the policy queries of its rollouts, and the
outcome of the update's rollouts on every process (``GlobalRollouts``), from which the minibatches, the skip decision
and the ``rollout/*`` metrics are computed identically on any number of processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_prophrl import constants as K
from lightning_prophrl.envs.rollout import RolloutBatch
from lightning_prophrl.rl import group_advantages


def prompts_from_batch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a collated prompt batch back into one dict per prompt."""
    n = len(batch[K.INSTRUCTION])
    return [{k: (v[i] if not isinstance(v, torch.Tensor) else v[i].cpu()) for k, v in batch.items()} for i in range(n)]


def agreement_logs(info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``rollout/draws_agree``: the share of rollouts whose world-model noise draws agree on success (present when the
    environment imagines several draws, ``WorldModelEnv(draws=D)``)."""
    agree = info.get(K.INFO_DRAWS_AGREE)
    return {} if agree is None else {"rollout/draws_agree": torch.as_tensor(agree, dtype=torch.float32).mean()}


def flatten_queries(r: RolloutBatch, adv: torch.Tensor) -> dict[str, Any]:
    """The ``M`` (step, rollout) queries made while the rollout was alive, in step-major order (``alive.nonzero()``).

    Args:
        r: the rollouts of ``N`` environments over ``S`` query steps.
        adv: ``(N,)`` advantages.

    Returns:
        ``obs`` (tensors ``(M, ...)``, lists of ``M``), ``x_steps`` ``(M, K + 1, C, D)``, ``sampled_log_probs``
        ``(M, K, C, D)`` and ``adv`` ``(M,)``.
    """
    s_idx, n_idx = r.alive.nonzero(as_tuple=True)
    obs: dict[str, Any] = {}
    for key in r.obs[0]:
        vals = [r.obs[s][key] for s in range(len(r.obs))]
        if isinstance(vals[0], torch.Tensor):
            obs[key] = torch.stack(vals)[s_idx, n_idx]
        else:
            obs[key] = [vals[s][n] for s, n in zip(s_idx.tolist(), n_idx.tolist())]
    return {
        "obs": obs,
        "x_steps": r.x_steps[s_idx, n_idx],
        "sampled_log_probs": r.log_probs[s_idx, n_idx],
        "adv": adv[n_idx],
    }


def take_queries(obs: dict[str, Any], idx: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The observations of the queries ``idx`` ``(B,)``, tensors moved to ``device``."""
    il = idx.tolist()
    return {k: (v[idx].to(device) if isinstance(v, torch.Tensor) else [v[i] for i in il]) for k, v in obs.items()}


@dataclass
class GlobalRollouts:
    """The outcome of one update's rollouts on every process, process 0's rollouts first (the order of the update's
    prompts, ``PromptSampler``).

    Attributes:
        alive: ``(S, W * N)`` bool, whether each rollout was running at each query step (``S``: the longest).
        rewards: ``(W * N,)`` float trajectory rewards.
        success: ``(W * N,)`` float environment success.
        steps: ``(W * N,)`` long environment steps.
        rank: this process.
        rollouts_per_rank: ``N``.
    """

    alive: torch.Tensor
    rewards: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    rank: int
    rollouts_per_rank: int

    def advantages(self, group_size: int) -> torch.Tensor:
        """``(W * N,)`` group advantages of every rollout (groups never straddle processes)."""
        return group_advantages(self.rewards, group_size)

    def logs(self, group_size: int) -> dict[str, torch.Tensor]:
        """The ``rollout/*`` statistics of the whole update (the same on every process)."""
        zero_var = (self.rewards.view(-1, group_size).std(1) == 0).float().mean()
        return {
            "rollout/reward_mean": self.rewards.mean(),
            "rollout/success_rate": self.success.mean(),
            "rollout/zero_var_groups": zero_var,
            "rollout/episode_steps": self.steps.float().mean(),
            "rollout/queries": torch.tensor(float(self.alive.sum())),
        }


def gather_rollouts(
    r: RolloutBatch,
    max_queries: int,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GlobalRollouts:
    """Every process's alive mask, rewards, success and steps, with one all-gather of ``max_queries * N + 3 N``
    numbers per process.

    Args:
        r: this process's rollouts (``N`` of them, at most ``max_queries`` query steps).
        max_queries: the query budget per episode (pads every process's alive mask to the same shape).
        rank, world_size: this process and the number of processes.
        all_gather: ``(L,) -> (W, L)``, e.g. the strategy's ``all_gather`` (on the module's device); needed when
            ``world_size > 1``.
    """
    s, n = r.alive.shape
    if world_size == 1:
        return GlobalRollouts(r.alive.bool(), r.rewards.float(), r.success.float(), r.steps.long(), 0, n)
    if all_gather is None:
        raise ValueError("gather_rollouts needs all_gather on more than one process")
    alive = torch.zeros(max_queries, n, dtype=torch.float64)
    alive[:s] = r.alive.double()
    packed = torch.cat([alive.view(-1), r.rewards.double(), r.success.double(), r.steps.double()])
    every = all_gather(packed).cpu().view(world_size, -1)
    q = max_queries * n
    alive_all = every[:, :q].view(world_size, max_queries, n).permute(1, 0, 2).reshape(max_queries, world_size * n)
    alive_all = alive_all.bool()
    rows = int(alive_all.any(1).nonzero().max()) + 1  # every rollout is alive at step 0
    rewards, success, steps = (every[:, q + i * n : q + (i + 1) * n].reshape(-1) for i in range(3))
    return GlobalRollouts(alive_all[:rows], rewards.float(), success.float(), steps.long(), rank, n)
