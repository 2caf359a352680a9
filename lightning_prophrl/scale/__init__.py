"""Scale-out: FSDP pieces for configs, the memory estimate and the callbacks that print it.

* :mod:`.memory`: per-GPU memory of a run (weights, gradients, AdamW state, compute copies, activations).
* :mod:`.activations`: activation bytes measured on the meta device.
* :mod:`.fsdp`: the ``ActivationCheckpointing`` and ``FSDPGradientClipping`` callbacks for ``FSDPStrategy``.
* :mod:`.callbacks`: ``MemoryEstimateCallback``, printed on rank 0 before the run.
* :mod:`.budget`: ``python -m lightning_prophrl.scale.budget``, the Prophet + VLA + reference + reward budget.
"""

from lightning_prophrl.scale.activations import ActivationMeasurement, measure_activations, meta_copy, prophet_batch
from lightning_prophrl.scale.callbacks import MemoryEstimateCallback
from lightning_prophrl.scale.fsdp import ActivationCheckpointing, FSDPGradientClipping, enable_activation_checkpointing
from lightning_prophrl.scale.memory import MemoryEstimate, ParamCounts, count_parameters, estimate_memory

__all__ = [
    "ActivationCheckpointing",
    "ActivationMeasurement",
    "MemoryEstimate",
    "MemoryEstimateCallback",
    "ParamCounts",
    "FSDPGradientClipping",
    "count_parameters",
    "enable_activation_checkpointing",
    "estimate_memory",
    "measure_activations",
    "meta_copy",
    "prophet_batch",
]
