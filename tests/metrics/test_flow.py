"""Optical-flow metrics: Farneback recovers known translations; EPE / cosine on hand-made and estimated flows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_prophrl.metrics import (
    FlowDirectionCosine,
    FlowEPE,
    OpticalFlowMetrics,
    farneback_flow,
    flow_direction_cosine,
    flow_epe,
    moving_region,
)

SIZE = 64


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    """(128, 128, 3) uint8 smooth random texture (Farneback needs gradients everywhere)."""
    cv2 = pytest.importorskip("cv2")
    noise = np.random.default_rng(0).uniform(0, 255, (128, 128, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    return smooth.round().astype(np.uint8)


def translating_video(texture: np.ndarray, dx: int, dy: int, frames: int = 4) -> torch.Tensor:
    """(1, T, 64, 64, 3) uint8: the content moves by (dx, dy) pixels per frame (x right, y down)."""
    crops = [texture[32 - t * dy : 32 - t * dy + SIZE, 32 - t * dx : 32 - t * dx + SIZE] for t in range(frames)]
    return torch.from_numpy(np.stack(crops))[None]


def square_on_background(texture: np.ndarray, dx: int, frames: int = 4) -> torch.Tensor:
    """(1, T, 64, 64, 3) uint8: static textured background, a textured 16x16 patch moving dx px per frame."""
    video = np.repeat(texture[None, :SIZE, :SIZE], frames, axis=0).copy()
    patch = texture[80:96, 80:96]
    for t in range(frames):
        x0 = 24 + t * dx
        video[t, 24:40, x0 : x0 + 16] = patch
    return torch.from_numpy(video)[None]


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (2, 1), (0, -2), (-3, 1)])
def test_farneback_recovers_translation(texture, dx, dy):
    flow = farneback_flow(translating_video(texture, dx, dy))
    assert flow.shape == (1, 3, SIZE, SIZE, 2)
    interior = flow[0, :, 8:-8, 8:-8].reshape(-1, 2)
    assert interior.mean(dim=0).tolist() == pytest.approx([dx, dy], abs=0.05)
    assert (interior - torch.tensor([dx, dy])).norm(dim=-1).max() < 0.25


def test_farneback_float_and_uint8_inputs_agree(texture):
    u8 = translating_video(texture, 1, 1, frames=2)
    as_float = u8.permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    assert torch.equal(farneback_flow(u8), farneback_flow(as_float))
    with pytest.raises(ValueError, match="at least 2 frames"):
        farneback_flow(u8[:, :1])


def test_epe_and_cosine_on_hand_made_flows():
    real = torch.zeros(1, 2, 2, 2)  # (T, H, W, 2)
    real[0, 0, 0] = torch.tensor([3.0, 4.0])  # moving pixel, |u| = 5
    real[0, 0, 1] = torch.tensor([0.1, 0.0])  # below the 0.5 px threshold
    pred = torch.zeros_like(real)
    pred[0, 0, 0] = torch.tensor([-4.0, 3.0])  # orthogonal to the real flow: cos 0, error sqrt(50)
    pred[0, 0, 1] = torch.tensor([-0.1, 0.0])  # opposite but static in the real video: ignored by cos
    pred[0, 1, 1] = torch.tensor([6.0, 8.0])  # moves where the real video is static: error 10
    assert flow_epe(pred, real).item() == pytest.approx((math.sqrt(50) + 0.2 + 10) / 4)
    mask = moving_region(real, 0.5)
    assert mask.sum().item() == 1
    assert flow_epe(pred, real, mask).item() == pytest.approx(math.sqrt(50))
    cos, valid = flow_direction_cosine(pred, real, motion_threshold=0.5)
    assert valid.tolist() == [True]
    assert cos.item() == pytest.approx(0.0, abs=1e-6)
    cos_same, _ = flow_direction_cosine(2 * real, real, motion_threshold=0.5)
    assert cos_same.item() == pytest.approx(1.0, abs=1e-6)
    # A threshold of 0.05 px lets the opposite static pixel in: mean of (0, -0.01 / (0.01 + eps)) ~ -0.5.
    cos_low, _ = flow_direction_cosine(pred, real, motion_threshold=0.05, eps=1e-6)
    assert cos_low.item() == pytest.approx(-0.5 * 0.01 / (0.01 + 1e-6), abs=1e-6)
    # The metric on precomputed flows: EPE over all pixels or over V_t only.
    for region, expected in (("all", (math.sqrt(50) + 0.2 + 10) / 4), ("moving", math.sqrt(50))):
        metric = OpticalFlowMetrics(motion_threshold=0.5, epe_region=region)
        metric.update_from_flows(pred[None], real[None])
        out = metric.compute()
        assert out["epe"].item() == pytest.approx(expected, rel=1e-6)
        assert out["cos"].item() == pytest.approx(0.0, abs=1e-6)
    metric.update_from_flows(real[None], real[None])  # a perfect frame after compute() (no stale cache)
    assert metric.compute()["epe"].item() == pytest.approx(math.sqrt(50) / 2, rel=1e-6)
    assert metric.compute()["cos"].item() == pytest.approx(0.5, abs=1e-6)


def test_video_vs_itself_and_opposite_motion(texture):
    right, left = translating_video(texture, 2, 0), translating_video(texture, -2, 0)
    metric = OpticalFlowMetrics()
    metric.update(right, right)
    out = metric.compute()
    assert out["epe"].item() == 0.0
    assert out["cos"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["skipped_frames"].item() == 0
    metric.reset()
    metric.update(left, right)
    out = metric.compute()
    assert out["cos"].item() == pytest.approx(-1.0, abs=0.01)
    assert out["epe"].item() == pytest.approx(4.0, abs=0.1)  # |(-2, 0) - (2, 0)|


def test_motion_threshold_excludes_static_pixels(texture):
    real = square_on_background(texture, dx=2)
    gen = square_on_background(texture, dx=-2)
    flow_real = farneback_flow(real)
    region = moving_region(flow_real, 0.5)
    # the region is around the patch (rows 24-40), the background far away is excluded
    assert region[..., :16, :].sum() == 0 and region[..., 48:, :].sum() == 0
    assert region.any(dim=(-2, -1)).all()
    metric = FlowDirectionCosine(motion_threshold=0.5)
    metric.update(gen, real)
    assert metric.compute().item() < -0.7  # opposite motion where the real video moves
    # Counting every pixel instead dilutes the score toward 0 (static background has cos ~ 0).
    everywhere = FlowDirectionCosine(motion_threshold=0.0)
    everywhere.update(gen, real)
    assert abs(everywhere.compute().item()) < 0.4


def test_static_real_video_frames_are_skipped(texture):
    still = translating_video(texture, 0, 0)
    moving = translating_video(texture, 1, 0)
    metric = OpticalFlowMetrics(motion_threshold=0.5)
    metric.update(moving, still)
    out = metric.compute()
    assert out["skipped_frames"].item() == 3
    assert math.isnan(out["cos"].item())
    assert out["epe"].item() == pytest.approx(1.0, abs=0.05)


def test_epe_metric_accumulates_like_one_update(texture):
    real = torch.cat([translating_video(texture, 1, 0), translating_video(texture, 0, 2)])
    gen = torch.cat([translating_video(texture, 2, 0), translating_video(texture, 0, -1)])
    split, whole = FlowEPE(), FlowEPE()
    split.update(gen[:1], real[:1])
    split.update(gen[1:], real[1:])
    whole.update(gen, real)
    assert split.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)
    assert whole.compute().item() == pytest.approx((1.0 + 3.0) / 2, abs=0.1)  # per-frame errors 1 and 3 px
    rank0, rank1 = OpticalFlowMetrics(), OpticalFlowMetrics()  # merge_state = the DDP "sum" reduction
    rank0.update(gen[:1], real[:1])
    rank1.update(gen[1:], real[1:])
    rank0.merge_state(rank1)
    assert rank0.compute()["epe"].item() == pytest.approx(whole.compute().item(), rel=1e-6)
    with pytest.raises(ValueError, match="epe_region"):
        OpticalFlowMetrics(epe_region="mask")
