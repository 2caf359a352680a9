"""MetaWorldEnv's non-finite guards at its boundaries: actions going in, simulator observations coming out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_prophrl.envs import MetaWorldEnv, Prompt  # first: sets MUJOCO_GL before mujoco is imported
from lightning_prophrl.rl import NonFiniteError

pytest.importorskip("metaworld")

TASK = "reach-v3"


@pytest.fixture(scope="module")
def env():
    env = MetaWorldEnv(TASK, num_prompts=2, group_size=1, image_size=32, max_steps=20)
    yield env
    env.close()


def test_a_non_finite_action_is_named_and_nothing_executes(env):
    env.reset([Prompt(TASK, 2000), Prompt(TASK, 2001)])
    actions = np.zeros((2, 2, 4))
    actions[1, 0, 3] = np.inf
    with pytest.raises(NonFiniteError, match="non-finite action for env 1 at chunk step 0, dimension 3"):
        env.step(actions)
    assert env.video_lengths().tolist() == [1, 1]


def test_a_non_finite_simulator_observation_is_named_with_env_seed_and_step(env, monkeypatch):
    env.reset([Prompt(TASK, 2000), Prompt(TASK, 2001)])
    sim = env._slots[1].env
    step = sim.step

    def unstable(action):
        obs, *rest = step(action)
        obs = obs.copy()
        obs[5] = np.nan
        return (obs, *rest)

    monkeypatch.setattr(sim, "step", unstable)
    with pytest.raises(NonFiniteError, match=r"observation for env 1 \(task 'reach-v3', seed 2001\) after step 1, "
                                             r"element 5"):  # fmt: skip
        env.step(torch.zeros(2, 2, 4))
