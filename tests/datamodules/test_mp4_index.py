"""The mp4 sample table read without a demuxer (``video.read_mp4_index``) and the npy fast path of the shard reader:
the same packets, timestamps, frames and arrays as FFmpeg's demuxer and ``np.load``; anything else takes the old path."""

import io

import numpy as np
import pytest

from lightning_prophrl.datamodules import video
from lightning_prophrl.datamodules.shard_reader import _npy_load
from lightning_prophrl.datamodules.shards import Mp4Frames, decode_mp4, encode_mp4, iter_episodes
from tests.datamodules.mp4_data import encode_open_gop, textured_frames, write_mp4_shards


def demuxed(data: bytes):
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size > 0]
        ctx = stream.codec_context
        return packets, (ctx.width, ctx.height, bytes(ctx.extradata))


def videos(tmp_path) -> list[bytes]:
    out = [ep.frames._data for ep in iter_episodes(write_mp4_shards(tmp_path / "v", [37, 23], gop=4), lazy_frames=True)]
    out += [
        encode_mp4(textured_frames(t, h, w), gop=g)
        for g, h, w, t in [(10, 48, 64, 30), (250, 16, 24, 9), (1, 32, 32, 5)]
    ]
    return [*out, encode_mp4(textured_frames(1, 16, 16)), encode_open_gop(textured_frames(40))]


def test_the_sample_table_matches_the_demuxer(tmp_path):
    for data in videos(tmp_path):
        index, (packets, (width, height, extradata)) = video.read_mp4_index(data), demuxed(data)
        assert index is not None
        assert index.pts == [p.pts for p in packets] and index.dts == [p.dts for p in packets]
        assert index.keyframe == [p.is_keyframe for p in packets]
        assert [data[at : at + n] for at, n in index.spans] == [bytes(p) for p in packets]
        assert (index.width, index.height, index.extradata) == (width, height, extradata)


def test_frames_from_the_table_equal_the_demuxer_path_and_the_whole_decode(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for data in videos(tmp_path):
        ref = decode_mp4(data)
        subsets = [list(range(len(ref)))] + [rng.choice(len(ref), 4).tolist() for _ in range(6)]
        for idx in subsets:
            fast = Mp4Frames(data)
            assert fast._demuxed is None and fast.shape == ref.shape
            np.testing.assert_array_equal(fast.take(idx), ref[idx])
        with monkeypatch.context() as m:  # the old path: the container opened with the demuxer
            m.setattr(video, "read_mp4_index", lambda _: None)
            old = Mp4Frames(data)
            assert old._demuxed is not None and old.shape == ref.shape
            np.testing.assert_array_equal(old.take(subsets[1]), ref[subsets[1]])


@pytest.mark.parametrize("cut", ["truncated", "not mp4", "empty", "no moov"])
def test_what_the_table_cannot_read_goes_to_the_demuxer(cut):
    data = encode_mp4(textured_frames(12, 16, 16))
    bad = {"truncated": data[: len(data) // 2], "not mp4": b"not a video", "empty": b"",
           "no moov": data.replace(b"moov", b"free")}[cut]  # fmt: skip
    assert video.read_mp4_index(bad) is None
    try:  # whatever FFmpeg's demuxer makes of it, as before the table was read
        frames = Mp4Frames(bad, "s.tar", "k")
    except video.ShardFormatError:
        return
    assert frames._demuxed is not None


def test_damaged_tables_never_raise_or_allocate_wildly():
    data = encode_mp4(textured_frames(20, 16, 16))
    moov = data.index(b"moov")
    rng = np.random.default_rng(1)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(3):
            bad[int(rng.integers(moov, len(bad)))] = int(rng.integers(256))
        index = video.read_mp4_index(bytes(bad))
        assert index is None or len(index.pts) <= len(bad)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_npy_fast_path_equals_np_load():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(60, 14)).astype(np.float32), np.ones(14, bool), rng.normal(size=(9, 1, 8)),
              np.asfortranarray(rng.normal(size=(5, 7))), rng.integers(0, 9, (3, 4)).astype(">i4"),
              np.zeros((0, 3), np.float32), np.float64(3.5), np.array(["ab", "c"])]  # fmt: skip
    for arr in arrays:
        data = npy_bytes(arr)
        for _ in range(2):  # the first parses the header, the second reads through the cached layout
            got, ref = _npy_load(data), np.load(io.BytesIO(data))
            assert got.dtype == ref.dtype and got.shape == ref.shape and got.flags.writeable
            assert (got.flags.c_contiguous, got.flags.f_contiguous) == (ref.flags.c_contiguous, ref.flags.f_contiguous)
            np.testing.assert_array_equal(got, ref)
    data = npy_bytes(arrays[0])
    with pytest.raises(ValueError):
        _npy_load(data[:-10])  # truncated: np.load's error, not a short array
    with pytest.raises(ValueError):
        _npy_load(npy_bytes(np.array([{"a": 1}], dtype=object)))  # no pickles
