"""Prophet LightningModules: pretraining and LoRA / full adaptation, their checkpoints and the fit configs."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.callbacks import EMACallback
from lightning_prophrl.datamodules.robot import RobotClipDataModule
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules.prophet_adapt import ProphetAdaptModule, is_adapted_parameter, load_adapter
from lightning_prophrl.modules.prophet_pretrain import ProphetPretrainModule, export_checkpoint
from tests.conftest import write_coded_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prophet"
SIZE = 32  # frames; latents 8 x 8 with the x4 pixel codec


def tiny_prophet(seed: int = 0) -> Prophet:
    """configs/prophet/model_tiny.yaml with one DiT block and a 4-frame memory (faster tests)."""
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    kwargs.update(num_layers=1, history_length=4, history_scale_frames=[1, 1, 2])
    torch.manual_seed(seed)
    return Prophet(**kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> RobotClipDataModule:
    root = tmp_path_factory.mktemp("prophet_modules")
    train = write_coded_dataset(root / "train", "coded", episodes=4, length=20, size=SIZE)
    val = write_coded_dataset(root / "val", "coded", episodes=2, length=20, size=SIZE)
    return RobotClipDataModule([train], val_datasets=[val], history_len=2, chunk_len=8, image_size=SIZE,
                               batch_size=2, samples_per_epoch=4, windows_per_episode=2, shuffle_buffer=2)  # fmt: skip


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pretrained") / "prophet"
    tiny_prophet(seed=1).save_pretrained(path)
    return str(path)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------------------------------
def test_a_checkpoint_exports_its_ema_average_or_its_raw_weights(data, tmp_path):
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())
    kwargs["init_args"].update(num_layers=1, history_length=4, history_scale_frames=[1, 1, 2])
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(kwargs))
    module = ProphetPretrainModule(tiny_prophet())
    ema = EMACallback(decay=0.9, apply_at_end=False)  # the checkpoint holds the raw weights, as mid-run ones do
    t = trainer(max_steps=3, limit_val_batches=0, callbacks=[ema], default_root_dir=tmp_path)
    t.fit(module, data)
    t.save_checkpoint(tmp_path / "run.ckpt")
    raw = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "model.yaml", tmp_path / "raw", ema=False)
    avg = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "model.yaml", tmp_path / "avg")
    raw_sd, avg_sd = Prophet.from_pretrained(raw).state_dict(), Prophet.from_pretrained(avg).state_dict()
    assert all(torch.equal(v, raw_sd[k]) for k, v in module.model.state_dict().items())
    params = dict(module.model.named_parameters())
    assert all(torch.equal(avg_sd[k], ema.ema[f"model.{k}"]) for k in params)
    assert any(not torch.equal(avg_sd[k], raw_sd[k]) for k in params)
    with pytest.raises(FileNotFoundError, match="stats_from"):
        export_checkpoint(tmp_path / "run.ckpt", tmp_path / "model.yaml", tmp_path / "x", stats_from=str(tmp_path))


@pytest.mark.slow
def test_pretrain_fast_dev_run_logs_and_exports_exactly(data, tmp_path):
    module = ProphetPretrainModule(tiny_prophet(), export_dir=str(tmp_path / "export"))
    before = snapshot(module.model)
    t = trainer(fast_dev_run=True)
    t.fit(module, data)
    for key in ("train/loss", "train/flow_loss", "train/success_loss", "val/loss", "val/flow_loss"):
        assert torch.isfinite(t.callback_metrics[key]), key
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k in dict(module.model.named_parameters()) for k in changed)
    # The export written in on_train_end is the trained model, bit for bit.
    reloaded = Prophet.from_pretrained(tmp_path / "export")
    assert reloaded.state_dict().keys() == module.model.state_dict().keys()
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_validation_loss_uses_seeded_noise(data):
    module = ProphetPretrainModule(tiny_prophet(), val_seed=3)
    t = trainer(limit_val_batches=1)
    first = t.validate(module, data, verbose=False)[0]["val/loss"]
    second = t.validate(module, data, verbose=False)[0]["val/loss"]
    assert first == second
    module.hparams.val_seed = 4
    assert t.validate(module, data, verbose=False)[0]["val/loss"] != first


def test_pretrain_rejects_non_prophet():
    with pytest.raises(TypeError, match="model"):
        ProphetPretrainModule(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Adaptation
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("train_conditioning", [False, True])
def test_lora_trains_only_the_adapted_parameters(data, pretrained_dir, train_conditioning):
    module = ProphetAdaptModule(pretrained_path=pretrained_dir, lora_rank=4, lora_alpha=8,
                                train_conditioning=train_conditioning)  # fmt: skip
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in module.model.named_parameters() if is_adapted_parameter(n, train_conditioning)}
    assert any("lora_B" in n for n in trainable)
    assert any(n.startswith("action_encoder.") for n in trainable) == train_conditioning
    before = snapshot(module.model)
    trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False).fit(module, data)
    after = module.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed <= trainable  # frozen weights are bit-identical
    assert any("lora_B" in k for k in changed)  # lora_A gets no gradient while B is still zero
    assert any(k.startswith("action_encoder.") for k in changed) == train_conditioning


@pytest.mark.slow
def test_lora_checkpoint_is_adapter_only_and_round_trips_exactly(data, pretrained_dir, tmp_path):
    module = ProphetAdaptModule(pretrained_path=pretrained_dir, lora_rank=4, lora_alpha=8, train_conditioning=True,
                                adapter_dir=str(tmp_path / "adapter"))  # fmt: skip
    t = trainer(max_steps=2, limit_val_batches=0, enable_checkpointing=False, default_root_dir=tmp_path)
    t.fit(module, data)
    t.save_checkpoint(tmp_path / "lora.ckpt")
    saved = torch.load(tmp_path / "lora.ckpt", weights_only=False)["state_dict"]
    assert set(saved) == module.adapter_state_keys()
    assert len(saved) < len(module.state_dict())
    assert not any(k.startswith("model.transformer.") and "lora_" not in k for k in saved)

    reloaded = ProphetAdaptModule.load_from_checkpoint(tmp_path / "lora.ckpt")
    ref = module.state_dict()
    assert reloaded.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in reloaded.state_dict().items())

    wrong = {k: v for k, v in saved.items() if "success_mlp" not in k}
    with pytest.raises(RuntimeError, match="adapter-only"):
        reloaded.load_state_dict(wrong)

    # The adapter exported in on_train_end reproduces the adapted model on a fresh copy of the pretrained one.
    fresh = Prophet.from_pretrained(pretrained_dir)
    load_adapter(fresh, tmp_path / "adapter")
    g = torch.Generator().manual_seed(0)
    batch = {K.COND_FRAME: torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1,
             K.ACTIONS: torch.randn(1, 8, K.ACTION_DIM, generator=g)}  # fmt: skip

    def sample(model: Prophet):
        return model.eval().generate(batch[K.COND_FRAME], batch[K.ACTIONS], num_steps=1,
                                     generator=torch.Generator().manual_seed(1))  # fmt: skip

    adapted, reloaded_adapter = sample(module.model), sample(fresh)
    assert torch.equal(adapted.frames, reloaded_adapter.frames)
    assert torch.equal(adapted.success_logit, reloaded_adapter.success_logit)
    assert not torch.allclose(adapted.frames, sample(Prophet.from_pretrained(pretrained_dir)).frames)


def test_full_mode_trains_everything_and_saves_full_checkpoints(data, pretrained_dir, tmp_path):
    module = ProphetAdaptModule(pretrained_path=pretrained_dir, mode="full", adapter_dir=str(tmp_path / "full"))
    assert all(p.requires_grad for p in module.model.parameters())
    assert not any("lora_" in n for n, _ in module.model.named_parameters())
    t = trainer(max_steps=1, limit_val_batches=0, enable_checkpointing=False, default_root_dir=tmp_path)
    t.fit(module, data)
    t.save_checkpoint(tmp_path / "full.ckpt")
    assert set(torch.load(tmp_path / "full.ckpt", weights_only=False)["state_dict"]) == set(module.state_dict())
    exported = Prophet.from_pretrained(tmp_path / "full")
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in exported.state_dict().items())


def test_adapt_needs_exactly_one_model_source(pretrained_dir):
    with pytest.raises(ValueError, match="exactly one"):
        ProphetAdaptModule()
    with pytest.raises(ValueError, match="exactly one"):
        ProphetAdaptModule(model=tiny_prophet(), pretrained_path=pretrained_dir)
    with pytest.raises(ValueError, match="mode"):
        ProphetAdaptModule(model=tiny_prophet(), mode="qlora")


# ---------------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------------
FIT_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if "class_path" not in yaml.safe_load(p.read_text()))
MODEL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in FIT_CONFIGS)


def print_config(args: list[str], capsys, monkeypatch) -> dict:
    from lightning_prophrl.cli import _lightning_cli

    monkeypatch.setattr(sys, "argv", ["prophrl"])  # LightningCLI warns when args and pytest's argv are both given
    with pytest.raises(SystemExit) as exc:
        _lightning_cli(["fit", *args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_prophet_yaml_is_covered():
    assert {"pretrain_tiny.yaml", "adapt_tiny.yaml", "pretrain_2b.yaml"} <= set(FIT_CONFIGS)
    assert {"model_tiny.yaml", "model_2b.yaml"} <= set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", FIT_CONFIGS)
def test_fit_configs_parse_through_the_cli(name, capsys, monkeypatch):
    cfg = print_config(["--config", str(CONFIGS / name)], capsys, monkeypatch)
    init = cfg["model"]["init_args"]
    chunk = cfg["data"]["init_args"]["chunk_len"]
    if "model" in init and init["model"] is not None:  # nested Prophet: chunk lengths agree
        assert init["model"]["class_path"] == "lightning_prophrl.models.prophet.Prophet"
        assert init["model"]["init_args"]["action_chunk_length"] == chunk
    else:
        assert init["pretrained_path"]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_configs_parse_as_the_nested_model(name, capsys, monkeypatch):
    cfg = print_config(["--config", str(CONFIGS / "pretrain_tiny.yaml"), "--model.init_args.model",
                        str(CONFIGS / name)], capsys, monkeypatch)  # fmt: skip
    expected = yaml.safe_load((CONFIGS / name).read_text())["init_args"]
    parsed = cfg["model"]["init_args"]["model"]["init_args"]
    for key in ("codec", "action_chunk_length", "history_length", "backbone", "num_layers"):
        assert parsed[key] == expected.get(key, parsed[key] if key in ("backbone", "num_layers") else None)
    assert parsed["backbone"] == expected.get("backbone", "cosmos")


def test_trainer_config_composes(capsys, monkeypatch):
    cfg = print_config(["--config", str(CONFIGS.parent / "trainer" / "cpu_tiny.yaml"), "--config",
                        str(CONFIGS / "pretrain_tiny.yaml")], capsys, monkeypatch)  # fmt: skip
    assert cfg["trainer"]["accelerator"] == "cpu" and cfg["trainer"]["max_steps"] == 4000


class StepLog(L.pytorch.loggers.Logger):
    """A logger that keeps the step of every ``train/loss`` it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    name, version = "steps", 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "train/loss" in metrics:
            self.steps.append(step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_a_run_resumed_from_a_mid_step_checkpoint_logs_at_its_global_step(data, tmp_path):
    # Lightning's pre-emption checkpoint is written from inside the SIGUSR1 handler: after the optimizer step, before
    # the loop counts the batch, it records a logging step one behind the global step. The resumed run logs each
    # loss at the global step of the update it belongs to all the same.
    t = trainer(max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    t.fit(ProphetPretrainModule(tiny_prophet()), data)
    t.save_checkpoint(tmp_path / "hpc.ckpt")
    ckpt = torch.load(tmp_path / "hpc.ckpt", map_location="cpu", weights_only=False)
    ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] = ckpt["global_step"] - 1
    torch.save(ckpt, tmp_path / "hpc.ckpt")
    log = StepLog()
    resumed = trainer(max_steps=5, limit_val_batches=0, logger=log, log_every_n_steps=1, default_root_dir=tmp_path)
    resumed.fit(ProphetPretrainModule(tiny_prophet()), data, ckpt_path=tmp_path / "hpc.ckpt")
    assert resumed.global_step == 5 and log.steps == [2, 3, 4]
