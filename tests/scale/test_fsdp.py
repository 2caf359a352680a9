"""FSDP configs of the 2B Prophet and the scale callbacks (lightning_prophrl.scale.fsdp / .callbacks), on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lightning_prophrl.cli import _lightning_cli
from lightning_prophrl.datamodules.robot import RobotClipDataModule
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules.prophet_pretrain import ProphetPretrainModule
from lightning_prophrl.scale import (
    ActivationCheckpointing,
    FSDPGradientClipping,
    MemoryEstimateCallback,
    enable_activation_checkpointing,
    measure_activations,
    meta_copy,
    prophet_batch,
)
from tests.conftest import write_coded_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prophet"
FSDP_CONFIGS = [CONFIGS / "pretrain_2b_fsdp.yaml", CONFIGS / "adapt_2b_fsdp.yaml"]
ROOT_ONLY_CALLBACKS = ("EMACallback", "WorldModelEvalCallback", "VideoLoggerCallback")


def printed_config(path: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        _lightning_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", FSDP_CONFIGS, ids=lambda p: p.name)
def test_fsdp_config_round_trips_and_builds_its_strategy_on_cpu(path, capsys):
    cfg = printed_config(path, capsys)  # what LightningCLI also saves as config.yaml next to the logs
    trainer = cfg["trainer"]
    assert trainer["precision"] == "bf16-mixed" and trainer["gradient_clip_val"] is None  # FSDP cannot clip by norm
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy | str)
    parser.add_argument("--callbacks", type=list[Callback])
    built = parser.instantiate(
        parser.parse_object({"strategy": trainer["strategy"], "callbacks": trainer["callbacks"]})
    )
    strategy = built.strategy
    assert isinstance(strategy, FSDPStrategy) and strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and set(policy._module_classes) == {CosmosTransformerBlock}
    assert strategy.kwargs["use_orig_params"] and strategy._activation_checkpointing_kwargs == {}
    names = [type(cb).__name__ for cb in built.callbacks]
    assert {"ActivationCheckpointing", "FSDPGradientClipping", "MemoryEstimateCallback"} <= set(names)
    assert not set(names) & set(ROOT_ONLY_CALLBACKS)
    init = cfg["model"]["init_args"]
    assert init.get("export_dir") is None and init.get("adapter_dir") is None  # rank 0 alone holds only its shards


def tiny_prophet() -> Prophet:
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    kwargs.update(num_layers=2, history_length=4, history_scale_frames=[1, 1, 2])
    torch.manual_seed(0)
    return Prophet(**kwargs)


def grads_of(module: ProphetPretrainModule, batch: dict) -> dict[str, torch.Tensor]:
    module.zero_grad()
    loss, _ = module.model.training_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_activation_checkpointing_turns_on_the_models_own_and_keeps_gradients():
    module = ProphetPretrainModule(tiny_prophet()).train()
    batch = {k: v.uniform_(-1, 1) if v.dtype.is_floating_point else v
             for k, v in prophet_batch(module.model, 32, 2, history_len=3, device="cpu").items()}  # fmt: skip
    before = grads_of(module, batch)
    enabled = enable_activation_checkpointing(module)
    assert enabled == [module.model] and module.model.transformer.gradient_checkpointing
    after = grads_of(module, batch)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="ActivationCheckpointing"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))


def test_memory_callback_prints_the_estimate_before_fit(tmp_path, caplog):
    train = write_coded_dataset(tmp_path / "train", "coded", episodes=2, length=20, size=32)
    data = RobotClipDataModule([train], history_len=3, chunk_len=8, image_size=32, batch_size=2, samples_per_epoch=2,
                               windows_per_episode=1, shuffle_buffer=1)  # fmt: skip
    module = ProphetPretrainModule(tiny_prophet())
    memory, checkpointing = MemoryEstimateCallback(), ActivationCheckpointing()  # memory first: still sees it on
    trainer = L.Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[memory, checkpointing])  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer.fit(module, data)
    assert checkpointing.enabled == ["Prophet"] and module.model.transformer.gradient_checkpointing
    e = memory.estimate
    assert e is not None and "Memory estimate before the run" in caplog.text and "activations (2 x" in caplog.text
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert (e.precision, e.sharding, e.batch_size, e.counts.trainable) == ("32-true", "none", 2, trainable)
    twin = meta_copy(module.model).train()
    act = measure_activations(twin, lambda m: m.training_loss(prophet_batch(m, 32, 1, 3)), 1, (CosmosTransformerBlock,))
    assert e.activations_per_sample == act.checkpointed_bytes  # measured at the datamodule's size, checkpointed


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 8)

    def training_step(self, batch, batch_idx):
        return 1e3 * self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 8)), batch_size=2)


class _NormProbe(L.Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_gradient_clipping_callback_clips_the_global_norm_and_logs_it():
    probe = _NormProbe()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FSDPGradientClipping(0.5), probe])  # fmt: skip
    trainer.fit(_Linear())
    assert len(probe.norms) == 2 and all(n <= 0.5 * (1 + 1e-5) for n in probe.norms)
    assert float(trainer.callback_metrics["train/grad_norm"]) > 0.5  # the norm before clipping
    with pytest.raises(ValueError, match="max_norm"):
        FSDPGradientClipping(0.0)
