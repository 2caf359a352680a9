"""FlowScale weights: mean 1 before mixing/clipping, proportional to std at p = 0.5, mixing, clipping, no grad."""

import pytest
import torch

from lightning_prophrl.models.samplers import step_noise_schedule, time_grid
from lightning_prophrl.rl import flowscale_weights


@pytest.fixture
def sigma2() -> torch.Tensor:
    return step_noise_schedule(time_grid(10), 0.7)[1]


def test_normalized_weights_have_mean_one_and_follow_std(sigma2):
    w = flowscale_weights(sigma2, alpha=0.0, w_min=0.0, w_max=1e9, eps=0.0)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    std = sigma2.sqrt()
    assert torch.allclose(w, std / std.mean(), atol=1e-6)  # p = 0.5: w ~ sigma
    assert w[0] > 2.0 and w[-1] < 0.3  # early high-noise steps up-weighted, late refinement steps down-weighted
    w_p1 = flowscale_weights(sigma2, p=1.0, alpha=0.0, w_min=0.0, w_max=1e9, eps=0.0)
    assert torch.allclose(w_p1, sigma2 / sigma2.mean(), atol=1e-6)


def test_mixing_and_clipping(sigma2):
    base = flowscale_weights(sigma2, alpha=0.0, w_min=0.0, w_max=1e9)
    mixed = flowscale_weights(sigma2, alpha=0.25, w_min=0.0, w_max=1e9)
    assert torch.allclose(mixed, 0.75 * base + 0.25, atol=1e-6)
    assert mixed.mean().item() == pytest.approx(1.0, abs=1e-6)  # mixing keeps the mean
    clipped = flowscale_weights(sigma2, alpha=0.0, w_min=0.5, w_max=1.5)
    assert clipped.min().item() == pytest.approx(0.5) and clipped.max().item() == pytest.approx(1.5)
    inside = (base > 0.5) & (base < 1.5)
    assert torch.allclose(clipped[inside], base[inside])
    with pytest.raises(ValueError, match="w_min"):
        flowscale_weights(sigma2, w_min=2.0, w_max=1.0)


def test_batched_detached_and_masked(sigma2):
    s2 = torch.stack([sigma2, 4 * sigma2]).requires_grad_(True)  # (N, K): per-sample noise levels
    w = flowscale_weights(s2, alpha=0.0, w_min=0.0, w_max=1e9)
    assert not w.requires_grad and w.shape == (2, 10)
    assert torch.allclose(w[0], w[1], atol=1e-5)  # scale-free: only the shape of the schedule matters
    mask = torch.zeros(10, dtype=torch.bool)
    mask[2:6] = True
    wm = flowscale_weights(sigma2, alpha=0.0, w_min=0.0, w_max=1e9, mask=mask)
    assert torch.all(wm[~mask] == 0) and wm[mask].mean().item() == pytest.approx(1.0, abs=1e-6)
