"""RL maths of ProphRL as pure functions (paper: FA-GRPO, FlowScale): group advantages, FA-GRPO / Flow-GRPO losses,
FlowScale weights, KL estimators, the non-finite guards of an update and how an update's batch is shared between
processes."""

from lightning_prophrl.rl.advantages import group_advantages
from lightning_prophrl.rl.flowscale import flowscale_weights
from lightning_prophrl.rl.kl import gaussian_mean_kl, kl_k3
from lightning_prophrl.rl.losses import clipped_surrogate, fa_grpo_loss, flow_grpo_loss
from lightning_prophrl.rl.nonfinite import NonFiniteError, check_rollouts, masked_mean
from lightning_prophrl.rl.sharding import MinibatchPlan, plan_minibatches, stream_seed

__all__ = [
    "MinibatchPlan",
    "NonFiniteError",
    "check_rollouts",
    "clipped_surrogate",
    "fa_grpo_loss",
    "flow_grpo_loss",
    "flowscale_weights",
    "gaussian_mean_kl",
    "group_advantages",
    "kl_k3",
    "masked_mean",
    "plan_minibatches",
    "stream_seed",
]
