import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.actions import metaworld_to_unified
from lightning_prophrl.envs.metaworld_expert import ScriptedExpert
from lightning_prophrl.envs.poses import CommandedPoses


@pytest.fixture(scope="module")
def poses():
    return CommandedPoses.metaworld("pick-place-v3", 32)


def test_integrated_targets_reproduce_the_simulators_mocap_target(poses):
    expert = ScriptedExpert("pick-place-v3", 32, max_steps=60, stop_at_success=False, render=False)
    try:
        ep = expert.run(seed=3, sigma=1.0)  # large noise: the hand lags behind its target
    finally:
        expert.close()
    unified, _ = metaworld_to_unified(ep.actions)
    start = poses.start(torch.as_tensor(ep.ee_poses[:1, :3]))
    targets = poses.integrate(start, torch.as_tensor(unified)[None], frames=15)  # groups of 4 actions
    np.testing.assert_allclose(targets[0].numpy(), ep.target_poses[4::4, :3], atol=1e-5)
    lag = np.abs(ep.target_poses[:, :3] - ep.ee_poses[:, :3]).max()
    assert lag > 5e-3  # the measured hand is not the target (why action frames draw the target)


def test_world_deltas_follow_the_action_frame_and_bounds(poses):
    unified, _ = metaworld_to_unified(np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]]))
    np.testing.assert_allclose(poses.world_deltas(torch.as_tensor(unified)).numpy(), [[0.01, 0, 0], [0, 0, -0.01]],
                               atol=1e-9)  # fmt: skip
    down, _ = metaworld_to_unified(np.tile([0.0, 0.0, -1.0, 0.0], (40, 1)))
    out = poses.integrate(torch.tensor([[0.0, 0.6, 0.2]]), torch.as_tensor(down)[None], frames=4)
    assert out[0, -1, 2].item() == pytest.approx(poses.low[2])  # clipped at the table-side bound
    assert out[0, 0, 2].item() == pytest.approx(0.1, abs=1e-6)


def test_geometry_draws_arm_zero_only(poses):
    g = poses.geometry(torch.zeros(2, 3, 3), torch.ones(2, 3))
    assert g["ee_poses"].shape == (2, 3, K.NUM_ARMS, 7) and g["camera_k"].shape == (2, 3, 3)
    assert g["ee_poses"][:, :, 0, 3:].norm(dim=-1).min() > 0 and g["ee_poses"][:, :, 1:].abs().max() == 0
