import copy

import lightning as L
import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.datamodules.prompts import PromptDataModule
from lightning_prophrl.datamodules.robot import PolicyDataModule
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.envs.metaworld import MetaWorldEnv
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.modules import FAGRPOModule, PolicySFTModule
from lightning_prophrl.modules.fa_grpo import prompts_from_batch

TASK = "pick-place-v3"
DIMS = [0, 1, 2, 6]


def tiny_policy(instructions):
    torch.manual_seed(0)
    return FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4, instructions=instructions,
                              cond_dim=32, width=32, depth=1, num_heads=2, num_steps=4)  # fmt: skip


def metaworld_stats():
    rng = np.random.default_rng(0)
    unified, mask = metaworld_to_unified(rng.uniform(-1, 1, size=(500, 4)))
    return ActionStats.compute([unified], mask=mask).to_dict()


def trainer(**kw):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)  # fmt: skip


def test_sft_module_trains_and_records_action_stats(coded_dataset, tmp_path):
    dm = PolicyDataModule([coded_dataset], chunk_len=4, action_dims=DIMS, state_dim=4, image_size=32, batch_size=8,
                          samples_per_epoch=64)  # fmt: skip
    module = PolicySFTModule(tiny_policy(["task of coded"]), shift_pad=2)
    before = copy.deepcopy(module.policy.state_dict())
    t = trainer(max_epochs=1, limit_train_batches=4)
    t.fit(module, datamodule=dm)
    changed = [k for k, v in module.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    assert module.hparams.action_dims == DIMS and module.hparams.action_stats["count"] > 0
    t.save_checkpoint(tmp_path / "sft.ckpt")
    ckpt = torch.load(tmp_path / "sft.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["action_dims"] == DIMS


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(TASK, num_prompts=2, group_size=2, image_size=32, max_steps=12, exec_horizon=2)
    yield e
    e.close()


def varied_reward(batch):
    """A real (if arbitrary) reward: 1 for the group member whose mean executed x-action is largest (mixed groups)."""
    x = batch.x_steps[:, :, -1, :2, 0].mean((0, 2)).view(-1, 2)  # (P, G)
    return (x == x.max(1, keepdim=True).values).float().view(-1)


def rl_module(env, **kw):
    return FAGRPOModule(tiny_policy([instruction_for(TASK)]), env, group_size=2, max_queries=3,
                        action_stats=metaworld_stats(), action_dims=DIMS, minibatch_size=4, ppo_epochs=2,
                        step_grad_every=1, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), **kw)  # fmt: skip


def prompt_batch():
    dm = PromptDataModule(tasks=[TASK], train_seeds=(2000, 2010), eval_seeds=(1000, 1004), num_prompts=2)
    dm.setup("fit")
    return next(iter(dm.train_dataloader())), dm


def test_fa_grpo_update_changes_policy_not_reference_and_first_ratio_is_one(env):
    module = rl_module(env, reward_model=varied_reward, flowscale=True)
    batch, dm = prompt_batch()
    ref_before = copy.deepcopy(module.reference.state_dict())
    pol_before = copy.deepcopy(module.policy.state_dict())
    logged = {}
    module.log_dict = lambda d, **kw: logged.update(d)
    module.log = lambda k, v, **kw: logged.update({k: v})
    t = trainer(max_epochs=1, limit_train_batches=1)
    t.fit(module, train_dataloaders=dm.train_dataloader())
    assert module.updates == 1
    assert "train/first_ratio_max_dev" in logged, sorted(logged)
    assert logged["train/first_ratio_max_dev"] == 0.0  # exactly 1 before the first optimizer step
    assert float(logged["train/skipped_update"]) == 0.0
    assert any(not torch.equal(v, pol_before[k]) for k, v in module.policy.state_dict().items())
    assert all(torch.equal(v, ref_before[k]) for k, v in module.reference.state_dict().items())
    assert all(not p.requires_grad for p in module.reference.parameters())
    grads = [float(logged[f"grad_step/k{k:02d}"]) for k in range(4)]
    assert all(g > 0 for g in grads)
    assert float(logged["rollout/env_steps_total"]) > 0


def test_constant_rewards_skip_the_update(env):
    module = rl_module(env, reward_model=lambda b: torch.zeros(b.rewards.shape))
    before = copy.deepcopy(module.policy.state_dict())
    batch, dm = prompt_batch()
    trainer(max_epochs=1, limit_train_batches=1).fit(module, train_dataloaders=dm.train_dataloader())
    assert all(torch.equal(v, before[k]) for k, v in module.policy.state_dict().items())


def test_nan_reward_is_a_clear_error(env):
    module = rl_module(env, reward_model=lambda b: torch.full(b.rewards.shape, float("nan")))
    batch, dm = prompt_batch()
    module.trainer = None
    with pytest.raises(ValueError, match="non-finite reward at rollout index 0"):
        module.training_step(batch, 0)


def test_same_module_trains_on_prompt_dicts_with_task_names(env):
    batch, _ = prompt_batch()
    prompts = prompts_from_batch(batch)
    assert prompts[0][K.TASK] == TASK and isinstance(prompts[0][K.SEED], torch.Tensor)
    obs = env.reset(prompts)
    assert obs[K.OBS_IMAGE].shape == (4, 3, 32, 32)
    assert torch.equal(obs[K.OBS_IMAGE][0], obs[K.OBS_IMAGE][1])  # one group = one initial state


def test_checkpoint_resume_restores_rl_state_exactly(env, tmp_path):
    module = rl_module(env, reward_model=varied_reward)
    batch, dm = prompt_batch()
    t = trainer(max_epochs=1, limit_train_batches=1)
    t.fit(module, train_dataloaders=dm.train_dataloader())
    t.save_checkpoint(tmp_path / "rl.ckpt")
    fresh = rl_module(env, reward_model=varied_reward, seed=123)
    ckpt = torch.load(tmp_path / "rl.ckpt", weights_only=False)
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.on_load_checkpoint(ckpt)
    assert fresh.updates == module.updates == 1 and fresh.env_steps_total == module.env_steps_total
    assert set(ckpt["rl_state"]) == {"env_steps_total", "episodes_total", "updates", "nonfinite_skips"}
    same_seed = rl_module(env, reward_model=varied_reward)  # the noise streams depend on (seed, update, process)
    same_seed.on_load_checkpoint(ckpt)
    same_seed._seed_streams(rank=0), module._seed_streams(rank=0)
    assert torch.equal(same_seed.generator.get_state(), module.generator.get_state())
    fresh._seed_streams(rank=0)
    assert not torch.equal(fresh.generator.get_state(), module.generator.get_state())
    for k, v in module.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_same_fa_grpo_module_trains_inside_a_world_model(tmp_path):
    from pathlib import Path

    import yaml

    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet
    from tests.conftest import write_coded_dataset

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/prophet/model_tiny.yaml").read_text())
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg["init_args"], "action_chunk_length": 2, "history_length": 4,
                         "history_scale_frames": [1, 1, 2]})  # fmt: skip
    data = write_coded_dataset(tmp_path / "d", "d", episodes=4, per_shard=1, size=32)
    prompts = PromptDataModule(datasets=[data], eval_fraction=0.0, num_prompts=2, image_size=32)
    prompts.setup("fit")
    env = WorldModelEnv(prophet, metaworld_stats(), num_prompts=2, group_size=2, max_segments=2, num_steps=1,
                        stop_at_success=False)  # fmt: skip
    module = FAGRPOModule(tiny_policy(["task of d"]), env, group_size=2, max_queries=2, action_target="unified",
                          action_stats=metaworld_stats(), action_dims=DIMS, minibatch_size=4,
                          reward_model=varied_reward, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))  # fmt: skip
    before = copy.deepcopy(module.policy.state_dict())
    prophet_before = copy.deepcopy(prophet.state_dict())
    trainer(max_epochs=1, limit_train_batches=1).fit(module, train_dataloaders=prompts.train_dataloader())
    assert module.updates == 1
    assert any(not torch.equal(v, before[k]) for k, v in module.policy.state_dict().items())
    assert all(torch.equal(v, prophet_before[k]) for k, v in prophet.state_dict().items())  # the world model is frozen
    assert env.video().shape == (4, 3, 3, 32, 32)


@pytest.mark.slow
def test_imagination_guard_logs_both_worlds_and_stops_on_divergence(env):
    from pathlib import Path

    import yaml

    from lightning_prophrl.callbacks import ImaginationGuardCallback
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/prophet/model_tiny.yaml").read_text())
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg["init_args"], "action_chunk_length": 2, "history_length": 4,
                         "history_scale_frames": [1, 1, 2]})  # fmt: skip
    initial = MetaWorldEnv(TASK, num_prompts=2, group_size=1, image_size=32, max_steps=12)
    histories = {}
    for gap in (-1.0, 2.0):  # -1: every check diverges (stop at once); 2: never
        wm = WorldModelEnv(prophet, metaworld_stats(), num_prompts=2, group_size=2, max_segments=2, num_steps=1,
                           initial_env=initial)  # fmt: skip
        module = FAGRPOModule(tiny_policy([instruction_for(TASK)]), wm, group_size=2, max_queries=2,
                              action_target="unified", action_stats=metaworld_stats(), action_dims=DIMS,
                              minibatch_size=4, reward_model=varied_reward)  # fmt: skip
        guard = ImaginationGuardCallback(TASK, check_seeds=[4000, 4001], every_n_updates=1, max_gap=gap, patience=1,
                                         image_size=32, max_steps=8)  # fmt: skip
        _, dm = prompt_batch()
        trainer(max_epochs=1, limit_train_batches=2, callbacks=[guard]).fit(
            module, train_dataloaders=dm.train_dataloader()
        )
        histories[gap] = (module.updates, guard.history, guard.real_steps_total)
    updates, hist, real_steps = histories[-1.0]
    assert (
        updates == 0 and len(hist) == 1 and real_steps == 8
    )  # stopped before any update; 2 seeds x 2 queries x 2 actions
    updates, hist, real_steps = histories[2.0]
    assert updates == 2 and len(hist) == 3 and real_steps == 24
    assert {"real_success", "imagined_success", "kappa", "confusion"} <= set(hist[0])
    initial.close()


def test_imagination_guard_imagines_like_training():
    from pathlib import Path
    from types import SimpleNamespace

    import yaml

    from lightning_prophrl.callbacks import ImaginationGuardCallback
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/prophet/model_tiny.yaml").read_text())
    prophet = Prophet(**{**cfg["init_args"], "action_chunk_length": 2, "history_length": 0})
    wm = WorldModelEnv(prophet, metaworld_stats(), num_prompts=1, group_size=2, max_segments=3, num_steps=2,
                       success_threshold=0.9, success_k=3, poses=CommandedPoses.metaworld(TASK, 32),
                       success_scorer=lambda video: video[:, -1].mean((1, 2, 3)))  # fmt: skip
    guard = ImaginationGuardCallback(TASK, check_seeds=[4000], every_n_updates=1, image_size=32, max_steps=8)
    real, world = guard._build(SimpleNamespace(env=wm, policy=SimpleNamespace(exec_horizon=4)))
    try:
        assert world.poses is wm.poses and world.success_scorer is wm.success_scorer
        assert (world.num_steps, world.success_threshold, world.success_k) == (2, 0.9, 3)
    finally:
        real.close()
