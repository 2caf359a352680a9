"""Distributed FA-GRPO: two CPU processes (DDP, gloo) train the same update as one process on the same global batch.

The 2-process fit rolls out in a real ``WorldModelEnv`` (a tiny Prophet) on each process, each with its share of the
update's prompts, and records its rollouts, the gradient of every optimizer step (after DDP's all-reduce and the
clipping) and its final weights. The 1-process fit then trains on the same prompts, replaying the two processes'
rollouts side by side (the global batch): it must take the same number of optimizer steps with the same gradients.
The processes' rollouts end at different steps (rollouts from odd-numbered episodes succeed at once, and the update's
prompts put them on one process), so the processes hold different numbers of queries and some minibatches have no
query of one process (it joins the all-reduce with weight 0): per-process minibatches would not even agree on the
number of steps.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.prompts import PromptDataModule
from lightning_prophrl.envs.rollout import RolloutBatch
from lightning_prophrl.envs.world_model import WorldModelEnv
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules import FAGRPOModule
from lightning_prophrl.rl import plan_minibatches, stream_seed
from tests.conftest import write_coded_dataset
from tests.modules.test_policy_rl_modules import DIMS, metaworld_stats, tiny_policy, varied_reward

ROOT = Path(__file__).resolve().parents[2]
P, G, B, EPOCHS, SEED = 4, 2, 2, 2, 7  # prompts per update, rollouts per prompt, minibatch size, PPO epochs, seed


def odd_episodes_succeed(video: torch.Tensor) -> torch.Tensor:
    """A success scorer ``(N, T, 3, H, W) -> (N,)``: 1 for rollouts started from an odd-numbered coded episode (channel
    1 of the initial frame holds the episode's index), so that those stop after one query and the others run on."""
    index = ((video[:, 0, 1, 0, 0] + 1) * 127.5).round()
    return (index % 2 == 1).float()


def tiny_prophet() -> Prophet:
    cfg = yaml.safe_load((ROOT / "configs/prophet/model_tiny.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    return Prophet(**{**cfg, "action_chunk_length": 2, "history_length": 4, "history_scale_frames": [1, 1, 2]})


class Recording(FAGRPOModule):
    """Keeps each update's prompts and rollouts (``replay``: returns those rollouts instead of rolling out)."""

    def __init__(self, *args, replay: RolloutBatch | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.replay, self.seen = replay, []

    def rollout(self, prompts):
        out = super().rollout(prompts) if self.replay is None else self.replay
        self.seen.append(([p[K.COND_FRAME] for p in prompts], out))
        return out


class RecordSteps(L.Callback):
    """The policy's gradient at every optimizer step and what DDP and the optimizer hold."""

    def __init__(self):
        self.grads, self.checks = [], {}

    def on_train_start(self, trainer, pl_module):
        policy = {id(p) for p in pl_module.policy.parameters()}
        optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        reduced = {id(p) for p in trainer.strategy.model.parameters() if p.requires_grad}  # DDP's gradient buckets
        frozen = {id(p) for p in [*pl_module.reference.parameters(), *pl_module.env.prophet.parameters()]}
        self.checks = {"optimizer_is_policy": optimized == policy, "ddp_reduces_policy": reduced == policy,
                       "frozen_not_optimized": not (frozen & (optimized | reduced)),
                       "wrapped": type(trainer.strategy.model).__name__}  # fmt: skip

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for p in pl_module.policy.parameters() if p.requires_grad]
        self.grads.append(
            torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        )


def fit(data_dir: str, world: int, replay: RolloutBatch | None = None) -> tuple[Recording, RecordSteps, L.Trainer]:
    env = WorldModelEnv(tiny_prophet(), metaworld_stats(), num_prompts=P // world, group_size=G, max_segments=3,
                        num_steps=1, success_scorer=odd_episodes_succeed, success_k=1, seed=1)  # fmt: skip
    module = Recording(tiny_policy(["task of d"]), env, group_size=G, max_queries=3, action_target="unified",
                       action_stats=metaworld_stats(), action_dims=DIMS, minibatch_size=B, ppo_epochs=EPOCHS,
                       beta_kl=0.04, reward_model=varied_reward, step_grad_every=0, seed=SEED, replay=replay,
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))  # fmt: skip
    dm = PromptDataModule(datasets=[data_dir], eval_fraction=0.0, num_prompts=P, image_size=32, updates_per_epoch=1,
                          seed=2)  # fmt: skip
    steps = RecordSteps()
    strategy = {"strategy": "ddp", "devices": 2} if world == 2 else {"devices": 1}
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[steps],
                        enable_progress_bar=False, enable_model_summary=False, **strategy)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return module, steps, trainer


def side_by_side(parts: list[RolloutBatch]) -> RolloutBatch:
    """The processes' rollouts as one batch (process 0's rollouts first), padded to the longest with dead steps."""
    s = max(len(p.obs) for p in parts)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.zeros(s - len(x), *x.shape[1:], dtype=x.dtype)])

    obs = []
    for i in range(s):
        steps = [p.obs[min(i, len(p.obs) - 1)] for p in parts]
        obs.append({k: torch.cat([o[k] for o in steps]) if isinstance(steps[0][k], torch.Tensor)
                    else sum((list(o[k]) for o in steps), []) for k in steps[0]})  # fmt: skip
    return RolloutBatch(obs=obs, x_steps=torch.cat([pad(p.x_steps) for p in parts], 1),
                        log_probs=torch.cat([pad(p.log_probs) for p in parts], 1),
                        alive=torch.cat([pad(p.alive) for p in parts], 1),
                        rewards=torch.cat([p.rewards for p in parts]), success=torch.cat([p.success for p in parts]),
                        steps=torch.cat([p.steps for p in parts]), videos=None, info={})  # fmt: skip


@pytest.mark.slow
def test_two_ddp_processes_take_the_steps_and_gradients_of_one_process_on_the_same_global_batch(tmp_path):
    data = write_coded_dataset(tmp_path / "d", "d", episodes=6, per_shard=1, size=32)
    out = str(tmp_path / "ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    subprocess.run([sys.executable, __file__, out, data], check=True, env=env, timeout=300, cwd=tmp_path)
    ranks = [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["checks"]["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    assert all(r["checks"][k] for r in ranks for k in ("optimizer_is_policy", "ddp_reduces_policy",
                                                       "frozen_not_optimized"))  # fmt: skip
    # 1. each process rolled out its half of the update's prompts (whole groups), ending at different steps
    (frames0, r0), (frames1, r1) = ranks[0]["seen"][0], ranks[1]["seen"][0]
    assert r0.alive.shape[1] == r1.alive.shape[1] == P // 2 * G
    m0, m1 = int(r0.alive.sum()), int(r1.alive.sum())
    assert math.ceil(m0 / B) != math.ceil(m1 / B)  # per-process minibatches would run different step counts
    assert not torch.equal(r0.x_steps[0, :, 0], r1.x_steps[0, :, 0])  # each process draws its own sampler noise
    # 2. one process on the same prompts, replaying both processes' rollouts side by side
    both = side_by_side([r0, r1])
    single, steps, trainer = fit(data, world=1, replay=both)
    frames, _ = single.seen[0]
    assert all(torch.equal(a, b) for a, b in zip(frames, frames0 + frames1, strict=True))
    plans = [plan_minibatches(both.alive, r, P // 2 * G, B, EPOCHS, torch.Generator().manual_seed(
        stream_seed(SEED, 0, 1))) for r in range(2)]  # fmt: skip
    assert any(len(part) == 0 for plan in plans for parts in plan.parts for part in parts)  # a weight-0 member
    n_steps = EPOCHS * math.ceil((m0 + m1) / B)
    assert trainer.global_step == ranks[0]["global_step"] == ranks[1]["global_step"] == n_steps
    assert single.updates == ranks[0]["updates"] == 1 and single.env_steps_total == ranks[0]["env_steps_total"]
    # 3. the same gradients at every step (all-reduced: identical on both processes) and the same weights after
    assert len(steps.grads) == len(ranks[0]["grads"]) == len(ranks[1]["grads"]) == n_steps
    for g, g0, g1 in zip(steps.grads, ranks[0]["grads"], ranks[1]["grads"], strict=True):
        assert torch.equal(g0, g1) and g.abs().max() > 0
        torch.testing.assert_close(g0, g, rtol=1e-4, atol=1e-6)
    for k, v in single.policy.state_dict().items():
        torch.testing.assert_close(ranks[0]["policy"][k], v, rtol=1e-4, atol=1e-5)
    # 4. the frozen reference never trained, on either process
    for r in ranks:
        assert all(torch.equal(v, single.reference.state_dict()[k]) for k, v in r["reference"].items())
        assert r["reference_grads"] == 0


def _ddp_probe(out: str, data: str) -> None:
    """Run as a script by the test above: the 2-process CPU DDP (gloo) fit, recording each process's update."""
    module, steps, trainer = fit(data, world=2)
    torch.save({"seen": module.seen, "grads": steps.grads, "checks": steps.checks, "global_step": trainer.global_step,
                "updates": module.updates, "env_steps_total": module.env_steps_total,
                "policy": module.policy.state_dict(), "reference": module.reference.state_dict(),
                "reference_grads": sum(p.grad is not None for p in module.reference.parameters())},
               f"{out}.rank{trainer.global_rank}.pt")  # fmt: skip


if __name__ == "__main__":
    _ddp_probe(sys.argv[1], sys.argv[2])
