"""The convolutional Prophet backbone (``Prophet(backbone="unet")``): a diffusers ``UNet2DModel`` under EDM.

The design keeps 64 px frames sharp on a CPU budget (the DIAMOND recipe, Alonso et al. 2024, with GameNGen's context
noise augmentation):

* **Frames as channels.** One 2-D U-Net sees, stacked along channels at full resolution, the noisy future frames, the
  clean current frame, the ``history_length`` past frames (oldest first; a missing frame is replaced by the current
  one and flagged in one mask channel per slot) and, with ``action_frame_mode`` ``"concat"``/``"both"``, the rendered
  action frames of the future. Convolutions copy what does not move and move what does, at the pixel, where a
  patchified transformer of the same size can only output blurred patch means.
* **Actions through the adaptive norms.** The action-chunk MLP (and the pooled action-frame vector) is added to the
  noise-level embedding (``class_embed_type="identity"``) that scales and shifts every ResNet block's group norm
  (``resnet_time_scale_shift="scale_shift"``).
* **EDM preconditioning** (Karras et al. 2022): ``D(x; s) = c_skip x + c_out F(c_in x, c_noise)`` with
  ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)``; training noise
  levels ``ln s ~ N(p_mean, p_std^2)``, loss weight ``(s^2 + sd^2) / (s sd)^2``; sampling with Euler steps on the
  Karras schedule from ``sigma_max`` (1 step returns ``D(sigma_max * eps)``, the conditional mean).
* **Success head** on the bottleneck: the spatial mean of the middle block's output through an MLP.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import UNet2DModel

# A ~4 M parameter U-Net for 64 px: attention only at 8 x 8 (the lowest resolution) and in the middle block.
DEFAULT_UNET: dict[str, Any] = {
    "block_out_channels": [32, 64, 96, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 32,
    "norm_num_groups": 16,
}
UNET_LORA_TARGETS = ("conv1", "conv2", "time_emb_proj", "to_q", "to_k", "to_v", "to_out.0")
NOISE_SCALE = 250.0  # c_noise = ln(s) / 4 is fed to the sinusoidal embedding as 1000 * c_noise


def build_unet(in_channels: int, out_channels: int, sample_size: int, kwargs: dict[str, Any] | None) -> UNet2DModel:
    """``UNet2DModel`` with the Prophet conventions (action vector added to the noise embedding, scale-shift norms);
    ``kwargs`` override :data:`DEFAULT_UNET` (any ``UNet2DModel`` argument but the channel counts and conditioning)."""
    cfg = {**DEFAULT_UNET, **(kwargs or {})}
    fixed = {"in_channels", "out_channels", "class_embed_type", "resnet_time_scale_shift", "time_embedding_type"}
    clash = fixed & set(kwargs or {})
    if clash:
        raise ValueError(f"`unet_kwargs` may not set {sorted(clash)}: Prophet sets them")
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        cfg[key] = tuple(cfg[key])
    return UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                       class_embed_type="identity", resnet_time_scale_shift="scale_shift",
                       time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, **cfg)  # fmt: skip


def time_embed_dim(unet: UNet2DModel) -> int:
    """Width of the U-Net's noise embedding (and so of the action vector added to it)."""
    return int(unet.config.block_out_channels[0]) * 4


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """``(c_skip, c_out, c_in, c_noise)`` of EDM for noise levels ``sigma`` (any shape)."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1.0 / var.sqrt()
    c_noise = NOISE_SCALE * sigma.log()
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """``(s^2 + sd^2) / (s sd)^2``: makes the loss on ``D`` the unit-weighted loss on the network's own target."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """The ``num_steps`` noise levels of the Karras schedule from ``sigma_max`` down to ``sigma_min``, then 0."""
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1, got {num_steps}")
    if num_steps == 1:
        return [sigma_max, 0.0]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    ramp = [hi + i / (num_steps - 1) * (lo - hi) for i in range(num_steps)]
    return [r**rho for r in ramp] + [0.0]


def log_normal_sigmas(n: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """Training noise levels ``exp(p_mean + p_std * n)`` from standard normal ``n``."""
    return torch.exp(p_mean + p_std * n)


def check_sigma(value: float, name: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"`{name}` must be a positive finite number, got {value}")
    return value
