"""ImaginationGuardCallback(keep_best=True): the policy ends training with the weights of its best real check."""

import copy
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml

from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.callbacks import ImaginationGuardCallback
from lightning_prophrl.datamodules.prompts import PromptDataModule
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.envs.metaworld import MetaWorldEnv
from lightning_prophrl.envs.world_model import WorldModelEnv
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules import FAGRPOModule

ROOT = Path(__file__).resolve().parents[2]
TASK = "pick-place-v3"


class WeightsAtChecks(L.Callback):
    """The policy's weights whenever the guard checks (listed after it: the same hooks, later)."""

    def __init__(self):
        self.weights = {}

    def on_train_start(self, trainer, pl_module):
        self.weights[0] = copy.deepcopy(pl_module.policy.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[pl_module.updates] = copy.deepcopy(pl_module.policy.state_dict())


def first_reward(batch):
    return torch.tensor([1.0, 0.0]).repeat(batch.x_steps.shape[1] // 2)


def test_keep_best_restores_the_weights_of_the_best_real_check_and_survives_a_checkpoint():
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(500, 4)))
    stats = ActionStats.compute([unified], mask=mask).to_dict()
    cfg = yaml.safe_load((ROOT / "configs/prophet/model_tiny.yaml").read_text())
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg["init_args"], "action_chunk_length": 2, "history_length": 4,
                         "history_scale_frames": [1, 1, 2]})  # fmt: skip
    initial = MetaWorldEnv(TASK, num_prompts=2, group_size=1, image_size=32, max_steps=12)
    wm = WorldModelEnv(prophet, stats, num_prompts=2, group_size=2, max_segments=2, num_steps=1, initial_env=initial)
    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4,
                                instructions=[instruction_for(TASK)], cond_dim=32, width=32, depth=1, num_heads=2,
                                num_steps=4)  # fmt: skip
    module = FAGRPOModule(policy, wm, group_size=2, max_queries=2, action_target="unified", action_stats=stats,
                          action_dims=[0, 1, 2, 6], minibatch_size=4, reward_model=first_reward)  # fmt: skip
    guard = ImaginationGuardCallback(TASK, check_seeds=[4000, 4001], every_n_updates=1, max_gap=2.0, image_size=32,
                                     max_steps=8, log_videos=0, keep_best=True)  # fmt: skip
    seen = WeightsAtChecks()
    prompts = PromptDataModule(tasks=[TASK], train_seeds=(2000, 2010), eval_seeds=(1000, 1004), num_prompts=2)
    prompts.setup("fit")
    L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[guard, seen]).fit(
        module, train_dataloaders=prompts.train_dataloader()
    )  # fmt: skip
    real = [row["real_success"] for row in guard.history]
    assert [row["update"] for row in guard.history] == [0, 1, 2] and module.updates == 2
    best = int(np.argmax(real))  # the first maximum: ties keep the earlier check
    assert guard.best_update == best and guard.best_success == real[best]
    assert any(not torch.equal(seen.weights[2][k], seen.weights[best][k]) for k in seen.weights[2]) or best == 2
    final = module.policy.state_dict()
    assert all(torch.equal(final[k], seen.weights[best][k]) for k in final)
    if best == 2:
        assert guard.last_weights is None
    else:  # the weights training ended with are kept beside the best check's
        assert all(torch.equal(guard.last_weights[k], seen.weights[2][k]) for k in final)

    restored = ImaginationGuardCallback(TASK, keep_best=True)
    restored.load_state_dict(copy.deepcopy(guard.state_dict()))
    assert restored.best_update == best and restored.best_success == real[best]
    assert all(torch.equal(restored._best_weights[k], seen.weights[best][k]) for k in final)
    initial.close()
