"""The demo's stages before and outside imagination: data, SFT policy, world model (adapted or pretrained), reward
report and FA-GRPO in the real simulator. Each stage writes under ``cfg.out`` and returns its cached result when its
output exists.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import torch

from lightning_prophrl.demo.config import POLICY_DIMS, VARIANTS, DemoConfig, cached_rl_run, rl_settings, run_name
from lightning_prophrl.stage_cache import is_done, mark_done


def _trainer(root: str, name: str, **kw: Any):
    """A CPU trainer logging to ``<root>/tb/<name>`` (one TensorBoard directory for the whole demo)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    return L.Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(str(Path(root) / "tb"), name=name),
                     enable_checkpointing=False, enable_model_summary=False, **kw)  # fmt: skip


def stage_data(cfg: DemoConfig) -> dict[str, str]:
    """Target-task SFT demos (seeds 0..N-1, low noise)."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    out = Path(cfg.out) / "data"
    paths = {"sft": str(out / "target_sft")}
    if not is_done(Path(paths["sft"])):
        s = generate_metaworld([cfg.target_task], cfg.sft_demos, paths["sft"], noise=cfg.sft_noise,
                               size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps, seed=0, per_shard=5)  # fmt: skip
        mark_done(Path(paths["sft"]), s)
    return paths


def build_policy(cfg: DemoConfig):
    from lightning_prophrl.envs.instructions import instruction_for
    from lightning_prophrl.models.policy import FlowMatchingPolicy

    return FlowMatchingPolicy(action_dim=len(POLICY_DIMS), chunk_len=cfg.chunk_len, state_dim=4,
                              instructions=[instruction_for(cfg.target_task)], cond_dim=128, width=64, depth=2,
                              num_heads=4, cnn_channels=(16, 32, 64, 64), num_steps=10, noise_level=0.7)  # fmt: skip


def stage_sft(cfg: DemoConfig, data: dict[str, str], seed: int) -> str:
    """Behaviour cloning from the few target demos; returns the checkpoint path."""
    import lightning as L

    from lightning_prophrl.datamodules.robot import PolicyDataModule
    from lightning_prophrl.modules import PolicySFTModule

    out = Path(cfg.out) / "sft" / f"seed{seed}"
    ckpt = out / "sft.ckpt"
    if is_done(out):
        return str(ckpt)
    L.seed_everything(seed, workers=True)
    dm = PolicyDataModule([data["sft"]], chunk_len=cfg.chunk_len, action_dims=POLICY_DIMS, state_dim=4,
                          image_size=cfg.image_size, batch_size=cfg.sft_batch,
                          samples_per_epoch=cfg.sft_batch * min(cfg.sft_steps, 500), seed=seed)  # fmt: skip
    module = PolicySFTModule(
        build_policy(cfg), optimizer=lambda p: torch.optim.Adam(p, lr=3e-4), shift_pad=4, action_dims=POLICY_DIMS
    )
    trainer = _trainer(cfg.out, f"sft_seed{seed}", max_steps=cfg.sft_steps, max_epochs=-1, log_every_n_steps=25)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(ckpt)
    mark_done(out, {"seconds": time.perf_counter() - t0, "steps": cfg.sft_steps})
    return str(ckpt)


def stage_world_model(cfg: DemoConfig) -> tuple[str, str, dict[str, Any] | None]:
    """The Prophet of the ``wm_*`` variants: ``cfg.wm_model_dir`` when given, else pretrained on the pretraining tasks
    and LoRA-adapted to ``wm_target_episodes`` noisy target episodes (seed 0), with its open-loop report (model vs
    copy-last vs shuffled actions) on held-out target episodes.

    One Prophet frame is ``chunk_len / wm_chunk_len`` simulator steps, so one policy chunk is exactly one segment
    (``WorldModelEnv``'s chunk mapping rule) and the policy sees every imagined frame, as it sees every real one.

    Returns:
        ``(model_dir, stats_dir, report)``; the report is None for a given model.
    """
    if cfg.wm_model_dir:
        return cfg.wm_model_dir, cfg.wm_stats_dir or cfg.wm_model_dir, None
    if cfg.wm_base == "shipped":
        return adapt_shipped(cfg)
    from lightning_prophrl.recipes.prophet import adapt_prophet, generate_wm_data, pretrain_prophet, prophet_config
    from lightning_prophrl.recipes.prophet_report import world_model_report

    if cfg.wm_chunk_len < 1 or cfg.chunk_len % cfg.wm_chunk_len:
        raise ValueError(f"`wm_chunk_len`={cfg.wm_chunk_len} must divide the policy's `chunk_len`={cfg.chunk_len}")
    root = Path(cfg.out) / "world_model"
    data = generate_wm_data(root / "data", cfg.pretrain_tasks, cfg.target_task, cfg.wm_episodes_per_task,
                            cfg.wm_target_episodes, cfg.wm_eval_episodes, cfg.image_size, max_steps=cfg.max_steps,
                            camera=cfg.camera)  # fmt: skip
    stride = cfg.chunk_len // cfg.wm_chunk_len
    kw = dict(seed=0, stride=stride, chunk_len=cfg.wm_chunk_len, history_len=cfg.wm_history_len,
              image_size=cfg.image_size, batch_size=cfg.wm_batch, log_dir=Path(cfg.out) / "tb",
              model_config=prophet_config(cfg.image_size, cfg.wm_chunk_len, cfg.wm_history_len))  # fmt: skip
    pretrained = pretrain_prophet(data["pretrain"], root / "pretrain", cfg.wm_pretrain_steps, **kw)
    adapted = adapt_prophet(pretrained, data["target"], root / "adapt_lora", cfg.wm_adapt_steps, "lora", **kw)
    segments = -(-cfg.max_steps // (stride * cfg.wm_chunk_len))
    report = world_model_report(adapted, data["eval"], root / "report", cfg.wm_eval_episodes, segments,
                                cfg.wm_num_steps, 0, stride, cfg.image_size)  # fmt: skip
    return adapted, adapted, report


def adapt_shipped(cfg: DemoConfig) -> tuple[str, str, dict[str, Any]]:
    """The default world model: the shipped pretrained Prophet (``lightning_prophrl.assets``; the target task was held
    out of its pretraining) LoRA-adapted for ``wm_adapt_steps`` steps to ``wm_target_episodes`` noisy-expert target
    episodes, with its open-loop report on ``wm_eval_episodes`` held-out target episodes (the data, adaptation and
    report of :mod:`lightning_prophrl.studies.heldout`, seed 0, under ``OUT/world_model``).

    Returns:
        ``(model_dir, stats_dir, report)``: the adapted model carries the shipped action statistics.
    """
    from lightning_prophrl.assets import shipped_prophet_path
    from lightning_prophrl.recipes.heldout import adapt, heldout_data
    from lightning_prophrl.recipes.prophet_report import world_model_report

    root = Path(cfg.out) / "world_model"
    data = heldout_data(cfg.target_task, root / "data", adapt_episodes=cfg.wm_target_episodes,
                        eval_episodes=cfg.wm_eval_episodes, cf_episodes=1, size=cfg.image_size, camera=cfg.camera,
                        max_steps=cfg.max_steps, counterfactual=False)  # fmt: skip
    adapted = adapt(shipped_prophet_path(), data["adapt"], root / "adapt_lora", cfg.wm_adapt_steps, "lora", seed=0,
                    batch_size=cfg.wm_batch)  # fmt: skip
    stride = cfg.chunk_len // cfg.wm_chunk_len
    report = world_model_report(adapted, data["eval"], root / "report", cfg.wm_eval_episodes, cfg.max_queries,
                                cfg.wm_num_steps, 0, stride, cfg.image_size)  # fmt: skip
    return adapted, adapted, report


def stage_reward(cfg: DemoConfig, model_dir: str, stats_dir: str) -> dict[str, Any]:
    """Real-only and domain-bridged success classifiers and the success head, scored against the simulator on held-out
    real episodes and their Prophet-imagined twins (:func:`lightning_prophrl.recipes.reward_report.reward_study`, cached)."""
    from lightning_prophrl.recipes.reward_report import RewardStudyConfig, reward_study

    rcfg = RewardStudyConfig(model_dir=model_dir, out=str(Path(cfg.out) / "reward"), task=cfg.target_task,
                             train_episodes=cfg.reward_train_episodes, heldout_episodes=cfg.reward_heldout_episodes,
                             image_size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                             stride=cfg.chunk_len // cfg.wm_chunk_len, stats_from=stats_dir,
                             num_steps=cfg.wm_num_steps, classifier_steps=cfg.reward_steps,
                             classifier_batch_size=min(64, 16 * cfg.reward_train_episodes),
                             threads=cfg.threads)  # fmt: skip
    return reward_study(rcfg)


def reward_summary(reward: dict[str, Any]) -> str:
    """One line per reward model: precision / recall / kappa against the simulator, real and imagined episodes."""
    parts = []
    for name, by_split in reward["reports"].items():
        cells = [f"{split} P {r['precision']:.2f} / R {r['recall']:.2f} / kappa {r['kappa']:.2f}"
                 for split, r in by_split.items()]  # fmt: skip
        parts.append(f"{name} classifier: " + "; ".join(cells))
    head = reward.get("success_head")
    if head is not None:
        parts.append(f"success head (the RL reward): imagined P {head['precision']:.2f} / R {head['recall']:.2f} / "
                     f"kappa {head['kappa']:.2f}")  # fmt: skip
    return "Reward models vs the simulator on held-out episodes: " + " | ".join(parts) + "."


def wm_success_scoring(cfg: DemoConfig, classifier_dir: str | Path | None = None) -> dict[str, Any]:
    """``WorldModelEnv`` success arguments for ``cfg.wm_reward`` (the bridged classifier comes from the reward stage,
    or from ``classifier_dir``, e.g. a refresh's)."""
    if cfg.wm_reward == "success_head":
        return {"success_threshold": 0.5, "success_k": 2}
    if cfg.wm_reward != "bridged":
        raise ValueError(f"`wm_reward` must be 'bridged' or 'success_head', got {cfg.wm_reward!r}")
    from lightning_prophrl.envs.world_model import classifier_scorer
    from lightning_prophrl.models.reward import load_classifier

    stage = Path(classifier_dir) if classifier_dir else Path(cfg.out) / "reward" / "classifier" / "bridged"
    if not is_done(stage):
        raise FileNotFoundError(f"--wm-reward bridged needs the reward stage's classifier at {stage} (run the demo)")
    return {"success_scorer": classifier_scorer(load_classifier(stage)), "success_threshold": 0.9, "success_k": 3}


def stage_rl_sim(cfg: DemoConfig, sft_ckpt: str, seed: int, variant: str) -> dict[str, Any]:
    """FA-GRPO variant in the real simulator for ``rl_updates`` updates; evaluates every ``eval_every`` updates."""
    import lightning as L

    from lightning_prophrl.callbacks import SimEvalCallback
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.modules import FAGRPOModule

    loss, flowscale, _ = VARIANTS[variant]
    out = Path(cfg.out) / "rl" / run_name(cfg, variant) / f"seed{seed}"
    if (cached := cached_rl_run(cfg, out)) is not None:
        return cached
    L.seed_everything(seed, workers=True)
    env = MetaWorldEnv(cfg.target_task, num_prompts=cfg.num_prompts, group_size=cfg.group_size,
                       image_size=cfg.image_size, max_steps=cfg.max_steps, camera=cfg.camera)  # fmt: skip
    module = FAGRPOModule(build_policy(cfg), env, group_size=cfg.group_size, max_queries=cfg.max_queries,
                          sft_checkpoint=sft_ckpt, loss=loss, flowscale=flowscale, seed=seed,
                          optimizer=lambda p: torch.optim.Adam(p, lr=cfg.lr))  # fmt: skip
    prompts = PromptDataModule(tasks=[cfg.target_task], train_seeds=(2000 + 10000 * seed, 12000 + 10000 * seed),
                               eval_seeds=(1000, 1000 + cfg.eval_seeds), num_prompts=cfg.num_prompts,
                               updates_per_epoch=cfg.rl_updates, seed=seed)  # fmt: skip
    history = out / "eval.jsonl"
    history.unlink(missing_ok=True)
    sim_eval = SimEvalCallback(cfg.target_task, seeds=list(range(1000, 1000 + cfg.eval_seeds)),
                               every_n_steps=cfg.eval_every, max_queries=cfg.max_queries, image_size=cfg.image_size,
                               camera=cfg.camera, max_steps=cfg.max_steps, history_path=str(history))  # fmt: skip
    trainer = _trainer(cfg.out, f"{run_name(cfg, variant)}_seed{seed}", max_epochs=1, callbacks=[sim_eval],
                       log_every_n_steps=1)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=prompts)
    trainer.save_checkpoint(out / "policy.ckpt")
    env.close()
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    info = {"variant": variant, "seed": seed, "updates": module.updates, "train_env_steps": module.env_steps_total,
            "train_episodes": module.episodes_total, "seconds": time.perf_counter() - t0, "eval": rows,
            "settings": rl_settings(cfg)}  # fmt: skip
    mark_done(out, info)
    return info
