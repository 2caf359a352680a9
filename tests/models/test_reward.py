"""Reward models: the persistence rule, the success classifier, the oracle, the rollout adapter and the report."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.envs.rollout import RolloutBatch
from lightning_prophrl.models.reward import (
    INFO_VIDEO_LENGTHS,
    ClassifierReward,
    PersistenceRule,
    RewardModel,
    RolloutReward,
    SimulatorOracle,
    VideoSuccessClassifier,
    binary_report,
    evaluate_reward_model,
    rollout_video_lengths,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run fastest on one thread when other jobs share the 2 cores (oversubscription costs ~10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def square_frames(n: int, size: int = 32, bright: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` noisy dark frames in [-1, 1]; where ``bright[i]`` a white 6x6 square at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 0.8 - 1.0
    bright = torch.zeros(n, dtype=torch.bool) if bright is None else bright
    rows, cols = torch.randint(0, size - 6, (n,), generator=g), torch.randint(0, size - 6, (n,), generator=g)
    for i in torch.nonzero(bright).flatten().tolist():
        x[i, :, rows[i] : rows[i] + 6, cols[i] : cols[i] + 6] = 1.0
    return x


@pytest.fixture(scope="module")
def trained_classifier():
    """A per-frame classifier trained to spot the bright square (success) in 50 Adam steps (~2-3 s on 2 cores)."""
    torch.manual_seed(0)
    clf = VideoSuccessClassifier(feature_dim=32, channels=(8, 16, 16), groups=4)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for step in range(50):
        labels = torch.rand(32, generator=torch.Generator().manual_seed(step)) < 0.5
        frames = square_frames(32, bright=labels, seed=step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(frames[:, None])[:, 0], labels.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf


# ---- persistence rule -----------------------------------------------------------------------------------------------
def test_persistence_rule_on_hand_made_sequences():
    probs = torch.tensor(
        [
            [0.95, 0.95, 0.95, 0.10, 0.10],  # a run of 3 at the start
            [0.95, 0.95, 0.50, 0.95, 0.95],  # runs of 2 only
            [0.90, 0.90, 0.90, 0.90, 0.90],  # exactly at the threshold is not above it
            [0.10, 0.10, 0.91, 0.99, 0.93],  # a run of 3 ending on the last frame
            [0.99, 0.10, 0.99, 0.10, 0.99],  # scattered peaks ("any frame above" would fire)
        ]
    )
    rule = PersistenceRule(threshold=0.9, k=3)
    assert rule(probs).tolist() == [True, False, False, True, False]
    assert rule.completion_index(probs).tolist() == [2, -1, -1, 4, -1]
    assert PersistenceRule(0.9, k=2).completion_index(probs).tolist() == [1, 1, -1, 3, -1]
    assert PersistenceRule(0.9, k=1).completion_index(probs).tolist() == [0, 0, -1, 2, 0]
    assert PersistenceRule(0.5, k=5)(probs).tolist() == [False, False, True, False, False]


def test_persistence_rule_only_counts_real_frames():
    probs = torch.tensor([[0.1, 0.1, 0.95, 0.95, 0.95], [0.1, 0.1, 0.95, 0.95, 0.95]])
    rule = PersistenceRule(0.9, 3)
    # the padded tail repeats the last real frame: counting it would invent a run of 3
    assert rule(probs, torch.tensor([4, 5])).tolist() == [False, True]
    assert rule(probs[:, :2]).tolist() == [False, False]  # T < k
    with pytest.raises(ValueError, match="threshold"):
        PersistenceRule(threshold=1.0)
    with pytest.raises(ValueError, match="k must be"):
        PersistenceRule(k=0)


# ---- classifier -----------------------------------------------------------------------------------------------------
def test_classifier_learns_a_separable_toy_set(trained_classifier):
    labels = torch.arange(200) % 2 == 0
    frames = square_frames(200, bright=labels, seed=12345)  # unseen frames
    probs = trained_classifier.frame_probs(frames[None])[0]
    assert probs.shape == (200,) and ((probs >= 0) & (probs <= 1)).all()
    accuracy = ((probs > 0.5) == labels).float().mean().item()
    assert accuracy >= 0.95, accuracy


def test_temporal_kernel_is_causal_and_frame_stacks_reproduce_whole_video_logits():
    torch.manual_seed(0)
    clf = VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4, temporal_kernel=3).eval()
    video = torch.rand(2, 6, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        full = clf(video)
        changed = video.clone()
        changed[:, 4:] = -changed[:, 4:]
        assert torch.allclose(clf(changed)[:, :4], full[:, :4], atol=1e-6)  # the future does not leak backwards
        assert not torch.allclose(clf(changed)[:, 4:], full[:, 4:])
        for t in range(6):  # the stack (t-2, t-1, t), clamped at frame 0, as RewardDataModule builds it
            idx = [max(t - 2, 0), max(t - 1, 0), t]
            assert torch.allclose(clf(video[:, idx])[:, -1], full[:, t], atol=1e-5)


def test_frame_probs_restores_training_mode_and_rejects_bad_shapes():
    clf = VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4).train()
    out = clf.frame_probs(torch.zeros(5, 2, 3, 16, 16), batch_size=2)
    assert out.shape == (5, 2) and clf.training
    with pytest.raises(ValueError, match=r"\(N, T, 3, H, W\)"):
        clf(torch.zeros(2, 3, 16, 16))


def test_classifier_reward_applies_persistence_within_lengths(trained_classifier):
    t = 8
    on = torch.zeros(4, t, dtype=torch.bool)
    on[0, 4:] = True  # success held for the last 4 frames
    on[1, 3] = True  # a single flash: a false positive for "any frame above"
    on[2, 6:] = True  # only 2 frames
    on[3, 5:] = True  # a run of 3 (5, 6, 7), but only frame 5 is real when the length is 6
    videos = square_frames(4 * t, bright=on.flatten(), seed=99).view(4, t, 3, 32, 32)
    reward = ClassifierReward(trained_classifier, PersistenceRule(threshold=0.5, k=3))
    assert isinstance(reward, RewardModel)
    assert reward(videos, ["pick"] * 4).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert reward(videos, ["pick"] * 4, torch.tensor([8, 8, 8, 6])).tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="lengths"):
        reward(videos, ["pick"] * 4, torch.tensor([8, 8, 8, 9]))
    with pytest.raises(ValueError, match="instructions"):
        reward(videos, ["pick"] * 3)


# ---- oracle, rollout adapter, report ---------------------------------------------------------------------------------
def rollout_batch(videos: torch.Tensor, alive: torch.Tensor, success: torch.Tensor, info=None) -> RolloutBatch:
    n = videos.shape[0]
    obs = [{K.INSTRUCTION: [f"task {i}" for i in range(n)]}]
    return RolloutBatch(obs, torch.zeros(0), torch.zeros(0), alive, success.clone(), success, torch.zeros(n),
                        videos, info or {})  # fmt: skip


class MeanBrightness:
    """A transparent video reward for checking plumbing: 1 when the mean of the real frames is above 0."""

    def __init__(self):
        self.seen: list = []

    def __call__(self, videos, instructions, lengths=None):
        self.seen.append((list(instructions), None if lengths is None else lengths.tolist()))
        lengths = torch.full((videos.shape[0],), videos.shape[1]) if lengths is None else lengths
        return torch.stack([videos[i, : int(n)].mean() > 0 for i, n in enumerate(lengths)]).float()


def test_simulator_oracle_and_rollout_adapter():
    videos = -torch.ones(3, 4, 3, 8, 8)
    videos[0, 1:] = 1.0  # bright after the first frame
    for t, v in enumerate([0.1, 0.1, -0.5, 1.0]):  # dark over its 3 real frames, bright if the padding counted
        videos[1, t] = v
    videos[2] = 1.0
    alive = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    batch = rollout_batch(videos, alive, torch.tensor([1.0, 0.0, 1.0]))
    assert SimulatorOracle()(batch).tolist() == [1.0, 0.0, 1.0]
    model = MeanBrightness()
    assert rollout_video_lengths(batch).tolist() == [4, 3, 2]  # reset frame + executed chunks
    assert RolloutReward(model)(batch).tolist() == [1.0, 0.0, 1.0]
    assert model.seen[-1] == (["task 0", "task 1", "task 2"], [4, 3, 2])
    assert model(videos, ["x"] * 3).tolist() == [1.0, 1.0, 1.0]  # what ignoring the lengths would give
    batch.info[INFO_VIDEO_LENGTHS] = torch.tensor([1, 4, 1])  # the environment's own count wins
    assert RolloutReward(model)(batch).tolist() == [0.0, 1.0, 1.0]
    inconsistent = rollout_batch(videos, alive[:1], torch.zeros(3))  # alive does not match T: every frame counts
    assert rollout_video_lengths(inconsistent).tolist() == [4, 4, 4]
    no_video = rollout_batch(videos, alive, torch.zeros(3))
    no_video.videos = None
    with pytest.raises(ValueError, match="videos is None"):
        RolloutReward(model)(no_video)


def test_binary_report_on_hand_made_counts():
    pred = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    true = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0])
    r = binary_report(pred, true)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 1, 1, 3)
    assert r["precision"] == 0.75 and r["recall"] == 0.75 and r["f1"] == 0.75 and r["accuracy"] == 0.75
    assert r["kappa"] == pytest.approx(0.5)  # p_o = 0.75, p_e = (4 * 4 + 4 * 4) / 64
    never = binary_report(torch.zeros(4), torch.tensor([1, 0, 1, 0]))
    assert never["precision"] == 0.0 and never["recall"] == 0.0 and never["f1"] == 0.0 and never["kappa"] == 0.0
    with pytest.raises(ValueError, match="same size"):
        binary_report(torch.zeros(3), torch.zeros(4))


def test_evaluate_reward_model_against_ground_truth():
    videos = -torch.ones(5, 3, 3, 4, 4)
    videos[[0, 1, 4]] = 1.0  # judged success: 0, 1, 4
    labels = torch.tensor([1, 1, 1, 0, 0])  # true success: 0, 1, 2
    r = evaluate_reward_model(MeanBrightness(), videos, None, labels)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 1, 1, 1)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="labels"):
        evaluate_reward_model(MeanBrightness(), videos, None, labels[:4])


def test_rollout_reward_in_a_real_simulator_rollout(trained_classifier):
    """``collect_rollouts(reward_fn=...)`` with the real Meta-World env: the oracle is the env's success and the
    adapter's lengths follow the env's own ``video_lengths()``."""
    pytest.importorskip("metaworld")
    import numpy as np

    from lightning_prophrl.actions import ActionStats, metaworld_to_unified
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.rollout import ActionDecoder, collect_rollouts
    from lightning_prophrl.models.policy import FlowMatchingPolicy

    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4, instructions=["pick"],
                                cond_dim=32, width=32, depth=1, num_heads=2, num_steps=2, unknown_instruction="unk")  # fmt: skip
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(200, 4)))
    decoder = ActionDecoder(ActionStats.compute([unified], mask=mask), [0, 1, 2, 6])
    env = MetaWorldEnv("pick-place-v3", num_prompts=1, group_size=2, image_size=32, max_steps=6, exec_horizon=2)
    try:
        prompts = [{"task": "pick-place-v3", K.SEED: 2000}]
        oracle = collect_rollouts(policy, env, prompts, decoder, max_queries=5, reward_fn=SimulatorOracle())
        assert torch.equal(oracle.rewards, oracle.success)
        video_model = MeanBrightness()
        batch = collect_rollouts(policy, env, prompts, decoder, max_queries=5, reward_fn=RolloutReward(video_model))
        assert torch.equal(rollout_video_lengths(batch), env.video_lengths())
        assert video_model.seen[-1] == ([batch.obs[0][K.INSTRUCTION][0]] * 2, env.video_lengths().tolist())
        classifier = RolloutReward(ClassifierReward(trained_classifier))  # 32 px frames like the toy set
        assert classifier(batch).shape == (2,)
    finally:
        env.close()


def test_reward_chain_builds_from_a_class_path_config(tmp_path):
    """What ``FAGRPOModule(reward_model=...)`` receives from YAML: RolloutReward(ClassifierReward(...)) by class_path,
    here with the trained weights of a checkpoint."""
    from collections.abc import Callable

    from jsonargparse import ArgumentParser

    torch.manual_seed(0)
    trained = VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4)
    torch.save({"state_dict": {f"classifier.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "rm.ckpt")

    def takes(reward_model: Callable | None = None):  # the RL module's argument, typed as a callable
        return reward_model

    parser = ArgumentParser()
    parser.add_function_arguments(takes, "rl")
    config = {
        "class_path": "lightning_prophrl.models.reward.RolloutReward",
        "init_args": {"reward_model": {
            "class_path": "lightning_prophrl.models.reward.ClassifierReward",
            "init_args": {
                "classifier": {"class_path": "lightning_prophrl.models.reward.VideoSuccessClassifier",
                               "init_args": {"feature_dim": 16, "channels": [8, 8], "groups": 4}},
                "rule": {"class_path": "lightning_prophrl.models.reward.PersistenceRule",
                         "init_args": {"threshold": 0.8, "k": 2}},
                "checkpoint": str(tmp_path / "rm.ckpt"),
            },
        }},
    }  # fmt: skip
    built = parser.instantiate(parser.parse_args(["--rl.reward_model", json.dumps(config)])).rl.reward_model
    assert isinstance(built, RolloutReward) and isinstance(built.reward_model, ClassifierReward)
    assert (built.reward_model.rule.threshold, built.reward_model.rule.k) == (0.8, 2)
    for k, v in trained.state_dict().items():
        assert torch.equal(built.reward_model.classifier.state_dict()[k], v)
    oracle = parser.parse_args(
        ["--rl.reward_model", '{"class_path": "lightning_prophrl.models.reward.SimulatorOracle"}']
    )
    assert isinstance(parser.instantiate(oracle).rl.reward_model, SimulatorOracle)


def test_frame_probs_run_in_the_classifiers_dtype_and_return_float32():
    torch.manual_seed(0)
    clf = VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4)
    videos = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    probs32 = clf.frame_probs(videos)
    probs64 = clf.double().frame_probs(videos)  # float32 frames from an environment, a float64 classifier
    assert probs64.dtype == torch.float32 and probs64.shape == (2, 3)
    torch.testing.assert_close(probs64, probs32, rtol=0, atol=1e-5)


def test_classifier_round_trips_save_pretrained_exactly_and_load_classifier_reads_both_formats(tmp_path):
    """A ``save_pretrained`` directory (what ``RewardModelModule(export_dir=...)`` writes) and a
    ``train_classifier`` stage directory (``done.json`` + ``classifier.pt``) load into the same classifier."""
    from lightning_prophrl.models.reward import load_classifier
    from lightning_prophrl.stage_cache import mark_done

    torch.manual_seed(0)
    kwargs = {"feature_dim": 16, "channels": [8, 8, 8, 8], "groups": 4, "temporal_kernel": 2}
    clf = VideoSuccessClassifier(**kwargs)
    clf.save_pretrained(tmp_path / "export")
    stage = tmp_path / "stage"
    stage.mkdir()
    torch.save(clf.state_dict(), stage / "classifier.pt")
    mark_done(stage, {"classifier": kwargs})
    video = torch.rand(2, 5, 3, 32, 32) * 2 - 1
    for loaded in (VideoSuccessClassifier.from_pretrained(tmp_path / "export"), load_classifier(tmp_path / "export"),
                   load_classifier(stage)):  # fmt: skip
        assert loaded.temporal_kernel == 2 and not loaded.training
        state = loaded.state_dict()
        assert state.keys() == clf.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in clf.state_dict().items())
        assert torch.equal(loaded.frame_probs(video), clf.frame_probs(video))
