import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prophrl import constants as K
from lightning_prophrl.callbacks import OnPolicyBranchStarts
from lightning_prophrl.datamodules.prompts import PromptDataModule
from tests.conftest import write_coded_dataset


class PoolRecorder(L.LightningModule):
    """One 'RL update' per batch: records which pool (task) each update's prompts came from."""

    def __init__(self):
        super().__init__()
        self.policy = torch.nn.Linear(1, 1)
        self.updates, self.seen, self.modes, self.drawn = 0, [], [], []

    def training_step(self, batch, batch_idx):
        self.updates += 1
        self.seen.append(set(batch[K.TASK]))
        self.drawn.append(list(zip(batch[K.TASK], batch[K.FRAME_INDEX].tolist())))
        self.modes.append(self.policy.training)
        return self.policy(torch.ones(1, 1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(tmp_path, every: int, epochs: int, reload: int = 1, resume: str | None = None, checkpoints: bool = False):
    calls = []

    def collect(policy, update):
        calls.append((update, policy.training))
        path = write_coded_dataset(tmp_path / f"u{update}", f"pool{update}", episodes=3, length=30)
        return path, {"env_steps": 7 * update, "success_rate": 0.5}

    sft = tmp_path / "sft"
    dm = PromptDataModule(datasets=[str(sft) if sft.exists() else write_coded_dataset(sft, "sft", episodes=3)],
                          eval_fraction=0.0,
                          num_prompts=2, image_size=16, updates_per_epoch=2, branch_every=4, branch_margin=8,
                          history_len=2, history_stride=2)  # fmt: skip
    cb = OnPolicyBranchStarts(collect, every, history_path=str(tmp_path / "starts.jsonl"))
    module = PoolRecorder()
    saver = (
        [ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")] if checkpoints else []
    )
    trainer = L.Trainer(max_epochs=epochs, reload_dataloaders_every_n_epochs=reload, callbacks=[cb, *saver],
                        logger=False, enable_checkpointing=checkpoints, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    return module, cb, calls


def test_every_period_samples_the_starts_of_the_policy_s_newest_rollouts(tmp_path):
    module, cb, calls = _fit(tmp_path, every=2, epochs=3)
    assert module.seen == [{"sft"}] * 2 + [{"pool2"}] * 2 + [{"pool4"}] * 2
    assert calls == [(2, False), (4, False)]  # collected in eval mode, never after the last update
    assert all(module.modes)  # ... and the policy trains again afterwards
    assert [r["update"] for r in cb.history] == [2, 4] and cb.real_steps_total == 14 + 28
    assert all(r["starts"] > 0 for r in cb.history)
    assert len((tmp_path / "starts.jsonl").read_text().splitlines()) == 2


def test_a_resumed_run_samples_the_starts_it_was_sampling(tmp_path):
    full, _, _ = _fit(tmp_path / "full", every=2, epochs=3, checkpoints=True)
    ckpt = tmp_path / "full" / "ckpt" / "epoch=1.ckpt"  # saved after the starts of update 4 were collected
    resumed, cb, calls = _fit(tmp_path / "full", every=2, epochs=3, resume=str(ckpt))
    assert calls == [] and [r["update"] for r in cb.history] == [2, 4]  # restored, not collected again
    assert resumed.drawn == full.drawn[4:] and {t for t, _ in resumed.drawn[0]} == {"pool4"}


@pytest.mark.parametrize("every,reload", [(3, 1), (2, 0)])
def test_a_period_that_does_not_match_the_epochs_is_refused(tmp_path, every, reload):
    with pytest.raises(ValueError, match="updates_per_epoch|reload_dataloaders_every_n_epochs"):
        _fit(tmp_path, every=every, epochs=2, reload=reload)
