"""The demo's RL inside Prophet: the refresh of Prophet and of the success classifier on the SFT policy's own real
rollouts, the branch starts and prompts, the imagined-success reward, and FA-GRPO inside the world model
(:func:`stage_rl_wm`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl.demo.config import (
    BRANCHED,
    REFRESHED,
    VARIANTS,
    DemoConfig,
    cached_rl_run,
    refresh_name,
    refresh_owner,
    rl_settings,
    run_name,
)
from lightning_prophrl.demo.scorers import branch_classifier, refresh_classifier, value_head
from lightning_prophrl.demo.stages import _trainer, build_policy, wm_success_scoring
from lightning_prophrl.stage_cache import is_done, load_done, mark_done


def stage_refresh(cfg: DemoConfig, sft_ckpt: str, seed: int, out: Path) -> dict[str, Any]:
    """World-model refresh on the SFT policy's own behaviour (cached under ``out``): ``wm_refresh_episodes`` real SDE
    rollouts of the policy (seeds ``6000 + 10000 * seed`` on, disjoint from the gate's, the guard's and the evaluation's)
    written as shards normalized with Prophet's statistics, then ``wm_refresh_steps`` LoRA steps on the mixture of
    them (weight ``wm_refresh_weight``) and the target data Prophet was adapted on.

    With ``wm_refresh_reward`` (and the bridged reward), the bridged classifier is retrained on the reward stage's data
    plus the rollouts and their imagined twins by the refreshed Prophet, all labelled by the simulator: a classifier
    that only saw noisy-expert episodes may take the policy's own failures for successes.

    Returns:
        the stage record: ``model_dir`` of the refreshed Prophet, ``classifier_dir`` (None when not retrained), the
        rollouts' ``success_rate`` and ``env_steps`` (real interactions), and the fine-tune's summary.
    """
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules.fa_grpo import load_policy_weights
    from lightning_prophrl.recipes.prophet import adapt_prophet

    if is_done(out):
        return _with_branch_classifier(cfg, json.loads((out / "done.json").read_text()), out)
    if not cfg.wm_target_data:
        raise ValueError(f"variant {REFRESHED} with --wm-model-dir needs --wm-target-data (the shards Prophet was "
                         "adapted on), so that the refresh mixes old and new data")  # fmt: skip
    counts = {k: getattr(cfg, k) for k in ("wm_refresh_episodes", "wm_refresh_steps", "wm_refresh_reward_steps")}
    if not 0.0 < cfg.wm_refresh_weight < 1.0 or min(counts.values()) < 1:
        raise ValueError(f"`wm_refresh_weight` must lie in (0, 1) and {list(counts)} be >= 1, got "
                         f"{cfg.wm_refresh_weight}, {list(counts.values())}")  # fmt: skip
    policy = build_policy(cfg)
    hp = load_policy_weights(policy, sft_ckpt)
    decoder = ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld")
    first = 6000 + 10000 * seed
    data = refresh_rollouts(cfg, sft_ckpt, seed, out, cfg.wm_model_dir)
    rollouts = json.loads((data / "done.json").read_text())
    config = Prophet.load_config(cfg.wm_model_dir)  # the refresh keeps the model's segment and memory lengths
    mixture = [{"path": cfg.wm_target_data, "weight": 1.0 - cfg.wm_refresh_weight},
               {"path": str(data), "weight": cfg.wm_refresh_weight}]  # fmt: skip
    branches = None
    if cfg.wm_refresh_branch_starts:  # half the refresh weight goes to the real branches from the rollouts' states
        branches = refresh_branches(cfg, policy, decoder, data, int(config["history_length"]), seed, out / "branches")
        mixture[1]["weight"] = cfg.wm_refresh_weight / 2
        mixture.append({"path": str(out / "branches"), "weight": cfg.wm_refresh_weight / 2})
    t0 = time.perf_counter()
    model_dir = adapt_prophet(cfg.wm_model_dir, mixture, out / "prophet", cfg.wm_refresh_steps, "lora", seed=seed,
                              stride=cfg.chunk_len // cfg.wm_chunk_len, chunk_len=int(config["action_chunk_length"]),
                              history_len=int(config["history_length"]), image_size=cfg.image_size,
                              batch_size=cfg.wm_batch, log_dir=Path(cfg.out) / "tb")  # fmt: skip
    # keep the model's own action statistics (adapt_prophet copied the mixture's first dataset's)
    shutil.copy(Path(cfg.wm_model_dir) / "stats.json", Path(model_dir) / "stats.json")
    classifier_dir = None
    if cfg.wm_refresh_reward and cfg.wm_reward == "bridged" and cfg.wm_refresh_reward_data == "twins":
        classifier_dir = refresh_classifier(cfg, model_dir, data, out)
    info = {"model_dir": model_dir, "classifier_dir": classifier_dir, "episodes": rollouts["episodes"],
            "success_rate": rollouts["success_rate"],
            "env_steps": rollouts["env_steps"] + (branches or {}).get("env_steps", 0), "branches": branches,
            "seeds": [first, first + cfg.wm_refresh_episodes],
            "steps": cfg.wm_refresh_steps, "weight": cfg.wm_refresh_weight, "target_data": cfg.wm_target_data,
            "seconds": time.perf_counter() - t0}  # fmt: skip
    mark_done(out, info)
    return _with_branch_classifier(cfg, info, out)


def refresh_rollouts(cfg: DemoConfig, sft_ckpt: str, seed: int, out: Path, stats_from: str) -> Path:
    """The refresh's real SFT-policy rollouts (``out/rollouts``, cached): ``wm_refresh_episodes`` SDE episodes from seeds
    ``6000 + 10000 * seed`` on, their actions normalized with the ``stats.json`` of ``stats_from`` (Prophet's). They
    need only the SFT policy, so with ``parallel`` the SFT process makes them while Prophet is adapted; a cached set
    normalized with other statistics is made again."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.modules.fa_grpo import load_policy_weights

    data = out / "rollouts"
    stats = (Path(stats_from) / "stats.json").read_text()
    if is_done(data) and (data / "stats.json").read_text() == stats:
        return data
    shutil.rmtree(data, ignore_errors=True)  # a half-written set from an interrupted run, or other statistics
    policy = build_policy(cfg)
    hp = load_policy_weights(policy, sft_ckpt)
    decoder = ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld")
    first = 6000 + 10000 * seed
    summary = generate_policy_rollouts(policy.eval(), decoder, cfg.target_task,
                                       range(first, first + cfg.wm_refresh_episodes), str(data), cfg.max_queries,
                                       size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                                       noise_seed=seed, noise_level=cfg.wm_refresh_noise_level,
                                       stats_from=stats_from)  # fmt: skip
    mark_done(data, summary)
    return data


def branch_prompts(cfg: DemoConfig, rollouts: str | Path, history_len: int, **kw: Any) -> Any:
    """The branch starts of RL inside Prophet (``wm_fagrpo_branch``): every ``wm_branch_every``-th chunk boundary of the
    refresh ``rollouts`` before their first success and ``wm_branch_segments`` chunks before their end, with the
    recorded memory of a ``history_len`` Prophet; ``kw`` go to the ``PromptDataModule`` (not set up)."""
    from lightning_prophrl.datamodules.prompts import PromptDataModule

    kw = {"num_prompts": cfg.num_prompts, **kw}
    return PromptDataModule(datasets=[str(rollouts)], eval_fraction=0.0, image_size=cfg.image_size,
                            branch_every=cfg.wm_branch_every * cfg.chunk_len,
                            branch_margin=cfg.wm_branch_segments * cfg.chunk_len, history_len=history_len,
                            history_stride=cfg.chunk_len // cfg.wm_chunk_len, **kw)  # fmt: skip


def refresh_branches(cfg: DemoConfig, policy: Any, decoder: Any, rollouts: Path, history_len: int, seed: int,
                     out: Path, starts: int | None = None, chunks: int | None = None,
                     key: int = 7) -> dict[str, Any]:  # fmt: skip
    """``starts`` (default ``wm_refresh_branch_starts``) branch starts of the refresh ``rollouts`` (drawn at random with
    ``[seed, key]``, so that evenly spaced measurements such as ``studies.branches`` mostly see other starts), each
    branched ``wm_refresh_branch_group`` times in the real simulator for ``chunks`` policy chunks (default
    ``wm_branch_segments``; ``generate_branch_rollouts``; cached under ``out``)."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_branch_rollouts

    if is_done(out):
        return json.loads((out / "done.json").read_text())
    shutil.rmtree(out, ignore_errors=True)  # a half-written set from an interrupted run
    prompts = branch_prompts(cfg, rollouts, history_len)
    prompts.setup()
    n, want = len(prompts.train_prompts), cfg.wm_refresh_branch_starts if starts is None else starts
    pick = np.sort(np.random.default_rng([seed, key]).choice(n, min(want, n), replace=False))
    summary = generate_branch_rollouts(policy.eval(), decoder, prompts, pick.tolist(), str(out),
                                       cfg.wm_refresh_branch_group, chunks or cfg.wm_branch_segments,
                                       size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                                       noise_seed=seed, noise_level=cfg.wm_noise_level,
                                       stats_from=cfg.wm_model_dir)  # fmt: skip
    summary["start_indices"] = pick.tolist()
    mark_done(out, summary)
    return summary


def value_branches(cfg: DemoConfig, sft_ckpt: str, seed: int, refresh_dir: Path, history_len: int) -> Path | None:
    """The value head's real branches (``wm_value_branches`` starts, None when 0): :func:`refresh_branches` of the SFT
    policy run to the episode's end (``max_queries`` chunks), starts drawn with ``[seed, 11]``, cached under
    ``refresh_dir/value_branches<N>x<G>``; every branch records its own outcome (``meta["episode_success"]``)."""
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.modules.fa_grpo import load_policy_weights

    if not cfg.wm_value_branches:
        return None
    out = refresh_dir / f"value_branches{cfg.wm_value_branches}x{cfg.wm_refresh_branch_group}"
    if not is_done(out):
        with torch.random.fork_rng():  # the RL stage's own random stream stays the one it has without them
            policy = build_policy(cfg)
            hp = load_policy_weights(policy, sft_ckpt)
            decoder = ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld")
            refresh_branches(cfg, policy, decoder, refresh_dir / "rollouts", history_len, seed, out,
                             starts=cfg.wm_value_branches, chunks=cfg.max_queries, key=11)  # fmt: skip
    return out


def onpolicy_starts(cfg: DemoConfig, decoder: Any, seed: int, out: Path) -> Any:
    """``callbacks.OnPolicyBranchStarts`` for ``wm_onpolicy_starts_every``: after update ``u``, the current policy's
    ``wm_onpolicy_starts_episodes`` real SDE rollouts (the refresh's noise; seeds continuing the refresh's, a new block
    per period) are written to ``out/onpolicy_starts/update<u>`` and become the branch starts."""
    from lightning_prophrl.callbacks import OnPolicyBranchStarts
    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts

    every, n = cfg.wm_onpolicy_starts_every, cfg.wm_onpolicy_starts_episodes

    def collect(policy: Any, update: int) -> tuple[str, dict[str, Any]]:
        first = 6000 + 10000 * seed + cfg.wm_refresh_episodes + (update // every - 1) * n
        shards = out / "onpolicy_starts" / f"update{update}"
        shutil.rmtree(shards, ignore_errors=True)
        summary = generate_policy_rollouts(policy, decoder, cfg.target_task, range(first, first + n), str(shards),
                                           cfg.max_queries, size=cfg.image_size, camera=cfg.camera,
                                           max_steps=cfg.max_steps, noise_seed=seed + update,
                                           noise_level=cfg.wm_refresh_noise_level, stats_from=cfg.wm_model_dir,
                                           progress=False)  # fmt: skip
        return str(shards), {**summary, "seeds": [first, first + n]}

    return OnPolicyBranchStarts(collect, every, history_path=str(out / "onpolicy_starts.jsonl"))


def _with_branch_classifier(cfg: DemoConfig, info: dict[str, Any], out: Path) -> dict[str, Any]:
    """With ``wm_refresh_reward_data="branches"``, the refresh's classifier is the branch-replay one (its own cached
    stages under ``out``, so it can be added to a refresh made without it)."""
    if not (cfg.wm_refresh_reward and cfg.wm_reward == "bridged" and cfg.wm_refresh_reward_data == "branches"):
        return info
    return {**info, "classifier_dir": branch_classifier(cfg, info["model_dir"], out / "rollouts", out)}


def wm_reward_model(cfg: DemoConfig) -> Any:
    """The FA-GRPO reward inside Prophet: 0/1 imagined success (None: the env's), the graded score, or either one
    reduced over the noise draws (``wm_draws > 1``)."""
    from lightning_prophrl.envs.world_model import draws_reward, graded_reward

    if cfg.wm_draws > 1:
        return partial(draws_reward, signal=cfg.wm_reward_signal, reduce=cfg.wm_draws_reduce,
                       floor=cfg.wm_graded_floor)  # fmt: skip
    return partial(graded_reward, floor=cfg.wm_graded_floor) if cfg.wm_reward_signal == "graded" else None


def stage_rl_wm(cfg: DemoConfig, sft_ckpt: str, seed: int, variant: str) -> dict[str, Any]:
    """FA-GRPO variant inside a frozen Prophet, with the closed-loop agreement gate before RL, the imagination guard
    (imagined vs real success, early stop) during RL, a KL anchor to the SFT policy, and real-simulator evaluation.
    Real interactions = the guard's checks + the gate + the refresh rollouts of ``*_refresh`` variants (evaluation
    episodes are measurement only)."""
    import lightning as L

    from lightning_prophrl.callbacks import ImaginationGuardCallback, SimEvalCallback
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.envs.agreement import closed_loop_agreement
    from lightning_prophrl.envs.branches import branch_agreement
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules import FAGRPOModule

    if not cfg.wm_model_dir or not cfg.wm_stats_dir:
        raise ValueError(f"variant {variant!r} needs --wm-model-dir and --wm-stats-dir (a saved Prophet and its data)")
    loss, flowscale, _ = VARIANTS[variant]
    # runs with the success-head reward live beside the default (bridged) ones
    name = run_name(cfg, variant)
    out = Path(cfg.out) / "rl" / name / f"seed{seed}"
    if (cached := cached_rl_run(cfg, out)) is not None:
        return cached
    # the refresh does not depend on the reward signal: runs that differ only in it share one
    refresh_dir = Path(cfg.out) / "rl" / refresh_owner(variant) / f"seed{seed}" / refresh_name(cfg)
    refresh = stage_refresh(cfg, sft_ckpt, seed, refresh_dir) if variant in REFRESHED else None
    branch = variant in BRANCHED
    L.seed_everything(seed, workers=True)
    prophet = Prophet.from_pretrained(refresh["model_dir"] if refresh else cfg.wm_model_dir)
    wm_stats = load_stats(cfg.wm_stats_dir)
    reset_env = MetaWorldEnv(cfg.target_task, num_prompts=cfg.num_prompts, group_size=1, image_size=cfg.image_size,
                             max_steps=cfg.max_steps, camera=cfg.camera)  # fmt: skip
    # commanded end-effector targets for the action-frame stream (the rule of the training data's target_poses.npy)
    poses = (
        CommandedPoses.metaworld(cfg.target_task, cfg.image_size, cfg.camera)
        if prophet.config.use_action_frames
        else None
    )
    scoring = wm_success_scoring(cfg, (refresh or {}).get("classifier_dir"))
    value, value_dir, real_branches = None, None, None
    if branch and cfg.wm_value:  # short branches graded by the value of their last frame
        from lightning_prophrl.envs.world_model import classifier_scorer
        from lightning_prophrl.models.reward import load_classifier

        real_branches = value_branches(cfg, sft_ckpt, seed, refresh_dir, int(prophet.config.history_length))
        value_dir = value_head(cfg, refresh["model_dir"], refresh_dir / "rollouts", refresh_dir, real_branches)
        value = classifier_scorer(load_classifier(value_dir))
    group = cfg.wm_group_size or cfg.group_size
    env = WorldModelEnv(prophet, wm_stats, num_prompts=cfg.num_prompts, group_size=group,
                        max_segments=cfg.wm_branch_segments if branch else cfg.max_queries, num_steps=cfg.wm_num_steps,
                        seed=seed, initial_env=reset_env, poses=poses, draws=cfg.wm_draws, value_scorer=value,
                        **scoring)  # fmt: skip
    module = FAGRPOModule(build_policy(cfg), env, group_size=group, max_queries=cfg.max_queries,
                          noise_level=cfg.wm_noise_level, sft_checkpoint=sft_ckpt, action_target="unified", loss=loss,
                          flowscale=flowscale,
                          beta_kl=cfg.wm_beta_kl, seed=seed, optimizer=lambda p: torch.optim.Adam(p, lr=cfg.lr),
                          reward_model=wm_reward_model(cfg))  # fmt: skip
    # 1. closed-loop agreement gate of the SFT policy (before RL)
    n_gate = cfg.wm_check_seeds
    # the real gate episodes run to the cap so that the reward model's persistence rule can also judge them
    gate_real = MetaWorldEnv(cfg.target_task, num_prompts=n_gate, group_size=1, image_size=cfg.image_size,
                             max_steps=cfg.max_steps, camera=cfg.camera, stop_at_success=False)  # fmt: skip
    gate_wm = WorldModelEnv(prophet, wm_stats, num_prompts=n_gate, group_size=1, max_segments=cfg.max_queries,
                            num_steps=cfg.wm_num_steps, poses=poses, **scoring)  # fmt: skip
    dec = module.decoder
    gate = closed_loop_agreement(module.policy, gate_real, gate_wm,
                                 [{"task": cfg.target_task, "seed": s} for s in range(5000, 5000 + n_gate)],
                                 ActionDecoder(dec.stats, dec.action_dims, "metaworld"), dec, cfg.max_queries,
                                 reward_scorer=scoring.get("success_scorer"),
                                 reward_threshold=scoring["success_threshold"], reward_k=scoring["success_k"])  # fmt: skip
    gate_real.close()
    # 2. RL inside the world model with the guard, evaluated in the real simulator
    if branch:  # every prompt is a real state of the refresh rollouts (the real eval seeds are the callback's)
        prompts = branch_prompts(cfg, refresh_dir / "rollouts", int(prophet.config.history_length),
                                 updates_per_epoch=cfg.wm_onpolicy_starts_every or cfg.rl_updates,
                                 seed=seed)  # fmt: skip
        # can branches be trusted? replay the recorded actions from real states, and the policy's branches
        prompts.setup()
        branch_wm = WorldModelEnv(prophet, wm_stats, num_prompts=n_gate, group_size=1,
                                  max_segments=cfg.wm_branch_segments, num_steps=cfg.wm_num_steps, poses=poses,
                                  **scoring)  # fmt: skip
        branch_gate = branch_agreement(branch_wm, prompts, cfg.chunk_len, max_starts=2 * n_gate,
                                       policy=module.policy, decoder=dec, noise_seed=seed)  # fmt: skip
    else:
        prompts = PromptDataModule(tasks=[cfg.target_task], train_seeds=(2000 + 10000 * seed, 12000 + 10000 * seed),
                                   eval_seeds=(1000, 1000 + cfg.eval_seeds), num_prompts=cfg.num_prompts,
                                   updates_per_epoch=cfg.rl_updates, seed=seed)  # fmt: skip
        branch_gate = None
    history = out / "eval.jsonl"
    history.unlink(missing_ok=True)
    (out / "guard.jsonl").unlink(missing_ok=True)
    sim_eval = SimEvalCallback(cfg.target_task, seeds=list(range(1000, 1000 + cfg.eval_seeds)),
                               every_n_steps=cfg.eval_every, max_queries=cfg.max_queries, image_size=cfg.image_size,
                               camera=cfg.camera, max_steps=cfg.max_steps, history_path=str(history))  # fmt: skip
    guard = ImaginationGuardCallback(cfg.target_task, check_seeds=list(range(4000, 4000 + cfg.wm_check_seeds)),
                                     every_n_updates=cfg.wm_check_every, image_size=cfg.image_size,
                                     camera=cfg.camera, max_steps=cfg.max_steps,
                                     history_path=str(out / "guard.jsonl"), max_segments=cfg.max_queries,
                                     keep_best=cfg.wm_guard_keep_best)  # fmt: skip
    onpolicy = None
    if branch and cfg.wm_onpolicy_starts_every:  # one epoch per period; every epoch samples the newest starts
        (out / "onpolicy_starts.jsonl").unlink(missing_ok=True)
        onpolicy = onpolicy_starts(cfg, ActionDecoder(dec.stats, dec.action_dims, "metaworld"), seed, out)
    epochs = cfg.rl_updates // cfg.wm_onpolicy_starts_every if onpolicy else 1
    trainer = _trainer(cfg.out, f"{name}_seed{seed}", max_epochs=epochs,
                       reload_dataloaders_every_n_epochs=int(bool(onpolicy)), log_every_n_steps=1,
                       callbacks=[sim_eval, guard] + ([onpolicy] if onpolicy else []))  # fmt: skip
    t0 = time.perf_counter()
    n_starts = len(prompts.train_prompts)  # the refresh rollouts' (on-policy starts replace them during RL)
    trainer.fit(module, datamodule=prompts)
    trainer.save_checkpoint(out / "policy.ckpt")
    (out / "policy_last.ckpt").unlink(missing_ok=True)
    if guard.last_weights is not None:  # the guard's best check was kept: the last update's policy is saved beside it
        kept_weights = {k: v.clone() for k, v in module.policy.state_dict().items()}
        module.policy.load_state_dict(guard.last_weights)
        trainer.save_checkpoint(out / "policy_last.ckpt")
        module.policy.load_state_dict(kept_weights)
    reset_env.close()
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    kept = guard.best_update if cfg.wm_guard_keep_best else None
    if not rows or rows[-1]["step"] != module.updates or (kept is not None and kept != module.updates):
        # stopped early by the guard, or the guard's best check kept: evaluate the final policy (a kept check's
        # policy was evaluated at its update when the evaluation and the guard share the period: recorded again)
        if kept is None or sim_eval.repeat(trainer, module, kept) is None:
            sim_eval.evaluate(trainer, module)
        rows = [json.loads(line) for line in history.read_text().splitlines()]
    branched_for_value = load_done(real_branches) if real_branches else None  # their real steps count
    info = {"variant": variant, "seed": seed, "updates": module.updates, "train_env_steps": 0, "wm_reward": cfg.wm_reward,
            "wm_reward_signal": cfg.wm_reward_signal, "wm_graded_floor": cfg.wm_graded_floor,
            "real_interactions": gate["real_env_steps"] + guard.real_steps_total + (refresh or {}).get("env_steps", 0)
            + (onpolicy.real_steps_total if onpolicy else 0) + (branched_for_value or {}).get("env_steps", 0),
            "onpolicy_starts": onpolicy.history if onpolicy else None,
            "refresh": refresh, "value_head": value_dir, "value_branches": branched_for_value, "gate": gate,
            "branch": {"starts": n_starts, "segments": cfg.wm_branch_segments,
                       "agreement": branch_gate} if branch else None,
            "guard": guard.history, "kept_update": kept, "imagined_episodes": module.episodes_total,
            "seconds": time.perf_counter() - t0, "eval": rows, "settings": rl_settings(cfg)}  # fmt: skip
    mark_done(out, info)
    return info
