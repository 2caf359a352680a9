"""Exponential moving average of the trainable weights (the usual companion of diffusion / flow training)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from typing_extensions import override

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class EMACallback(L.Callback):
    """Keeps ``ema <- decay * ema + (1 - decay) * param`` for every trainable parameter of the LightningModule.

    * Updated after every ``every_n_steps``-th optimizer step (``trainer.global_step``; micro-batches of gradient
      accumulation that do not step the optimizer are skipped).
    * Validation runs on the averaged weights (``validate_with_ema``); the raw weights are put back at
      ``on_validation_epoch_end``, before any checkpoint is written, so checkpoints hold the raw weights and resume
      exactly. The average itself is this callback's ``state_dict`` (``checkpoint["callbacks"][state_key]``).
    * ``apply_at_end`` copies the average into the model when training ends (callbacks' ``on_train_end`` run before
      the LightningModule's, so a module that exports in its own ``on_train_end`` saves the averaged weights).
    * Other callbacks evaluate on the average with ``with ema.averaged_weights(pl_module): ...``.

    Each rank keeps its own copy (parameters are replicated under DDP); sharded strategies (FSDP, DeepSpeed) are not
    supported. Half-precision parameters are averaged in float32.

    Args:
        decay: EMA decay per update (0.999 ~ a 1000-update window; UNKNOWN for Prophet).
        every_n_steps: optimizer steps between two updates.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update ``n`` so the early average is not dominated by the
            initial weights.
        validate_with_ema: swap the average in during validation.
        apply_at_end: copy the average into the model in ``on_train_end``.
    """

    def __init__(
        self,
        decay: float = 0.999,
        every_n_steps: int = 1,
        warmup: bool = False,
        validate_with_ema: bool = True,
        apply_at_end: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1), got {decay}")
        if every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be >= 1, got {every_n_steps}")
        self.decay, self.every_n_steps, self.warmup = decay, every_n_steps, warmup
        self.validate_with_ema, self.apply_at_end = validate_with_ema, apply_at_end
        self.ema: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self._last_step = -1
        self._backup: dict[str, torch.Tensor] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(decay=self.decay, every_n_steps=self.every_n_steps)

    # -----------------------------------------------------------------------------------------------------------------
    # Maths
    # -----------------------------------------------------------------------------------------------------------------
    def current_decay(self) -> float:
        """Decay of the next update (with ``warmup``: ``min(decay, (1 + n) / (10 + n))``, ``n`` = updates so far)."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, pl_module: L.LightningModule) -> None:
        """One EMA update from the module's current trainable parameters."""
        if self.ema is None:
            raise RuntimeError("EMACallback.update called before the average was initialised (on_fit_start)")
        decay = self.current_decay()
        for name, param in _trainable(pl_module):
            self.ema[name].mul_(decay).add_(param.detach().to(self.ema[name].dtype), alpha=1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, pl_module: L.LightningModule) -> None:
        """Overwrite the module's trainable parameters with the average (irreversible; see ``averaged_weights``)."""
        for name, param in _trainable(pl_module):
            param.copy_(self.ema[name])

    @contextmanager
    def averaged_weights(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Context in which the module holds the averaged weights; the raw ones are restored on exit."""
        if self.ema is None or self._backup is not None:  # nothing to average yet, or already swapped in
            yield
            return
        self._swap_in(pl_module)
        try:
            yield
        finally:
            self._swap_out(pl_module)

    @torch.no_grad()
    def _swap_in(self, pl_module: L.LightningModule) -> None:
        params = dict(_trainable(pl_module))
        self._backup = {name: p.detach().clone() for name, p in params.items()}
        for name, param in params.items():
            param.copy_(self.ema[name])

    @torch.no_grad()
    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._backup is None:
            return
        for name, param in _trainable(pl_module):
            param.copy_(self._backup[name])
        self._backup = None

    # -----------------------------------------------------------------------------------------------------------------
    # Hooks
    # -----------------------------------------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = dict(_trainable(pl_module))
        if self.ema is None:  # fresh start (a resumed run has loaded the average already)
            self.ema = {name: p.detach().clone().to(_ema_dtype(p.dtype)) for name, p in params.items()}
            return
        if set(self.ema) != set(params):
            missing, extra = sorted(set(params) - set(self.ema)), sorted(set(self.ema) - set(params))
            raise RuntimeError(
                f"EMA state does not match the trainable parameters: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        self.ema = {name: self.ema[name].to(p.device, _ema_dtype(p.dtype)) for name, p in params.items()}

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # after a resume: the restored step

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # accumulation micro-batch: the optimizer did not step
            return
        self._last_step = step
        if step % self.every_n_steps == 0:
            self.update(pl_module)

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validate_with_ema and self.ema is not None and self._backup is None:
            self._swap_in(pl_module)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)
        if self.apply_at_end and self.ema is not None:
            self.copy_to(pl_module)

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._swap_out(pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "num_updates": self.num_updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("ema", "num_updates"):
            if key not in state_dict:
                raise KeyError(f"EMACallback state is missing {key!r}")
        self.ema = None if state_dict["ema"] is None else {k: v.clone() for k, v in state_dict["ema"].items()}
        self.num_updates = int(state_dict["num_updates"])


def _trainable(pl_module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    return ((name, p) for name, p in pl_module.named_parameters() if p.requires_grad)


def _ema_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype
