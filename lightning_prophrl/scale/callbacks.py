"""The memory estimate printed before a run (``trainer.callbacks`` in the FSDP configs)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_prophrl.scale.activations import ActivationMeasurement, measure_activations, meta_copy, prophet_batch
from lightning_prophrl.scale.fsdp import (
    ActivationCheckpointing,
    checkpointed_block_classes,
    enable_activation_checkpointing,
    wrap_classes,
)
from lightning_prophrl.scale.memory import GIB, MemoryEstimate, estimate_memory

_PRECISION_ALIASES = {"16-mixed": "bf16-mixed", "16-true": "bf16-true"}  # same byte counts


def _sharding(trainer: L.Trainer) -> tuple[str, tuple[type, ...]]:
    """``("full" | "none", FSDP block classes)`` of the trainer's strategy (every FSDP sharding strategy but
    NO_SHARD is counted as full sharding)."""
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        sharding = "none" if strategy.sharding_strategy.name == "NO_SHARD" else "full"
        return sharding, wrap_classes(strategy.kwargs.get("auto_wrap_policy"))
    return "none", ()


class MemoryEstimateCallback(L.Callback):
    """Prints the per-GPU memory estimate of the run on rank 0 in ``setup("fit")``, before the strategy shards the
    model (:func:`lightning_prophrl.scale.memory.estimate_memory`), and warns when it exceeds the GPU's memory.

    Read from the trainer: the precision, the world size, FSDP's sharding and wrapped block classes, the model's
    trainable parameters (``requires_grad``: LoRA counts only the adapters) and whether its gradient checkpointing is
    on (also when an :class:`ActivationCheckpointing` callback listed later will turn it on). Activations are measured
    on a meta-device copy (:mod:`lightning_prophrl.scale.activations`) when the LightningModule's ``model`` is a
    Prophet, with the datamodule's ``image_size``, ``history_len`` and ``batch_size`` unless given here.

    Args:
        batch_size: samples per GPU (default the datamodule's ``batch_size``, else 1).
        image_size: frame size of the activation measurement (default the datamodule's).
        history_len: past frames of the activation measurement (default the datamodule's).
        activations: measure activations (False: weights and optimizer only).
    """

    def __init__(
        self,
        batch_size: int | None = None,
        image_size: int | None = None,
        history_len: int | None = None,
        activations: bool = True,
    ) -> None:
        super().__init__()
        self.batch_size, self.image_size, self.history_len = batch_size, image_size, history_len
        self.activations = activations
        self.estimate: MemoryEstimate | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        precision = _PRECISION_ALIASES.get(str(trainer.precision), str(trainer.precision))
        if precision not in ("32-true", "bf16-mixed", "bf16-true"):
            rank_zero_warn(f"MemoryEstimateCallback: no estimate for precision {precision!r}")
            return
        if any(isinstance(cb, ActivationCheckpointing) for cb in trainer.callbacks):
            enable_activation_checkpointing(pl_module)  # idempotent; the callback may come later in the list
        hp = getattr(getattr(trainer, "datamodule", None), "hparams", {}) or {}
        batch_size = self.batch_size or int(hp.get("batch_size", 1))
        blocks = checkpointed_block_classes(pl_module)
        measured = self._measure(pl_module, hp, blocks) if self.activations else None
        sharding, wrap = _sharding(trainer)
        self.estimate = estimate_memory(
            pl_module, precision=precision, world_size=trainer.world_size, sharding=sharding, wrap=wrap,
            activations=measured, checkpointing=bool(blocks), batch_size=batch_size,
            name=type(getattr(pl_module, "model", pl_module)).__name__,
        )  # fmt: skip
        rank_zero_info(f"Memory estimate before the run:\n{self.estimate}")
        self._check_capacity(trainer)

    def _measure(self, pl_module: L.LightningModule, hp: Any, blocks: tuple[type, ...]) -> ActivationMeasurement | None:
        """Activations of one sample of a Prophet training forward on a meta copy; None for other models."""
        from lightning_prophrl.models.prophet import Prophet

        model = getattr(pl_module, "model", None)
        if not isinstance(model, Prophet):
            return None
        image_size = self.image_size or int(hp.get("image_size", 64))
        history = self.history_len if self.history_len is not None else hp.get("history_len")
        twin = meta_copy(model).train()
        batch = prophet_batch(twin, image_size, 1, None if history is None else int(history))
        return measure_activations(twin, lambda m: m.training_loss(batch), 1, blocks)

    def _check_capacity(self, trainer: L.Trainer) -> None:
        device = trainer.strategy.root_device
        if self.estimate is None or device.type != "cuda":
            return
        capacity = torch.cuda.get_device_properties(device).total_memory
        if self.estimate.total > capacity:
            rank_zero_warn(
                f"the memory estimate ({self.estimate.total / GIB:.1f} GiB) exceeds the GPU's {capacity / GIB:.1f} "
                "GiB: lower data.init_args.batch_size, add ActivationCheckpointing, or shard with FSDPStrategy"
            )
