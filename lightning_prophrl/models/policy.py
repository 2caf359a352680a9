"""Flow-matching VLA policy: an observation backbone + a small transformer flow action head (paper: policies, FA-GRPO).

The policy works on *normalized* action chunks ``(B, C, D)`` (C = ``chunk_len``, D = ``action_dim``); mapping to and
from robot actions is the caller's job (``lightning_prophrl.actions``). Flow convention and samplers:
``lightning_prophrl.models.samplers``. API (LeRobot-like): ``forward(batch) -> (loss, logs)``,
``predict_action_chunk``, ``select_action``, ``reset``; for RL: ``sample`` (ODE or SDE, records per-step log-probs)
and ``log_prob`` (all K steps recomputed in one batched forward).

A policy is self-describing: ``save_pretrained(dir)`` writes ``config.json`` (every constructor argument plus
``policy_meta``: the unified action dims it models and the normalization mode), ``model.safetensors`` and, when
action statistics are attached (``set_action_stats``), ``stats.json``; ``FlowMatchingPolicy.from_pretrained(dir)``
rebuilds it, so a consumer can decode its actions (``predict_raw_action_chunk``) without the training checkpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_prophrl.actions import ActionStats, NormMode
from lightning_prophrl.constants import ACTION_DIM, ACTION_MASK, ACTIONS
from lightning_prophrl.models.encoders import ObservationEncoder, PolicyBackbone
from lightning_prophrl.models.flow_head import FlowActionHead, timestep_embedding  # noqa: F401 (re-exported)
from lightning_prophrl.models.policy_io import POLICY_WEIGHTS_FILE, PretrainedPolicyMixin, load_policy_meta  # noqa: F401
from lightning_prophrl.models.samplers import (
    DEFAULT_T_CLAMP,
    SampleResult,
    gaussian_log_prob,
    sde_step_mean_std,
    step_noise_schedule,
    stochastic_step_mask,
    time_grid,
)


class FlowMatchingPolicy(PretrainedPolicyMixin, nn.Module):
    """Flow-matching VLA: ``PolicyBackbone`` (observation -> tokens) + ``FlowActionHead``.

    Every sampling method (``sample``, ``predict_action_chunk``, ``select_action``) returns *normalized* actions of
    the ``action_dim`` modelled unified dims. With action statistics attached (``set_action_stats``, or loaded by
    ``from_pretrained``), ``predict_raw_action_chunk`` / ``unnormalize_actions`` return raw 14-D unified actions.

    Args:
        action_dim: D, size of one (normalized) action.
        chunk_len: C, actions predicted per query.
        exec_horizon: actions of a chunk executed by ``select_action`` before re-planning (default ``chunk_len``).
        state_dim: proprioception size for the default backbone (0: none).
        instructions: instruction vocabulary for ``text_encoder="embedding"``.
        image_encoder: default backbone's image encoder, ``"cnn"`` (trainable) or ``"efficientnet"`` (frozen).
        text_encoder: ``"embedding"``, ``"minilm"`` (frozen) or ``"none"``.
        unknown_instruction: ``"error"`` (default) or ``"unk"``, see ``EmbeddingInstructionEncoder``.
        backbone: a custom ``PolicyBackbone`` module; replaces the default encoders (their arguments are ignored).
        cond_dim: width of the default backbone's tokens.
        cnn_channels: channels of the default CNN's stride-2 stages.
        width: head width.
        depth: head blocks.
        num_heads: head attention heads.
        mlp_ratio: head MLP ratio.
        num_steps: K flow steps (not given in the paper; 10 as in pi0's default).
        noise_level: SDE noise level ``a`` (not given in the paper; 0.7 as Flow-GRPO).
        t_clamp: clamp of t inside ``sigma_t`` (0.9: avoids the t = 1 singularity).
        sde_window: ``(start, stop)`` stochastic steps of the SDE sampler (not given in the paper; ``None`` = all K).
        grid: optional custom time grid of ``num_steps + 1`` decreasing times (default uniform 1 -> 0).
        n_noise_draws: (noise, t) draws per sample in the BC loss (amortizes the encoder; default 4).
        t_sampling: BC-loss time distribution: ``"uniform"`` U(0, 1) (default), ``"logit_normal"`` sigmoid(N(0, 1))
            (SD3), or ``"beta"`` (pi0: ``t = 1 - 0.999 (1 - u)``, ``u ~ Beta(1.5, 1)``, favouring noisy times).
    """

    def __init__(
        self,
        action_dim: int = ACTION_DIM,
        chunk_len: int = 4,
        exec_horizon: int | None = None,
        state_dim: int = 0,
        instructions: Sequence[str] | None = None,
        image_encoder: Literal["cnn", "efficientnet"] = "cnn",
        text_encoder: Literal["embedding", "minilm", "none"] = "embedding",
        unknown_instruction: Literal["error", "unk"] = "error",
        backbone: nn.Module | None = None,
        cond_dim: int = 128,
        cnn_channels: Sequence[int] = (32, 64, 128, 128),
        width: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_steps: int = 10,
        noise_level: float = 0.7,
        t_clamp: float = DEFAULT_T_CLAMP,
        sde_window: tuple[int, int] | None = None,
        grid: Sequence[float] | None = None,
        n_noise_draws: int = 4,
        t_sampling: Literal["uniform", "logit_normal", "beta"] = "uniform",
    ) -> None:
        super().__init__()
        # 0. the constructor arguments, JSON-friendly (``config``, ``save_pretrained``)
        self._config: dict[str, Any] = {
            "action_dim": action_dim, "chunk_len": chunk_len, "exec_horizon": exec_horizon, "state_dim": state_dim,
            "instructions": None if instructions is None else list(instructions), "image_encoder": image_encoder,
            "text_encoder": text_encoder, "unknown_instruction": unknown_instruction,
            "backbone": None if backbone is None else f"{type(backbone).__module__}.{type(backbone).__qualname__}",
            "cond_dim": cond_dim, "cnn_channels": list(cnn_channels), "width": width, "depth": depth,
            "num_heads": num_heads, "mlp_ratio": mlp_ratio, "num_steps": num_steps, "noise_level": noise_level,
            "t_clamp": t_clamp, "sde_window": None if sde_window is None else list(sde_window),
            "grid": None if grid is None else [float(t) for t in grid], "n_noise_draws": n_noise_draws,
            "t_sampling": t_sampling,
        }  # fmt: skip
        self.action_stats: ActionStats | None = None
        self.action_dims: list[int] | None = None
        self.norm_mode: NormMode = "quantile"
        # 1. sizes and sampler settings (validated early: bad values name their argument)
        exec_horizon = chunk_len if exec_horizon is None else exec_horizon
        if not 1 <= exec_horizon <= chunk_len:
            raise ValueError(f"exec_horizon must lie in [1, chunk_len={chunk_len}], got {exec_horizon}")
        if t_sampling not in ("uniform", "logit_normal", "beta"):
            raise ValueError(f"t_sampling must be 'uniform', 'logit_normal' or 'beta', got {t_sampling!r}")
        if n_noise_draws < 1:
            raise ValueError(f"n_noise_draws must be >= 1, got {n_noise_draws}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        self.action_dim, self.chunk_len, self.exec_horizon = action_dim, chunk_len, exec_horizon
        self.num_steps, self.noise_level, self.t_clamp, self.sde_window = num_steps, noise_level, t_clamp, sde_window
        self.grid = None if grid is None else time_grid(num_steps, grid)
        stochastic_step_mask(num_steps, sde_window)  # validates the window
        self.n_noise_draws, self.t_sampling = n_noise_draws, t_sampling
        # 2. backbone
        if backbone is None:
            backbone = ObservationEncoder(
                cond_dim, image_encoder, text_encoder, instructions, unknown_instruction, state_dim, cnn_channels
            )
        if not isinstance(backbone, PolicyBackbone) or not isinstance(backbone, nn.Module):
            raise TypeError("backbone must be an nn.Module with a `cond_dim` attribute and an `encode(obs)` method")
        self.backbone = backbone
        # 3. flow action head
        self.head = FlowActionHead(action_dim, chunk_len, backbone.cond_dim, width, depth, num_heads, mlp_ratio)
        self._queue: deque[Tensor] = deque()

    # ---- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching BC loss: ``|| v_theta(x_t, t | o) - (eps - x0) ||^2`` with ``x_t = t eps + (1 - t) x0``.

        Each sample gets ``n_noise_draws`` independent ``(eps, t)`` draws (the observation is encoded once); ``t``
        follows ``t_sampling``. The squared error is averaged over draws, chunk steps and the real action dims
        (``constants.ACTION_MASK`` ``(B, D)`` bool when present; all dims otherwise). Dims that are not real are
        zero padding: their targets are set to 0 (as at sampling time, where nothing fills them) and excluded.

        Args:
            batch: ``OBS_IMAGE`` ``(B, 3, H, W)`` in [-1, 1], ``INSTRUCTION`` ``list[str]``, ``OBS_STATE`` ``(B, S)``
                (optional), ``ACTIONS`` ``(B, C, D)`` normalized, ``ACTION_MASK`` ``(B, D)`` (optional).

        Returns:
            ``(loss, logs)``: scalar loss and ``{"loss": detached loss}``.
        """
        if ACTIONS not in batch:
            raise KeyError(
                f"batch is missing {ACTIONS!r} (B, {self.chunk_len}, {self.action_dim}); got {sorted(batch)}"
            )
        x0 = batch[ACTIONS]
        if x0.ndim != 3 or x0.shape[1:] != (self.chunk_len, self.action_dim):
            raise ValueError(
                f"batch[{ACTIONS!r}] must be (B, {self.chunk_len}, {self.action_dim}), got {tuple(x0.shape)}"
            )
        cond = self.encode(batch)
        n = self.n_noise_draws
        mask = batch.get(ACTION_MASK)
        if mask is not None:
            if tuple(mask.shape) != (x0.shape[0], self.action_dim):
                raise ValueError(f"batch[{ACTION_MASK!r}] must be (B, {self.action_dim}), got {tuple(mask.shape)}")
            x0 = torch.where(mask[:, None, :].bool(), x0, torch.zeros_like(x0))
        x0 = x0.to(cond.dtype).repeat_interleave(n, dim=0)
        t = self.sample_times(x0.shape[0], device=x0.device).to(x0.dtype)
        eps = torch.randn_like(x0)
        x_t = t[:, None, None] * eps + (1.0 - t[:, None, None]) * x0
        sq_err = (self.head(x_t, t, cond, repeats=n) - (eps - x0)) ** 2  # (B*n, C, D)
        if mask is None:
            loss = sq_err.mean()
        else:
            w = mask.to(sq_err.dtype).repeat_interleave(n, dim=0)[:, None, :].expand_as(sq_err)
            loss = (sq_err * w).sum() / w.sum().clamp(min=1.0)
        return loss, {"loss": loss.detach()}

    def sample_times(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """``(n,)`` flow times for the BC loss, drawn from ``t_sampling``."""
        if self.t_sampling == "uniform":
            return torch.rand(n, device=device)
        if self.t_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device))
        u = torch.distributions.Beta(1.5, 1.0).sample((n,)).to(device)
        return 1.0 - 0.999 * (1.0 - u)

    # ---- inference ---------------------------------------------------------------------------------------------
    def encode(self, obs: Mapping[str, Any]) -> Tensor:
        """Observation dict -> ``(B, L, cond_dim)`` conditioning tokens (a pooled ``(B, E)`` becomes ``L = 1``)."""
        cond = self.backbone.encode(obs)
        if cond.ndim == 2:
            cond = cond[:, None]
        if cond.ndim != 3 or cond.shape[-1] != self.backbone.cond_dim:
            raise ValueError(f"backbone.encode must return (B, L, {self.backbone.cond_dim}), got {tuple(cond.shape)}")
        return cond

    def time_grid(self, num_steps: int | None = None) -> Tensor:
        """``(K + 1,)`` float64 flow times ``1 = t_0 > ... > t_K = 0`` (the custom ``grid`` when K matches it)."""
        k = self.num_steps if num_steps is None else num_steps
        if self.grid is not None:
            if k != self.num_steps:
                raise ValueError(f"this policy has a fixed grid of {self.num_steps} steps; got num_steps={k}")
            return self.grid
        return time_grid(k)

    def step_sigma2(self, num_steps: int | None = None, noise_level: float | None = None) -> Tensor:
        """``(K,)`` float32 per-step SDE variances ``sigma^2_k = std_k^2`` (the input of ``rl.flowscale_weights``)."""
        grid = self.time_grid(num_steps)
        a = self.noise_level if noise_level is None else noise_level
        return step_noise_schedule(grid, a, self.t_clamp, self.sde_window)[1]

    def _step_noise_levels(self, num_steps: int, mode: str, noise_level: float | None) -> Tensor:
        """``(K,)`` float32 noise level per step: ``a`` on stochastic steps, 0 on deterministic ones (and for ODE)."""
        if mode not in ("ode", "sde"):
            raise ValueError(f"mode must be 'ode' or 'sde', got {mode!r}")
        a = self.noise_level if noise_level is None else noise_level
        if mode == "sde" and a <= 0:
            raise ValueError(f"the SDE sampler needs noise_level > 0, got {a}")
        if mode == "ode":
            return torch.zeros(num_steps)
        return stochastic_step_mask(num_steps, self.sde_window).float() * a

    @torch.no_grad()
    def sample(
        self,
        obs: Mapping[str, Any],
        mode: Literal["ode", "sde"] = "ode",
        noise_level: float | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> SampleResult:
        """Integrate the flow from noise (t = 1) to an action chunk (t = 0) and record every step.

        Args:
            obs: observation dict (see ``ObservationEncoder.encode``).
            mode: ``"ode"`` (deterministic Euler) or ``"sde"`` (Flow-GRPO, with per-step log-probs).
            noise_level: SDE ``a`` (default the constructor's).
            num_steps: K (default the constructor's).
            generator: ``torch.Generator`` for the initial and per-step noise (deterministic sampling).
            noise: optional fixed initial noise ``(B, C, D)``.

        Returns:
            ``SampleResult`` with ``actions (B, C, D)``, ``x_steps (B, K+1, C, D)``, ``means (B, K, C, D)``,
            ``stds (B, K)``, ``log_probs (B, K, C, D)`` (``None`` for the ODE).
        """
        k = self.num_steps if num_steps is None else num_steps
        grid = self.time_grid(k).tolist()
        levels = self._step_noise_levels(k, mode, noise_level).tolist()
        cond = self.encode(obs)
        b, device = cond.shape[0], cond.device
        shape = (b, self.chunk_len, self.action_dim)
        if noise is None:
            x = torch.randn(shape, generator=generator, device=device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must be {shape} (B, chunk_len, action_dim), got {tuple(noise.shape)}")
        else:
            x = noise.to(device=device, dtype=torch.float32)
        xs, means, stds, lps = [x], [], [], []
        for i in range(k):
            t = torch.full((b,), grid[i], device=device)
            v = self.head(x, t, cond)
            mean, std = sde_step_mean_std(x, v, grid[i], grid[i + 1], levels[i], self.t_clamp)
            if levels[i] > 0:
                eps = torch.randn(shape, generator=generator, device=device)
                x = mean + std * eps
                lps.append(gaussian_log_prob(x, mean, std))
            else:
                x = mean
                lps.append(torch.zeros_like(mean))
            xs.append(x)
            means.append(mean)
            stds.append(std.reshape(()).expand(b))
        return SampleResult(
            actions=x,
            x_steps=torch.stack(xs, dim=1),
            means=torch.stack(means, dim=1),
            stds=torch.stack(stds, dim=1),
            log_probs=torch.stack(lps, dim=1) if mode == "sde" else None,
        )

    def predict_action_chunk(
        self,
        obs: Mapping[str, Any],
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        mode: Literal["ode", "sde"] = "ode",
    ) -> Tensor:
        """``(B, C, D)`` *normalized* action chunk of the modelled dims (ODE by default; fixed ``noise`` /
        ``generator`` for determinism). ``predict_raw_action_chunk`` returns the same chunk as raw unified actions."""
        return self.sample(obs, mode=mode, noise=noise, generator=generator).actions

    def predict_raw_action_chunk(
        self,
        obs: Mapping[str, Any],
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        mode: Literal["ode", "sde"] = "ode",
    ) -> Tensor:
        """``(B, C, 14)`` raw unified action chunk: ``predict_action_chunk`` decoded with the attached statistics
        (``unnormalize_actions``; needs ``set_action_stats`` or a ``from_pretrained`` directory with ``stats.json``)."""
        return self.unnormalize_actions(self.predict_action_chunk(obs, noise=noise, generator=generator, mode=mode))

    @torch.no_grad()
    def select_action(
        self, obs: Mapping[str, Any], generator: torch.Generator | None = None, mode: Literal["ode", "sde"] = "ode"
    ) -> Tensor:
        """Next ``(B, D)`` *normalized* action: re-plans a chunk when the queue is empty, then pops its first
        ``exec_horizon`` actions one per call (LeRobot-style). Call ``reset()`` at episode start;
        ``unnormalize_actions`` turns the result into a raw unified action."""
        if not self._queue:
            chunk = self.predict_action_chunk(obs, generator=generator, mode=mode)
            self._queue.extend(chunk[:, i] for i in range(self.exec_horizon))
        return self._queue.popleft()

    def reset(self) -> None:
        """Clear the action queue (call at the start of every episode)."""
        self._queue.clear()

    # ---- RL: log-probabilities of recorded SDE trajectories --------------------------------------------------
    def _transitions(self, x_steps: Tensor, noise_level: float | None) -> tuple[int, Tensor, Tensor]:
        if x_steps.ndim != 4 or x_steps.shape[2:] != (self.chunk_len, self.action_dim):
            raise ValueError(
                f"x_steps must be (B, K + 1, {self.chunk_len}, {self.action_dim}), got {tuple(x_steps.shape)}"
            )
        k = x_steps.shape[1] - 1
        return k, self.time_grid(k).to(torch.float32), self._step_noise_levels(k, "sde", noise_level)

    def log_prob(
        self,
        obs: Mapping[str, Any],
        x_steps: Tensor,
        noise_level: float | None = None,
        return_means: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Per-step log-probs of a recorded SDE trajectory under the current parameters, all K steps in one
        batched forward (the observation is encoded once; the head runs on ``B * K`` rows).

        Args:
            obs: the observations the trajectory was sampled from (``B`` rows).
            x_steps: ``(B, K + 1, C, D)`` from ``SampleResult.x_steps``.
            noise_level: SDE ``a`` used when sampling (default the constructor's).
            return_means: also return the transition means (for ``rl.gaussian_mean_kl``).

        Returns:
            ``(B, K, C, D)`` float32 log-probs (0 on deterministic steps), and ``(B, K, C, D)`` means if asked.
        """
        k, grid, levels = self._transitions(x_steps, noise_level)
        b = x_steps.shape[0]
        device = x_steps.device
        x_in = x_steps[:, :-1].float().reshape(b * k, self.chunk_len, self.action_dim)
        t = grid[:-1].to(device).repeat(b)
        t_next = grid[1:].to(device).repeat(b)
        v = self.head(x_in, t, self.encode(obs), repeats=k)
        mean, std = sde_step_mean_std(x_in, v, t, t_next, levels.to(device).repeat(b), self.t_clamp)
        mean = mean.view(b, k, self.chunk_len, self.action_dim)
        std = std.view(b, k, 1, 1)
        return self._masked_log_prob(x_steps[:, 1:], mean, std, return_means)

    def log_prob_loop(
        self,
        obs: Mapping[str, Any],
        x_steps: Tensor,
        noise_level: float | None = None,
        return_means: bool = False,
        reencode: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Reference implementation of ``log_prob`` with a Python loop over the K steps (one head call each; with
        ``reencode=True`` also one backbone call each). Same arguments and outputs as ``log_prob``."""
        k, grid, levels = self._transitions(x_steps, noise_level)
        b = x_steps.shape[0]
        cond = None if reencode else self.encode(obs)
        means, stds = [], []
        for i in range(k):
            x = x_steps[:, i].float()
            t = torch.full((b,), float(grid[i]), device=x.device)
            v = self.head(x, t, self.encode(obs) if reencode else cond)
            mean, std = sde_step_mean_std(x, v, grid[i].item(), grid[i + 1].item(), levels[i].item(), self.t_clamp)
            means.append(mean)
            stds.append(std.reshape(1, 1, 1).expand(b, 1, 1))
        return self._masked_log_prob(x_steps[:, 1:], torch.stack(means, 1), torch.stack(stds, 1), return_means)

    @staticmethod
    def _masked_log_prob(
        x_next: Tensor, mean: Tensor, std: Tensor, return_means: bool
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Gaussian log-prob ``(B, K, C, D)`` with 0 where ``std == 0`` (NaN-free gradients on deterministic steps)."""
        stochastic = std > 0
        lp = gaussian_log_prob(x_next, mean, torch.where(stochastic, std, torch.ones_like(std)))
        lp = torch.where(stochastic, lp, torch.zeros_like(lp))
        return (lp, mean) if return_means else lp
