"""FA-GRPO (+ FlowScale) policy optimization against any batched environment (the paper's method).

One ``training_step`` is one RL update (``self.updates`` counts them; ``trainer.global_step`` counts optimizer steps,
``ppo_epochs`` x minibatches per update, so bound runs with ``max_epochs`` x ``PromptDataModule.updates_per_epoch``):

1. the P prompts of the batch are reset into ``env`` (G rollouts each, all from the same initial state);
2. the policy runs closed-loop with the SDE sampler (no grad), recording every flow step;
3. trajectory rewards (the env's success by default, or a reward model) -> group-normalized advantages, broadcast
   over the executed chunk positions of every query while the rollout was alive;
4. ``ppo_epochs`` passes over shuffled minibatches of the recorded queries: per-step log-probs recomputed in one
   batched forward, FA-GRPO (or the Flow-GRPO baseline) with optional FlowScale, plus ``beta_kl`` x KL to the
   frozen SFT policy; gradient clipping and an optimizer step per minibatch (``modules.fa_grpo_ppo``).

Non-finite values never reach the weights: the rollouts' observations, behaviour log-probs and rewards, the loss and
the gradient norm are checked before they are used (``lightning_prophrl.rl.nonfinite``); ``on_nonfinite`` chooses
between stopping with an error that names the offender and skipping the update.

The behaviour log-probs are recomputed with the same minibatch partition as the first epoch just before the update, so
the importance ratio of the first minibatch is exactly 1; the gap to the log-probs recorded while sampling is logged as
``train/sampler_mismatch``.

Under DDP each process rolls out its share of the update's prompts (whole groups, ``PromptSampler``) in its own
environment on its own device. One all-gather per update shares the rollouts' alive masks, rewards, success and steps
(``fa_grpo_batch.gather_rollouts``): the minibatches are drawn over the queries of all processes
(``rl.sharding``), so every process runs the same number of optimizer steps, and the averaged gradient of a
minibatch is the gradient of its mean loss, whatever the number of processes. The ``rollout/*`` metrics and the
counters (``env_steps_total``, ``episodes_total``) are those of the whole update; the ``train/*`` metrics are the
logging process's part. Only the policy is trained: the reference policy has no gradient (DDP reduces, and the
optimizer holds, the policy's parameters only), and the environment's and the reward model's networks are not
submodules (not in checkpoints, DDP or the optimizer) but follow every ``.to(device / dtype)`` of the module
(``modules.placement``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prophrl.checkpoints import default_optimizer
from lightning_prophrl.envs.base import BatchedEnvBase
from lightning_prophrl.envs.rollout import ActionDecoder, RolloutBatch, collect_rollouts
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.modules.fa_grpo_batch import (
    agreement_logs,
    flatten_queries,
    gather_rollouts,
    prompts_from_batch,
    take_queries,
)
from lightning_prophrl.modules.fa_grpo_ppo import PPOEpochsMixin
from lightning_prophrl.modules.placement import held_modules
from lightning_prophrl.modules.policy_loading import load_policy_weights, policy_from_dir
from lightning_prophrl.rl import NonFiniteError, check_rollouts, group_advantages, plan_minibatches, stream_seed

__all__ = [
    "FAGRPOModule",
    "agreement_logs",
    "flatten_queries",
    "load_policy_weights",
    "policy_from_dir",
    "prompts_from_batch",
    "take_queries",
]

_ROLLOUT_STREAM, _SHUFFLE_STREAM = 0, 1  # stream keys of rl.stream_seed


def check_settings(env: Any, group_size: int, max_queries: int, ppo_epochs: int, minibatch_size: int, loss: str,
                   on_nonfinite: str, sft_checkpoint: str | None, policy_dir: str | None) -> None:  # fmt: skip
    """Reject ``FAGRPOModule`` settings that cannot train, naming the argument (and config key) to change."""
    for name, value in (("group_size", group_size), ("max_queries", max_queries), ("ppo_epochs", ppo_epochs),
                        ("minibatch_size", minibatch_size)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if loss not in ("fa_grpo", "flow_grpo"):
        raise ValueError(f"loss must be 'fa_grpo' or 'flow_grpo', got {loss!r}")
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    if env is None:
        raise ValueError("FAGRPOModule needs `env` (the batched environment the policy is trained in)")
    env_group = getattr(env, "group_size", group_size)
    if env_group != group_size:
        raise ValueError(f"model.init_args.group_size={group_size} differs from the environment's group size "
                         f"model.init_args.env.init_args.group_size={env_group}: set both to the same value")  # fmt: skip
    if sft_checkpoint is not None and policy_dir is not None:
        raise ValueError("pass either `sft_checkpoint` or `policy_dir` to initialise the policy, not both")


class FAGRPOModule(PPOEpochsMixin, L.LightningModule):
    """FA-GRPO with FlowScale, trained against a ``BatchedEnv`` (simulator or world model).

    The policy and the frozen reference start from the same weights: the given ``policy``'s, those of
    ``sft_checkpoint``, or a saved policy directory (``policy_dir``, ``FlowMatchingPolicy.save_pretrained``), which
    also carries the action statistics and dims. The environment must run ``group_size`` rollouts per prompt, and the
    prompt datamodule must give as many prompts per batch as the environment takes (checked at fit start, naming both
    config keys). The environment's and the reward model's networks follow the module's device and dtype (see the
    module docstring) without being part of its state.

    Args:
        policy: the flow-matching policy being optimized; None: ``FlowMatchingPolicy.from_pretrained(policy_dir)``.
        env: the batched environment (``MetaWorldEnv``, ``WorldModelEnv``, ...): ``num_envs = P * G``.
        group_size: G rollouts per prompt (not given by the paper; 8 measured, docs/results.md); must equal
            ``env.group_size``.
        max_queries: policy queries per episode (horizon in chunks).
        sft_checkpoint: SFT Lightning checkpoint whose ``policy.*`` weights (and action statistics) initialise both
            the policy and the frozen reference.
        policy_dir: a ``save_pretrained`` policy directory (e.g. ``PolicySFTModule(export_dir=...)``) that
            initialises both the policy and the frozen reference, the alternative to ``sft_checkpoint``. Without
            ``policy`` the policy is rebuilt from the directory (constructor arguments included); with ``policy`` the
            directory's weights are loaded into it (same architecture).
        action_stats: ``stats.json`` content that normalized the policy's actions (default: from ``sft_checkpoint``
            or ``policy_dir``).
        action_dims: unified dims the policy models (default: from ``sft_checkpoint`` or ``policy_dir``).
        action_target: what the env executes: ``metaworld`` 4-D raw actions or ``unified`` 14-D raw actions.
        loss: ``fa_grpo`` (one ratio per action element) or ``flow_grpo`` (the per-step-ratio baseline).
        flowscale: apply FlowScale weights.
        flowscale_mode: ``rescale_grad`` (FlowScale option A) or ``per_step_adv`` (option B).
        flowscale_p, flowscale_alpha, flowscale_w_min, flowscale_w_max, flowscale_eps: the weights' parameters.
        eps_low: lower clip (not given by the paper; 0.2 measured, docs/results.md).
        eps_high: upper clip (not given by the paper; 0.2, symmetric by default; DAPO-style 0.28 is a common choice).
        beta_kl: weight of the KL to the SFT policy (not given by the paper; 0.0 in the simulator, 0.04 inside
            Prophet, docs/results.md).
        kl_estimator: ``k3`` (sampled, per element, summed over flow steps) or ``gaussian_mean`` (closed form per step).
        ppo_epochs: passes over the rollouts per update (UNKNOWN; 2).
        minibatch_size: policy queries per minibatch, over all processes (UNKNOWN; 256).
        max_grad_norm: gradient clipping.
        noise_level: SDE noise level ``a`` for rollouts (default: the policy's).
        reward_model: optional callable ``RolloutBatch -> (N,) rewards`` (``collect_rollouts``' ``reward_fn``);
            default the env's success. Video reward models (``models.reward.RewardModel``: ``ClassifierReward``,
            ``VLMJudgeReward``) take ``(videos, instructions, lengths)``: wrap them in ``RolloutReward``. Other
            rewards: ``SimulatorOracle``, ``envs.world_model.graded_reward`` / ``draws_reward`` (options bound with
            ``functools.partial``). A reward model that is an ``nn.Module`` is frozen (``requires_grad_(False)``): RL
            never trains it.
        optimizer: optimizer factory (None: Adam 3e-5, the stable learning rate of docs/results.md).
        step_grad_every: every this many updates, log the gradient norm contributed by each flow step (K extra
            backward passes on one minibatch; 0 disables).
        seed: seeds the sampler noise of the rollouts (update ``u``, counting skipped ones, on process ``r`` draws
            from its own stream, ``rl.stream_seed(seed, u, 0, r)``) and the minibatch shuffles
            (``stream_seed(seed, u, 1)``, the same on every process).
        export_dir: directory the optimized policy is written to (``save_pretrained``, with its action statistics)
            at the end of ``fit``; None writes nothing.
        on_nonfinite: what a NaN or inf in an update's observations, behaviour log-probs, rewards, loss or gradient
            norm does: ``raise`` (default) stops with a ``NonFiniteError`` naming the update, rollout, step and key;
            ``skip`` drops the rest of that update (no optimizer step reads the value, so the weights stay finite),
            counts it in ``nonfinite_skips`` (logged as ``train/nonfinite_skips``, in the checkpoint) and warns.
            A gradient that turns non-finite in a later minibatch keeps the earlier minibatches' (finite) steps.
    """

    def __init__(
        self,
        policy: FlowMatchingPolicy | None = None,
        env: BatchedEnvBase | None = None,
        group_size: int = 8,
        max_queries: int = 38,
        sft_checkpoint: str | None = None,
        policy_dir: str | None = None,
        action_stats: dict[str, Any] | None = None,
        action_dims: list[int] | None = None,
        action_target: Literal["metaworld", "unified"] = "metaworld",
        loss: Literal["fa_grpo", "flow_grpo"] = "fa_grpo",
        flowscale: bool = True,
        flowscale_mode: Literal["rescale_grad", "per_step_adv"] = "rescale_grad",
        flowscale_p: float = 0.5,
        flowscale_alpha: float = 0.1,
        flowscale_w_min: float = 0.1,
        flowscale_w_max: float = 3.0,
        flowscale_eps: float = 1e-8,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        beta_kl: float = 0.0,
        kl_estimator: Literal["k3", "gaussian_mean"] = "k3",
        ppo_epochs: int = 2,
        minibatch_size: int = 256,
        max_grad_norm: float = 1.0,
        noise_level: float | None = None,
        reward_model: Callable[[RolloutBatch], torch.Tensor] | None = None,
        optimizer: OptimizerCallable | None = None,
        step_grad_every: int = 10,
        seed: int = 0,
        export_dir: str | None = None,
        on_nonfinite: Literal["raise", "skip"] = "raise",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["policy", "env", "reward_model", "optimizer"])
        check_settings(env, group_size, max_queries, ppo_epochs, minibatch_size, loss, on_nonfinite, sft_checkpoint,
                       policy_dir)  # fmt: skip
        self.automatic_optimization = False
        norm_mode = "quantile"
        if policy_dir is not None:
            policy, meta = policy_from_dir(policy_dir, policy)
            action_stats = action_stats or meta.get("action_stats")
            action_dims = action_dims or meta.get("action_dims")
            norm_mode = meta.get("norm_mode", norm_mode)
            self.hparams.action_stats, self.hparams.action_dims = action_stats, action_dims
        if policy is None:
            raise ValueError("FAGRPOModule needs `policy` or `policy_dir` (a save_pretrained policy directory)")
        if isinstance(reward_model, torch.nn.Module):
            reward_model.requires_grad_(False)
        self.policy, self.env, self.reward_model = policy, env, reward_model
        self.optimizer_factory = default_optimizer(optimizer, torch.optim.Adam, lr=3e-5)
        if sft_checkpoint is not None:
            hp = load_policy_weights(policy, sft_checkpoint)
            action_stats = action_stats or hp.get("action_stats")
            action_dims = action_dims or hp.get("action_dims")
            self.hparams.action_stats, self.hparams.action_dims = action_stats, action_dims
        if action_stats is None or action_dims is None:
            raise ValueError("action_stats and action_dims are needed (pass them, or an sft_checkpoint or policy_dir "
                             "that has them)")  # fmt: skip
        policy.set_action_stats(action_stats, action_dims, norm_mode)
        self.decoder = ActionDecoder(action_stats, action_dims, target=action_target, norm_mode=norm_mode)
        self.reference = copy.deepcopy(policy).requires_grad_(False).eval()
        self.generator = torch.Generator().manual_seed(stream_seed(seed, 0, _ROLLOUT_STREAM, 0))  # reseeded per update
        self.env_steps_total = 0
        self.episodes_total = 0
        self.updates = 0  # RL updates done (trainer.global_step counts optimizer steps: ppo_epochs x minibatches)
        self.nonfinite_skips = 0  # updates skipped for a non-finite value (on_nonfinite="skip")

    @override
    def forward(self, obs: dict[str, Any]) -> torch.Tensor:
        return self.policy.predict_action_chunk(obs)

    @override
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        dm_prompts = getattr(getattr(dm, "hparams", None), "num_prompts", None)
        env_prompts = getattr(self.env, "num_prompts", None)
        if dm_prompts is None or env_prompts is None:
            return
        per_rank = getattr(dm, "prompts_per_rank", dm_prompts)  # PromptDataModule: this process's share of a batch
        if per_rank != env_prompts:
            world = self.trainer.world_size
            share = f" ({per_rank} per process on {world} processes)" if world > 1 else ""
            raise ValueError(f"data.init_args.num_prompts={dm_prompts}{share} differs from the environment's "
                             f"model.init_args.env.init_args.num_prompts={env_prompts}: every process resets its "
                             f"prompts of a batch into its environment at once, set the environment's to "
                             f"{per_rank}")  # fmt: skip

    @override
    def on_train_end(self) -> None:
        if self.hparams.export_dir is not None and self.trainer.is_global_zero:
            self.policy.save_pretrained(self.hparams.export_dir)

    # 1. one RL update ----------------------------------------------------------------------------------------------
    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        try:
            self._update(prompts_from_batch(batch))
        except NonFiniteError as err:
            if self.hparams.on_nonfinite == "raise":
                hint = "model.init_args.on_nonfinite=skip skips such updates instead"
                raise NonFiniteError(f"RL update {self.updates + 1} (batch {batch_idx}): {err}; {hint}") from err
            self._skip_nonfinite(err, batch_idx)

    def _update(self, prompts: list[dict[str, Any]]) -> None:
        h = self.hparams
        rank, world = self._rank_and_world()
        self._seed_streams(rank)
        err = None
        try:
            rollouts = self.rollout(prompts)
            check_rollouts(rollouts.obs, rollouts.log_probs, rollouts.alive, rollouts.rewards)
        except NonFiniteError as e:
            err = e
        self._agree_on_nonfinite(err)
        every = gather_rollouts(rollouts, h.max_queries, rank, world, self._all_gather)
        data = flatten_queries(rollouts, group_advantages(rollouts.rewards, h.group_size))
        shuffle = torch.Generator().manual_seed(stream_seed(h.seed, self._attempt, _SHUFFLE_STREAM))
        plan = plan_minibatches(every.alive, rank, every.rollouts_per_rank, h.minibatch_size, h.ppo_epochs, shuffle)
        stats = self._ppo_update(data, plan, skip=bool((every.advantages(h.group_size) == 0).all()))
        self.updates += 1
        self.env_steps_total += int(every.steps.sum())
        self.episodes_total += int(every.rewards.numel())
        logs = {
            **every.logs(h.group_size),
            "rollout/env_steps_total": torch.tensor(float(self.env_steps_total)),
            "rollout/updates": torch.tensor(float(self.updates)),
            "train/nonfinite_skips": torch.tensor(float(self.nonfinite_skips)),
            **{k: torch.as_tensor(v, dtype=torch.float32) for k, v in rollouts.info.items() if np.isscalar(v)},
            **agreement_logs(rollouts.info),
            **stats,
        }
        self.log_dict(logs, prog_bar=False, batch_size=1)
        self.log("rollout/success", logs["rollout/success_rate"], prog_bar=True, batch_size=1)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (0, 1) if trainer is None else (int(getattr(trainer, "global_rank", 0)), int(trainer.world_size))

    def _all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.all_gather(x.to(self.device))

    @property
    def _attempt(self) -> int:
        """Index of the current update among all updates tried (skipped ones too): the key of its random streams."""
        return self.updates + self.nonfinite_skips

    def _seed_streams(self, rank: int) -> None:
        """The rollout noise of this update on this process: the policy sampler's stream and, for an environment
        that samples (``WorldModelEnv.reseed``), the environment's stream of the same update and process."""
        self.generator = torch.Generator().manual_seed(stream_seed(self.hparams.seed, self._attempt, _ROLLOUT_STREAM,
                                                                   rank))  # fmt: skip
        reseed = getattr(self.env, "reseed", None)
        if callable(reseed):
            reseed(self._attempt, rank)

    def _agree_on_nonfinite(self, err: NonFiniteError | None) -> None:
        """Raise ``err`` on this process, and under DDP on every process when any process's rollouts were
        non-finite: all of them then skip (or stop) together, and none waits in a collective the others left."""
        world = self._trainer.world_size if self._trainer is not None else 1
        if world > 1:
            flag = torch.tensor(float(err is not None), device=self.device)
            bad = self.trainer.strategy.reduce(flag, reduce_op="sum")
            if err is None and float(bad) > 0:
                err = NonFiniteError(f"the rollouts of {int(bad)} other process(es) of {world} were non-finite")
        if err is not None:
            raise err

    def _skip_nonfinite(self, err: NonFiniteError, batch_idx: int) -> None:
        """``on_nonfinite="skip"``: drop the update's gradients, count and log the skip, warn with the cause."""
        for p in self.policy.parameters():
            p.grad = None
        self.nonfinite_skips += 1
        rank_zero_warn(f"FAGRPOModule skipped RL update {self.updates + 1} (batch {batch_idx}; "
                       f"{self.nonfinite_skips} skipped so far): {err}")  # fmt: skip
        self.log_dict({"train/nonfinite_skips": float(self.nonfinite_skips), "train/skipped_update": 1.0},
                      batch_size=1)  # fmt: skip

    def rollout(self, prompts: list[dict[str, Any]]) -> RolloutBatch:
        """G SDE rollouts per prompt with the current policy (no grad)."""
        self.policy.eval()
        try:
            return collect_rollouts(
                self.policy, self.env, prompts, self.decoder, self.hparams.max_queries, mode="sde",
                noise_level=self.hparams.noise_level, generator=self.generator, reward_fn=self.reward_model,
                device=self.device,
            )  # fmt: skip
        finally:
            self.policy.train()

    # 2. optimizer, placement and state -----------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.policy.parameters() if p.requires_grad])

    @override
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> FAGRPOModule:
        """Every device or dtype conversion of the module (``to``, ``cuda``, ``double``, Lightning's placement and
        precision) also converts the networks the environment and the reward model hold (``held_modules``)."""
        super()._apply(fn, recurse)
        own = {id(m) for m in self.modules()}
        for net in held_modules(getattr(self, "env", None), getattr(self, "reward_model", None)):
            if id(net) not in own:
                net._apply(fn)
        return self

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rl_state"] = {
            "env_steps_total": self.env_steps_total,
            "episodes_total": self.episodes_total,
            "updates": self.updates,
            "nonfinite_skips": self.nonfinite_skips,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rl_state")
        if state is not None:  # the random streams depend on (seed, update, process) only: nothing else to restore
            self.env_steps_total, self.episodes_total = state["env_steps_total"], state["episodes_total"]
            self.updates = state["updates"]
            self.nonfinite_skips = state.get("nonfinite_skips", 0)
