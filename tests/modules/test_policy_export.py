"""Self-describing policies across the modules: SFT checkpoints load on their own and export the policy, FA-GRPO
starts from an exported policy directory, shared settings are checked."""

import copy
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.datamodules.robot import PolicyDataModule
from lightning_prophrl.envs.world_model import WorldModelEnv
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules import FAGRPOModule, PolicySFTModule
from lightning_prophrl.modules.policy_loading import load_policy

DIMS = [0, 1, 2, 6]
ROOT = Path(__file__).resolve().parents[2]


def tiny_policy(instructions):
    torch.manual_seed(0)
    return FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4, instructions=instructions,
                              cond_dim=32, width=32, depth=1, num_heads=2, num_steps=4,
                              cnn_channels=(8, 16, 16, 16))  # fmt: skip


def metaworld_stats():
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(500, 4)))
    return ActionStats.compute([unified], mask=mask).to_dict()


def obs(instruction, b=3, size=32):
    g = torch.Generator().manual_seed(5)
    return {K.OBS_IMAGE: torch.rand(b, 3, size, size, generator=g) * 2 - 1, K.OBS_STATE: torch.randn(b, 4, generator=g),
            K.INSTRUCTION: [instruction] * b}  # fmt: skip


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(v, sb[k]) for k, v in sa.items())


def chunk(policy, instruction):
    return policy.sample(obs(instruction), mode="sde", generator=torch.Generator().manual_seed(3)).x_steps


def test_sft_checkpoint_loads_on_its_own_and_the_export_decodes_actions(coded_dataset, tmp_path):
    dm = PolicyDataModule([coded_dataset], chunk_len=4, action_dims=DIMS, state_dim=4, image_size=32, batch_size=4,
                          samples_per_epoch=8)  # fmt: skip
    module = PolicySFTModule(tiny_policy(["task of coded"]), shift_pad=2, export_dir=str(tmp_path / "policy"))
    before = copy.deepcopy(module.policy.state_dict())
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert any(not torch.equal(v, before[k]) for k, v in module.policy.state_dict().items())
    trainer.save_checkpoint(tmp_path / "sft.ckpt")

    loaded = PolicySFTModule.load_from_checkpoint(tmp_path / "sft.ckpt")
    assert same_weights(loaded.policy, module.policy) and loaded.policy.config == module.policy.config
    assert loaded.hparams.action_dims == DIMS and loaded.policy.action_dims == DIMS
    assert torch.equal(chunk(loaded.policy, "task of coded"), chunk(module.policy, "task of coded"))

    exported = FlowMatchingPolicy.from_pretrained(tmp_path / "policy")  # written at the end of fit
    assert same_weights(exported, module.policy)
    assert exported.action_dims == DIMS and exported.action_stats.to_dict() == module.hparams.action_stats
    # the export decodes to the raw actions that the training data's statistics give
    o = obs("task of coded")
    raw = exported.predict_raw_action_chunk(o, generator=torch.Generator().manual_seed(1))
    norm = module.policy.predict_action_chunk(o, generator=torch.Generator().manual_seed(1))
    full = np.zeros((3, 4, K.ACTION_DIM), np.float32)
    full[..., DIMS] = norm.numpy()
    stats = ActionStats.from_dict(module.hparams.action_stats)
    assert np.allclose(raw.numpy(), stats.unnormalize(full), atol=1e-6)
    # load_policy: the checkpoint and the export give the same policy and action metadata
    from_ckpt, meta_ckpt = load_policy(tmp_path / "sft.ckpt")
    from_dir, meta_dir = load_policy(tmp_path / "policy")
    assert same_weights(from_ckpt, module.policy) and same_weights(from_dir, module.policy)
    assert not from_ckpt.training and meta_ckpt["action_dims"] == meta_dir["action_dims"] == DIMS
    assert meta_ckpt["action_stats"] == meta_dir["action_stats"] == module.hparams.action_stats
    with pytest.raises(FileNotFoundError, match="save_pretrained directory or a PolicySFTModule"):
        load_policy(tmp_path / "missing.ckpt")


def test_sft_checkpoint_of_a_cli_run_loads_on_its_own(coded_dataset, tmp_path):
    from lightning_prophrl.cli import _lightning_cli

    cli = _lightning_cli([
        "fit", "--config", str(ROOT / "configs/policy/sft_metaworld.yaml"),
        "--data.init_args.datasets", f"[{coded_dataset}]", "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", "4", "--data.init_args.samples_per_epoch", "8",
        "--model.init_args.policy.init_args.instructions", "[task of coded]",
        "--model.init_args.policy.init_args.cond_dim", "32", "--model.init_args.policy.init_args.width", "32",
        "--model.init_args.export_dir", str(tmp_path / "policy"),
        "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, sorted(tmp_path.rglob("*"))
    loaded = PolicySFTModule.load_from_checkpoint(ckpts[-1])
    assert same_weights(loaded.policy, cli.model.policy)
    assert loaded.policy.config["cond_dim"] == 32 and loaded.policy.action_dims == DIMS
    assert same_weights(FlowMatchingPolicy.from_pretrained(tmp_path / "policy"), cli.model.policy)


@pytest.fixture(scope="module")
def world_env():
    cfg = yaml.safe_load((ROOT / "configs/prophet/model_tiny.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg, "action_chunk_length": 2, "history_length": 0})
    return WorldModelEnv(prophet, metaworld_stats(), num_prompts=2, group_size=2, max_segments=2, num_steps=1)


@pytest.fixture
def policy_dir(tmp_path):
    policy = tiny_policy(["pick"])
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    policy.set_action_stats(metaworld_stats(), DIMS)
    return str(policy.save_pretrained(tmp_path / "policy"))


def test_fa_grpo_starts_from_a_policy_dir(world_env, policy_dir, tmp_path):
    saved = FlowMatchingPolicy.from_pretrained(policy_dir)
    module = FAGRPOModule(env=world_env, policy_dir=policy_dir, group_size=2, action_target="unified")
    assert same_weights(module.policy, saved) and same_weights(module.reference, saved)
    assert module.policy.config == saved.config
    assert module.hparams.action_dims == DIMS and module.decoder.action_dims == DIMS
    assert module.hparams.action_stats == metaworld_stats()
    # with a policy given, the directory's weights are loaded into it (a sampler setting may differ)
    given = FlowMatchingPolicy.from_config({**saved.config, "noise_level": 0.3})
    module = FAGRPOModule(given, world_env, policy_dir=policy_dir, group_size=2, action_target="unified")
    assert module.policy is given and given.noise_level == 0.3 and same_weights(given, saved)
    assert given.action_stats is not None  # attached, so the RL policy exports with its statistics
    module.policy.save_pretrained(tmp_path / "rl")
    assert FlowMatchingPolicy.from_pretrained(tmp_path / "rl").action_dims == DIMS


def test_fa_grpo_refuses_ambiguous_or_mismatched_settings(world_env, policy_dir, tmp_path):
    with pytest.raises(ValueError, match="either `sft_checkpoint` or `policy_dir`"):
        FAGRPOModule(env=world_env, policy_dir=policy_dir, sft_checkpoint=str(tmp_path / "x.ckpt"), group_size=2)
    with pytest.raises(ValueError, match=r"model\.init_args\.group_size=4 .*model\.init_args\.env\.init_args\.group_"):
        FAGRPOModule(env=world_env, policy_dir=policy_dir, group_size=4)
    with pytest.raises(ValueError, match="`policy` or `policy_dir`"):
        FAGRPOModule(env=world_env, group_size=2, action_stats=metaworld_stats(), action_dims=DIMS)
    with pytest.raises(FileNotFoundError, match="not a saved policy"):
        FAGRPOModule(env=world_env, policy_dir=str(tmp_path / "nowhere"), group_size=2)


def test_sft_validation_logs_the_flow_loss_and_the_action_error_of_the_policy(coded_dataset, tmp_path):
    """``val/action_mse`` is the squared error of the policy's seeded ODE chunk against the recorded actions, over the
    real action dims; an untrained policy's chunk is far from the demonstrations and the error says so."""
    dm = PolicyDataModule([coded_dataset], val_datasets=[coded_dataset], chunk_len=4, action_dims=DIMS, state_dim=4,
                          image_size=32, batch_size=4, samples_per_epoch=8)  # fmt: skip
    module = PolicySFTModule(tiny_policy(["task of coded"]), shift_pad=2, val_noise_seed=7)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    assert {"val/loss", "val/action_mse"} <= set(logged)

    batch = next(iter(dm.val_dataloader()))
    pred = module.policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(7))
    w = batch[K.ACTION_MASK].float()[:, None, :].expand_as(pred)
    expected = ((pred - batch[K.ACTIONS]) ** 2 * w).sum() / w.sum()
    assert torch.allclose(logged["val/action_mse"], expected, atol=1e-6)
    assert module._action_mse(batch) > 0
