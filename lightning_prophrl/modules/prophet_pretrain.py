"""Prophet pretraining (paper: pretraining): the rectified-flow video loss of the world model on robot clips.

The network is built outside (``lightning_prophrl.models.prophet.Prophet``, e.g. from
``configs/prophet/model_tiny.yaml``) and passed in; this module only defines the research step. EMA, world-model
evaluation and video logging are callbacks (``lightning_prophrl.callbacks``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from lightning_prophrl import constants as K
from lightning_prophrl.checkpoints import build_optimizers, default_optimizer
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.models.prophet.self_forcing import self_forced, split_segments


def check_self_forcing(share: float) -> None:
    """``self_forcing`` is a share of clips: in ``[0, 1]``."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"`self_forcing` is a share of clips in [0, 1], got {share}")


class ProphetTrainingBase(L.LightningModule):
    """The step shared by pretraining and adaptation: ``Prophet.training_loss`` on ``RobotClipDataModule`` batches.

    Subclasses set ``self.model``, ``self.optimizer_factory``, ``self.scheduler_factory`` and the hyper-parameter
    ``val_seed``. Only parameters with ``requires_grad`` are given to the optimizer.
    """

    model: Prophet

    @override
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, logs)`` of :meth:`Prophet.training_loss` on a clip batch (see its docstring for the keys)."""
        return self.model.training_loss(batch)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Log each batch at the global step of the update it makes, also after a resume.

        Lightning's own pre-emption checkpoint (SLURM's SIGUSR1, in a ``Trainer`` without ``RequeueOnPreemption``) is
        written from inside the signal handler, possibly after the optimizer step and before the loop counts the
        batch: it then records a logging step one behind the global step, and the requeued run would log every loss
        one step early.
        """
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.trainer.global_step

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train", batch_idx)

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val", batch_idx)

    def _shared_step(self, batch: dict[str, Any], stage: str, batch_idx: int = 0) -> torch.Tensor:
        """Loss on one batch; logs ``{stage}/loss``, ``{stage}/flow_loss`` (+ success loss and accuracy).

        Validation draws ``t`` and the noise from a generator seeded with ``(val_seed, batch_idx)``, so the validation
        loss of two epochs (or two models) is measured on the same noise and is comparable.
        """
        generator = None
        if stage != "train":
            generator = torch.Generator().manual_seed(int(self.hparams.val_seed) * 1_000_003 + batch_idx)
        share = float(self.hparams.get("self_forcing", 0.0))
        if share > 0:
            loss, logs = self._self_forcing_loss(batch, share if stage == "train" else 0.0, generator)
        else:
            loss, logs = self.model.training_loss(batch, generator=generator)
        bs = batch[K.ACTIONS].shape[0]  # pixel or pre-encoded latent batches alike
        for key, value in logs.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "loss", batch_size=bs, sync_dist=stage != "train")
        return loss

    def _self_forcing_loss(
        self, batch: dict[str, Any], share: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss of a two-segment clip's segments, the second continuing from the model's own frames in a
        ``share`` of the clips (``models.prophet.self_forcing``); validation passes ``share`` 0 (real frames only)."""
        cfg = self.model.config
        first, second = split_segments(batch, int(cfg.action_chunk_length), int(cfg.history_length))
        chosen = None
        if share > 0:
            second, chosen = self_forced(self.model, first, second, share, generator=generator)
        loss_a, logs_a = self.model.training_loss(first, generator=generator)
        loss_b, logs_b = self.model.training_loss(second, generator=generator)
        logs = {**logs_b, **{k: (v + logs_b[k]) / 2 for k, v in logs_a.items() if k in logs_b}}
        logs["loss"] = ((loss_a + loss_b) / 2).detach()
        if chosen is not None:
            logs["self_forced_share"] = chosen.float().mean()
        return (loss_a + loss_b) / 2, logs

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("the Prophet model has no trainable parameter")
        return build_optimizers(params, self.optimizer_factory, self.scheduler_factory)


class ProphetPretrainModule(ProphetTrainingBase):
    """Full-parameter training of a Prophet world model (pretraining, or training from scratch on CPU).

    With ``export_dir`` the trained model is written with ``save_pretrained`` when training ends (after an
    ``EMACallback`` with ``apply_at_end=True`` copied its average in: callbacks' ``on_train_end`` run first), so
    ``Prophet.from_pretrained(export_dir)`` or ``ProphetAdaptModule(pretrained_path=export_dir)`` pick it up.

    Load a checkpoint with ``ProphetPretrainModule.load_from_checkpoint(path, model=Prophet(**same_config))`` (the
    network is a constructor argument and is not stored in the hyper-parameters; LightningCLI's ``config.yaml`` next to
    the logs holds its config).

    Args:
        model: the Prophet network (LightningCLI: a nested ``class_path`` / ``init_args``).
        optimizer: optimizer factory, applied to the trainable parameters (default AdamW, lr 1e-4, weight decay 0.1:
            inferred from A2World, the same group's follow-up; Prophet's own settings are not given in the paper).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        export_dir: directory for ``save_pretrained`` at the end of training (None: no export).
        stats_from: dataset directory whose ``stats.json`` (the action normalization the model was trained with) is
            copied into the export, so the exported directory is all a user of the model needs.
        val_seed: seed of the validation noise and times (validation losses are comparable across epochs).
        self_forcing: share of the clips whose second segment continues from the model's own one-step generation of
            the first (``models.prophet.self_forcing``); needs clips of two segments (the datamodule's ``chunk_len``
            twice the model's ``action_chunk_length``). 0 (default): plain clips of one segment.
    """

    def __init__(
        self,
        model: Prophet,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        export_dir: str | None = None,
        val_seed: int = 0,
        stats_from: str | None = None,
        self_forcing: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        check_self_forcing(self_forcing)
        if stats_from is not None and not (Path(stats_from) / K.STATS_FILE).exists():
            raise FileNotFoundError(f"`stats_from`: {Path(stats_from) / K.STATS_FILE} not found")
        if not isinstance(model, Prophet):
            raise TypeError(f"`model` must be a lightning_prophrl.models.prophet.Prophet, got {type(model).__name__}")
        self.model = model
        self.optimizer_factory = default_optimizer(optimizer, torch.optim.AdamW, lr=1e-4, weight_decay=0.1)
        self.scheduler_factory = lr_scheduler

    @override
    def on_train_end(self) -> None:
        if self.hparams.export_dir is not None and self.trainer.is_global_zero:
            self.export(self.hparams.export_dir)

    def export(self, path: str) -> None:
        """Write the Prophet with ``save_pretrained(path)`` (config + safetensors) and the ``stats_from`` stats."""
        self.model.save_pretrained(path)
        if self.hparams.stats_from is not None:
            shutil.copy(Path(self.hparams.stats_from) / K.STATS_FILE, Path(path) / K.STATS_FILE)


def export_checkpoint(
    ckpt_path: str | Path, model_config: str | Path, out: str | Path, stats_from: str | None = None, ema: bool = True
) -> str:
    """Write the Prophet of a pretraining checkpoint as a ``save_pretrained`` directory (any step of a long run).

    Args:
        ckpt_path: a ``ProphetPretrainModule`` checkpoint (e.g. ``ModelCheckpoint``'s ``step=N`` or ``last.ckpt``).
        model_config: the run's model YAML (``class_path``/``init_args`` of ``Prophet``, as in the fit config).
        out: output directory.
        stats_from: directory whose ``stats.json`` is copied along (the run's ``stats_from``).
        ema: write the ``EMACallback`` average stored in the checkpoint (an error when it holds none); False: the raw
            weights.
    """
    import yaml

    config = yaml.safe_load(Path(model_config).read_text())
    model = Prophet(**config.get("init_args", config))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if ema:
        states = [s for k, s in ckpt.get("callbacks", {}).items() if k.startswith("EMACallback") and s.get("ema")]
        if not states:
            raise KeyError(f"{ckpt_path}: no EMACallback average in the checkpoint (export the raw weights: ema=False)")
        weights.update({k.removeprefix("model."): v for k, v in states[0]["ema"].items()})
    model.load_state_dict(weights, strict=True)
    module = ProphetPretrainModule(model, stats_from=stats_from)
    module.export(str(out))
    return str(out)
