"""Flow samplers: SDE step maths against hand values and torch.distributions, ODE transport, SDE marginals."""

import math

import pytest
import torch
from torch.distributions import Normal

from lightning_prophrl.models.samplers import (
    gaussian_log_prob,
    ode_step,
    sde_sigma,
    sde_step,
    sde_step_mean_std,
    step_noise_schedule,
    stochastic_step_mask,
    time_grid,
)


def test_sde_step_mean_std_hand_values():
    # x=0.5, v=0.2, t=0.5 -> 0.4, a=0.7: sigma=0.7, mean = 0.5 + (0.2 + 0.49/1.0 * (0.5 + 0.5*0.2)) * (-0.1)
    x, v = torch.full((1, 2), 0.5), torch.full((1, 2), 0.2)
    mean, std = sde_step_mean_std(x, v, 0.5, 0.4, 0.7)
    assert torch.allclose(mean, torch.full((1, 2), 0.4506), atol=1e-6)
    assert std.item() == pytest.approx(0.7 * math.sqrt(0.1), rel=1e-6)
    # t = 1 uses the clamped t = 0.9 inside sigma (sigma = 3a) but the true t = 1 in the drift
    mean1, std1 = sde_step_mean_std(x, v, 1.0, 0.9, 0.7)
    sigma = 0.7 * 3.0
    assert std1.item() == pytest.approx(sigma * math.sqrt(0.1), rel=1e-6)
    expected = 0.5 + (0.2 + sigma**2 / 2.0 * (0.5 + 0.0 * 0.2)) * (-0.1)
    assert torch.allclose(mean1, torch.full((1, 2), expected), atol=1e-5)
    assert sde_sigma(torch.tensor([0.25, 1.0]), 2.0).tolist() == pytest.approx([2.0 / math.sqrt(3.0), 6.0])


def test_sde_step_log_prob_matches_normal_density():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    t, t_next = torch.rand(5, generator=g) * 0.8 + 0.2, None
    t_next = t - 0.1
    x_next, mean, std, lp = sde_step(x, v, t, t_next, 0.7, generator=g)
    ref = Normal(mean, std.expand_as(mean)).log_prob(x_next)
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, ref, atol=1e-5)
    # per-row std = sigma_t sqrt(|dt|) for each row's own t
    assert torch.allclose(std.flatten(), 0.7 * torch.sqrt(t.clamp(max=0.9) / (1 - t.clamp(max=0.9))) * math.sqrt(0.1))


def test_log_prob_is_float32_for_bf16_inputs():
    x = torch.randn(2, 3).bfloat16()
    lp = gaussian_log_prob(x, torch.zeros(2, 3).bfloat16(), torch.tensor(0.5))
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, Normal(0.0, 0.5).log_prob(x.float()), atol=1e-5)


def test_ode_transports_linear_field_exactly():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(16, 4, 7, generator=g), torch.randn(16, 4, 7, generator=g)
    grid = time_grid(7, [1.0, 0.93, 0.7, 0.5, 0.31, 0.2, 0.05, 0.0])  # non-uniform
    # (a) constant velocity eps - x0: Euler is exact on any grid
    x = eps.clone()
    for k in range(7):
        x = ode_step(x, eps - x0, grid[k], grid[k + 1])
    assert torch.allclose(x, x0, atol=1e-5)
    # (b) the exact x0-conditional field v(x, t) = (x - x0) / t is affine in x: x_k - x0 shrinks by t_{k+1} / t_k
    x = eps.clone()
    for k in range(7):
        x = ode_step(x, (x - x0) / grid[k].item(), grid[k], grid[k + 1])
        expected = grid[k + 1].item() * eps + (1 - grid[k + 1].item()) * x0
        assert torch.allclose(x, expected, atol=1e-5)


def test_sde_preserves_rectified_flow_marginals():
    # Point-mass data x0: the exact velocity is (x - x0)/t and the marginal at t is N((1 - t) x0, t^2).
    # The Flow-GRPO SDE (any sigma_t, including the clamped one) must keep these marginals.
    g = torch.Generator().manual_seed(2)
    x0, n_steps = 1.5, 200
    grid = time_grid(n_steps)
    x = torch.randn(20000, generator=g)  # < 32768: stays single-threaded
    for k in range(n_steps // 2):  # integrate from t = 1 to t = 0.5
        x, *_ = sde_step(x, (x - x0) / grid[k].item(), grid[k].item(), grid[k + 1].item(), 0.7, generator=g)
    assert grid[n_steps // 2].item() == pytest.approx(0.5)
    assert x.mean().item() == pytest.approx(0.75, abs=0.02)
    assert x.std().item() == pytest.approx(0.5, abs=0.02)


def test_step_noise_schedule_and_window():
    grid = time_grid(4)
    std, sigma2 = step_noise_schedule(grid, 0.5)
    t = torch.tensor([0.9, 0.75, 0.5, 0.25])  # t = 1 clamped to 0.9
    expected = 0.5 * torch.sqrt(t / (1 - t)) * math.sqrt(0.25)
    assert torch.allclose(std, expected, atol=1e-6)
    assert torch.allclose(sigma2, expected**2, atol=1e-6)
    std_w, _ = step_noise_schedule(grid, 0.5, sde_window=(1, 3))
    assert std_w[0] == 0 and std_w[3] == 0 and torch.allclose(std_w[1:3], expected[1:3])
    assert stochastic_step_mask(4, (1, 3)).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="sde_window"):
        stochastic_step_mask(4, (2, 6))


def test_time_grid_validation():
    assert torch.allclose(time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly decreasing"):
        time_grid(2, [1.0, 0.5, 0.6])
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(3, [1.0, 0.0])
    with pytest.raises(ValueError, match="t_clamp"):
        sde_sigma(torch.tensor([0.5]), 0.7, t_clamp=1.0)
