"""Clip windows read from pre-encoded latents (``prophrl-data encode``) instead of pixels: no video is decoded and the
model does not run its codec on the clip.

:class:`LatentClipIterable` is :class:`~lightning_prophrl.datamodules.clips.ClipIterable` with three parts swapped:
episodes are read without their frames (the shards may hold none), windows start only where latents were stored,
and a clip carries ``LATENT_COND`` / ``LATENT_FUTURE`` / ``LATENT_HISTORY`` (+ ``LATENT_ACTION_FRAMES``) with the
codec fingerprints instead of ``COND_FRAME`` / ``FUTURE`` / ``HISTORY``. Every other key (actions, masks, geometry,
success, episode key and frame index) is cut by the same code as for pixels, so it is identical.

With latents stored at every conditioning index (``encode --every 1``, the default) the windows drawn for a seed are
the same as a pixel ``ClipIterable``'s: the stream differs only in how the frames arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lightning_prophrl.constants import (
    LATENT_ACTION_FRAMES,
    LATENT_AF_FINGERPRINT,
    LATENT_COND,
    LATENT_FINGERPRINT,
    LATENT_FUTURE,
    LATENT_HISTORY,
    LATENT_SOURCE,
    SHARD_LATENTS,
)
from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec
from lightning_prophrl.datamodules.latent_shards import (
    StoredLatents,
    check_latents_info,
    read_latents_info,
    unpack_latents,
)
from lightning_prophrl.datamodules.shards import Episode, ShardFormatError, iter_episodes
from lightning_prophrl.datamodules.slots import SampleShare

_STORED = "__stored_latents__"  # Episode.extras entry holding the decoded StoredLatents (not a shard key)


class LatentClipIterable(ClipIterable):
    """``ClipIterable`` over encoded datasets (``prophrl-data encode``'s output); same arguments, ``with_future`` on.

    Each dataset's ``latents.json`` must match ``image_size``, ``chunk_len`` and the dataset's ``stride`` (checked
    here, in the main process, with a one-line error naming the file), and the datasets of a mixture must agree on
    whether they hold action-frame latents (a batch holds them for every sample or for none).
    """

    def __init__(self, datasets: list[DatasetSpec], *args: Any, **kwargs: Any):
        super().__init__(datasets, *args, **kwargs)
        if not self.with_future:
            raise ValueError("LatentClipIterable needs with_future=True (latents are for world-model clips)")
        self.infos = []
        for spec in self.datasets:
            info = read_latents_info(spec.path)
            check_latents_info(info, spec.path, image_size=self.image_size, chunk_len=self.chunk_len,
                               stride=spec.stride)  # fmt: skip
            self.infos.append(info)
        with_af = {spec.path: info.get("action_frame_fingerprint") is not None
                   for spec, info in zip(self.datasets, self.infos, strict=True)}  # fmt: skip
        if len(set(with_af.values())) > 1:
            raise ValueError(f"the datasets disagree on action-frame latents {with_af}: encode them all with the same "
                             "--model (a Prophet with action frames) or none")  # fmt: skip

    def read_episodes(self, di: int, shards: list[str], share: SampleShare | None) -> Iterator[Episode]:
        """Episodes without frames, each with its decoded latents checked against the dataset's settings."""
        spec, info = self.datasets[di], self.infos[di]
        for ep in iter_episodes(shards, self.on_error, decode_frames=False, skip_counter=self.skips, share=share):
            try:
                stored = self._decode(ep, spec)
            except ShardFormatError as err:
                if self.on_error == "raise":
                    raise
                self.skips(err)
                continue
            if stored.meta.get("fingerprint") != info.get("fingerprint"):
                raise ShardFormatError(spec.path, ep.key, f"{SHARD_LATENTS} was encoded by codec "
                                       f"{stored.meta.get('fingerprint')}, latents.json says {info.get('fingerprint')}: "
                                       "the directory mixes encode runs; encode the source again into a new --out")  # fmt: skip
            ep.extras[_STORED] = stored
            yield ep

    def _decode(self, ep: Episode, spec: DatasetSpec) -> StoredLatents:
        data = ep.extras.pop(SHARD_LATENTS, None)
        if data is None:
            raise ShardFormatError(spec.path, ep.key, f"missing key {SHARD_LATENTS!r} (not written by prophrl-data "
                                                      "encode?)")  # fmt: skip
        try:
            stored = unpack_latents(data)
        except (ValueError, KeyError, OSError) as err:
            raise ShardFormatError(spec.path, ep.key, f"cannot decode {SHARD_LATENTS}: {err}") from err
        frames = len(range(0, len(ep), spec.stride))
        if len(stored.frames) != frames:
            raise ShardFormatError(spec.path, ep.key, f"{SHARD_LATENTS} holds {len(stored.frames)} frame latents, the "
                                                      f"episode has {frames} frames at stride {spec.stride}")  # fmt: skip
        stored.source = spec.path
        return stored

    def window_starts(self, ep: Episode, rng: np.random.Generator | None) -> np.ndarray:
        """As for pixels, drawn from the stored window starts (all conditioning indices with ``encode --every 1``)."""
        starts = ep.extras[_STORED].starts
        if rng is None:
            return starts[np.linspace(0, len(starts) - 1, self.windows_per_episode).round().astype(int)]
        return starts[rng.integers(0, len(starts), size=self.windows_per_episode)]

    def clip_frames(self, ep: Episode, c: int) -> dict[str, Any]:
        """The stored latents of the clip at ``c`` (see ``lightning_prophrl.constants``)."""
        stored: StoredLatents = ep.extras[_STORED]
        out: dict[str, Any] = {
            LATENT_COND: torch.from_numpy(stored.frames[c].copy()),
            LATENT_FUTURE: torch.from_numpy(np.ascontiguousarray(stored.future(c, self.chunk_len))),
            LATENT_FINGERPRINT: str(stored.meta["fingerprint"]),
            LATENT_SOURCE: stored.source,
        }
        if self.history_len > 0:
            idx = np.maximum(np.arange(c - self.history_len, c), 0)
            out[LATENT_HISTORY] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(stored.frames[idx], 0, 1)))
        if stored.meta.get("action_frame_fingerprint") is not None:
            af = stored.action_frames
            shape = out[LATENT_FUTURE].shape
            out[LATENT_ACTION_FRAMES] = (torch.zeros(shape) if af is None  # no camera: masked out by HAS_CAMERA
                                         else torch.from_numpy(af[stored.window(c)].copy()))  # fmt: skip
            out[LATENT_AF_FINGERPRINT] = str(stored.meta["action_frame_fingerprint"])
        return out
