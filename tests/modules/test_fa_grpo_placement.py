"""FAGRPOModule moves the networks its environment and reward model hold with every ``.to`` / ``.double()``, without
holding them: they stay out of its parameters, checkpoints and optimizer."""

import torch
from torch import nn

from lightning_prophrl.envs.world_model import ClassifierScorer, WorldModelEnv
from lightning_prophrl.models.reward import ClassifierReward, RolloutReward, VideoSuccessClassifier
from lightning_prophrl.modules import FAGRPOModule
from lightning_prophrl.modules.placement import held_modules
from tests.modules.test_fa_grpo_ddp import tiny_prophet
from tests.modules.test_policy_rl_modules import DIMS, metaworld_stats, tiny_policy


def classifier() -> VideoSuccessClassifier:
    return VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4, temporal_kernel=2)


def build(reward_model) -> tuple[FAGRPOModule, list[nn.Module]]:
    prophet, scorer = tiny_prophet(), classifier()
    env = WorldModelEnv(prophet, metaworld_stats(), num_prompts=1, group_size=2, max_segments=1, num_steps=1,
                        success_scorer=ClassifierScorer(scorer))  # fmt: skip
    module = FAGRPOModule(tiny_policy(["pick"]), env, group_size=2, max_queries=1, action_target="unified",
                          action_stats=metaworld_stats(), action_dims=DIMS, reward_model=reward_model)  # fmt: skip
    return module, [prophet, scorer]


def dtypes(*nets: nn.Module) -> set[torch.dtype]:
    return {p.dtype for net in nets for p in net.parameters()}


def test_environment_and_reward_networks_follow_the_module_without_being_its_state():
    judge = classifier()
    module, env_nets = build(RolloutReward(ClassifierReward(judge)))
    held = [*env_nets, judge]
    assert [id(m) for m in held_modules(module.env, module.reward_model)] == [id(m) for m in held]
    own = {id(p) for p in [*module.policy.parameters(), *module.reference.parameters()]}
    assert {id(p) for p in module.parameters()} == own  # not submodules: not in DDP, checkpoints or the optimizer
    assert all(k.split(".")[0] in ("policy", "reference") for k in module.state_dict())
    module.to(torch.float64)
    assert dtypes(module, *held) == {torch.float64}
    module.float()
    assert dtypes(module, *held) == {torch.float32}
    module.to("meta")  # a device other than the CPU's (an accelerator's, on a GPU machine)
    assert {p.device.type for net in [module, *held] for p in net.parameters()} == {"meta"}


class LastFrameReward(nn.Module):
    """A reward model that is an ``nn.Module``: the success probability of every rollout's last frame."""

    def __init__(self):
        super().__init__()
        self.classifier = classifier()

    def forward(self, batch) -> torch.Tensor:
        return self.classifier.frame_probs(batch.videos[:, -2:])[:, -1]


def test_a_reward_model_that_is_a_module_is_frozen_and_never_optimized():
    reward = LastFrameReward()
    module, env_nets = build(reward)
    assert not any(p.requires_grad for p in reward.parameters())  # never in DDP's gradient buckets
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.policy.parameters()}
    module.double()
    assert dtypes(reward, *env_nets) == {torch.float64}
