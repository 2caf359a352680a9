"""KL estimators between the current policy and the reference (SFT) policy (paper: FA-GRPO,
``beta * KL(pi_theta || pi_ref)``; the estimator is not given in the paper, both usual choices are here)."""

from __future__ import annotations

import torch
from torch import Tensor


def kl_k3(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Schulman's k3 estimator of ``KL(p || q)`` per element, for samples drawn from ``p``.

    ``k3 = (q/p - 1) - log(q/p)`` is unbiased, non-negative and low-variance. For ``KL(pi_theta || pi_ref)`` pass
    ``log_p`` = current log-probs (with grad) and ``log_q`` = reference log-probs of the same actions, e.g. summed
    over the K flow steps ``(N, C, D)``.

    Args:
        log_p: ``(...)`` log-density under ``p``.
        log_q: ``(...)`` log-density under ``q``, same shape.

    Returns:
        ``(...)`` per-element estimate (>= 0).
    """
    log_ratio = (log_q - log_p).float()
    return torch.expm1(log_ratio) - log_ratio


def gaussian_mean_kl(mean_p: Tensor, mean_q: Tensor, std: Tensor) -> Tensor:
    """Closed-form KL between two diagonal Gaussian flow steps with the same std: ``(mean_p - mean_q)^2 / (2 std^2)``.

    Both policies share the SDE schedule, so each step's std is equal and the KL depends only on the means
    (``policy.log_prob(..., return_means=True)``). Deterministic steps (``std == 0``) contribute 0.

    Args:
        mean_p: ``(B, K, C, D)`` step means of ``p``.
        mean_q: ``(B, K, C, D)`` step means of ``q``.
        std: ``(B, K)``, ``(K,)`` or broadcastable to the means.

    Returns:
        ``(B, K, C, D)`` per-step, per-element KL.
    """
    std = std.float()
    if std.ndim in (1, 2):
        std = std.reshape(*std.shape, 1, 1)
    stochastic = std > 0
    safe = torch.where(stochastic, std, torch.ones_like(std))
    kl = (mean_p.float() - mean_q.float()) ** 2 / (2.0 * safe**2)
    return torch.where(stochastic, kl, torch.zeros_like(kl))
