"""Prophet's forward pass: the Cosmos DiT over the conditioning and noisy future latents, with the action embedding,
action-frame channels, memory and success head, or the U-Net over the stacked frames under EDM preconditioning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import CosmosTransformer3DModel

from lightning_prophrl.models.unet_backbone import (
    edm_coefficients,
)

_MIN_T = 1e-3  # smallest t in the data -> velocity conversion of parameterization="data"

_BACKBONE_KEYS = (
    "num_attention_heads",
    "attention_head_dim",
    "num_layers",
    "mlp_ratio",
    "adaln_lora_dim",
    "patch_size",
    "max_size",
    "rope_scale",
    "extra_pos_embed_type",
    "text_embed_dim",
)


@dataclass
class ProphetOutput:
    """Output of :meth:`Prophet.forward`.

    Attributes:
        velocity: Predicted velocity of the future latents ``(B, C, T_f, h, w)``.
        success_logit: ``(B,)`` success / task-progress logit, or None without a success head.
        prediction: The network's raw output (the velocity, or the clean target under ``parameterization="data"``).
    """

    velocity: torch.Tensor
    success_logit: torch.Tensor | None
    prediction: torch.Tensor | None = None


@dataclass
class _ForwardState:
    time_extra: torch.Tensor | None = None  # (B, T, D) added to the embedded timestep
    last_hidden: torch.Tensor | None = None  # (B, N, D) output of the last DiT block

    def __getstate__(self) -> dict:  # transient: copies and pickles of a model start empty
        return {"time_extra": None, "last_hidden": None}


class ProphetForwardMixin:
    """The backbone and forward pass of :class:`~lightning_prophrl.models.prophet.Prophet` (Cosmos DiT or U-Net)."""

    # -----------------------------------------------------------------------------------------------------------------
    # Forward
    # -----------------------------------------------------------------------------------------------------------------
    def forward(
        self,
        noisy_latents: torch.Tensor,
        timestep: torch.Tensor,
        cond_latents: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        history_latents: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        action_frame_latents: torch.Tensor | None = None,
        has_camera: torch.Tensor | None = None,
    ) -> ProphetOutput:
        """Predict the rectified-flow velocity of the future latents.

        Args:
            noisy_latents: ``z_t`` of the future latents ``(B, C, T_f, h, w)``.
            timestep: ``t`` in ``[0, 1]``, shape ``(B,)`` or scalar (1 = pure noise).
            cond_latents: Clean conditioning latents ``(B, C, T_c, h, w)`` (the current frame).
            actions: Normalized action chunk ``(B, L, A)``.
            action_mask: ``(B, A)`` bool, real action dimensions (default all).
            history_latents: Per-frame latents of past frames ``(B, C, T_h, h, w)``, oldest first (optional).
            history_mask: ``(B, T_h)`` bool, False for missing frames.
            action_frame_latents: Codec latents of the action-frame video aligned with the future latents
                ``(B, C, T_f, h, w)`` (optional; see :meth:`encode_action_frames`).
            has_camera: ``(B,)`` bool, samples whose action frames are used (default all when given).

        Returns:
            :class:`ProphetOutput` with the velocity ``(B, C, T_f, h, w)`` and the success logit ``(B,)``.
        """
        b, c, t_f, h, w = noisy_latents.shape
        if cond_latents.ndim != 5 or cond_latents.shape[:2] != (b, c) or cond_latents.shape[-2:] != (h, w):
            raise ValueError(
                f"`cond_latents` {tuple(cond_latents.shape)} does not match `noisy_latents` {noisy_latents.shape}"
            )
        t_c = cond_latents.shape[2]
        timestep = torch.as_tensor(timestep, device=noisy_latents.device, dtype=torch.float32).reshape(-1).expand(b)
        if action_frame_latents is not None and action_frame_latents.shape != noisy_latents.shape:
            raise ValueError(
                f"`action_frame_latents` must have shape {tuple(noisy_latents.shape)}, got {action_frame_latents.shape}"
            )
        if self.is_unet:
            return self._forward_unet(noisy_latents, timestep, cond_latents, actions, action_mask, history_latents,
                                      history_mask, action_frame_latents, has_camera)  # fmt: skip

        # 1. Action embedding per latent frame: f_sa everywhere, + f_af on the future frames of camera samples
        extra = self.action_encoder(actions, action_mask)[:, None].expand(b, t_c + t_f, self.hidden_size)
        if action_frame_latents is not None and hasattr(self, "action_frame_encoder"):
            f_af = self.action_frame_encoder(action_frame_latents)  # (B, T_f, D)
            if has_camera is not None:
                f_af = torch.where(has_camera.bool().view(b, 1, 1), f_af, torch.zeros_like(f_af))
            extra = torch.cat([extra[:, :t_c], extra[:, t_c:] + f_af], 1)

        # 2. History memory (+ action tokens)
        memory = (None, None)
        if history_latents is not None and hasattr(self, "history_encoder"):
            memory = self.history_encoder(history_latents, history_mask)
        if hasattr(self, "action_token_mlp"):
            memory = self._with_action_tokens(memory, actions, action_mask)
        self._memory.set(*memory)

        # 3. Video2World input: [cond, noisy] + condition mask (+ zero padding mask); per-frame timesteps
        latents = torch.cat([cond_latents, noisy_latents], 2).to(self.dtype)
        frame_is_cond = torch.arange(t_c + t_f, device=latents.device) < t_c
        channels = [latents]
        if self._concat_action_frames:  # zeros on the conditioning frames and for samples without a camera
            af = latents.new_zeros(b, c, t_c + t_f, h, w)
            if action_frame_latents is not None:
                keep = torch.ones(b, dtype=torch.bool, device=latents.device) if has_camera is None else has_camera
                af[:, :, t_c:] = action_frame_latents.to(af.dtype) * keep.bool().view(b, 1, 1, 1, 1).to(af.dtype)
            channels.append(af)
        if self.config.cond_concat:  # the current frame at every frame's position (SVD-style image conditioning)
            channels.append(cond_latents[:, :, -1:].to(latents.dtype).expand(b, c, t_c + t_f, h, w))
        if self.config.prev_concat:  # the frame before it (motion of the last step); the current one where missing
            channels.append(
                self._previous_latent(cond_latents, history_latents, history_mask).expand(-1, -1, t_c + t_f, -1, -1)
            )
        channels.append(frame_is_cond.to(latents.dtype).view(1, 1, -1, 1, 1).expand(b, 1, -1, h, w))
        if self.config.padding_mask_channel:
            channels.append(latents.new_zeros(b, 1, t_c + t_f, h, w))
        t_frames = torch.where(
            frame_is_cond[None], torch.full_like(timestep[:, None], self.config.cond_t), timestep[:, None]
        )
        t_frames = (t_frames * self.config.timestep_scale).view(b, 1, -1, 1, 1).to(self.dtype)

        # 4. DiT with the action hook active
        context = self._null_context(b, latents)
        self._state.time_extra = extra
        try:
            out = self.transformer(
                torch.cat(channels, 1), t_frames, context, fps=self.config.rope_fps, return_dict=False
            )[0]
        finally:
            self._state.time_extra = None
            if not self.transformer.gradient_checkpointing:  # checkpointed blocks re-read the memory in backward
                self._memory.set(None, None)

        # 5. Outputs: future velocity and the success logit from the last block's future tokens
        logit = None
        if hasattr(self, "success_mlp"):
            hidden = self._state.last_hidden
            self._state.last_hidden = None
            tokens_per_frame = hidden.shape[1] // (t_c + t_f)
            logit = self.success_mlp(hidden[:, t_c * tokens_per_frame :].mean(1)).squeeze(-1)
        pred = out[:, :, t_c:]
        velocity = pred
        if self.config.parameterization == "data":  # z_t = (1 - t) z0 + t eps  =>  v = eps - z0 = (z_t - z0) / t
            t_b = timestep.clamp_min(_MIN_T).view(b, 1, 1, 1, 1).to(pred.dtype)
            velocity = (noisy_latents.to(pred.dtype) - pred) / t_b
        return ProphetOutput(velocity=velocity, success_logit=logit, prediction=pred)

    def _forward_unet(
        self,
        noisy: torch.Tensor,
        sigma: torch.Tensor,
        cond_latents: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor | None,
        history_latents: torch.Tensor | None,
        history_mask: torch.Tensor | None,
        action_frame_latents: torch.Tensor | None,
        has_camera: torch.Tensor | None,
    ) -> ProphetOutput:
        """The U-Net forward (``timestep`` is the EDM noise level ``sigma``); see :mod:`..unet_backbone`."""
        b, c, t_f, h, w = noisy.shape
        if bool((sigma <= 0).any()):
            raise ValueError("the U-Net backbone needs noise levels sigma > 0 (use `clean_level` for a clean pass)")
        # 1. Action vector: the chunk MLP + the pooled action frames (camera samples), added to the noise embedding
        emb = self.action_encoder(actions, action_mask)
        if action_frame_latents is not None and hasattr(self, "action_frame_encoder"):
            f_af = self.action_frame_encoder(action_frame_latents).mean(1)
            if has_camera is not None:
                f_af = torch.where(has_camera.bool().view(b, 1), f_af, torch.zeros_like(f_af))
            emb = emb + f_af
        # 2. Stacked input: c_in * noisy future, current frame, past frames (+ their masks), action frames
        c_skip, c_out, c_in, c_noise = (x.view(b, 1, 1, 1).to(self.dtype) for x in
                                        edm_coefficients(sigma.to(torch.float32), self.config.sigma_data))  # fmt: skip
        x = noisy.to(self.dtype).flatten(1, 2)
        current = cond_latents[:, :, -1].to(self.dtype)
        parts = [c_in * x, current]
        if self.uses_history:
            parts += self._stacked_history(current, history_latents, history_mask)
        if self._concat_action_frames:
            af = x.new_zeros(b, c * t_f, h, w)
            if action_frame_latents is not None:
                keep = torch.ones(b, dtype=torch.bool, device=x.device) if has_camera is None else has_camera.bool()
                af = action_frame_latents.to(x.dtype).flatten(1, 2) * keep.view(b, 1, 1, 1).to(x.dtype)
            parts.append(af)
        out = self.unet(torch.cat(parts, 1), c_noise.view(b), class_labels=emb.to(self.dtype)).sample
        pred = (c_skip * x + c_out * out).view(b, c, t_f, h, w)
        # 3. Success logit from the middle block
        logit = None
        if hasattr(self, "success_mlp"):
            hidden = self._state.last_hidden
            self._state.last_hidden = None
            logit = self.success_mlp(hidden.mean((-2, -1))).squeeze(-1)
        velocity = (noisy.to(pred.dtype) - pred) / sigma.view(b, 1, 1, 1, 1).to(pred.dtype)  # dx / dsigma
        return ProphetOutput(velocity=velocity, success_logit=logit, prediction=pred)

    def _build_backbone(self, channels: int, path: str | None) -> CosmosTransformer3DModel:
        """Build the Cosmos DiT from the config, or load it from ``path`` (config-only args then follow the file)."""
        cfg = self.config
        extra = 1 + int(cfg.padding_mask_channel)  # condition mask (+ zero padding mask)
        concat = int(self._concat_action_frames) + int(bool(cfg.cond_concat)) + int(bool(cfg.prev_concat))
        frames_in = channels * concat  # extra input latents
        if path is None:
            kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in _BACKBONE_KEYS}
            return CosmosTransformer3DModel(
                in_channels=channels + frames_in + extra, out_channels=channels, concat_padding_mask=False, **kwargs
            )
        subfolder = "transformer" if (Path(path) / "transformer" / "config.json").exists() else None
        loaded_cfg = CosmosTransformer3DModel.load_config(path, subfolder=subfolder)
        effective = loaded_cfg["in_channels"] + int(bool(loaded_cfg.get("concat_padding_mask", False)))
        pad = effective - channels - frames_in - 1  # Cosmos' own padding-mask channel becomes our zero padding channel
        if pad not in (0, 1) or loaded_cfg["out_channels"] != channels:
            raise ValueError(
                f"backbone at `pretrained_backbone_path`={path} has {effective} inputs / {loaded_cfg['out_channels']} "
                f"outputs; the codec gives {channels} latent channels (+ {frames_in} action-frame / cond_concat / "
                "prev_concat channels, + condition mask, + optional padding mask)"
            )
        model = CosmosTransformer3DModel.from_pretrained(
            path, subfolder=subfolder, concat_padding_mask=False, in_channels=effective
        )
        arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if k in _BACKBONE_KEYS}
        self.register_to_config(pretrained_backbone_path=None, padding_mask_channel=bool(pad), **arch)
        return model
