import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.prompts import BRANCH, PromptDataModule
from lightning_prophrl.datamodules.shards import iter_episodes
from tests.conftest import write_coded_dataset


def pixel(frame: torch.Tensor) -> int:
    """The frame index a coded frame carries in channel 0 (see ``coded_episode``)."""
    return round((float(frame[0, 0, 0]) + 1.0) * 127.5)


def test_branch_prompts_start_before_success_keep_the_margin_and_carry_the_recorded_memory(tmp_path):
    path = write_coded_dataset(tmp_path / "coded", "coded", episodes=4, length=30)
    dm = PromptDataModule(datasets=[path], eval_fraction=0.0, num_prompts=3, image_size=16, updates_per_epoch=2,
                          branch_every=4, branch_margin=8, history_len=3, history_stride=2)  # fmt: skip
    dm.setup()
    episodes = {int(ep.meta["seed"]): ep for ep in iter_episodes(path)}
    expected = []
    for i, ep in sorted(episodes.items()):
        n = len(ep)  # success_steps has one flag per frame: the last frame has no action of its own
        first = next((t for t, s in enumerate(ep.meta["success_steps"]) if s), n)
        expected += [(i, t) for t in range(0, min(first - 1, n - 1 - 8) + 1, 4)]
    ds = dm.train_dataloader().dataset
    got = [(int(p[K.SEED]), int(p[K.FRAME_INDEX])) for p in (ds[j] for j in range(len(ds)))]
    assert got == expected and (1, 24) not in got and (0, 20) in got  # episode 1 succeeds at frame 28, 0 never
    for j in range(len(ds)):
        p = ds[j]
        i, t = int(p[K.SEED]), int(p[K.FRAME_INDEX])
        assert pixel(p[K.COND_FRAME]) == t
        torch.testing.assert_close(p[K.OBS_STATE], torch.from_numpy(episodes[i].state[t]))
        hist = [t - 2 * k for k in (3, 2, 1)]
        assert p[K.HISTORY_MASK].tolist() == [h >= 0 for h in hist]
        assert [pixel(f) for f, ok in zip(p[K.HISTORY], p[K.HISTORY_MASK]) if ok] == [h for h in hist if h >= 0]
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.HISTORY].shape == (3, 3, 3, 16, 16) and batch[K.HISTORY_MASK].dtype == torch.bool


def test_branch_settings_are_checked():
    with pytest.raises(ValueError, match="history_stride"):
        PromptDataModule(tasks=["reach-v3"], branch_every=2, history_stride=0)


def test_collation_keeps_ragged_prefixes_as_a_list_and_names_any_other_ragged_key():
    from lightning_prophrl.datamodules.robot import collate_clips

    out = collate_clips([{K.PREFIX_ACTIONS: torch.zeros(3, 14)}, {K.PREFIX_ACTIONS: torch.zeros(5, 14)}])
    assert [tuple(v.shape) for v in out[K.PREFIX_ACTIONS]] == [(3, 14), (5, 14)]
    with pytest.raises(ValueError, match="'video'.*differ in shape"):
        collate_clips([{"video": torch.zeros(2, 3)}, {"video": torch.zeros(4, 3)}])


def test_replacing_the_branch_pool_samples_only_the_new_starts_with_a_new_sequence(tmp_path):
    first = write_coded_dataset(tmp_path / "first", "first", episodes=4, length=30)
    second = write_coded_dataset(tmp_path / "second", "second", episodes=3, length=30)
    dm = PromptDataModule(datasets=[first], eval_fraction=0.0, num_prompts=4, image_size=16, updates_per_epoch=6,
                          branch_every=4, branch_margin=8, history_len=2, history_stride=2)  # fmt: skip
    dm.setup()
    first_pool = list(dm.train_prompts)

    def drawn() -> list[tuple[str, int, int]]:
        return [(t, int(s), int(f)) for b in dm.train_dataloader()
                for t, s, f in zip(b[K.TASK], b[K.SEED], b[K.FRAME_INDEX])]  # fmt: skip

    before = drawn()
    assert {t for t, _, _ in before} == {"first"} and drawn() == before  # one pool, one reproducible sequence
    n = dm.replace_train_datasets([second])
    assert n == len(dm.train_prompts) > 0 and {p[K.TASK] for p in dm.train_prompts} == {"second"}
    assert {t for t, _, _ in drawn()} == {"second"}
    # the same episodes again: the same starts, sampled in another order (a new generator seed per pool)
    assert dm.replace_train_datasets([first]) == len(first_pool)
    assert [(p[K.SEED], p[BRANCH][1]) for p in dm.train_prompts] == [(p[K.SEED], p[BRANCH][1]) for p in first_pool]
    again = drawn()
    assert {t for t, _, _ in again} == {"first"} and again != before
    # a pool without any start (episodes shorter than the margin) leaves the current one in place
    short = write_coded_dataset(tmp_path / "short", "short", episodes=2, length=5)
    pool = list(dm.train_prompts)
    assert dm.replace_train_datasets([short]) == 0 and dm.train_prompts == pool
