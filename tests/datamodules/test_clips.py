import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec, stride_episode
from lightning_prophrl.datamodules.robot import PolicyDataModule, RobotClipDataModule
from lightning_prophrl.datamodules.shards import ShardFormatError, iter_episodes, list_shards, load_stats
from tests.conftest import coded_episode, write_coded_dataset
from tests.datamodules.mp4_data import damage_pictures, replace_member, write_mp4_shards


def _frame_index(video):
    """Recover the coded frame index from frames in [-1, 1] (channel 0 = index)."""
    return ((video[..., 0, :, :].mean((-1, -2)) + 1) * 127.5).round().long()


def test_clip_windows_line_up_frames_actions_and_history(coded_dataset):
    ds = ClipIterable([DatasetSpec(coded_dataset)], history_len=3, chunk_len=5, image_size=None)
    stats = load_stats(coded_dataset)
    ep = next(iter_episodes(coded_dataset))
    for c in (0, 2, 10, len(ep) - 2):
        clip = ds.make_clip(ep, c, 0)
        assert int(_frame_index(clip[K.COND_FRAME][None])[0]) == c
        last = len(ep) - 1
        assert _frame_index(clip[K.FUTURE]).tolist() == [min(c + i, last) for i in range(1, 6)]
        assert _frame_index(clip[K.HISTORY]).tolist() == [max(c + i, 0) for i in range(-3, 0)]
        assert clip[K.HISTORY_MASK].tolist() == [c + i >= 0 for i in range(-3, 0)]
        raw = stats.unnormalize(clip[K.ACTIONS].numpy())
        for i in range(5):
            expect = c + i if c + i <= last else 0.0  # "hold still" after the end
            assert raw[i, 0] == pytest.approx(expect, abs=1e-4)
        assert clip[K.CLIP_SUCCESS] == float(any(ep.meta["success_steps"][: min(c + 5, last) + 1]))


def test_stride_sums_motion_and_keeps_last_gripper():
    ep = coded_episode("s", 0, 9)
    st = stride_episode(ep, 3)
    assert len(st) == 3 and st.meta["fps"] == pytest.approx(10 / 3)
    np.testing.assert_allclose(st.actions[:, 0], [0 + 1 + 2, 3 + 4 + 5, 6 + 7 + 8])
    np.testing.assert_allclose(st.actions[:, 6], ep.actions[[2, 5, 8], 6])
    np.testing.assert_array_equal(st.frames, ep.frames[[0, 3, 6]])


def test_stream_is_deterministic_by_seed(coded_dataset):
    def keys(seed):
        ds = ClipIterable([DatasetSpec(coded_dataset)], 2, 4, 16, samples_per_epoch=24, shuffle_buffer=4, seed=seed)
        return [(c[K.EPISODE_KEY], c[K.FRAME_INDEX]) for c in ds]

    assert keys(3) == keys(3)
    assert keys(3) != keys(4)


def test_mixture_weights_are_honoured(tmp_path):
    a = write_coded_dataset(tmp_path / "a", "a", episodes=6, length=12)
    b = write_coded_dataset(tmp_path / "b", "b", episodes=6, length=12)
    n = 2000
    ds = ClipIterable([DatasetSpec(a, weight=3.0), DatasetSpec(b, weight=1.0)], 0, 2, 16, with_future=False,
                      samples_per_epoch=n, windows_per_episode=1, shuffle_buffer=8)  # fmt: skip
    frac_a = np.mean([c[K.DATASET_ID] == 0 for c in ds])
    # binomial std at p=0.75, n=2000 is ~0.0097: allow 4 sigma
    assert abs(frac_a - 0.75) < 0.04


def test_rank_and_worker_slots_read_disjoint_episodes(tmp_path, monkeypatch):
    path = write_coded_dataset(tmp_path / "d", "d", episodes=8, per_shard=1)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = ClipIterable([DatasetSpec(path)], 0, 2, 16, samples_per_epoch=40, shuffle_buffer=2)
        keys = [c[K.EPISODE_KEY] for c in ds]
        assert len(keys) == 20  # equal counts per rank
        seen.append(set(keys))
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 8


def test_too_few_shards_for_the_slots_is_a_clear_error(tmp_path, monkeypatch):
    path = write_coded_dataset(tmp_path / "d", "d", episodes=2, per_shard=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="1 shard"):
        list(ClipIterable([DatasetSpec(path)], 0, 2, 16, samples_per_epoch=4))


def test_robot_clip_datamodule_batches(coded_dataset):
    dm = RobotClipDataModule([{"path": coded_dataset, "weight": 1.0}], val_datasets=[coded_dataset], history_len=2,
                             chunk_len=4, image_size=32, batch_size=3, samples_per_epoch=12)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.FUTURE].shape == (3, 4, 3, 32, 32) and batch[K.HISTORY].shape == (3, 2, 3, 32, 32)
    assert batch[K.ACTIONS].shape == (3, 4, 14) and batch[K.ACTION_MASK].dtype == torch.bool
    assert batch[K.FUTURE].min() >= -1 and batch[K.FUTURE].max() <= 1
    assert len(batch[K.INSTRUCTION]) == 3 and batch[K.HAS_CAMERA].tolist() == [False] * 3
    val = list(dm.val_dataloader())
    assert sum(len(b[K.INSTRUCTION]) for b in val) == 8 * 4  # every episode, windows_per_episode clips


def test_policy_datamodule_selects_dims(coded_dataset):
    dm = PolicyDataModule([coded_dataset], chunk_len=3, action_dims=[0, 1, 2, 6], state_dim=4, image_size=16,
                          batch_size=5, samples_per_epoch=10)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.OBS_IMAGE].shape == (5, 3, 16, 16) and batch[K.ACTIONS].shape == (5, 3, 4)
    assert batch[K.OBS_STATE].shape == (5, 4) and K.FUTURE not in batch
    with pytest.raises(ValueError, match="action_dims"):
        PolicyDataModule([coded_dataset], action_dims=[14])


def test_two_dataloader_workers_read_disjoint_shards_and_fill_the_epoch(tmp_path):

    data = write_coded_dataset(tmp_path / "coded", "coded", episodes=8, length=20, per_shard=2)  # 4 shards
    dm = RobotClipDataModule([data], history_len=2, chunk_len=2, image_size=16, batch_size=2, num_workers=2,
                             samples_per_epoch=16, windows_per_episode=2, shuffle_buffer=2)  # fmt: skip
    dm.setup("fit")
    keys = [k for batch in dm.train_dataloader() for k in batch[K.EPISODE_KEY]]
    assert len(keys) == 16
    # worker w reads shards w::2 (episodes 0,1,4,5 or 2,3,6,7): both workers delivered, from their own shards
    index = {int(k.rsplit("_", 1)[-1]) for k in keys}
    assert index & {0, 1, 4, 5} and index & {2, 3, 6, 7}


@pytest.mark.parametrize(("stride", "eval_mode"), [(1, False), (2, False), (1, True)])
def test_windows_decoded_lazily_equal_clips_cut_from_whole_decoded_episodes(tmp_path, stride, eval_mode):
    path = write_mp4_shards(tmp_path / "v", [37, 60, 23, 41], gop=10)
    ds = ClipIterable([DatasetSpec(path, stride=stride)], history_len=3, chunk_len=6, image_size=32,
                      samples_per_epoch=40, windows_per_episode=3, shuffle_buffer=4, eval_mode=eval_mode)  # fmt: skip
    whole = {ep.key: stride_episode(ep, stride) for ep in iter_episodes(path)}  # every frame decoded first
    clips = list(ds)
    assert len(clips) == (12 if eval_mode else 40)
    for clip in clips:
        ref = ds.make_clip(whole[clip[K.EPISODE_KEY]], clip[K.FRAME_INDEX], 0)
        for key in (K.COND_FRAME, K.FUTURE, K.HISTORY, K.HISTORY_MASK, K.ACTIONS):
            assert torch.equal(clip[key], ref[key]), (clip[K.EPISODE_KEY], clip[K.FRAME_INDEX], key)


def test_load_windows_decodes_the_frames_of_the_windows_and_no_other(tmp_path):
    path = write_mp4_shards(tmp_path / "v", [60], gop=10)
    ds = ClipIterable([DatasetSpec(path)], history_len=2, chunk_len=4, image_size=None)
    ep = stride_episode(next(iter_episodes(path, lazy_frames=True)), 2)  # 30 strided frames = source 0, 2, ..., 58
    assert ds.load_windows(ep, np.array([5, 20]))
    strided = {i for c in (5, 20) for i in ds.frame_indices(len(ep), c)}
    source = ep.frames.base
    assert set(source._cache) == {2 * i for i in strided}
    assert source.pictures_decoded < 60
    before = source.pictures_decoded
    ds.make_clip(ep, 20, 0)  # served from the frames already decoded
    assert source.pictures_decoded == before


def test_a_video_that_fails_to_decode_raises_or_is_skipped_and_counted(tmp_path):
    path = write_mp4_shards(tmp_path / "v", [30, 31], gop=10)
    shard = list_shards(path)[0]
    bad = next(iter_episodes(path, lazy_frames=True))
    replace_member(shard, f"{bad.key}.frames.mp4", damage_pictures(bad.frames._data))
    kw = dict(history_len=2, chunk_len=4, image_size=None, samples_per_epoch=12, shuffle_buffer=2)
    with pytest.raises(ShardFormatError, match=rf"shard-000000\.tar: sample '{bad.key}': undecodable video"):
        list(ClipIterable([DatasetSpec(path)], **kw))
    ds = ClipIterable([DatasetSpec(path)], on_error="skip", **kw)
    clips = list(ds)
    assert len(clips) == 12 and {c[K.EPISODE_KEY] for c in clips} == {"v_001"} and ds.skips.count == 1
