"""Batched environments: the ``BatchedEnv`` contract, the real Meta-World v3 simulator, rendering and instructions.

Importing this package sets ``MUJOCO_GL=egl`` (unless already set) before mujoco is imported: import it before
``metaworld`` or ``mujoco`` on a headless machine. Meta-World itself is imported lazily (extra ``sim``).
"""

from lightning_prophrl.constants import INFO_EE_POSE, INFO_EXECUTED, INFO_STEPS, INFO_SUCCESS, INFO_SUCCESS_NOW
from lightning_prophrl.envs.base import BatchedEnv, Prompt, as_prompt
from lightning_prophrl.envs.instructions import INSTRUCTIONS, TASKS, instruction_for

# The simulator and the renderer import mujoco: they load on first use, so the rest of the library (models, modules,
# datamodules, the world-model environment) imports without the ``sim`` extra.
_LAZY = {
    **dict.fromkeys(["SEED_RANGES", "EpisodeRecord", "ExpertEpisode", "MetaWorldEnv", "demo_seeds", "eval_seeds",
                     "make_seeded_env", "reset_seeded", "train_seeds"], "lightning_prophrl.envs.metaworld"),
    **dict.fromkeys(["ScriptedExpert", "run_expert_episode"], "lightning_prophrl.envs.metaworld_expert"),
    **dict.fromkeys(["CAMERA_PRESETS", "FastRenderer", "FreeCamera", "project_points"],
                    "lightning_prophrl.envs.rendering"),
}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAMERA_PRESETS",
    "INFO_EE_POSE",
    "INFO_EXECUTED",
    "INFO_STEPS",
    "INFO_SUCCESS",
    "INFO_SUCCESS_NOW",
    "INSTRUCTIONS",
    "SEED_RANGES",
    "TASKS",
    "BatchedEnv",
    "EpisodeRecord",
    "ExpertEpisode",
    "FastRenderer",
    "FreeCamera",
    "MetaWorldEnv",
    "Prompt",
    "ScriptedExpert",
    "as_prompt",
    "demo_seeds",
    "eval_seeds",
    "instruction_for",
    "make_seeded_env",
    "project_points",
    "reset_seeded",
    "run_expert_episode",
    "train_seeds",
]
