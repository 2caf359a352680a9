"""The :class:`Prophet` model: its arguments, backbones (Cosmos DiT or U-Net), forward pass, LoRA and training loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from lightning_prophrl.constants import (
    ACTION_DIM,
)
from lightning_prophrl.models.action_frames import (
    ActionFrameEncoder,
    ActionFrameStyle,
    ScalarActionEncoder,
)
from lightning_prophrl.models.history import HistoryEncoder, MemoryContext, install_memory_attention
from lightning_prophrl.models.latent import CodecKind, build_codec
from lightning_prophrl.models.prophet.conditioning import ProphetConditioningMixin
from lightning_prophrl.models.prophet.forward import ProphetForwardMixin, _ForwardState
from lightning_prophrl.models.prophet.objective import ProphetObjectiveMixin
from lightning_prophrl.models.prophet.sampling import ProphetSamplingMixin
from lightning_prophrl.models.prophet.stored_latents import ProphetStoredLatentsMixin
from lightning_prophrl.models.unet_backbone import (
    UNET_LORA_TARGETS,
    build_unet,
    check_sigma,
    time_embed_dim,
)

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class Prophet(
    ProphetForwardMixin,
    ProphetObjectiveMixin,
    ProphetStoredLatentsMixin,
    ProphetConditioningMixin,
    ProphetSamplingMixin,
    ModelMixin,
    ConfigMixin,
    PeftAdapterMixin,
):
    """The Prophet world model (a diffusers model: ``save_pretrained`` / ``from_pretrained`` / LoRA adapters).

    Defaults describe the paper's 2B-class model (Cosmos-Predict2-2B-Video2World dims + Wan2.1 VAE); see
    ``configs/prophet/model_tiny.yaml`` for the CPU configuration. Values the paper does not give are marked UNKNOWN.

    Args:
        backbone: ``"cosmos"`` (the Cosmos DiT: every argument below) or ``"unet"`` (a ``UNet2DModel`` over the
            frames stacked as channels, EDM preconditioning: ``unet_kwargs``, ``sigma_data``, ``edm_p_mean``,
            ``edm_p_std``, ``sigma_min``, ``sigma_max``, ``edm_rho``; the DiT, null-context, ``flow_shift``/``t_*``,
            ``cond_t``/``timestep_scale``, ``parameterization``, ``action_tokens``, ``cond_concat`` and ``prev_concat``
            arguments are then unused, the memory is the stacked past frames and the success head reads the U-Net's
            middle block).
        codec: ``"wan"`` (Wan2.1 VAE, learned latents) or ``"pixel"`` (fixed space-to-depth, pixel space).
        codec_kwargs: Constructor kwargs of the codec (see :mod:`lightning_prophrl.models.latent`).
        num_attention_heads: DiT heads (Cosmos-Predict2-2B: 16).
        attention_head_dim: DiT head size (128); the hidden size is ``heads * head_dim``.
        num_layers: DiT blocks (28).
        mlp_ratio: Feed-forward expansion (4).
        adaln_lora_dim: Bottleneck of the AdaLN modulation MLPs (256).
        patch_size: DiT patch ``(1, p, p)``; the temporal patch must be 1.
        max_size: Largest latent ``(T, h, w)`` for the positional embeddings.
        rope_scale: RoPE NTK scales ``(t, h, w)`` (Cosmos-Predict2-2B Video2World: ``(1, 3, 3)``).
        extra_pos_embed_type: ``None`` or ``"learnable"`` absolute position embedding.
        text_embed_dim: Width of the (zeroed) cross-attention context (T5: 1024).
        null_context: ``"zero"`` (cross-attention outputs exactly 0) or ``"learned"`` (a trainable null sequence).
        null_context_tokens: Length of the null context.
        padding_mask_channel: Append a zero padding-mask input channel (Cosmos checkpoints expect it).
        rope_fps: Frame rate passed to Cosmos' RoPE (``None`` = frame index positions).
        pretrained_backbone_path: Local directory of a diffusers ``CosmosTransformer3DModel`` (or a pipeline root with
            ``transformer/``); its architecture overrides the backbone arguments above. Cleared from the saved
            config after loading (the weights are then part of this model).
        action_dim: Size of one action (14 in the unified space).
        action_chunk_length: Actions (= future frames) per generation call (paper: 20).
        action_hidden_dim: Hidden width of the scalar action MLP (default ``4 * hidden``, a third-party
            reimplementation's guess).
        use_action_frames: Build the action-frame stream.
        action_frame_channels: Channels of the action-frame encoder.
        action_frame_style: :class:`ActionFrameStyle` fields as a dict (renderer sizes and colours).
        action_frame_mode: How the action-frame stream enters the DiT: ``"pooled"`` (the paper's: encoder, spatial mean,
            added to the timestep embedding), ``"concat"`` (the action-frame latents as extra input channels of the
            future frames, pixel-aligned with the frame they describe) or ``"both"``. Beyond the paper: the spatial
            mean keeps *that* the hand moves but not *where* in the image; a small DiT given only pooled/scalar
            action vectors learned to ignore them (docs/history.md), while a channel-aligned target disk tells each
            patch whether the hand is commanded to be there.
        zero_init_conditioning: Zero the last layers of the action streams (start from the backbone's behaviour).
        history_length: Past frames kept in the memory (UNKNOWN; 0 disables the memory).
        history_scales: Pooling kernels newest -> oldest (UNKNOWN; FramePack-like default).
        history_scale_frames: Frames per scale, newest first, summing to ``history_length``.
        history_pos_dim: Size of each sinusoidal position code of the memory tokens.
        success_head: Build the success / task-progress head.
        success_hidden_dim: Hidden width of the success head.
        cond_t: Timestep of the clean conditioning frames (Cosmos: ``1e-4``).
        timestep_scale: Multiplier of ``t`` before the DiT's sinusoidal embedding (Cosmos-Predict2: 1).
        flow_shift: Time shift ``t' = s t / (1 + (s - 1) t)`` used in training and sampling (UNKNOWN; 1 = none;
            SD3 uses 3 at 1024 px). The conditioning is learned only at times where the noisy input hides the
            target: the stride-4 residual is sparse and smooth, so at mid times the noisy input already reveals it
            and the actions carry no gradient. The tiny configs use 24 (logit-normal median t 0.96): measured on
            Meta-World, shuffled actions scored the same as real ones at 1 and 0.3 dB worse at 24 (docs/history.md).
        unshifted_fraction: Fraction of training samples whose time skips ``flow_shift`` (UNKNOWN; 0 = none): a
            large shift leaves almost no training at low noise, where the detail of a sample is decided.
        t_sampling: Training time distribution: ``"logit_normal"`` (SD3) or ``"uniform"``.
        logit_mean: Mean of the logit-normal.
        logit_std: Standard deviation of the logit-normal.
        success_loss_weight: Weight of the success BCE next to the flow loss (UNKNOWN).
        prediction_target: What the flow generates: ``"frames"`` (the future latents themselves, as Cosmos does; use
            it with pretrained Cosmos weights) or ``"residual"`` (future latents minus the conditioning frame's latent,
            added back after sampling). Beyond the paper: with ``"residual"`` a zero prediction is exactly the
            copy-last-frame video, so a small model spends its capacity on what moves instead of first learning to
            reproduce the static scene (the tiny CPU configs use it; docs/history.md, round 4, has the measured effect).
        parameterization: What the DiT outputs: ``"velocity"`` (``eps - z0``, Cosmos / rectified flow; use it with
            pretrained Cosmos weights) or ``"data"`` (the clean target ``z0``; the velocity is then
            ``(z_t - z0_hat) / t``, and the loss is the MSE on ``z0``). Beyond the paper: a DiT whose hidden size is
            smaller than a patch (the tiny configs: 128 < 2 * 2 * 48) cannot pass the noise through to predict a
            velocity, but can predict the low-dimensional clean frames (the "x-prediction" argument of JiT, Li & He
            2025); with ``"data"`` + ``"residual"`` a zero output is exactly the copy-last video.
        target_scale: Multiplier of the generated target before noising (divided out after sampling), the role of a
            VAE's ``scaling_factor``: the flow's unit-variance noise must meet a target of about unit variance, or
            most training times have an SNR far below 1 and the model learns only the conditional mean (no motion).
            The frame residual of the embedded Meta-World data at stride 4 has std 0.15 in ``[-1, 1]`` pixels, so
            the tiny configs use 6 (measured: with 1, the denoising loss at ``t = 0.3`` was as high as at ``t = 1``).
        cond_noise: Training-time noise augmentation of the conditioning and history latents (UNKNOWN; Cosmos-style
            conditional augmentation against autoregressive drift): each sample's latents get Gaussian noise whose
            std is ``cond_noise * |n|``, ``n ~ N(0, 1)``; a residual target is taken from the noisy conditioning
            frame, so the model learns to correct the errors of the frame it continues from. 0 disables it.
        action_tokens: Also give every transformer block the actions as extra keys/values (one token per action of
            the chunk, through the memory attention path; beyond the paper). The scalar stream modulates every token
            alike (adaLN), while a token can be read by the image tokens where the motion happens (the gripper).
        cond_concat: Also concatenate the clean conditioning latent (the newest conditioning frame) to the input
            channels of every frame (beyond the paper; see the module docstring). Needs a backbone with those extra
            input channels, so it is off for Cosmos checkpoints.
        prev_concat: Also concatenate the newest history latent (the frame before the conditioning frame; the
            conditioning frame itself where it is missing) to the input channels of every frame (beyond the paper;
            see the module docstring). Needs ``history_length >= 1``; off for Cosmos checkpoints.
        unet_kwargs: ``UNet2DModel`` arguments over :data:`~lightning_prophrl.models.unet_backbone.DEFAULT_UNET`
            (``backbone="unet"``).
        sigma_data: EDM data standard deviation of the generated target (frames in ``[-1, 1]``: 0.5).
        edm_p_mean: Mean of the training ``ln sigma`` (DIAMOND: -0.4).
        edm_p_std: Standard deviation of the training ``ln sigma`` (1.2).
        sigma_min: Smallest sampling noise level (the success head's clean pass also uses it).
        sigma_max: Largest sampling noise level (the 1-step prediction starts there).
        edm_rho: Karras schedule exponent.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        codec: CodecKind = "wan",
        codec_kwargs: dict[str, Any] | None = None,
        num_attention_heads: int = 16,
        attention_head_dim: int = 128,
        num_layers: int = 28,
        mlp_ratio: float = 4.0,
        adaln_lora_dim: int = 256,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        max_size: tuple[int, int, int] = (128, 240, 240),
        rope_scale: tuple[float, float, float] = (1.0, 3.0, 3.0),
        extra_pos_embed_type: str | None = None,
        text_embed_dim: int = 1024,
        null_context: Literal["zero", "learned"] = "zero",
        null_context_tokens: int = 1,
        padding_mask_channel: bool = True,
        rope_fps: float | None = None,
        pretrained_backbone_path: str | None = None,
        action_dim: int = ACTION_DIM,
        action_chunk_length: int = 20,
        action_hidden_dim: int | None = None,
        use_action_frames: bool = True,
        action_frame_channels: int = 256,
        action_frame_style: dict[str, Any] | None = None,
        action_frame_mode: Literal["pooled", "concat", "both"] = "pooled",
        zero_init_conditioning: bool = True,
        history_length: int = 16,
        history_scales: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 4, 4), (4, 8, 8)),
        history_scale_frames: tuple[int, ...] = (2, 6, 8),
        history_pos_dim: int = 64,
        success_head: bool = True,
        success_hidden_dim: int = 256,
        cond_t: float = 1e-4,
        timestep_scale: float = 1.0,
        flow_shift: float = 1.0,
        unshifted_fraction: float = 0.0,
        t_sampling: Literal["logit_normal", "uniform"] = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        success_loss_weight: float = 0.1,
        prediction_target: Literal["frames", "residual"] = "frames",
        parameterization: Literal["velocity", "data"] = "velocity",
        cond_noise: float = 0.0,
        action_tokens: bool = False,
        target_scale: float = 1.0,
        cond_concat: bool = False,
        prev_concat: bool = False,
        backbone: Literal["cosmos", "unet"] = "cosmos",
        unet_kwargs: dict[str, Any] | None = None,
        sigma_data: float = 0.5,
        edm_p_mean: float = -0.4,
        edm_p_std: float = 1.2,
        sigma_min: float = 2e-3,
        sigma_max: float = 5.0,
        edm_rho: float = 7.0,
    ) -> None:
        super().__init__()
        if backbone not in ("cosmos", "unet"):
            raise ValueError(f"`backbone` must be 'cosmos' or 'unet', got {backbone!r}")
        for name, value in (("sigma_data", sigma_data), ("sigma_min", sigma_min), ("sigma_max", sigma_max),
                            ("edm_p_std", edm_p_std), ("edm_rho", edm_rho)):  # fmt: skip
            check_sigma(value, name)
        if sigma_min >= sigma_max:
            raise ValueError(f"`sigma_min` ({sigma_min}) must be below `sigma_max` ({sigma_max})")
        if backbone == "unet" and (action_tokens or pretrained_backbone_path is not None):
            raise ValueError("`action_tokens` and `pretrained_backbone_path` need backbone='cosmos'")
        if not target_scale > 0:
            raise ValueError(f"`target_scale` must be > 0, got {target_scale}")
        if not flow_shift > 0:
            raise ValueError(f"`flow_shift` must be > 0, got {flow_shift}")
        if not 0.0 <= unshifted_fraction <= 1.0:
            raise ValueError(f"`unshifted_fraction` must lie in [0, 1], got {unshifted_fraction}")
        if cond_noise < 0:
            raise ValueError(f"`cond_noise` must be >= 0, got {cond_noise}")
        if parameterization not in ("velocity", "data"):
            raise ValueError(f"`parameterization` must be 'velocity' or 'data', got {parameterization!r}")
        if prediction_target not in ("frames", "residual"):
            raise ValueError(f"`prediction_target` must be 'frames' or 'residual', got {prediction_target!r}")
        if null_context not in ("zero", "learned"):
            raise ValueError(f"`null_context` must be 'zero' or 'learned', got {null_context!r}")
        if action_frame_mode not in ("pooled", "concat", "both"):
            raise ValueError(f"`action_frame_mode` must be 'pooled', 'concat' or 'both', got {action_frame_mode!r}")
        if prev_concat and history_length < 1:
            raise ValueError(f"`prev_concat` needs `history_length` >= 1, got {history_length}")
        if t_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"`t_sampling` must be 'logit_normal' or 'uniform', got {t_sampling!r}")

        # 1. Latent codec (frozen; its architecture is stored in the config, not a path)
        self.latent_codec = build_codec(codec, codec_kwargs)
        if (codec_kwargs or {}).get("pretrained_path") is not None:
            self.register_to_config(codec_kwargs=self.latent_codec.export_kwargs())
        channels = self.latent_codec.latent_channels
        self._state = _ForwardState()
        self._memory = MemoryContext()

        # 2. Backbone: the U-Net over stacked frames, or the DiT
        if backbone == "unet":
            future = self.latent_codec.num_latent_frames(1 + action_chunk_length) - 1
            stacked = channels * (future + 1 + history_length) + history_length  # noisy, current, past + masks
            stacked += channels * future * int(self._concat_action_frames)
            self.unet = build_unet(stacked, channels * future, 64, unet_kwargs)
            hidden = time_embed_dim(self.unet)
            self.unet.mid_block.register_forward_hook(self._keep_last_hidden)
            success_width = int(self.unet.config.block_out_channels[-1])
        else:
            self.transformer = self._build_backbone(channels, pretrained_backbone_path)
            cfg = self.transformer.config
            hidden = success_width = cfg.num_attention_heads * cfg.attention_head_dim
            if tuple(cfg.patch_size)[0] != 1:
                raise ValueError(f"`patch_size` must have a temporal patch of 1, got {tuple(cfg.patch_size)}")
            if null_context == "learned":
                self.null_context_embeds = nn.Parameter(torch.zeros(null_context_tokens, cfg.text_embed_dim))
        self.hidden_size = hidden

        # 3. Dual action conditioning
        self.action_encoder = ScalarActionEncoder(
            action_chunk_length, action_dim, hidden, action_hidden_dim, zero_init_conditioning
        )
        self.frame_style = ActionFrameStyle(**(action_frame_style or {}))
        if use_action_frames and action_frame_mode != "concat":
            self.action_frame_encoder = ActionFrameEncoder(
                channels, action_frame_channels, hidden, zero_init_conditioning
            )

        # 4. History memory (the U-Net stacks the past frames instead)
        if history_length > 0 and backbone == "cosmos":
            self.history_encoder = HistoryEncoder(
                channels, hidden, history_length, history_scales, history_scale_frames, history_pos_dim
            )
        if action_tokens:
            self.action_token_mlp = nn.Sequential(
                nn.Linear(2 * action_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            self.action_token_pos = nn.Parameter(torch.randn(action_chunk_length, hidden) * 0.02)
        if backbone == "cosmos" and (history_length > 0 or action_tokens):
            install_memory_attention(self.transformer, self._memory)

        # 5. Success head
        if success_head:
            self.success_mlp = nn.Sequential(
                nn.LayerNorm(success_width),
                nn.Linear(success_width, success_hidden_dim),
                nn.SiLU(),
                nn.Linear(success_hidden_dim, 1),
            )
            if backbone == "cosmos":
                self.transformer.transformer_blocks[-1].register_forward_hook(self._keep_last_hidden)
        if backbone == "cosmos":
            self.transformer.time_embed.register_forward_hook(self._add_action_embedding)

    @property
    def is_unet(self) -> bool:
        """Whether the backbone is the U-Net (EDM noise levels) rather than the Cosmos DiT (flow times)."""
        return self.config.backbone == "unet"

    @property
    def uses_history(self) -> bool:
        """Whether the model reads past frames (``history_length > 0``)."""
        return int(self.config.history_length) > 0

    @property
    def clean_level(self) -> float:
        """The noise level of a clean pass (the success head's): flow time 0 (DiT) or ``sigma_min`` (U-Net)."""
        return float(self.config.sigma_min) if self.is_unet else 0.0

    def check_frame_size(self, height: int, width: int) -> None:
        """Raise a ``ValueError`` naming the sizes that fit when ``height x width`` frames do not fit the codec and the
        backbone: the DiT's patches and position table, or the U-Net's downsampling (a multiple of ``2 ** (levels -
        1)`` latent pixels)."""
        codec = int(self.latent_codec.spatial_factor)
        if self.is_unet:
            factor = codec * 2 ** (len(self.unet.config.block_out_channels) - 1)
            max_h = max_w = None
        else:
            factor = codec * int(self.transformer.config.patch_size[-1])
            max_h, max_w = (int(m) * codec for m in self.transformer.config.max_size[1:])
        too_big = max_h is not None and (height > max_h or width > max_w)
        if height % factor or width % factor or too_big:
            limit = "" if max_h is None else f", at most {max_h}x{max_w} px"
            raise ValueError(f"frames of {height}x{width} px do not fit the Prophet (multiples of {factor} px{limit})")

    @property
    def _concat_action_frames(self) -> bool:
        return bool(self.config.use_action_frames) and self.config.action_frame_mode in ("concat", "both")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> Prophet:
        """``ModelMixin.from_pretrained`` + copying every tensor out of the safetensors buffer.

        Loaded tensors are views at arbitrary offsets of the file buffer; SIMD kernels then round differently in the
        last bit than for the freshly allocated (aligned) tensors of the saved model. The copy makes reloads exact.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
        return model

    # -----------------------------------------------------------------------------------------------------------------
    # LoRA
    # -----------------------------------------------------------------------------------------------------------------
    def add_lora(
        self,
        rank: int = 16,
        alpha: float | None = None,
        target_modules: tuple[str, ...] | list[str] | None = None,
        dropout: float = 0.0,
        adapter_name: str = "default",
    ) -> None:
        """Add a LoRA adapter (paper: adaptation, rank 16); only adapter parameters stay trainable.

        ``target_modules=None`` picks the backbone's default: the DiT attention projections
        (``DEFAULT_LORA_TARGETS``) or the U-Net's convolutions, noise-embedding projections and attention
        (``UNET_LORA_TARGETS``).

        Save / load with diffusers: ``save_lora_adapter(dir)`` and
        ``load_lora_adapter(dir, weight_name="pytorch_lora_weights.safetensors", prefix=None)``.
        """
        from peft import LoraConfig

        if target_modules is None:
            target_modules = UNET_LORA_TARGETS if self.is_unet else DEFAULT_LORA_TARGETS
        config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(target_modules), lora_dropout=dropout)
        self.add_adapter(config, adapter_name=adapter_name)
