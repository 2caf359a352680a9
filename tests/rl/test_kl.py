"""KL estimators: k3 against the closed-form Gaussian KL by Monte Carlo; closed-form equal-std step KL."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_prophrl.rl import gaussian_mean_kl, kl_k3


def test_k3_is_unbiased_and_nonnegative():
    p, q = Normal(0.0, 1.0), Normal(0.5, 1.2)
    torch.manual_seed(0)
    x = p.sample((200_000,))
    k3 = kl_k3(p.log_prob(x), q.log_prob(x))
    assert torch.all(k3 >= 0)
    assert k3.mean().item() == pytest.approx(kl_divergence(p, q).item(), abs=0.01)
    assert torch.equal(kl_k3(torch.ones(3), torch.ones(3)), torch.zeros(3))


def test_gaussian_mean_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    mp, mq = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    std = torch.rand(2, 3, generator=g) + 0.1
    s = std[:, :, None, None].expand_as(mp)
    ref = kl_divergence(Normal(mp, s), Normal(mq, s))
    assert torch.allclose(gaussian_mean_kl(mp, mq, std), ref, atol=1e-5)
    s0 = std[0, :, None, None].expand_as(mp)  # a (K,) std shared by the batch
    assert torch.allclose(gaussian_mean_kl(mp, mq, std[0]), kl_divergence(Normal(mp, s0), Normal(mq, s0)), atol=1e-5)
    std0 = std.clone()
    std0[:, 1] = 0  # a deterministic step contributes 0, not inf/NaN
    out = gaussian_mean_kl(mp, mq, std0)
    assert torch.all(out[:, 1] == 0) and torch.isfinite(out).all()
