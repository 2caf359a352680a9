"""The clip latents of a training batch: encoded here from pixels, or read from the batch when the datamodule serves
pre-encoded latents (``prophrl-data encode``, ``RobotClipDataModule(latents=True)``; keys in
batch keys in :mod:`lightning_prophrl.constants`).

Both routes give the same tensors (to float rounding): the stored latents are made by the same codec from the same
window layout (the conditioning frame and the history frame by frame, the ``[cond, future]`` clip as one video, the
action-frame video with its first frame repeated). Stored latents are used only when the codec fingerprint stored
with them is this model's codec's (and, for action frames, this model's drawing style): anything else is refused
with a one-line error naming the dataset and the episode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lightning_prophrl.constants import (
    CAMERA_EXTR,
    CAMERA_K,
    COND_FRAME,
    EE_POSES,
    EPISODE_KEY,
    FUTURE,
    GRIPPER,
    HAS_CAMERA,
    HISTORY,
    HISTORY_MASK,
    LATENT_ACTION_FRAMES,
    LATENT_AF_FINGERPRINT,
    LATENT_COND,
    LATENT_FINGERPRINT,
    LATENT_FUTURE,
    LATENT_HISTORY,
    LATENT_SOURCE,
    SHARD_LATENTS,
)
from lightning_prophrl.models.latent import action_frame_fingerprint

ClipLatents = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[int, int]]


class ProphetStoredLatentsMixin:
    """How :class:`~lightning_prophrl.models.prophet.Prophet`'s training loss gets the latents of a clip batch."""

    def clip_latents(self, batch: dict[str, Any]) -> ClipLatents:
        """``(cond (B, C, 1, h, w), future (B, C, T_f, h, w), history (B, C, T_h, h, w) | None, history mask | None,
        frame size (H, W))`` of a batch: stored latents when it has ``LATENT_COND`` (checked), else pixels encoded."""
        if LATENT_COND in batch:
            return self._stored_clip_latents(batch)
        for key in (COND_FRAME, FUTURE):
            if key not in batch:
                raise KeyError(f"batch is missing the required key {key!r} (or {LATENT_COND!r} and {LATENT_FUTURE!r})")
        cond, future = batch[COND_FRAME], batch[FUTURE]
        if future.ndim != 5 or cond.shape != (future.shape[0], *future.shape[2:]):
            raise ValueError(f"`{FUTURE}` {tuple(future.shape)} and `{COND_FRAME}` {tuple(cond.shape)} do not match")
        if future.shape[1] != self.config.action_chunk_length:
            raise ValueError(f"`{FUTURE}` must hold action_chunk_length={self.config.action_chunk_length} frames")
        with torch.no_grad():
            latents = self.latent_codec.encode(torch.cat([cond[:, None], future], 1).to(self.dtype))
        hist, hist_mask = self.encode_history(batch.get(HISTORY), batch.get(HISTORY_MASK))
        return latents[:, :, :1], latents[:, :, 1:], hist, hist_mask, tuple(cond.shape[-2:])

    def clip_action_frames(
        self, batch: dict[str, Any], size: tuple[int, int]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The action-frame latents of a batch (as :meth:`encode_action_frames`): stored ones when the batch has
        ``LATENT_ACTION_FRAMES`` (checked), else rendered from the poses and encoded."""
        ee, k, extr = batch.get(EE_POSES), batch.get(CAMERA_K), batch.get(CAMERA_EXTR)
        if LATENT_ACTION_FRAMES not in batch or not self.config.use_action_frames or ee is None or k is None or \
                extr is None:  # fmt: skip
            return self.encode_action_frames(ee, batch.get(GRIPPER), k, extr, batch.get(HAS_CAMERA), size)
        style = dataclasses.asdict(self.frame_style)
        self._check_fingerprints(batch, LATENT_AF_FINGERPRINT, action_frame_fingerprint(self.latent_codec, style),
                                 "codec + action-frame style")  # fmt: skip
        b = ee.shape[0]
        has_camera = batch.get(HAS_CAMERA)
        has_camera = torch.ones(b, dtype=torch.bool, device=ee.device) if has_camera is None else has_camera.bool()
        if not bool(has_camera.any()):
            return None, None
        return batch[LATENT_ACTION_FRAMES].to(self.dtype), has_camera

    def _stored_clip_latents(self, batch: dict[str, Any]) -> ClipLatents:
        if getattr(self.latent_codec, "trainable", False):
            raise ValueError("the Prophet's codec is trainable: stored latents would not follow its training; train "
                             "on pixels (latents: false) or freeze the codec")  # fmt: skip
        self._check_fingerprints(batch, LATENT_FINGERPRINT, self.latent_codec.fingerprint(), "codec")
        if LATENT_FUTURE not in batch:
            raise KeyError(f"batch has {LATENT_COND!r} but not {LATENT_FUTURE!r}")
        cond, future = batch[LATENT_COND], batch[LATENT_FUTURE]
        frames = self.latent_codec.num_latent_frames(1 + self.config.action_chunk_length) - 1
        if cond.ndim != 4 or future.ndim != 5 or future.shape[2] != frames or cond.shape[:2] != future.shape[:2]:
            raise ValueError(f"stored latents `{LATENT_COND}` {tuple(cond.shape)} / `{LATENT_FUTURE}` "
                             f"{tuple(future.shape)} do not fit action_chunk_length={self.config.action_chunk_length} "
                             f"({frames} future latent frames)")  # fmt: skip
        hist, hist_mask = None, None
        stored = batch.get(LATENT_HISTORY)
        if stored is not None and self.uses_history and stored.shape[2] > 0:  # as `encode_history` cuts pixels
            hist = stored[:, :, -self.config.history_length :].to(self.dtype)
            mask = batch.get(HISTORY_MASK)
            hist_mask = None if mask is None else mask[:, -self.config.history_length :].bool()
        size = tuple(int(s) * self.latent_codec.spatial_factor for s in cond.shape[-2:])
        return cond[:, :, None].to(self.dtype), future.to(self.dtype), hist, hist_mask, size

    def _check_fingerprints(self, batch: dict[str, Any], key: str, expected: str, what: str) -> None:
        """Raise naming the first sample whose stored latents were made by another codec (or drawing style)."""
        found = batch.get(key)
        if found is None:
            raise KeyError(f"batch has stored latents but no {key!r}: cannot check which codec made them")
        for i, fp in enumerate(found):
            if fp != expected:
                source = (batch.get(LATENT_SOURCE) or ["?"] * len(found))[i]
                episode = (batch.get(EPISODE_KEY) or ["?"] * len(found))[i]
                raise ValueError(
                    f"{source}: episode {episode!r}: {SHARD_LATENTS} was made by {what} {fp}, this Prophet's is "
                    f"{expected}: encode the source shards again with `prophrl-data encode --model <this model>`, "
                    "or train on pixels (latents: false)"
                )
