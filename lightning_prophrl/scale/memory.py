"""GPU memory estimate of a training run, per GPU: weights, gradients, AdamW state, master weights, compute copies
and activations, under Lightning's precisions and FSDP full sharding (or none).

Bytes per parameter element (torch AdamW keeps two states, ``exp_avg`` and ``exp_avg_sq``, in the parameter's dtype):

============  =======  ========  =============  =================================================================
precision     weights  gradient  AdamW states   compute copies
============  =======  ========  =============  =================================================================
32-true       4        4         2 x 4          none
bf16-mixed    4        4         2 x 4          bf16 casts of the weights on the gradient path, saved for
                                                backward by autocast (unsharded); FSDP: gathered bf16 units
bf16-true     2        2         2 x 2          none (``fp32_master``: + 4 master + states in fp32)
============  =======  ========  =============  =================================================================

``sharding="full"`` (``FSDPStrategy(sharding_strategy="FULL_SHARD")``, ``use_orig_params=True`` as Lightning sets):
weights, gradients, optimizer states and master weights are divided by the world size. FSDP allocates a gradient for
the *whole* flat parameter of every unit that holds any trainable parameter (LoRA adapters inside frozen blocks cost
the blocks' gradient memory), so gradients are counted per unit. Its compute copies are the gathered units in the
compute dtype: the root unit (kept gathered through the step) and the two largest block units (the running one and
the prefetched one). Not counted: the CUDA context (~0.5 GiB), allocator fragmentation, communication buffers, DDP's
gradient buckets (one more gradient copy unless ``gradient_as_bucket_view=True``) and transient workspace.

Activations come from :mod:`lightning_prophrl.scale.activations` (a float32 measurement; half under bf16) and scale
with the per-GPU batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lightning_prophrl.scale.activations import ActivationMeasurement

Precision = Literal["32-true", "bf16-mixed", "bf16-true"]
Sharding = Literal["none", "full"]
TrainableFilter = Callable[[str, nn.Parameter], bool]

# weight, gradient, optimizer-state element, compute-copy bytes; activation scale
_PRECISIONS: dict[str, tuple[int, int, int, int, float]] = {
    "32-true": (4, 4, 4, 4, 1.0),
    "bf16-mixed": (4, 4, 4, 2, 0.5),
    "bf16-true": (2, 2, 2, 2, 0.5),
}
GIB = 1024**3


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model.

    Attributes:
        total: all parameters (shared ones once).
        trainable: parameters the optimizer updates.
        units: FSDP units as ``(numel, holds a trainable parameter)``, the root unit first; ``()`` when unknown.
    """

    total: int
    trainable: int
    units: tuple[tuple[int, bool], ...] = ()


def count_parameters(
    model: nn.Module, trainable: TrainableFilter | None = None, wrap: Iterable[type[nn.Module]] = ()
) -> ParamCounts:
    """Count a model's parameters (on any device, meta included) and split them into FSDP units.

    Args:
        model: the model.
        trainable: ``(name, parameter) -> bool``, default ``parameter.requires_grad``.
        wrap: FSDP block classes; each instance is a unit (a parameter belongs to its innermost wrapped module),
            everything else is the root unit.

    Returns:
        :class:`ParamCounts`.
    """
    is_trainable = trainable or (lambda name, p: p.requires_grad)
    wrap = tuple(wrap)
    owner: dict[int, int] = {}  # parameter id -> unit index (0: root)
    units = [nn.Module()]
    for module in model.modules():
        if wrap and isinstance(module, wrap):
            units.append(module)
            owner.update({id(p): len(units) - 1 for p in module.parameters()})
    numel = [0] * len(units)
    has_trainable = [False] * len(units)
    total = train = 0
    for name, p in model.named_parameters():
        unit = owner.get(id(p), 0)
        numel[unit] += p.numel()
        total += p.numel()
        if is_trainable(name, p):
            train += p.numel()
            has_trainable[unit] = True
    return ParamCounts(total, train, tuple(zip(numel, has_trainable)))


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of one model on one GPU, in bytes (see the module docstring for what each term holds).

    Attributes:
        name: label of the model.
        precision: Lightning precision.
        sharding: ``"none"`` or ``"full"``.
        world_size: GPUs the sharded terms are divided over.
        batch_size: samples per GPU in one step.
        counts: the parameter counts.
        parameters: stored weights.
        gradients: gradients (FSDP: per unit holding a trainable parameter).
        optimizer_state: AdamW's two states of the trainable parameters.
        master_weights: float32 copy of half-precision trainable weights (``fp32_master``).
        compute_weights: half-precision copies made for compute (autocast casts, FSDP gathered units).
        activations_per_sample: saved-for-backward bytes per sample (None: not estimated).
    """

    name: str
    precision: str
    sharding: str
    world_size: int
    batch_size: int
    counts: ParamCounts
    parameters: int
    gradients: int
    optimizer_state: int
    master_weights: int
    compute_weights: int
    activations_per_sample: int | None

    @property
    def activations(self) -> int:
        """Activation bytes of the per-GPU batch (0 when not estimated)."""
        return (self.activations_per_sample or 0) * self.batch_size

    @property
    def total(self) -> int:
        """Sum of every term."""
        return (self.parameters + self.gradients + self.optimizer_state + self.master_weights + self.compute_weights
                + self.activations)  # fmt: skip

    def rows(self) -> list[tuple[str, int]]:
        """``(term, bytes)`` rows, the total last."""
        per = "n/a" if self.activations_per_sample is None else f"{self.activations_per_sample / GIB:.2f} GiB"
        return [
            ("parameters", self.parameters),
            ("gradients", self.gradients),
            ("optimizer state (AdamW)", self.optimizer_state),
            ("master weights", self.master_weights),
            ("compute copies", self.compute_weights),
            (f"activations ({self.batch_size} x {per})", self.activations),
            ("total", self.total),
        ]

    def __str__(self) -> str:
        shard = f"FSDP full x {self.world_size}" if self.sharding == "full" else "unsharded"
        head = (f"{self.name}: {self.counts.total / 1e9:.3f} B parameters, {self.counts.trainable / 1e9:.3f} B "
                f"trainable | {self.precision} | {shard} | per GPU")  # fmt: skip
        width = max(len(term) for term, _ in self.rows())
        lines = [head, f"  {'term':<{width}}  {'GiB':>8}"]
        lines += [f"  {term:<{width}}  {value / GIB:>8.2f}" for term, value in self.rows()]
        return "\n".join(lines)


def estimate_memory(
    model: nn.Module | ParamCounts,
    trainable: TrainableFilter | None = None,
    precision: Precision = "bf16-mixed",
    world_size: int = 1,
    sharding: Sharding = "none",
    optimizer: Literal["adamw", "none"] = "adamw",
    wrap: Iterable[type[nn.Module]] = (),
    activations: ActivationMeasurement | None = None,
    checkpointing: bool = False,
    batch_size: int = 1,
    fp32_master: bool = False,
    name: str | None = None,
) -> MemoryEstimate:
    """Per-GPU memory of training (or holding) ``model``.

    Args:
        model: the model (any device, meta included), or its :class:`ParamCounts` (e.g. a model known by size).
        trainable: ``(name, parameter) -> bool`` (default ``requires_grad``); ignored for ``ParamCounts``.
        precision: ``"32-true"``, ``"bf16-mixed"`` or ``"bf16-true"``.
        world_size: data-parallel GPUs.
        sharding: ``"full"`` (FSDP FULL_SHARD over ``world_size``) or ``"none"``.
        optimizer: ``"adamw"`` (two states per trainable element) or ``"none"`` (a frozen model: no gradients).
        wrap: FSDP block classes (units); ignored for ``ParamCounts``, which carry their units.
        activations: a measurement of one training forward (None: activations not estimated).
        checkpointing: activation checkpointing of the blocks is on.
        batch_size: samples per GPU.
        fp32_master: under ``bf16-true``, the optimizer keeps float32 master weights and float32 states.
        name: label (default the model's class name).

    Returns:
        :class:`MemoryEstimate`.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"`precision` must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if sharding not in ("none", "full") or world_size < 1:
        raise ValueError(f"`sharding` must be 'none' or 'full' and `world_size` >= 1, got {sharding!r}, {world_size}")
    counts = model if isinstance(model, ParamCounts) else count_parameters(model, trainable, wrap)
    w_bytes, g_bytes, s_bytes, c_bytes, act_scale = _PRECISIONS[precision]
    master = fp32_master and precision == "bf16-true"
    div = world_size if sharding == "full" else 1
    trained = counts.trainable if optimizer == "adamw" else 0
    units = counts.units or ((counts.total, counts.trainable > 0),)
    grad_numel = sum(n for n, has in units if has) if sharding == "full" else trained
    compute = 0
    if sharding == "full":
        blocks = sorted((n for n, _ in units[1:]), reverse=True)[:2]
        compute = (units[0][0] + sum(blocks)) * c_bytes if w_bytes != c_bytes or div > 1 else 0
    elif precision == "bf16-mixed" and trained:
        compute = (activations.grad_path_numel if activations is not None else counts.total) * c_bytes
    per_sample = None
    if activations is not None:
        per_sample = round(activations.per_sample(checkpointing) * act_scale)
    return MemoryEstimate(
        name=name or type(model).__name__,
        precision=precision,
        sharding=sharding,
        world_size=world_size,
        batch_size=batch_size,
        counts=counts,
        parameters=counts.total * w_bytes // div,
        gradients=(grad_numel * g_bytes // div) if trained else 0,
        optimizer_state=trained * 2 * (4 if master else s_bytes) // div,
        master_weights=trained * 4 // div if master else 0,
        compute_weights=compute,
        activations_per_sample=per_sample,
    )


def format_budget(estimates: Sequence[MemoryEstimate], gpu_gib: float = 80.0) -> str:
    """Markdown table of several models sharing one GPU (GiB per term, one row per model, the sum last)."""
    head = ("| model | params (B) | trainable (B) | precision | sharding | weights | grads | AdamW | master | "
            "compute | activations | total |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for e in estimates:
        shard = f"FSDP x {e.world_size}" if e.sharding == "full" else "none"
        terms = (e.parameters, e.gradients, e.optimizer_state, e.master_weights, e.compute_weights, e.activations)
        lines.append(f"| {e.name} | {e.counts.total / 1e9:.2f} | {e.counts.trainable / 1e9:.3f} | {e.precision} | "
                     f"{shard} | " + " | ".join(f"{t / GIB:.1f}" for t in terms) + f" | {e.total / GIB:.1f} |")  # fmt: skip
    total = sum(e.total for e in estimates) / GIB
    verdict = "fits" if total <= gpu_gib else "does not fit"
    lines.append(f"| **sum** | | | | | | | | | | | **{total:.1f}** ({verdict} in {gpu_gib:g} GiB) |")
    return "\n".join(lines)
