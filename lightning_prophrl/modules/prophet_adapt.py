"""Prophet adaptation to a new embodiment / dataset (paper: adaptation): LoRA (rank 16) or full fine-tuning.

One named-parameter filter (:func:`is_adapted_parameter`) decides both what trains and what a LoRA checkpoint holds:
the LoRA matrices, plus (``train_conditioning``) the action encoders, the history encoder, the success head and a
learned null context. LoRA checkpoints are adapter-only; the frozen base is reloaded from ``pretrained_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from lightning_prophrl.checkpoints import default_optimizer
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules.prophet_pretrain import ProphetTrainingBase, check_self_forcing

CONDITIONING_PREFIXES = ("action_encoder.", "action_frame_encoder.", "history_encoder.", "success_mlp.",
                         "null_context_embeds")  # fmt: skip
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONDITIONING_WEIGHT_NAME = "conditioning.safetensors"


def is_adapted_parameter(name: str, train_conditioning: bool) -> bool:
    """Whether a Prophet parameter / state-dict entry (name relative to the Prophet) is trained and saved by LoRA
    adaptation: a LoRA matrix (``lora_`` in the name), or a conditioning module with ``train_conditioning``."""
    return "lora_" in name or (train_conditioning and name.startswith(CONDITIONING_PREFIXES))


def save_adapter(model: Prophet, path: str | Path, train_conditioning: bool) -> None:
    """Write the LoRA adapter (``save_lora_adapter``: ``pytorch_lora_weights.safetensors`` + its config as metadata)
    and, with ``train_conditioning``, the conditioning modules' weights to ``conditioning.safetensors``."""
    from safetensors.torch import save_file

    model.save_lora_adapter(str(path), weight_name=LORA_WEIGHT_NAME)
    if train_conditioning:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                   if "lora_" not in k and is_adapted_parameter(k, True)}  # fmt: skip
        save_file(tensors, str(Path(path) / CONDITIONING_WEIGHT_NAME))


def load_adapter(model: Prophet, path: str | Path) -> None:
    """Load what :func:`save_adapter` wrote into a Prophet built from the same pretrained weights."""
    from safetensors.torch import load_file

    model.load_lora_adapter(str(path), weight_name=LORA_WEIGHT_NAME, prefix=None)
    cond = Path(path) / CONDITIONING_WEIGHT_NAME
    if cond.exists():
        result = model.load_state_dict(load_file(str(cond)), strict=False)
        if result.unexpected_keys:
            raise KeyError(f"{cond}: entries the model does not have: {result.unexpected_keys[:5]}")


class ProphetAdaptModule(ProphetTrainingBase):
    """Fine-tune a pretrained Prophet with LoRA adapters or all parameters.

    The pretrained model is read with ``Prophet.from_pretrained(pretrained_path)`` (a ``save_pretrained`` directory,
    e.g. ``ProphetPretrainModule(export_dir=...)``'s). From the CLI: ``--model.pretrained_path DIR`` and no
    ``--model.model``; ``model`` (a nested ``class_path``) is for training a freshly built network instead.

    ``mode="lora"``: ``Prophet.add_lora`` on the DiT attention; only :func:`is_adapted_parameter` parameters train,
    checkpoints hold only those (``on_save_checkpoint``) and ``load_state_dict`` accepts such adapter-only state
    dicts (loading into a module built from the same ``pretrained_path`` restores it exactly). ``mode="full"``: every
    parameter but the frozen codec trains and checkpoints are complete.

    With ``adapter_dir``, training ends with :func:`save_adapter` (LoRA) or ``save_pretrained`` (full) there.

    Args:
        model: a Prophet to adapt (exclusive with ``pretrained_path``).
        pretrained_path: ``save_pretrained`` directory of the pretrained Prophet.
        mode: ``"lora"`` (paper: adaptation, LoRA rank 16) or ``"full"`` (the released Hugging Face checkpoints).
        lora_rank: LoRA rank.
        lora_alpha: LoRA alpha (None: equal to the rank, i.e. scale 1; UNKNOWN in the paper).
        lora_target_modules: module names that get adapters (None: the backbone's default, see
            ``Prophet.add_lora``: the DiT attention projections, or the U-Net's convolutions and attention).
        lora_dropout: LoRA dropout.
        train_conditioning: in LoRA mode, also train the action encoders, history encoder, success head and a learned
            null context (a new embodiment has new action statistics; UNKNOWN whether the paper does).
        optimizer: optimizer factory over the trainable parameters (default AdamW lr 1e-4; not given in the paper).
        lr_scheduler: optional scheduler factory (stepped every optimizer step).
        adapter_dir: where to save the adapter / full model when training ends (None: not saved).
        val_seed: seed of the validation noise and times.
        self_forcing: share of the clips whose second segment continues from the model's own frames (see
            ``ProphetPretrainModule``; needs clips of two segments).
    """

    def __init__(
        self,
        model: Prophet | None = None,
        pretrained_path: str | None = None,
        mode: Literal["lora", "full"] = "lora",
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_target_modules: tuple[str, ...] | None = None,
        lora_dropout: float = 0.0,
        train_conditioning: bool = True,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        adapter_dir: str | None = None,
        val_seed: int = 0,
        self_forcing: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        check_self_forcing(self_forcing)
        self.optimizer_factory = default_optimizer(optimizer, torch.optim.AdamW, lr=1e-4, weight_decay=0.0)
        self.scheduler_factory = lr_scheduler
        if mode not in ("lora", "full"):
            raise ValueError(f"`mode` must be 'lora' or 'full', got {mode!r}")
        if lora_rank < 1:
            raise ValueError(f"`lora_rank` must be >= 1, got {lora_rank}")

        # 1. The pretrained network
        if (model is None) == (pretrained_path is None):
            raise ValueError("give exactly one of `model` (a Prophet) and `pretrained_path` (a save_pretrained dir)")
        if model is None:
            model = Prophet.from_pretrained(pretrained_path).train()  # diffusers returns it in eval mode
        if not isinstance(model, Prophet):
            raise TypeError(f"`model` must be a lightning_prophrl.models.prophet.Prophet, got {type(model).__name__}")
        self.model = model

        # 2. Adapters and the trainable set (one filter for freezing and for saving)
        if mode == "lora":
            targets = None if lora_target_modules is None else tuple(lora_target_modules)
            self.model.add_lora(lora_rank, lora_alpha, targets, lora_dropout)
            for name, param in self.model.named_parameters():
                param.requires_grad_(is_adapted_parameter(name, train_conditioning))

    # -----------------------------------------------------------------------------------------------------------------
    # Adapter-only checkpoints
    # -----------------------------------------------------------------------------------------------------------------
    def adapter_state_keys(self) -> set[str]:
        """Keys of this module's state dict that a LoRA checkpoint holds (``model.`` + adapted entries)."""
        return {
            f"model.{k}" for k in self.model.state_dict() if is_adapted_parameter(k, self.hparams.train_conditioning)
        }

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.mode == "lora":
            keys = self.adapter_state_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
            checkpoint["adapter_only"] = True

    @override
    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a full state dict, or (LoRA mode) an adapter-only one with exactly :meth:`adapter_state_keys`."""
        full_keys = set(self.state_dict())
        if self.hparams.mode == "full" or set(state_dict) >= full_keys:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        expected, given = self.adapter_state_keys(), set(state_dict)
        if strict and given != expected:
            raise RuntimeError(
                "adapter-only state dict does not match this module's adapted parameters: missing "
                f"{sorted(expected - given)[:5]}, unexpected {sorted(given - expected)[:5]} (same `mode`, `lora_*` and "
                "`train_conditioning` as when it was saved?)"
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        result.missing_keys[:] = [k for k in result.missing_keys if k in expected]
        return result

    # -----------------------------------------------------------------------------------------------------------------
    # Hooks
    # -----------------------------------------------------------------------------------------------------------------
    @override
    def on_train_end(self) -> None:
        if self.hparams.adapter_dir is not None and self.trainer.is_global_zero:
            self.export(self.hparams.adapter_dir)

    def export(self, path: str) -> None:
        """LoRA: :func:`save_adapter` to ``path``; full: ``save_pretrained(path)``."""
        if self.hparams.mode == "lora":
            save_adapter(self.model, path, self.hparams.train_conditioning)
        else:
            self.model.save_pretrained(path)
