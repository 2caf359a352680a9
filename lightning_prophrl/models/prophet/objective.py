"""Prophet's training objective: the noise-level / time distribution and the loss on the future frames (rectified flow
for the Cosmos backbone, EDM for the U-Net), with the success head's BCE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lightning_prophrl.constants import (
    ACTION_MASK,
    ACTIONS,
    CLIP_SUCCESS,
)
from lightning_prophrl.models.prophet.sampling import _rand, _randn
from lightning_prophrl.models.unet_backbone import (
    edm_loss_weight,
    log_normal_sigmas,
)


class ProphetObjectiveMixin:
    """The training objective of :class:`~lightning_prophrl.models.prophet.Prophet` (``sample_t``, ``training_loss``)."""

    def sample_t(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training noise ``(B,)``: flow times in ``(0, 1)`` (DiT: logit-normal or uniform, then shifted by
        ``flow_shift``) or EDM noise levels (U-Net: log-normal)."""
        cfg = self.config
        if self.is_unet:
            return log_normal_sigmas(_randn((batch_size,), generator, device), cfg.edm_p_mean, cfg.edm_p_std)
        if cfg.t_sampling == "uniform":
            t = _rand((batch_size,), generator, device)
        else:
            t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * _randn((batch_size,), generator, device))
        shifted = cfg.flow_shift * t / (1 + (cfg.flow_shift - 1) * t)
        if cfg.unshifted_fraction <= 0:
            return shifted
        keep = _rand((batch_size,), generator, device) < cfg.unshifted_fraction
        return torch.where(keep, t, shifted)

    # -----------------------------------------------------------------------------------------------------------------
    # Training objective
    # -----------------------------------------------------------------------------------------------------------------
    def training_loss(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rectified-flow loss on the future latents + weighted success BCE.

        Args:
            batch: Keys from :mod:`lightning_prophrl.constants`: ``COND_FRAME`` ``(B, 3, H, W)``, ``FUTURE``
                ``(B, L, 3, H, W)``, ``ACTIONS`` ``(B, L, A)`` (required); ``ACTION_MASK``, ``HISTORY``,
                ``HISTORY_MASK``, ``EE_POSES``, ``GRIPPER``, ``CAMERA_K``, ``CAMERA_EXTR``, ``HAS_CAMERA``,
                ``CLIP_SUCCESS`` (optional). Frames in ``[-1, 1]``. Pre-encoded latents
                (batch keys in :mod:`lightning_prophrl.constants`, ``LATENT_COND`` / ``LATENT_FUTURE`` / ``LATENT_HISTORY`` /
                ``LATENT_ACTION_FRAMES``) stand in for the frames and skip the codec (see ``clip_latents``).
            generator: RNG of ``t`` and the noise (for reproducible losses).

        Returns:
            ``(loss, logs)`` with logs ``loss``, ``flow_loss`` and, with ``CLIP_SUCCESS``, ``success_loss`` and
            ``success_acc`` (detached).
        """
        # 1. Inputs: the clip's latents, encoded here or pre-encoded by `prophrl-data encode` (`clip_latents`)
        if ACTIONS not in batch:
            raise KeyError(f"batch is missing the required key {ACTIONS!r}")
        actions = batch[ACTIONS]
        cond_lat, future_lat, hist, hist_mask, size = self.clip_latents(batch)
        if self.training and self.config.cond_noise > 0:  # drift augmentation of what the model continues from
            cond_lat = self._augment(cond_lat, generator)
            hist = None if hist is None else self._augment(hist, generator)
        z0 = self._to_target(future_lat, cond_lat)
        af, has_cam = self.clip_action_frames(batch, size)

        # 2. Rectified flow: z_t = (1 - t) z0 + t eps, target v = eps - z0 (z0 in the `prediction_target` space);
        #    U-Net: EDM, x = z0 + sigma eps, weighted loss on the denoised z0
        t = self.sample_t(z0.shape[0], z0.device, generator)
        noise = _randn(z0.shape, generator, z0.device, z0.dtype)
        t_b = t.view(-1, 1, 1, 1, 1).to(z0.dtype)
        noisy = z0 + t_b * noise if self.is_unet else (1 - t_b) * z0 + t_b * noise
        out = self(noisy, t, cond_lat, actions, batch.get(ACTION_MASK), hist, hist_mask, af, has_cam)
        if self.is_unet:
            weight = edm_loss_weight(t, self.config.sigma_data).view(-1, 1, 1, 1, 1)
            flow_loss = (weight * (out.prediction.float() - z0.float()) ** 2).mean()
        elif self.config.parameterization == "data":
            flow_loss = F.mse_loss(out.prediction.float(), z0.float())
        else:
            flow_loss = F.mse_loss(out.velocity.float(), (noise - z0).float())

        # 3. Success head
        loss, logs = flow_loss, {"flow_loss": flow_loss.detach()}
        if out.success_logit is not None and CLIP_SUCCESS in batch:
            target = batch[CLIP_SUCCESS].float().view(-1)
            success_loss = F.binary_cross_entropy_with_logits(out.success_logit.float(), target)
            loss = loss + self.config.success_loss_weight * success_loss
            logs["success_loss"] = success_loss.detach()
            logs["success_acc"] = ((out.success_logit > 0).float() == target).float().mean()
        logs["loss"] = loss.detach()
        return loss, logs
