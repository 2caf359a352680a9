"""Guards for RL inside a world model: imagined vs real success side by side, with early stopping on divergence.

Imagined success can run away from real success during RL inside a world model (reward hacking of world-model
artifacts). Every ``every_n_updates`` RL updates this callback runs the current policy (ODE, matched noise) from the
same held-out check states in the real simulator and in the world model, logs both, counts the real interactions it
used, and stops training when imagined success exceeds real success by ``max_gap`` at ``patience`` consecutive checks.
With ``keep_best`` the policy ends training with the weights of its best real check: RL inside a world model can
climb and then fade while imagined success stays high, and the real checks see it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_prophrl.callbacks._history import RealStepsHistory
from lightning_prophrl.callbacks.rollout_video import log_video, side_by_side, video_to_uint8
from lightning_prophrl.envs.agreement import closed_loop_agreement
from lightning_prophrl.envs.rollout import ActionDecoder


class ImaginationGuardCallback(RealStepsHistory):
    """Imagined-vs-real check of an ``FAGRPOModule`` whose ``env`` is a ``WorldModelEnv``.

    Args:
        task: real simulator task of the checks.
        check_seeds: held-out initial states of the checks (disjoint from evaluation seeds; 30+ recommended, since 10
            seeds is too noisy to select checkpoints).
        every_n_updates: check period in RL updates (and once before the first update).
        max_gap: imagined minus real success that counts as divergence.
        patience: consecutive divergent checks before stopping.
        image_size, camera, max_steps: the real check environment (as ``MetaWorldEnv``).
        history_path: JSON-lines file of the checks.
        max_segments: horizon of the imagined check episodes (None: the training environment's); training on short
            branches (``PromptDataModule(branch_every=...)``) still checks whole episodes against the simulator.
        log_videos: check episodes logged to TensorBoard at every check, real (left) and imagined (right) side by
            side (``guard/real_vs_imagined``; 0: none).
        keep_best: keep a copy of the policy's weights at the check with the highest real success so far (the earlier
            one on ties, the check before the first update included) and load it into the policy when training ends;
            ``best_update`` says which, and ``last_weights`` holds the weights training ended with (None when they
            are the kept ones). The copy is in the callback's checkpoint state, so a resumed run keeps it.
    """

    def __init__(
        self,
        task: str = "pick-place-v3",
        check_seeds: list[int] | None = None,
        every_n_updates: int = 10,
        max_gap: float = 0.4,
        patience: int = 2,
        image_size: int = 64,
        camera: str = "workspace",
        max_steps: int = 150,
        history_path: str | None = None,
        max_segments: int | None = None,
        log_videos: int = 2,
        keep_best: bool = False,
    ):
        super().__init__(history_path)
        self.log_videos = log_videos
        self.keep_best = keep_best
        self.best_success: float | None = None
        self.best_update: int | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self.last_weights: dict[str, torch.Tensor] | None = None
        self.last_video: torch.Tensor | None = None
        self.max_segments = max_segments
        self.task = task
        self.check_seeds = list(check_seeds) if check_seeds is not None else list(range(4000, 4030))
        self.every_n_updates, self.max_gap, self.patience = every_n_updates, max_gap, patience
        self.env_kwargs = {"image_size": image_size, "camera": camera, "max_steps": max_steps}
        self._envs: tuple[Any, Any] | None = None

    def _build(self, pl_module: L.LightningModule) -> tuple[Any, Any]:
        from lightning_prophrl.envs.metaworld import MetaWorldEnv
        from lightning_prophrl.envs.world_model import WorldModelEnv

        wm = pl_module.env
        n = len(self.check_seeds)
        real = MetaWorldEnv(self.task, num_prompts=n, group_size=1, exec_horizon=pl_module.policy.exec_horizon,
                            **self.env_kwargs)  # fmt: skip
        # the same imagination as training: sampling, success rule and scorer, state rule, action-frame targets
        world = WorldModelEnv(wm.prophet, wm.stats, num_prompts=n, group_size=1,
                              max_segments=self.max_segments or wm.max_segments,
                              num_steps=wm.num_steps, success_threshold=wm.success_threshold, success_k=wm.success_k,
                              stop_at_success=wm.stop_at_success, state_mode=wm.state_mode,
                              action_scale_to_state=wm.action_scale_to_state, poses=wm.poses,
                              success_scorer=wm.success_scorer)  # fmt: skip
        return real, world

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self._envs is None:
            self._envs = self._build(pl_module)
        real, world = self._envs
        dec = pl_module.decoder
        real_dec = ActionDecoder(dec.stats, dec.action_dims, "metaworld", dec.norm_mode)
        prompts = [{"task": self.task, "seed": s} for s in self.check_seeds]
        res = closed_loop_agreement(pl_module.policy, real, world, prompts, real_dec, dec, pl_module.hparams.max_queries,
                                    kappa_threshold=float("-inf"))  # fmt: skip
        self.real_steps_total += res["real_env_steps"]
        row = {"update": getattr(pl_module, "updates", trainer.global_step), **res,
               "real_steps_total": self.real_steps_total}  # fmt: skip
        self.record(row)
        if self.log_videos > 0:
            k = self.log_videos
            self.last_video = side_by_side(video_to_uint8(real.video()[:k]), video_to_uint8(world.video()[:k]))
            log_video(trainer, "guard/real_vs_imagined", self.last_video, row["update"])
        for key in ("real_success", "imagined_success", "kappa"):
            pl_module.log(f"guard/{key}", float(res[key]), batch_size=1)
        pl_module.log("guard/real_steps_total", float(self.real_steps_total), batch_size=1)
        if self.keep_best and (self.best_success is None or res["real_success"] > self.best_success):
            self.best_success, self.best_update = float(res["real_success"]), int(row["update"])
            self._best_weights = {k: v.detach().cpu().clone() for k, v in pl_module.policy.state_dict().items()}
        recent = self.history[-self.patience :]
        if len(recent) == self.patience and all(
            r["imagined_success"] - r["real_success"] >= self.max_gap for r in recent
        ):
            rank_zero_info(f"ImaginationGuard: imagined success exceeds real by >= {self.max_gap} at {self.patience} "
                           f"consecutive checks; stopping at update {row['update']}")  # fmt: skip
            trainer.should_stop = True
        return row

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "updates", 0) == 0:
            self.check(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_updates > 0 and getattr(pl_module, "updates", 0) % self.every_n_updates == 0:
            self.check(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.keep_best and self._best_weights is not None:
            if self.best_update != getattr(pl_module, "updates", trainer.global_step):
                self.last_weights = {k: v.detach().cpu().clone() for k, v in pl_module.policy.state_dict().items()}
            pl_module.policy.load_state_dict(self._best_weights)
            rank_zero_info(f"ImaginationGuard: the policy keeps the weights of update {self.best_update} "
                           f"(real success {self.best_success:.3f} at the checks)")  # fmt: skip

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(best_success=self.best_success, best_update=self.best_update, best_weights=self._best_weights)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_success, self.best_update = state_dict.get("best_success"), state_dict.get("best_update")
        self._best_weights = state_dict.get("best_weights")
