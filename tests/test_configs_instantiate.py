"""Every fit config (``configs/**/*.yaml`` with top-level ``model:`` and ``data:``) builds and trains through the CLI.

tests/test_configs.py only parses the configs (``--print_config``). Here each one runs ``prophrl fit --config X`` (the
real ``lightning_prophrl.cli._lightning_cli`` path: path checks, class resolution, instantiation of the trainer, its
logger and callbacks, the model and the datamodule) for one optimizer step and one validation batch, with
command-line overrides that make it tiny: small network dims (the 2B Prophet gets a 1-block DiT and a tiny Wan VAE),
tiny WebDataset shards, saved Prophets, policies and an SFT checkpoint written under ``tmp_path``, CPU, one device,
strategy ``auto``, no DataLoader workers. Every class path, every argument the config sets and every callback it
lists comes from the config itself (the overrides change values; the RL configs also get a test reward that ranks
each group's rollouts, so the update is taken), so a config naming a class or argument that does not exist, or one
that cannot be built or cannot take a training step, fails here. The test checks that the model and the datamodule
are the config's classes, that the step changed a trainable parameter, that the logged values are finite and that
the export / adapter directories a config names are written.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.cli import _lightning_cli
from lightning_prophrl.constants import CONFIG_DIR
from lightning_prophrl.envs.rollout import RolloutBatch
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet
from tests.conftest import write_coded_dataset
from tests.modules.test_policy_rl_modules import varied_reward
from tests.modules.test_prophet_modules import pretrained_dir  # noqa: F401  (fixture: a saved tiny DiT Prophet)
from tests.test_rl_prophet_config import saved  # noqa: F401  (fixture: a saved tiny U-Net Prophet and policy)

FIT_CONFIGS = sorted(
    str(p.relative_to(CONFIG_DIR))
    for p in CONFIG_DIR.rglob("*.yaml")
    if {"model", "data"} <= set(yaml.safe_load(p.read_text()) or {})
)
SIZE = 32  # frame size of the tiny shards and of every tiny run
DIMS = [0, 1, 2, 6]  # the Meta-World actions in the unified action space
M, D, T = "--model.init_args.", "--data.init_args.", "--trainer."
PROBE = "tests.test_configs_instantiate.OneStepProbe"
# configs/prophet/model_2b.yaml at test sizes: a 1-block DiT of width 32 and a tiny Wan VAE (same classes, 4x8x8)
TINY_2B = {
    "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 1, "adaln_lora_dim": 8, "text_embed_dim": 16,
    "max_size": [32, 32, 32], "action_frame_channels": 8, "history_length": 4, "history_scale_frames": [1, 1, 2],
    "history_pos_dim": 8, "success_hidden_dim": 16,
    # merged into the config's codec_kwargs (a whole dict on the command line would turn its `null`s into "None")
    "codec_kwargs.vae_config": {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1},
}  # fmt: skip
# configs/prophet/model_unet.yaml at test sizes (as tests/test_rl_prophet_config.py saves it)
TINY_UNET = {"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8, "norm_num_groups": 4}  # fmt: skip
# the policy of configs/policy/sft_metaworld.yaml and configs/rl/fagrpo_metaworld_sim.yaml at test sizes
TINY_POLICY = {"cond_dim": 32, "width": 32, "depth": 1, "num_heads": 2, "num_steps": 4, "cnn_channels": [8, 16, 16, 16]}
# callbacks of the configs at test sizes (init args merged over the config's own; classes not listed are kept as is)
TINY_CALLBACKS = {
    "WorldModelEvalCallback": {"num_episodes": 1, "num_segments": 1, "num_steps": 1, "batch_size": 1,
                               "baselines": False, "fvd": False, "every_n_epochs": 1},
    "VideoLoggerCallback": {"num_episodes": 1, "num_steps": 1, "every_n_epochs": 1},
    "SimEvalCallback": {"seeds": [1000], "max_queries": 1, "image_size": SIZE, "max_steps": 4},
}  # fmt: skip
# WorldModelEvalCallback's scores on the moving region: nan by definition when the real clip has none (the tiny
# shards' frames are flat colours)
MOTION_METRICS = {"wm/dyn_psnr", "wm/flow_cos", "wm/flow_epe"}


class OneStepProbe(L.Callback):
    """Appended to the config's callbacks: the loss the first training batch returned and the trainable parameters
    its optimizer step changed."""

    def __init__(self) -> None:
        super().__init__()
        self.before: dict[str, torch.Tensor] = {}
        self.changed: list[str] = []
        self.loss: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if batch_idx == 0:
            self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            params = dict(pl_module.named_parameters())
            self.changed = [n for n, v in self.before.items() if not torch.equal(params[n].detach(), v)]
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # None: manual optimization (RL)
            self.loss = None if loss is None else float(loss)


def ranked_reward(batch: RolloutBatch) -> torch.Tensor:
    """``varied_reward`` of tests/modules/test_policy_rl_modules.py (1 for the rollout of each group of 2 whose
    executed x-actions are largest), annotated as ``FAGRPOModule``'s ``reward_model`` type asks the CLI to check."""
    return varied_reward(batch)


def metaworld_stats() -> dict[str, Any]:
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(500, 4)))
    return ActionStats.compute([unified], mask=mask).to_dict()


def config_of(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


def tiny_callbacks(name: str) -> str:
    """The config's own ``trainer.callbacks`` (class paths and init args) with ``TINY_CALLBACKS`` merged in, plus the
    probe, as one command-line value."""
    callbacks = []
    for cb in config_of(name)["trainer"].get("callbacks") or []:
        init = {**cb.get("init_args", {}), **TINY_CALLBACKS.get(cb["class_path"].rsplit(".", 1)[-1], {})}
        callbacks.append({"class_path": cb["class_path"], **({"init_args": init} if init else {})})
    return json.dumps([*callbacks, {"class_path": PROBE}])


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    """Tiny episode shard directories (real ShardWriter output with stats.json): a training and a held-out set."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "train": write_coded_dataset(root / "train", "coded", episodes=4, length=30, size=SIZE),
        "val": write_coded_dataset(root / "val", "coded", episodes=2, length=30, size=SIZE),
    }


@pytest.fixture(scope="module")
def saved_2b(tmp_path_factory) -> str:
    """configs/prophet/model_2b.yaml at ``TINY_2B`` sizes, saved with ``save_pretrained`` (adapt_2b_fsdp's model)."""
    path = tmp_path_factory.mktemp("prophet_2b") / "export"
    init = config_of("prophet/model_2b.yaml")["init_args"]
    tiny = {k: v for k, v in TINY_2B.items() if "." not in k}
    codec_kwargs = {**init["codec_kwargs"], "vae_config": TINY_2B["codec_kwargs.vae_config"]}
    torch.manual_seed(0)
    Prophet(**{**init, **tiny, "codec_kwargs": codec_kwargs}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory) -> str:
    """A ``PolicySFTModule`` checkpoint of the sim config's policy at ``TINY_POLICY`` sizes: the ``policy.*`` weights
    and the hyper-parameters (action statistics and dims) ``FAGRPOModule(sft_checkpoint=...)`` reads."""
    from lightning_prophrl.modules import PolicySFTModule

    init = config_of("rl/fagrpo_metaworld_sim.yaml")["model"]["init_args"]["policy"]["init_args"]
    torch.manual_seed(0)
    module = PolicySFTModule(FlowMatchingPolicy(**{**init, **TINY_POLICY}), action_stats=metaworld_stats(),
                             action_dims=DIMS)  # fmt: skip
    path = tmp_path_factory.mktemp("sft") / "sft.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


def flags(values: dict[str, Any]) -> list[str]:
    """``{"--key": value}`` as command-line arguments; lists and dicts as JSON."""
    out = []
    for key, value in values.items():
        out += [key, value if isinstance(value, str) else json.dumps(value)]
    return out


def clip_data(clips: dict[str, str], **extra: Any) -> dict[str, Any]:
    """RobotClipDataModule overrides: the tiny shards, tiny batches, no worker processes (they cost seconds on the
    shared cores; multi-worker sharding is tested in tests/datamodules/test_workers.py)."""
    return {f"{D}datasets": [clips["train"]], f"{D}val_datasets": [clips["val"]], f"{D}image_size": SIZE,
            f"{D}batch_size": 2, f"{D}num_workers": 0, f"{D}samples_per_epoch": 4, f"{D}windows_per_episode": 2,
            f"{D}shuffle_buffer": 2, **{f"{D}{k}": v for k, v in extra.items()}}  # fmt: skip


def nested(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in values.items()}


@dataclass
class Case:
    """How one config is made tiny: ``overrides(fixtures) -> {flag: value}`` and the fixtures it reads."""

    overrides: Callable[[dict[str, Any]], dict[str, Any]]
    fixtures: tuple[str, ...] = ()


def _sft(f):
    policy = f"{M}policy.init_args."
    return {f"{D}datasets": [f["clips"]["train"]], f"{D}image_size": SIZE, f"{D}batch_size": 2,
            f"{D}samples_per_epoch": 4, f"{policy}instructions": ["task of coded"], **nested(policy, TINY_POLICY),
            f"{M}export_dir": "policy"}  # fmt: skip


def _classifier(f):
    cls = f"{M}classifier.init_args."
    return {f"{D}datasets": [f["clips"]["train"]], f"{D}image_size": SIZE, f"{D}batch_size": 2,
            f"{D}samples_per_epoch": 4, f"{D}frames_per_episode": 2, f"{D}shuffle_buffer": 4,
            f"{cls}feature_dim": 16, f"{cls}channels": [8, 8, 8, 8], f"{cls}groups": 4}  # fmt: skip


def _pretrain_tiny(f):
    model = f"{M}model.init_args."
    return {**clip_data(f["clips"], history_len=4), f"{model}num_layers": 1, f"{model}history_length": 4,
            f"{model}history_scale_frames": [1, 1, 2]}  # fmt: skip


def _adapt_tiny(f):
    return {**clip_data(f["clips"], history_len=4), f"{M}pretrained_path": f["pretrained_dir"]}


def _pretrain_unet(f):
    model = f"{M}model.init_args."
    return {**clip_data(f["clips"], stats_from=f["clips"]["train"]), f"{M}stats_from": f["clips"]["train"],
            f"{model}unet_kwargs": TINY_UNET, f"{model}action_frame_channels": 8,
            f"{model}action_hidden_dim": 32}  # fmt: skip


def _adapt_unet(f):
    prophet = str(Path(f["saved"]) / "prophet")
    return {**clip_data(f["clips"], stats_from=prophet), f"{M}pretrained_path": prophet}


def _pretrain_2b(f):
    # the mixture keeps the config's {path, weight} entry form
    return {**clip_data(f["clips"], history_len=4), f"{D}datasets": [{"path": f["clips"]["train"], "weight": 4.0}],
            **nested(f"{M}model.init_args.", TINY_2B)}  # fmt: skip


def _adapt_2b(f):
    return {**clip_data(f["clips"], history_len=4), f"{M}pretrained_path": f["saved_2b"]}


def _fagrpo_prophet(f):
    env = f"{M}env.init_args."
    return {f"{M}policy_dir": str(Path(f["saved"]) / "policy"), **_rl_common(), f"{env}model_dir":
            str(Path(f["saved"]) / "prophet"), f"{env}max_segments": 2, f"{env}num_steps": 1}  # fmt: skip


def _fagrpo_sim(f):
    env = f"{M}env.init_args."
    return {f"{M}sft_checkpoint": f["sft_checkpoint"], **nested(f"{M}policy.init_args.", TINY_POLICY),
            **_rl_common(), f"{env}max_steps": 8}  # fmt: skip


def _rl_common():
    """2 prompts x 2 rollouts of 2 queries, one update; a reward that ranks every group's rollouts (the 0/1 success
    of a random tiny policy is constant and FA-GRPO would skip the update)."""
    env = f"{M}env.init_args."
    return {f"{M}group_size": 2, f"{M}max_queries": 2, f"{M}minibatch_size": 8, f"{M}step_grad_every": 0,
            f"{M}reward_model": "tests.test_configs_instantiate.ranked_reward", f"{env}num_prompts": 2,
            f"{env}group_size": 2, f"{env}image_size": SIZE, f"{D}num_prompts": 2, f"{D}updates_per_epoch": 1,
            f"{M}export_dir": "policy"}  # fmt: skip


CASES = {
    "policy/sft_metaworld.yaml": Case(_sft),
    "reward/classifier_tiny.yaml": Case(_classifier),
    "prophet/pretrain_tiny.yaml": Case(_pretrain_tiny),
    "prophet/adapt_tiny.yaml": Case(_adapt_tiny, ("pretrained_dir",)),
    "prophet/pretrain_metaworld.yaml": Case(_pretrain_unet),
    "prophet/adapt_metaworld.yaml": Case(_adapt_unet, ("saved",)),
    "prophet/pretrain_2b.yaml": Case(_pretrain_2b),
    "prophet/pretrain_2b_fsdp.yaml": Case(_pretrain_2b),
    "prophet/adapt_2b_fsdp.yaml": Case(_adapt_2b, ("saved_2b",)),
    "rl/fagrpo_prophet.yaml": Case(_fagrpo_prophet, ("saved",)),
    "rl/fagrpo_metaworld_sim.yaml": Case(_fagrpo_sim, ("sft_checkpoint",)),
}


def test_every_fit_config_has_a_case():
    assert set(FIT_CONFIGS) == set(CASES) and len(FIT_CONFIGS) >= 11


def tiny_fit_args(name: str, fixtures: dict[str, Any], root: Path) -> list[str]:
    """``fit --config <config>`` with the case's overrides and the common ones: CPU, one device, one training step
    then one validation batch, no sanity check, the config's own callbacks at test sizes plus ``OneStepProbe``."""
    common = {
        f"{T}accelerator": "cpu", f"{T}devices": "1", f"{T}num_nodes": "1",
        # FSDPStrategy and DDP need GPUs and a process group; the FSDP strategy of the configs is built and checked in
        # tests/scale/test_fsdp.py
        f"{T}strategy": "auto",
        f"{T}max_steps": "1", f"{T}limit_train_batches": "1", f"{T}accumulate_grad_batches": "1",
        f"{T}limit_val_batches": "1", f"{T}num_sanity_val_steps": "0", f"{T}val_check_interval": "1",
        f"{T}default_root_dir": str(root), f"{T}enable_progress_bar": "false", f"{T}enable_model_summary": "false",
        f"{T}callbacks": tiny_callbacks(name),
    }  # fmt: skip
    if "logger" not in config_of(name)["trainer"]:  # a config's own logger is kept (LearningRateMonitor needs one)
        common[f"{T}logger"] = "false"
    return ["fit", "--config", str(CONFIG_DIR / name), *flags({**common, **CASES[name].overrides(fixtures)})]


def _import(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", FIT_CONFIGS)
def test_fit_config_builds_and_trains_one_step(name, clips, request, tmp_path, monkeypatch):
    case = CASES[name]
    fixtures = {"clips": clips, **{f: request.getfixturevalue(f) for f in case.fixtures}}
    monkeypatch.setattr(sys, "argv", ["prophrl"])  # LightningCLI warns when args and pytest's argv are both given
    monkeypatch.chdir(tmp_path)  # the configs' relative outputs (runs/..., export and adapter dirs) land in tmp_path
    cli = _lightning_cli(tiny_fit_args(name, fixtures, tmp_path))

    # the config's classes, trainer and callbacks were built
    cfg = config_of(name)
    assert type(cli.model) is _import(cfg["model"]["class_path"])
    assert type(cli.datamodule) is _import(cfg["data"]["class_path"])
    assert isinstance(cli.trainer, L.Trainer) and cli.trainer.global_step >= 1
    configured = sorted(cb["class_path"].rsplit(".", 1)[-1] for cb in cfg["trainer"].get("callbacks") or [])
    assert configured == sorted(n for n in (type(cb).__name__ for cb in cli.trainer.callbacks) if n in configured)
    # the step trained: finite logged values (validation's too, where the config has held-out data), a changed weight
    (probe,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, OneStepProbe)]
    assert probe.changed, "the training step changed no trainable parameter"
    assert probe.loss is None or math.isfinite(probe.loss)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    nonfinite = {k: v for k, v in metrics.items() if not math.isfinite(v) and k not in MOTION_METRICS}
    assert metrics and not nonfinite
    if cfg["data"]["init_args"].get("val_datasets") or cfg["data"]["init_args"].get("val_fraction"):
        assert "val/loss" in metrics, sorted(metrics)
    if hasattr(cli.model, "updates"):  # FA-GRPO: one RL update, taken
        assert cli.model.updates == 1 and metrics["train/skipped_update"] == 0.0
    for key in ("export_dir", "adapter_dir"):  # written when training ends
        out = cli.model.hparams.get(key)
        assert out is None or (tmp_path / out).is_dir(), (key, out)
