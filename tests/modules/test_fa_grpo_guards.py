"""FAGRPOModule's non-finite guards: a NaN is named (on_nonfinite="raise") or its update skipped and counted
("skip"), and the weights never see it."""

import copy
from types import SimpleNamespace

import pytest
import torch

from lightning_prophrl.datamodules.prompts import PromptDataModule
from lightning_prophrl.envs.metaworld import MetaWorldEnv
from lightning_prophrl.rl import NonFiniteError
from tests.modules.test_policy_rl_modules import TASK, prompt_batch, rl_module, trainer, varied_reward


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(TASK, num_prompts=2, group_size=2, image_size=32, max_steps=12, exec_horizon=2)
    yield e
    e.close()


def poison_log_prob(module, rollout: int, query: int) -> None:
    """The policy's sampler records a NaN log-prob for ``rollout`` at its ``query``-th query (a kept query)."""
    sample, calls = module.policy.sample, [0]

    def poisoned(*args, **kwargs):
        res = sample(*args, **kwargs)
        if calls[0] == query:
            res.log_probs[rollout, 1, 0, 0] = float("nan")
        calls[0] += 1
        return res

    module.policy.sample = poisoned


def fit_one_update(module) -> dict:
    logged = {}
    module.log_dict = lambda d, **kw: logged.update(d)
    module.log = lambda k, v, **kw: logged.update({k: v})
    _, dm = prompt_batch()
    trainer(max_epochs=1, limit_train_batches=1).fit(module, train_dataloaders=dm.train_dataloader())
    return logged


def unchanged(module, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.policy.state_dict().items())


def test_nan_log_prob_of_a_kept_query_is_named(env):
    module = rl_module(env, reward_model=varied_reward)
    poison_log_prob(module, rollout=1, query=0)
    batch, _ = prompt_batch()
    module.trainer = None
    with pytest.raises(NonFiniteError, match=r"RL update 1 \(batch 0\): behaviour log-prob is non-finite at rollout 1, "
                                             r"query step 0, flow step 1.*on_nonfinite=skip"):  # fmt: skip
        module.training_step(batch, 0)
    assert module.policy.training and module.updates == 0 and module.nonfinite_skips == 0


def test_skip_leaves_the_weights_unchanged_and_counts_the_skipped_update(env, tmp_path):
    module = rl_module(env, reward_model=varied_reward, on_nonfinite="skip")
    before = copy.deepcopy(module.policy.state_dict())
    poison_log_prob(module, rollout=2, query=1)
    with pytest.warns(UserWarning, match=r"skipped RL update 1 .*1 skipped so far.*rollout 2, query step 1"):
        logged = fit_one_update(module)
    assert unchanged(module, before) and all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert module.nonfinite_skips == 1 and module.updates == 0
    assert logged["train/nonfinite_skips"] == 1.0 and logged["train/skipped_update"] == 1.0
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    assert ckpt["rl_state"]["nonfinite_skips"] == 1


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_a_non_finite_gradient_is_never_stepped(env, on_nonfinite):
    module = rl_module(env, reward_model=varied_reward, on_nonfinite=on_nonfinite)
    before = copy.deepcopy(module.policy.state_dict())
    first = next(p for p in module.policy.parameters() if p.requires_grad)
    first.register_hook(lambda g: torch.full_like(g, float("nan")))
    if on_nonfinite == "raise":
        with pytest.raises(NonFiniteError, match="PPO epoch 0, minibatch 0: the policy's gradient norm is non-finite"):
            fit_one_update(module)
    else:
        with pytest.warns(UserWarning, match="gradient norm is non-finite"):
            fit_one_update(module)
        assert module.nonfinite_skips == 1 and module.updates == 0
    assert unchanged(module, before)  # the first minibatch's step was not taken
    assert all(p.grad is None or not p.grad.any() for p in module.policy.parameters())


def test_each_process_environment_takes_its_share_of_an_updates_prompts(env):
    module = rl_module(env)  # the environment takes 2 prompts
    dm = PromptDataModule(tasks=[TASK], num_prompts=4)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, training=False)
    module.trainer = SimpleNamespace(datamodule=dm, world_size=2)
    module.on_fit_start()  # 4 prompts per update over 2 processes: 2 each
    dm.hparams.num_prompts = 8
    with pytest.raises(ValueError, match=r"data\.init_args\.num_prompts=8 \(4 per process on 2 processes\) .*"
                                         r"env\.init_args\.num_prompts=2.*set the environment's to 4"):  # fmt: skip
        module.on_fit_start()
    dm.hparams.num_prompts = 3
    with pytest.raises(ValueError, match=r"num_prompts=3 does not split into 2 equal shares"):
        module.on_fit_start()


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
def test_under_ddp_a_process_with_finite_rollouts_skips_with_the_one_that_had_a_nan(env, on_nonfinite):
    module = rl_module(env, reward_model=varied_reward, on_nonfinite=on_nonfinite)
    before = copy.deepcopy(module.policy.state_dict())
    reduced = []

    def reduce(flag, reduce_op):  # this process is clean (0); the other one reports its NaN (1)
        reduced.append((float(flag), reduce_op))
        return flag + 1.0

    module.trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(reduce=reduce))
    module.log_dict = module.log = lambda *a, **kw: None
    batch, _ = prompt_batch()
    if on_nonfinite == "raise":
        with pytest.raises(NonFiniteError, match="the rollouts of 1 other process"):
            module.training_step(batch, 0)
    else:
        with pytest.warns(UserWarning, match="the rollouts of 1 other process"):
            module.training_step(batch, 0)
        assert module.nonfinite_skips == 1
    assert reduced == [(0.0, "sum")] and unchanged(module, before) and module.updates == 0
