"""Rollout videos in TensorBoard: what the policy did during RL (in the simulator or inside the world model), and the
real and imagined episodes of the imagination guard side by side.

TensorBoard's video summary (an animated GIF) needs ``moviepy`` 1.x, which the project's ``video`` extra installs;
without it the first frames of each video are logged as an image strip instead, with a warning once.
"""

from __future__ import annotations

import importlib.util

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """``(N, T, 3, H, W)`` float in ``[-1, 1]`` (or already uint8) -> uint8 in ``[0, 255]``, on the CPU."""
    if video.dtype == torch.uint8:
        return video.cpu()
    return video.detach().float().cpu().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two uint8 ``(N, T, 3, H, W)`` videos next to each other, ``(N, T', 3, H, W_left + W_right)``: ``right`` is
    resized to ``left``'s height and both are padded with their last frame to the longer length."""
    n = min(len(left), len(right))
    left, right = left[:n], right[:n]
    if right.shape[-2] != left.shape[-2]:
        h = left.shape[-2]
        w = round(right.shape[-1] * h / right.shape[-2])
        flat = right.flatten(0, 1).float()
        right = F.interpolate(flat, size=(h, w), mode="bilinear", align_corners=False)
        right = right.round().clamp(0, 255).to(torch.uint8).view(n, -1, 3, h, w)
    t = max(left.shape[1], right.shape[1])

    def pad(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v, v[:, -1:].expand(-1, t - v.shape[1], -1, -1, -1)], 1) if v.shape[1] < t else v

    return torch.cat([pad(left), pad(right)], -1)


_warned_moviepy = False


@rank_zero_only
def log_video(trainer: L.Trainer, tag: str, video: torch.Tensor, step: int, fps: int = 4) -> None:
    """Write a uint8 ``(N, T, 3, H, W)`` video to every TensorBoard logger of ``trainer`` (as an image strip of the
    first frames when ``moviepy`` is missing)."""
    global _warned_moviepy
    has_moviepy = importlib.util.find_spec("moviepy") is not None
    if not has_moviepy and not _warned_moviepy:
        rank_zero_warn(f"{tag}: TensorBoard videos need moviepy 1.x (`pip install lightning_prophrl[video]`); "
                       "logging the first frames as an image instead")  # fmt: skip
        _warned_moviepy = True
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        if has_moviepy:
            logger.experiment.add_video(tag, video, step, fps=fps)
        else:
            logger.experiment.add_image(tag, torch.cat(list(video[:, 0]), -1), step, dataformats="CHW")


class RolloutVideoCallback(L.Callback):
    """Videos of the RL rollouts of an ``FAGRPOModule`` (``rollout/video``) every ``every_n_updates`` updates: the
    first ``max_videos`` episodes of the update's last rollout batch, from its environment's ``video()`` (the real
    simulator's frames, or the world model's imagined ones).

    Args:
        every_n_updates: logging period in RL updates.
        max_videos: episodes per video summary.
        fps: frame rate of the summary (one frame per executed action chunk).
    """

    def __init__(self, every_n_updates: int = 10, max_videos: int = 4, fps: int = 4) -> None:
        if every_n_updates < 1 or max_videos < 1:
            raise ValueError(f"`every_n_updates` and `max_videos` must be >= 1, got {every_n_updates}, {max_videos}")
        self.every_n_updates, self.max_videos, self.fps = every_n_updates, max_videos, fps
        self.last_video: torch.Tensor | None = None

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        updates = getattr(pl_module, "updates", trainer.global_step)
        if updates == 0 or updates % self.every_n_updates:
            return
        self.last_video = video_to_uint8(pl_module.env.video()[: self.max_videos])
        log_video(trainer, "rollout/video", self.last_video, updates, self.fps)
