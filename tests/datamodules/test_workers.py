"""Rank x DataLoader-worker splitting and skip accounting over real shards, with real worker processes.

Ranks are simulated the way the library reads them when torch.distributed is not initialised: ``RANK`` and
``WORLD_SIZE`` in the environment (inherited by the DataLoader workers).
"""

import gc
import io
import os
import pickle
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec
from lightning_prophrl.datamodules.reward import RewardDataModule
from lightning_prophrl.datamodules.robot import PolicyDataModule, RobotClipDataModule
from lightning_prophrl.datamodules.shards import ShardFormatError, iter_episodes, list_shards
from tests.conftest import write_coded_dataset

LENGTH = 6


@pytest.fixture(autouse=True)
def _stop_workers_between_tests():
    """Collect each test's DataLoaders (and stop their persistent workers) when it ends: left to a later, arbitrary
    garbage collection, a worker shutdown can stall 5 s per worker inside another test's DataLoader."""
    yield
    gc.collect()


def _dataset(tmp_path, episodes: int, per_shard: int) -> str:
    """``episodes`` episodes ``d_00000 ..``, ``per_shard`` to a shard (the last shard takes the rest)."""
    return write_coded_dataset(tmp_path / "d", "d", episodes=episodes, length=LENGTH, per_shard=per_shard)


def _shard_of(path: str) -> dict[str, int]:
    """Episode key -> index of the shard that holds it."""
    out = {}
    for j, shard in enumerate(list_shards(path)):
        with tarfile.open(shard) as tar:
            out.update({m.name.split(".", 1)[0]: j for m in tar.getmembers()})
    return out


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _first_error(loader) -> Exception:
    """Iterate ``loader`` up to its first error and return it without its traceback: a DataLoader iterator reachable
    only through a traceback cycle takes 5 s per worker to stop when the garbage collector finally finds it."""
    try:
        for _ in loader:
            pass
    except Exception as err:  # noqa: BLE001 - the test inspects whatever came out
        err.__traceback__ = None
        return err
    raise AssertionError("the loader raised nothing")


def _val_keys(path: str, workers: int, split: str) -> list[str]:
    dm = RobotClipDataModule([path], val_datasets=[path], history_len=0, chunk_len=1, image_size=8, batch_size=2,
                             num_workers=workers, windows_per_episode=1, shard_split=split)  # fmt: skip
    dm.setup("fit")
    return [k for batch in dm.val_dataloader() for k in batch[K.EPISODE_KEY]]


# (world size, workers per rank, shards of 13 episodes, episodes per shard, split): uneven shard counts and sizes;
# enough shards for "shards", fewer shards than ranks x workers for "samples"
CASES = [
    (1, 2, 2, 7, "shards"),
    (1, 2, 5, 3, "shards"),
    (1, 3, 3, 5, "shards"),
    (1, 3, 7, 2, "shards"),
    (2, 2, 4, 4, "shards"),
    (2, 2, 7, 2, "shards"),
    (2, 3, 13, 1, "shards"),
    (1, 3, 2, 7, "samples"),
    (2, 2, 3, 5, "samples"),
    (2, 3, 1, 13, "samples"),
    (2, 3, 7, 2, "samples"),
]


@pytest.mark.parametrize("world, workers, shards, per_shard, split", CASES)
def test_one_pass_reads_every_episode_exactly_once_over_ranks_and_workers(tmp_path, monkeypatch, world, workers,
                                                                          shards, per_shard, split):  # fmt: skip
    episodes = 13
    path = _dataset(tmp_path, episodes, per_shard)
    assert len(list_shards(path)) == shards
    per_rank = []
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        per_rank.append(_val_keys(path, workers, split))
    seen = Counter(k for keys in per_rank for k in keys)
    assert seen == Counter({f"d_{i:05d}": 1 for i in range(episodes)})  # complete and disjoint
    if split == "shards":  # slot r * W + w owns shards[slot::R * W]: a rank reads only its slots' shards
        shard_of = _shard_of(path)
        for rank, keys in enumerate(per_rank):
            assert {shard_of[k] % (world * workers) // workers for k in keys} <= {rank}


@pytest.mark.parametrize("world, workers, per_shard, split", [(2, 2, 2, "shards"), (1, 3, 4, "shards"),
                                                              (2, 2, 5, "samples")])  # fmt: skip
def test_training_stream_gives_each_rank_its_own_episodes_and_equal_steps(tmp_path, monkeypatch, world, workers,
                                                                           per_shard, split):  # fmt: skip
    episodes = 10
    path = _dataset(tmp_path, episodes, per_shard)
    per_rank = []
    for rank in range(world):
        _as_rank(monkeypatch, rank, world)
        dm = RobotClipDataModule([path], history_len=0, chunk_len=1, image_size=8, batch_size=2, num_workers=workers,
                                 samples_per_epoch=48, windows_per_episode=1, shuffle_buffer=1,
                                 shard_split=split)  # fmt: skip
        dm.setup("fit")
        per_rank.append([k for batch in dm.train_dataloader() for k in batch[K.EPISODE_KEY]])
    assert len({len(keys) for keys in per_rank}) == 1 and len(per_rank[0]) >= 48 // world
    sets = [set(keys) for keys in per_rank]
    assert all(a.isdisjoint(b) for i, a in enumerate(sets) for b in sets[i + 1 :])
    assert set().union(*sets) == {f"d_{i:05d}" for i in range(episodes)}


@pytest.mark.parametrize(
    "world, workers, shards, expect",
    [(1, 3, 2, "num_workers <= 2"), (2, 2, 3, "num_workers <= 1"), (4, 1, 3, "use at most 3 device")],
)
def test_too_few_shards_is_an_error_naming_the_flag_before_workers_start(tmp_path, monkeypatch, world, workers,
                                                                         shards, expect):  # fmt: skip
    path = _dataset(tmp_path, 6, 6 // shards)
    _as_rank(monkeypatch, world - 1, world)
    modules = [
        RobotClipDataModule([path], history_len=0, chunk_len=1, image_size=8, num_workers=workers),
        PolicyDataModule([path], chunk_len=1, image_size=8, num_workers=workers),
        RewardDataModule([path], image_size=8, num_workers=workers, val_fraction=0.0),
    ]
    for dm in modules:
        dm.setup("fit")
        with pytest.raises(ValueError) as err:
            dm.train_dataloader()
        message = str(err.value)
        assert message.startswith(type(dm).__name__)
        for part in (f"{shards} shard(s)", f"num_workers={workers}", f"{world * max(workers, 1)} slots", path,
                     expect, "shard_split='samples'"):  # fmt: skip
            assert part in message, (part, message)


def test_too_few_shards_inside_a_plain_dataloader_keeps_its_type_and_message(tmp_path):
    from torch.utils.data import DataLoader

    path = _dataset(tmp_path, 4, 2)  # 2 shards
    ds = ClipIterable([DatasetSpec(path)], 0, 1, 8, eval_mode=True, windows_per_episode=1)
    err = _first_error(DataLoader(ds, batch_size=None, num_workers=3))
    assert type(err) is ValueError and "2 shard(s) but 1 rank(s) x 3 DataLoader worker(s)" in str(err)


def test_unknown_shard_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shard_split"):
        RobotClipDataModule([str(tmp_path)], shard_split="resample")


# ---------------------------------------------------------------------------------------------------------------------
# damaged samples
# ---------------------------------------------------------------------------------------------------------------------
def _damage(path: str, key: str) -> str:
    """Rewrite the shard holding ``key`` with NaN actions for that sample; returns the shard's path."""
    shard = list_shards(path)[_shard_of(path)[key]]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    np.save(buf, np.full((LENGTH, 14), np.nan, np.float32))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name == f"{key}.actions.npy":
                data = buf.getvalue()
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return shard


@pytest.mark.parametrize("split", ["shards", "samples"])
def test_a_damaged_sample_counts_once_in_the_main_process_over_workers_and_epochs(tmp_path, split):
    path = _dataset(tmp_path, 6, 2)  # 3 shards
    _damage(path, "d_00003")
    dm = RobotClipDataModule([path], history_len=0, chunk_len=1, image_size=8, batch_size=2, num_workers=2,
                             samples_per_epoch=40, windows_per_episode=1, shuffle_buffer=1, on_error="skip",
                             shard_split=split)  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in range(2):  # 20 clips per worker and epoch: every worker cycles over its episodes several times
        keys = [k for batch in loader for k in batch[K.EPISODE_KEY]]
        assert len(keys) == 40 and "d_00003" not in keys
    assert dm.skipped_samples == 1


@pytest.mark.parametrize("split", ["shards", "samples"])
@pytest.mark.parametrize("extra", [0, 100])  # cut at a tar block boundary (reads as a clean end) or inside a member
def test_a_truncated_shard_counts_once_however_many_slots_read_it(tmp_path, split, extra):
    path = _dataset(tmp_path, 6, 3)  # 2 shards
    shard = list_shards(path)[1]
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2 + extra])
    dm = RobotClipDataModule([path], val_datasets=[path], history_len=0, chunk_len=1, image_size=8, num_workers=2,
                             windows_per_episode=1, on_error="skip", shard_split=split)  # fmt: skip
    dm.setup("fit")
    keys = [k for batch in dm.val_dataloader() for k in batch[K.EPISODE_KEY]]
    assert {"d_00000", "d_00001", "d_00002"} <= set(keys) and len(keys) == len(set(keys)) < 6
    assert dm.skipped_samples == 1
    with pytest.raises(ShardFormatError, match=r"shard-000001.tar: sample '\?': unreadable tar"):
        list(ClipIterable([DatasetSpec(path)], 0, 1, 8, eval_mode=True, shard_split=split))  # on_error="raise"


def test_an_error_in_a_worker_keeps_its_type_shard_and_key(tmp_path):
    path = _dataset(tmp_path, 6, 2)  # 3 shards
    shard = _damage(path, "d_00004")
    dm = RobotClipDataModule([path], val_datasets=[path], history_len=0, chunk_len=1, image_size=8, num_workers=3,
                             windows_per_episode=1)  # fmt: skip
    dm.setup("fit")
    err = _first_error(dm.val_dataloader())
    assert isinstance(err, ShardFormatError) and "DataLoader worker" in str(err)
    assert err.shard == shard and err.key == "d_00004" and "NaN" in err.problem


def test_shard_format_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ShardFormatError(os.path.join("x", "shard-000001.tar"), "k_1", "bad actions")))
    assert isinstance(err, ShardFormatError)
    assert (err.shard, err.key, err.problem) == (os.path.join("x", "shard-000001.tar"), "k_1", "bad actions")


def test_reward_datamodule_splits_once_and_counts_a_damaged_sample_once(tmp_path):
    path = _dataset(tmp_path, 6, 2)  # 3 shards
    _damage(path, "d_00001")
    dm = RewardDataModule([path], image_size=8, batch_size=2, num_workers=3, val_fraction=0.0, samples_per_epoch=36,
                          frames_per_episode=1, shuffle_buffer=1, on_error="skip")  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in range(2):
        keys = [k for batch in loader for k in batch[K.EPISODE_KEY]]
        assert len(keys) == 36 and set(keys) == {f"d_{i:05d}" for i in range(6)} - {"d_00001"}
    assert dm.skipped_samples == 1


class _Episodes(torch.utils.data.IterableDataset):
    def __init__(self, path):
        self.path = path

    def __iter__(self):
        yield from (ep.key for ep in iter_episodes(self.path, on_error="skip"))  # its own, unshared counter


def test_iter_episodes_with_its_own_counter_skips_inside_a_worker(tmp_path):
    path = _dataset(tmp_path, 4, 2)
    _damage(path, "d_00002")
    keys = list(torch.utils.data.DataLoader(_Episodes(path), batch_size=None, num_workers=1))
    assert keys == ["d_00000", "d_00001", "d_00003"]
