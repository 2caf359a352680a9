"""Appearance metrics: closed-form PSNR, SSIM bounds, tSSIM definition, dynamic-pixel PSNR, accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prophrl.metrics import (
    DynamicPSNR,
    TemporalSSIM,
    VideoPSNR,
    VideoSSIM,
    as_video,
    dynamic_mask,
    frame_ssim,
    psnr_per_frame,
    video_from_uint8,
    video_to_uint8,
)


def smooth_video(b: int = 2, t: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random but spatially smooth videos in [-0.8, 0.8] (SSIM needs structure, not white noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, t, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False)
    return (x.view(b, t, 3, size, size) * 1.6 - 0.8).contiguous()


def test_uint8_round_trip_and_layout():
    u8 = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    video = video_from_uint8(u8)
    assert video.shape == (2, 3, 3, 8, 8)
    assert video.min() >= -1 and video.max() <= 1
    assert torch.equal(video[1, 2, 0], u8[1, 2, ..., 0].float() / 127.5 - 1)
    assert torch.equal(video_to_uint8(video), u8)
    assert torch.equal(as_video(u8), video)


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="preds"):
        VideoPSNR().update(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        VideoPSNR().update(torch.zeros(1, 2, 3, 8, 8), torch.zeros(1, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        TemporalSSIM().update(torch.zeros(1, 1, 3, 16, 16), torch.zeros(1, 1, 3, 16, 16))
    with pytest.raises(ValueError, match="SSIM window"):
        frame_ssim(torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 3, 8, 8))


@pytest.mark.parametrize("offset", [0.1, 0.5])
def test_psnr_constant_offset_closed_form(offset):
    target = smooth_video()
    preds = target + offset
    metric = VideoPSNR()
    metric.update(preds, target)
    expected = 10 * math.log10(4.0 / offset**2)  # data range 2 -> 20 dB at d = 0.2
    assert metric.compute().item() == pytest.approx(expected, abs=1e-4)


def test_psnr_mean_over_frames_and_per_frame_curve():
    target = torch.zeros(1, 2, 3, 4, 4)
    preds = target.clone()
    preds[0, 0] += 0.2  # 20 dB
    preds[0, 1] += 0.02  # 40 dB
    curve = psnr_per_frame(preds, target)
    assert curve.shape == (2,)
    assert curve.tolist() == pytest.approx([20.0, 40.0], abs=1e-6)
    metric = VideoPSNR()
    metric.update(preds, target)
    assert metric.compute().item() == pytest.approx(30.0, abs=1e-5)
    # exact frames are capped at max_psnr instead of making the mean infinite
    exact = VideoPSNR(max_psnr=60.0)
    exact.update(target, target)
    assert exact.compute().item() == 60.0
    assert math.isinf(psnr_per_frame(target, target, max_psnr=None)[0].item())


def test_psnr_accepts_uint8():
    u8 = torch.randint(0, 200, (1, 2, 16, 16, 3), dtype=torch.uint8)
    metric = VideoPSNR()
    metric.update(u8 + 51, u8)  # 51 levels = 0.4 in [-1, 1] units
    assert metric.compute().item() == pytest.approx(10 * math.log10(4 / 0.4**2), abs=1e-4)


def test_ssim_identical_is_one_and_drops_when_perturbed():
    target = smooth_video()
    metric = VideoSSIM()
    metric.update(target, target)
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-6)
    noisy = target + 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    metric.reset()
    metric.update(noisy, target)
    value = metric.compute().item()
    assert 0.0 < value < 0.9


def test_temporal_ssim_is_ssim_of_signed_differences():
    target = smooth_video(t=3)
    preds = smooth_video(t=3, seed=5)
    metric = TemporalSSIM()
    metric.update(preds, target)
    expected = frame_ssim(preds.diff(dim=1), target.diff(dim=1), data_range=4.0).mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)
    # A constant brightness offset changes every frame (SSIM < 1) but no temporal difference (tSSIM = 1).
    shifted = target + 0.3
    t_metric, s_metric = TemporalSSIM(), VideoSSIM()
    t_metric.update(shifted, target)
    s_metric.update(shifted, target)
    assert t_metric.compute().item() == pytest.approx(1.0, abs=1e-6)
    assert s_metric.compute().item() < 0.99
    # A frozen generated video scores lower than the moving real one on tSSIM.
    frozen = target[:, :1].expand_as(target)
    t_metric.reset()
    t_metric.update(frozen, target)
    assert t_metric.compute().item() < 0.5


def moving_square_video(background: float = -0.5) -> torch.Tensor:
    """(1, 3, 3, 16, 16): flat background, a bright 4x4 square moving 4 px right per frame."""
    video = torch.full((1, 3, 3, 16, 16), background)
    for t in range(3):
        video[0, t, :, 6:10, 2 + 4 * t : 6 + 4 * t] = 0.8
    return video


def test_dynamic_mask_marks_changed_pixels():
    mask = dynamic_mask(moving_square_video(), threshold=0.1)
    assert mask.shape == (1, 3, 1, 16, 16)
    assert not mask[0, 0].any()
    # frame 1: the square left columns 2-5 (now background) and covers 6-9 -> 4 x 8 changed pixels
    assert mask[0, 1].sum().item() == 32
    assert mask[0, 1, 0, 6:10, 2:10].all()


def test_dynamic_psnr_ignores_static_background():
    real = moving_square_video()
    # 1. Background wrong by 1.0 everywhere, dynamic pixels exact: whole-frame PSNR is low, dynamic PSNR capped.
    gen = real.clone()
    static = ~dynamic_mask(real).expand_as(real)
    gen[static] += 1.0
    gen[:, :, :, 6:10, 2:14] = real[:, :, :, 6:10, 2:14]  # the whole path of the square is exact
    dyn, whole = DynamicPSNR(max_psnr=100.0), VideoPSNR()
    dyn.update(gen, real)
    whole.update(gen, real)
    assert dyn.compute().item() == 100.0
    assert whole.compute().item() < 15.0
    # 2. Background exact, dynamic pixels off by d = 0.4: dynamic PSNR = 10 log10(4 / d^2) exactly.
    gen = real.clone()
    gen[dynamic_mask(real).expand_as(real)] += 0.4
    dyn.reset()
    whole.reset()
    dyn.update(gen, real)
    whole.update(gen, real)
    assert dyn.compute().item() == pytest.approx(10 * math.log10(4 / 0.16), abs=1e-4)
    assert whole.compute().item() > dyn.compute().item() + 5.0


def test_dynamic_psnr_skips_static_videos():
    still = torch.zeros(2, 3, 3, 8, 8)
    metric = DynamicPSNR()
    metric.update(still + 0.5, still)
    assert metric.skipped.item() == 2
    assert math.isnan(metric.compute().item())


@pytest.mark.parametrize("metric_cls", [VideoPSNR, VideoSSIM, TemporalSSIM, DynamicPSNR])
def test_two_updates_equal_one_update_on_concatenation(metric_cls):
    target = smooth_video(b=4, seed=2)
    preds = target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    split, whole = metric_cls(), metric_cls()
    split.update(preds[:1], target[:1])
    split.update(preds[1:], target[1:])
    whole.update(preds, target)
    assert split.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)
    assert split.count.item() == whole.count.item()


def test_merge_state_equals_single_metric():
    """`merge_state` applies the same reductions as a DDP sync (sum of sums and counts)."""
    target = smooth_video(b=3, seed=6)
    preds = target + 0.1
    rank0, rank1, whole = DynamicPSNR(threshold=0.05), DynamicPSNR(threshold=0.05), DynamicPSNR(threshold=0.05)
    rank0.update(preds[:2], target[:2])
    rank1.update(preds[2:], target[2:])
    rank0.merge_state(rank1)
    whole.update(preds, target)
    assert rank0.compute().item() == pytest.approx(whole.compute().item(), rel=1e-9)


def _ddp_worker(rank: int, world_size: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    target = smooth_video(b=3, seed=7)
    preds = target.clone()
    preds[0] += 0.2  # 20 dB on rank 0's clip
    preds[1:] += 0.02  # 40 dB on rank 1's clips
    metric = VideoPSNR()
    metric.update(preds[:1], target[:1]) if rank == 0 else metric.update(preds[1:], target[1:])
    results[rank] = metric.compute().item()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_sync_over_two_gloo_processes(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Manager().dict()
    torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, start_method="spawn"
    )
    # every rank sees the mean over all 3 clips: (20 + 40 + 40) / 3
    assert results[0] == pytest.approx(100 / 3, abs=1e-4)
    assert results[1] == pytest.approx(100 / 3, abs=1e-4)
