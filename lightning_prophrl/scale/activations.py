"""Activation memory of one training forward, measured without allocating it: a forward pass on the meta device that
counts the bytes autograd saves for backward.

How it counts (:func:`measure_activations`):

* Every tensor autograd saves for backward goes through a ``saved_tensors_hooks`` pack hook; the measurement is the
  sum of the *distinct storages* it saw (a tensor saved by several operations, or several views of one tensor, count
  once), leaving out the model's own parameters and buffers (they are counted as weights).
* On the meta device ``F.scaled_dot_product_attention`` would take the math path and save the ``(N, N)`` attention
  matrix; GPUs run flash / memory-efficient attention, which saves ``q, k, v``, the output, the log-sum-exp (and the
  mask). The measurement therefore routes meta attention through the fused kernel's meta implementation, which saves
  exactly those.
* Reading a meta tensor's value (``bool(mask.any())``, ``float(x)``) returns True / 1: data-dependent branches take
  their "present" side (e.g. the history memory is treated as non-empty), the larger-memory case.
* Activation checkpointing of ``checkpoint_classes`` blocks (the model's own, or Lightning's): what stays saved is
  what is saved outside those blocks plus each block's tensor inputs, and during backward one block's activations
  are rematerialized at a time (the largest block's saved bytes are added as ``recompute_peak_bytes``).

The forward runs in float32; half-precision activations are estimated as half of it (:mod:`.memory`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lightning_prophrl import constants as K


@dataclass(frozen=True)
class ActivationMeasurement:
    """Bytes autograd keeps for backward after one forward (see the module docstring).

    Attributes:
        saved_bytes: distinct storages saved for backward, without checkpointing.
        outside_bytes: the part saved outside checkpointed blocks (equals ``saved_bytes`` without them).
        block_input_bytes: tensor inputs of the checkpointed blocks (what checkpointing keeps of them), distinct
            storages not already in ``outside_bytes``.
        recompute_peak_bytes: saved bytes of the largest checkpointed block (rematerialized during its backward).
        grad_path_numel: parameters of the modules that ran with gradients enabled (their half-precision casts are
            saved for backward under autocast).
        batch_size: samples in the measured forward.
    """

    saved_bytes: int
    outside_bytes: int
    block_input_bytes: int
    recompute_peak_bytes: int
    grad_path_numel: int
    batch_size: int

    @property
    def checkpointed_bytes(self) -> int:
        """Bytes kept with activation checkpointing of the blocks: outside + block inputs + one block's recompute."""
        return self.outside_bytes + self.block_input_bytes + self.recompute_peak_bytes

    def per_sample(self, checkpointing: bool) -> float:
        """Bytes per sample, with or without activation checkpointing."""
        return (self.checkpointed_bytes if checkpointing else self.saved_bytes) / self.batch_size


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers live on the meta device (no memory is allocated; the
    original is untouched). Hooks, adapters and ``requires_grad`` flags are copied with it."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


class _MetaScalars(TorchDispatchMode):
    """Reading the value of a meta tensor gives True (booleans) or 1 instead of raising."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return True if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


class _FusedAttentionOnMeta(TorchFunctionMode):
    """``F.scaled_dot_product_attention`` on meta tensors through the fused (flash) kernel's meta implementation, so
    autograd saves what a GPU's fused attention saves instead of the math path's attention matrix."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            q, k, v = args[:3]
            names = ("attn_mask", "dropout_p", "is_causal", "scale")
            opts = {**dict(zip(names, args[3:])), **kwargs}
            if not opts.pop("enable_gqa", False):
                mask = opts.get("attn_mask")
                if mask is not None:
                    mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, float(opts.get("dropout_p") or 0.0), bool(opts.get("is_causal")), attn_mask=mask,
                    scale=opts.get("scale"),
                )[0]  # fmt: skip
        return func(*args, **kwargs)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class _Counter:
    """Pack hook + block hooks of one measurement (keeps every counted tensor alive so storages are never reused)."""

    def __init__(self, module: nn.Module, checkpoint_classes: tuple[type[nn.Module], ...]) -> None:
        self.exclude = {_storage_key(t) for t in [*module.parameters(), *module.buffers()]}
        self.checkpoint_classes = checkpoint_classes
        self.keep: list[torch.Tensor] = []
        self.all: dict[int, int] = {}
        self.outside: dict[int, int] = {}
        self.block_inputs: dict[int, int] = {}
        self.block: dict[int, int] | None = None  # storages saved inside the running top-level block
        self.block_peak = 0
        self.depth = 0
        self.grad_modules: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self.exclude:
            self.keep.append(t)
            self.all[key] = _nbytes(t)
            (self.block if self.depth else self.outside)[key] = _nbytes(t)  # type: ignore[index]
        return t

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.is_grad_enabled():
            self.grad_modules.add(id(module))
        if isinstance(module, self.checkpoint_classes):
            if self.depth == 0 and torch.is_grad_enabled():
                self.block = {}
                for t in tree_leaves((args, kwargs)):
                    if isinstance(t, torch.Tensor) and _storage_key(t) not in self.exclude:
                        self.keep.append(t)
                        self.block_inputs[_storage_key(t)] = _nbytes(t)
            self.depth += 1

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(module, self.checkpoint_classes):
            self.depth -= 1
            if self.depth == 0 and self.block is not None:
                self.block_peak = max(self.block_peak, sum(self.block.values()))
                self.block = None


def measure_activations(
    module: nn.Module,
    forward: Callable[[nn.Module], Any],
    batch_size: int,
    checkpoint_classes: Iterable[type[nn.Module]] = (),
) -> ActivationMeasurement:
    """Run ``forward(module)`` once and count the bytes saved for backward (see the module docstring).

    Args:
        module: the model, on the meta device for a free measurement (:func:`meta_copy`) or on a real device. Its
            own gradient checkpointing (diffusers / transformers ``gradient_checkpointing`` flags) is switched off
            for the measurement and back on after; pass the blocks as ``checkpoint_classes`` instead.
        forward: runs one training forward of ``module`` (e.g. ``lambda m: m.training_loss(batch)``).
        batch_size: samples in that forward (for :meth:`ActivationMeasurement.per_sample`).
        checkpoint_classes: block classes whose activations checkpointing would recompute.

    Returns:
        The :class:`ActivationMeasurement`.
    """
    counter = _Counter(module, tuple(checkpoint_classes))
    modules = list(module.modules())
    checkpointing = [m for m in modules if getattr(m, "gradient_checkpointing", False) is True]
    for m in checkpointing:  # counted as if on (checkpoint_classes), run off: torch's own hooks would hide the blocks
        m.gradient_checkpointing = False
    handles = [m.register_forward_pre_hook(counter.pre_hook, with_kwargs=True) for m in modules]
    handles += [m.register_forward_hook(counter.post_hook) for m in modules]
    try:
        with (
            torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t),
            _FusedAttentionOnMeta(),
            _MetaScalars(),
        ):
            forward(module)
    finally:
        for h in handles:
            h.remove()
        for m in checkpointing:
            m.gradient_checkpointing = True
    outside = set(counter.outside)
    grad_numel = sum(p.numel() for m in modules if id(m) in counter.grad_modules for p in m.parameters(recurse=False))
    return ActivationMeasurement(
        saved_bytes=sum(counter.all.values()),
        outside_bytes=sum(counter.outside.values()),
        block_input_bytes=sum(v for k, v in counter.block_inputs.items() if k not in outside),
        recompute_peak_bytes=counter.block_peak,
        grad_path_numel=grad_numel,
        batch_size=batch_size,
    )


def prophet_batch(
    model: nn.Module, image_size: int, batch_size: int = 1, history_len: int | None = None, device: Any = "meta"
) -> dict[str, torch.Tensor]:
    """A training batch of the shapes :meth:`Prophet.training_loss` reads (values are zeros), for measurements.

    Args:
        model: a ``Prophet`` (its ``action_chunk_length`` sets ``L``).
        image_size: frame size ``H = W``.
        batch_size: ``B``.
        history_len: past frames ``T_h`` (default the model's ``history_length``).
        device: where the tensors live (``"meta"``: no memory).

    Returns:
        ``COND_FRAME`` ``(B, 3, H, W)``, ``FUTURE`` ``(B, L, 3, H, W)``, ``ACTIONS`` ``(B, L, 14)``, ``CLIP_SUCCESS``
        ``(B,)`` and, with history, ``HISTORY`` ``(B, T_h, 3, H, W)`` and ``HISTORY_MASK`` ``(B, T_h)``.
    """
    length = int(model.config.action_chunk_length)
    hist = int(model.config.history_length) if history_len is None else history_len
    size = (image_size, image_size)
    batch = {
        K.COND_FRAME: torch.zeros(batch_size, 3, *size, device=device),
        K.FUTURE: torch.zeros(batch_size, length, 3, *size, device=device),
        K.ACTIONS: torch.zeros(batch_size, length, K.ACTION_DIM, device=device),
        K.CLIP_SUCCESS: torch.zeros(batch_size, device=device),
    }
    if hist > 0:
        batch[K.HISTORY] = torch.zeros(batch_size, hist, 3, *size, device=device)
        batch[K.HISTORY_MASK] = torch.ones(batch_size, hist, dtype=torch.bool, device=device)
    return batch
