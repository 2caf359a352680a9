from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.envs.base import Prompt
from lightning_prophrl.envs.world_model import WorldModelEnv, group_actions
from lightning_prophrl.models.prophet import Prophet

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prophet"
TINY_UNET = {"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8, "norm_num_groups": 4}  # fmt: skip


@pytest.fixture(scope="module", params=["cosmos", "unet"])
def prophet(request):
    """Both embedded backbones, from their shipped YAMLs at test sizes."""
    torch.manual_seed(0)
    if request.param == "cosmos":
        kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
        return Prophet(**{**kwargs, "action_chunk_length": 2, "history_length": 4, "history_scale_frames": [1, 1, 2]})
    kwargs = yaml.safe_load((CONFIGS / "model_unet.yaml").read_text())["init_args"]
    model = Prophet(**{**kwargs, "action_chunk_length": 2, "history_length": 4, "unet_kwargs": TINY_UNET,
                       "action_frame_channels": 8, "action_hidden_dim": 32})  # fmt: skip
    with torch.no_grad():  # the action MLP's last layer starts at zero (zero_init_conditioning), as before training
        for p in model.action_encoder.parameters():
            p.add_(torch.randn_like(p))
    return model


def stats():
    rng = np.random.default_rng(0)
    u, m = metaworld_to_unified(rng.uniform(-1, 1, (300, 4)))
    return ActionStats.compute([u], mask=m)


def prompts(p=2):
    g = torch.Generator().manual_seed(1)
    return [
        Prompt("pick-place-v3", -1, "pick", torch.rand(3, 32, 32, generator=g) * 2 - 1, torch.ones(4)) for _ in range(p)
    ]


def test_group_actions_sums_deltas_and_keeps_last_gripper():
    a = np.arange(2 * 4 * 14, dtype=np.float32).reshape(2, 4, 14)
    g = group_actions(a, 2)
    np.testing.assert_allclose(g[:, 0, 0], a[:, 0, 0] + a[:, 1, 0])
    np.testing.assert_allclose(g[:, 1, 6], a[:, 3, 6])
    with pytest.raises(ValueError, match="multiple"):
        group_actions(a[:, :3], 2)


def test_rollouts_have_the_right_shapes_and_groups_start_identical(prophet):
    env = WorldModelEnv(
        prophet, stats(), num_prompts=2, group_size=3, max_segments=3, num_steps=1, stop_at_success=False
    )
    obs = env.reset(prompts())
    assert obs[K.OBS_IMAGE].shape == (6, 3, 32, 32) and obs[K.OBS_STATE].shape == (6, 4)
    assert torch.equal(obs[K.OBS_IMAGE][0], obs[K.OBS_IMAGE][2])
    rng = np.random.default_rng(0)
    total = np.zeros((6, 3), np.float32)
    for _ in range(3):
        act = metaworld_to_unified(rng.uniform(-1, 1, (24, 4)))[0].reshape(6, 4, 14)
        total += act[:, :, :3].sum(1)
        obs, done, info = env.step(act)
    assert done.all() and env.video().shape == (6, 4, 3, 32, 32)
    assert info[K.SUCCESS].dtype == torch.bool and info["steps"].tolist() == [12] * 6
    assert env.video_lengths().tolist() == [4] * 6
    # the hand position is dead-reckoned from the start state with the commanded deltas
    np.testing.assert_allclose(obs[K.OBS_STATE][:, :3].numpy(), 1.0 + total, atol=1e-5)


def test_different_actions_give_different_videos(prophet):
    videos = []
    for sign in (1.0, -1.0):
        env = WorldModelEnv(prophet, stats(), num_prompts=1, group_size=1, max_segments=2, num_steps=1, seed=0)
        env.reset(prompts(1))
        act = np.zeros((1, 4, 4), np.float32)
        act[..., 0] = sign
        for _ in range(2):
            env.step(metaworld_to_unified(act[0])[0][None])
        videos.append(env.video())
    assert not torch.allclose(videos[0][:, 1:], videos[1][:, 1:])
    assert torch.equal(videos[0][:, 0], videos[1][:, 0])


def test_world_model_needs_initial_frames(prophet):
    env = WorldModelEnv(prophet, stats(), num_prompts=1)
    with pytest.raises(ValueError, match="initial frame"):
        env.reset([Prompt("pick-place-v3", 3)])


def test_closed_loop_agreement_gate_runs_both_worlds_and_warns(prophet):
    from lightning_prophrl.envs.agreement import closed_loop_agreement
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.models.policy import FlowMatchingPolicy

    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, state_dim=4, text_encoder="none", cond_dim=32, width=32,
                                depth=1, num_heads=2, num_steps=2)  # fmt: skip
    st = stats()
    real = MetaWorldEnv("pick-place-v3", num_prompts=2, group_size=1, image_size=32, max_steps=8)
    world = WorldModelEnv(prophet, st, num_prompts=2, group_size=1, max_segments=2, num_steps=1)
    prompts = [{"task": "pick-place-v3", K.SEED: s} for s in (1000, 1001)]
    with pytest.warns(UserWarning, match="CLOSED-LOOP AGREEMENT GATE"):
        out = closed_loop_agreement(policy, real, world, prompts, ActionDecoder(st, [0, 1, 2, 6], "metaworld"),
                                    ActionDecoder(st, [0, 1, 2, 6], "unified"), max_queries=2,
                                    kappa_threshold=1.1, reward_scorer=lambda v: torch.ones(len(v)),
                                    reward_threshold=0.5, reward_k=2)  # fmt: skip
    first_real = real.video()[:, 0]
    real.close()
    assert out["episodes"] == 2 and sum(out["confusion"].values()) == 2 and out["real_env_steps"] == 16
    assert len(out["imagined_score"]) == 2 and all(0.0 <= v <= 1.0 for v in out["imagined_score"])
    assert out["score_auc"] is None  # no real success to rank
    # a reward model that calls everything a success, judging the 8-step real episodes (2 scored frames each)
    assert out["real_success"] == 0.0 and out["real_success_steps"] == [None, None]
    assert out["reward_on_real"]["predicted_rate"] == 1.0 and out["reward_on_real"]["precision"] == 0.0
    assert torch.allclose(world.video()[:, 0], first_real)  # imagination started from the rendered real frames


def test_commanded_targets_drive_the_action_frames_and_the_state(prophet):
    from lightning_prophrl.envs.poses import CommandedPoses

    poses = CommandedPoses.metaworld("pick-place-v3", 32)
    env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=2, num_steps=1,
                        stop_at_success=False, poses=poses, seed=3)  # fmt: skip
    ps = prompts()
    for p in ps:
        p.initial_state = torch.tensor([0.0, 0.6, 0.2, 1.0])
    env.reset(ps)
    right, _ = metaworld_to_unified(np.tile([1.0, 0.0, 0.0, -1.0], (4, 1)))  # +x in the world, gripper open
    left, _ = metaworld_to_unified(np.tile([-1.0, 0.0, 0.0, -1.0], (4, 1)))
    obs, _, _ = env.step(np.stack([right, left]))
    # the state follows the world-frame command (not the hand-frame unified dpos)
    np.testing.assert_allclose(obs[K.OBS_STATE][:, :3].numpy(), [[0.04, 0.6, 0.2], [-0.04, 0.6, 0.2]], atol=1e-5)

    # the two commands differ only in where the target is drawn and in the scalar stream: with the scalar stream
    # removed (same normalized action for both), the action frames alone still separate the imagined frames
    def imagine(actions):
        env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=2, num_steps=1,
                            stop_at_success=False, poses=poses, seed=3)  # fmt: skip
        env.reset(ps)
        return env.step(actions)[0][K.OBS_IMAGE]

    hook = prophet.action_encoder.register_forward_hook(lambda m, a, out: out * 0)
    try:
        same, diff = imagine(np.stack([right, right])), imagine(np.stack([right, left]))
    finally:
        hook.remove()
    assert torch.equal(same[0], diff[0]) and not torch.allclose(same[1], diff[1], atol=1e-5)


def test_a_success_scorer_replaces_the_success_head_with_its_persistence_rule(prophet):
    from lightning_prophrl.envs.world_model import classifier_scorer
    from lightning_prophrl.models.reward import VideoSuccessClassifier

    seen = []

    def bright_scorer(video):  # success once the newest frame is brighter than the first one
        seen.append(video.shape[1])
        return (video[:, -1].mean((1, 2, 3)) > video[:, 0].mean((1, 2, 3))).float()

    env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=4, num_steps=1,
                        success_threshold=0.5, success_k=2, success_scorer=bright_scorer)  # fmt: skip
    env.reset(prompts())
    act = np.zeros((2, 2, 14), np.float32)
    for _ in range(4):
        obs, done, info = env.step(act)
    video = env.video()
    bright = (video[:, 1:].mean((2, 3, 4)) > video[:, :1].mean((2, 3, 4))).long()  # (N, 4) per-step scores
    expected = ((bright[:, 1:] + bright[:, :-1]) == 2).any(1)  # 2 consecutive steps above 0.5
    assert torch.equal(info[K.SUCCESS], expected) and seen[:2] == [2, 3]
    # a classifier scorer scores the newest frame given its temporal window
    clf = VideoSuccessClassifier(feature_dim=8, channels=(8, 8), groups=4, temporal_kernel=2)
    probs = classifier_scorer(clf)(video)
    assert probs.shape == (2,) and torch.allclose(probs, clf.frame_probs(video)[:, -1], atol=1e-6)


def test_a_value_scorer_grades_episodes_cut_without_a_success_by_their_last_frame(prophet):
    calls = []

    def brightness(video):  # a value in (0, 1) from the newest frame
        calls.append(video.shape[1])
        return (video[:, -1].mean((1, 2, 3)) + 1) / 2

    def first_row_succeeds(video):
        return torch.tensor([1.0, 0.0])

    env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=3, num_steps=1,
                        success_threshold=0.5, success_k=1, success_scorer=first_row_succeeds,
                        value_scorer=brightness)  # fmt: skip
    env.reset(prompts())
    for _ in range(3):
        _, done, info = env.step(np.zeros((2, 2, 14), np.float32))
    value = brightness(env.video())[1]
    assert calls == [4, 4]  # taken once, when the cap cut the episode, on its whole video
    assert info[K.SUCCESS].tolist() == [True, False] and done.all()
    assert info[K.INFO_SCORE][0] == 1.0 and torch.isnan(info[K.INFO_VALUE][0])  # the success keeps its own grade
    assert info[K.INFO_VALUE][1] == value and info[K.INFO_SCORE][1] == value
    plain = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=3, num_steps=1,
                          success_threshold=0.5, success_k=1, success_scorer=first_row_succeeds)  # fmt: skip
    plain.reset(prompts())
    for _ in range(3):
        _, _, info = plain.step(np.zeros((2, 2, 14), np.float32))
    assert info[K.INFO_SCORE][1] == 0.0 and K.INFO_VALUE not in info


def test_branch_prompts_seed_the_memory_and_the_commanded_target(prophet):
    from lightning_prophrl.envs.poses import CommandedPoses

    g = torch.Generator().manual_seed(5)
    past = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1

    def first_frames(history, target=None):
        ps = prompts(2)
        ps[0].history_frames, ps[0].history_mask = history, torch.tensor([False, True])
        ps[0].initial_target = target
        env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=2, max_segments=1, num_steps=1, seed=0,
                            stop_at_success=False, poses=CommandedPoses.metaworld("pick-place-v3", 32))  # fmt: skip
        env.reset(ps)
        mask = None if env.history.mask is None else env.history.mask.clone()
        return env, mask, env.step(np.zeros((4, 2, 14), np.float32))[0][K.OBS_IMAGE]

    env, mask, with_memory = first_frames(past)
    # the given frames fill the newest slots of the 4-frame memory; padding, the masked frame and prompt 1 are off
    assert mask.tolist() == [[False, False, False, True]] * 2 + [[False] * 4] * 2
    encoded = prophet.latent_codec.encode_frames(past[None]).transpose(1, 2)[0]
    torch.testing.assert_close(env.history.items[0, :2], encoded)  # one step later they are the two oldest items
    _, none, without_memory = first_frames(None)
    assert none is None
    assert not torch.allclose(with_memory[:2], without_memory[:2], atol=1e-5)  # the memory is read
    torch.testing.assert_close(with_memory[2:], without_memory[2:])  # prompt 1 had no memory either way
    env, _, _ = first_frames(past, torch.tensor([0.1, 0.7, 0.25]))
    # the branch's state continues from the recorded commanded target (minus the reset offset), not the reset rule
    offset = torch.as_tensor(env.poses.reset_offset).float()
    torch.testing.assert_close(env.target[:2], torch.tensor([[0.1, 0.7, 0.25]] * 2))
    torch.testing.assert_close(env.state[:2, :3], torch.tensor([[0.1, 0.7, 0.25]] * 2) - offset)


def test_branch_agreement_replays_recorded_actions_and_reads_the_real_window(prophet, tmp_path):
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.envs.branches import branch_agreement
    from tests.conftest import write_coded_dataset

    path = write_coded_dataset(tmp_path / "coded", "coded", episodes=4, length=30, size=32)
    dm = PromptDataModule(datasets=[path], eval_fraction=0.0, num_prompts=2, image_size=32, branch_every=4,
                          branch_margin=4, history_len=4, history_stride=2)  # fmt: skip
    dm.setup()

    def scorer(video):  # "success" on every imagined frame: the real window alone decides the confusion
        return torch.ones(video.shape[0])

    env = WorldModelEnv(prophet, stats(), num_prompts=3, group_size=1, max_segments=2, num_steps=1,
                        success_scorer=scorer, success_threshold=0.5, success_k=1)  # fmt: skip
    res = branch_agreement(env, dm, actions_per_segment=2, max_starts=5)
    # real outcome: a success flag in frames t+1 .. t+4 of the recorded episode (odd episodes succeed in their last 3)
    starts = dm.train_prompts
    pick = np.unique(np.linspace(0, len(starts) - 1, 5).round().astype(int))
    real = []
    for i in pick:
        e, t = starts[i]["branch"]
        real.append(any(dm.branches.episodes[e].meta["success_steps"][t + 1 : t + 5]))
    assert res["starts"] == 5 and res["segments"] == 2 and 0 < sum(real) < 5
    assert res["replay"]["real_rate"] == pytest.approx(np.mean(real)) and res["replay"]["imagined_rate"] == 1.0
    assert res["replay"]["confusion"]["both"] == sum(real) and res["policy"] is None
    assert res["replay"]["score_auc"] == 0.5  # a constant score cannot rank the outcomes
    assert res["replay"]["scorer_on_real_auc"] == 0.5 and len(res["replay"]["psnr_by_segment"]) == 2
    with pytest.raises(ValueError, match="group_size=1"):
        branch_agreement(WorldModelEnv(prophet, stats(), group_size=2), dm, 2)


def test_graded_outcome_is_the_best_probability_held_for_k_segments(prophet):
    from lightning_prophrl.envs.rollout import RolloutBatch
    from lightning_prophrl.envs.world_model import INFO_SCORE, graded_reward

    schedule = iter([[0.2, 0.9], [0.8, 0.1], [0.7, 0.95], [0.1, 0.3]])

    def scripted(video):  # per-segment probabilities of the two rollouts
        return torch.tensor(next(schedule))

    env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=4, num_steps=1,
                        success_threshold=0.9, success_k=2, success_scorer=scripted)  # fmt: skip
    env.reset(prompts())
    for _ in range(4):
        _, _, info = env.step(np.zeros((2, 2, 14), np.float32))
    # windows of 2: rollout 0 min(0.2,.8)=.2, min(.8,.7)=.7, min(.7,.1)=.1 -> .7; rollout 1 .1, .1, .3 -> .3
    torch.testing.assert_close(info[INFO_SCORE], torch.tensor([0.7, 0.3]))
    # the same rule on any video's per-frame probabilities (how the within-start study scores real branches)
    from lightning_prophrl.envs.branches import held_score

    per_frame = torch.tensor([[0.2, 0.8, 0.7, 0.1], [0.9, 0.1, 0.95, 0.3]])
    torch.testing.assert_close(held_score(per_frame, torch.tensor([4, 4]), 2), info[INFO_SCORE])
    assert not info[K.SUCCESS].any()  # neither held 0.9 for 2 segments: the 0/1 reward would be all zeros
    batch = RolloutBatch(obs=[], x_steps=torch.zeros(0), log_probs=torch.zeros(0), alive=torch.zeros(0),
                         rewards=torch.zeros(2), success=torch.zeros(2), steps=torch.zeros(2), videos=None,
                         info={INFO_SCORE: info[INFO_SCORE]})  # fmt: skip
    torch.testing.assert_close(graded_reward(batch), torch.tensor([0.7, 0.3]))
    torch.testing.assert_close(graded_reward(batch, floor=0.5), torch.tensor([0.7, 0.0]))  # noise floor
    batch.info = {}
    with pytest.raises(KeyError, match="success_score"):
        graded_reward(batch)


def test_pair_auc_counts_how_imagined_rewards_order_branches_whose_real_outcomes_differ():
    from lightning_prophrl.envs.branches import _pair_auc

    real = np.array([1.0, 0.0, 0.0, 1.0])
    assert _pair_auc(real, real) == (4.0, 4)  # 2 successes x 2 failures, all ordered the same way
    assert _pair_auc(real, 1 - real) == (0.0, 4)
    assert _pair_auc(real, np.zeros(4)) == (2.0, 4)  # ties count half: chance
    assert _pair_auc(np.zeros(4), real) == (0.0, 0)  # a uniform real group has no pair to order


def test_held_score_is_the_best_probability_held_for_k_frames_within_each_length():
    from lightning_prophrl.envs.branches import held_score

    probs = torch.tensor([[0.1, 0.9, 0.8, 0.95, 0.2], [0.9, 0.9, 0.9, 0.1, 0.1], [0.5, 0.99, 0.99, 0.99, 0.99]])
    # k = 2: windows [min of 2]; row 3 is only 2 frames long, so its 0.99 plateau is not reached
    out = held_score(probs, torch.tensor([5, 5, 2]), 2)
    torch.testing.assert_close(out, torch.tensor([0.8, 0.9, 0.5]))
    torch.testing.assert_close(held_score(probs, torch.tensor([5, 5, 5]), 1), probs.max(1).values)
    assert held_score(probs, torch.tensor([5, 2, 5]), 3).tolist() == pytest.approx([0.8, 0.0, 0.99])
    with pytest.raises(ValueError, match="k must be"):
        held_score(probs, torch.tensor([5, 5, 5]), 0)


def test_prefix_actions_replay_the_recorded_state_and_within_start_branches_both_worlds(prophet, tmp_path):
    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.envs.branches import within_start_outcomes
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.models.policy import FlowMatchingPolicy
    from tests.conftest import write_coded_dataset

    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, state_dim=4, text_encoder="none", cond_dim=32, width=32,
                                depth=1, num_heads=2, num_steps=2)  # fmt: skip
    st = stats()
    real_dec, wm_dec = ActionDecoder(st, [0, 1, 2, 6], "metaworld"), ActionDecoder(st, [0, 1, 2, 6], "unified")
    stats_dir = write_coded_dataset(tmp_path / "coded", "coded", episodes=2, length=10, size=32)
    out = tmp_path / "rollouts"
    generate_policy_rollouts(policy, real_dec, "pick-place-v3", [2000, 2001], str(out), max_queries=6, size=32,
                             max_steps=24, batch_size=2, stats_from=stats_dir, progress=False)  # fmt: skip
    dm = PromptDataModule(datasets=[str(out)], eval_fraction=0.0, num_prompts=2, image_size=32, branch_every=4,
                          branch_margin=8, history_len=4, history_stride=4)  # fmt: skip
    dm.setup()
    ds = dm.train_dataloader().dataset
    later = [i for i, p in enumerate(dm.train_prompts) if p["branch"][1] >= 8][:2]
    batch = [ds[i] for i in later]
    assert [len(p[K.PREFIX_ACTIONS]) for p in batch] == [dm.train_prompts[i]["branch"][1] for i in later]
    real = MetaWorldEnv("pick-place-v3", num_prompts=2, group_size=3, image_size=32, max_steps=24)
    obs = real.reset(batch)
    for j, p in enumerate(batch):  # the seeded reset plus the replayed prefix is the recorded state, exactly
        for n in range(3 * j, 3 * j + 3):
            torch.testing.assert_close(obs[K.OBS_IMAGE][n], p[K.COND_FRAME], atol=1e-6, rtol=0)
            torch.testing.assert_close(obs[K.OBS_STATE][n], p[K.OBS_STATE], atol=1e-5, rtol=0)
    _, _, info = real.step(np.zeros((6, 4, 4), np.float32))
    assert info["steps"].tolist() == [len(p[K.PREFIX_ACTIONS]) + 4 for p in batch for _ in range(3)]
    with pytest.raises(ValueError, match="prefix_actions"):
        Prompt("pick-place-v3", 2000, prefix_actions=np.zeros((3, 4)))

    world = WorldModelEnv(prophet, load_stats(str(out)), num_prompts=2, group_size=3, max_segments=2, num_steps=1)
    res = within_start_outcomes(policy, real, world, dm, real_dec, wm_dec, max_starts=3, noise_seed=1)
    starts = res["start_frames"]
    assert res["starts"] == 3 and res["group_size"] == 3 and res["segments"] == 2 and len(starts) == 3
    # a random policy never picks the object: no mixed real group, nothing to order; 2 chunks = 8 real steps a branch
    assert res["real_rate"] == 0.0 and res["real_mixed_starts"] == 0 and res["pair_auc"] is None
    assert res["real_branch_steps"] == 3 * 3 * 8 and res["real_env_steps"] == 3 * sum(t + 8 for t in starts)
    assert len(res["real_rate_per_start"]) == len(res["imagined_rate_per_start"]) == 3
    # the replay reached the recorded states, and paired branches drew the same noise from the same observation
    assert res["max_state_drift"] < 1e-4 and res["first_action_max_diff"] < 1e-4
    assert res["scorer_on_real_pair_auc"] is None  # no success scorer, and no mixed group to order
    with pytest.raises(ValueError, match="max_start_step"):
        within_start_outcomes(policy, real, world, dm, real_dec, wm_dec, max_start_step=-1)
    with pytest.raises(ValueError, match="same num_prompts x group_size"):
        within_start_outcomes(policy, real, WorldModelEnv(prophet, st, num_prompts=2, group_size=2), dm, real_dec,
                              wm_dec)  # fmt: skip
    real.close()


def test_noise_draws_imagine_each_rollout_again_under_the_same_actions(prophet):
    from types import SimpleNamespace

    from lightning_prophrl.envs.world_model import draws_reward

    def bright_scorer(video):
        return (video[:, -1].mean((1, 2, 3)) > video[:, 0].mean((1, 2, 3))).float()

    env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=2, max_segments=3, num_steps=1, seed=0,
                        success_threshold=0.5, success_k=1, success_scorer=bright_scorer, draws=3)  # fmt: skip
    obs = env.reset(prompts())
    assert obs[K.OBS_IMAGE].shape == (4, 3, 32, 32) and len(obs[K.INSTRUCTION]) == 4  # the policy sees draw 0 only
    act = np.zeros((4, 2, 14), np.float32)
    act[..., 0] = 1.0
    while True:
        obs, done, info = env.step(act)
        if done.all():
            break
    assert done.shape == (4,) and env.done.all()  # every draw ends with the policy's episode
    draws = info["draw_success"]
    assert draws.shape == (3, 4) and torch.equal(draws[0], info[K.SUCCESS])
    assert torch.equal(info["draws_agree"], (draws == draws[0]).all(0))
    first = [env.video(d)[:, 0] for d in range(3)]
    assert all(torch.equal(first[0], f) for f in first)  # the same start ...
    assert not torch.allclose(env.video(0)[:, 1:], env.video(1)[:, 1:])  # ... imagined under independent noise
    # rewards from the draws: their mean, or their minimum (success only when every draw succeeds)
    batch = SimpleNamespace(info={"draw_success": torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
                                  "draw_score": torch.tensor([[0.9, 0.1, 0.5], [0.7, 0.3, 0.0]])})  # fmt: skip
    assert draws_reward(batch).tolist() == [1.0, 0.5, 0.0]
    assert draws_reward(batch, reduce="min").tolist() == [1.0, 0.0, 0.0]
    graded = draws_reward(batch, signal="graded", floor=0.2)
    assert torch.allclose(graded, torch.tensor([0.8, 0.15, 0.25]))
    with pytest.raises(KeyError, match="draws=D"):
        draws_reward(SimpleNamespace(info={}))
