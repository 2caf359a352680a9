import numpy as np
import pytest

from lightning_prophrl.actions import unified_to_metaworld
from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld
from lightning_prophrl.datamodules.shards import iter_episodes, load_stats
from lightning_prophrl.envs.metaworld import make_seeded_env, reset_seeded


@pytest.fixture(scope="module")
def mw_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "pick"
    summary = generate_metaworld(["pick-place-v3"], 3, str(out), noise=0.6, size=32, max_steps=60, seed=5,
                                 per_shard=2, progress=False)  # fmt: skip
    return str(out), summary


def test_generated_episodes_decode_with_meta_and_camera(mw_shards):
    out, summary = mw_shards
    eps = list(iter_episodes(out))
    assert [e.key for e in eps] == [f"pick-place-v3_{s:06d}" for s in (5, 6, 7)]
    for e in eps:
        assert e.frames.shape[1:] == (32, 32, 3) and e.frames.dtype == np.uint8
        assert len(e.frames) == len(e.actions) == len(e.state) == len(e.ee_poses) == e.meta["num_actions"] + 1
        assert e.meta["instruction"] and e.meta["fps"] == pytest.approx(80.0)
        assert np.asarray(e.meta["camera"]["K"]).shape == (3, 3) and e.meta["camera"]["width"] == 32
        assert e.frames.std() > 5  # a real rendered scene, not a blank image
    assert summary["episodes"] == 3
    assert load_stats(out).count == sum(len(e) for e in eps)


def test_actions_and_success_match_a_replay_in_the_simulator(mw_shards):
    out, _ = mw_shards
    env = make_seeded_env("pick-place-v3")
    for e in iter_episodes(out, decode_frames=False):
        raw = unified_to_metaworld(e.actions[:-1])  # the last action is the appended "hold still"
        assert np.abs(raw).max() <= 1.0 + 1e-5
        reset_seeded(env, e.meta["seed"])
        flags = []
        for a in raw:
            *_, info = env.step(np.clip(a, -1, 1))
            flags.append(bool(info["success"]))
        assert flags == e.meta["success_steps"][1:]  # the simulator agrees step by step
        assert any(flags) == e.success
        # the stored final hand position is where the replayed hand ended
        np.testing.assert_allclose(e.ee_poses[-1, 0, :3], env.data.body("hand").xpos, atol=1e-5)


def test_generation_is_deterministic_for_a_seed(tmp_path, mw_shards):
    out, _ = mw_shards
    again = tmp_path / "again"
    generate_metaworld(["pick-place-v3"], 1, str(again), noise=0.6, size=32, max_steps=60, seed=5, progress=False)
    (a,) = list(iter_episodes(again))
    b = next(iter_episodes(out))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.actions, b.actions)


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--episodes"):
        generate_metaworld(["pick-place-v3"], 0, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="below 1000"):
        generate_metaworld(["pick-place-v3"], 10, str(tmp_path / "y"), seed=995)


def test_target_poses_are_stored_strided_and_drawn(mw_shards):
    from lightning_prophrl.datamodules.clips import stride_episode

    out, _ = mw_shards
    ep = next(iter_episodes(out, decode_frames=False))
    assert ep.target_poses.shape == ep.ee_poses.shape
    # the stored target is the simulator's mocap: re-run the replay and compare after every action
    env = make_seeded_env("pick-place-v3")
    reset_seeded(env, ep.meta["seed"])
    np.testing.assert_allclose(ep.target_poses[0, 0, :3], env.data.mocap_pos[0], atol=1e-5)
    for t, a in enumerate(unified_to_metaworld(ep.actions[:-1])):
        env.step(np.clip(a, -1, 1))
        np.testing.assert_allclose(ep.target_poses[t + 1, 0, :3], env.data.mocap_pos[0], atol=1e-5)
    np.testing.assert_allclose(ep.target_poses[1:, 0, 7], ep.actions[:-1, 6])  # the commanded opening
    strided = stride_episode(ep, 4)
    np.testing.assert_array_equal(strided.target_poses, ep.target_poses[::4])


def _tiny_policy(data):
    """A seeded random-weight policy and its Meta-World decoder with ``data``'s action statistics."""
    import torch

    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.models.policy import FlowMatchingPolicy

    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, state_dim=4, text_encoder="none", cond_dim=32, width=32,
                                depth=1, num_heads=2, num_steps=2)  # fmt: skip
    return policy, ActionDecoder(load_stats(data), [0, 1, 2, 6], "metaworld")


def test_policy_rollouts_are_written_as_demonstrations_with_the_given_stats(tmp_path, mw_shards):
    from pathlib import Path

    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts

    data, _ = mw_shards
    policy, decoder = _tiny_policy(data)
    out = tmp_path / "policy"
    summary = generate_policy_rollouts(policy, decoder, "pick-place-v3", [2000, 2001, 2002], str(out), max_queries=4,
                                       size=32, max_steps=14, batch_size=2, stats_from=data, progress=False)  # fmt: skip
    eps = list(iter_episodes(str(out)))
    assert [e.key for e in eps] == [f"pick-place-v3_{s:06d}" for s in (2000, 2001, 2002)]
    assert summary["episodes"] == 3 and summary["env_steps"] == 3 * 14  # no stop at success: the full cap
    # normalized like the data the world model saw: its stats.json, not one computed from these episodes
    assert (out / "stats.json").read_bytes() == (Path(data) / "stats.json").read_bytes()
    env = make_seeded_env("pick-place-v3")
    for e in eps:
        assert len(e.frames) == len(e.actions) == 15 and e.meta["source"] == "policy-sde" and e.frames.std() > 5
        reset_seeded(env, e.meta["seed"])
        flags = [bool(env.step(np.clip(a, -1, 1))[-1]["success"]) for a in unified_to_metaworld(e.actions[:-1])]
        assert flags == e.meta["success_steps"][1:]  # the stored actions replay to the stored outcome
        np.testing.assert_allclose(e.ee_poses[-1, 0, :3], env.data.body("hand").xpos, atol=1e-5)
    with pytest.raises(ValueError, match=">= 2000"):
        generate_policy_rollouts(policy, decoder, "pick-place-v3", [1000], str(tmp_path / "bad"), max_queries=1)


def test_real_branches_replay_to_their_start_and_carry_the_recorded_prefix(tmp_path, mw_shards):

    from lightning_prophrl.datamodules.metaworld_gen import generate_branch_rollouts, generate_policy_rollouts
    from lightning_prophrl.datamodules.prompts import BRANCH, PromptDataModule

    data, _ = mw_shards
    policy, decoder = _tiny_policy(data)
    rollouts = tmp_path / "rollouts"
    generate_policy_rollouts(policy, decoder, "pick-place-v3", [2000, 2001], str(rollouts), max_queries=5, size=32,
                             max_steps=20, stats_from=data, progress=False)  # fmt: skip
    prompts = PromptDataModule(datasets=[str(rollouts)], eval_fraction=0.0, num_prompts=2, image_size=32,
                               branch_every=4, branch_margin=8, history_len=2, history_stride=4)  # fmt: skip
    prompts.setup()
    pick = [i for i, p in enumerate(prompts.train_prompts) if p[BRANCH][1] > 0][:3]  # mid-episode starts
    out = tmp_path / "branches"
    summary = generate_branch_rollouts(policy, decoder, prompts, pick, str(out), group_size=2, max_queries=2, size=32,
                                       max_steps=20, batch_size=2, noise_level=1.5, stats_from=data,
                                       progress=False)  # fmt: skip
    eps = {e.key: e for e in iter_episodes(str(out))}
    assert summary["starts"] == 3 and summary["episodes"] == len(eps) == 6
    refs = [prompts.train_prompts[i][BRANCH] for i in pick]
    assert summary["env_steps"] == sum(2 * (t + 8) for _, t in refs) and summary["branch_steps"] == 6 * 8
    env = make_seeded_env("pick-place-v3")
    for e_idx, t in refs:
        source = prompts.branches.episodes[e_idx]
        pair = [eps[f"{source.key}_t{t:03d}_g{j:02d}"] for j in range(2)]
        for ep in pair:
            assert len(ep.frames) == len(ep.actions) == t + 9 and ep.meta["branch_start"] == t
            np.testing.assert_array_equal(ep.frames[:t], source.frames[:t])  # the recorded prefix, as recorded
            np.testing.assert_array_equal(ep.actions[:t], source.actions[:t])
            # the replayed simulator reached the recorded state: its first branch frame and state are the source's
            assert np.abs(ep.frames[t].astype(int) - source.frames[t].astype(int)).max() <= 1
            np.testing.assert_allclose(ep.state[t], source.state[t], atol=1e-5)
            reset_seeded(env, ep.meta["seed"])  # the joined actions replay, from the seeded reset, to its outcome
            flags = [bool(env.step(np.clip(a, -1, 1))[-1]["success"]) for a in unified_to_metaworld(ep.actions[:-1])]
            assert flags == ep.meta["success_steps"][1:] and ep.success == any(flags)
            np.testing.assert_allclose(ep.ee_poses[-1, 0, :3], env.data.body("hand").xpos, atol=1e-5)
            # only a branch that reached the episode's end (a success, or the 20-step cap) knows its eventual outcome
            assert ("episode_success" in ep.meta) == (any(flags[t:]) or t + 8 >= 20)
            assert ep.meta.get("episode_success", ep.success) == ep.success
        assert np.abs(pair[0].actions[t:] - pair[1].actions[t:]).max() > 1e-3  # different SDE branches
    with pytest.raises(ValueError, match="branch prompts"):
        generate_branch_rollouts(policy, decoder, prompts, [], str(tmp_path / "bad"), group_size=2, max_queries=1)
