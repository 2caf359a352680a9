"""Closed-loop agreement gate (DESIGN.md "Guarding world-model RL"): before RL inside a world model, run the same
policy from the same initial states in the world model and in a real check environment, with the same sampler noise,
and measure per-episode agreement of the outcomes. Open-loop replay metrics alone do not reveal closed-loop drift
(CALIBRATION.md parts 2-3 measured kappa 0.0-0.14 where open-loop agreement looked fine)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.envs.base import Prompt
from lightning_prophrl.envs.rollout import collect_rollouts

log = logging.getLogger(__name__)


def confusion(real: np.ndarray, imagined: np.ndarray) -> dict[str, int]:
    """Counts of (real, imagined) outcomes: ``both``, ``real_only``, ``imagined_only``, ``neither``."""
    r, i = np.asarray(real, dtype=bool), np.asarray(imagined, dtype=bool)
    if r.shape != i.shape:
        raise ValueError(f"real {r.shape} and imagined {i.shape} outcomes differ in shape")
    return {"both": int((r & i).sum()), "real_only": int((r & ~i).sum()), "imagined_only": int((~r & i).sum()),
            "neither": int((~r & ~i).sum())}  # fmt: skip


def cohen_kappa(real: np.ndarray, imagined: np.ndarray) -> float:
    """Cohen's kappa of two binary raters: ``(p_o - p_e) / (1 - p_e)``; 1.0 when both are constant and equal."""
    c = confusion(real, imagined)
    n = sum(c.values())
    if n == 0:
        raise ValueError("no episodes to compare")
    p_o = (c["both"] + c["neither"]) / n
    p_r, p_i = (c["both"] + c["real_only"]) / n, (c["both"] + c["imagined_only"]) / n
    p_e = p_r * p_i + (1 - p_r) * (1 - p_i)
    return 1.0 if p_e == 1.0 else float((p_o - p_e) / (1 - p_e))


@torch.no_grad()
def closed_loop_agreement(
    policy: Any,
    real_env: Any,
    world_env: Any,
    prompts: list[Prompt | dict[str, Any]],
    real_decoder: Any,
    world_decoder: Any,
    max_queries: int,
    noise_seed: int = 0,
    kappa_threshold: float = 0.5,
) -> dict[str, Any]:
    """Run the ODE policy from the same initial states in both environments and compare outcomes episode by episode.

    The world model starts from the real environment's first rendered frame and proprioception; both runs use the
    same initial sampler noise. Warns loudly when kappa is below ``kappa_threshold``.

    Returns:
        ``{"kappa", "confusion", "real_success", "imagined_success", "real_env_steps", "episodes"}``.
    """
    obs = real_env.reset(prompts)
    g = real_env.group_size
    wm_prompts = []
    for p_idx, p in enumerate(prompts):
        n = p_idx * g
        task = p.task if isinstance(p, Prompt) else str(p.get(K.TASK, p.get("task", "task")))
        wm_prompts.append(Prompt(task, -1, obs[K.INSTRUCTION][n], obs[K.OBS_IMAGE][n], obs[K.OBS_STATE][n]))
    real = collect_rollouts(policy, real_env, prompts, real_decoder, max_queries, mode="ode",
                            generator=torch.Generator().manual_seed(noise_seed))  # fmt: skip
    imag = collect_rollouts(policy, world_env, wm_prompts, world_decoder, max_queries, mode="ode",
                            generator=torch.Generator().manual_seed(noise_seed))  # fmt: skip
    r, i = real.success.bool().numpy(), imag.success.bool().numpy()
    kappa = cohen_kappa(r, i)
    out = {"kappa": kappa, "confusion": confusion(r, i), "real_success": float(r.mean()),
           "imagined_success": float(i.mean()), "real_env_steps": int(real.steps.sum()), "episodes": len(r)}  # fmt: skip
    if kappa < kappa_threshold:
        msg = (f"CLOSED-LOOP AGREEMENT GATE: kappa={kappa:.2f} < {kappa_threshold} between imagined and real outcomes "
               f"({out['confusion']}); RL inside this world model is likely to exploit it rather than improve the "
               "real policy")  # fmt: skip
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    return out
