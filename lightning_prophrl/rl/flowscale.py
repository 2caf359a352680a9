"""FlowScale (paper): stop-gradient per-flow-step weights from the SDE noise schedule ("normalize - mix - clip").

    w~_k = (sigma^2_k + eps)^p,    w_k = clip((1 - alpha) * w~_k / mean_j(w~_j) + alpha, w_min, w_max)

With ``p = 0.5`` the weight is proportional to the step's noise std, the variance-balancing choice: the score of a
Gaussian step scales as ``1 / sigma_k``, so low-noise (late) steps otherwise dominate the gradient.

Default choices (alpha, w_min, w_max, eps are not given in the paper). For the default sampler (K = 10, a = 0.7, uniform
grid, t clamped at 0.9) the normalized weights w~/mean span 2.13 (first steps) to 0.24 (last step), at K = 20 from
2.26 to 0.17:
    * ``alpha = 0.1``: a 10% uniform floor, so no step's weight collapses (K = 10: 2.02 ... 0.31);
    * ``w_min = 0.1``, ``w_max = 3.0``: guards that leave that schedule untouched but bound a degenerate one
      (e.g. a custom grid with a near-zero step) to at most 30x between steps;
    * ``eps = 1e-8``: only keeps ``sigma^2 = 0`` finite, far below the smallest std^2 (~1e-3 at K = 20).
"""

from __future__ import annotations

import torch
from torch import Tensor


def flowscale_weights(
    sigma2: Tensor,
    p: float = 0.5,
    alpha: float = 0.1,
    w_min: float = 0.1,
    w_max: float = 3.0,
    eps: float = 1e-8,
    mask: Tensor | None = None,
) -> Tensor:
    """FlowScale weights ``w_{s,k}`` (detached).

    Args:
        sigma2: ``(..., K)`` per-step SDE variance ``sigma^2_{s,k} = std_{s,k}^2`` (e.g. ``policy.step_sigma2()`` or
            ``SampleResult.stds ** 2``).
        p: exponent (0.5 in the paper: ``w~`` proportional to the std).
        alpha: uniform mixing weight in [0, 1].
        w_min: lower clip bound.
        w_max: upper clip bound (>= w_min).
        eps: added to ``sigma2`` before the power.
        mask: optional ``(..., K)`` or ``(K,)`` bool, the stochastic steps; the mean runs over them only and the other
            steps (whose log-prob is constant 0) get weight 0.

    Returns:
        ``(..., K)`` float32 weights, no gradient.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if w_min > w_max:
        raise ValueError(f"w_min={w_min} must be <= w_max={w_max}")
    s2 = sigma2.detach().to(torch.float32)
    if bool((s2 < 0).any()):
        raise ValueError("sigma2 must be >= 0")
    w_tilde = (s2 + eps) ** p
    m = torch.ones_like(w_tilde) if mask is None else mask.to(device=s2.device, dtype=torch.float32).expand_as(s2)
    mean = (w_tilde * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    w = ((1.0 - alpha) * w_tilde / mean + alpha).clamp(w_min, w_max)
    return w * m
