"""Prophet's sampling: one clip from noise (:meth:`generate`, rectified-flow Euler or EDM Heun steps) and autoregressive
rollouts over action chunks with the history memory (:meth:`rollout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_prophrl.models.history import HistoryBuffer
from lightning_prophrl.models.unet_backbone import (
    karras_sigmas,
)


@dataclass
class ProphetGeneration:
    """Output of :meth:`Prophet.generate`.

    Attributes:
        frames: Generated frames ``(B, L, 3, H, W)`` in ``[-1, 1]``.
        latents: Their latents ``(B, C, T_f, h, w)``.
        success_logit: ``(B,)`` success logit of a clean pass over the clip, or None.
    """

    frames: torch.Tensor
    latents: torch.Tensor
    success_logit: torch.Tensor | None


@dataclass
class ProphetRollout:
    """Output of :meth:`Prophet.rollout`.

    Attributes:
        video: ``(B, 1 + S * L, 3, H, W)`` in ``[-1, 1]``: the first frame then every generated segment.
        success_prob: ``(B, S)`` success probability after each segment, or None.
    """

    video: torch.Tensor
    success_prob: torch.Tensor | None


class ProphetSamplingMixin:
    """Sampling of :class:`~lightning_prophrl.models.prophet.Prophet`: ``generate`` (one clip) and ``rollout`` (chunks)."""

    # -----------------------------------------------------------------------------------------------------------------
    # Sampling
    # -----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        cond_frame: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        history_latents: torch.Tensor | None = None,
        ee_poses: torch.Tensor | None = None,
        gripper: torch.Tensor | None = None,
        camera_k: torch.Tensor | None = None,
        camera_extr: torch.Tensor | None = None,
        has_camera: torch.Tensor | None = None,
        num_steps: int = 4,
        generator: torch.Generator | None = None,
        score_success: bool = True,
    ) -> ProphetGeneration:
        """Generate the ``L`` frames that follow ``cond_frame`` under ``actions`` (Euler flow sampling).

        Args:
            cond_frame: Current frame ``(B, 3, H, W)`` in ``[-1, 1]``.
            actions: Normalized action chunk ``(B, L, A)``.
            action_mask: ``(B, A)`` bool.
            history: Past frames ``(B, T_h, 3, H, W)`` (oldest first), or give ``history_latents`` instead.
            history_mask: ``(B, T_h)`` bool.
            history_latents: Per-frame latents ``(B, C, T_h, h, w)`` of past frames.
            ee_poses: ``(B, L, N, 7)`` future end-effector poses for the action-frame stream (optional).
            gripper: ``(B, L, N)`` gripper openings.
            camera_k: ``(B, 3, 3)`` intrinsics.
            camera_extr: ``(B, 4, 4)`` world -> camera.
            has_camera: ``(B,)`` bool.
            num_steps: Euler steps (1 = one-step prediction).
            generator: RNG of the initial noise.
            score_success: Also return the success logit of a clean (``clean_level``) pass over the generated latents.

        Returns:
            :class:`ProphetGeneration` (frames ``(B, L, 3, H, W)``, latents, success logit).
        """
        if cond_frame.ndim != 4 or cond_frame.shape[1] != 3:
            raise ValueError(f"`cond_frame` must have shape (B, 3, H, W), got {tuple(cond_frame.shape)}")
        if num_steps < 1:
            raise ValueError(f"`num_steps` must be >= 1, got {num_steps}")
        # 1. Conditioning
        b, device = cond_frame.shape[0], cond_frame.device
        cond_lat = self.latent_codec.encode(cond_frame[:, None].to(self.dtype))
        if history_latents is None:
            history_latents, history_mask = self.encode_history(history, history_mask)
        af, has_cam = self.encode_action_frames(
            ee_poses, gripper, camera_k, camera_extr, has_camera, tuple(cond_frame.shape[-2:])
        )
        inputs = dict(
            cond_latents=cond_lat,
            actions=actions,
            action_mask=action_mask,
            history_latents=history_latents,
            history_mask=history_mask,
            action_frame_latents=af,
            has_camera=has_cam,
        )
        # 2. Euler integration of the velocity from t = 1 (noise) to t = 0 (U-Net: EDM Euler from sigma_max to 0)
        t_f = self.latent_codec.num_latent_frames(1 + self.config.action_chunk_length) - 1
        shape = (b, cond_lat.shape[1], t_f, *cond_lat.shape[-2:])
        if self.is_unet:
            x = self._sample_edm(shape, num_steps, generator, inputs)
        else:
            x = self._sample_flow(shape, num_steps, generator, inputs)
        # 3. Decode (the conditioning latent is decoded too, for the causal codec) and score
        latents = self._from_target(x, cond_lat)
        frames = self.latent_codec.decode(torch.cat([cond_lat, latents], 2))[:, 1:].clamp(-1, 1)
        logit = None
        if score_success and hasattr(self, "success_mlp"):
            logit = self(x, torch.full((b,), self.clean_level, device=device), **inputs).success_logit
        return ProphetGeneration(frames=frames, latents=latents, success_logit=logit)

    def _sample_flow(
        self, shape: tuple[int, ...], num_steps: int, generator: torch.Generator | None, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """Euler integration of the rectified-flow velocity from ``t = 1`` to 0 (the DiT)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        b, device = shape[0], inputs["cond_latents"].device
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.config.flow_shift)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps), device=device)
        x = _randn(shape, generator, device, inputs["cond_latents"].dtype)
        for i, timestep in enumerate(scheduler.timesteps):
            velocity = self(x, scheduler.sigmas[i].expand(b), **inputs).velocity
            x = scheduler.step(velocity, timestep, x).prev_sample
        return x

    def _sample_edm(
        self, shape: tuple[int, ...], num_steps: int, generator: torch.Generator | None, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """EDM Euler steps on the Karras schedule (the U-Net); one step returns ``D(sigma_max * eps)``."""
        cfg = self.config
        b, device = shape[0], inputs["cond_latents"].device
        sigmas = karras_sigmas(num_steps, cfg.sigma_min, cfg.sigma_max, cfg.edm_rho)
        x = _randn(shape, generator, device, inputs["cond_latents"].dtype) * sigmas[0]
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
            denoised = self(x, torch.full((b,), sigma, device=device), **inputs).prediction
            x = denoised if nxt == 0 else x + (nxt - sigma) * (x - denoised) / sigma
        return x

    def _augment(self, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """``latents + cond_noise * |n| * eps`` with one ``n ~ N(0, 1)`` per sample (see ``cond_noise``)."""
        scale = self.config.cond_noise * _randn((latents.shape[0],), generator, latents.device).abs()
        eps = _randn(latents.shape, generator, latents.device, latents.dtype)
        return latents + scale.view(-1, *[1] * (latents.ndim - 1)).to(latents.dtype) * eps

    def _to_target(self, future_latents: torch.Tensor, cond_latents: torch.Tensor) -> torch.Tensor:
        """Future latents -> the space the flow generates (``prediction_target``, times ``target_scale``)."""
        if self.config.prediction_target == "residual":
            return (future_latents - cond_latents) * self.config.target_scale
        return future_latents * self.config.target_scale

    def _from_target(self, x: torch.Tensor, cond_latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_to_target`."""
        if self.config.prediction_target == "residual":
            return x / self.config.target_scale + cond_latents
        return x / self.config.target_scale

    @torch.no_grad()
    def rollout(
        self,
        first_frame: torch.Tensor,
        action_chunks: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        num_steps: int = 4,
        generator: torch.Generator | None = None,
        ee_poses: torch.Tensor | None = None,
        gripper: torch.Tensor | None = None,
        camera_k: torch.Tensor | None = None,
        camera_extr: torch.Tensor | None = None,
        has_camera: torch.Tensor | None = None,
        score_success: bool = True,
    ) -> ProphetRollout:
        """Segment-wise autoregressive imagination (paper: autoregressive rollout, Algorithm 1).

        Each segment generates ``L`` frames from the current frame; its last frame seeds the next segment and the
        frames before it are pushed into a bounded FIFO history (``history_length`` per-frame latents).

        Args:
            first_frame: ``(B, 3, H, W)`` in ``[-1, 1]``.
            action_chunks: ``(B, S, L, A)`` normalized actions, one chunk per segment.
            action_mask: ``(B, A)`` bool.
            history: Optional frames before ``first_frame`` ``(B, T_h, 3, H, W)``, oldest first.
            history_mask: ``(B, T_h)`` bool.
            num_steps: Euler steps per segment.
            generator: RNG (the rollout is deterministic given it).
            ee_poses: ``(B, S, L, N, 7)`` absolute end-effector poses per segment for the action-frame stream, when
                known (imagined rollouts usually only have actions: then only the scalar stream is used).
            gripper: ``(B, S, L, N)``.
            camera_k: ``(B, 3, 3)``.
            camera_extr: ``(B, 4, 4)``.
            has_camera: ``(B,)`` bool.
            score_success: Return per-segment success probabilities.

        Returns:
            :class:`ProphetRollout` with the video ``(B, 1 + S * L, 3, H, W)`` and success probabilities ``(B, S)``.
        """
        if action_chunks.ndim != 4:
            raise ValueError(f"`action_chunks` must have shape (B, S, L, A), got {tuple(action_chunks.shape)}")
        buffer = HistoryBuffer(self.config.history_length if self.uses_history else 0)
        lat, mask = self.encode_history(history, history_mask)
        if lat is not None:
            buffer.push(lat.transpose(1, 2), mask)
        frames, probs, cond = [first_frame[:, None]], [], first_frame
        for s in range(action_chunks.shape[1]):
            gen = self.generate(
                cond,
                action_chunks[:, s],
                action_mask,
                history_latents=None if buffer.items is None else buffer.items.transpose(1, 2),
                history_mask=buffer.mask,
                ee_poses=None if ee_poses is None else ee_poses[:, s],
                gripper=None if gripper is None else gripper[:, s],
                camera_k=camera_k,
                camera_extr=camera_extr,
                has_camera=has_camera,
                num_steps=num_steps,
                generator=generator,
                score_success=score_success,
            )
            frames.append(gen.frames)
            if gen.success_logit is not None:
                probs.append(torch.sigmoid(gen.success_logit))
            if buffer.capacity > 0:  # frames before the next conditioning frame, newest `capacity` only
                past = torch.cat([cond[:, None], gen.frames[:, :-1]], 1)[:, -buffer.capacity :]
                buffer.push(self.latent_codec.encode_frames(past.to(self.dtype)).transpose(1, 2))
            cond = gen.frames[:, -1]
        return ProphetRollout(video=torch.cat(frames, 1), success_prob=torch.stack(probs, 1) if probs else None)


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal sample drawn on the generator's device (CPU generators work for CUDA tensors)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform ``[0, 1)`` sample drawn on the generator's device, like :func:`_randn`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)
