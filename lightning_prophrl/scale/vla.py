"""A flow-matching policy of real VLA size for the memory budget and the GPU checks: a PaliGemma backbone (pi0's
vision-language model: SigLIP-So400m/14 + Gemma-2B, 2.9 B parameters) built from a config with random weights, under
the library's :class:`~lightning_prophrl.models.policy.FlowMatchingPolicy` flow action head.

No weights and no tokenizer are needed (nothing is downloaded): instructions become byte-level token ids, which is
enough for memory and speed, not for a useful policy. A real checkpoint goes through the same
:class:`PaliGemmaBackbone` with ``PaliGemmaModel.from_pretrained`` and its tokenizer (see docs/policy_backbones.md).
``transformers`` is imported lazily: ``pip install 'lightning_prophrl[encoders]'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prophrl.constants import INSTRUCTION, OBS_IMAGE

VLASize = Literal["3b", "tiny"]
_BYTE_OFFSET = 3  # ids 0, 1, 2: pad, eos, bos (Gemma's)
# pi0's PaliGemma-3B (224 px, 256 image tokens) and a CPU-sized model of the same classes
_SIZES: dict[str, dict[str, Any]] = {
    "3b": dict(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                           num_hidden_layers=27, num_attention_heads=16, patch_size=14, image_size=224),
        text_config=dict(model_type="gemma", hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                         num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=257216),
        projection_dim=2048, image_token_index=257152,
        head=dict(cond_dim=1024, width=1024, depth=18, num_heads=16),
    ),
    "tiny": dict(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32),
        text_config=dict(model_type="gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=300),
        projection_dim=64, image_token_index=299,
        head=dict(cond_dim=64, width=64, depth=2, num_heads=2),
    ),
}  # fmt: skip


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the VLA-size policy needs transformers: pip install 'lightning_prophrl[encoders]'") from err
    return transformers


def paligemma_config(size: VLASize = "3b") -> Any:
    """The ``PaliGemmaConfig`` of a size (``"3b"``: pi0's PaliGemma-3B; ``"tiny"``: for CPU tests)."""
    if size not in _SIZES:
        raise ValueError(f"`size` must be one of {sorted(_SIZES)}, got {size!r}")
    spec = {k: v for k, v in _SIZES[size].items() if k != "head"}
    return _transformers().PaliGemmaConfig(**spec)


class PaliGemmaBackbone(nn.Module):
    """``PolicyBackbone``: conditioning tokens = projected last hidden states of a PaliGemma over
    ``[image tokens, bos, instruction bytes]``.

    Args:
        config: a ``PaliGemmaConfig`` (e.g. :func:`paligemma_config`).
        cond_dim: width of the returned tokens.
        max_text_tokens: instruction bytes kept (padded to this length, so every batch has one shape).
        train_vlm: whether the PaliGemma's own weights train (False: only the projection).
    """

    def __init__(self, config: Any, cond_dim: int = 1024, max_text_tokens: int = 32, train_vlm: bool = True) -> None:
        super().__init__()
        self.vlm = _transformers().PaliGemmaModel(config)
        self.vlm.requires_grad_(train_vlm)
        self.cond_dim, self.max_text_tokens = cond_dim, max_text_tokens
        vision = config.vision_config
        self.image_size = int(vision.image_size)
        self.num_image_tokens = (self.image_size // int(vision.patch_size)) ** 2
        self.image_token = int(config.image_token_index)
        self.proj = nn.Linear(int(config.text_config.hidden_size), cond_dim)

    def tokenize(self, instructions: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """``(input_ids, attention_mask)``, both ``(B, num_image_tokens + 1 + max_text_tokens)``."""
        rows, masks = [], []
        for text in instructions:
            ids = [b + _BYTE_OFFSET for b in text.encode()[: self.max_text_tokens]]
            pad = self.max_text_tokens - len(ids)
            rows.append([self.image_token] * self.num_image_tokens + [2] + ids + [0] * pad)
            masks.append([1] * (len(rows[-1]) - pad) + [0] * pad)
        return torch.tensor(rows, device=device), torch.tensor(masks, device=device)

    def encode(self, obs: Mapping[str, Any]) -> Tensor:
        """``OBS_IMAGE`` ``(B, 3, H, W)`` in ``[-1, 1]`` (resized to the vision tower's size) and ``INSTRUCTION``
        ``list[str]`` -> ``(B, L, cond_dim)`` tokens, ``L = num_image_tokens + 1 + max_text_tokens``."""
        images = obs[OBS_IMAGE]
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear")
        ids, mask = self.tokenize(list(obs[INSTRUCTION]), images.device)
        hidden = self.vlm(input_ids=ids, pixel_values=images.to(self.proj.weight.dtype), attention_mask=mask)
        return self.proj(hidden.last_hidden_state)


def build_vla_policy(
    size: VLASize = "3b", action_dim: int = 7, chunk_len: int = 8, num_steps: int = 10, train_vlm: bool = True
) -> nn.Module:
    """A ``FlowMatchingPolicy`` with a :class:`PaliGemmaBackbone` of ``size`` and a flow head scaled with it
    (``"3b"``: width 1024, 18 blocks, about 0.4 B parameters, the size of pi0's action expert). Build it under
    ``torch.device("meta")`` to count parameters, or ``torch.device("cuda")`` to run it."""
    from lightning_prophrl.models.policy import FlowMatchingPolicy

    config = paligemma_config(size)
    head = _SIZES[size]["head"]
    backbone = PaliGemmaBackbone(config, head["cond_dim"], train_vlm=train_vlm)
    return FlowMatchingPolicy(
        action_dim=action_dim, chunk_len=chunk_len, backbone=backbone, width=head["width"], depth=head["depth"],
        num_heads=head["num_heads"], num_steps=num_steps,
    )  # fmt: skip


def add_vla_lora(policy: nn.Module, rank: int = 32) -> int:
    """Freeze the PaliGemma and add LoRA adapters (peft) of ``rank`` to its attention and MLP projections; the flow
    head and the projection stay trainable. Returns the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    vlm = policy.backbone.vlm
    vlm.requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2"]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), vlm)
    return sum(p.numel() for p in policy.parameters() if p.requires_grad)


def repeated_block_classes(model: nn.Module) -> tuple[type[nn.Module], ...]:
    """Classes of the items of every ``nn.ModuleList`` in ``model``: its repeated blocks (for the VLA policy: SigLIP
    encoder layers, Gemma decoder layers, the flow head's blocks), the FSDP units to wrap."""
    classes: dict[type[nn.Module], None] = {}
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            classes.update(dict.fromkeys(type(m) for m in module if not isinstance(m, nn.ModuleList)))
    return tuple(classes)
