import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DistributedSampler

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
    assert {t for t, _, _ in before} == {"first"} and drawn() != before  # the next epoch continues the sequence
    dm.load_state_dict({"position": 0, "seed": 0})
    assert drawn() == before  # one pool, one reproducible sequence
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


# ---- the prompts of each RL update: exact resume, any number of processes -------------------------------------------
TASK = "reach-v3"


def seed_prompts(**kw) -> PromptDataModule:
    return PromptDataModule(**{"tasks": [TASK], "train_seeds": (2000, 2100), "num_prompts": 4, "updates_per_epoch": 3,
                               "seed": 5, **kw})  # fmt: skip


def seeds_of(loader, limit: int | None = None) -> list[list[int]]:
    return [b[K.SEED].tolist() for _, b in zip(range(limit or 10**9), loader)]  # never draws past the limit


def test_the_prompts_of_an_update_depend_only_on_the_seed_and_its_index():
    dm = seed_prompts()
    dm.setup()
    whole = seeds_of(dm.train_dataloader()) + seeds_of(dm.train_dataloader())  # two epochs
    assert dm.position == 6 and len({tuple(b) for b in whole}) == 6  # the second epoch continues the sequence
    parts = seed_prompts()
    parts.setup()
    first = seeds_of(parts.train_dataloader(), limit=2)  # stopped after two updates
    state = parts.state_dict()
    assert state == {"position": 2, "seed": 5}
    resumed = seed_prompts(seed=0)  # the checkpoint's seed wins
    resumed.setup()
    resumed.load_state_dict(state)
    rest_of_epoch = seeds_of(resumed.train_dataloader())
    assert len(rest_of_epoch) == 1  # epoch 0 is updates 0, 1, 2: a pass from update 2 finishes it
    assert first + rest_of_epoch + seeds_of(resumed.train_dataloader()) == whole


def test_ranks_take_disjoint_whole_shares_of_every_update_and_keep_the_number_of_updates():
    def run(rank: int, world: int):
        dm = seed_prompts()
        dm.setup()
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, training=True)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # Lightning keeps it under DDP
        return seeds_of(loader), len(loader), dm.prompts_per_rank

    one, n_one, p_one = run(0, 1)
    (r0, n0, p0), (r1, n1, _) = run(0, 2), run(1, 2)
    assert n_one == n0 == n1 == 3 and len(one) == len(r0) == len(r1) == 3
    assert (p_one, p0) == (4, 2) and all(len(b) == 2 for b in r0 + r1)
    assert [a + b for a, b in zip(r0, r1)] == one  # rank 0 the first two prompts of each update, rank 1 the others
    with pytest.raises(ValueError, match="num_prompts=4 does not split into 3 equal shares"):
        run(0, 3)


class RecordPrompts(L.LightningModule):
    """Trains one weight on the prompts' seeds and records each update's prompts and loss."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[K.SEED].tolist())
        loss = (self.layer(batch[K.SEED].float()[:, None] / 1000.0) - 1.0).pow(2).mean()
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class Killed(Exception):
    pass


class KillAfter(L.Callback):
    """Checkpoint after update ``k`` (as ``ModelCheckpoint(every_n_train_steps)`` does), then die."""

    def __init__(self, k: int, path: Path):
        self.k, self.path = k, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if len(pl_module.seen) == self.k:
            trainer.save_checkpoint(self.path)
            raise Killed


def fit(module, dm, callbacks=(), ckpt_path=None, **kw):
    trainer = L.Trainer(**{"accelerator": "cpu", "max_epochs": 3, "logger": False, "enable_checkpointing": False,
                           "enable_progress_bar": False, "enable_model_summary": False, "callbacks": list(callbacks),
                           **kw})  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)


@pytest.mark.parametrize("k", [3, 4])  # at an epoch's end (3 updates per epoch) and mid-epoch
def test_resuming_after_update_k_trains_the_same_prompts_and_losses_as_the_uninterrupted_run(k, tmp_path):
    torch.manual_seed(0)
    full = RecordPrompts()
    fit(full, seed_prompts())
    assert len(full.seen) == 9 and len({tuple(b) for b in full.seen}) == 9
    torch.manual_seed(0)
    first = RecordPrompts()
    with pytest.raises(Killed):
        fit(first, seed_prompts(), callbacks=[KillAfter(k, tmp_path / "k.ckpt")])
    ckpt = torch.load(tmp_path / "k.ckpt", weights_only=False)
    assert ckpt["PromptDataModule"] == {"position": k, "seed": 5}
    resumed = RecordPrompts()
    fit(resumed, seed_prompts(), ckpt_path=tmp_path / "k.ckpt")
    assert first.seen + resumed.seen == full.seen
    assert first.losses + resumed.losses == full.losses  # bit for bit


@pytest.mark.slow
def test_one_and_two_ddp_processes_train_the_same_updates_on_the_same_prompts(tmp_path):
    out = str(tmp_path / "seen")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), out], check=True, env=env, timeout=300,
                   cwd=tmp_path)  # fmt: skip
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    one = RecordPrompts()
    fit(one, seed_prompts(), max_epochs=2)
    assert all(r["world"] == 2 for r in ranks) and len(one.seen) == 6
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 6  # updates_per_epoch x epochs on either world size
    assert [a + b for a, b in zip(ranks[0]["seen"], ranks[1]["seen"])] == one.seen


def _ddp_probe(out: str) -> None:
    """Run as a script by the test above: a 2-process CPU DDP (gloo) fit recording each rank's prompts."""
    module = RecordPrompts()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=seed_prompts())
    Path(f"{out}.rank{trainer.global_rank}.json").write_text(json.dumps({"seen": module.seen,
                                                                         "world": trainer.world_size}))  # fmt: skip


if __name__ == "__main__":
    _ddp_probe(sys.argv[1])
