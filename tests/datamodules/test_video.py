"""Random access to mp4 episode frames (``video.Mp4Frames``, ``lazy_frames``) against the whole-video decoder."""

import numpy as np
import pytest

from lightning_prophrl.datamodules.shards import Mp4Frames, ShardFormatError, decode_mp4, iter_episodes
from tests.datamodules.mp4_data import damage_pictures, encode_open_gop, textured_frames, write_mp4_shards


@pytest.mark.parametrize(("gop", "height", "width"), [(10, 48, 64), (4, 32, 32), (250, 16, 24)])
def test_any_subset_of_frames_is_bit_identical_to_decoding_the_whole_video(tmp_path, gop, height, width):
    path = write_mp4_shards(tmp_path / "v", [37, 60, 23], gop=gop, height=height, width=width)
    eager = {ep.key: ep.frames for ep in iter_episodes(path)}  # the whole-video decoder
    rng = np.random.default_rng(gop)
    for ep in iter_episodes(path, lazy_frames=True):
        assert isinstance(ep.frames, Mp4Frames) and ep.frames.shape == eager[ep.key].shape
        t = len(ep)
        subsets = [[0], [t - 1], [gop - 1, gop] if gop < t else [1], list(range(t))]
        subsets += [rng.choice(t, int(rng.integers(1, 9)), replace=True).tolist() for _ in range(12)]
        for idx in subsets:
            frames = Mp4Frames(ep.frames._data)  # a fresh source per subset: nothing held from earlier requests
            np.testing.assert_array_equal(frames.take(idx), eager[ep.key][idx])
        np.testing.assert_array_equal(np.asarray(ep.frames), eager[ep.key])


def test_a_window_decodes_only_the_gops_that_hold_it(tmp_path):
    path = write_mp4_shards(tmp_path / "v", [60], gop=10)
    data = next(iter_episodes(path, lazy_frames=True)).frames._data
    window = Mp4Frames(data)
    window.load(range(25, 28))  # GOP 2 (frames 20..29): from its keyframe up to frame 27 at most
    assert 0 < window.pictures_decoded <= 8
    two = Mp4Frames(data)
    two.load([3, 55])  # GOPs 0 and 5, not the four between them
    assert two.pictures_decoded <= 20
    whole = Mp4Frames(data)
    whole.load(range(60))
    assert whole.pictures_decoded == 60


def test_open_gops_are_decoded_with_the_gop_before_them():
    frames = textured_frames(60)
    data = encode_open_gop(frames)
    source = Mp4Frames(data)
    assert source._open_gop[1:].any()  # the encoder did produce leading pictures
    ref = decode_mp4(data)
    for idx in ([30], [29, 30, 31], [9, 10], list(range(40, 60))):
        frames_ = Mp4Frames(data)
        np.testing.assert_array_equal(frames_.take(idx), ref[idx])
        assert frames_.pictures_decoded < 60  # GOP-wise, not the fallback from the start


def test_frame_source_indexes_like_an_array_and_views_decode_nothing(tmp_path):
    path = write_mp4_shards(tmp_path / "v", [30], gop=10)
    ref = next(iter_episodes(path)).frames
    frames = next(iter_episodes(path, lazy_frames=True)).frames
    np.testing.assert_array_equal(frames[-1], ref[-1])
    np.testing.assert_array_equal(frames[3:9:2], ref[3:9:2])
    np.testing.assert_array_equal(frames[[4, 1, 4]], ref[[4, 1, 4]])
    np.testing.assert_array_equal(frames[np.array([[0, 29], [2, 3]])], ref[np.array([[0, 29], [2, 3]])])
    assert frames[5:5].shape == (0, *ref.shape[1:])
    strided = frames.select(np.arange(0, 30, 3))
    before = frames.pictures_decoded
    view = strided.select([1, 4])
    assert frames.pictures_decoded == before and view.shape == (2, *ref.shape[1:])
    np.testing.assert_array_equal(view[:], ref[[3, 12]])
    with pytest.raises(IndexError):
        frames[30]
    with pytest.raises(IndexError):
        frames.select([0, 30])


def test_undecodable_bytes_raise_a_format_error_naming_shard_and_key():
    with pytest.raises(ShardFormatError, match=r"s\.tar: sample 'k': undecodable video") as err:
        Mp4Frames(b"not a video", "s.tar", "k")
    assert (err.value.shard, err.value.key) == ("s.tar", "k")


def test_damaged_pictures_raise_a_format_error_when_decoded_not_when_opened(tmp_path):
    path = write_mp4_shards(tmp_path / "v", [30], gop=10)
    frames = Mp4Frames(damage_pictures(next(iter_episodes(path, lazy_frames=True)).frames._data), "s.tar", "k")
    assert len(frames) == 30
    with pytest.raises(ShardFormatError, match=r"s\.tar: sample 'k': undecodable video"):
        frames.load(range(30))
