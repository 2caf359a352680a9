"""GRPO group advantages: hand values, zero-variance groups, masking after termination, bad rewards."""

import pytest
import torch

from lightning_prophrl.rl import group_advantages


def test_hand_example_and_zero_variance_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    # group 0: mean 0.5, population std 0.5; group 1: constant -> 0; group 2: mean 2, std sqrt(0.5)
    s = 0.5**0.5
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0, 0, 0, 0, 0, 1 / s, -1 / s, 0.0, 0.0])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.equal(group_advantages(rewards.view(3, 4), 4, eps=0.0), adv)  # (P, G) input
    eps_adv = group_advantages(rewards, 4, eps=0.5)
    assert eps_adv[0].item() == pytest.approx(0.5 / (0.5 + 0.5))
    # constant non-representable rewards still give exact zeros (no rounding noise / 0 std blow-up)
    assert torch.equal(group_advantages(torch.full((4,), 0.3), 4, eps=0.0), torch.zeros(4))


def test_mask_broadcasts_and_zeroes_after_termination():
    rewards = torch.tensor([1.0, 0.0])
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 2:] = False  # rollout 0 terminated after step 1
    adv = group_advantages(rewards, group_size=2, mask=mask)
    assert adv.shape == (2, 3, 4)
    assert torch.all(adv[0, :2] > 0.99) and torch.all(adv[0, 2] == 0) and torch.all(adv[1] < -0.99)
    with pytest.raises(ValueError, match="mask has 3 rollouts"):
        group_advantages(rewards, 2, mask=torch.ones(3, 2))


def test_nan_reward_names_the_rollout():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, float("nan"), 0.0, float("inf")])
    with pytest.raises(ValueError, match=r"rollout index 5 \(group 1, member 1\), 7 \(group 1, member 3\)"):
        group_advantages(rewards, group_size=4)


def test_bad_shapes():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(2, 3), group_size=4)
