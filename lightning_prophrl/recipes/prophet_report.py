"""Prophet's open-loop report on held-out real episodes: video metrics per segment, the success head's agreement with
the simulator, and a contact sheet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.recipes.prophet import memory_disabled
from lightning_prophrl.stage_cache import is_done, mark_done

METRICS = ("psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos")


def _score(video: torch.Tensor, real: torch.Tensor, batch_size: int) -> dict[str, float]:
    """``evaluate_world_model``'s metrics of imagined vs real videos ``(N, 1 + T, 3, H, W)``."""
    from lightning_prophrl.callbacks.world_model import VideoMetricSet

    metrics = VideoMetricSet()
    for i in range(0, len(real), batch_size):
        metrics.update(video[i : i + batch_size], real[i : i + batch_size])
    return metrics.compute()


def _segment_psnr(video: torch.Tensor, real: torch.Tensor, segments: int) -> list[float]:
    """Mean PSNR of each rollout segment (frames ``1 + s L .. (s + 1) L``) over the episodes."""
    from lightning_prophrl.metrics import frame_psnr

    psnr = frame_psnr(video[:, 1:].float(), real[:, 1:].float())  # (N, S * L)
    return psnr.view(psnr.shape[0], segments, -1).mean((0, 2)).tolist()


def contact_sheet(videos: Sequence[torch.Tensor], path: str | Path, episodes: int = 2, max_frames: int = 12) -> str:
    """PNG grid: for each of the first ``episodes`` episodes, one row per video of ``videos`` (e.g. real, generated
    with GT actions, generated with perturbed actions), ``min(T, max_frames)`` evenly spaced columns.

    Args:
        videos: equally shaped ``(N, T, 3, H, W)`` videos in ``[-1, 1]``.
        path: output PNG.
        episodes: episodes shown.
        max_frames: columns.
    """
    import cv2

    from lightning_prophrl.metrics import video_to_uint8

    if not videos or any(v.shape != videos[0].shape or v.ndim != 5 for v in videos):
        raise ValueError(f"`videos` must be equal (N, T, 3, H, W) videos, got {[tuple(v.shape) for v in videos]}")
    t = videos[0].shape[1]
    cols = torch.from_numpy(np.linspace(0, t - 1, min(t, max_frames)).round().astype(np.int64))
    rows = torch.stack([v[:episodes, cols].float() for v in videos], 1).flatten(0, 1)  # (E * V, F, 3, H, W)
    grid = video_to_uint8(rows).permute(0, 2, 1, 3, 4).flatten(2, 3).flatten(0, 1).numpy()  # (E V H, F W, 3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(grid), cv2.COLOR_RGB2BGR))
    return str(path)


def _success_agreement(prob: torch.Tensor, real: torch.Tensor, last: int, threshold: float) -> dict[str, Any]:
    """Imagined success (``prob`` ``(N, S)`` above ``threshold`` in each of the ``last`` segments) vs real ``(N,)``."""
    from lightning_prophrl.envs.agreement import cohen_kappa, confusion

    imagined = (prob[:, -last:] > threshold).all(1).numpy()
    real_np = (real.float() > 0.5).numpy()
    return {"confusion": confusion(real_np, imagined), "kappa": cohen_kappa(real_np, imagined),
            "accuracy": float((imagined == real_np).mean()), "real_rate": float(real_np.mean()),
            "imagined_rate": float(imagined.mean()), "final_prob_mean": float(prob[:, -1].mean())}  # fmt: skip


def copy_previous(real: torch.Tensor) -> torch.Tensor:
    """The one-step-ahead baseline of real videos ``(B, 1 + T, ...)``: every frame predicted as the real frame before
    it (frame 0 stays the given frame)."""
    return torch.cat([real[:, :1], real[:, :-1]], 1)


def world_model_report(
    model_dir: str,
    eval_dir: str,
    out: str | Path | None = None,
    num_episodes: int = 20,
    num_segments: int = 5,
    num_steps: int = 4,
    seed: int = 0,
    stride: int = 4,
    image_size: int = 64,
    stats_from: str | None = None,
    success_last: int = 2,
    success_threshold: float = 0.5,
    batch_size: int = 4,
    sheet_episodes: int = 2,
    ee_readout: Any = None,
    teacher_forced: bool = False,
) -> dict[str, Any]:
    """Score a Prophet on held-out episodes rolled out from their first frame under their real actions.

    Args:
        model_dir: ``save_pretrained`` directory.
        eval_dir: held-out dataset.
        out: where ``report.json``, ``contact_sheet.png`` and ``done.json`` go (None: nothing written, no cache).
        num_episodes: held-out episodes used.
        num_segments: rollout segments ``S`` (>= 3 shows the memory's effect; cover the episode for the success head).
        num_steps: Euler steps per segment.
        seed: rollout noise (shared by all variants, so only the actions / memory differ).
        stride: simulator frames per model frame (as in training).
        image_size: frame size (as in training).
        stats_from: directory of the ``stats.json`` that normalized the model's training actions (default
            ``model_dir`` when it has one, else ``eval_dir``'s own statistics).
        success_last: the imagined outcome is success when each of the last ``success_last`` segments' success
            probability exceeds ``success_threshold``.
        success_threshold: success probability threshold.
        batch_size: episodes per rollout call.
        sheet_episodes: episodes on the contact sheet.
        ee_readout: an ``metrics.ee_readout.EndEffectorReadout`` fitted on the task's real frames: adds
            ``ee_path_cm`` (and ``_copy_last``, ``_shuffled``, ``_no_memory``), the mean distance between the
            end-effector paths read from each video and from the real one (a cached report without them is made
            again).
        teacher_forced: also score every segment imagined from the real frames before it
            (``open_loop.teacher_forced_episodes``): the ``_teacher_forced`` metrics and ``psnr_per_segment_teacher_forced``
            separate what the model cannot predict one step ahead from what it loses by continuing from its own frames;
            their baseline is ``_copy_previous`` (every frame predicted as the real frame before it, see
            :func:`copy_previous`). A cached report without them is made again.

    Returns:
        ``{metric}`` (model), ``{metric}_copy_last``, ``{metric}_shuffled``, ``{metric}_no_memory`` for the metrics of
        ``evaluate_world_model``; ``psnr_per_segment`` (and ``_no_memory``); ``memory_effect`` and
        ``action_effect`` (mean absolute pixel change of the imagined video without memory / under shuffled actions);
        ``success`` (confusion counts, kappa, accuracy, rates); ``contact_sheet``; sizes; ``ee_path_cm*`` with
        ``ee_readout``.
    """
    from lightning_prophrl.callbacks.world_model import (
        load_eval_episodes,
        rollout_episodes,
        shuffle_actions,
        teacher_forced_episodes,
    )
    from lightning_prophrl.metrics.ee_readout import ee_path_error
    from lightning_prophrl.models.prophet import Prophet

    if num_segments < 1 or success_last < 1:
        raise ValueError(f"`num_segments` and `success_last` must be >= 1, got {num_segments}, {success_last}")
    if out is not None and is_done(Path(out)):
        cached = json.loads((Path(out) / "report.json").read_text())
        if (ee_readout is None or "ee_path_cm" in cached) and (not teacher_forced or "psnr_copy_previous" in cached):
            return cached
    model = Prophet.from_pretrained(model_dir).eval()
    chunk = int(model.config.action_chunk_length)
    if stats_from is None and (Path(model_dir) / K.STATS_FILE).exists():
        stats_from = model_dir
    eps = load_eval_episodes([{"path": eval_dir, "stride": stride}], num_episodes, num_segments, chunk, image_size,
                             stats_from=stats_from)  # fmt: skip
    real = torch.cat([eps[K.COND_FRAME][:, None], eps[K.FUTURE]], 1).float()
    # 1. Rollouts: real actions, shuffled actions (same noise), real actions without memory
    frames = bool(model.config.use_action_frames)  # commanded targets of the episode (of the other one when shuffled)
    pred, prob = rollout_episodes(model, eps, num_steps, seed, batch_size, use_action_frames=frames)
    shuffled = rollout_episodes(model, shuffle_actions(eps, seed), num_steps, seed, batch_size, frames)[0]
    with memory_disabled(model):
        no_mem = rollout_episodes(model, eps, num_steps, seed, batch_size, use_action_frames=frames)[0]
    videos = {"": pred, "_copy_last": real[:, :1].expand_as(real), "_shuffled": shuffled, "_no_memory": no_mem}
    if teacher_forced:
        videos["_teacher_forced"] = teacher_forced_episodes(model, eps, num_steps, seed, batch_size, frames)
        videos["_copy_previous"] = copy_previous(real)
    # 2. Metrics
    report: dict[str, Any] = {"model_dir": model_dir, "episodes": len(real), "segments": num_segments,
                              "frames_per_segment": chunk,
                              "history_length": int(model.config.history_length)}  # fmt: skip
    for suffix, video in videos.items():
        report.update({f"{k}{suffix}": v for k, v in _score(video, real, batch_size).items()})
        if ee_readout is not None:
            report[f"ee_path_cm{suffix}"] = ee_path_error(ee_readout, video, real, batch_size)
    report["psnr_per_segment"] = _segment_psnr(pred, real, num_segments)
    report["psnr_per_segment_no_memory"] = _segment_psnr(no_mem, real, num_segments)
    if teacher_forced:
        report["psnr_per_segment_teacher_forced"] = _segment_psnr(videos["_teacher_forced"], real, num_segments)
    report["memory_effect"] = float((pred - no_mem).abs().mean())
    report["action_effect"] = float((pred - shuffled).abs().mean())
    if prob is not None:
        report["success"] = _success_agreement(prob, eps[K.SUCCESS], min(success_last, num_segments),
                                               success_threshold)  # fmt: skip
    if out is not None:
        report["contact_sheet"] = contact_sheet([real, pred, shuffled], Path(out) / "contact_sheet.png",
                                                sheet_episodes)  # fmt: skip
        (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
        mark_done(Path(out), {"report": str(Path(out) / "report.json")})
    return report
