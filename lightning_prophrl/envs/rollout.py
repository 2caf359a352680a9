"""Closed-loop rollouts of a flow-matching policy in any ``BatchedEnv`` and the action decoding they need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats, NormMode, unified_to_metaworld


class ActionDecoder:
    """Policy output (normalized, ``action_dims`` of the unified space) -> what an environment executes.

    Args:
        stats: the statistics that normalized the policy's training actions (``stats.json`` content or object).
        action_dims: the unified dims the policy models.
        target: ``"metaworld"`` (raw 4-D Meta-World actions) or ``"unified"`` (raw 14-D unified actions).
        norm_mode: the normalization used for training.
    """

    def __init__(
        self,
        stats: ActionStats | dict,
        action_dims: Sequence[int],
        target: str = "metaworld",
        norm_mode: NormMode = "quantile",
    ):
        self.stats = stats if isinstance(stats, ActionStats) else ActionStats.from_dict(stats)
        self.action_dims, self.target, self.norm_mode = list(action_dims), target, norm_mode
        if target not in ("metaworld", "unified"):
            raise ValueError(f"target must be 'metaworld' or 'unified', got {target!r}")

    def to_unified(self, actions: torch.Tensor) -> np.ndarray:
        """``(..., D)`` normalized policy actions -> ``(..., 14)`` raw unified actions."""
        a = actions.detach().float().cpu().numpy()
        full = np.zeros(a.shape[:-1] + (K.ACTION_DIM,), dtype=np.float32)
        full[..., self.action_dims] = a
        return self.stats.unnormalize(full, self.norm_mode)

    def __call__(self, actions: torch.Tensor) -> np.ndarray:
        raw = self.to_unified(actions)
        return unified_to_metaworld(raw) if self.target == "metaworld" else raw


@dataclass
class RolloutBatch:
    """Everything an RL update needs from ``N = P * G`` rollouts of ``S`` policy queries.

    Attributes:
        obs: per query step, the observation dict the policy saw (tensors ``(N, ...)``).
        x_steps: ``(S, N, K + 1, C, D)`` SDE trajectories of the action head.
        log_probs: ``(S, N, K, C, D)`` behaviour log-probs recorded while sampling.
        alive: ``(S, N)`` bool, whether rollout n was still running when queried at step s.
        rewards: ``(N,)`` trajectory rewards.
        success: ``(N,)`` environment success (ground truth for simulators, imagined for world models).
        steps: ``(N,)`` environment steps taken.
        videos: ``(N, T, 3, H, W)`` float in [-1, 1] episode videos (chunk-boundary frames), or None.
        info: extra per-rollout information from the environment's last step (keys ``K.INFO_*``; without
            ``INFO_SUCCESS`` and ``INFO_STEPS``, which are ``success`` and ``steps``), plus ``INFO_VIDEO_LENGTHS``
            ``(N,)`` when the environment has ``video_lengths()``.
    """

    obs: list[dict[str, Any]]
    x_steps: torch.Tensor
    log_probs: torch.Tensor
    alive: torch.Tensor
    rewards: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    videos: torch.Tensor | None
    info: dict[str, Any]


def _obs_to_device(obs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in obs.items()}


@torch.no_grad()
def collect_rollouts(
    policy: Any,
    env: Any,
    prompts: list[Any],
    decoder: Callable[[torch.Tensor], np.ndarray],
    max_queries: int,
    mode: str = "sde",
    noise_level: float | None = None,
    generator: torch.Generator | None = None,
    reward_fn: Callable[[RolloutBatch], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> RolloutBatch:
    """Run the policy closed-loop until every rollout is done or ``max_queries`` chunks were executed.

    Each query samples a chunk of C actions and executes its first ``policy.exec_horizon``; rollouts that finished
    keep being padded (their actions are ignored by the env and masked out by ``alive``).

    Args:
        policy: ``FlowMatchingPolicy`` (``sample``, ``exec_horizon``).
        env: a ``BatchedEnv``; ``reset(prompts)`` returns the first observation of ``env.num_envs`` rollouts.
        prompts: the P prompts (the env repeats each one G times).
        decoder: maps normalized policy actions ``(N, h, D)`` to env actions.
        max_queries: policy queries per episode (horizon in chunks).
        mode: ``"sde"`` for RL (records log-probs), ``"ode"`` for evaluation.
        noise_level: SDE noise level (default the policy's).
        generator: seeds the sampler noise.
        reward_fn: trajectory reward from the batch (default: the env's success as 0/1).
        device: where the policy runs.
    """
    obs = env.reset(prompts)
    n = env.num_envs
    alive = torch.ones(n, dtype=torch.bool)
    all_obs, xs, lps, alives = [], [], [], []
    h = policy.exec_horizon
    for _ in range(max_queries):
        if not alive.any():
            break
        dev_obs = _obs_to_device(obs, torch.device(device))
        res = policy.sample(dev_obs, mode=mode, noise_level=noise_level, generator=generator)
        all_obs.append({k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in obs.items()})
        xs.append(res.x_steps.cpu())
        lps.append(res.log_probs.cpu() if res.log_probs is not None else torch.zeros(0))
        alives.append(alive.clone())
        obs, done, info = env.step(decoder(res.actions[:, :h]))
        alive = alive & ~torch.as_tensor(np.asarray(done), dtype=torch.bool)
    info = dict(info)
    success = torch.as_tensor(np.asarray(info.pop(K.INFO_SUCCESS)), dtype=torch.float32)
    steps = torch.as_tensor(np.asarray(info.pop(K.INFO_STEPS, np.zeros(n))), dtype=torch.long)
    video = env.video() if hasattr(env, "video") else None
    if hasattr(env, "video_lengths"):
        info[K.INFO_VIDEO_LENGTHS] = env.video_lengths()
    batch = RolloutBatch(
        obs=all_obs,
        x_steps=torch.stack(xs),
        log_probs=torch.stack(lps) if mode == "sde" else torch.zeros(0),
        alive=torch.stack(alives),
        rewards=success.clone(),
        success=success,
        steps=steps,
        videos=None if video is None else torch.as_tensor(np.asarray(video)),
        info=info,
    )
    if reward_fn is not None:
        batch.rewards = torch.as_tensor(reward_fn(batch), dtype=torch.float32).reshape(n)
    return batch
