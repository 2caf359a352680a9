"""Closed-loop agreement gate (docs/architecture.md): before RL inside a world model, run the same
policy from the same initial states in the world model and in a real check environment, with the same sampler noise,
and measure per-episode agreement of the outcomes. Open-loop replay metrics alone do not reveal closed-loop drift
(docs/history.md measured kappa 0.0-0.14 where open-loop agreement looked fine)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.envs.base import Prompt
from lightning_prophrl.envs.rollout import collect_rollouts
from lightning_prophrl.models.reward import PersistenceRule

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
def score_video(scorer: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor) -> torch.Tensor:
    """``(N, T - 1)`` success probabilities of every frame after the first, scored as ``WorldModelEnv`` scores its
    newest frame (``scorer`` sees the video up to that frame)."""
    return torch.stack([scorer(video[:, : t + 1]).float().cpu() for t in range(1, video.shape[1])], 1)


def reward_agreement(real: np.ndarray, judged: np.ndarray) -> dict[str, Any]:
    """Precision, recall and kappa of a reward model's episode judgements ``judged`` against the simulator ``real``."""
    c = confusion(real, judged)
    tp, fp, fn = c["both"], c["imagined_only"], c["real_only"]
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "kappa": cohen_kappa(real, judged), "predicted_rate": float(np.mean(judged)), "confusion": c}  # fmt: skip


def fit_threshold(score: np.ndarray, label: np.ndarray) -> dict[str, Any] | None:
    """The success threshold that best turns a graded score into the real outcomes: ``score > threshold`` counted as
    success, the threshold chosen among the midpoints between consecutive distinct scores (and one below the lowest,
    one above the highest) to maximize Cohen's kappa against ``label``; ties go to the candidate with the widest gap
    around it. Fit it on calibration episodes and apply it to others.

    Returns:
        ``{"threshold", "kappa", "episodes"}`` (kappa on the fitting episodes themselves), or None when ``label`` has
        one class only (no threshold can tell anything apart).
    """
    s, y = np.asarray(score, dtype=float), np.asarray(label, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"score {s.shape} and label {y.shape} must be two 1-D arrays of the same length")
    if y.all() or not y.any():
        return None
    u = np.unique(s)
    edges = np.concatenate([[u[0] - 1.0], u, [u[-1] + 1.0]])
    cands, gaps = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    best = max(range(len(cands)), key=lambda j: (round(cohen_kappa(y, s > cands[j]), 12), gaps[j]))
    return {"threshold": float(cands[best]), "kappa": cohen_kappa(y, s > cands[best]), "episodes": len(y)}


@torch.no_grad()
def divergence_psnr(
    real: torch.Tensor, real_len: torch.Tensor, imagined: torch.Tensor, imagined_len: torch.Tensor
) -> list[float | None]:
    """Where the imagined closed loop leaves the real one: PSNR (dB, frames in ``[-1, 1]``) between the two episode
    videos at each frame index, averaged over the episodes that have that frame in both videos.

    Args:
        real: ``(N, T, 3, H, W)`` real episode videos (chunk-boundary frames); ``real_len`` ``(N,)`` valid frames.
        imagined: ``(N, T', 3, H, W)`` imagined videos of the same episodes; ``imagined_len`` ``(N,)``.

    Returns:
        One value per frame index up to the longest common length (None where no episode has both frames).
    """
    if real.shape[0] != imagined.shape[0] or real.shape[2:] != imagined.shape[2:]:
        raise ValueError(f"real {tuple(real.shape)} and imagined {tuple(imagined.shape)} videos do not match")
    both = torch.minimum(real_len.long(), imagined_len.long())
    out: list[float | None] = []
    for t in range(int(both.max()) if len(both) else 0):
        keep = both > t
        if not bool(keep.any()):
            out.append(None)
            continue
        mse = ((real[keep, t].float() - imagined[keep, t].float()) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        out.append(float((-10 * torch.log10(mse)).mean()))
    return out


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
    reward_scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reward_threshold: float = 0.9,
    reward_k: int = 3,
) -> dict[str, Any]:
    """Run the ODE policy from the same initial states in both environments and compare outcomes episode by episode.

    The world model starts from the real environment's first rendered frame and proprioception; both runs use the
    same initial sampler noise. Warns loudly when kappa is below ``kappa_threshold``.

    With ``reward_scorer`` (the world model's success scorer, e.g. ``classifier_scorer``), the *real* closed-loop
    videos are also judged by it with the same persistence rule (``reward_threshold`` for ``reward_k`` frames):
    ``reward_on_real`` says whether the reward model can judge this policy's episodes at all, apart from any drift of
    the world model (run ``real_env`` with ``stop_at_success=False``, so the rule sees frames after a success).

    Returns:
        ``{"kappa", "confusion", "real_success", "imagined_success", "real_env_steps", "episodes", "real_steps",
        "imagined_steps", "psnr_by_frame", "reward_on_real", "imagined_score", "score_auc"}``: per-episode outcomes
        are in ``confusion``; ``imagined_score`` is the world model's graded outcome of each imagined episode
        (``K.INFO_SCORE``; None for an environment without one) and ``score_auc`` how well it ranks the real
        successes above the real failures (:func:`rank_auc`; None without both); ``reward_on_real`` is :func:`reward_agreement` (None without ``reward_scorer``); ``*_steps`` are per-episode
        environment steps (``real_success_steps``: the step of each real first success, None for failures);
        ``psnr_by_frame`` is
        :func:`divergence_psnr` of the two closed-loop videos (where the imagined episode leaves the real one), or
        None when an environment keeps no video.
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
           "imagined_success": float(i.mean()), "real_env_steps": int(real.steps.sum()), "episodes": len(r),
           "real_steps": real.steps.tolist(), "imagined_steps": imag.steps.tolist(), "psnr_by_frame": None,
           "reward_on_real": None, "imagined_score": None, "score_auc": None}  # fmt: skip
    if K.INFO_SCORE in imag.info:  # the world model's graded outcome: does it rank real successes above failures?
        score = imag.info[K.INFO_SCORE].float().numpy()
        out["imagined_score"], out["score_auc"] = score.tolist(), rank_auc(score, r)
    if reward_scorer is not None and real.videos is not None:
        lengths = real.info.get(K.INFO_VIDEO_LENGTHS, torch.full((len(r),), real.videos.shape[1])) - 1
        rule = PersistenceRule(reward_threshold, reward_k)  # the world model's rule, on the real videos
        judged = rule(score_video(reward_scorer, real.videos), lengths).numpy()
        out["reward_on_real"] = reward_agreement(r, judged)
    if hasattr(real_env, "episodes"):  # when the real successes came (also when the real env runs past them)
        out["real_success_steps"] = [next((t + 1 for t, hit in enumerate(e.success) if hit), None)
                                     for e in real_env.episodes()]  # fmt: skip
    videos = (real.videos, imag.videos)
    if all(v is not None for v in videos) and videos[0].shape[2:] == videos[1].shape[2:]:
        lengths = [b.info.get(K.INFO_VIDEO_LENGTHS, torch.full((len(r),), b.videos.shape[1])) for b in (real, imag)]
        out["psnr_by_frame"] = divergence_psnr(real.videos, lengths[0], imag.videos, lengths[1])
    if kappa < kappa_threshold:
        msg = (f"CLOSED-LOOP AGREEMENT GATE: kappa={kappa:.2f} < {kappa_threshold} between imagined and real outcomes "
               f"({out['confusion']}); RL inside this world model is likely to exploit it rather than improve the "
               "real policy")  # fmt: skip
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    return out


def rank_auc(score: np.ndarray, label: np.ndarray) -> float | None:
    """Probability that a positive outranks a negative (ties count half); None without both classes."""
    s, y = np.asarray(score, dtype=float), np.asarray(label, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return None
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
