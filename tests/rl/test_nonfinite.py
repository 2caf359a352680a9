import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.rl import NonFiniteError, check_rollouts, group_advantages, masked_mean

S, N, KS, C, D = 3, 4, 2, 3, 2  # query steps, rollouts, flow steps, chunk, action dims


def test_masked_mean_never_reads_masked_out_values_in_value_or_gradient():
    x = torch.tensor([1.0, 2.0, float("nan"), float("inf"), 4.0], requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    out = masked_mean(x, mask)
    assert out.item() == pytest.approx(7.0 / 3.0)
    (out * 3).backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert (x.detach() * mask).sum().isnan()  # what a multiplied mask would have given
    assert masked_mean(x.detach(), torch.zeros(5)).item() == 0.0


def rollout_parts():
    obs = [{K.OBS_STATE: torch.zeros(N, 4), K.OBS_IMAGE: torch.zeros(N, 3, 2, 2), K.INSTRUCTION: ["x"] * N}
           for _ in range(S)]  # fmt: skip
    alive = torch.ones(S, N, dtype=torch.bool)
    alive[2, 1] = False  # rollout 1 ended before the last query
    return obs, torch.zeros(S, N, KS, C, D), alive, torch.ones(N)


def test_values_of_ended_rollouts_are_not_read():
    obs, lp, alive, rewards = rollout_parts()
    obs[2][K.OBS_STATE][1, 0] = float("nan")
    lp[2, 1, 0, 0, 0] = float("inf")
    check_rollouts(obs, lp, alive, rewards)  # padding after the end: never learned from


def test_each_kept_non_finite_value_is_named_with_its_rollout_step_and_key():
    obs, lp, alive, rewards = rollout_parts()
    obs[1][K.OBS_IMAGE][2, 0, 1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"observation '{K.OBS_IMAGE}' is non-finite at rollout 2, query step 1"):
        check_rollouts(obs, lp, alive, rewards)
    obs, lp, alive, rewards = rollout_parts()
    lp[0, 3, 1, 2, 0] = float("-inf")
    with pytest.raises(NonFiniteError, match="log-prob is non-finite at rollout 3, query step 0, flow step 1"):
        check_rollouts(obs, lp, alive, rewards)
    obs, lp, alive, rewards = rollout_parts()
    rewards[2] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite reward at rollout index 2"):
        check_rollouts(obs, lp, alive, rewards)


def test_non_finite_error_is_both_a_floating_point_and_a_value_error():
    with pytest.raises(FloatingPointError, match="non-finite reward at rollout index 1"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    assert issubclass(NonFiniteError, ValueError)
