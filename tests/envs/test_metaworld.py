"""MetaWorldEnv, seeding, the scripted expert and the instruction map, on the real Meta-World v3 simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.envs import (  # first: sets MUJOCO_GL before mujoco is imported
    INFO_EXECUTED,
    INFO_STEPS,
    INFO_SUCCESS,
    INSTRUCTIONS,
    BatchedEnv,
    MetaWorldEnv,
    Prompt,
    ScriptedExpert,
    demo_seeds,
    eval_seeds,
    instruction_for,
    make_seeded_env,
    reset_seeded,
    train_seeds,
)

metaworld = pytest.importorskip("metaworld")

TASK = "pick-place-v3"


@pytest.fixture(scope="module")
def env():
    env = MetaWorldEnv(TASK, num_prompts=2, group_size=2, image_size=64, max_steps=150)
    yield env
    env.close()


@pytest.fixture(scope="module")
def expert_episode():
    expert = ScriptedExpert(TASK, image_size=64, max_steps=150)
    try:
        yield expert.run(seed=7, sigma=0.0)
    finally:
        expert.close()


# ---- instructions and seeds -----------------------------------------------------------------------------------------
def test_every_metaworld_task_has_an_instruction():
    from metaworld.policies import ENV_POLICY_MAP

    names = set(metaworld.MT1.ENV_NAMES) | set(ENV_POLICY_MAP)
    assert len(names) == 50
    assert names == set(INSTRUCTIONS)
    assert all(instruction_for(t).strip() for t in names)
    assert len(set(INSTRUCTIONS.values())) == 50  # every task has its own instruction
    assert instruction_for("pick-place-v3") == "pick up the red puck and place it at the goal"
    with pytest.raises(KeyError, match="pick-place-v2"):
        instruction_for("pick-place-v2")


def test_seed_ranges_are_disjoint_and_checked():
    assert demo_seeds(3) == [0, 1, 2] and eval_seeds(2) == [1000, 1001] and train_seeds(2) == [2000, 2001]
    assert not set(demo_seeds(1000)) & set(eval_seeds(1000))
    assert eval_seeds(1000)[-1] < train_seeds(1)[0]
    with pytest.raises(ValueError, match="eval seeds"):
        eval_seeds(10, start=1995)
    with pytest.raises(ValueError, match="train seeds"):
        train_seeds(1, start=1500)


# ---- seeding ---------------------------------------------------------------------------------------------------------
def test_same_seed_same_state_on_fresh_instances_and_different_seeds_differ():
    a, b = make_seeded_env(TASK), make_seeded_env(TASK)
    obs_a = reset_seeded(a, 1234)
    reset_seeded(b, 99)  # another seed first: the state must not depend on history
    obs_b = reset_seeded(b, 1234)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert np.abs(obs_a[36:39]).sum() > 0  # the goal is observable (the experts need it)
    obs_c = reset_seeded(b, 1235)
    assert np.abs(obs_c[4:7] - obs_a[4:7]).max() > 1e-3  # object position differs
    assert np.abs(obs_c[36:39] - obs_a[36:39]).max() > 1e-3  # goal differs


def test_groups_start_identical_and_prompts_differ(env):
    obs = env.reset([Prompt(TASK, 1000), Prompt(TASK, 1001, instruction="custom")])
    img, state = obs[K.OBS_IMAGE], obs[K.OBS_STATE]
    assert img.shape == (4, 3, 64, 64) and img.dtype == torch.float32
    assert img.min() >= -1.0 and img.max() <= 1.0 and img.std() > 0.1
    assert state.shape == (4, 4) and env.state_dim == 4
    assert obs[K.INSTRUCTION] == [instruction_for(TASK)] * 2 + ["custom"] * 2
    torch.testing.assert_close(img[0], img[1], rtol=0, atol=0)  # same group: identical initial state
    torch.testing.assert_close(img[2], img[3], rtol=0, atol=0)
    assert (img[0] - img[2]).abs().max() > 0.1  # different seeds: different images
    episodes = env.episodes()
    np.testing.assert_array_equal(episodes[0].object_pos[0], episodes[1].object_pos[0])
    assert not np.allclose(episodes[0].goal, episodes[2].goal)
    # Same seed again after stepping: the very same image (reset restores everything).
    env.step(np.random.default_rng(0).uniform(-1, 1, (4, 3, 4)))
    again = env.reset([Prompt(TASK, 1000), Prompt(TASK, 1001)])
    torch.testing.assert_close(again[K.OBS_IMAGE], img, rtol=0, atol=0)
    assert isinstance(env, BatchedEnv)


# ---- stepping: cap, stop-at-success, video ----------------------------------------------------------------------------
def test_step_cap_and_video(env):
    env.max_steps = 10
    try:
        env.reset([Prompt(TASK, 2000), Prompt(TASK, 2001)])
        executed, dones = [], []
        for _ in range(4):
            _, done, info = env.step(torch.zeros(4, 4, 4))
            executed.append(info[INFO_EXECUTED].tolist())
            dones.append(done.tolist())
    finally:
        env.max_steps = 150
    assert executed == [[4] * 4, [4] * 4, [2] * 4, [0] * 4]  # the cap cuts the third chunk, then nothing runs
    assert dones[1] == [False] * 4 and dones[2] == [True] * 4
    assert info[INFO_STEPS].tolist() == [10] * 4 and info[INFO_SUCCESS].tolist() == [False] * 4
    video = env.video()
    assert video.shape == (4, 4, 3, 64, 64) and env.video_lengths().tolist() == [4] * 4  # reset + 3 executed chunks
    torch.testing.assert_close(env.video(uint8=True).float() / 127.5 - 1.0, video)
    assert [len(e.actions) for e in env.episodes()] == [10] * 4
    assert [len(e.ee_poses) for e in env.episodes()] == [11] * 4
    assert env.episodes()[0].frame_steps == [0, 4, 8, 10]


def test_expert_succeeds_and_replay_matches(expert_episode):
    ep = expert_episode
    t = len(ep.actions)
    assert ep.episode_success and ep.success[-1] and not ep.success[:-1].any()  # stopped at the first success
    assert 20 < t < 150
    assert ep.frames.shape == (t, 64, 64, 3) and ep.final_frame.shape == (64, 64, 3)
    assert ep.states.shape == (t, 4) and ep.ee_poses.shape == (t + 1, 7) and ep.object_pos.shape == (t + 1, 3)
    np.testing.assert_allclose(ep.states[:, :3], ep.ee_poses[:-1, :3], atol=1e-6)  # state = hand xyz + gripper
    assert np.abs(ep.actions).max() <= 1.0
    # Replay the recorded actions from the same seed in a fresh env: same per-step success and hand poses.
    replay = MetaWorldEnv(TASK, 1, 1, image_size=64, max_steps=150)
    try:
        obs = replay.reset([Prompt(TASK, 7)])
        np.testing.assert_array_equal(replay.episodes()[0].frames[0], ep.frames[0])  # frames[t] precedes actions[t]
        _, done, info = replay.step(np.concatenate([ep.actions, np.zeros((5, 4), np.float32)])[None])
        record = replay.episodes()[0]
        assert done.item() and info[INFO_SUCCESS].item() and info[INFO_STEPS].item() == t  # stop-at-success
        np.testing.assert_array_equal(record.success, ep.success)
        np.testing.assert_allclose(np.stack(record.ee_poses), ep.ee_poses, atol=1e-9)
        np.testing.assert_array_equal(record.frames[-1], ep.final_frame)
        np.testing.assert_allclose(obs[K.OBS_STATE][0].numpy(), ep.states[0])
    finally:
        replay.close()


def test_without_stop_at_success_the_episode_runs_to_the_cap(expert_episode):
    t = len(expert_episode.actions)
    runner = MetaWorldEnv(TASK, 1, 1, max_steps=t + 6, stop_at_success=False, state_mode="full")
    try:
        obs = runner.reset([Prompt(TASK, 7)])
        assert obs[K.OBS_STATE].shape == (1, 39)
        actions = np.concatenate([expert_episode.actions, np.zeros((6, 4), np.float32)])
        _, done, info = runner.step(actions[None, : t - 1])
        assert not done.item() and not info[INFO_SUCCESS].item()
        _, done, info = runner.step(actions[None, t - 1 :])
        assert done.item() and info[INFO_SUCCESS].item() and info[INFO_STEPS].item() == t + 6
        assert runner.episodes()[0].success[t - 1]
    finally:
        runner.close()


def test_expert_is_deterministic_per_seed_and_noise_changes_it():
    expert = ScriptedExpert(TASK, max_steps=40, render=False)
    try:
        a, b, c = expert.run(3, sigma=0.3), expert.run(3, sigma=0.3), expert.run(3, sigma=0.0)
    finally:
        expert.close()
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.object_pos, b.object_pos)
    assert not np.allclose(a.actions, c.actions)
    assert a.frames.shape[0] == 0 and a.final_frame is None


# ---- inputs ------------------------------------------------------------------------------------------------------------
def test_prompt_dicts_and_bad_inputs(env):
    obs = env.reset([{K.SEED: torch.tensor(5), K.TASK_ID: 0}, {K.SEED: 6, "task": TASK, K.INSTRUCTION: "go"}])
    assert obs[K.INSTRUCTION] == [instruction_for(TASK)] * 2 + ["go"] * 2
    with pytest.raises(ValueError, match="num_prompts=2"):
        env.reset([Prompt(TASK, 1)])
    with pytest.raises(ValueError, match="push-v3"):
        env.reset([Prompt("push-v3", 1), Prompt(TASK, 1)])
    with pytest.raises(KeyError, match="task_id"):
        env.reset([{K.SEED: 1, K.TASK_ID: 3}, Prompt(TASK, 1)])
    with pytest.raises(ValueError, match=r"shape \(num_envs=4, h, 4\)"):
        env.step(np.zeros((4, 2, 14)))
    nan = np.zeros((4, 2, 4))
    nan[3, 1, 2] = np.nan
    steps = env.video_lengths().clone()
    with pytest.raises(ValueError, match="non-finite action for env 3 at chunk step 1, dimension 2"):
        env.step(nan)
    assert torch.equal(env.video_lengths(), steps)  # nothing was executed
    with pytest.raises(ValueError, match="unknown Meta-World"):
        MetaWorldEnv("pick-place-v9")
    with pytest.raises(ValueError, match="max_steps"):
        MetaWorldEnv(TASK, max_steps=501)
    with pytest.raises(RuntimeError, match="reset"):
        MetaWorldEnv(TASK).step(np.zeros((1, 1, 4)))


def test_exec_horizon_and_multi_task():
    multi = MetaWorldEnv(("reach-v3", TASK), num_prompts=2, group_size=1, exec_horizon=2)
    try:
        obs = multi.reset([Prompt(TASK, 10), Prompt("reach-v3", 10)])
        assert obs[K.INSTRUCTION] == [instruction_for(TASK), instruction_for("reach-v3")]
        _, _, info = multi.step(np.zeros((2, 5, 4)))
        assert info[INFO_EXECUTED].tolist() == [2, 2]
        with pytest.raises(ValueError, match="exec_horizon"):
            multi.step(np.zeros((2, 1, 4)))
        assert multi.camera_k.shape == (3, 3) and multi.camera_extr.shape == (4, 4)
    finally:
        multi.close()


# ---- per-step recording (policy rollouts as demonstration data) -----------------------------------------------------
def test_record_steps_reproduces_the_expert_episode_and_keeps_the_chunk_frames():
    expert = ScriptedExpert(TASK, image_size=32, max_steps=22, stop_at_success=False)
    try:
        ep = expert.run(seed=2001, sigma=0.3)
    finally:
        expert.close()
    plain = MetaWorldEnv(TASK, image_size=32, max_steps=22, stop_at_success=False)
    rec = MetaWorldEnv(TASK, image_size=32, max_steps=22, stop_at_success=False, record_steps=True)
    try:
        chunks = np.concatenate([ep.actions, np.zeros((2, 4), np.float32)]).reshape(6, 4, 4)  # 22 steps + padding
        for e in (plain, rec):
            e.reset([Prompt(TASK, 2001)])
            for c in chunks:
                e.step(c[None])
        # the chunk-boundary video is unchanged by per-step recording
        torch.testing.assert_close(rec.video(uint8=True), plain.video(uint8=True), rtol=0, atol=0)
        (record,) = rec.episodes()
        with pytest.raises(ValueError, match="record_steps=True"):
            plain.episodes()[0].to_expert_episode(plain.camera_k, plain.camera_extr)
        again = record.to_expert_episode(rec.camera_k, rec.camera_extr, sigma=0.3)
    finally:
        plain.close()
        rec.close()
    # replaying the expert's actions chunk by chunk gives the expert's own episode, frame for frame
    assert record.frame_steps == [0, 4, 8, 12, 16, 20, 22]
    for name in ("frames", "actions", "states", "success"):
        np.testing.assert_array_equal(getattr(again, name), getattr(ep, name), err_msg=name)
    np.testing.assert_array_equal(again.final_frame, ep.final_frame)
    for name in ("ee_poses", "target_poses", "object_pos"):
        np.testing.assert_allclose(getattr(again, name), getattr(ep, name), atol=1e-12, err_msg=name)
    assert rec.fps == pytest.approx(80.0)
