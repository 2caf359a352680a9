"""Callbacks: everything outside the research step (evaluation, EMA, video logging, SLURM pre-emption)."""

from lightning_prophrl.callbacks.branch_starts import OnPolicyBranchStarts
from lightning_prophrl.callbacks.ema import EMACallback
from lightning_prophrl.callbacks.preemption import RequeueOnPreemption
from lightning_prophrl.callbacks.rollout_video import RolloutVideoCallback
from lightning_prophrl.callbacks.sim_eval import SimEvalCallback, evaluate_in_simulator
from lightning_prophrl.callbacks.wm_guard import ImaginationGuardCallback
from lightning_prophrl.callbacks.world_model import (
    VideoLoggerCallback,
    VideoMetricSet,
    WorldModelEvalCallback,
    evaluate_world_model,
    load_eval_episodes,
    rollout_episodes,
    rollout_grid,
    shuffle_actions,
    teacher_forced_episodes,
)

__all__ = [
    "EMACallback",
    "ImaginationGuardCallback",
    "OnPolicyBranchStarts",
    "RequeueOnPreemption",
    "RolloutVideoCallback",
    "SimEvalCallback",
    "VideoLoggerCallback",
    "VideoMetricSet",
    "WorldModelEvalCallback",
    "evaluate_in_simulator",
    "evaluate_world_model",
    "load_eval_episodes",
    "rollout_episodes",
    "rollout_grid",
    "shuffle_actions",
    "teacher_forced_episodes",
]
