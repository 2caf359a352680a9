"""GRPO group-relative advantages: ``A_i = (R_i - mean_G) / (std_G + eps_R)``, broadcast over chunks."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_prophrl.rl.nonfinite import NonFiniteError


def group_advantages(
    rewards: Tensor,
    group_size: int,
    eps: float = 1e-6,
    mask: Tensor | None = None,
) -> Tensor:
    """Normalize trajectory rewards within each group of ``G`` rollouts from the same start, broadcast over steps.

    Rollout ``i`` belongs to group ``i // G`` (rollouts of one group are contiguous). The group standard deviation is
    the population one (``correction=0``), so a group's normalized rewards have unit variance when ``eps = 0``. A
    group whose rewards are all equal carries no learning signal and gets exactly zero advantage.

    Args:
        rewards: ``(P * G,)`` or ``(P, G)`` scalar trajectory rewards ``R_i``.
        group_size: ``G`` (>= 1).
        eps: ``eps_R`` added to the group std (not given in the paper; 1e-6).
        mask: optional ``(N, ...)`` validity mask ``M`` of the rollouts' steps/chunks, e.g. ``(N, S, C)``, with
            ``N = P * G``; 0/False after early termination.

    Returns:
        ``(N,)`` normalized rewards ``R~_i`` if ``mask`` is None, else ``R~_i * M`` with the mask's shape (float32).

    Raises:
        NonFiniteError: non-finite rewards, naming the rollout indices (a ``ValueError``).
        ValueError: shapes that do not match ``group_size``.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    r = rewards.detach().to(torch.float32)
    if r.ndim == 2 and r.shape[1] != group_size:
        raise ValueError(f"rewards of shape (P, G)={tuple(r.shape)} do not match group_size={group_size}")
    r = r.reshape(-1)
    if r.ndim != 1 or r.numel() % group_size:
        raise ValueError(
            f"rewards must be (P * G,) or (P, G) with G = group_size={group_size}, got {tuple(rewards.shape)}"
        )
    bad = (~torch.isfinite(r)).nonzero().flatten().tolist()
    if bad:
        where = ", ".join(f"{i} (group {i // group_size}, member {i % group_size})" for i in bad[:10])
        raise NonFiniteError(f"non-finite reward at rollout index {where}: {[r[i].item() for i in bad[:10]]}")
    groups = r.view(-1, group_size)
    centered = groups - groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, correction=0, keepdim=True)
    constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    adv = torch.where(constant, torch.zeros_like(groups), centered / (std + eps)).reshape(-1)
    if mask is None:
        return adv
    if mask.shape[0] != adv.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} rollouts but rewards have {adv.shape[0]}")
    m = mask.to(device=adv.device, dtype=adv.dtype)
    return adv.view(-1, *([1] * (m.ndim - 1))) * m
