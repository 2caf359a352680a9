"""H.264 mp4 frames of a shard (PyAV): the encoder, the sequential decoder and random access to a subset of frames.

``Mp4Frames`` decodes only what the frames asked for need: the groups of pictures (GOPs: a keyframe and the pictures
up to the next one) that hold them, each run of such GOPs from its keyframe up to the last picture asked for (in
decode order), leaving out the pictures of that stretch that nothing refers to and nobody asked for; only the pictures
asked for are turned into RGB (with one reused swscale context). Decoding a closed GOP from its keyframe gives the
same pixels as decoding the video from its start, and a picture nothing refers to changes no other, so the frames are
bit-identical to ``decode_mp4``'s. An open GOP (pictures shown before its keyframe, which may refer to the previous
GOP) is decoded with the GOP before it; a stream the index cannot place (packets without timestamps or marked to be
discarded, no keyframe first) or a decoder that does not return every picture asked for falls back to decoding from
the start. The sample table of a plain one-track H.264 mp4 (what ``encode_mp4`` writes) is read from its boxes
(``read_mp4_index``) and the packets are fed to a bare decoder: the same packets, timestamps and pictures as through
FFmpeg's demuxer, without opening a container; any other mp4 is opened with the demuxer.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

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
        index = read_mp4_index(data)
        if index is None:  # not a plain one-track avc1 mp4: ask the demuxer
            self._open_demuxer()
        else:  # the sample table read from the boxes: no container to open, no packets to demux
            self._ctx = av.CodecContext.create("h264", "r")
            self._ctx.extradata = index.extradata
            self._shape = (len(index.pts), index.height, index.width, 3)
            self._pts, self._dts, self._keyframe = index.pts, index.dts, index.keyframe
            self._payloads, self._demuxed, self._discarded = [data[p : p + n] for p, n in index.spans], None, False
        if not self._pts:
            raise self._error("no video packets")
        self._ctx.thread_count = 1  # one picture of a small video is no work to share: threads only cost CPU
        self._cache: dict[int, np.ndarray] = {}
        self.pictures_decoded = 0  # pictures fed to the decoder so far (a whole-video decode feeds len(self))
        self._index_gops()

    def _open_demuxer(self) -> None:
        import av

        try:
            self._container = av.open(io.BytesIO(self._data), format="mp4")
            stream = self._container.streams.video[0]
            packets = [p for p in self._container.demux(stream) if p.size > 0]
        except (av.FFmpegError, IndexError, ValueError) as err:
            raise self._error(err) from err
        if not packets:
            raise self._error("no video packets")
        self._ctx = stream.codec_context
        self._shape = (len(packets), int(self._ctx.height), int(self._ctx.width), 3)
        self._pts, self._keyframe = [p.pts for p in packets], [p.is_keyframe for p in packets]
        self._payloads, self._demuxed = None, packets
        self._discarded = any(p.is_discard for p in packets)  # e.g. trimmed by an edit list: not shown by decode_mp4

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
        pts, keyframe = self._pts, np.array(self._keyframe, dtype=bool)
        self._sequential = None in pts or len(set(pts)) != len(pts) or not keyframe[0] or self._discarded
        if self._sequential:  # the index cannot place the frames: decode from the start, like decode_mp4
            return
        pts_arr = np.asarray(pts, dtype=np.int64)
        order = np.argsort(pts_arr, kind="stable")
        self._frame_of_pts = {int(pts_arr[p]): f for f, p in enumerate(order)}
        self._packet_of_frame = order
        gop_of_packet = np.cumsum(keyframe) - 1
        self._gop_of_frame = gop_of_packet[order]
        self._gop_start = np.append(np.flatnonzero(keyframe), len(pts))
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
            if pos in wanted_packets or self._is_reference(pos):
                self.pictures_decoded += 1
                self._collect(self._ctx.decode(self._packet(pos)), wanted, got)
        self._collect(self._ctx.decode(None), wanted, got)  # drain the pictures held for reordering
        return got

    def _collect(self, frames: list, wanted: set[int], got: dict[int, object]) -> None:
        for frame in frames:
            index = self._frame_of_pts.get(frame.pts)
            if index in wanted:
                got[index] = frame

    def _packet(self, pos: int) -> object:
        """Packet ``pos`` (decode order) for the decoder: the demuxer's, or one built from the sample table."""
        import av

        if self._demuxed is not None:
            return self._demuxed[pos]
        packet = av.Packet(self._payloads[pos])
        packet.pts, packet.dts, packet.is_keyframe = self._pts[pos], self._dts[pos], self._keyframe[pos]
        return packet

    def _is_reference(self, pos: int) -> bool:
        """Whether other pictures may refer to packet ``pos`` (H.264 ``nal_ref_idc`` of its first slice); True if
        unsure."""
        if self._nal_length is None:
            return True
        data = self._payloads[pos] if self._payloads is not None else bytes(self._demuxed[pos])
        n, pos = self._nal_length, 0
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


# 2b. the mp4 sample table, read without a demuxer --------------------------------------------------------------------
_CONTAINERS = (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts")
STBL = "mdia/minf/stbl/"


class Mp4Index(NamedTuple):
    """What ``Mp4Frames`` needs of an mp4's one video track: picture size, ``avcC``, and per sample (decode order)
    where its bytes lie, its presentation and decode timestamps (as the demuxer gives them) and whether it is a key."""

    width: int
    height: int
    extradata: bytes
    spans: list[tuple[int, int]]
    pts: list[int]
    dts: list[int]
    keyframe: list[bool]


def read_mp4_index(data: bytes) -> Mp4Index | None:
    """The sample table of a plain mp4 with one H.264 (``avc1``) track, as FFmpeg's demuxer reads it; None for
    anything else (fragments, several tracks, edit lists that hide pictures, inconsistent tables), which is then
    opened with the demuxer. Reading these boxes costs far less than opening the container."""
    try:
        boxes = _boxes(data, 0, len(data), {})
        if b"moov/mvex" in boxes or boxes.get(b"moov/trak/count") != 1 or b"moov/trak/mdia/minf/stbl/stsd" not in boxes:
            return None
        return _sample_table(data, boxes)
    except (struct.error, IndexError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def _boxes(data: bytes, lo: int, hi: int, out: dict, prefix: bytes = b"") -> dict:
    """``{b"moov/trak/...": (payload start, end)}`` of the container boxes and their children."""
    while lo + 8 <= hi:
        size, kind = struct.unpack_from(">I4s", data, lo)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", data, lo + 8)[0], 16
        elif size == 0:
            size = hi - lo
        if size < head or lo + size > hi:
            raise ValueError("bad box size")
        path = prefix + kind
        if path == b"moov/trak":
            out[b"moov/trak/count"] = out.get(b"moov/trak/count", 0) + 1
        if path not in out:  # the first box of a kind counts
            out[path] = (lo + head, lo + size)
            if kind in _CONTAINERS and (prefix or kind == b"moov"):
                _boxes(data, lo + head, lo + size, out, path + b"/")
        lo += size
    return out


def _sample_table(data: bytes, boxes: dict) -> Mp4Index | None:
    def at(name: str) -> int | None:  # where the payload of the track's full box ``name`` starts (after its flags)
        span = boxes.get(b"moov/trak/" + {"hdlr": "mdia/", "mdhd": "mdia/", "elst": "edts/"}.get(name, STBL).encode()
                         + name.encode())  # fmt: skip
        return None if span is None else span[0] + 4

    size, kind = struct.unpack_from(">I4s", data, at("stsd") + 4)
    if data[at("hdlr") + 4 : at("hdlr") + 8] != b"vide" or kind != b"avc1" or _u32(data, at("stsd")) != 1:
        return None
    width, height = struct.unpack_from(">HH", data, at("stsd") + 36)  # in the visual sample entry
    extradata = _child(data, at("stsd") + 90, at("stsd") + 4 + size, b"avcC")
    fixed, count = struct.unpack_from(">II", data, at("stsz"))
    if count > len(data):  # more pictures than bytes: not a table to trust (nor to allocate)
        return None
    sizes = [fixed] * count if fixed else list(struct.unpack_from(f">{count}I", data, at("stsz") + 8))
    wide = at("stco") is None
    chunks = _table(data, at("co64") if wide else at("stco"), ">Q" if wide else ">I")
    runs = _table(data, at("stsc"), ">III")  # (first chunk, samples per chunk, description)
    spans: list[tuple[int, int]] = []
    for r, (first, per_chunk, _) in enumerate(runs):
        for chunk in range(first - 1, runs[r + 1][0] - 1 if r + 1 < len(runs) else len(chunks)):
            pos = chunks[chunk][0]
            for size in sizes[len(spans) : len(spans) + per_chunk]:
                spans.append((pos, size))
                pos += size
    stts = _table(data, at("stts"), ">II")
    ctts = [(count, 0)] if at("ctts") is None else _table(data, at("ctts"), ">Ii" if data[at("ctts") - 4] else ">II")
    if sum(n for n, _ in stts) != count or sum(n for n, _ in ctts) != count:
        return None
    dts = [0]
    for n, delta in stts:
        dts += [dts[-1] + delta * (i + 1) for i in range(n)]
    offsets = [o for n, o in ctts for _ in range(n)]
    keyframe = [at("stss") is None] * count
    for (n,) in [] if at("stss") is None else _table(data, at("stss"), ">I"):
        keyframe[n - 1] = True
    if extradata is None or len(spans) != count or any(p + n > len(data) for p, n in spans):
        return None
    pts = [d + o for d, o in zip(dts, offsets, strict=False)]
    shift = _edit_shift(data, boxes, pts, at("elst"), at("mdhd"))
    if shift is None:
        return None
    keep = [i for i in range(count) if sizes[i] > 0]
    return Mp4Index(width, height, bytes(extradata), [spans[i] for i in keep], [pts[i] - shift for i in keep],
                    [dts[i] - shift for i in keep], [keyframe[i] for i in keep])  # fmt: skip


def _edit_shift(data: bytes, boxes: dict, pts: list[int], elst: int | None, mdhd: int) -> int | None:
    """How far the edit list moves the timestamps (0 without one); None when it hides pictures or is not one plain
    edit, which the demuxer handles."""
    if elst is None:
        return 0 if min(pts) >= 0 else None
    if _u32(data, elst) != 1:
        return None
    duration, media_time, rate = struct.unpack_from(">QqI" if data[elst - 4] else ">IiI", data, elst + 4)
    mvhd = boxes[b"moov/mvhd"][0]
    scales = _u32(data, mvhd + (20 if data[mvhd] else 12)), _u32(data, mdhd + (16 if data[mdhd - 4] else 8))
    end = media_time + duration * scales[1] // scales[0]
    if rate != 0x10000 or media_time < 0 or min(pts) < media_time or (duration and max(pts) >= end):
        return None
    return media_time


def _u32(data: bytes, at: int) -> int:
    return struct.unpack_from(">I", data, at)[0]


def _child(data: bytes, lo: int, hi: int, kind: bytes) -> bytes | None:
    while lo + 8 <= hi:
        size, name = struct.unpack_from(">I4s", data, lo)
        if size < 8:
            return None
        if name == kind:
            return data[lo + 8 : lo + size]
        lo += size
    return None


def _table(data: bytes, at: int, fmt: str) -> list[tuple]:
    """The entries of a full box's table (entry count first)."""
    n, step = _u32(data, at), struct.calcsize(fmt)
    if at + 4 + n * step > len(data):
        raise ValueError("table runs past the data")
    return [struct.unpack_from(fmt, data, at + 4 + i * step) for i in range(n)]
