"""FA-GRPO / Flow-GRPO losses: ratio 1 on unchanged parameters, gradient signs, clipping, FlowScale options A and B."""

import math

import pytest
import torch

from lightning_prophrl.rl import fa_grpo_loss, flow_grpo_loss

N, K, C, D = 3, 4, 2, 5


@pytest.fixture
def old() -> torch.Tensor:
    return torch.randn(N, K, C, D, generator=torch.Generator().manual_seed(0)) - 2.0


@pytest.fixture
def adv() -> torch.Tensor:
    return torch.tensor([[1.0, 1.0], [-0.5, -0.5], [2.0, 0.0]])  # (N, C)


def grad_of(loss_fn, lp: torch.Tensor, *args, **kw) -> tuple[torch.Tensor, torch.Tensor, dict]:
    lp = lp.clone().requires_grad_(True)
    loss, stats = loss_fn(lp, *args, **kw)
    loss.backward()
    return loss.detach(), lp.grad, stats


def test_ratio_one_on_unchanged_params(old, adv):
    loss, grad, stats = grad_of(fa_grpo_loss, old, old, adv)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)  # mean over (n, c, d) of A
    assert stats["ratio_min"] == 1 and stats["ratio_max"] == 1 and stats["clip_frac"] == 0
    assert stats["approx_kl"] == 0
    # d loss / d lp_k = -A / (N C D) for every step k (the log-probs are summed over k)
    expected = (-adv / (N * C * D))[:, None, :, None].expand(N, K, C, D)
    assert torch.allclose(grad, expected, atol=1e-7)


def test_flipping_advantage_flips_gradient(old, adv):
    lp = old + 0.01 * torch.randn(N, K, C, D, generator=torch.Generator().manual_seed(1))
    _, g_pos, _ = grad_of(fa_grpo_loss, lp, old, adv)
    _, g_neg, _ = grad_of(fa_grpo_loss, lp, old, -adv)
    assert g_pos.abs().sum() > 0 and torch.allclose(g_neg, -g_pos, atol=1e-7)


@pytest.mark.parametrize("loss_fn", [fa_grpo_loss, flow_grpo_loss])
def test_clipping_stops_gradients_beyond_bounds(old, loss_fn):
    eps_low, eps_high = 0.2, 0.28
    for log_r, a, clipped in [(1.5, 1.0, True), (1.5, -1.0, False), (0.5, -1.0, True), (0.5, 1.0, False)]:
        # FA-GRPO: the K per-step shifts sum to log(r); Flow-GRPO: every step's own ratio is r
        shift = math.log(log_r) / K if loss_fn is fa_grpo_loss else math.log(log_r)
        _, grad, stats = grad_of(loss_fn, old + shift, old, torch.full((N,), a), eps_low=eps_low, eps_high=eps_high)
        if clipped:
            assert torch.all(grad == 0) and stats["clip_frac"] == 1
        else:
            assert torch.all(grad != 0) and stats["clip_frac"] == 0
        assert stats["ratio_mean"].item() == pytest.approx(log_r, rel=1e-5)


def test_fa_grpo_sums_steps_before_the_ratio(old):
    # steps that cancel: FA-GRPO's ratio is 1 (no clip) while Flow-GRPO clips step 0 (ratio e^0.3 > 1.28)
    lp = old.clone()
    lp[:, 0] += 0.3
    lp[:, 1] -= 0.3
    a = torch.ones(N)
    _, g_fa, s_fa = grad_of(fa_grpo_loss, lp, old, a)
    _, g_flow, s_flow = grad_of(flow_grpo_loss, lp, old, a)
    assert s_fa["ratio_max"].item() == pytest.approx(1.0, abs=1e-5) and torch.all(g_fa[:, 0] != 0)
    assert torch.all(g_flow[:, 0] == 0) and torch.all(g_flow[:, 1] != 0) and s_flow["clip_frac"] > 0


def test_flowscale_rescale_grad_keeps_value_and_scales_step_grads(old, adv):
    w = torch.tensor([2.0, 1.2, 0.5, 0.3])
    lp = old + 0.02 * torch.randn(N, K, C, D, generator=torch.Generator().manual_seed(2))
    loss0, g0, s0 = grad_of(fa_grpo_loss, lp, old, adv)
    loss_a, g_a, s_a = grad_of(fa_grpo_loss, lp, old, adv, flowscale_weights=w, flowscale_mode="rescale_grad")
    assert loss_a.item() == pytest.approx(loss0.item(), abs=1e-6)  # equal up to float rounding of w lp + (1-w) lp
    assert s_a["ratio_mean"].item() == pytest.approx(s0["ratio_mean"].item(), abs=1e-6)
    assert torch.allclose(g_a, g0 * w[None, :, None, None], atol=1e-8)
    # per-sample (N, K) weights
    w_nk = torch.stack([w, w.flip(0), torch.ones(K)])
    _, g_nk, _ = grad_of(fa_grpo_loss, lp, old, adv, flowscale_weights=w_nk)
    assert torch.allclose(g_nk, g0 * w_nk[:, :, None, None], atol=1e-8)


def test_flowscale_per_step_adv(old, adv):
    w = torch.tensor([2.0, 1.2, 0.5, 0.3])
    loss_b, g_b, _ = grad_of(fa_grpo_loss, old, old, adv, flowscale_weights=w, flowscale_mode="per_step_adv")
    _, g0, _ = grad_of(fa_grpo_loss, old, old, adv)
    # at ratio 1: value -sum_k w_k mean(A), gradient of step k scaled by w_k
    assert loss_b.item() == pytest.approx(-w.sum().item() * adv.mean().item(), abs=1e-6)
    assert torch.allclose(g_b, g0 * w[None, :, None, None], atol=1e-8)
    loss_f, _, _ = grad_of(flow_grpo_loss, old, old, adv, step_weights=w)
    assert loss_f.item() == pytest.approx(loss_b.item())


def test_mask_excludes_elements(old):
    adv = torch.tensor([[1.0, 7.0], [-0.5, 0.25], [2.0, 3.0]])
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    lp = old + 0.05
    loss, grad, _ = grad_of(fa_grpo_loss, lp, old, adv, mask=mask)
    lp2 = lp.clone()
    lp2[0, :, 1] += 5.0
    lp2[2] -= 3.0
    loss2, _, _ = grad_of(fa_grpo_loss, lp2, old, adv, mask=mask)
    assert loss.item() == pytest.approx(loss2.item())
    assert torch.all(grad[0, :, 1] == 0) and torch.all(grad[2] == 0) and torch.all(grad[1] != 0)
    r = math.exp(0.05 * K)
    assert loss.item() == pytest.approx(-(1.0 - 0.5 + 0.25) * r / 3, rel=1e-5)  # r < 1 + eps_high: unclipped


def test_approx_kl_matches_k3(old):
    lp = old + 0.1 * torch.randn(N, K, C, D, generator=torch.Generator().manual_seed(3))
    _, _, stats = grad_of(fa_grpo_loss, lp, old, torch.zeros(N))
    log_r = (lp - old).sum(1)
    assert stats["approx_kl"].item() == pytest.approx((log_r.exp() - 1 - log_r).mean().item(), rel=1e-5)


def test_bad_shapes(old, adv):
    with pytest.raises(ValueError, match="old_log_probs"):
        fa_grpo_loss(old, old[:, :2], adv)
    with pytest.raises(ValueError, match="advantages"):
        fa_grpo_loss(old, old, torch.zeros(N, 7))
    with pytest.raises(ValueError, match="flowscale_weights"):
        fa_grpo_loss(old, old, adv, flowscale_weights=torch.ones(K + 1))
    with pytest.raises(ValueError, match="flowscale_mode"):
        fa_grpo_loss(old, old, adv, flowscale_mode="bogus")


@pytest.mark.parametrize("loss_fn", [fa_grpo_loss, flow_grpo_loss])
def test_non_finite_values_are_ignored_when_masked_and_named_when_valid(old, adv, loss_fn):
    mask = torch.ones(N, C, dtype=torch.bool)
    mask[2, 1] = False
    lp, poisoned_adv = old + 0.05, adv.clone()
    clean_loss, clean_grad, _ = grad_of(loss_fn, lp, old, adv, mask=mask)
    lp_nan, old_nan = lp.clone(), old.clone()
    lp_nan[2, 1, 1, 3], old_nan[2, 0, 1, 0], poisoned_adv[2, 1] = float("nan"), float("inf"), float("nan")
    loss, grad, stats = grad_of(loss_fn, lp_nan, old_nan, poisoned_adv, mask=mask)
    assert loss.item() == clean_loss.item() and torch.equal(grad, clean_grad)  # masked-out NaN/inf: never read
    assert torch.isfinite(grad).all() and all(torch.isfinite(v) for v in stats.values())
    lp_nan[0, 2, 0, 4] = float("nan")
    with pytest.raises(FloatingPointError, match="log_probs is non-finite at rollout 0, flow step 2, action 0"):
        loss_fn(lp_nan, old, adv, mask=mask)
    with pytest.raises(FloatingPointError, match="advantages are non-finite at rollout 2, action 1"):
        loss_fn(lp, old, poisoned_adv)
