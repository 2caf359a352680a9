"""Behaviour cloning of the flow-matching policy (the SFT policy that FA-GRPO starts from and anchors to)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from lightning_prophrl import constants as K
from lightning_prophrl.checkpoints import build_optimizers, default_optimizer
from lightning_prophrl.models.policy import FlowMatchingPolicy


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by ``pad`` pixels and crop back at a random offset per image.

    Args:
        images: ``(B, C, H, W)``.
        pad: maximum shift in pixels (0 returns the input).
    """
    if pad <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    rows = torch.arange(h)[None, :] + off[:, :1]
    cols = torch.arange(w)[None, :] + off[:, 1:]
    idx_b = torch.arange(b)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


class PolicySFTModule(L.LightningModule):
    """Flow-matching behaviour cloning on ``PolicyDataModule`` batches.

    The policy's constructor arguments are kept in the hyper-parameters (``policy_config``), so
    ``PolicySFTModule.load_from_checkpoint(path)`` rebuilds the policy with no other argument (a policy with a custom
    backbone needs ``load_from_checkpoint(path, policy=...)``). The action statistics and dims are attached to the
    policy (``FlowMatchingPolicy.set_action_stats``) as soon as they are known, and with ``export_dir`` the trained
    policy is written there with ``save_pretrained`` when training ends (after an ``EMACallback(apply_at_end=True)``
    has copied its average in).

    Args:
        policy: the flow-matching policy (its ``forward(batch)`` returns the BC loss); None builds it from
            ``policy_config``.
        optimizer: optimizer factory (LightningCLI injects it; default Adam 3e-4, docs/results.md).
        lr_scheduler: optional scheduler factory.
        shift_pad: random-shift augmentation in pixels (+-4 at 64 px by default in the demo; 0 disables).
        action_stats: the ``stats.json`` content that normalized the demonstrations; stored in the checkpoint so
            that the policy's actions can be unnormalized wherever it is loaded.
        action_dims: the unified action dims the policy models (as in ``PolicyDataModule``).
        export_dir: directory the trained policy is written to (``save_pretrained``) at the end of ``fit``; None
            writes nothing.
        policy_config: the policy's constructor arguments (``FlowMatchingPolicy.config``); recorded from ``policy``
            and used only when ``policy`` is None (``load_from_checkpoint``).
        val_noise_seed: seeds the noise of the deterministic chunks behind ``val/action_mse`` (validation logs the
            flow loss ``val/loss`` and ``val/action_mse``, the squared error of the policy's ODE chunk against the
            recorded actions in normalized units).
    """

    def __init__(
        self,
        policy: FlowMatchingPolicy | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        shift_pad: int = 4,
        action_stats: dict[str, Any] | None = None,
        action_dims: list[int] | None = None,
        export_dir: str | None = None,
        policy_config: dict[str, Any] | None = None,
        val_noise_seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["policy", "optimizer", "lr_scheduler"])
        if policy is None:
            policy = policy_from_config(policy_config)
        self.hparams.policy_config = policy.config
        self.policy = policy
        self.optimizer_factory = default_optimizer(optimizer, torch.optim.Adam, lr=3e-4)
        self.scheduler_factory = lr_scheduler
        if action_stats is not None and action_dims is not None:
            policy.set_action_stats(action_stats, action_dims)

    @override
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.policy(batch)

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        if stage == "train":
            batch = {**batch, K.OBS_IMAGE: random_shift(batch[K.OBS_IMAGE], self.hparams.shift_pad)}
        loss, logs = self.policy(batch)
        if stage == "val":
            logs["action_mse"] = self._action_mse(batch)
        bs = batch[K.ACTIONS].shape[0]
        self.log_dict({f"{stage}/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=bs,
                      sync_dist=stage != "train")  # fmt: skip
        return loss

    @torch.no_grad()
    def _action_mse(self, batch: dict[str, Any]) -> torch.Tensor:
        """Squared error of the policy's deterministic chunk (ODE from a fixed noise per batch) against the recorded
        ``(B, C, D)`` actions, in normalized units, over the real action dims (``ACTION_MASK``): what the policy
        would do, where the flow loss measures only its velocity field."""
        target = batch[K.ACTIONS]
        generator = torch.Generator(device=target.device).manual_seed(self.hparams.val_noise_seed)
        pred = self.policy.predict_action_chunk(batch, generator=generator).to(target.dtype)
        sq_err = (pred - target) ** 2
        mask = batch.get(K.ACTION_MASK)
        if mask is None:
            return sq_err.mean()
        w = mask.to(sq_err.dtype)[:, None, :].expand_as(sq_err)
        return (sq_err * w).sum() / w.sum().clamp(min=1.0)

    @override
    def configure_optimizers(self) -> Any:
        return build_optimizers(self.policy.parameters(), self.optimizer_factory, self.scheduler_factory)

    @override
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.action_stats is None and dm is not None and getattr(dm, "train_set", None) is not None:
            self.hparams.action_stats = dm.train_set.stats[0].to_dict()
            self.hparams.action_dims = list(dm.action_dims)
        if self.hparams.action_stats is not None and self.hparams.action_dims is not None:
            norm_mode = getattr(getattr(dm, "hparams", None), "norm_mode", None) or "quantile"
            self.policy.set_action_stats(self.hparams.action_stats, self.hparams.action_dims, norm_mode)

    @override
    def on_train_end(self) -> None:
        if self.hparams.export_dir is not None and self.trainer.is_global_zero:
            self.policy.save_pretrained(self.hparams.export_dir)


def policy_from_config(policy_config: dict[str, Any] | None) -> FlowMatchingPolicy:
    """The policy of a ``PolicySFTModule`` rebuilt from its recorded ``policy_config``.

    Raises:
        ValueError: when there is no config, or it names a custom backbone (which cannot be rebuilt from a config).
    """
    if policy_config is None:
        raise ValueError("PolicySFTModule needs `policy` (or the `policy_config` a checkpoint records)")
    if policy_config.get("backbone") is not None:
        raise ValueError(
            f"the policy was trained with a custom backbone ({policy_config['backbone']}): pass the policy, e.g. "
            "PolicySFTModule.load_from_checkpoint(path, policy=FlowMatchingPolicy(..., backbone=...))"
        )
    return FlowMatchingPolicy.from_config(policy_config)
