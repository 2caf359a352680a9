"""Open-loop evaluation of a world model on held-out episodes: loading them, rolling the model out on their recorded
(or shuffled) actions chunk by chunk, the video metrics of the rollouts against the real frames, and a real-vs-imagined
grid image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.actions import NormMode
from lightning_prophrl.metrics import (
    DynamicPSNR,
    FrechetVideoDistance,
    OpticalFlowMetrics,
    TemporalSSIM,
    VideoPSNR,
    VideoSSIM,
    video_to_uint8,
)

_GEOMETRY_KEYS = (K.EE_POSES, K.GRIPPER)  # per-step tensors that travel with the actions


# ---------------------------------------------------------------------------------------------------------------------
# 1. Episodes
# ---------------------------------------------------------------------------------------------------------------------
def load_eval_episodes(
    datasets: list[Any],
    num_episodes: int,
    num_segments: int,
    chunk_len: int,
    image_size: int | None = 64,
    history_len: int = 0,
    norm_mode: NormMode = "quantile",
    stats_from: str | None = None,
    start_frame: int = 0,
) -> dict[str, Any]:
    """The first ``num_episodes`` episodes of each dataset as one clip of ``num_segments * chunk_len`` steps each.

    Every rank reads the same episodes (no rank split): evaluation runs in one process.

    Args:
        datasets: dataset directories, or dicts / ``DatasetSpec`` as in ``RobotClipDataModule``.
        num_episodes: episodes per dataset.
        num_segments: rollout segments ``S``.
        chunk_len: action chunk length ``L`` of the world model.
        image_size: square frame size (None keeps the stored size).
        history_len: past frames before the start frame (masked where they do not exist).
        norm_mode: action normalization.
        stats_from: dataset whose ``stats.json`` normalizes every dataset (default: each its own, as the datamodule).
        start_frame: conditioning frame index in each episode.

    Returns:
        A collated batch: ``COND_FRAME`` ``(N, 3, H, W)``, ``FUTURE`` ``(N, S * L, 3, H, W)``, ``ACTIONS``
        ``(N, S * L, 14)``, ``ACTION_MASK``, ``EE_POSES``, ``GRIPPER``, ``CAMERA_K``, ``CAMERA_EXTR``, ``HAS_CAMERA``,
        ``CLIP_SUCCESS``, ``EPISODE_KEY`` ... (+ ``HISTORY``, ``HISTORY_MASK`` when ``history_len > 0``).
    """
    from lightning_prophrl.datamodules.clips import ClipIterable, stride_episode
    from lightning_prophrl.datamodules.robot import collate_clips, dataset_specs
    from lightning_prophrl.datamodules.shards import iter_episodes, list_shards, load_stats

    if num_episodes < 1 or num_segments < 1 or chunk_len < 1:
        raise ValueError(f"num_episodes, num_segments and chunk_len must be >= 1, got {num_episodes}, "
                         f"{num_segments}, {chunk_len}")  # fmt: skip
    specs = dataset_specs(datasets)
    if not specs:
        raise ValueError("`datasets` is empty: give at least one held-out dataset")
    stats = [load_stats(stats_from)] * len(specs) if stats_from else None
    cutter = ClipIterable(specs, history_len, num_segments * chunk_len, image_size, True, 1, 1, 1, norm_mode,
                          stats=stats, eval_mode=True)  # fmt: skip
    clips = []
    for di, spec in enumerate(specs):
        for i, ep in enumerate(iter_episodes(list_shards(spec.path))):
            if i >= num_episodes:
                break
            ep = stride_episode(ep, spec.stride)
            clips.append(cutter.make_clip(ep, min(start_frame, len(ep) - 1), di))
    return collate_clips(clips)


def shuffle_actions(episodes: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Give every episode the action sequence of another one (the ``shuffled`` baseline).

    With ``N >= 2`` episodes, episode ``i`` gets the actions (and end-effector geometry) of episode ``(i + 1) % N``;
    with a single episode its steps are permuted in time (a seeded random permutation).
    """
    out = dict(episodes)
    n, t = episodes[K.ACTIONS].shape[:2]
    keys = [k for k in (K.ACTIONS, *_GEOMETRY_KEYS) if k in episodes]
    if n >= 2:
        for k in keys:
            out[k] = episodes[k].roll(-1, dims=0)
    else:
        perm = torch.randperm(t, generator=torch.Generator().manual_seed(seed))
        for k in keys:
            out[k] = episodes[k][:, perm]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 2. Rollouts and metrics
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def rollout_episodes(
    model: Any,
    episodes: dict[str, Any],
    num_steps: int = 4,
    seed: int = 0,
    batch_size: int = 4,
    use_action_frames: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Imagine every episode under its actions with ``model.rollout`` (mini-batches, seeded per mini-batch).

    Args:
        model: a ``Prophet`` (anything with its ``rollout`` and ``config.action_chunk_length``).
        episodes: batch of :func:`load_eval_episodes` (``ACTIONS`` of length ``S * L``).
        num_steps: Euler steps per segment.
        seed: the noise of mini-batch ``j`` comes from ``Generator().manual_seed(seed + j)``.
        batch_size: episodes per rollout call.
        use_action_frames: feed the ground-truth end-effector geometry to the action-frame stream when present.

    Returns:
        ``(video (N, 1 + S * L, 3, H, W) on CPU, success probability (N, S) or None)``.
    """
    for key in (K.COND_FRAME, K.ACTIONS):
        if key not in episodes:
            raise KeyError(f"`episodes` is missing the required key {key!r}")
    n, t, a = episodes[K.ACTIONS].shape
    chunk = int(model.config.action_chunk_length)
    if t % chunk:
        raise ValueError(f"`{K.ACTIONS}` has {t} steps, not a multiple of the model's action_chunk_length={chunk}")
    s = t // chunk
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    videos, probs = [], []
    try:
        for j, i in enumerate(range(0, n, batch_size)):
            b = {k: v[i : i + batch_size].to(device) for k, v in episodes.items() if isinstance(v, torch.Tensor)}
            bs = b[K.ACTIONS].shape[0]
            geometry = use_action_frames and K.EE_POSES in b and K.GRIPPER in b
            out = model.rollout(
                b[K.COND_FRAME],
                b[K.ACTIONS].view(bs, s, chunk, a),
                action_mask=b.get(K.ACTION_MASK),
                history=b.get(K.HISTORY),
                history_mask=b.get(K.HISTORY_MASK),
                num_steps=num_steps,
                generator=torch.Generator().manual_seed(seed + j),
                ee_poses=b[K.EE_POSES].view(bs, s, chunk, *b[K.EE_POSES].shape[2:]) if geometry else None,
                gripper=b[K.GRIPPER].view(bs, s, chunk, *b[K.GRIPPER].shape[2:]) if geometry else None,
                camera_k=b.get(K.CAMERA_K) if geometry else None,
                camera_extr=b.get(K.CAMERA_EXTR) if geometry else None,
                has_camera=b.get(K.HAS_CAMERA) if geometry else None,
            )
            videos.append(out.video.float().cpu())
            if out.success_prob is not None:
                probs.append(out.success_prob.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(videos), (torch.cat(probs) if probs else None)


@torch.no_grad()
def teacher_forced_episodes(
    model: Any,
    episodes: dict[str, Any],
    num_steps: int = 4,
    seed: int = 0,
    batch_size: int = 4,
    use_action_frames: bool = True,
) -> torch.Tensor:
    """Every segment imagined from the *real* frames before it (one step ahead), as the model is trained.

    Segment ``s`` is a one-segment rollout of its own chunk from the real frame ``s * L`` with the real frames before
    it as history (the episode's ``HISTORY`` before the first frame, masked where missing). Its baseline is the real
    frame before each frame (``recipes.prophet_report.copy_previous``), as copy-last is the baseline of
    :func:`rollout_episodes` (same noise): together they tell what the model cannot predict one step ahead from what
    it loses by continuing from its own frames.

    Args:
        model, episodes, num_steps, seed, batch_size, use_action_frames: as in :func:`rollout_episodes`.

    Returns:
        ``(N, 1 + S * L, 3, H, W)`` on CPU; frame 0 is the real first frame.
    """
    n, t, _ = episodes[K.ACTIONS].shape
    chunk = int(model.config.action_chunk_length)
    if t % chunk:
        raise ValueError(f"`{K.ACTIONS}` has {t} steps, not a multiple of the model's action_chunk_length={chunk}")
    if K.FUTURE not in episodes:
        raise KeyError(f"`episodes` is missing the real frames {K.FUTURE!r} that teacher forcing continues from")
    real = torch.cat([episodes[K.COND_FRAME][:, None], episodes[K.FUTURE]], 1)
    past = episodes.get(K.HISTORY)
    past_mask = episodes.get(K.HISTORY_MASK)
    if past is not None and past_mask is None:
        past_mask = torch.ones(past.shape[:2], dtype=torch.bool)
    if past is None:
        past = real[:, :0]
        past_mask = torch.zeros(n, 0, dtype=torch.bool)
    frames = torch.cat([past, real], 1)  # real frame i sits at index i + offset
    valid = torch.cat([past_mask.bool(), torch.ones(n, real.shape[1], dtype=torch.bool)], 1)
    offset, hist = past.shape[1], int(model.config.history_length)
    pieces = [real[:, :1].float().cpu()]
    for s in range(t // chunk):
        start = s * chunk
        seg = {k: v for k, v in episodes.items() if isinstance(v, torch.Tensor)}
        seg[K.COND_FRAME] = real[:, start]
        for key in (K.ACTIONS, *_GEOMETRY_KEYS):
            if key in seg:
                seg[key] = episodes[key][:, start : start + chunk]
        seg.pop(K.FUTURE)
        if hist > 0:
            idx = torch.arange(start - hist, start) + offset  # oldest first
            ok = idx >= 0
            seg[K.HISTORY] = frames[:, idx.clamp(min=0)]
            seg[K.HISTORY_MASK] = valid[:, idx.clamp(min=0)] & ok[None]
        else:
            seg.pop(K.HISTORY, None)
            seg.pop(K.HISTORY_MASK, None)
        video, _ = rollout_episodes(model, seg, num_steps, seed, batch_size, use_action_frames)
        pieces.append(video[:, 1:])
    return torch.cat(pieces, 1)


class VideoMetricSet:
    """The paper's world-model metrics on full rollouts ``(B, 1 + T, 3, H, W)`` (frame 0 = the given frame).

    Args:
        motion_threshold: flow magnitude (px / frame) of the moving region of the direction cosine.
        dynamic_threshold: pixel-change threshold of ``dyn_psnr`` (in ``[-1, 1]`` units).
        fvd_encoder: frozen video encoder of an FVD-style score (``EfficientNetVideoEncoder``); None disables FVD.
    """

    def __init__(
        self, motion_threshold: float = 0.5, dynamic_threshold: float = 0.1, fvd_encoder: torch.nn.Module | None = None
    ) -> None:
        kw = {"sync_on_compute": False}  # evaluation runs in one process (rank zero)
        self.psnr, self.ssim, self.tssim = VideoPSNR(**kw), VideoSSIM(**kw), TemporalSSIM(**kw)
        self.dyn_psnr = DynamicPSNR(threshold=dynamic_threshold, **kw)
        self.flow = OpticalFlowMetrics(motion_threshold=motion_threshold, **kw)
        self.fvd = None if fvd_encoder is None else FrechetVideoDistance(encoder=fvd_encoder, **kw)

    def update(self, pred: torch.Tensor, real: torch.Tensor) -> None:
        """Accumulate imagined ``pred`` vs real ``real`` videos, both ``(B, 1 + T, 3, H, W)`` in ``[-1, 1]``."""
        pred, real = pred.float(), real.float()
        self.psnr.update(pred[:, 1:], real[:, 1:])
        self.ssim.update(pred[:, 1:], real[:, 1:])
        self.tssim.update(pred, real)
        self.dyn_psnr.update(pred, real)
        self.flow.update(pred, real)
        if self.fvd is not None:
            self.fvd.update(real, real=True)
            self.fvd.update(pred, real=False)

    def compute(self) -> dict[str, float]:
        """``{"psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos"}`` (+ ``"fvd"``) as floats."""
        flow = self.flow.compute()
        out = {
            "psnr": self.psnr.compute(),
            "ssim": self.ssim.compute(),
            "tssim": self.tssim.compute(),
            "dyn_psnr": self.dyn_psnr.compute(),
            "flow_epe": flow["epe"],
            "flow_cos": flow["cos"],
        }
        if self.fvd is not None:
            out["fvd"] = self.fvd.compute()
        return {k: float(v) for k, v in out.items()}


def evaluate_world_model(
    model: Any,
    episodes: dict[str, Any],
    num_steps: int = 4,
    seed: int = 0,
    batch_size: int = 4,
    baselines: bool = True,
    fvd: bool = False,
    motion_threshold: float = 0.5,
    dynamic_threshold: float = 0.1,
    use_action_frames: bool = True,
) -> dict[str, float]:
    """Roll the model out on held-out episodes under their real actions and score it (no Trainer needed).

    Args:
        model: a ``Prophet``.
        episodes: batch of :func:`load_eval_episodes`.
        num_steps: Euler steps per segment.
        seed: rollout noise seed (the shuffled baseline uses the same noise, so only the actions differ).
        batch_size: episodes per rollout call.
        baselines: also score ``copy_last`` and ``shuffled``.
        fvd: also compute the EfficientNet FVD-style score (extra ``encoders``; needs >= 2 episodes).
        motion_threshold: moving-region threshold of ``flow_cos`` in pixels per frame.
        dynamic_threshold: changed-pixel threshold of ``dyn_psnr``.
        use_action_frames: feed the real end-effector geometry to the action-frame stream.

    Returns:
        ``{"psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos"[, "fvd"]}``, the same with suffixes
        ``_copy_last`` and ``_shuffled`` (with ``baselines``), ``"success_prob"`` (mean final success probability) and
        ``"success_acc"`` (final probability > 0.5 vs ``CLIP_SUCCESS``) when the model has a success head.
    """
    encoder = None
    if fvd:
        from lightning_prophrl.metrics import EfficientNetVideoEncoder

        encoder = EfficientNetVideoEncoder()
    real = torch.cat([episodes[K.COND_FRAME][:, None], episodes[K.FUTURE]], 1).float()
    pred, success = rollout_episodes(model, episodes, num_steps, seed, batch_size, use_action_frames)
    variants = {"": pred}
    if baselines:
        variants["_copy_last"] = real[:, :1].expand_as(real)
        shuffled = shuffle_actions(episodes, seed)
        variants["_shuffled"] = rollout_episodes(model, shuffled, num_steps, seed, batch_size, use_action_frames)[0]
    results: dict[str, float] = {}
    for suffix, video in variants.items():
        metrics = VideoMetricSet(motion_threshold, dynamic_threshold, encoder)
        for i in range(0, len(real), batch_size):
            metrics.update(video[i : i + batch_size], real[i : i + batch_size])
        results.update({f"{k}{suffix}": v for k, v in metrics.compute().items()})
    if success is not None:
        results["success_prob"] = float(success[:, -1].mean())
        if K.CLIP_SUCCESS in episodes:
            label = episodes[K.CLIP_SUCCESS].float().view(-1) > 0.5
            results["success_acc"] = float(((success[:, -1] > 0.5) == label).float().mean())
    return results


def rollout_grid(real: torch.Tensor, pred: torch.Tensor, max_frames: int = 12) -> np.ndarray:
    """Tile real and imagined videos ``(N, T, 3, H, W)`` in ``[-1, 1]`` into a uint8 ``(2 N H, F W, 3)`` grid.

    Row ``2 i`` is episode ``i``'s real video, row ``2 i + 1`` its imagined one; the ``F = min(T, max_frames)``
    columns are frames ``round(linspace(0, T - 1, F))``.
    """
    if real.shape != pred.shape or real.ndim != 5:
        raise ValueError(f"`real` {tuple(real.shape)} and `pred` {tuple(pred.shape)} must be equal (N, T, 3, H, W)")
    n, t = real.shape[:2]
    cols = torch.from_numpy(np.linspace(0, t - 1, min(t, max_frames)).round().astype(np.int64))
    rows = torch.stack([real[:, cols], pred[:, cols]], 1).flatten(0, 1)  # (2N, F, 3, H, W)
    frames = video_to_uint8(rows)  # (2N, F, H, W, 3)
    return frames.permute(0, 2, 1, 3, 4).flatten(2, 3).flatten(0, 1).numpy()  # (2N H, F W, 3)
