"""SimEvalCallback.repeat: an evaluation of the same weights (fixed seeds and noise) is recorded again, not rerun."""

import json

import lightning as L
import numpy as np
import torch

from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.callbacks import SimEvalCallback
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.envs.metaworld import MetaWorldEnv
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.modules import FAGRPOModule

TASK = "reach-v3"


def module():
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(500, 4)))
    stats = ActionStats.compute([unified], mask=mask).to_dict()
    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4,
                                instructions=[instruction_for(TASK)], cond_dim=32, width=32, depth=1, num_heads=2,
                                num_steps=4)  # fmt: skip
    env = MetaWorldEnv(TASK, num_prompts=2, group_size=1, image_size=32, max_steps=12, exec_horizon=2)
    return FAGRPOModule(policy, env, group_size=1, max_queries=6, action_stats=stats, action_dims=[0, 1, 2, 6])


def test_repeat_records_the_earlier_row_at_the_current_update_as_a_rerun_of_the_same_weights_would(tmp_path):
    m = module()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    history = tmp_path / "eval.jsonl"
    sim_eval = SimEvalCallback(TASK, seeds=[1000, 1001, 1002, 1003], max_queries=6, image_size=32, max_steps=12,
                               history_path=str(history))  # fmt: skip
    first = sim_eval.evaluate(trainer, m)
    m.updates = 3  # later, with the weights of update 0 (a kept check) restored
    assert sim_eval.repeat(trainer, m, of_step=1) is None  # no evaluation at update 1
    again = sim_eval.repeat(trainer, m, of_step=0)
    rerun = sim_eval.evaluate(trainer, m)
    assert again == rerun == {**first, "step": 3}
    assert [json.loads(line) for line in history.read_text().splitlines()] == [first, again, rerun]
