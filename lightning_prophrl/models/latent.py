"""Latent codecs of the Prophet world model: videos in ``[-1, 1]`` <-> latents ``(B, C, T', h, w)``.

Two codecs share one interface (:class:`LatentCodec`):

* :class:`PixelShuffleCodec` is a **pixel-space** codec: a fixed, parameter-free space-to-depth
  (``pixel_unshuffle``) with no temporal compression. It is exactly invertible and is the CPU default for the
  embedded Meta-World setting at 64-128 px.
* :class:`WanVAECodec` wraps diffusers' ``AutoencoderKLWan`` (the Wan2.1 video VAE used by Cosmos-Predict2): a
  **learned latent space** with 4x temporal and 8x spatial compression (for the standard config), either loaded
  from a local pretrained directory or built from a (tiny) config with random weights. It is causal in time: a video
  of ``1 + 4k`` frames gives ``1 + k`` latent frames and the first latent frame depends on the first frame only.

Both are frozen by default (``trainable=False``): Prophet trains in a fixed latent space.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

CodecKind = Literal["pixel", "wan"]


def _check_video(video: torch.Tensor, name: str = "video") -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"`{name}` must have shape (B, T, 3, H, W), got {tuple(video.shape)}")


class LatentCodec(nn.Module):
    """Common interface of the latent codecs.

    Subclasses set ``latent_channels``, ``temporal_factor`` and ``spatial_factor`` and implement
    :meth:`_encode` / :meth:`_decode` on channel-first videos ``(B, 3, T, H, W)``.
    """

    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    frame_independent: bool = False  # each frame's latent depends on that frame only (no temporal mixing)

    def num_latent_frames(self, num_frames: int) -> int:
        """Number of latent frames for a video of ``num_frames`` frames (must be ``1 + temporal_factor * k``)."""
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor != 0:
            raise ValueError(
                f"{type(self).__name__} needs 1 + {self.temporal_factor} * k frames, got num_frames={num_frames}"
            )
        return 1 + (num_frames - 1) // self.temporal_factor

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial latent size ``(h, w)`` of frames of size ``(height, width)``."""
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(
                f"frame size ({height}, {width}) must be divisible by the codec's spatial factor {self.spatial_factor}"
            )
        return height // self.spatial_factor, width // self.spatial_factor

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a video clip.

        Args:
            video: ``(B, T, 3, H, W)`` in ``[-1, 1]`` with ``T = 1 + temporal_factor * k``.

        Returns:
            Latents ``(B, C, 1 + k, H / s, W / s)``.
        """
        _check_video(video)
        self.num_latent_frames(video.shape[1])
        self.latent_size(video.shape[-2], video.shape[-1])
        return self._encode(video.transpose(1, 2))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents ``(B, C, T', h, w)`` to a video ``(B, 1 + temporal_factor * (T' - 1), 3, H, W)``."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"`latents` must have shape (B, {self.latent_channels}, T, h, w), got {latents.shape}")
        return self._decode(latents).transpose(1, 2)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode every frame independently as a one-frame video (used for the history memory).

        Args:
            frames: ``(B, T, 3, H, W)`` in ``[-1, 1]``, any ``T >= 1``.

        Returns:
            Per-frame latents ``(B, C, T, h, w)``.
        """
        _check_video(frames, "frames")
        b, t = frames.shape[:2]
        latents = self.encode(frames.flatten(0, 1).unsqueeze(1))  # (B*T, C, 1, h, w)
        return latents.squeeze(2).unflatten(0, (b, t)).transpose(1, 2)

    def export_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild this codec's architecture without any external file."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A 16-hex-digit hash of what this codec computes: its class, its config (``export_kwargs`` but
        ``trainable``) and every state tensor (name, dtype, shape, bytes). Stored beside pre-encoded latents
        (``prophrl-data encode``) and compared before they are used.

        Cached until a state tensor is replaced, changes dtype or is loaded (``load_state_dict``): the cache does not
        look at the values, so it survives a device move and FSDP's re-pointing of the weights at each forward.
        """
        state = {**self.state_dict(keep_vars=True), **dict(self.named_buffers())}
        key = tuple((n, id(t), t.dtype) for n, t in sorted(state.items()))
        cached = self.__dict__.get("_fingerprint_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        config = {k: v for k, v in self.export_kwargs().items() if k != "trainable"}
        h = hashlib.sha256(json.dumps([type(self).__name__, config], sort_keys=True, default=str).encode())
        for name, tensor in sorted(state.items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self.__dict__["_fingerprint_cache"] = (key, h.hexdigest()[:16])
        return self.__dict__["_fingerprint_cache"][1]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.pop("_fingerprint_cache", None)  # new values in the same tensors
        super()._load_from_state_dict(*args, **kwargs)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelShuffleCodec(LatentCodec):
    """Pixel-space codec: fixed space-to-depth, no parameters, exactly invertible, no temporal compression.

    ``latents = scale * pixel_unshuffle(frame, factor)`` frame by frame, so ``C = 3 * factor**2``.

    Args:
        factor: Spatial down-sampling factor (the latent grid is ``H / factor x W / factor``).
        scale: Multiplier applied to the pixel values (1.0 keeps them in ``[-1, 1]``).
    """

    def __init__(self, factor: int = 4, scale: float = 1.0) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"`factor` must be >= 1, got {factor}")
        if scale <= 0:
            raise ValueError(f"`scale` must be > 0, got {scale}")
        self.factor, self.scale = factor, scale
        self.latent_channels, self.temporal_factor, self.spatial_factor = 3 * factor**2, 1, factor
        self.frame_independent = True

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        x = F.pixel_unshuffle(video.transpose(1, 2).flatten(0, 1), self.factor)  # (B*T, C', h, w)
        return (x.unflatten(0, (b, t)).transpose(1, 2) * self.scale).contiguous()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t = latents.shape[:3]
        x = F.pixel_shuffle(latents.transpose(1, 2).flatten(0, 1) / self.scale, self.factor)
        return x.unflatten(0, (b, t)).transpose(1, 2).contiguous()

    def export_kwargs(self) -> dict[str, Any]:
        return {"factor": self.factor, "scale": self.scale}


class WanVAECodec(LatentCodec):
    """Learned latent space: diffusers ``AutoencoderKLWan`` (Wan2.1 VAE, the native VAE of Cosmos-Predict2).

    Latents are normalized per channel with the VAE config's ``latents_mean`` / ``latents_std`` (as the Cosmos
    pipelines do). Time is compressed 4x causally: ``1 + 4k`` frames -> ``1 + k`` latents.

    Args:
        pretrained_path: Local directory of a diffusers ``AutoencoderKLWan`` (``config.json`` + weights); a pipeline
            root with a ``vae/`` sub-folder also works. ``None`` builds ``vae_config`` with random weights.
        vae_config: ``AutoencoderKLWan`` constructor kwargs used when ``pretrained_path`` is None (``None`` = the full
            Wan2.1 architecture; tests use e.g. ``{"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1, 1]}``).
        sample_posterior: Sample the posterior instead of taking its mean (mode). Off = deterministic codec.
        trainable: Keep the VAE parameters trainable (default frozen).
    """

    def __init__(
        self,
        pretrained_path: str | None = None,
        vae_config: dict[str, Any] | None = None,
        sample_posterior: bool = False,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        # 1. Build or load the VAE
        if pretrained_path is not None:
            from pathlib import Path

            subfolder = "vae" if (Path(pretrained_path) / "vae" / "config.json").exists() else None
            self.vae = AutoencoderKLWan.from_pretrained(pretrained_path, subfolder=subfolder)
        else:
            vae_config = dict(vae_config or {})
            z_dim = vae_config.get("z_dim", 16)
            if z_dim != 16:  # Wan2.1's statistics are for 16 channels: identity normalization for other sizes
                vae_config.setdefault("latents_mean", [0.0] * z_dim)
                vae_config.setdefault("latents_std", [1.0] * z_dim)
            self.vae = AutoencoderKLWan(**vae_config)
        cfg = self.vae.config

        # 2. Compression factors (Wan's encoder consumes time in chunks of 4 frames: exactly two temporal downsamples)
        if sum(bool(x) for x in cfg.temperal_downsample) != 2:
            raise ValueError(
                f"`vae_config.temperal_downsample` must hold exactly two True, got {cfg.temperal_downsample}"
            )
        self.latent_channels, self.temporal_factor = cfg.z_dim, 4
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * (cfg.patch_size or 1)
        self.sample_posterior = sample_posterior
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError("`vae_config.latents_mean` / `latents_std` must have z_dim entries")
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)

        # 3. Freeze
        self.trainable = trainable
        if not trainable:
            self.vae.requires_grad_(False)
            self.vae.eval()

    def train(self, mode: bool = True) -> WanVAECodec:
        """Keep a frozen VAE in eval mode whatever the parent module does."""
        super().train(mode)
        if not self.trainable:
            self.vae.eval()
        return self

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        z = dist.sample() if self.sample_posterior else dist.mode()
        return (z - self.latents_mean.to(z)) / self.latents_std.to(z)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents * self.latents_std.to(latents) + self.latents_mean.to(latents)
        return self.vae.decode(z.to(self.vae.dtype)).sample

    def export_kwargs(self) -> dict[str, Any]:
        vae_config = {k: v for k, v in self.vae.config.items() if not k.startswith("_")}
        return {"vae_config": vae_config, "sample_posterior": self.sample_posterior, "trainable": self.trainable}


def action_frame_fingerprint(codec: LatentCodec, style: dict[str, Any]) -> str:
    """Fingerprint of encoded action frames: the codec's and the drawing style's (``ActionFrameStyle`` fields)."""
    text = json.dumps([codec.fingerprint(), style], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_codec(kind: CodecKind, kwargs: dict[str, Any] | None = None) -> LatentCodec:
    """Build a codec by name: ``"pixel"`` -> :class:`PixelShuffleCodec`, ``"wan"`` -> :class:`WanVAECodec`."""
    if kind == "pixel":
        return PixelShuffleCodec(**(kwargs or {}))
    if kind == "wan":
        return WanVAECodec(**(kwargs or {}))
    raise ValueError(f"`codec` must be 'pixel' or 'wan', got {kind!r}")
