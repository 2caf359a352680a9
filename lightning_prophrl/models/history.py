"""History-aware memory of Prophet (as in the paper): FramePack-style pooled past latents as extra keys/values.

Pipeline:

1. :class:`HistoryBuffer` keeps the last ``capacity`` per-frame items (latents or frames) FIFO, with a validity mask.
2. :class:`HistoryEncoder` compresses per-frame history latents ``(B, C, T_h, h, w)`` with **multi-scale 3D average
   pooling**, FramePack style: the newest ``scale_frames[0]`` frames are pooled with ``scales[0]`` (finest), the next
   ``scale_frames[1]`` with ``scales[1]``, and so on, so older frames cost fewer tokens and the memory is bounded by
   ``sum_s (n_s / kt_s) (h / kh_s) (w / kw_s)`` tokens whatever the episode length. Pooling is a *masked* mean, so
   missing frames (``history_mask == False``) contribute nothing. Tokens get a per-scale projection to the DiT width,
   a sinusoidal (age, row, column) position code and a LayerNorm.
3. :class:`MemoryAttnProcessor` is a diffusers attention processor installed on the **self-attention of every DiT
   block** (``attn1``). It projects the memory tokens with that block's own ``to_k`` / ``to_v`` (+ ``norm_k``) and
   concatenates them to the keys/values of the video tokens (memory-concatenated attention); masked memory tokens are
   excluded by the attention mask. When no sample has memory the processor is exactly Cosmos' default one.

The paper leaves open whether memory enters self- or cross-attention: we use self-attention because the
cross-attention context of Cosmos carries the (zeroed) text features and self-attention is where FramePack puts its
history tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb, get_timestep_embedding
from torch import nn


# ---------------------------------------------------------------------------------------------------------------------
# FIFO buffer
# ---------------------------------------------------------------------------------------------------------------------
class HistoryBuffer:
    """Bounded FIFO of per-frame tensors (oldest first) with a validity mask.

    Args:
        capacity: Number of frames kept; pushing more drops the oldest ones.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"`capacity` must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: torch.Tensor | None = None  # (B, T, ...)
        self._mask: torch.Tensor | None = None  # (B, T) bool

    def __len__(self) -> int:
        return 0 if self._items is None else self._items.shape[1]

    def push(self, items: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Append ``items`` ``(B, n, ...)`` (oldest first) with an optional ``mask`` ``(B, n)``, dropping the oldest."""
        if self.capacity == 0:
            return
        if mask is None:
            mask = torch.ones(items.shape[:2], dtype=torch.bool, device=items.device)
        if mask.shape != items.shape[:2]:
            raise ValueError(f"`mask` must have shape {tuple(items.shape[:2])}, got {tuple(mask.shape)}")
        if self._items is not None:
            if items.shape[0] != self._items.shape[0] or items.shape[2:] != self._items.shape[2:]:
                raise ValueError(f"`items` shape {tuple(items.shape)} does not match the buffer {self._items.shape}")
            items, mask = torch.cat([self._items, items], 1), torch.cat([self._mask, mask.bool()], 1)
        self._items, self._mask = items[:, -self.capacity :], mask[:, -self.capacity :].bool()

    @property
    def items(self) -> torch.Tensor | None:
        """Stored items ``(B, T, ...)``, oldest first, or None when empty."""
        return self._items

    @property
    def mask(self) -> torch.Tensor | None:
        """Validity mask ``(B, T)`` or None when empty."""
        return self._mask


# ---------------------------------------------------------------------------------------------------------------------
# Multi-scale pooling and the memory encoder
# ---------------------------------------------------------------------------------------------------------------------
def masked_avg_pool3d(
    x: torch.Tensor, frame_mask: torch.Tensor, kernel: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the valid frames in each ``kernel`` cell (cells are padded with invalid zeros at the far edges).

    Args:
        x: Latents ``(B, C, T, h, w)``.
        frame_mask: ``(B, T)`` bool or float, 1 where the frame exists.
        kernel: ``(kt, kh, kw)``.

    Returns:
        ``pooled`` ``(B, C, T', h', w')`` with ``T' = ceil(T / kt)`` etc. and ``valid`` ``(B, T', h', w')`` bool.
    """
    kt, kh, kw = kernel
    b, _, t, h, w = x.shape
    m = frame_mask.to(x.dtype)[:, None, :, None, None].expand(b, 1, t, h, w)
    pad = (0, -w % kw, 0, -h % kh, 0, -t % kt)
    x, m = F.pad(x * m, pad), F.pad(m, pad)
    num = F.avg_pool3d(x, kernel, stride=kernel)
    den = F.avg_pool3d(m, kernel, stride=kernel)
    return num / den.clamp_min(1e-12), den[:, 0] > 0


class HistoryEncoder(nn.Module):
    """Multi-scale pooled memory tokens from per-frame history latents.

    Args:
        latent_channels: Channels ``C`` of the codec latents.
        hidden_size: Width ``D`` of the DiT (memory tokens are projected to it).
        history_length: Frames kept (``T_h``); inputs are left-padded with invalid frames or cut to the newest ones.
        scales: Pooling kernels ``(kt, kh, kw)`` from the newest (finest) to the oldest (coarsest) frames. UNKNOWN in
            the paper; default FramePack-like ``((1, 2, 2), (2, 4, 4), (4, 8, 8))``.
        scale_frames: Number of frames handled by each scale, newest first; must sum to ``history_length``.
        pos_dim: Size of each sinusoidal code (age, row, column) before its projection.
    """

    def __init__(
        self,
        latent_channels: int,
        hidden_size: int,
        history_length: int = 16,
        scales: Sequence[Sequence[int]] = ((1, 2, 2), (2, 4, 4), (4, 8, 8)),
        scale_frames: Sequence[int] = (2, 6, 8),
        pos_dim: int = 64,
    ) -> None:
        super().__init__()
        scales = [tuple(int(k) for k in s) for s in scales]
        if any(len(s) != 3 or min(s) < 1 for s in scales):
            raise ValueError(f"`history_scales` must be positive (kt, kh, kw) triples, got {scales}")
        if len(scale_frames) != len(scales) or sum(scale_frames) != history_length or min(scale_frames) < 1:
            raise ValueError(
                f"`history_scale_frames` {list(scale_frames)} must give >= 1 frame to each of the {len(scales)} scales "
                f"and sum to history_length={history_length}"
            )
        self.history_length, self.scales, self.scale_frames = history_length, scales, [int(n) for n in scale_frames]
        self.pos_dim = pos_dim
        self.proj = nn.ModuleList(nn.Linear(latent_channels, hidden_size) for _ in scales)
        self.pos_proj = nn.Linear(3 * pos_dim, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def num_tokens(self, height: int, width: int) -> int:
        """Memory size (tokens) for a latent grid ``(height, width)``."""
        return sum(
            -(-n // kt) * -(-height // kh) * -(-width // kw) for n, (kt, kh, kw) in zip(self.scale_frames, self.scales)
        )

    def forward(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode history latents into memory tokens.

        Args:
            latents: Per-frame history latents ``(B, C, T, h, w)``, oldest first.
            mask: ``(B, T)`` bool, False for missing frames (default all valid).

        Returns:
            ``tokens`` ``(B, M, D)`` and ``token_mask`` ``(B, M)`` bool (False = ignore).
        """
        b, _, t, h, w = latents.shape
        mask = torch.ones(b, t, dtype=torch.bool, device=latents.device) if mask is None else mask.bool()
        if mask.shape != (b, t):
            raise ValueError(f"`history_mask` must have shape ({b}, {t}), got {tuple(mask.shape)}")
        # 1. Left-pad / cut to history_length and flip to newest-first
        if t < self.history_length:
            pad = self.history_length - t
            latents = torch.cat([latents.new_zeros(b, latents.shape[1], pad, h, w), latents], 2)
            mask = torch.cat([mask.new_zeros(b, pad), mask], 1)
        latents, mask = latents[:, :, -self.history_length :].flip(2), mask[:, -self.history_length :].flip(1)

        # 2. Pool each age segment with its scale
        tokens, valid, positions, start = [], [], [], 0
        for proj, (kt, kh, kw), n in zip(self.proj, self.scales, self.scale_frames):
            pooled, ok = masked_avg_pool3d(latents[:, :, start : start + n], mask[:, start : start + n], (kt, kh, kw))
            tp, hp, wp = pooled.shape[2:]
            tokens.append(proj(pooled.flatten(2).transpose(1, 2)))  # (B, tp*hp*wp, D)
            valid.append(ok.flatten(1))
            age = start + 1 + kt * torch.arange(tp, device=latents.device) + (kt - 1) / 2  # mean age, 1 = newest
            row = kh * torch.arange(hp, device=latents.device) + (kh - 1) / 2
            col = kw * torch.arange(wp, device=latents.device) + (kw - 1) / 2
            positions.append(torch.stack(torch.meshgrid(age.float(), row.float(), col.float(), indexing="ij"), -1))
            start += n

        # 3. Position code and normalization
        pos = torch.cat([p.flatten(0, 2) for p in positions], 0)  # (M, 3)
        code = torch.cat([get_timestep_embedding(pos[:, i], self.pos_dim, flip_sin_to_cos=True) for i in range(3)], -1)
        out = torch.cat(tokens, 1) + self.pos_proj(code.to(latents.dtype))
        return self.norm(out), torch.cat(valid, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Memory-concatenated self-attention
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class MemoryContext:
    """Memory shared by all :class:`MemoryAttnProcessor` of one model; set by the model before each DiT call.

    Attributes:
        tokens: ``(B, M, D)`` memory tokens or None (no memory).
        mask: ``(B, M)`` bool, False for tokens to ignore.
    """

    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        """Memory is transient: copies and pickles of a model get an empty context."""
        return {"tokens": None, "mask": None}

    def set(self, tokens: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        """Install memory; a memory whose tokens are all masked is dropped (exactly the no-memory computation)."""
        if tokens is None or mask is None or not bool(mask.any()):
            self.tokens, self.mask = None, None
        else:
            self.tokens, self.mask = tokens, mask


class MemoryAttnProcessor:
    """Cosmos self-attention with extra memory keys/values (no parameters of its own).

    Identical to ``CosmosAttnProcessor2_0`` for self-attention when ``context.tokens`` is None. Otherwise memory tokens
    go through the block's ``to_k``/``to_v`` (so LoRA on them also adapts the memory path) and ``norm_k``, get no
    RoPE (their position is in the token itself) and are appended to the keys/values.

    Args:
        context: The shared :class:`MemoryContext`.
    """

    def __init__(self, context: MemoryContext) -> None:
        self.context = context

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # 1. Projections of the video tokens
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)
            key = apply_rotary_emb(key, image_rotary_emb, use_real=True, use_real_unbind_dim=-2)

        # 2. Memory keys/values
        mask = None
        memory = self.context.tokens
        if memory is not None:
            if memory.shape[0] != hidden_states.shape[0]:
                raise ValueError(f"memory batch {memory.shape[0]} != hidden_states batch {hidden_states.shape[0]}")
            mem = memory.to(hidden_states.dtype)
            mem_key = attn.norm_k(attn.to_k(mem).unflatten(2, (attn.heads, -1)).transpose(1, 2))
            mem_value = attn.to_v(mem).unflatten(2, (attn.heads, -1)).transpose(1, 2)
            key, value = torch.cat([key, mem_key], 2), torch.cat([value, mem_value], 2)
            own = self.context.mask.new_ones(hidden_states.shape[:2])
            mask = torch.cat([own, self.context.mask], 1)[:, None, None, :]  # (B, 1, 1, N + M)

        # 3. Attention and output projection
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def install_memory_attention(transformer: nn.Module, context: MemoryContext) -> int:
    """Replace the processor of every DiT self-attention (modules named ``*.attn1``) by a memory processor.

    ``CosmosTransformer3DModel`` has no ``set_attn_processor``; ``Attention.set_processor`` is the per-module form of
    the same diffusers mechanism. Returns the number of patched modules.
    """
    count = 0
    for name, module in transformer.named_modules():
        if isinstance(module, Attention) and name.split(".")[-1] == "attn1":
            module.set_processor(MemoryAttnProcessor(context))
            count += 1
    if count == 0:
        raise ValueError("no self-attention module named '*.attn1' found in the transformer")
    return count
