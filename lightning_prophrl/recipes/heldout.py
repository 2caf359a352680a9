"""Held-out-task recipes: the datasets of a Meta-World task kept out of Prophet's pretraining (few-shot adaptation
episodes, evaluation episodes and two counterfactual sets on the same initial states) and the adaptation of a saved
Prophet to it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from lightning_prophrl.envs.task_split import HELDOUT_TASKS
from lightning_prophrl.stage_cache import is_done, mark_done

COUNTERFACTUAL_EXPERT = "push-v3"  # the counterfactual driver: another task's scripted expert
SETS = ("eval", "cf_random", "cf_expert")
ADAPT_SEED, EVAL_SEED = 500, 800


def heldout_data(
    task: str,
    out: str | Path,
    adapt_episodes: int = 20,
    eval_episodes: int = 20,
    cf_episodes: int = 10,
    size: int = 64,
    camera: str = "workspace",
    max_steps: int = 150,
    noise: float = 0.1,
    noise_max: float = 0.6,
    counterfactual: bool = True,
) -> dict[str, str]:
    """The four datasets of one held-out task (see the module docstring); returns ``{set name: directory}``.

    Args:
        task: a held-out Meta-World v3 task.
        out: directory of the task's datasets (``<out>/adapt``, ``<out>/eval``, ``<out>/cf_random``, ...).
        adapt_episodes: few-shot adaptation episodes (at most 20).
        eval_episodes: evaluation episodes under the task's noisy expert.
        cf_episodes: episodes per counterfactual set (the first initial states of ``eval``).
        size, camera, max_steps: rendering and step cap, as in pretraining.
        noise, noise_max: range of the per-episode action-noise std of the noisy expert (``cf_expert``: ``noise``).
        counterfactual: also the two counterfactual sets (off: ``adapt`` and ``eval`` only).
    """
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    if task not in HELDOUT_TASKS:
        raise ValueError(f"{task!r} is not a held-out task (lightning_prophrl.envs.task_split.HELDOUT_TASKS)")
    if not 1 <= adapt_episodes <= 20 or eval_episodes < 1 or not 1 <= cf_episodes <= eval_episodes:
        raise ValueError(
            f"need 1 <= adapt_episodes <= 20, eval_episodes >= 1 and 1 <= cf_episodes <= eval_episodes, got "
            f"{adapt_episodes}, {eval_episodes}, {cf_episodes}"
        )
    out = Path(out)
    common = dict(tasks=[task], size=size, camera=camera, max_steps=max_steps, stop_at_success=False, progress=False)
    jobs = {
        "adapt": dict(episodes=adapt_episodes, seed=ADAPT_SEED, noise=noise, noise_max=noise_max),
        "eval": dict(episodes=eval_episodes, seed=EVAL_SEED, noise=noise, noise_max=noise_max),
        "cf_random": dict(episodes=cf_episodes, seed=EVAL_SEED, noise=0.0, driver="random"),
        "cf_expert": dict(episodes=cf_episodes, seed=EVAL_SEED, noise=noise, driver=COUNTERFACTUAL_EXPERT),
    }
    if not counterfactual:
        jobs = {name: jobs[name] for name in ("adapt", "eval")}
    for name, job in jobs.items():
        path = out / name
        if not is_done(path):
            shutil.rmtree(path, ignore_errors=True)  # a partial dataset of an interrupted run
            mark_done(path, generate_metaworld(out=str(path), **common, **job))
    return {name: str(out / name) for name in jobs}


def adapt(
    pretrained_dir: str,
    adapt_dir: str,
    out: str | Path,
    steps: int = 400,
    mode: Literal["lora", "full"] = "lora",
    seed: int = 0,
    batch_size: int = 16,
    lr: float | None = None,
    lora_rank: int = 16,
) -> str:
    """Adapt the pretrained model to one task's ``adapt`` episodes; returns the adapted ``save_pretrained`` dir.

    Args:
        pretrained_dir: the pretrained model (with its ``stats.json``).
        adapt_dir: the few-shot dataset.
        out: stage directory (``<out>/model``).
        steps: optimizer steps.
        mode: ``"lora"`` (adapters only) or ``"full"``.
        seed: seeds the adapters, the clip stream and the noise.
        batch_size: clips per step.
        lr: AdamW learning rate (None: 1e-3 for LoRA, 1e-4 for full fine-tuning).
        lora_rank: LoRA rank (alpha = rank).
    """
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.prophet import adapt_prophet

    config = Prophet.load_config(pretrained_dir)
    return adapt_prophet(
        pretrained_dir, adapt_dir, out, steps=steps, mode=mode, seed=seed, chunk_len=int(config["action_chunk_length"]),
        history_len=int(config["history_length"]), batch_size=batch_size, lr=lr or (1e-3 if mode == "lora" else 1e-4),
        lora_rank=lora_rank, stats_from=pretrained_dir,
    )  # fmt: skip
