"""Held-out-task recipes: the datasets of a Meta-World task kept out of Prophet's pretraining (few-shot adaptation
episodes, evaluation episodes, two counterfactual sets on the same initial states and, given a policy, a third one of
that policy exploring at high SDE noise), the end-effector readout fitted on the task's real frames, and the
adaptation of a saved Prophet to it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_prophrl.envs.task_split import HELDOUT_TASKS
from lightning_prophrl.stage_cache import is_done, load_done, mark_done

COUNTERFACTUAL_EXPERT = "push-v3"  # the counterfactual driver: another task's scripted expert
SETS = ("eval", "cf_random", "cf_expert")
POLICY_SET = "cf_policy"  # with a policy: its SDE rollouts at high noise, what RL will try
ADAPT_SEED, EVAL_SEED = 500, 800
POLICY_SEED = 7800  # cf_policy initial states (on-line range: policy rollouts take seeds >= 2000)
CLOSED_LOOP_SEED = 7900  # closed-loop check initial states (after the cf_policy ones)
CALIBRATION_SEED = 8200  # the closed-loop check's calibration episodes (its success threshold is fitted on them)


def heldout_data(
    task: str,
    out: str | Path,
    adapt_episodes: int = 20,
    eval_episodes: int = 20,
    cf_episodes: int = 10,
    size: int = 64,
    camera: str = "workspace",
    max_steps: int = 150,
    noise: float = 0.1,
    noise_max: float = 0.6,
    counterfactual: bool = True,
    policy: str | None = None,
    policy_noise: float = 2.0,
) -> dict[str, str]:
    """The datasets of one held-out task (see the module docstring); returns ``{set name: directory}``.

    Args:
        task: a held-out Meta-World v3 task.
        out: directory of the task's datasets (``<out>/adapt``, ``<out>/eval``, ``<out>/cf_random``, ...).
        adapt_episodes: few-shot adaptation episodes (at most 20).
        eval_episodes: evaluation episodes under the task's noisy expert.
        cf_episodes: episodes per counterfactual set (the first initial states of ``eval``).
        size, camera, max_steps: rendering and step cap, as in pretraining.
        noise, noise_max: range of the per-episode action-noise std of the noisy expert (``cf_expert``: ``noise``).
        counterfactual: also the two counterfactual sets (off: ``adapt`` and ``eval`` only).
        policy: a trained policy of the task (``save_pretrained`` directory or ``PolicySFTModule`` checkpoint): adds
            ``cf_policy``, ``cf_episodes`` of its SDE rollouts at ``policy_noise`` from initial states
            ``POLICY_SEED + i``, each run to ``max_steps``. The set is cached under the policy's path and noise; a
            set made by another policy is made again.
        policy_noise: the SDE noise level of those rollouts (the policy's own is usually 0.5-1).
    """
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    if task not in HELDOUT_TASKS:
        raise ValueError(f"{task!r} is not a held-out task (lightning_prophrl.envs.task_split.HELDOUT_TASKS)")
    if not 1 <= adapt_episodes <= 20 or eval_episodes < 1 or not 1 <= cf_episodes <= eval_episodes:
        raise ValueError(
            f"need 1 <= adapt_episodes <= 20, eval_episodes >= 1 and 1 <= cf_episodes <= eval_episodes, got "
            f"{adapt_episodes}, {eval_episodes}, {cf_episodes}"
        )
    out = Path(out)
    common = dict(tasks=[task], size=size, camera=camera, max_steps=max_steps, stop_at_success=False, progress=False)
    jobs = {
        "adapt": dict(episodes=adapt_episodes, seed=ADAPT_SEED, noise=noise, noise_max=noise_max),
        "eval": dict(episodes=eval_episodes, seed=EVAL_SEED, noise=noise, noise_max=noise_max),
        "cf_random": dict(episodes=cf_episodes, seed=EVAL_SEED, noise=0.0, driver="random"),
        "cf_expert": dict(episodes=cf_episodes, seed=EVAL_SEED, noise=noise, driver=COUNTERFACTUAL_EXPERT),
    }
    if not counterfactual:
        jobs = {name: jobs[name] for name in ("adapt", "eval")}
    for name, job in jobs.items():
        path = out / name
        if not is_done(path):
            shutil.rmtree(path, ignore_errors=True)  # a partial dataset of an interrupted run
            mark_done(path, generate_metaworld(out=str(path), **common, **job))
    sets = {name: str(out / name) for name in jobs}
    if policy is not None and counterfactual:
        sets[POLICY_SET] = policy_set(task, policy, out / POLICY_SET, cf_episodes, policy_noise, size, camera,
                                      max_steps)  # fmt: skip
    return sets


def policy_set(task: str, policy: str, out: str | Path, episodes: int, noise: float, size: int = 64,
               camera: str = "workspace", max_steps: int = 150) -> str:  # fmt: skip
    """``episodes`` real SDE rollouts of ``policy`` at noise level ``noise`` from initial states ``POLICY_SEED + i``
    (cached in ``out`` with the policy's path and the noise: a set of another policy or noise is made again)."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.modules.policy_loading import load_policy

    out = Path(out)
    recipe: dict[str, Any] = {"policy": str(Path(policy).resolve()), "noise_level": float(noise),
                              "episodes": int(episodes)}  # fmt: skip
    if is_done(out) and load_done(out).get("recipe") == recipe:
        return str(out)
    shutil.rmtree(out, ignore_errors=True)
    net, meta = load_policy(policy)
    decoder = ActionDecoder(meta["action_stats"], meta["action_dims"], "metaworld",
                            meta.get("norm_mode", "quantile"))  # fmt: skip
    summary = generate_policy_rollouts(net, decoder, task, range(POLICY_SEED, POLICY_SEED + episodes), str(out),
                                       math.ceil(max_steps / net.exec_horizon), size=size, camera=camera,
                                       max_steps=max_steps, noise_level=noise, progress=False)  # fmt: skip
    mark_done(out, {**summary, "recipe": recipe})
    return str(out)


def closed_loop_check(model_dir: str, task: str, policy: str, out: str | Path, episodes: int = 30,
                      num_steps: int = 1, size: int = 64, camera: str = "workspace", max_steps: int = 150,
                      calibration: int = 0, first_seed: int = CLOSED_LOOP_SEED) -> dict[str, Any]:  # fmt: skip
    """Whole episodes of ``policy`` (ODE, the same initial sampler noise) from the same ``episodes`` initial states
    (``first_seed + i``) in the simulator and inside the model, the imagined success judged by the model's own
    success head (probability 0.5 for 2 frames); ``envs.agreement.closed_loop_agreement``'s outcome (kappa, confusion,
    both success rates, the head's graded score per imagined episode and its AUC against the real outcomes, the step of
    each real first success (None for a failure), per-frame PSNR of where the imagined episode leaves the real one).
    Cached in ``out``.

    With ``calibration > 0``, the same check first runs on ``calibration`` other initial states (``CALIBRATION_SEED +
    i``, cached in ``out/calibration``); the success threshold that agrees best with their real outcomes
    (``envs.agreement.fit_threshold`` on the graded scores) is then applied to this check's graded scores:
    ``"calibration"`` (that check's rates, kappa, AUC and the fit; the fit is None when its real episodes all
    succeed or all fail) and ``"fitted"`` (``threshold``, ``kappa``, ``imagined_success`` and ``confusion`` at the
    fitted threshold, or None without a fit). The evaluation episodes never choose the threshold.

    Raises:
        ValueError: when the model has no success head.
    """
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.envs.agreement import closed_loop_agreement
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules.policy_loading import load_policy

    out = Path(out)
    recipe = {"model": str(Path(model_dir).resolve()), "policy": str(Path(policy).resolve()), "episodes": episodes,
              "num_steps": num_steps, "first_seed": first_seed, "calibration": calibration}  # fmt: skip
    if is_done(out) and load_done(out).get("recipe") == recipe:
        return load_done(out)
    calib = None
    if calibration:
        calib = closed_loop_check(model_dir, task, policy, out / "calibration", calibration, num_steps, size, camera,
                                  max_steps, first_seed=CALIBRATION_SEED)  # fmt: skip
    prophet = Prophet.from_pretrained(model_dir)
    if not prophet.config.success_head:
        raise ValueError(f"{model_dir}: the model has no success head (config `success_head: false`); the closed-loop "
                         f"check judges imagined episodes with it")  # fmt: skip
    net, meta = load_policy(policy)
    norm = meta.get("norm_mode", "quantile")
    decoders = [
        ActionDecoder(meta["action_stats"], meta["action_dims"], target, norm) for target in ("metaworld", "unified")
    ]
    queries = math.ceil(max_steps / net.exec_horizon)
    poses = CommandedPoses.metaworld(task, size, camera) if prophet.config.use_action_frames else None
    real = MetaWorldEnv(task, num_prompts=episodes, group_size=1, image_size=size, max_steps=max_steps, camera=camera,
                        stop_at_success=False)  # fmt: skip
    world = WorldModelEnv(prophet, load_stats(model_dir), num_prompts=episodes, group_size=1, max_segments=queries,
                          num_steps=num_steps, poses=poses, success_threshold=0.5, success_k=2)  # fmt: skip
    try:
        prompts = [{"task": task, "seed": first_seed + i} for i in range(episodes)]
        # a measurement, not a gate: no low-kappa warning
        res = closed_loop_agreement(net, real, world, prompts, *decoders, queries, kappa_threshold=-1.0)
    finally:
        real.close()
    keep = ("kappa", "confusion", "real_success", "imagined_success", "episodes", "real_env_steps", "psnr_by_frame",
            "imagined_score", "score_auc")  # fmt: skip
    summary = {k: res[k] for k in keep} | {"recipe": recipe, "real_success_steps": res.get("real_success_steps")}
    if calib is not None:
        summary |= calibrated(calib, summary)
    mark_done(out, summary)
    return summary


def calibrated(calib: dict[str, Any], check: dict[str, Any]) -> dict[str, Any]:
    """The success threshold fitted on one closed-loop check (``calib``: its graded scores against its real outcomes,
    ``envs.agreement.fit_threshold``) applied to another (``check``); returns ``{"calibration", "fitted"}`` as
    :func:`closed_loop_check` documents."""
    from lightning_prophrl.envs.agreement import cohen_kappa, confusion, fit_threshold

    def real_of(c: dict[str, Any]) -> np.ndarray:
        return np.array([step is not None for step in c["real_success_steps"]])

    fit = fit_threshold(np.asarray(calib["imagined_score"]), real_of(calib))
    keep = ("episodes", "real_success", "imagined_success", "kappa", "score_auc", "real_env_steps")
    out: dict[str, Any] = {"calibration": {k: calib[k] for k in keep} | {"fit": fit}, "fitted": None}
    if fit is not None:
        real, imagined = real_of(check), np.asarray(check["imagined_score"]) > fit["threshold"]
        out["fitted"] = {"threshold": fit["threshold"], "kappa": cohen_kappa(real, imagined),
                         "imagined_success": float(imagined.mean()), "confusion": confusion(real, imagined)}  # fmt: skip
    return out


def task_readout(data: dict[str, str], out: str | Path, steps: int = 1500, seed: int = 0,
                 image_size: int = 64) -> tuple[Any, float]:  # fmt: skip
    """The end-effector readout of a held-out task: fitted on its ``adapt`` frames, its error (cm) measured on the
    real ``eval`` frames; cached in ``out``. Returns ``(readout, rmse_cm)``."""
    from lightning_prophrl.metrics.ee_readout import EndEffectorReadout, fit_ee_readout, readout_data, readout_error_cm

    out = Path(out)
    if is_done(out):
        return EndEffectorReadout.load(out), float(load_done(out)["rmse_cm"])
    readout = fit_ee_readout(*readout_data(data["adapt"], stride=2, image_size=image_size), steps=steps, seed=seed)
    rmse = readout_error_cm(readout, *readout_data(data["eval"], image_size=image_size))
    readout.save(out, {"rmse_cm": rmse, "fitted_on": data["adapt"], "checked_on": data["eval"]})
    mark_done(out, {"rmse_cm": rmse, "steps": steps, "seed": seed})
    return readout, rmse


def adapt(
    pretrained_dir: str,
    adapt_dir: str,
    out: str | Path,
    steps: int = 400,
    mode: Literal["lora", "full"] = "lora",
    seed: int = 0,
    batch_size: int = 16,
    lr: float | None = None,
    lora_rank: int = 16,
    self_forcing: float = 0.0,
) -> str:
    """Adapt the pretrained model to one task's ``adapt`` episodes; returns the adapted ``save_pretrained`` dir.

    Args:
        pretrained_dir: the pretrained model (with its ``stats.json``).
        adapt_dir: the few-shot dataset.
        out: stage directory (``<out>/model``).
        steps: optimizer steps.
        mode: ``"lora"`` (adapters only) or ``"full"``.
        seed: seeds the adapters, the clip stream and the noise.
        batch_size: clips per step.
        lr: AdamW learning rate (None: 1e-3 for LoRA, 1e-4 for full fine-tuning).
        lora_rank: LoRA rank (alpha = rank).
        self_forcing: share of the clips that continue from the model's own frames (``models.prophet.self_forcing``).
    """
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.prophet import adapt_prophet

    config = Prophet.load_config(pretrained_dir)
    return adapt_prophet(
        pretrained_dir, adapt_dir, out, steps=steps, mode=mode, seed=seed, chunk_len=int(config["action_chunk_length"]),
        history_len=int(config["history_length"]), batch_size=batch_size, lr=lr or (1e-3 if mode == "lora" else 1e-4),
        lora_rank=lora_rank, stats_from=pretrained_dir, self_forcing=self_forcing,
    )  # fmt: skip
