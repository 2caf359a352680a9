"""H.264 mp4 frames of a shard (PyAV): the encoder, the sequential decoder and random access to a subset of frames.

``Mp4Frames`` decodes only what the frames asked for need: the groups of pictures (GOPs: a keyframe and the pictures
up to the next one) that hold them, each run of such GOPs from its keyframe up to the last picture asked for (in
decode order), leaving out the pictures of that stretch that nothing refers to and nobody asked for; only the pictures
asked for are turned into RGB (with one reused swscale context). Decoding a closed GOP from its keyframe gives the
same pixels as decoding the video from its start, and a picture nothing refers to changes no other, so the frames are
bit-identical to ``decode_mp4``'s. An open GOP (pictures shown before its keyframe, which may refer to the previous
GOP) is decoded with the GOP before it; a stream the index cannot place (packets without timestamps or marked to be
discarded, no keyframe first) or a decoder that does not return every picture asked for falls back to decoding from
the start.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightning_prophrl.datamodules.lazy_frames import FrameSource
from lightning_prophrl.datamodules.shard_schema import ShardFormatError

_local = threading.local()  # one VideoReformatter per thread: its cached swscale context is not thread-safe


def encode_mp4(frames: np.ndarray, fps: int = 10, crf: int = 18, gop: int = 10) -> bytes:
    """``(T, H, W, 3) uint8`` -> H.264 mp4 bytes (yuv420p, even sizes required by the codec; a keyframe every
    ``gop`` frames keeps random access cheap)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(int(gop))}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes | str | Path, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Decode mp4 bytes or a file into ``(T, H, W, 3) uint8`` frames ``[start, stop)`` (sequential decode)."""
    import av

    src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else str(data)
    out = []
    with av.open(src) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if stop is not None and i >= stop:
                break
            if i >= start:
                out.append(frame.to_ndarray(format="rgb24"))
    if not out:
        raise ValueError("no frames decoded")
    return np.stack(out)


class Mp4Frames(FrameSource):
    """The frames of one mp4 episode, decoded on demand (only the GOPs that hold the frames asked for).

    Opening reads the container index (packet timestamps and keyframes), not the pictures. Decoded frames are kept;
    ``pictures_decoded`` counts the pictures fed to the decoder.

    Args:
        data: the mp4 bytes (``frames.mp4`` of a shard sample).
        shard: shard path, for error messages.
        key: sample key, for error messages.

    Raises:
        ShardFormatError: when the bytes are not a readable video (on opening) or a picture cannot be decoded.
    """

    def __init__(self, data: bytes, shard: str = "?", key: str = "?"):
        import av

        self._data, self._shard, self._key = data, shard, key
        try:
            self._container = av.open(io.BytesIO(data), format="mp4")
            stream = self._container.streams.video[0]
            self._packets = [p for p in self._container.demux(stream) if p.size > 0]
        except (av.FFmpegError, IndexError, ValueError) as err:
            raise self._error(err) from err
        if not self._packets:
            raise self._error("no video packets")
        self._ctx = stream.codec_context
        self._ctx.thread_count = 1  # one picture of a small video is no work to share: threads only cost CPU
        self._shape = (len(self._packets), int(self._ctx.height), int(self._ctx.width), 3)
        self._cache: dict[int, np.ndarray] = {}
        self.pictures_decoded = 0  # pictures fed to the decoder so far (a whole-video decode feeds len(self))
        self._index_gops()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape

    # 1. public API -------------------------------------------------------------------------------------------------
    def load(self, indices: Sequence[int] | np.ndarray) -> None:
        wanted = np.unique(np.asarray(indices, dtype=np.int64))
        if wanted.size and (wanted[0] < 0 or wanted[-1] >= len(self)):
            raise IndexError(f"frame indices {wanted[0]}..{wanted[-1]} outside 0..{len(self) - 1}")
        missing = [int(i) for i in wanted if int(i) not in self._cache]
        if missing:
            self._cache.update(self._decode(missing))

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        if not idx:
            return np.empty((0, *self.shape[1:]), dtype=np.uint8)
        self.load(idx)
        return np.stack([self._cache[i] for i in idx])

    # 2. the GOP index ------------------------------------------------------------------------------------------------
    def _index_gops(self) -> None:
        """Frame (display) index of each packet, the GOP of each frame, where each GOP starts, which GOPs are open."""
        pts = [p.pts for p in self._packets]
        keyframe = np.array([p.is_keyframe for p in self._packets], dtype=bool)
        discarded = any(p.is_discard for p in self._packets)  # e.g. trimmed by an edit list: not shown by decode_mp4
        self._sequential = None in pts or len(set(pts)) != len(pts) or not keyframe[0] or discarded
        if self._sequential:  # the index cannot place the frames: decode from the start, like decode_mp4
            return
        pts_arr = np.asarray(pts, dtype=np.int64)
        order = np.argsort(pts_arr, kind="stable")
        self._frame_of_pts = {int(pts_arr[p]): f for f, p in enumerate(order)}
        self._packet_of_frame = order
        gop_of_packet = np.cumsum(keyframe) - 1
        self._gop_of_frame = gop_of_packet[order]
        self._gop_start = np.append(np.flatnonzero(keyframe), len(self._packets))
        starts = pts_arr[self._gop_start[:-1]]
        first = np.minimum.reduceat(pts_arr, self._gop_start[:-1])
        self._open_gop = first < starts  # a frame shown before the keyframe: it may refer to the previous GOP
        extradata = self._ctx.extradata or b""  # avcC: NAL units prefixed by their length, of 1 + (byte 4 & 3) bytes
        is_avcc = self._ctx.name == "h264" and len(extradata) > 4 and extradata[0] == 1
        self._nal_length = 1 + (extradata[4] & 3) if is_avcc else None

    def _runs(self, frames: list[int]) -> list[tuple[int, int]]:
        """Consecutive GOPs to decode for ``frames``, as ``[(first_gop, last_gop), ...]``."""
        gops = set(self._gop_of_frame[frames].tolist())
        gops |= {g - 1 for g in gops if g > 0 and self._open_gop[g]}
        runs: list[tuple[int, int]] = []
        for g in sorted(gops):
            if runs and runs[-1][1] == g - 1:
                runs[-1] = (runs[-1][0], g)
            else:
                runs.append((g, g))
        return runs

    # 3. decoding -----------------------------------------------------------------------------------------------------
    def _decode(self, frames: list[int]) -> dict[int, np.ndarray]:
        """Decode ``frames`` (sorted, distinct, not held) -> ``{index: (H, W, 3) uint8}``."""
        import av

        if self._sequential:
            return self._decode_from_start(frames)
        wanted, out = set(frames), {}
        try:
            for first, last in self._runs(frames):
                run = [f for f in frames if first <= self._gop_of_frame[f] <= last]
                out.update(self._decode_run(int(self._gop_start[first]), set(run)))
        except av.FFmpegError as err:
            raise self._error(err) from err
        if len(out) < len(wanted):  # the decoder dropped or renumbered pictures: trust the plain sequential decode
            return self._decode_from_start(frames)
        return dict(zip(out, to_rgb(list(out.values())), strict=True))

    def _decode_run(self, lo: int, wanted: set[int]) -> dict[int, object]:
        """Decode from the keyframe packet ``lo`` up to the last packet of ``wanted`` (decode order), leaving out
        pictures nothing refers to that are not wanted; the pictures of ``wanted`` (``av.VideoFrame``) by index."""
        self._ctx.flush_buffers()
        hi = max(int(self._packet_of_frame[f]) for f in wanted) + 1  # references precede what refers to them
        wanted_packets = {int(self._packet_of_frame[f]) for f in wanted}
        got: dict[int, object] = {}
        for pos in range(lo, hi):
            if pos in wanted_packets or self._is_reference(self._packets[pos]):
                self.pictures_decoded += 1
                self._collect(self._ctx.decode(self._packets[pos]), wanted, got)
        self._collect(self._ctx.decode(None), wanted, got)  # drain the pictures held for reordering
        return got

    def _collect(self, frames: list, wanted: set[int], got: dict[int, object]) -> None:
        for frame in frames:
            index = self._frame_of_pts.get(frame.pts)
            if index in wanted:
                got[index] = frame

    def _is_reference(self, packet: object) -> bool:
        """Whether other pictures may refer to this one (H.264 ``nal_ref_idc`` of its first slice); True if unsure."""
        if self._nal_length is None:
            return True
        data, n, pos = bytes(packet), self._nal_length, 0
        while pos + n < len(data):
            nal_type, ref_idc = data[pos + n] & 0x1F, data[pos + n] & 0x60
            if nal_type in (1, 5):  # a coded slice: all slices of a picture share nal_ref_idc
                return ref_idc != 0
            pos += n + int.from_bytes(data[pos : pos + n], "big")
        return True

    def _decode_from_start(self, frames: list[int]) -> dict[int, np.ndarray]:
        self.pictures_decoded += len(self)  # the demuxer-driven decode reads ahead: count the whole video
        try:
            decoded = decode_mp4(self._data, 0, frames[-1] + 1)
        except Exception as err:  # noqa: BLE001 - any decode failure is reported with its location
            raise self._error(err) from err
        if len(decoded) <= frames[-1]:
            raise self._error(f"frame {frames[-1]} asked for, the video holds {len(decoded)}")
        return {f: decoded[f] for f in frames}

    def _error(self, err: object) -> ShardFormatError:
        return ShardFormatError(self._shard, self._key, f"undecodable video: {err}")


def to_rgb(frames: list) -> list[np.ndarray]:
    """Decoded pictures (``av.VideoFrame``) -> ``(H, W, 3) uint8`` RGB arrays, the pixels of
    ``frame.to_ndarray(format="rgb24")``.

    One swscale context per thread is reused for all pictures (``to_ndarray`` builds a new one per picture) and
    converts on one thread (``to_ndarray`` lets swscale start threads per call): same conversion, same pixels.
    """
    from av.video.reformatter import VideoReformatter

    if not hasattr(_local, "reformatter"):
        _local.reformatter = VideoReformatter()
    return [_local.reformatter.reformat(f, format="rgb24", threads=1).to_ndarray() for f in frames]
