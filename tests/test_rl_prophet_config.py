"""configs/rl/fagrpo_prophet.yaml: FA-GRPO inside a saved Prophet through ``prophrl fit``, at test sizes (a tiny
randomly initialised U-Net Prophet and a tiny policy saved to disk, prompts rendered by a real Meta-World reset)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.cli import _lightning_cli
from lightning_prophrl.constants import STATS_FILE
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/rl/fagrpo_prophet.yaml"
TASK = "pick-place-v3"
DIMS = [0, 1, 2, 6]
TINY_UNET = {"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8, "norm_num_groups": 4}  # fmt: skip


def metaworld_stats() -> ActionStats:
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(500, 4)))
    return ActionStats.compute([unified], mask=mask)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny U-Net Prophet (the shipped backbone: one frame per policy query, action frames, success head) and a
    tiny policy for the task's instruction, each written as a self-describing directory."""
    root = tmp_path_factory.mktemp("saved")
    kwargs = yaml.safe_load((ROOT / "configs/prophet/model_unet.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    prophet = Prophet(**{**kwargs, "unet_kwargs": TINY_UNET, "action_frame_channels": 8, "action_hidden_dim": 32})
    with torch.no_grad():  # the conditioning starts at zero (zero_init_conditioning), as before training
        for p in prophet.action_encoder.parameters():
            p.add_(torch.randn_like(p))
    prophet.save_pretrained(root / "prophet")
    metaworld_stats().save(root / "prophet" / STATS_FILE)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4,
                                instructions=[instruction_for(TASK)], cond_dim=32, width=32, depth=1, num_heads=2,
                                num_steps=4, cnn_channels=(8, 16, 16, 16))  # fmt: skip
    policy.set_action_stats(metaworld_stats(), DIMS)
    policy.save_pretrained(root / "policy")
    return root


def tiny_args(saved: Path, out: Path, **override: str) -> list[str]:
    """The shipped config at test sizes: 2 prompts x 2 rollouts of 2 queries, 2 updates, no simulator evaluation."""
    env = "--model.init_args.env.init_args."
    args = {
        "--model.init_args.policy_dir": str(saved / "policy"), "--model.init_args.export_dir": str(out / "policy"),
        "--model.init_args.group_size": "2", "--model.init_args.max_queries": "2",
        "--model.init_args.minibatch_size": "8", "--model.init_args.step_grad_every": "0",
        "--model.init_args.optimizer.init_args.lr": "1e-3",
        # a graded reward (the success probability held) ranks every group's rollouts, so each update is taken
        "--model.init_args.reward_model": "lightning_prophrl.envs.world_model.graded_reward",
        f"{env}model_dir": str(saved / "prophet"), f"{env}num_prompts": "2", f"{env}group_size": "2",
        f"{env}max_segments": "2", f"{env}num_steps": "1", f"{env}image_size": "32",
        "--data.init_args.num_prompts": "2", "--data.init_args.updates_per_epoch": "2",
        "--trainer.callbacks": "[]", "--trainer.default_root_dir": str(out), "--trainer.enable_progress_bar": "false",
        "--trainer.enable_model_summary": "false", **override,
    }  # fmt: skip
    return ["fit", "--config", str(CONFIG), *[x for kv in args.items() for x in kv]]


def test_fagrpo_inside_a_saved_prophet_through_the_cli(saved, tmp_path):
    start = FlowMatchingPolicy.from_pretrained(saved / "policy")
    cli = _lightning_cli(tiny_args(saved, tmp_path))
    module = cli.model
    assert module.updates == 2 and module.env_steps_total > 0
    changed = [k for k, v in module.policy.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert changed  # the RL updates moved the policy ...
    assert all(
        torch.equal(v, start.state_dict()[k]) for k, v in module.reference.state_dict().items()
    )  # ... not the anchor
    env = module.env
    assert env.initial_env is not None and env.poses is not None  # seed prompts rendered by a real reset
    assert env.video().shape[2:] == (3, 32, 32)
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, sorted(tmp_path.rglob("*"))
    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=False)
    assert ckpt["rl_state"]["updates"] == 2
    exported = FlowMatchingPolicy.from_pretrained(tmp_path / "policy")
    assert all(torch.equal(v, module.policy.state_dict()[k]) for k, v in exported.state_dict().items())
    assert exported.action_dims == DIMS and exported.action_stats == metaworld_stats()
    env.initial_env.close()


def test_group_size_and_num_prompts_must_agree(saved, tmp_path):
    with pytest.raises(ValueError, match=r"model\.init_args\.group_size=3 .*model\.init_args\.env\.init_args\.group"):
        _lightning_cli(tiny_args(saved, tmp_path / "a", **{"--model.init_args.group_size": "3"}))
    with pytest.raises(ValueError, match=r"data\.init_args\.num_prompts=3 .*model\.init_args\.env\.init_args\.num_pr"):
        _lightning_cli(tiny_args(saved, tmp_path / "b", **{"--data.init_args.num_prompts": "3"}))
