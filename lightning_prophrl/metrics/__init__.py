"""World-model evaluation metrics (paper: evaluation) as torchmetrics: appearance, optical flow and Frechet distances.

Videos are `(B, T, 3, H, W)` float tensors in [-1, 1]; uint8 `(B, T, H, W, 3)` videos are accepted too.
"""

from lightning_prophrl.metrics.ee_readout import EndEffectorReadout, ee_path_error, fit_ee_readout
from lightning_prophrl.metrics.flow import (
    FlowDirectionCosine,
    FlowEPE,
    OpticalFlowMetrics,
    farneback_flow,
    flow_direction_cosine,
    flow_epe,
    moving_region,
)
from lightning_prophrl.metrics.frechet import (
    EfficientNetVideoEncoder,
    FrechetDistance,
    FrechetVideoDistance,
    frechet_distance,
    frechet_distance_from_features,
)
from lightning_prophrl.metrics.video import (
    DynamicPSNR,
    TemporalSSIM,
    VideoPSNR,
    VideoSSIM,
    as_video,
    dynamic_mask,
    frame_psnr,
    frame_ssim,
    psnr_per_frame,
    video_from_uint8,
    video_to_uint8,
)

__all__ = [
    "DynamicPSNR",
    "EfficientNetVideoEncoder",
    "EndEffectorReadout",
    "FlowDirectionCosine",
    "FlowEPE",
    "FrechetDistance",
    "FrechetVideoDistance",
    "OpticalFlowMetrics",
    "TemporalSSIM",
    "VideoPSNR",
    "VideoSSIM",
    "as_video",
    "dynamic_mask",
    "ee_path_error",
    "farneback_flow",
    "fit_ee_readout",
    "flow_direction_cosine",
    "flow_epe",
    "frame_psnr",
    "frame_ssim",
    "frechet_distance",
    "frechet_distance_from_features",
    "moving_region",
    "psnr_per_frame",
    "video_from_uint8",
    "video_to_uint8",
]
