"""The README's "Using the pieces" chain, end to end through the two CLIs only, at tiny sizes.

Each stage is a user command (``prophrl-data metaworld`` via ``data_cli.main``, ``prophrl fit --config X`` via
``cli._lightning_cli``) with the tiny overrides of tests/test_configs_instantiate.py, and each stage reads the
previous stage's output BY PATH (no Python object crosses a stage):

1. ``prophrl-data metaworld``: real Meta-World pick-place-v3 shards (a training and a held-out set, 32 px);
2. ``prophrl fit --config configs/prophet/pretrain_metaworld.yaml``: a tiny U-Net Prophet -> its export directory
   (``save_pretrained`` + the data's ``stats.json``), then ``configs/prophet/adapt_metaworld.yaml``: a LoRA adapter
   of that export -> its adapter directory;
3. ``prophrl fit --config configs/policy/sft_metaworld.yaml``: the SFT policy -> its export directory;
4. ``prophrl fit --config configs/reward/classifier_tiny.yaml``: the success classifier -> its export directory
   (``save_pretrained``, equal to the weights of the run's Lightning checkpoint);
5. ``prophrl fit --config configs/rl/fagrpo_prophet.yaml``: FA-GRPO inside the Prophet of 2 (export + adapter), the
   classifier of 4 as its success scorer (``env.reward_dir``), from the policy of 3, two updates with the graded
   success as the reward -> the RL policy's export directory;
6. the RL export evaluated in the real simulator (``FlowMatchingPolicy.from_pretrained`` + ``evaluate_in_simulator``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from lightning_prophrl import constants as K
from lightning_prophrl.cli import _lightning_cli
from lightning_prophrl.constants import CONFIG_DIR
from lightning_prophrl.data_cli import main as prophrl_data
from lightning_prophrl.datamodules.shards import load_stats
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.models.reward import ClassifierReward, VideoSuccessClassifier
from lightning_prophrl.modules.prophet_adapt import load_adapter
from tests.test_configs_instantiate import (
    SIZE,
    TINY_POLICY,
    TINY_UNET,
    _rl_common,
    clip_data,
    flags,
    nested,
    tiny_callbacks,
)

TASK = "pick-place-v3"
DIMS = [0, 1, 2, 6]
M, D, T = "--model.init_args.", "--data.init_args.", "--trainer."


def fit(config: str, overrides: dict, root: Path):
    """``prophrl fit --config configs/<config>`` for ``max_steps`` of 1 (unless overridden), CPU, the config's own
    callbacks at test sizes (tests/test_configs_instantiate.py's ``tiny_callbacks``)."""
    common = {
        f"{T}accelerator": "cpu", f"{T}devices": "1", f"{T}strategy": "auto", f"{T}max_steps": "1",
        f"{T}limit_train_batches": "1", f"{T}limit_val_batches": "1", f"{T}num_sanity_val_steps": "0",
        f"{T}val_check_interval": "1", f"{T}default_root_dir": str(root), f"{T}enable_progress_bar": "false",
        f"{T}enable_model_summary": "false", f"{T}callbacks": tiny_callbacks(config),
    }  # fmt: skip
    return _lightning_cli(["fit", "--config", str(CONFIG_DIR / config), *flags({**common, **overrides})])


def metaworld_data(out: str, episodes: int, seed: int) -> str:
    prophrl_data(["metaworld", "--tasks", TASK, "--episodes", str(episodes), "--noise", "0.3", "--size", str(SIZE),
                  "--max-steps", "24", "--no-stop-at-success", "--seed", str(seed), "--out", out])  # fmt: skip
    return out


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_readme_chain_runs_through_the_clis_only(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prophrl"])  # LightningCLI warns when args and pytest's argv are both given
    monkeypatch.chdir(tmp_path)  # the configs' relative outputs (runs/...) land in tmp_path

    # 1. prophrl-data metaworld: real shards with their stats.json
    data = {"train": metaworld_data("runs/data/target", 3, 0), "val": metaworld_data("runs/data/target_val", 1, 900)}
    stats = load_stats(data["train"])
    clips = {k: str(tmp_path / v) for k, v in data.items()}

    # 2. Prophet: a tiny U-Net pretrained on the shards, exported with their action statistics
    prophet_dir = "runs/prophet_unet/export"
    model = f"{M}model.init_args."
    fit("prophet/pretrain_metaworld.yaml", {
        **clip_data(clips, stats_from=data["train"]), f"{M}stats_from": data["train"], f"{M}export_dir": prophet_dir,
        f"{model}unet_kwargs": TINY_UNET, f"{model}action_frame_channels": 8, f"{model}action_hidden_dim": 32,
    }, tmp_path / "prophet")  # fmt: skip
    Prophet.from_pretrained(prophet_dir)
    assert load_stats(prophet_dir) == stats

    # ... adapted with LoRA to the same task: an adapter directory on top of that export
    adapter_dir = "runs/adapt/pick-place-v3_adapter"
    fit("prophet/adapt_metaworld.yaml", {
        **clip_data(clips, stats_from=prophet_dir), f"{M}pretrained_path": prophet_dir, f"{M}adapter_dir": adapter_dir,
    }, tmp_path / "adapt")  # fmt: skip
    load_adapter(Prophet.from_pretrained(prophet_dir), adapter_dir)

    # 3. SFT: the policy, exported with the data's action statistics
    sft_dir = "runs/sft/policy"
    policy = f"{M}policy.init_args."
    fit("policy/sft_metaworld.yaml", {
        f"{D}datasets": [data["train"]], f"{D}image_size": SIZE, f"{D}batch_size": 2, f"{D}samples_per_epoch": 4,
        f"{policy}instructions": [instruction_for(TASK)], **nested(policy, TINY_POLICY), f"{M}export_dir": sft_dir,
    }, tmp_path / "sft")  # fmt: skip
    sft = FlowMatchingPolicy.from_pretrained(sft_dir)
    assert sft.action_dims == DIMS and sft.action_stats == stats

    # 4. reward classifier: exported as a save_pretrained directory, the same weights as the run's checkpoint
    cls = f"{M}classifier.init_args."
    classifier = {"feature_dim": 16, "channels": [8, 8, 8, 8], "groups": 4}
    reward_dir = "runs/reward_tiny/classifier"
    fit("reward/classifier_tiny.yaml", {
        f"{D}datasets": [data["train"]], f"{D}image_size": SIZE, f"{D}batch_size": 2, f"{D}samples_per_epoch": 4,
        f"{D}frames_per_episode": 2, f"{D}shuffle_buffer": 4, f"{D}val_fraction": 0.5, **nested(cls, classifier),
        f"{T}default_root_dir": "runs/reward_tiny", f"{M}export_dir": reward_dir,
    }, tmp_path / "reward")  # fmt: skip
    (reward_ckpt,) = sorted((tmp_path / "runs/reward_tiny").rglob("*.ckpt"))
    torch.manual_seed(1)
    fresh = VideoSuccessClassifier(**classifier)
    exported = VideoSuccessClassifier.from_pretrained(str(tmp_path / reward_dir))
    reward = ClassifierReward(VideoSuccessClassifier(**classifier), checkpoint=str(reward_ckpt))
    assert not weights_equal(reward.classifier, fresh) and weights_equal(exported, reward.classifier)
    verdict = ClassifierReward(exported)(torch.zeros(2, 3, 3, SIZE, SIZE), [instruction_for(TASK)] * 2)
    assert verdict.shape == (2,) and set(verdict.tolist()) <= {0.0, 1.0}

    # 5. FA-GRPO inside the saved (and adapted) Prophet from the saved policy, exported
    rl_dir = "runs/rl_prophet/policy"
    env = f"{M}env.init_args."
    rl = {**_rl_common(), f"{M}policy_dir": sft_dir, f"{env}model_dir": prophet_dir, f"{env}adapter_dir": adapter_dir,
          f"{env}reward_dir": reward_dir, f"{env}success_k": 1,  # 2 segments: a classifier's default k=3 never holds
          f"{env}max_segments": 2, f"{env}num_steps": 1, f"{M}optimizer.init_args.lr": 1e-3, f"{D}updates_per_epoch": 2,
          f"{M}reward_model": "lightning_prophrl.envs.world_model.graded_reward", f"{M}export_dir": rl_dir,
          f"{T}max_steps": "-1", f"{T}limit_train_batches": "2"}  # fmt: skip
    cli = fit("rl/fagrpo_prophet.yaml", rl, tmp_path / "rl")
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert cli.model.updates == 2 and metrics["train/skipped_update"] == 0.0, metrics
    imagined = cli.model.env.prophet  # the Prophet of stage 2 (not the shipped one), its LoRA layers loaded
    assert list(imagined.config.unet_kwargs["block_out_channels"]) == TINY_UNET["block_out_channels"]
    assert any("lora" in name for name, _ in imagined.named_parameters())
    assert weights_equal(cli.model.env.success_scorer.classifier, exported)  # stage 4's classifier scores success
    tuned = FlowMatchingPolicy.from_pretrained(rl_dir)
    assert not weights_equal(tuned, sft), "the RL export equals the SFT export: no update reached it"
    assert tuned.action_dims == DIMS and tuned.action_stats == stats  # actions in the dataset's units
    obs = {
        K.OBS_IMAGE: torch.zeros(1, 3, SIZE, SIZE),
        K.OBS_STATE: torch.zeros(1, 4),
        K.INSTRUCTION: [instruction_for(TASK)],
    }
    raw = tuned.predict_raw_action_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert raw.shape == (1, tuned.chunk_len, 14) and torch.isfinite(raw).all()

    # 6. the RL export in the real simulator
    from lightning_prophrl.callbacks.sim_eval import evaluate_in_simulator
    from lightning_prophrl.envs.rollout import ActionDecoder

    decoder = ActionDecoder(tuned.action_stats, tuned.action_dims, "metaworld", tuned.norm_mode)
    res = evaluate_in_simulator(tuned, decoder, TASK, seeds=[1000, 1001], max_queries=3, image_size=SIZE,
                                max_steps=12, progress=False)  # fmt: skip
    assert res["episodes"] == 2 and math.isfinite(res["success"]) and 0.0 <= res["success"] <= 1.0
