"""How Prophet's conditioning reaches the backbone: the action-embedding and last-hidden-state hooks, the history
memory, the previous frame, action tokens, the null text context, and the frozen codec's encoding of the history and
of the rendered action frames.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_prophrl.models.action_frames import (
    render_action_frames,
)


class ProphetConditioningMixin:
    """How :class:`~lightning_prophrl.models.prophet.Prophet`'s actions, history and context reach its backbone."""

    # -----------------------------------------------------------------------------------------------------------------
    # Hooks
    # -----------------------------------------------------------------------------------------------------------------
    def _add_action_embedding(self, module: nn.Module, args: tuple, output: tuple) -> tuple:
        extra = self._state.time_extra
        if extra is None:
            return output
        temb, embedded = output
        if embedded.shape[0] != extra.shape[0] * extra.shape[1]:
            raise RuntimeError(
                f"action embedding {tuple(extra.shape)} does not match timesteps {tuple(embedded.shape)}"
            )
        return temb, embedded + extra.reshape(embedded.shape).to(embedded.dtype)

    def _keep_last_hidden(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._state.last_hidden = output

    def _stacked_history(
        self, current: torch.Tensor, history_latents: torch.Tensor | None, history_mask: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """``history_length`` past latents as channels ``(B, C * H, h, w)`` (oldest first, right-aligned; a missing
        frame is the current one) and their validity ``(B, H, h, w)``."""
        b, c, h, w = current.shape
        slots = int(self.config.history_length)
        frames = current[:, :, None].expand(b, c, slots, h, w).clone()
        valid = current.new_zeros(b, slots)
        if history_latents is not None and history_latents.shape[2] > 0:
            past = history_latents[:, :, -slots:].to(current.dtype)
            n = past.shape[2]
            mask = (torch.ones(b, n, device=current.device) if history_mask is None
                    else history_mask[:, -slots:].to(current.device).float())  # fmt: skip
            m = mask.view(b, 1, n, 1, 1).to(current.dtype)
            frames[:, :, slots - n :] = m * past + (1 - m) * current[:, :, None]
            valid[:, slots - n :] = mask.to(current.dtype)
        return [frames.flatten(1, 2), valid.view(b, slots, 1, 1).expand(b, slots, h, w)]

    def _previous_latent(
        self, cond_latents: torch.Tensor, history_latents: torch.Tensor | None, history_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Newest history latent ``(B, C, 1, h, w)``, the newest conditioning latent for samples without one."""
        cur = cond_latents[:, :, -1:].to(self.dtype)
        if history_latents is None or history_latents.shape[2] == 0:
            return cur
        prev = history_latents[:, :, -1:].to(self.dtype)
        if history_mask is None:
            return prev
        valid = history_mask[:, -1].bool().view(-1, 1, 1, 1, 1)
        return torch.where(valid, prev, cur)

    def _with_action_tokens(
        self, memory: tuple[torch.Tensor | None, torch.Tensor | None], actions: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append one token per action ``(B, L, D)`` (masked action + mask, MLP, + position) to the memory tokens."""
        b, length, a = actions.shape
        m = torch.ones(b, a, dtype=actions.dtype, device=actions.device) if mask is None else mask.to(actions.dtype)
        x = torch.cat([actions * m[:, None], m[:, None].expand(b, length, a)], -1)
        tokens = self.action_token_mlp(x) + self.action_token_pos[None]
        valid = torch.ones(b, length, dtype=torch.bool, device=actions.device)
        if memory[0] is None:
            return tokens, valid
        return torch.cat([memory[0], tokens.to(memory[0].dtype)], 1), torch.cat([memory[1], valid], 1)

    def _null_context(self, batch_size: int, like: torch.Tensor) -> torch.Tensor:
        """Zeroed text context ``(B, null_context_tokens, text_embed_dim)`` (paper: no text conditioning)."""
        if hasattr(self, "null_context_embeds"):
            return self.null_context_embeds[None].expand(batch_size, -1, -1).to(like.dtype)
        return like.new_zeros(batch_size, self.config.null_context_tokens, self.transformer.config.text_embed_dim)

    # -----------------------------------------------------------------------------------------------------------------
    # Pixel-space inputs -> latents (the codec is frozen: always without gradients)
    # -----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_history(
        self, history: torch.Tensor | None, history_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-frame latents of past frames ``(B, T_h, 3, H, W)`` -> ``((B, C, T_h, h, w), mask (B, T_h))``.

        Returns ``(None, None)`` when the model has no memory or ``history`` is None / empty.
        """
        if history is None or not self.uses_history or history.shape[1] == 0:
            return None, None
        history = history[:, -self.config.history_length :]
        if history_mask is not None:
            history_mask = history_mask[:, -self.config.history_length :].bool()
        return self.latent_codec.encode_frames(history.to(self.dtype)), history_mask

    @torch.no_grad()
    def encode_action_frames(
        self,
        ee_poses: torch.Tensor | None,
        gripper: torch.Tensor | None,
        camera_k: torch.Tensor | None,
        camera_extr: torch.Tensor | None,
        has_camera: torch.Tensor | None,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Render and encode the action-frame video, aligned with the future latents.

        Args:
            ee_poses: ``(B, L, N, 7)`` future end-effector poses (xyz + quaternion wxyz, world frame) or None.
            gripper: ``(B, L, N)`` openings in ``[0, 1]``.
            camera_k: ``(B, 3, 3)`` intrinsics in pixels of the frame ``size``.
            camera_extr: ``(B, 4, 4)`` world -> camera (OpenCV).
            has_camera: ``(B,)`` bool (default all True).
            size: Frame ``(H, W)``.

        Returns:
            ``(latents (B, C, T_f, h, w), has_camera (B,))``, or ``(None, None)`` when the stream is disabled, inputs
            are missing or no sample has a camera. A copy of the first action frame is prepended before encoding so
            that ``1 + L`` frames fit the codec; its latent is dropped.
        """
        if not self.config.use_action_frames or ee_poses is None or camera_k is None or camera_extr is None:
            return None, None
        if gripper is None:
            raise ValueError("`gripper` is required with `ee_poses` for the action-frame stream")
        b = ee_poses.shape[0]
        has_camera = (
            torch.ones(b, dtype=torch.bool, device=ee_poses.device) if has_camera is None else has_camera.bool()
        )
        if not bool(has_camera.any()):
            return None, None
        frames = render_action_frames(ee_poses, gripper, camera_k, camera_extr, *size, style=self.frame_style)
        frames = torch.cat([frames[:, :1], frames], 1).to(self.dtype)
        return self.latent_codec.encode(frames)[:, :, 1:], has_camera
