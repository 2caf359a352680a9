"""FSDP pieces for YAML configs: gradient clipping and the model's own activation checkpointing as callbacks.

The wrap policy needs no helper: LightningCLI (jsonargparse) reads ``FSDPStrategy(auto_wrap_policy=...)``'s
``set[type[Module]]`` from a YAML list of class paths and writes it back the same way in ``--print_config`` and in
the saved ``config.yaml``::

    strategy:
      class_path: lightning.pytorch.strategies.FSDPStrategy
      init_args:
        auto_wrap_policy: [diffusers.models.transformers.transformer_cosmos.CosmosTransformerBlock]

* :class:`FSDPGradientClipping`: gradient-norm clipping under FSDP (``trainer.gradient_clip_val`` raises there:
  Lightning's FSDP precision plugin does not clip by norm).
* :class:`ActivationCheckpointing`: a callback that turns on the gradient checkpointing of every diffusers /
  transformers model inside the LightningModule before the strategy wraps it. Use it instead of
  ``FSDPStrategy(activation_checkpointing_policy=...)`` for the Prophet: Lightning's checkpoint wrappers recompute a
  block in backward after the Prophet has cleared its history memory (it keeps the memory only while its own
  checkpointing is on), and torch stops with ``CheckpointError: A different number of tensors was saved``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from typing_extensions import override


def wrap_classes(policy: object) -> tuple[type[nn.Module], ...]:
    """Block classes of an ``FSDPStrategy`` auto-wrap policy (a ``ModuleWrapPolicy`` or a set of classes); ``()`` for
    None or a callable policy (then only the root unit is assumed)."""
    if isinstance(policy, ModuleWrapPolicy):
        return tuple(policy._module_classes)
    if isinstance(policy, set | frozenset | list | tuple):
        return tuple(policy)
    return ()


def _supports_checkpointing(module: nn.Module) -> bool:
    flag = getattr(module, "_supports_gradient_checkpointing", None)  # diffusers ModelMixin
    if flag is None:
        flag = getattr(module, "supports_gradient_checkpointing", None)  # transformers PreTrainedModel
    return bool(flag) and callable(getattr(module, "enable_gradient_checkpointing", None))


def enable_activation_checkpointing(module: nn.Module) -> list[nn.Module]:
    """Call ``enable_gradient_checkpointing()`` on the outermost diffusers / transformers models inside ``module``.

    Returns:
        The models it was enabled on.

    Raises:
        ValueError: when no submodule supports gradient checkpointing.
    """
    enabled: list[nn.Module] = []
    inside: set[int] = set()  # ids of modules within an enabled model
    for sub in module.modules():
        if id(sub) not in inside and _supports_checkpointing(sub):
            sub.enable_gradient_checkpointing()
            enabled.append(sub)
            inside.update(id(m) for m in sub.modules())
    if not enabled:
        raise ValueError(
            f"{type(module).__name__} holds no diffusers / transformers model that supports gradient checkpointing; "
            "remove ActivationCheckpointing from trainer.callbacks"
        )
    return enabled


def checkpointed_block_classes(module: nn.Module) -> tuple[type[nn.Module], ...]:
    """Classes of the blocks whose activations are recomputed in backward: the items of the ``nn.ModuleList``
    children of every submodule whose ``gradient_checkpointing`` flag is on (the diffusers / transformers
    convention: such a model checkpoints each block of its block lists)."""
    classes: dict[type[nn.Module], None] = {}  # ordered set
    for sub in module.modules():
        if getattr(sub, "gradient_checkpointing", False) is True:
            for child in sub.children():
                if isinstance(child, nn.ModuleList):
                    classes.update(dict.fromkeys(type(b) for b in child))
    return tuple(classes)


class ActivationCheckpointing(L.Callback):
    """Turns on the model's own gradient checkpointing (diffusers / transformers) in ``setup``, before the strategy
    (FSDP, DDP) wraps the LightningModule: each block's activations are recomputed in backward and only the block
    inputs stay in memory. See the module docstring for why not Lightning's ``activation_checkpointing_policy``."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled: list[str] = []

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.enabled = [type(m).__name__ for m in enable_activation_checkpointing(pl_module)]


class FSDPGradientClipping(L.Callback):
    """Clips the global gradient norm to ``max_norm`` before every optimizer step and logs it as
    ``train/grad_norm``: ``FullyShardedDataParallel.clip_grad_norm_`` (a collective over the shards) under FSDP,
    ``torch.nn.utils.clip_grad_norm_`` otherwise. Use it instead of ``trainer.gradient_clip_val`` with FSDP.

    Args:
        max_norm: largest global L2 norm of the gradients.
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        super().__init__()
        if not max_norm > 0:
            raise ValueError(f"`max_norm` must be > 0, got {max_norm}")
        self.max_norm = max_norm

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel):
            norm = root.clip_grad_norm_(self.max_norm)
        else:
            params = [p for p in pl_module.parameters() if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        pl_module.log("train/grad_norm", norm.detach().float(), batch_size=1)
