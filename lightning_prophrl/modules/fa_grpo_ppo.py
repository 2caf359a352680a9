"""The PPO epochs of one FA-GRPO update: behaviour log-probs, then ``ppo_epochs`` passes over the minibatches of a
:class:`~lightning_prophrl.rl.MinibatchPlan` with FA-GRPO (or Flow-GRPO), FlowScale, KL to the reference, gradient
clipping and one optimizer step per minibatch.

Every process runs every minibatch of the plan, the same number on all of them: its part of the minibatch (its own
queries in it) with the plan's weight, or, when it has no query in the minibatch, one of its queries with weight 0,
so that it still joins DDP's gradient all-reduce. A non-finite loss on one process still goes through backward (as a
NaN), so that every process sees the same non-finite gradient norm and leaves the update together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_prophrl.modules.fa_grpo_batch import take_queries
from lightning_prophrl.rl import (
    MinibatchPlan,
    NonFiniteError,
    fa_grpo_loss,
    flow_grpo_loss,
    flowscale_weights,
    gaussian_mean_kl,
    kl_k3,
    masked_mean,
)


class PPOEpochsMixin:
    """The learning half of ``FAGRPOModule`` (a ``LightningModule`` with ``policy``, ``reference``, ``hparams``,
    ``updates``, manual optimization and one optimizer)."""

    def _ppo_update(self, data: dict[str, Any], plan: MinibatchPlan, skip: bool = False) -> dict[str, torch.Tensor]:
        """Run the plan's minibatches over this process's queries ``data`` (``flatten_queries``); ``skip`` (every
        advantage of the update is 0, on all processes) only logs the sampler mismatch."""
        h = self.hparams
        opt = self.optimizers()
        chunk_mask = (torch.arange(self.policy.chunk_len) < self.policy.exec_horizon).float().to(self.device)
        weights = None
        if h.flowscale:
            sigma2 = self.policy.step_sigma2(noise_level=h.noise_level).to(self.device)
            weights = flowscale_weights(sigma2, h.flowscale_p, h.flowscale_alpha, h.flowscale_w_min, h.flowscale_w_max,
                                        h.flowscale_eps, mask=sigma2 > 0)  # fmt: skip
        old = self._behaviour_log_probs(data, plan.parts[0])
        if skip:
            return {"train/skipped_update": torch.tensor(1.0), "train/sampler_mismatch": self._mismatch(data, old)}
        logs: dict[str, list[float]] = {}
        for epoch, parts in enumerate(plan.parts):
            for j, idx in enumerate(parts):
                real = len(idx) > 0
                try:
                    stats = self._minibatch_step(data, old, idx if real else torch.zeros(1, dtype=torch.long),
                                                 plan.scale(epoch, j), chunk_mask, weights, opt,
                                                 log_step_grads=real and epoch == 0 and j == 0)  # fmt: skip
                except NonFiniteError as err:
                    raise NonFiniteError(f"PPO epoch {epoch}, minibatch {j}: {err}") from err
                ratio_dev = stats.pop("ratio_dev")
                if not real:
                    continue
                if epoch == 0 and j == 0:
                    logs["train/first_ratio_max_dev"] = [ratio_dev]
                for k, v in stats.items():
                    logs.setdefault(f"train/{k}", []).append(float(v))
        out = {k: torch.tensor(float(np.mean(v))) for k, v in logs.items()}
        out["train/ratio_min"] = torch.tensor(float(np.min(logs["train/ratio_min"])))
        out["train/ratio_max"] = torch.tensor(float(np.max(logs["train/ratio_max"])))
        out["train/skipped_update"] = torch.tensor(0.0)
        out["train/sampler_mismatch"] = self._mismatch(data, old)
        return out

    @torch.no_grad()
    def _behaviour_log_probs(self, data: dict[str, Any], parts: list[torch.Tensor]) -> torch.Tensor:
        """``(M, K, C, D)`` log-probs of the recorded trajectories under the current weights, computed with the first
        epoch's partition so that the first minibatch's importance ratio is exactly 1."""
        old = torch.empty_like(data["sampled_log_probs"])
        for idx in parts:
            if len(idx):
                obs, x = take_queries(data["obs"], idx, self.device), data["x_steps"][idx].to(self.device)
                old[idx] = self.policy.log_prob(obs, x, noise_level=self.hparams.noise_level).cpu()
        return old

    def _minibatch_step(self, data, old, idx, scale, chunk_mask, weights, opt, log_step_grads: bool) -> dict[str, Any]:
        """One optimizer step on the queries ``idx`` whose mean loss is weighted by ``scale`` in the backward."""
        h = self.hparams
        obs = take_queries(data["obs"], idx, self.device)
        x = data["x_steps"][idx].to(self.device)
        new_lp, new_mean = self.policy.log_prob(obs, x, noise_level=h.noise_level, return_means=True)
        old_lp = old[idx].to(self.device)
        mask = chunk_mask[None].expand(len(idx), -1)
        err, st = None, {}
        try:
            pg, kl, st = self._objective(obs, x, new_lp, new_mean, old_lp, data["adv"][idx].to(self.device), mask,
                                         weights, need_ref=log_step_grads)  # fmt: skip
            loss = pg + h.beta_kl * kl
            if not bool(torch.isfinite(loss)):
                raise NonFiniteError(f"the loss is non-finite: policy gradient {float(pg)} + beta_kl x KL {float(kl)}")
        except NonFiniteError as e:  # still join the gradient all-reduce, with a gradient every process sees as NaN
            err, loss = e, new_lp.sum() * float("nan")
        step_norms = None
        if err is None and log_step_grads and self._log_step_grads_now():
            step_norms = self._step_grad_norms(new_lp, loss)
        opt.zero_grad()
        self.manual_backward(loss * scale)
        gnorm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), h.max_grad_norm)
        if err is None and not bool(torch.isfinite(gnorm)):  # clipping scales a NaN gradient to NaN: never step
            err = NonFiniteError(f"the policy's gradient norm is non-finite: {float(gnorm)} (before clipping)")
        if err is not None:
            opt.zero_grad()
            raise err
        opt.step()
        ratio_dev = float((torch.exp(new_lp.detach().sum(1) - old_lp.sum(1)) - 1).abs().max())
        if step_norms is not None:
            for k, v in enumerate(step_norms):
                self.log(f"grad_step/k{k:02d}", v, batch_size=1)
        return {"loss": pg.detach(), "kl_ref": kl.detach(), "grad_norm": gnorm.detach(), "ratio_dev": ratio_dev, **st}

    def _objective(self, obs, x, new_lp, new_mean, old_lp, adv, mask, weights, need_ref: bool):
        """The policy-gradient loss (FA-GRPO or Flow-GRPO), the KL to the reference and the loss statistics."""
        h = self.hparams
        adv_c = adv[:, None].expand(-1, mask.shape[1])
        if h.loss == "fa_grpo":
            pg, st = fa_grpo_loss(new_lp, old_lp, adv_c, mask, h.eps_low, h.eps_high, weights, h.flowscale_mode)
        else:
            pg, st = flow_grpo_loss(new_lp, old_lp, adv_c, mask, h.eps_low, h.eps_high, weights)
        kl = torch.zeros((), device=self.device)
        if h.beta_kl > 0 or need_ref:
            with torch.no_grad():
                ref_lp, ref_mean = self.reference.log_prob(obs, x, noise_level=h.noise_level, return_means=True)
            m3 = mask[:, :, None].expand(-1, -1, new_lp.shape[-1])
            if h.kl_estimator == "k3":
                kl = masked_mean(kl_k3(new_lp.sum(1), ref_lp.sum(1)), m3)
            else:
                std = self.policy.step_sigma2(noise_level=h.noise_level).sqrt().to(self.device)
                kl = masked_mean(gaussian_mean_kl(new_mean, ref_mean, std).sum(1), m3)
        return pg, kl, st

    def _log_step_grads_now(self) -> bool:
        every = self.hparams.step_grad_every
        return every > 0 and self.updates % every == 0

    def _step_grad_norms(self, new_lp: torch.Tensor, loss: torch.Tensor) -> list[float]:
        """Norm of the parameter gradient contributed through each flow step k (FlowScale's effect), on this
        process's part of the minibatch."""
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
