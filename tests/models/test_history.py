"""History memory (as in the paper): FIFO buffer, masked multi-scale pooling, memory-concatenated self-attention."""

from __future__ import annotations

import pytest
import torch
from diffusers import CosmosTransformer3DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_cosmos import CosmosAttnProcessor2_0, CosmosRotaryPosEmbed

from lightning_prophrl.models.history import (
    HistoryBuffer,
    HistoryEncoder,
    MemoryAttnProcessor,
    MemoryContext,
    install_memory_attention,
    masked_avg_pool3d,
)


def test_history_buffer_is_a_bounded_fifo():
    buf = HistoryBuffer(capacity=5)
    assert len(buf) == 0 and buf.items is None
    buf.push(torch.arange(3.0).view(1, 3, 1), torch.tensor([[True, False, True]]))
    buf.push(torch.arange(3.0, 7.0).view(1, 4, 1))
    assert torch.equal(buf.items.flatten(), torch.tensor([2.0, 3, 4, 5, 6]))  # oldest dropped first
    assert torch.equal(buf.mask, torch.tensor([[True, True, True, True, True]]))
    buf.push(torch.tensor([[[7.0]]]), torch.tensor([[False]]))
    assert torch.equal(buf.items.flatten(), torch.tensor([3.0, 4, 5, 6, 7])) and not buf.mask[0, -1]
    with pytest.raises(ValueError, match="items"):
        buf.push(torch.zeros(2, 1, 1))
    empty = HistoryBuffer(capacity=0)
    empty.push(torch.zeros(1, 3, 1))
    assert len(empty) == 0


def test_masked_avg_pool3d_closed_form():
    # frame t holds the constant value t; frames 1 and 4 are missing
    x = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(1, 2, 5, 3, 3)
    mask = torch.tensor([[True, False, True, True, False]])
    pooled, valid = masked_avg_pool3d(x, mask, (2, 2, 2))
    assert pooled.shape == (1, 2, 3, 2, 2) and valid.shape == (1, 3, 2, 2)
    # cells: frames {0, 1} -> 0; {2, 3} -> 2.5; {4, pad} -> nothing valid
    assert torch.allclose(pooled[0, :, 0], torch.zeros(2, 2, 2))
    assert torch.allclose(pooled[0, :, 1], torch.full((2, 2, 2), 2.5))
    assert valid[0, :2].all() and not valid[0, 2].any()


def test_history_encoder_token_count_padding_and_masking():
    torch.manual_seed(0)
    enc = HistoryEncoder(latent_channels=4, hidden_size=16, history_length=8, scale_frames=(2, 2, 4))
    lat = torch.randn(2, 4, 8, 8, 8)
    tokens, mask = enc(lat)
    assert tokens.shape == (2, enc.num_tokens(8, 8), 16) == (2, 2 * 16 + 1 * 4 + 1 * 1, 16) and mask.all()
    # a short history equals the same history left-padded with missing frames
    short, short_mask = enc(lat[:, :, -3:])
    padded_mask = torch.zeros(2, 8, dtype=torch.bool)
    padded_mask[:, -3:] = True
    padded, pmask = enc(torch.cat([torch.randn(2, 4, 5, 8, 8), lat[:, :, -3:]], 2), padded_mask)
    assert torch.equal(short, padded) and torch.equal(short_mask, pmask) and not pmask.all()
    # a longer history keeps only the newest frames; masked frames' content is ignored exactly
    longer, _ = enc(torch.cat([torch.randn(2, 4, 3, 8, 8), lat], 2))
    assert torch.equal(longer, tokens)
    m = torch.ones(2, 8, dtype=torch.bool)
    m[:, 1] = False
    changed = lat.clone()
    changed[:, :, 1] += 100.0
    assert torch.equal(enc(lat, m)[0], enc(changed, m)[0])
    with pytest.raises(ValueError, match="history_scale_frames"):
        HistoryEncoder(4, 16, history_length=8, scale_frames=(2, 2, 2))


def make_attention() -> Attention:
    return Attention(
        query_dim=64, heads=4, dim_head=16, qk_norm="rms_norm", elementwise_affine=True, out_bias=False,
        processor=CosmosAttnProcessor2_0(),
    )  # fmt: skip


def test_memory_processor_matches_cosmos_without_memory_and_uses_memory():
    torch.manual_seed(0)
    attn = make_attention()
    x = torch.randn(2, 12, 64)
    rope = CosmosRotaryPosEmbed(hidden_size=16, max_size=(8, 8, 8), patch_size=(1, 1, 1))(torch.zeros(2, 1, 3, 2, 2))
    reference = attn(x, image_rotary_emb=rope)
    ctx = MemoryContext()
    attn.set_processor(MemoryAttnProcessor(ctx))
    assert torch.allclose(attn(x, image_rotary_emb=rope), reference, atol=1e-6)

    memory = torch.randn(2, 5, 64)
    ctx.set(memory, torch.zeros(2, 5, dtype=torch.bool))  # all masked -> dropped: exactly no memory
    assert ctx.tokens is None and torch.allclose(attn(x, image_rotary_emb=rope), reference, atol=1e-6)
    mask = torch.tensor([[True] * 5, [False] * 5])
    ctx.set(memory, mask)
    out = attn(x, image_rotary_emb=rope)
    assert not torch.allclose(out[0], reference[0], atol=1e-4)  # sample 0 attends to its memory
    assert torch.allclose(out[1], reference[1], atol=1e-6)  # sample 1's memory is fully masked


def test_install_memory_attention_patches_every_self_attention():
    model = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=3, text_embed_dim=8,
        adaln_lora_dim=8, max_size=(8, 8, 8), concat_padding_mask=False, extra_pos_embed_type=None,
    )  # fmt: skip
    ctx = MemoryContext()
    assert install_memory_attention(model, ctx) == 3
    procs = [b.attn1.processor for b in model.transformer_blocks]
    assert all(isinstance(p, MemoryAttnProcessor) and p.context is ctx for p in procs)
    assert not any(isinstance(b.attn2.processor, MemoryAttnProcessor) for b in model.transformer_blocks)
