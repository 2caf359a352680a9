"""FA-GRPO (+ FlowScale) policy optimization against any batched environment (the paper's method).

One ``training_step`` is one RL update (``self.updates`` counts them; ``trainer.global_step`` counts optimizer steps,
``ppo_epochs`` x minibatches per update, so bound runs with ``max_epochs`` x ``PromptDataModule.updates_per_epoch``):

1. the P prompts of the batch are reset into ``env`` (G rollouts each, all from the same initial state);
2. the policy runs closed-loop with the SDE sampler (no grad), recording every flow step;
3. trajectory rewards (the env's success by default, or a reward model) -> group-normalized advantages, broadcast
   over the executed chunk positions of every query while the rollout was alive;
4. ``ppo_epochs`` passes over shuffled minibatches of the recorded queries: per-step log-probs recomputed in one
   batched forward, FA-GRPO (or the Flow-GRPO baseline) with optional FlowScale, plus ``beta_kl`` x KL to the
   frozen SFT policy; gradient clipping and an optimizer step per minibatch.

Non-finite values never reach the weights: the rollouts' observations, behaviour log-probs and rewards, the loss and
the gradient norm are checked before they are used (``lightning_prophrl.rl.nonfinite``); ``on_nonfinite`` chooses
between stopping with an error that names the offender and skipping the update.

The behaviour log-probs are recomputed with the same minibatch partition as the first epoch just before the update, so
the importance ratio of the first minibatch is exactly 1; the gap to the log-probs recorded while sampling is logged as
``train/sampler_mismatch``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_prophrl import constants as K
from lightning_prophrl.checkpoints import load_submodule_weights
from lightning_prophrl.envs.base import BatchedEnvBase
from lightning_prophrl.envs.rollout import ActionDecoder, RolloutBatch, collect_rollouts
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.rl import (
    NonFiniteError,
    check_rollouts,
    fa_grpo_loss,
    flow_grpo_loss,
    flowscale_weights,
    gaussian_mean_kl,
    group_advantages,
    kl_k3,
    masked_mean,
)


def load_policy_weights(policy: torch.nn.Module, checkpoint: str) -> dict[str, Any]:
    """Load ``policy.*`` weights from a ``PolicySFTModule`` (or ``FAGRPOModule``) checkpoint; returns its
    hyper-parameters."""
    return load_submodule_weights(policy, checkpoint, "policy")


def policy_from_dir(
    policy_dir: str, policy: FlowMatchingPolicy | None = None
) -> tuple[FlowMatchingPolicy, dict[str, Any]]:
    """The policy of a ``save_pretrained`` directory and what the directory says about its actions (``norm_mode``,
    and ``action_stats`` as a dict and ``action_dims`` when it has them). Without ``policy`` it is rebuilt with
    ``FlowMatchingPolicy.from_pretrained``; with one, the directory's weights are loaded into it (a different
    architecture fails to load, naming the mismatched weights)."""
    from safetensors.torch import load_model

    from lightning_prophrl.models.policy import POLICY_WEIGHTS_FILE, load_policy_meta

    meta = load_policy_meta(policy_dir)
    if "action_stats" in meta:
        meta["action_stats"] = meta["action_stats"].to_dict()
    if policy is None:
        return FlowMatchingPolicy.from_pretrained(policy_dir), meta
    weights = Path(policy_dir) / POLICY_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the saved policy {policy_dir} has no weights")
    load_model(policy, str(weights), strict=True, device="cpu")
    return policy, meta


class FAGRPOModule(L.LightningModule):
    """FA-GRPO with FlowScale, trained against a ``BatchedEnv`` (simulator or world model).

    The policy and the frozen reference start from the same weights: the given ``policy``'s, those of
    ``sft_checkpoint``, or a saved policy directory (``policy_dir``, ``FlowMatchingPolicy.save_pretrained``), which
    also carries the action statistics and dims. The environment must run ``group_size`` rollouts per prompt, and the
    prompt datamodule must give as many prompts per batch as the environment takes (checked at fit start, naming both
    config keys).

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
        minibatch_size: policy queries per minibatch (UNKNOWN; 256).
        max_grad_norm: gradient clipping.
        noise_level: SDE noise level ``a`` for rollouts (default: the policy's).
        reward_model: optional callable ``RolloutBatch -> (N,) rewards``; default the env's success.
        optimizer: optimizer factory (default Adam 3e-5, the stable learning rate of docs/results.md).
        step_grad_every: every this many updates, log the gradient norm contributed by each flow step (K extra
            backward passes on one minibatch; 0 disables).
        seed: seeds the sampler noise of the rollouts.
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
        optimizer: OptimizerCallable = lambda p: torch.optim.Adam(p, lr=3e-5),
        step_grad_every: int = 10,
        seed: int = 0,
        export_dir: str | None = None,
        on_nonfinite: Literal["raise", "skip"] = "raise",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["policy", "env", "reward_model", "optimizer"])
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
        self.policy, self.env, self.reward_model = policy, env, reward_model
        self.optimizer_factory = optimizer
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
        self.generator = torch.Generator().manual_seed(seed)
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
        err = None
        try:
            rollouts = self.rollout(prompts)
            check_rollouts(rollouts.obs, rollouts.log_probs, rollouts.alive, rollouts.rewards)
        except NonFiniteError as e:
            err = e
        self._agree_on_nonfinite(err)
        adv = group_advantages(rollouts.rewards, h.group_size)  # (N,)
        data = self._flatten(rollouts, adv)
        stats = self._ppo_update(data)
        zero_var = (rollouts.rewards.view(-1, h.group_size).std(1) == 0).float().mean()
        self.updates += 1
        self.env_steps_total += int(rollouts.steps.sum())
        self.episodes_total += int(rollouts.rewards.numel())
        logs = {
            "rollout/reward_mean": rollouts.rewards.mean(),
            "rollout/success_rate": rollouts.success.mean(),
            "rollout/zero_var_groups": zero_var,
            "rollout/episode_steps": rollouts.steps.float().mean(),
            "rollout/queries": torch.tensor(float(data["adv"].numel())),
            "rollout/env_steps_total": torch.tensor(float(self.env_steps_total)),
            "rollout/updates": torch.tensor(float(self.updates)),
            "train/nonfinite_skips": torch.tensor(float(self.nonfinite_skips)),
            **{k: torch.as_tensor(v, dtype=torch.float32) for k, v in rollouts.info.items() if np.isscalar(v)},
            **agreement_logs(rollouts.info),
            **stats,
        }
        self.log_dict(logs, prog_bar=False, batch_size=1)
        self.log("rollout/success", rollouts.success.mean(), prog_bar=True, batch_size=1)

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

    def _flatten(self, r: RolloutBatch, adv: torch.Tensor) -> dict[str, Any]:
        """Keep the (step, rollout) queries made while the rollout was alive."""
        s_idx, n_idx = r.alive.nonzero(as_tuple=True)
        obs: dict[str, Any] = {}
        for key in r.obs[0]:
            vals = [r.obs[s][key] for s in range(len(r.obs))]
            if isinstance(vals[0], torch.Tensor):
                obs[key] = torch.stack(vals)[s_idx, n_idx]
            else:
                obs[key] = [vals[s][n] for s, n in zip(s_idx.tolist(), n_idx.tolist())]
        return {
            "obs": obs,
            "x_steps": r.x_steps[s_idx, n_idx],
            "sampled_log_probs": r.log_probs[s_idx, n_idx],
            "adv": adv[n_idx],
        }

    # 2. PPO epochs -------------------------------------------------------------------------------------------------
    def _ppo_update(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        h = self.hparams
        opt = self.optimizers()
        m = data["adv"].numel()
        c = self.policy.chunk_len
        chunk_mask = (torch.arange(c) < self.policy.exec_horizon).float().to(self.device)  # only executed actions
        weights = None
        if h.flowscale:
            sigma2 = self.policy.step_sigma2(noise_level=h.noise_level).to(self.device)
            weights = flowscale_weights(sigma2, h.flowscale_p, h.flowscale_alpha, h.flowscale_w_min, h.flowscale_w_max,
                                        h.flowscale_eps, mask=sigma2 > 0)  # fmt: skip
        perms = [torch.randperm(m, generator=self.generator) for _ in range(h.ppo_epochs)]
        mbs = [perms[0][i : i + h.minibatch_size] for i in range(0, m, h.minibatch_size)]
        with torch.no_grad():  # behaviour log-probs, same partition as the first epoch (ratio exactly 1 at start)
            old = torch.empty_like(data["sampled_log_probs"])
            for idx in mbs:
                old[idx] = self.policy.log_prob(self._take(data["obs"], idx), data["x_steps"][idx].to(self.device),
                                                noise_level=h.noise_level).cpu()  # fmt: skip
        logs: dict[str, list[float]] = {}
        if bool((data["adv"] == 0).all()):
            return {"train/skipped_update": torch.tensor(1.0), "train/sampler_mismatch": self._mismatch(data, old)}
        first = True
        for epoch, perm in enumerate(perms):
            for i in range(0, m, h.minibatch_size):
                idx = perm[i : i + h.minibatch_size]
                try:
                    stats = self._minibatch_step(
                        data, old, idx, chunk_mask, weights, opt, log_step_grads=first and epoch == 0
                    )
                except NonFiniteError as err:
                    raise NonFiniteError(f"PPO epoch {epoch}, minibatch {i // h.minibatch_size}: {err}") from err
                if first:
                    logs.setdefault("train/first_ratio_max_dev", []).append(stats.pop("ratio_dev"))
                stats.pop("ratio_dev", None)
                first = False
                for k, v in stats.items():
                    logs.setdefault(f"train/{k}", []).append(float(v))
        out = {k: torch.tensor(float(np.mean(v))) for k, v in logs.items()}
        out["train/ratio_min"] = torch.tensor(float(np.min(logs["train/ratio_min"])))
        out["train/ratio_max"] = torch.tensor(float(np.max(logs["train/ratio_max"])))
        out["train/skipped_update"] = torch.tensor(0.0)
        out["train/sampler_mismatch"] = self._mismatch(data, old)
        return out

    def _minibatch_step(self, data, old, idx, chunk_mask, weights, opt, log_step_grads: bool) -> dict[str, Any]:
        h = self.hparams
        obs = self._take(data["obs"], idx)
        x = data["x_steps"][idx].to(self.device)
        adv = data["adv"][idx].to(self.device)
        mask = chunk_mask[None].expand(len(idx), -1)
        new_lp, new_mean = self.policy.log_prob(obs, x, noise_level=h.noise_level, return_means=True)
        old_lp = old[idx].to(self.device)
        adv_c = adv[:, None].expand(-1, mask.shape[1])
        if h.loss == "fa_grpo":
            pg, st = fa_grpo_loss(new_lp, old_lp, adv_c, mask, h.eps_low, h.eps_high, weights, h.flowscale_mode)
        else:
            pg, st = flow_grpo_loss(new_lp, old_lp, adv_c, mask, h.eps_low, h.eps_high, weights)
        kl = torch.zeros((), device=self.device)
        if h.beta_kl > 0 or log_step_grads:
            with torch.no_grad():
                ref_lp, ref_mean = self.reference.log_prob(obs, x, noise_level=h.noise_level, return_means=True)
            m3 = mask[:, :, None].expand(-1, -1, new_lp.shape[-1])
            if h.kl_estimator == "k3":
                kl = masked_mean(kl_k3(new_lp.sum(1), ref_lp.sum(1)), m3)
            else:
                std = self.policy.step_sigma2(noise_level=h.noise_level).sqrt().to(self.device)
                kl = masked_mean(gaussian_mean_kl(new_mean, ref_mean, std).sum(1), m3)
        loss = pg + h.beta_kl * kl
        if not bool(torch.isfinite(loss)):
            raise NonFiniteError(f"the loss is non-finite: policy gradient {float(pg)} + beta_kl x KL {float(kl)}")
        step_norms = self._step_grad_norms(new_lp, loss) if log_step_grads and self._log_step_grads_now() else None
        opt.zero_grad()
        self.manual_backward(loss)
        gnorm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), h.max_grad_norm)
        if not bool(torch.isfinite(gnorm)):  # clipping scales a NaN gradient to NaN: never step with it
            opt.zero_grad()
            raise NonFiniteError(f"the policy's gradient norm is non-finite: {float(gnorm)} (before clipping)")
        opt.step()
        ratio_dev = float((torch.exp(new_lp.detach().sum(1) - old_lp.sum(1)) - 1).abs().max())
        out = {"loss": pg.detach(), "kl_ref": kl.detach(), "grad_norm": gnorm.detach(), "ratio_dev": ratio_dev,
               **{k: v for k, v in st.items()}}  # fmt: skip
        if step_norms is not None:
            for k, v in enumerate(step_norms):
                self.log(f"grad_step/k{k:02d}", v, batch_size=1)
        return out

    def _log_step_grads_now(self) -> bool:
        every = self.hparams.step_grad_every
        return every > 0 and self.updates % every == 0

    def _step_grad_norms(self, new_lp: torch.Tensor, loss: torch.Tensor) -> list[float]:
        """Norm of the parameter gradient contributed through each flow step k (FlowScale's effect)."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        (g_lp,) = torch.autograd.grad(loss, new_lp, retain_graph=True)
        norms = []
        for k in range(new_lp.shape[1]):
            grads = torch.autograd.grad((g_lp[:, k].detach() * new_lp[:, k]).sum(), params, retain_graph=True,
                                        allow_unused=True)  # fmt: skip
            norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None))))
        return norms

    @staticmethod
    def _mismatch(data: dict[str, Any], old: torch.Tensor) -> torch.Tensor:
        sampled = data["sampled_log_probs"]
        return (sampled.sum(1) - old.sum(1)).abs().max() if sampled.numel() else torch.tensor(0.0)

    def _take(self, obs: dict[str, Any], idx: torch.Tensor) -> dict[str, Any]:
        il = idx.tolist()
        return {
            k: (v[idx].to(self.device) if isinstance(v, torch.Tensor) else [v[i] for i in il]) for k, v in obs.items()
        }

    # 3. optimizer and state ----------------------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([p for p in self.policy.parameters() if p.requires_grad])

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rl_state"] = {
            "generator": self.generator.get_state(),
            "env_steps_total": self.env_steps_total,
            "episodes_total": self.episodes_total,
            "updates": self.updates,
            "nonfinite_skips": self.nonfinite_skips,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("rl_state")
        if state is not None:
            self.generator.set_state(state["generator"])
            self.env_steps_total, self.episodes_total = state["env_steps_total"], state["episodes_total"]
            self.updates = state["updates"]
            self.nonfinite_skips = state.get("nonfinite_skips", 0)


def agreement_logs(info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``rollout/draws_agree``: the share of rollouts whose world-model noise draws agree on success (present when the
    environment imagines several draws, ``WorldModelEnv(draws=D)``)."""
    agree = info.get("draws_agree")
    return {} if agree is None else {"rollout/draws_agree": torch.as_tensor(agree, dtype=torch.float32).mean()}


def prompts_from_batch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a collated prompt batch back into one dict per prompt."""
    n = len(batch[K.INSTRUCTION])
    return [{k: (v[i] if not isinstance(v, torch.Tensor) else v[i].cpu()) for k, v in batch.items()} for i in range(n)]
