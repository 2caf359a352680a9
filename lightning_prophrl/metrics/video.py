"""Appearance metrics for world-model rollouts (paper: evaluation): PSNR, SSIM, temporal SSIM and dynamic PSNR.

Video convention: float tensors of shape `(B, T, 3, H, W)` with values in [-1, 1] (the range the datamodules
produce), so the data range is 2.0. uint8 videos of shape `(B, T, H, W, 3)` (what decoders and simulators give)
are accepted everywhere through `as_video` / `video_from_uint8`.

Every metric is a `torchmetrics.Metric` whose states are sums and counts reduced with `dist_reduce_fx="sum"`,
so results are identical whether the clips are seen in one `update`, in many, or spread over DDP ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure

VIDEO_DATA_RANGE = 2.0  # [-1, 1]


# ---------------------------------------------------------------------------------------------------------------
# 1. Input helpers
# ---------------------------------------------------------------------------------------------------------------
def video_from_uint8(video: Tensor) -> Tensor:
    """Convert uint8 channel-last video(s) to the float [-1, 1] channel-first convention.

    Args:
        video: `(B, T, H, W, 3)` or `(T, H, W, 3)` uint8 tensor.

    Returns:
        `(B, T, 3, H, W)` (or `(T, 3, H, W)`) float32 tensor in [-1, 1].
    """
    if video.dtype != torch.uint8:
        raise TypeError(f"`video` must be uint8, got {video.dtype}")
    if video.ndim not in (4, 5) or video.shape[-1] != 3:
        raise ValueError(f"`video` must be (B, T, H, W, 3) or (T, H, W, 3) uint8, got shape {tuple(video.shape)}")
    return video.movedim(-1, -3).float().div(127.5).sub(1.0)


def video_to_uint8(video: Tensor) -> Tensor:
    """Inverse of `video_from_uint8`: `(..., 3, H, W)` float in [-1, 1] -> `(..., H, W, 3)` uint8 (rounded)."""
    return video.detach().clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8).movedim(-3, -1)


def as_video(video: Tensor, name: str = "video") -> Tensor:
    """Validate a batch of videos and bring it to `(B, T, 3, H, W)` float in [-1, 1].

    Args:
        video: `(B, T, 3, H, W)` float in [-1, 1], or `(B, T, H, W, 3)` uint8.
        name: argument name used in error messages.

    Returns:
        `(B, T, 3, H, W)` floating tensor.
    """
    if not isinstance(video, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(video).__name__}")
    if video.dtype == torch.uint8:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"uint8 `{name}` must be (B, T, H, W, 3), got shape {tuple(video.shape)}")
        return video_from_uint8(video)
    if not video.is_floating_point():
        raise TypeError(f"`{name}` must be float in [-1, 1] or uint8, got {video.dtype}")
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"`{name}` must be (B, T, 3, H, W), got shape {tuple(video.shape)}")
    return video


def check_pair(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate generated/real videos and return both as `(B, T, 3, H, W)` float with equal shapes."""
    preds, target = as_video(preds, "preds"), as_video(target, "target")
    if preds.shape != target.shape:
        raise ValueError(f"`preds` {tuple(preds.shape)} and `target` {tuple(target.shape)} must have the same shape")
    return preds, target.to(preds.dtype)


def _psnr_from_mse(mse: Tensor, data_range: float, max_psnr: float | None) -> Tensor:
    psnr = 10.0 * torch.log10(data_range**2 / mse)
    return psnr.clamp(max=max_psnr) if max_psnr is not None else psnr


# ---------------------------------------------------------------------------------------------------------------
# 2. Functional forms
# ---------------------------------------------------------------------------------------------------------------
def frame_psnr(
    preds: Tensor, target: Tensor, data_range: float = VIDEO_DATA_RANGE, max_psnr: float | None = 100.0
) -> Tensor:
    """PSNR of every frame: `10 log10(data_range^2 / MSE_frame)`.

    Args:
        preds: `(B, T, 3, H, W)` generated videos in [-1, 1] (or uint8 `(B, T, H, W, 3)`).
        target: real videos, same format.
        data_range: max minus min of the pixel range (2.0 for [-1, 1]).
        max_psnr: per-frame cap in dB so an exactly reproduced frame (MSE 0, PSNR inf) does not make the mean
            infinite; None disables the cap.

    Returns:
        `(B, T)` PSNR in dB.
    """
    preds, target = check_pair(preds, target)
    mse = (preds.double() - target.double()).pow(2).mean(dim=(2, 3, 4))
    return _psnr_from_mse(mse, data_range, max_psnr)


def psnr_per_frame(
    preds: Tensor, target: Tensor, data_range: float = VIDEO_DATA_RANGE, max_psnr: float | None = 100.0
) -> Tensor:
    """PSNR curve over rollout length: per-frame PSNR averaged over the batch.

    Args:
        preds: `(B, T, 3, H, W)` generated videos.
        target: `(B, T, 3, H, W)` real videos.
        data_range: pixel range (2.0 for [-1, 1]).
        max_psnr: per-frame cap in dB (None: no cap).

    Returns:
        `(T,)` mean PSNR of frame t over the batch.
    """
    return frame_psnr(preds, target, data_range, max_psnr).mean(dim=0)


def frame_ssim(
    preds: Tensor,
    target: Tensor,
    data_range: float = VIDEO_DATA_RANGE,
    gaussian_kernel: bool = True,
    sigma: float = 1.5,
    kernel_size: int = 11,
) -> Tensor:
    """SSIM of every frame pair (torchmetrics' functional SSIM, averaged over channels and pixels).

    Args:
        preds: `(B, T, C, H, W)` float frames.
        target: `(B, T, C, H, W)` float frames.
        data_range: pixel range used in the SSIM constants `(k * data_range)^2`.
        gaussian_kernel: Gaussian window (Wang et al.) if True, uniform `kernel_size` window otherwise.
        sigma: std of the Gaussian window (its size is `2 * int(3.5 sigma + 0.5) + 1`, 11 for 1.5).
        kernel_size: size of the uniform window (odd; used when `gaussian_kernel=False`).

    Returns:
        `(B, T)` SSIM values (1 for identical frames).
    """
    b, t = preds.shape[:2]
    window = 2 * int(3.5 * sigma + 0.5) + 1 if gaussian_kernel else kernel_size
    if min(preds.shape[-2:]) < window:
        raise ValueError(f"frames {tuple(preds.shape[-2:])} are smaller than the SSIM window {window}: lower `sigma`")
    ssim = structural_similarity_index_measure(
        preds.flatten(0, 1).float(),
        target.flatten(0, 1).float(),
        gaussian_kernel=gaussian_kernel,
        sigma=sigma,
        kernel_size=kernel_size,
        reduction="none",
        data_range=data_range,
    )
    return ssim.view(b, t)


def dynamic_mask(target: Tensor, threshold: float = 0.1) -> Tensor:
    """Pixels that change in the real video: `max_c |target_t - target_0| > threshold`.

    Args:
        target: `(B, T, 3, H, W)` real videos in [-1, 1].
        threshold: change threshold in [-1, 1] units (0.1 is 5% of the range, about 13 uint8 levels).

    Returns:
        `(B, T, 1, H, W)` bool mask (frame 0 is always all False).
    """
    return (target - target[:, :1]).abs().amax(dim=2, keepdim=True) > threshold


# ---------------------------------------------------------------------------------------------------------------
# 3. Metrics
# ---------------------------------------------------------------------------------------------------------------
class _MeanMetric(Metric):
    """Shared state: a running sum of per-item scores and their count (DDP: summed over ranks)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, scores: Tensor) -> None:
        self.total += scores.double().sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        """Mean score over all accumulated items (nan when nothing was accumulated)."""
        return (self.total / self.count).float() if self.count > 0 else torch.tensor(float("nan"))


class VideoPSNR(_MeanMetric):
    """PSNR averaged over every frame of every video.

    Args:
        data_range: pixel range (2.0 for [-1, 1] videos).
        max_psnr: per-frame cap in dB (exact frames would otherwise be inf); None disables it.
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    def __init__(self, data_range: float = VIDEO_DATA_RANGE, max_psnr: float | None = 100.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_range, self.max_psnr = data_range, max_psnr

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate `(B, T, 3, H, W)` generated vs real videos (or uint8 `(B, T, H, W, 3)`)."""
        self._accumulate(frame_psnr(preds, target, self.data_range, self.max_psnr))


class VideoSSIM(_MeanMetric):
    """SSIM averaged over every frame of every video (Gaussian window sigma 1.5 works at 64 px).

    Args:
        data_range: pixel range (2.0 for [-1, 1] videos).
        gaussian_kernel: Gaussian (True) or uniform window.
        sigma: Gaussian window std.
        kernel_size: uniform window size (odd).
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    def __init__(
        self,
        data_range: float = VIDEO_DATA_RANGE,
        gaussian_kernel: bool = True,
        sigma: float = 1.5,
        kernel_size: int = 11,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.data_range = data_range
        self.ssim_kwargs = {"gaussian_kernel": gaussian_kernel, "sigma": sigma, "kernel_size": kernel_size}

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate `(B, T, 3, H, W)` generated vs real videos."""
        preds, target = check_pair(preds, target)
        self._accumulate(frame_ssim(preds, target, self.data_range, **self.ssim_kwargs))


class TemporalSSIM(VideoSSIM):
    """tSSIM: SSIM between the temporal differences of generated and real videos.

    Definition (the paper gives none): with `d_t = x_{t+1} - x_t` (signed, range [-2, 2], so data range 4),
    `tSSIM = mean_{b, t} SSIM(d_t(gen), d_t(real))` over the `T - 1` consecutive pairs. Static regions have
    zero difference in both videos and score ~1, so the score is driven by where and how things move; plain
    SSIM is dominated by the static background. Videos need `T >= 2`.

    Args:
        data_range: range of one frame (2.0 for [-1, 1]); the differences use twice that.
        gaussian_kernel: Gaussian (True) or uniform window.
        sigma: Gaussian window std.
        kernel_size: uniform window size (odd).
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate `(B, T, 3, H, W)` generated vs real videos, `T >= 2`."""
        preds, target = check_pair(preds, target)
        if preds.shape[1] < 2:
            raise ValueError(f"TemporalSSIM needs at least 2 frames, got T={preds.shape[1]}")
        d_pred, d_real = preds.diff(dim=1), target.diff(dim=1)
        self._accumulate(frame_ssim(d_pred, d_real, 2.0 * self.data_range, **self.ssim_kwargs))


class DynamicPSNR(_MeanMetric):
    """PSNR restricted to the pixels that change in the real video.

    Whole-frame PSNR is dominated by the static background; here the MSE of each video is taken only over
    `dynamic_mask(target, threshold)` (all channels, frames 1..T-1), PSNR is computed per video and averaged
    over videos. Videos whose real clip never changes are skipped and counted in `skipped`.

    Args:
        threshold: change threshold `|real_t - real_0|` in [-1, 1] units (0.1 ~ 13 uint8 levels).
        data_range: pixel range (2.0 for [-1, 1]).
        max_psnr: per-video cap in dB (None: inf for exact dynamic pixels).
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    def __init__(
        self, threshold: float = 0.1, data_range: float = VIDEO_DATA_RANGE, max_psnr: float | None = 100.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.threshold, self.data_range, self.max_psnr = threshold, data_range, max_psnr
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate `(B, T, 3, H, W)` generated vs real videos."""
        preds, target = check_pair(preds, target)
        mask = dynamic_mask(target, self.threshold).expand_as(target)  # (B, T, 3, H, W)
        sq_err = (preds.double() - target.double()).pow(2) * mask
        n_pix = mask.sum(dim=(1, 2, 3, 4))
        valid = n_pix > 0
        mse = sq_err.sum(dim=(1, 2, 3, 4))[valid] / n_pix[valid]
        self._accumulate(_psnr_from_mse(mse, self.data_range, self.max_psnr))
        self.skipped += (~valid).sum()
