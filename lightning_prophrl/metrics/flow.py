"""Optical-flow-guided action-following metrics (proposed by the paper): flow endpoint error and direction cosine.

Protocol: Farneback optical flow (OpenCV) between consecutive grayscale frames of the generated video (`û_t`)
and of the real video (`u_t`), then per frame

    EPE_t = (1 / HW) sum_x ||u_t(x) - û_t(x)||_2                                   (all pixels)
    cos_t = (1 / |V_t|) sum_{x in V_t} <u_t(x), û_t(x)> / (||u_t(x)|| ||û_t(x)|| + eps)
    V_t   = {x : ||u_t(x)||_2 > motion_threshold}                                 (moving in the REAL video)

both reported as means over frames (pooled over all frames of all videos). Frames whose `V_t` is empty carry no
direction information: they are left out of the cosine mean and counted in `skipped_frames`.

Flows are `(..., H, W, 2)` float tensors in pixels per frame, channel 0 = x (right), channel 1 = y (down), as
returned by OpenCV: `prev(y, x) ~ next(y + u_y, x + u_x)`. Videos follow `metrics.video` (`(B, T, 3, H, W)` in
[-1, 1], or uint8 `(B, T, H, W, 3)`). OpenCV (`opencv-python-headless`) is imported lazily.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_prophrl.metrics.video import as_video, check_pair, video_to_uint8

# OpenCV tutorial defaults for calcOpticalFlowFarneback (the paper does not give its parameters).
FARNEBACK_DEFAULTS = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
}


def _import_cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - cv2 is a core dependency
        raise ImportError(
            "The optical-flow metrics need OpenCV: pip install opencv-python-headless (a core dependency of "
            "lightning_prophrl)"
        ) from err
    return cv2


# ---------------------------------------------------------------------------------------------------------------
# 1. Flow estimation
# ---------------------------------------------------------------------------------------------------------------
def farneback_flow(
    video: Tensor,
    pyr_scale: float = 0.5,
    levels: int = 3,
    winsize: int = 15,
    iterations: int = 3,
    poly_n: int = 5,
    poly_sigma: float = 1.2,
) -> Tensor:
    """Farneback optical flow between consecutive frames (grayscale uint8, computed on CPU with OpenCV).

    Args:
        video: `(B, T, 3, H, W)` float in [-1, 1] or `(B, T, H, W, 3)` uint8; `T >= 2`.
        pyr_scale: image scale between pyramid levels (<1).
        levels: number of pyramid levels (1 = no pyramid).
        winsize: averaging window size; larger is smoother and more robust to noise.
        iterations: iterations per pyramid level.
        poly_n: neighbourhood size of the polynomial expansion (5 or 7).
        poly_sigma: Gaussian std of the polynomial expansion (1.1 for poly_n 5, 1.5 for 7).

    Returns:
        `(B, T - 1, H, W, 2)` float32 flow in pixels (x, y), on the device of `video`.
    """
    cv2 = _import_cv2()
    video = as_video(video)
    if video.shape[1] < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got T={video.shape[1]}")
    frames = video_to_uint8(video).cpu().numpy()  # (B, T, H, W, 3)
    b, t, h, w, _ = frames.shape
    out = np.empty((b, t - 1, h, w, 2), dtype=np.float32)
    for i in range(b):
        gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames[i]]
        for j in range(t - 1):
            out[i, j] = cv2.calcOpticalFlowFarneback(
                gray[j], gray[j + 1], None, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, 0
            )
    return torch.from_numpy(out).to(video.device)


# ---------------------------------------------------------------------------------------------------------------
# 2. Per-frame scores on flows
# ---------------------------------------------------------------------------------------------------------------
def moving_region(flow_real: Tensor, motion_threshold: float = 0.5) -> Tensor:
    """`V_t`: pixels whose real flow magnitude exceeds `motion_threshold` pixels. `(..., H, W, 2)` -> `(..., H, W)`."""
    return flow_real.norm(dim=-1) > motion_threshold


def flow_epe(flow_pred: Tensor, flow_real: Tensor, mask: Tensor | None = None) -> Tensor:
    """Endpoint error per frame, `mean_x ||u(x) - û(x)||_2`.

    Args:
        flow_pred: `(..., H, W, 2)` flow of the generated video.
        flow_real: `(..., H, W, 2)` flow of the real video.
        mask: optional `(..., H, W)` bool region to average over (None: all pixels, as in the paper).

    Returns:
        `(...)` EPE per frame (nan where a mask is empty).
    """
    err = (flow_pred - flow_real).norm(dim=-1)
    if mask is None:
        return err.mean(dim=(-2, -1))
    return (err * mask).sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1))


def flow_direction_cosine(
    flow_pred: Tensor, flow_real: Tensor, motion_threshold: float = 0.5, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Direction agreement per frame over the moving region `V_t` of the real flow.

    Args:
        flow_pred: `(..., H, W, 2)` flow of the generated video.
        flow_real: `(..., H, W, 2)` flow of the real video.
        motion_threshold: real-flow magnitude (pixels) above which a pixel belongs to `V_t`.
        eps: added to the norm product (a static generated pixel inside `V_t` scores 0).

    Returns:
        `(cos, valid)`: `(...)` mean cosine over `V_t` (nan where `V_t` is empty) and `(...)` bool `V_t != {}`.
    """
    region = moving_region(flow_real, motion_threshold)
    dot = (flow_pred * flow_real).sum(dim=-1)
    cos = dot / (flow_pred.norm(dim=-1) * flow_real.norm(dim=-1) + eps)
    n = region.sum(dim=(-2, -1))
    return (cos * region).sum(dim=(-2, -1)) / n, n > 0


# ---------------------------------------------------------------------------------------------------------------
# 3. Metrics
# ---------------------------------------------------------------------------------------------------------------
class OpticalFlowMetrics(Metric):
    """Flow EPE and direction cosine of generated vs real videos, as in the paper's action-following protocol.

    `compute()` returns `{"epe": mean EPE over frames, "cos": mean cosine over frames with a non-empty moving
    region (nan if none), "skipped_frames": number of frames with an empty moving region}`.

    Args:
        motion_threshold: real-flow magnitude in pixels per frame defining the moving region `V_t` (the paper's
            value is unknown; 0.5 px suits 64x64 Meta-World clips, where the arm moves ~1-2 px per frame).
        epe_region: "all" averages the EPE over every pixel (the paper's formula), "moving" over `V_t` only.
        eps: stabilizer in the cosine denominator.
        pyr_scale: Farneback pyramid scale.
        levels: Farneback pyramid levels.
        winsize: Farneback averaging window.
        iterations: Farneback iterations per level.
        poly_n: Farneback polynomial neighbourhood.
        poly_sigma: Farneback polynomial Gaussian std.
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        motion_threshold: float = 0.5,
        epe_region: Literal["all", "moving"] = "all",
        eps: float = 1e-6,
        pyr_scale: float = 0.5,
        levels: int = 3,
        winsize: int = 15,
        iterations: int = 3,
        poly_n: int = 5,
        poly_sigma: float = 1.2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if epe_region not in ("all", "moving"):
            raise ValueError(f"`epe_region` must be 'all' or 'moving', got {epe_region!r}")
        if motion_threshold < 0:
            raise ValueError(f"`motion_threshold` must be >= 0, got {motion_threshold}")
        self.motion_threshold, self.epe_region, self.eps = motion_threshold, epe_region, eps
        self.flow_kwargs = {
            "pyr_scale": pyr_scale,
            "levels": levels,
            "winsize": winsize,
            "iterations": iterations,
            "poly_n": poly_n,
            "poly_sigma": poly_sigma,
        }
        for name in ("epe_sum", "cos_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("epe_count", "cos_count", "skipped_frames"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, flows: bool = False) -> None:
        """Accumulate generated `preds` vs real `target`.

        Args:
            preds: generated videos `(B, T, 3, H, W)` in [-1, 1] (or uint8 `(B, T, H, W, 3)`), T >= 2; with
                `flows=True`, their precomputed flows `(B, T - 1, H, W, 2)`.
            target: real videos (or their flows), same layout as `preds`.
            flows: whether `preds` and `target` are already flows.
        """
        if flows:
            flow_pred, flow_real = preds, target
        else:
            preds, target = check_pair(preds, target)
            flow_pred = farneback_flow(preds, **self.flow_kwargs)
            flow_real = farneback_flow(target, **self.flow_kwargs)
        if flow_pred.shape != flow_real.shape or flow_pred.ndim < 3 or flow_pred.shape[-1] != 2:
            raise ValueError(
                f"flows of `preds` {tuple(flow_pred.shape)} and `target` {tuple(flow_real.shape)} must both be "
                "(..., H, W, 2)"
            )
        self._accumulate(flow_pred, flow_real)

    def update_from_flows(self, flow_pred: Tensor, flow_real: Tensor) -> None:
        """Accumulate precomputed flows `(B, T - 1, H, W, 2)` of the generated and real videos."""
        self.update(flow_pred, flow_real, flows=True)

    def _accumulate(self, flow_pred: Tensor, flow_real: Tensor) -> None:
        flow_pred, flow_real = flow_pred.double(), flow_real.double()
        cos, valid = flow_direction_cosine(flow_pred, flow_real, self.motion_threshold, self.eps)
        mask = moving_region(flow_real, self.motion_threshold) if self.epe_region == "moving" else None
        epe = flow_epe(flow_pred, flow_real, mask)
        epe_valid = torch.ones_like(valid) if mask is None else valid
        self.epe_sum += epe[epe_valid].sum()
        self.epe_count += epe_valid.sum()
        self.cos_sum += cos[valid].sum()
        self.cos_count += valid.sum()
        self.skipped_frames += (~valid).sum()

    def compute(self) -> dict[str, Tensor]:
        """Means over frames: `{"epe", "cos", "skipped_frames"}`."""
        nan = torch.tensor(float("nan"))
        epe = (self.epe_sum / self.epe_count).float() if self.epe_count > 0 else nan
        cos = (self.cos_sum / self.cos_count).float() if self.cos_count > 0 else nan
        return {"epe": epe, "cos": cos, "skipped_frames": self.skipped_frames.clone()}


class FlowEPE(OpticalFlowMetrics):
    """Mean flow endpoint error over frames (lower is better); see `OpticalFlowMetrics` for the arguments."""

    higher_is_better = False

    def compute(self) -> Tensor:
        """Mean EPE over frames in pixels."""
        return super().compute()["epe"]


class FlowDirectionCosine(OpticalFlowMetrics):
    """Mean flow direction cosine over frames with motion (higher is better); see `OpticalFlowMetrics`."""

    higher_is_better = True

    def compute(self) -> Tensor:
        """Mean cosine over frames whose real moving region is non-empty."""
        return super().compute()["cos"]
