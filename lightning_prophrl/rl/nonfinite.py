"""Non-finite guards of an RL update: the error they raise, a masked mean that never reads masked-out values, and the
checks at the boundaries of an update (rollout observations, behaviour log-probs, rewards).

A NaN or inf must never reach the weights: an update fed one either stops with a ``NonFiniteError`` that names where
it came from (rollout, query step, key), or, when the caller chooses to (``FAGRPOModule(on_nonfinite="skip")``), is
skipped and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError, ValueError):
    """A NaN or inf where an RL update needs a finite value; the message names the rollout, step and key.

    A ``FloatingPointError`` and, for the callers that validated inputs with ``ValueError`` before, a ``ValueError``.
    """


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the elements where ``mask > 0`` (weighted by the mask); masked-out elements are never read.

    ``x * mask`` would turn a NaN under mask 0 into a NaN sum; ``torch.where`` selects 0 there instead, in the value
    and in the gradient.

    Args:
        x: ``(...)`` values.
        mask: ``(...)`` weights broadcastable to ``x``, 0 (or False) where ``x`` is to be ignored.

    Returns:
        Scalar ``sum(x * mask) / max(sum(mask), 1)`` over the kept elements (0 when none is kept).
    """
    m = mask.to(dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device).expand_as(x)
    kept = torch.where(m > 0, x * m, torch.zeros((), dtype=m.dtype, device=x.device))
    return kept.sum() / m.sum().clamp(min=1.0)


def first_nonfinite(x: Tensor, valid: Tensor | None = None) -> tuple[int, ...] | None:
    """Index of the first non-finite element of ``x`` among the ``valid`` ones (``valid`` broadcasts over trailing
    dims of ``x``), or None when all of them are finite."""
    bad = ~torch.isfinite(x)
    if valid is not None:
        v = valid.to(device=x.device, dtype=torch.bool)
        bad = bad & v.reshape(*v.shape, *([1] * (x.ndim - v.ndim)))
    if not bool(bad.any()):
        return None
    return tuple(int(i) for i in bad.nonzero()[0])


def check_rollouts(
    obs: Sequence[dict[str, Any]],
    log_probs: Tensor,
    alive: Tensor,
    rewards: Tensor,
) -> None:
    """Check what an update reads from its rollouts: every tensor observation and the behaviour log-probs of the
    queries made while a rollout was alive, and every trajectory reward. Queries after a rollout ended (padding the
    policy never learns from) are not read.

    Args:
        obs: per query step ``s``, the observation dict the policy saw (tensors ``(N, ...)``).
        log_probs: ``(S, N, K, C, D)`` behaviour log-probs recorded while sampling (empty: not checked).
        alive: ``(S, N)`` bool.
        rewards: ``(N,)`` trajectory rewards.

    Raises:
        NonFiniteError: naming the first offender: its key, query step ``s`` and rollout ``n`` (and the element).
    """
    for s, step_obs in enumerate(obs):
        for key, value in step_obs.items():
            if isinstance(value, Tensor) and value.is_floating_point():
                where = first_nonfinite(value, alive[s])
                if where is not None:
                    n, *rest = where
                    raise NonFiniteError(f"observation {key!r} is non-finite at rollout {n}, query step {s}"
                                         f"{f', element {tuple(rest)}' if rest else ''}: {value[where].item()} "
                                         "(the environment returned it)")  # fmt: skip
    if log_probs.numel():
        where = first_nonfinite(log_probs, alive)
        if where is not None:
            s, n, k, c, d = where
            raise NonFiniteError(f"behaviour log-prob is non-finite at rollout {n}, query step {s}, flow step {k}, "
                                 f"action {c}, element {d}: {log_probs[where].item()} (the policy's sampler produced "
                                 "it)")  # fmt: skip
    where = first_nonfinite(rewards.reshape(-1))
    if where is not None:
        raise NonFiniteError(f"non-finite reward at rollout index {where[0]}: {rewards.reshape(-1)[where].item()} "
                             "(check the reward model)")  # fmt: skip


def check_finite_scalar(value: Tensor, name: str) -> None:
    """Raise ``NonFiniteError`` naming ``name`` when the scalar ``value`` is NaN or inf."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise NonFiniteError(f"{name} is non-finite: {value.detach().float().cpu().tolist()}")
