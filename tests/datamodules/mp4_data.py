"""Helpers for tests of mp4 shards: textured frames the codec has real work on, shards written by the library's
writer, an open-GOP encoding and a video whose pictures are damaged inside an intact container."""

from __future__ import annotations

import io
import tarfile

import numpy as np

from lightning_prophrl.datamodules.shards import Episode, ShardWriter


def textured_frames(length: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """Moving sinusoids plus noise: every P/B picture carries real motion and residuals for the codec."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    t = np.arange(length)[:, None, None, None]
    c = np.arange(3)[None, None, None, :]
    wave = 127 + 100 * np.sin(x[None, ..., None] / 7 + 0.3 * t + c) * np.cos(y[None, ..., None] / 5 - 0.2 * t)
    return np.clip(wave + rng.integers(-8, 9, wave.shape), 0, 255).astype(np.uint8)


def write_mp4_shards(path, lengths: list[int], gop: int = 10, height: int = 48, width: int = 64) -> str:
    """Episodes ``v_000, v_001, ...`` of the given lengths as mp4 shards (two per shard); ``actions[t, 0] = t``."""
    with ShardWriter(path, "v", max_count=2, frame_format="mp4", gop=gop) as w:
        for i, t in enumerate(lengths):
            actions = np.zeros((t, 14), dtype=np.float32)
            actions[:, 0] = np.arange(t)
            meta = {"embodiment": "toy", "instruction": "move", "fps": 10, "success": True}
            w.write(Episode(f"v_{i:03d}", textured_frames(t, height, width, seed=i), actions, np.ones(14, bool), meta))
    return str(path)


def encode_open_gop(frames: np.ndarray) -> bytes:
    """libx264 with open GOPs: pictures shown before a keyframe refer to the GOP before it."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "g": "10", "x264-params": "open-gop=1:scenecut=0"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def damage_pictures(data: bytes) -> bytes:
    """The same mp4 with random bytes over its coded pictures (``mdat``): it opens, its pictures do not decode."""
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4 : at], "big")
    noise = np.random.default_rng(0).integers(0, 256, size - 50, dtype=np.uint8).tobytes()
    return data[: at + 44] + noise + data[at + 44 + len(noise) :]


def replace_member(shard: str, name: str, data: bytes) -> None:
    """Rewrite a tar shard with member ``name`` holding ``data`` (every other member unchanged)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, content in members:
            content = data if member.name == name else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
