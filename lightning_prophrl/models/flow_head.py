"""The flow-matching action head: a small transformer over the noisy action chunk, conditioned through adaptive layer
norm on the flow time and the observation embedding; it predicts the velocity of every action element.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of flow times ``(N,)`` in [0, 1] -> ``(N, dim)`` (``t`` is scaled by ``scale`` first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = scale * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class _AdaLNBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (DiT) by a conditioning vector ``(N, W)``."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x (N, L, W)``, ``c (N, W)`` -> ``(N, L, W)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        n, length, width = x.shape
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(n, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, width)
        x = x + gate1 * self.attn_out(h)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class FlowActionHead(nn.Module):
    """Transformer over the C action tokens, prefixed by the conditioning tokens, adaLN-modulated by the flow time
    (sinusoidal) plus the mean conditioning token; predicts the velocity ``eps - x0`` of the action chunk.

    Args:
        action_dim: D.
        chunk_len: C.
        cond_dim: width of the backbone's conditioning tokens.
        width: transformer width (divisible by ``num_heads``).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / width.
    """

    def __init__(
        self,
        action_dim: int,
        chunk_len: int,
        cond_dim: int,
        width: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width={width} must be divisible by num_heads={num_heads}")
        self.width = width
        self.action_in = nn.Linear(action_dim, width)
        self.pos = nn.Parameter(torch.randn(1, chunk_len, width) * 0.02)
        self.cond_in = nn.Linear(cond_dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_AdaLNBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        nn.init.zeros_(self.final_ada[1].weight)
        nn.init.zeros_(self.final_ada[1].bias)
        self.action_out = nn.Linear(width, action_dim)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, repeats: int = 1) -> Tensor:
        """Velocity of the noisy chunk.

        Args:
            x: ``(N, C, D)`` noisy normalized action chunk.
            t: ``(N,)`` flow times.
            cond: ``(N / repeats, L, cond_dim)`` conditioning tokens; row ``i`` serves rows
                ``i * repeats ... (i + 1) * repeats - 1`` of ``x`` (projected once, then repeated).
            repeats: how many consecutive rows of ``x`` share one conditioning row.

        Returns:
            ``(N, C, D)`` predicted velocity.
        """
        # 1. conditioning tokens (projected before repeating) and the adaLN vector
        c_tok = self.cond_in(cond)
        if repeats > 1:
            c_tok = c_tok.repeat_interleave(repeats, dim=0)
        c_vec = self.time_mlp(timestep_embedding(t, self.width).to(c_tok.dtype)) + c_tok.mean(dim=1)
        # 2. transformer over [cond tokens; action tokens]
        h = torch.cat([c_tok, self.action_in(x.to(c_tok.dtype)) + self.pos], dim=1)
        for block in self.blocks:
            h = block(h, c_vec)
        # 3. velocity from the action tokens
        shift, scale = self.final_ada(c_vec)[:, None].chunk(2, dim=-1)
        h = self.final_norm(h[:, c_tok.shape[1] :]) * (1 + scale) + shift
        return self.action_out(h)
