"""Callbacks: everything outside the research step (evaluation, EMA, video logging)."""

from lightning_prophrl.callbacks.sim_eval import SimEvalCallback, evaluate_in_simulator

__all__ = ["SimEvalCallback", "evaluate_in_simulator"]
