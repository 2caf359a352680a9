"""On-policy branch starts for RL on short imagined branches from real states.

RL inside Prophet on branches (``PromptDataModule(branch_every=...)``) starts its imagined rollouts at recorded real
states. When those are the SFT policy's states for the whole run, the starts stop being the states the moving policy
visits (round v9 saw the 40-update gain gone by 100 updates). Every ``every_n_updates`` updates this callback records
new real rollouts of the *current* policy (a user-supplied ``collect`` function: it writes an episode shard directory
and says how many real steps it used) and makes their recorded states the branch starts of the following updates.

The trainer must run one epoch per period (``updates_per_epoch = every_n_updates``) and reload its training dataloader
every epoch, so that the next epoch samples the new pool. The replacements are part of the callback's checkpoint
state: a run resumed at an epoch boundary samples the same starts, in the same order, as the run it continues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prophrl.callbacks._history import RealStepsHistory


class OnPolicyBranchStarts(RealStepsHistory):
    """Replace a ``PromptDataModule``'s branch starts with the current policy's real states every ``every_n_updates``.

    Args:
        collect: ``collect(policy, update) -> (shard_dir, summary)``: records real rollouts of ``policy`` (in eval
            mode; its mode is restored afterwards) into ``shard_dir``; ``summary["env_steps"]`` counts the real steps.
        every_n_updates: the period in RL updates (the datamodule's ``updates_per_epoch``).
        history_path: JSON-lines file, one row per replacement.
    """

    def __init__(self, collect: Callable[[Any, int], tuple[str, dict[str, Any]]], every_n_updates: int,
                 history_path: str | None = None):  # fmt: skip
        super().__init__(history_path)
        if every_n_updates < 1:
            raise ValueError(f"every_n_updates must be >= 1, got {every_n_updates}")
        self.collect, self.every_n_updates = collect, every_n_updates

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.reload_dataloaders_every_n_epochs != 1 or not hasattr(dm, "replace_train_datasets"):
            raise ValueError("OnPolicyBranchStarts needs a PromptDataModule and "
                             "Trainer(reload_dataloaders_every_n_epochs=1)")  # fmt: skip
        if dm.hparams.updates_per_epoch != self.every_n_updates:
            raise ValueError(f"OnPolicyBranchStarts(every_n_updates={self.every_n_updates}) needs the datamodule's "
                             f"updates_per_epoch to match, got {dm.hparams.updates_per_epoch}")  # fmt: skip
        # resumed from a checkpoint: the newest starts, sampled as they were (the same pool and generator seed)
        if self.history and getattr(dm, "pool_version", 0) == 0:
            dm.setup()
            dm.replace_train_datasets([self.history[-1]["dir"]], pool_version=len(self.history))

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        update = int(getattr(pl_module, "updates", trainer.global_step))
        if trainer.should_stop or trainer.current_epoch + 1 >= trainer.max_epochs:
            return  # no update follows
        policy = pl_module.policy
        was_training = policy.training
        policy.eval()
        try:
            shard_dir, summary = self.collect(policy, update)
        finally:
            policy.train(was_training)
        self.real_steps_total += int(summary["env_steps"])
        starts = trainer.datamodule.replace_train_datasets([str(shard_dir)])
        if starts == 0:
            rank_zero_warn(f"OnPolicyBranchStarts: {shard_dir} has no branch start; keeping the previous starts")
        row = {"update": update, "dir": str(shard_dir), "starts": starts, "env_steps": int(summary["env_steps"]),
               "success_rate": summary.get("success_rate"), "real_steps_total": self.real_steps_total}  # fmt: skip
        self.record(row)
        pl_module.log("onpolicy_starts/starts", float(starts), batch_size=1)
