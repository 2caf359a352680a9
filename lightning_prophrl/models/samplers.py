"""ODE and SDE samplers of a rectified-flow action head and their per-step Gaussian log-probabilities (paper: FA-GRPO).

Convention (rectified flow, as in Flow-GRPO): ``x_t = t * eps + (1 - t) * x0`` with ``eps ~ N(0, I)``, the flow time
runs from ``t = 1`` (pure noise) to ``t = 0`` (data) over ``K`` steps of a decreasing grid ``t_0 = 1 > ... > t_K = 0``,
and the network predicts the velocity ``v = eps - x0``, so that ``dx/dt = v``; a step uses
``dt = t_{k+1} - t_k < 0``.

* ODE (Euler): ``x_{k+1} = x_k + v dt``.
* SDE (Flow-GRPO): ``sigma_t = a * sqrt(t / (1 - t))`` with ``t`` clamped at ``t_clamp`` inside ``sigma_t`` (the raw
  formula is infinite at ``t = 1``), and

      mean = x_t + [v + sigma_t^2 / (2 t) * (x_t + (1 - t) v)] dt,      std = sigma_t * sqrt(|dt|),
      x_{k+1} = mean + std * noise.

  Each step is a diagonal Gaussian ``N(mean, std^2 I)``, so its log-density is available per element in closed form.
  The paper's FlowScale variance is ``sigma^2_{s,k} := std_k^2``.

Which steps are stochastic is not given in the paper (a choice of this library): ``sde_window=(start, stop)`` makes
only steps ``start <= k < stop`` stochastic (the rest are deterministic Euler steps with ``std = 0`` and log-prob
``0``); ``None`` means all steps.
All log-prob maths runs in at least float32 whatever the network's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_T_CLAMP = 0.9  # sigma_t uses min(t, 0.9): finite at t = 1
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class SampleResult:
    """Output of a policy's flow sampler.

    Attributes:
        actions: ``(B, C, D)`` the final (normalized) action chunk, ``x_steps[:, -1]``.
        x_steps: ``(B, K + 1, C, D)`` float32 states of the sampler, ``x_steps[:, 0]`` is the initial noise.
        means: ``(B, K, C, D)`` float32 mean of each transition (for the ODE: the deterministic next state).
        stds: ``(B, K)`` float32 standard deviation of each transition (0 for deterministic steps).
        log_probs: ``(B, K, C, D)`` float32 per-step, per-element log-density of ``x_steps[:, k + 1]``; ``None`` for
            the ODE sampler.
    """

    actions: Tensor
    x_steps: Tensor
    means: Tensor
    stds: Tensor
    log_probs: Tensor | None


def time_grid(num_steps: int, grid: Sequence[float] | Tensor | None = None) -> Tensor:
    """The flow-time grid ``t_0 > t_1 > ... > t_K``.

    Args:
        num_steps: number of steps ``K`` (>= 1).
        grid: optional explicit grid of ``K + 1`` strictly decreasing times in ``[0, 1]``; default
            ``linspace(1, 0, K + 1)``.

    Returns:
        ``(K + 1,)`` float64 tensor (cast by the callers).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if grid is None:
        return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    g = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if g.numel() != num_steps + 1:
        raise ValueError(f"grid must have num_steps + 1 = {num_steps + 1} entries, got {g.numel()}")
    if not bool((g[1:] < g[:-1]).all()) or g[0] > 1.0 or g[-1] < 0.0 or g[0] <= 0.0:
        raise ValueError(f"grid must be strictly decreasing inside [0, 1] and start above 0, got {g.tolist()}")
    return g


def stochastic_step_mask(num_steps: int, sde_window: tuple[int, int] | None = None) -> Tensor:
    """Which of the ``K`` steps are stochastic.

    Args:
        num_steps: ``K``.
        sde_window: ``(start, stop)``: steps ``start <= k < stop`` are stochastic; ``None``: all steps.

    Returns:
        ``(K,)`` bool tensor.
    """
    mask = torch.ones(num_steps, dtype=torch.bool)
    if sde_window is not None:
        start, stop = sde_window
        if not 0 <= start < stop <= num_steps:
            raise ValueError(f"sde_window must satisfy 0 <= start < stop <= num_steps={num_steps}, got {sde_window}")
        mask[:] = False
        mask[start:stop] = True
    return mask


def sde_sigma(t: Tensor, noise_level: float | Tensor, t_clamp: float = DEFAULT_T_CLAMP) -> Tensor:
    """Flow-GRPO diffusion coefficient ``sigma_t = a * sqrt(t' / (1 - t'))`` with ``t' = min(t, t_clamp)``.

    Args:
        t: flow times, any shape.
        noise_level: ``a`` (>= 0), a float or a tensor broadcastable to ``t`` (e.g. 0 on deterministic steps).
        t_clamp: clamp of ``t`` inside the square root, in ``(0, 1)``; avoids the singularity at ``t = 1``.

    Returns:
        ``sigma_t`` with the broadcast shape of ``t`` and ``noise_level``.
    """
    if not 0.0 < t_clamp < 1.0:
        raise ValueError(f"t_clamp must lie in (0, 1), got {t_clamp}")
    if bool((torch.as_tensor(noise_level) < 0).any()):
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    tc = t.clamp(max=t_clamp)
    return noise_level * torch.sqrt(tc / (1.0 - tc))


def step_noise_schedule(
    grid: Tensor,
    noise_level: float,
    t_clamp: float = DEFAULT_T_CLAMP,
    sde_window: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-step standard deviation and variance of the SDE sampler (what FlowScale needs as ``sigma^2_{s,k}``).

    Args:
        grid: ``(K + 1,)`` decreasing flow times (see ``time_grid``).
        noise_level: ``a``.
        t_clamp: see ``sde_sigma``.
        sde_window: see ``stochastic_step_mask``.

    Returns:
        ``(std, sigma2)``, each ``(K,)`` float32, ``std_k = sigma_{t_k} sqrt(|dt_k|)`` (0 on deterministic steps),
        ``sigma2 = std ** 2``.
    """
    grid = grid.to(torch.float64)
    k = grid.numel() - 1
    std = sde_sigma(grid[:-1], noise_level, t_clamp) * torch.sqrt((grid[:-1] - grid[1:]).abs())
    std = torch.where(stochastic_step_mask(k, sde_window), std, torch.zeros_like(std)).to(torch.float32)
    return std, std**2


def _per_row(t: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample ``(N,)`` time against ``like`` ``(N, ...)`` in float32 or wider."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    t = torch.as_tensor(t, dtype=dtype, device=like.device)
    if t.ndim == 1:
        t = t.reshape(-1, *([1] * (like.ndim - 1)))
    return t


def ode_step(x: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """One Euler step of the flow ODE ``dx/dt = v``.

    Args:
        x: ``(N, ...)`` current state at time ``t``.
        v: ``(N, ...)`` predicted velocity ``eps - x0``.
        t: scalar or ``(N,)`` current time.
        t_next: scalar or ``(N,)`` next time (``< t``).

    Returns:
        ``(N, ...)`` float32 (or wider) next state ``x + v (t_next - t)``.
    """
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    return x32 + v.to(x32.dtype) * (_per_row(t_next, x32) - _per_row(t, x32))


def sde_step_mean_std(
    x: Tensor,
    v: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    noise_level: float | Tensor,
    t_clamp: float = DEFAULT_T_CLAMP,
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of one Flow-GRPO SDE transition.

    With ``noise_level = 0`` the transition is the deterministic Euler step (``mean = x + v dt``, ``std = 0``).

    Args:
        x: ``(N, ...)`` current state ``x_t``.
        v: ``(N, ...)`` predicted velocity at ``(x_t, t)``.
        t: scalar or ``(N,)`` current time (> 0).
        t_next: scalar or ``(N,)`` next time (< t).
        noise_level: ``a``, a float or a per-row ``(N,)`` tensor.
        t_clamp: see ``sde_sigma``.

    Returns:
        ``mean`` ``(N, ...)`` and ``std`` broadcastable to it (``(N, 1, ...)`` or scalar-shaped), both float32+.
    """
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    v32 = v.to(x32.dtype)
    tt, tn = _per_row(t, x32), _per_row(t_next, x32)
    dt = tn - tt
    sigma = sde_sigma(tt, _per_row(noise_level, x32), t_clamp)
    mean = x32 + (v32 + sigma**2 / (2.0 * tt) * (x32 + (1.0 - tt) * v32)) * dt
    return mean, sigma * torch.sqrt(dt.abs())


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Per-element log-density of a diagonal Gaussian, in float32 (or wider).

    Args:
        x: ``(N, ...)`` sample.
        mean: ``(N, ...)`` mean.
        std: broadcastable to ``x``, > 0.

    Returns:
        ``(N, ...)`` ``-(x - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)``.
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, mean.dtype), torch.float32)
    x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
    return -((x - mean) ** 2) / (2.0 * std**2) - torch.log(std) - _LOG_SQRT_2PI


def sde_step(
    x: Tensor,
    v: Tensor,
    t: Tensor | float,
    t_next: Tensor | float,
    noise_level: float,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    t_clamp: float = DEFAULT_T_CLAMP,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One stochastic Flow-GRPO step ``x_next = mean + std * noise`` and its log-density.

    Args:
        x: ``(N, ...)`` current state.
        v: ``(N, ...)`` velocity.
        t: scalar or ``(N,)`` current time.
        t_next: scalar or ``(N,)`` next time.
        noise_level: ``a`` (> 0 for a proper density).
        noise: optional ``(N, ...)`` standard normal noise; drawn from ``generator`` if ``None``.
        generator: optional ``torch.Generator`` for the noise.
        t_clamp: see ``sde_sigma``.

    Returns:
        ``(x_next, mean, std, log_prob)``; ``x_next``, ``mean`` and ``log_prob`` are ``(N, ...)`` float32+,
        ``std`` broadcastable to them.
    """
    mean, std = sde_step_mean_std(x, v, t, t_next, noise_level, t_clamp)
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    x_next = mean + std * noise.to(mean.dtype)
    return x_next, mean, std, gaussian_log_prob(x_next, mean, std)
