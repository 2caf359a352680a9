"""The stored form of pre-encoded latents: one ``latents.npz`` per episode, one ``latents.json`` per dataset.

Written by ``prophrl-data encode`` (:mod:`lightning_prophrl.datamodules.latent_encode`), read by
:class:`lightning_prophrl.datamodules.latent_clips.LatentClipIterable`. Everything is on the *strided* time axis of the
encode run (``stride``), at its frame size (``image_size``) and action chunk length (``chunk_len``).

``latents.npz`` (uncompressed ``np.savez``, float32):

============= =====================================================================================================
``frames``    ``(T, C, h, w)``: every frame encoded as a one-frame clip (``LatentCodec.encode_frames``): the
              conditioning frame's latent (a causal codec's first latent depends on the first frame only) and the
              history latents (Prophet encodes its history frame by frame)
``starts``    ``(S,)`` int64: the conditioning indices ``c`` the windows were encoded for (``0, every, 2 every ...``)
``windows``   ``(S, C, T_f, h, w)``: the future latents of the clip ``[frame c, frames c+1 .. c+L]`` encoded as one
              video, as training encodes it (only for codecs that mix time: a frame-independent codec's future latents
              are rows of ``frames``)
``actions``   ``(S, C, T_f, h, w)``, optional: the encoded action-frame video of each window (zeros for an episode
              without a camera)
``meta``      a JSON string: ``fingerprint``, ``action_frame_fingerprint``, ``image_size``, ``stride``,
              ``chunk_len``, ``layout`` (``"window"`` or ``"frame"``)
============= =====================================================================================================
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.constants import LATENTS_FILE, SHARD_LATENTS

FORMAT_VERSION = 1
MATCHED_SETTINGS = ("image_size", "stride", "chunk_len")  # must equal the reading datamodule's


@dataclass
class StoredLatents:
    """The decoded ``latents.npz`` of one episode (see the module docstring)."""

    frames: np.ndarray
    starts: np.ndarray
    windows: np.ndarray | None
    action_frames: np.ndarray | None
    meta: dict[str, Any]
    source: str = "?"  # the dataset directory it was read from

    def window(self, c: int) -> int:
        """Row of ``windows`` / ``action_frames`` of the window at conditioning index ``c``."""
        row = int(np.searchsorted(self.starts, c))
        if row >= len(self.starts) or self.starts[row] != c:
            raise KeyError(f"no latents stored for a window at frame {c} (stored every {self.meta.get('every')})")
        return row

    def future(self, c: int, chunk_len: int) -> np.ndarray:
        """Future latents ``(C, T_f, h, w)`` of the window at ``c``."""
        if self.windows is not None:
            return self.windows[self.window(c)]
        last = len(self.frames) - 1  # frame-independent codec: the future frames' own latents (clamped at the end)
        return np.moveaxis(self.frames[np.minimum(np.arange(c + 1, c + chunk_len + 1), last)], 0, 1)


def pack_latents(
    frames: np.ndarray,
    starts: np.ndarray,
    windows: np.ndarray | None,
    action_frames: np.ndarray | None,
    meta: dict[str, Any],
) -> bytes:
    """The ``latents.npz`` bytes of one episode."""
    arrays = {
        "frames": frames.astype(np.float32),
        "starts": starts.astype(np.int64),
        "meta": np.array(json.dumps(meta)),
    }
    if windows is not None:
        arrays["windows"] = windows.astype(np.float32)
    if action_frames is not None:
        arrays["actions"] = action_frames.astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_latents(data: bytes) -> StoredLatents:
    """Decode ``latents.npz`` bytes (raises ``ValueError`` / ``KeyError`` / ``OSError`` on damaged data)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        windows = npz["windows"] if "windows" in npz.files else None
        actions = npz["actions"] if "actions" in npz.files else None
        out = StoredLatents(npz["frames"], npz["starts"], windows, actions, meta)
    if out.frames.ndim != 4 or out.starts.ndim != 1 or (windows is not None and len(windows) != len(out.starts)):
        raise ValueError(f"inconsistent arrays: frames {out.frames.shape}, starts {out.starts.shape}, windows "
                         f"{None if windows is None else windows.shape}")  # fmt: skip
    if actions is not None and len(actions) != len(out.starts):
        raise ValueError(f"inconsistent arrays: {len(actions)} action-frame windows for {len(out.starts)} starts")
    return out


def read_latents_info(data_dir: str | Path) -> dict[str, Any]:
    """The ``latents.json`` of an encoded dataset directory, with a one-line error when it has none."""
    path = Path(data_dir) / LATENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{data_dir}: no {LATENTS_FILE}, so its shards hold no pre-encoded latents: run `prophrl-data encode "
            f"--model MODEL --shards {data_dir} --out NEW_DIR` and train on NEW_DIR, or read pixels (latents: false)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err


def check_latents_info(info: dict[str, Any], data_dir: str | Path, **expected: Any) -> None:
    """Raise a one-line ``ValueError`` when an encoded dataset does not fit the reader's settings (``image_size``,
    ``stride``, ``chunk_len``) or its encode run did not finish."""
    where = Path(data_dir) / LATENTS_FILE
    if int(info.get("format", 0)) != FORMAT_VERSION:
        raise ValueError(f"{where}: latents format {info.get('format')!r}, this version reads {FORMAT_VERSION}")
    if not info.get("complete", False):
        raise ValueError(f"{where}: the encode run did not finish: rerun it with --resume")
    for name, value in expected.items():
        if value is not None and info.get(name) != value:
            raise ValueError(
                f"{where}: latents were encoded with {name}={info.get(name)}, the datamodule reads {name}={value}: "
                f"set {name}: {info.get(name)} or encode again with --{name.replace('_', '-')} {value}"
            )


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


__all__ = [
    "FORMAT_VERSION",
    "LATENTS_FILE",
    "MATCHED_SETTINGS",
    "SHARD_LATENTS",
    "StoredLatents",
    "check_latents_info",
    "pack_latents",
    "read_latents_info",
    "unpack_latents",
    "write_json_atomic",
]
