"""Policy-gradient losses of a flow action head: FA-GRPO (+ FlowScale) and the Flow-GRPO baseline (as in the paper).

Shapes: ``N`` samples (one policy query of one rollout each), ``K`` flow steps, ``C`` chunk positions, ``D`` action
dims. Per-step log-probs ``(N, K, C, D)`` come from ``FlowMatchingPolicy.sample`` (old) and ``.log_prob`` (new).

Normalisation: the paper writes ``-E[sum_{s,c,d} M f_clip]``; here the sum over valid elements is divided by the number
of valid ``(n, c, d)`` elements (a per-element mean, as DAPO's token-level mean), so the loss scale does not depend
on the chunk size, the action dim or how many steps survived termination. ``mask`` zeroes and excludes invalid elements.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_prophrl.rl.nonfinite import NonFiniteError, masked_mean


def _to_ncd(x: Tensor | float, n: int, c: int, d: int, name: str) -> Tensor:
    """Broadcast ``(N,)``, ``(N, C)`` or ``(N, C, D)`` (or a scalar) to ``(N, C, D)`` float32."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim in (1, 2) and x.shape[0] == n:
        x = x.reshape(n, *x.shape[1:], *([1] * (3 - x.ndim)))
    try:
        return x.float().expand(n, c, d)
    except RuntimeError as err:
        raise ValueError(f"{name} of shape {tuple(x.shape)} is not broadcastable to (N, C, D)={(n, c, d)}") from err


def _step_weights(weights: Tensor, n: int, k: int) -> Tensor:
    """``(K,)`` or ``(N, K)`` FlowScale weights -> detached ``(N, K, 1, 1)``."""
    if weights.shape not in ((k,), (n, k)):
        raise ValueError(f"flowscale_weights must be (K,)={(k,)} or (N, K)={(n, k)}, got {tuple(weights.shape)}")
    return weights.detach().float().expand(n, k).reshape(n, k, 1, 1)


def _check_log_probs(log_probs: Tensor, old_log_probs: Tensor) -> tuple[int, int, int, int]:
    if log_probs.ndim != 4 or log_probs.shape != old_log_probs.shape:
        raise ValueError(
            "log_probs and old_log_probs must both be (N, K, C, D), got "
            f"{tuple(log_probs.shape)} and {tuple(old_log_probs.shape)}"
        )
    return tuple(log_probs.shape)


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """``f_clip(r, A) = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` elementwise."""
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages)


def _valid_inputs(log_probs: Tensor, old_log_probs: Tensor, adv: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Zero the masked-out log-probs and advantages (so neither their value nor their gradient is NaN) and raise
    ``NonFiniteError`` (a ``FloatingPointError``) naming the first non-finite valid element: a NaN must never reach
    the weights."""
    valid = (m > 0)[:, None].expand_as(log_probs)  # (N, K, C, D)
    for name, x in (("log_probs", log_probs), ("old_log_probs", old_log_probs)):
        bad = valid & ~torch.isfinite(x)
        if bool(bad.any()):
            n, k, c, d = (int(i) for i in bad.nonzero()[0])
            raise NonFiniteError(f"{name} is non-finite at rollout {n}, flow step {k}, action {c}, element {d} "
                                 "(a valid element: mask it out or fix the sampler's inputs)")  # fmt: skip
    bad = (m > 0) & ~torch.isfinite(adv.expand_as(m))
    if bool(bad.any()):
        n, c, d = (int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(f"advantages are non-finite at rollout {n}, action {c}, element {d} (check rewards)")
    zero = torch.zeros((), dtype=torch.float32, device=log_probs.device)
    lp = torch.where(valid, log_probs.float(), zero)
    old = torch.where(valid, old_log_probs.float().detach(), zero)
    return lp, old, torch.where(m > 0, adv.expand_as(m), zero)


def _ratio_stats(ratio: Tensor, advantages: Tensor, mask: Tensor, eps_low: float, eps_high: float) -> dict[str, Tensor]:
    """Clip fraction (elements whose gradient the clip removes), k3 approx KL(old || new) and ratio range."""
    r = ratio.detach()
    valid = mask > 0
    clipped = ((r > 1.0 + eps_high) & (advantages > 0)) | ((r < 1.0 - eps_low) & (advantages < 0))
    rv = r[valid] if bool(valid.any()) else torch.ones(1, device=r.device)
    return {
        "clip_frac": masked_mean(clipped.float(), mask),
        "approx_kl": masked_mean((r - 1.0) - torch.log(r), mask),
        "ratio_mean": rv.mean(),
        "ratio_min": rv.min(),
        "ratio_max": rv.max(),
    }


def flow_grpo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    step_weights: Tensor | None = None,
    step_reduction: Literal["sum", "mean"] = "sum",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Flow-GRPO baseline: one PPO ratio per internal flow step ``r_{n,k,c,d} = exp(lp_k - lp^old_k)``, clipped, then
    reduced over k (the paper: Flow-GRPO forms a PPO ratio for every internal step and then sums over k).

    Args:
        log_probs: ``(N, K, C, D)`` current per-step log-probs (with grad).
        old_log_probs: ``(N, K, C, D)`` behaviour-policy log-probs.
        advantages: ``(N,)``, ``(N, C)`` or ``(N, C, D)``.
        mask: optional validity mask, ``(N,)``, ``(N, C)`` or ``(N, C, D)``.
        eps_low: lower clip ``1 - eps_low`` (not given in the paper; 0.2).
        eps_high: upper clip ``1 + eps_high`` (not given in the paper; 0.28, DAPO's clip-higher).
        step_weights: optional ``(K,)`` or ``(N, K)`` weights multiplying the advantage per step (FlowScale option B).
        step_reduction: ``"sum"`` over k (gradient scale of FA-GRPO at ratio 1) or ``"mean"``.

    Returns:
        ``(loss, stats)``: scalar loss; detached ``clip_frac``, ``approx_kl``, ``ratio_mean/min/max`` over
        ``(n, k, c, d)``.
    """
    n, k, c, d = _check_log_probs(log_probs, old_log_probs)
    if step_reduction not in ("sum", "mean"):
        raise ValueError(f"step_reduction must be 'sum' or 'mean', got {step_reduction!r}")
    adv = _to_ncd(advantages, n, c, d, "advantages").to(log_probs.device)
    m = (torch.ones(n, c, d) if mask is None else _to_ncd(mask, n, c, d, "mask")).to(log_probs.device)
    lp, old, adv = _valid_inputs(log_probs, old_log_probs, adv, m)
    adv = adv[:, None]  # (N, 1, C, D)
    adv_k = adv if step_weights is None else adv * _step_weights(step_weights, n, k).to(adv.device)
    ratio = torch.exp(lp - old)  # (N, K, C, D)
    obj = clipped_surrogate(ratio, adv_k, eps_low, eps_high)
    obj = obj.sum(1) if step_reduction == "sum" else obj.mean(1)
    loss = -masked_mean(obj, m)
    return loss, _ratio_stats(ratio, adv_k.expand_as(ratio), m[:, None].expand_as(ratio), eps_low, eps_high)


def fa_grpo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    flowscale_weights: Tensor | None = None,
    flowscale_mode: Literal["rescale_grad", "per_step_adv"] = "rescale_grad",
) -> tuple[Tensor, dict[str, Tensor]]:
    """FA-GRPO: sum the K per-step log-probs per action element, one PPO ratio per ``(n, c, d)``, asymmetric clip.

        l_{n,c,d} = sum_k lp_{n,k,c,d},   r = exp(l - l_old),
        loss = -mean_valid min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)

    FlowScale (as in the paper), when ``flowscale_weights`` is given:
        * ``"rescale_grad"`` (option A, default): ``l = sum_k [w_k lp_k + (1 - w_k) sg(lp_k)]``; the value (hence the
          ratio and the clip) is unchanged, step k's gradient is scaled by ``w_k``.
        * ``"per_step_adv"`` (option B): per-step ratios with advantage ``w_k A``, summed over k
          (``flow_grpo_loss(..., step_weights=w)``).

    Args:
        log_probs: ``(N, K, C, D)`` current per-step log-probs (with grad).
        old_log_probs: ``(N, K, C, D)`` behaviour-policy log-probs (recorded at sampling or recomputed; no grad).
        advantages: ``(N,)``, ``(N, C)`` or ``(N, C, D)`` (broadcast over d and k).
        mask: optional validity mask ``M``, ``(N,)``, ``(N, C)`` or ``(N, C, D)``.
        eps_low: lower clip ``1 - eps_low`` (not given in the paper; 0.2).
        eps_high: upper clip ``1 + eps_high`` (not given in the paper; 0.28, DAPO's clip-higher).
        flowscale_weights: optional ``(K,)`` or ``(N, K)`` weights from ``flowscale_weights`` (detached here).
        flowscale_mode: how the weights enter, see above.

    Returns:
        ``(loss, stats)``: scalar loss; detached ``clip_frac``, ``approx_kl`` (k3 of old vs new), ``ratio_mean``,
        ``ratio_min``, ``ratio_max`` over valid elements.
    """
    n, k, c, d = _check_log_probs(log_probs, old_log_probs)
    if flowscale_mode not in ("rescale_grad", "per_step_adv"):
        raise ValueError(f"flowscale_mode must be 'rescale_grad' or 'per_step_adv', got {flowscale_mode!r}")
    if flowscale_weights is not None and flowscale_mode == "per_step_adv":
        return flow_grpo_loss(log_probs, old_log_probs, advantages, mask, eps_low, eps_high, flowscale_weights, "sum")
    adv = _to_ncd(advantages, n, c, d, "advantages").to(log_probs.device)
    m = (torch.ones(n, c, d) if mask is None else _to_ncd(mask, n, c, d, "mask")).to(log_probs.device)
    lp, old, adv = _valid_inputs(log_probs, old_log_probs, adv, m)
    if flowscale_weights is not None:
        w = _step_weights(flowscale_weights, n, k).to(lp.device)
        lp = w * lp + (1.0 - w) * lp.detach()
    ratio = torch.exp(lp.sum(1) - old.sum(1))  # (N, C, D)
    loss = -masked_mean(clipped_surrogate(ratio, adv, eps_low, eps_high), m)
    return loss, _ratio_stats(ratio, adv, m, eps_low, eps_high)
