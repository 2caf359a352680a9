"""Success rate of the current policy in a real simulator on fixed held-out initial states."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from tqdm.auto import tqdm
from typing_extensions import override

from lightning_prophrl.callbacks._history import append_jsonl
from lightning_prophrl.envs.rollout import ActionDecoder, collect_rollouts


@torch.no_grad()
def evaluate_in_simulator(
    policy: Any,
    decoder: ActionDecoder,
    task: str,
    seeds: list[int],
    max_queries: int,
    env: Any = None,
    batch: int = 20,
    image_size: int = 64,
    camera: str = "workspace",
    max_steps: int = 150,
    noise_seed: int = 0,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """ODE evaluation with fixed sampler noise: every seed gets the same initial noise stream in every call, so two
    policies are compared on identical initial states and noise.

    Returns:
        ``{"success": mean, "per_seed": [0/1...], "episodes": n, "env_steps": total}``.
    """
    from lightning_prophrl.envs.metaworld import MetaWorldEnv

    if len(seeds) % batch:
        batch = next(b for b in range(min(batch, len(seeds)), 0, -1) if len(seeds) % b == 0)
    env = env or MetaWorldEnv(task, num_prompts=batch, group_size=1, image_size=image_size, max_steps=max_steps,
                              exec_horizon=policy.exec_horizon, camera=camera)  # fmt: skip
    was_training = policy.training
    policy.eval()
    per_seed, steps = [], 0
    for i in tqdm(range(0, len(seeds), batch), desc=f"sim eval {task}", disable=not progress, leave=False):
        prompts = [{"task": task, "seed": s} for s in seeds[i : i + batch]]
        gen = torch.Generator().manual_seed(noise_seed * 100003 + seeds[i])
        out = collect_rollouts(policy, env, prompts, decoder, max_queries, mode="ode", generator=gen, device=device)
        per_seed += out.success.int().tolist()
        steps += int(out.steps.sum())
    policy.train(was_training)
    return {"success": float(np.mean(per_seed)), "per_seed": per_seed, "episodes": len(per_seed), "env_steps": steps}


class SimEvalCallback(L.Callback):
    """Evaluates ``pl_module.policy`` in Meta-World every ``every_n_steps`` optimizer steps (and before training).

    Logs ``eval/success`` and appends ``{"step", "success", ...}`` to ``history_path`` (JSON lines) when given.
    Evaluation interactions are measurement only and are not counted as training interactions.

    Args:
        task: Meta-World task.
        seeds: held-out initial-state seeds (default 1000..1059, disjoint from demos and RL prompts).
        every_n_steps: evaluation period in RL updates (``pl_module.updates``; ``global_step`` for other modules).
        max_queries: policy queries per episode.
        image_size, camera, max_steps: as in ``MetaWorldEnv``.
        history_path: JSON-lines file of the results.
        eval_at_start: also evaluate before the first update.
    """

    def __init__(
        self,
        task: str = "pick-place-v3",
        seeds: list[int] | None = None,
        every_n_steps: int = 10,
        max_queries: int = 38,
        image_size: int = 64,
        camera: str = "workspace",
        max_steps: int = 150,
        history_path: str | None = None,
        eval_at_start: bool = True,
    ):
        super().__init__()
        self.task, self.seeds = task, list(seeds) if seeds is not None else list(range(1000, 1060))
        self.every_n_steps, self.max_queries, self.eval_at_start = every_n_steps, max_queries, eval_at_start
        self.env_kwargs = {"image_size": image_size, "camera": camera, "max_steps": max_steps}
        self.history_path = history_path
        self.history: list[dict[str, Any]] = []
        self._env = None

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Evaluate now (also after ``fit``, e.g. a run stopped early), log ``eval/success`` and record the row."""
        return self._run(trainer, pl_module)

    def repeat(self, trainer: L.Trainer, pl_module: L.LightningModule, of_step: int) -> dict[str, Any] | None:
        """Record the evaluation made at update ``of_step`` again, at the current update, without running it: the
        policy holds the weights it had then (e.g. a kept check restored), and the same weights give the same result
        (fixed seeds and sampler noise). Returns the row, or ``None`` when no evaluation at ``of_step`` was recorded
        (then call :meth:`evaluate`)."""
        earlier = next((r for r in reversed(self.history) if r["step"] == of_step), None)
        if earlier is None:
            return None
        row = {**earlier, "step": getattr(pl_module, "updates", trainer.global_step),
               "train_env_steps": getattr(pl_module, "env_steps_total", 0)}  # fmt: skip
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics({"eval/success": row["success"]}, step=trainer.global_step)
        self._record(row)
        return row

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self._env is None:
            from lightning_prophrl.envs.metaworld import MetaWorldEnv

            b = 20 if len(self.seeds) % 20 == 0 else len(self.seeds)
            self._env = MetaWorldEnv(self.task, num_prompts=b, group_size=1, exec_horizon=pl_module.policy.exec_horizon,
                                     **self.env_kwargs)  # fmt: skip
        dec = pl_module.decoder  # the module may train in a world model: always decode to Meta-World actions here
        real_dec = ActionDecoder(dec.stats, dec.action_dims, "metaworld", dec.norm_mode)
        res = evaluate_in_simulator(pl_module.policy, real_dec, self.task, self.seeds, self.max_queries,
                                    env=self._env, batch=self._env.num_prompts, device=pl_module.device,
                                    progress=trainer.is_global_zero)  # fmt: skip
        step = getattr(pl_module, "updates", trainer.global_step)
        if trainer.training:
            pl_module.log("eval/success", res["success"], batch_size=1, rank_zero_only=True)
        elif trainer.is_global_zero and trainer.logger is not None:  # outside the loop: straight to the logger
            trainer.logger.log_metrics({"eval/success": res["success"]}, step=trainer.global_step)
        row = {"step": step, "success": res["success"], "episodes": res["episodes"],
               "train_env_steps": getattr(pl_module, "env_steps_total", 0)}  # fmt: skip
        self._record(row)
        return row

    @rank_zero_only
    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        append_jsonl(self.history_path, row)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.eval_at_start and getattr(pl_module, "updates", trainer.global_step) == 0:
            self._run(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps > 0 and getattr(pl_module, "updates", trainer.global_step) % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
