import io
import json
import os
import tarfile

import numpy as np
import pytest

from lightning_prophrl.datamodules.shards import (
    Episode,
    Mp4Frames,
    ShardFormatError,
    ShardWriter,
    SkipCounter,
    encode_mp4,
    iter_episodes,
    list_shards,
    load_stats,
)
from tests.conftest import coded_episode, write_coded_dataset


def test_round_trip_is_exact_and_shards_roll(tmp_path):
    path = write_coded_dataset(tmp_path / "d", "d", episodes=5, per_shard=2)
    assert [os.path.basename(s) for s in list_shards(path)] == [f"shard-00000{i}.tar" for i in range(3)]
    assert not list(tmp_path.glob("d/*.tmp"))
    eps = list(iter_episodes(path))
    assert [e.key for e in eps] == [f"d_{i:05d}" for i in range(5)]
    for i, e in enumerate(eps):
        ref = coded_episode("d", i, 30 + i % 3, success=bool(i % 2))
        np.testing.assert_array_equal(e.frames, ref.frames)
        np.testing.assert_array_equal(e.actions, ref.actions)
        np.testing.assert_array_equal(e.action_mask, ref.action_mask)
        np.testing.assert_array_equal(e.state, ref.state)
        assert e.meta["instruction"] == "task of d" and e.meta["dataset"] == "d" and e.success == bool(i % 2)
    stats = load_stats(path)
    assert stats.count == sum(30 + i % 3 for i in range(5))
    assert stats.extra["episodes"] == 5 and stats.extra["success_rate"] == pytest.approx(0.4)


def test_mp4_frames_round_trip_within_codec_tolerance(tmp_path):
    ep = coded_episode("v", 0, 12, size=32)
    ep.frames = (
        np.repeat(np.linspace(0, 250, 12).astype(np.uint8)[:, None, None, None], 32, 1).repeat(32, 2).repeat(3, 3)
    )
    with ShardWriter(tmp_path / "v", "v", frame_format="mp4") as w:
        w.write(ep)
    (back,) = list(iter_episodes(tmp_path / "v"))
    assert back.frames.shape == ep.frames.shape
    assert np.abs(back.frames.astype(int) - ep.frames).mean() < 3


def test_writer_never_leaves_a_partial_shard_under_its_final_name(tmp_path):
    out = tmp_path / "w"
    with pytest.raises(RuntimeError), ShardWriter(out, "w", max_count=2) as w:
        for i in range(3):
            w.write(coded_episode("w", i, 10))
        raise RuntimeError("crash while writing the second shard")
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-000000.tar", "stats.json"]
    assert len(list(iter_episodes(out))) == 2  # what was finished is kept


def test_writer_rejects_bad_episodes_before_writing(tmp_path):
    w = ShardWriter(tmp_path / "b", "b")
    ep = coded_episode("b", 0, 10)
    ep.actions = ep.actions[:, :7]
    with pytest.raises(ValueError, match="unified space"):
        w.write(ep)
    ep = coded_episode("b", 1, 10)
    ep.actions[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        w.write(ep)
    with pytest.raises(FileExistsError):
        write_coded_dataset(tmp_path / "c", "c", 2)
        ShardWriter(tmp_path / "c", "c")


def _raw_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _files(ep: Episode, **override):
    files = {
        "frames.npy": _npy(ep.frames),
        "actions.npy": _npy(ep.actions),
        "action_mask.npy": _npy(ep.action_mask),
        "meta.json": json.dumps({"dataset": "x", **ep.meta}).encode(),
    }
    files.update(override)
    return {k: v for k, v in files.items() if v is not None}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"actions.npy": _npy(np.full((10, 14), np.nan, np.float32))}, "NaN"),
        ({"actions.npy": _npy(np.zeros((10, 7), np.float32))}, "unified space"),
        ({"actions.npy": _npy(np.zeros((9, 14), np.float32))}, "length mismatch"),
        ({"meta.json": None}, "missing key 'meta.json'"),
        ({"frames.npy": None, "frames.mp4": b"not a video"}, "undecodable video"),
    ],
)
def test_reader_names_shard_key_and_problem(tmp_path, override, message):
    good, bad = coded_episode("x", 0, 10), coded_episode("x", 1, 10)
    shard = tmp_path / "shard-000000.tar"
    _raw_tar(shard, [(good.key, _files(good)), (bad.key, _files(bad, **override))])
    with pytest.raises(ShardFormatError, match=message) as err:
        list(iter_episodes([str(shard)]))
    assert "shard-000000.tar" in str(err.value) and bad.key in str(err.value)
    counter = SkipCounter()
    kept = list(iter_episodes([str(shard)], on_error="skip", skip_counter=counter))
    assert [e.key for e in kept] == [good.key] and counter.count == 1


def test_truncated_tar_raises_naming_the_shard_and_skip_mode_counts(tmp_path):
    path = write_coded_dataset(tmp_path / "t", "t", episodes=6, per_shard=3)
    shard = list_shards(path)[1]
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    with pytest.raises(ShardFormatError, match="shard-000001.tar"):
        list(iter_episodes(path))
    counter = SkipCounter()
    kept = list(iter_episodes(path, on_error="skip", skip_counter=counter))
    assert {e.key for e in kept} >= {f"t_{i:05d}" for i in range(3)} and len(kept) < 6
    assert counter.count >= 1


def test_lazy_reader_checks_the_video_without_decoding_it(tmp_path):
    good, bad = coded_episode("x", 0, 10), coded_episode("x", 1, 10)
    shard = tmp_path / "shard-000000.tar"
    eleven = encode_mp4(np.zeros((11, 16, 16, 3), np.uint8))
    _raw_tar(shard, [(good.key, _files(good, **{"frames.npy": None, "frames.mp4": encode_mp4(good.frames)})),
                     (bad.key, _files(bad, **{"frames.npy": None, "frames.mp4": eleven}))])  # fmt: skip
    with pytest.raises(ShardFormatError, match=r"sample 'x_00001': frame/action length mismatch: 11 frames"):
        list(iter_episodes([str(shard)], lazy_frames=True))
    (first,) = iter_episodes([str(shard)], on_error="skip", lazy_frames=True)
    assert isinstance(first.frames, Mp4Frames) and first.frames.pictures_decoded == 0
    _raw_tar(shard, [(bad.key, _files(bad, **{"frames.npy": None, "frames.mp4": b"not a video"}))])
    with pytest.raises(ShardFormatError, match="undecodable video"):
        list(iter_episodes([str(shard)], lazy_frames=True))


def test_every_name_of_the_format_is_still_importable_from_shards():
    from lightning_prophrl.datamodules import shards

    names = {"INDEX_FILE", "REQUIRED_META", "SHARD_EE_POSES", "SHARD_TARGET_POSES", "Episode", "OnError",
             "ShardFormatError", "ShardWriter", "SkipCounter", "decode_episode", "decode_mp4", "encode_mp4",
             "iter_episodes", "list_shards", "load_stats", "read_index", "validate_arrays"}  # fmt: skip
    assert names <= set(shards.__all__) and all(hasattr(shards, n) for n in shards.__all__)
