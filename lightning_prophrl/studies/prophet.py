"""The Prophet world-model study: does pretraining on other tasks help few-shot adaptation to a held-out task?

Stages (each writes ``done.json`` in its own output directory and is skipped when it exists, so a rerun resumes;
every stage is seeded and returns plain paths / dicts; TensorBoard logs of every training go to ``<out>/tb``):

1. :func:`generate_wm_data`: noisy-expert Meta-World episodes (per-episode action noise drawn in
   ``[noise, noise_max]``, ``stop_at_success=False`` so frames after the success exist) for the pretraining tasks (one
   dataset directory per task: the mixture) and for the held-out target task (<= 20 training episodes, plus a held-out
   evaluation set from other initial-state seeds).
2. :func:`pretrain_prophet`: ``ProphetPretrainModule`` on the equal-weight mixture of the pretraining tasks.
3. :func:`adapt_prophet`: the pretrained model adapted to the target episodes (LoRA rank 16 + conditioning modules, or
   full), and the "scratch" control: the same network trained from random weights on the same episodes with the same
   steps, batch and learning rate (all parameters: LoRA on a random base would freeze a random network).
4. :func:`world_model_report`: on the held-out target episodes, the metrics of ``evaluate_world_model`` (PSNR, SSIM,
   dyn PSNR, flow EPE / cosine) of the model vs copy-last vs shuffled actions; with vs without the history memory on
   long rollouts (per-segment PSNR); the success head's episode-level agreement with the simulator (confusion counts,
   Cohen's kappa); a contact sheet of real / GT-action / perturbed-action rollouts.
5. :func:`run_study`: all of it over seeds; ``results.md`` (mean +- std over seeds) and ``results.json``.

Decisions:

* Frame stride 4: Meta-World steps at 80 fps (``frame_skip`` 5 x 2.5 ms). One model frame = 4 simulator actions =
  one 4-action policy chunk of ``prophrl demo`` (``DemoConfig.chunk_len``), so Prophet runs at 20 fps.
* Prophet chunk ``L = 8`` frames per segment (``model_tiny.yaml``): one segment = 32 actions = 0.4 s; history memory
  of 8 frames (the last 1.6 s, pooled FramePack-style). A 150-step episode is 38 model frames = 5 segments, and the
  evaluation rolls out ``ceil(max_steps / (stride * L))`` segments (>= 3), i.e. the whole episode, so the success
  head's last segments are judged against the episode outcome.
* Camera and resolution: the ``workspace`` camera at 64 px, chosen (``lightning_prophrl.envs.rendering``) so that
  the object, the goal and the hand of the calibration tasks (pick-place, push, drawer, button, ...) stay inside the
  frame during whole expert episodes, with objects 1.3x larger than in the ``overview`` camera.
* Action-frame stream on, drawing the *commanded* end-effector target (``target_poses.npy``: Meta-World's mocap
  target), not the measured hand: the target is what an action says, and an imagined rollout can integrate it exactly
  from the policy's actions (``lightning_prophrl.envs.poses.CommandedPoses``, used by ``WorldModelEnv``), while the
  measured hand lags by up to ~10 cm. ``model_tiny.yaml`` injects the action frames both ways
  (``action_frame_mode: both``): pooled into the timestep embedding (as in the paper) and as pixel-aligned input
  channels. Earlier runs with the scalar stream only (the paper turns the action-frame stream off for online RL)
  learned to ignore the actions: shuffled actions scored the same (docs/history.md).
* Current frame as input channels of every frame (``cond_concat: true`` in ``model_tiny.yaml``, SVD-style): each
  future token sees the scene it continues from at its own position, next to the target drawn there. One-seed A/B at
  chunk 1, 1200 pretraining steps (docs/history.md, round 4): whole-episode PSNR 13.5 -> 16.2 dB, dyn PSNR 8.9 ->
  10.8 (above copy-last's 10.0); the actions are still not used either way.
* Training times shifted toward noise (``flow_shift: 24`` in ``model_tiny.yaml``): with the unshifted logit-normal the
  noisy input reveals the sparse residual target and the actions get no gradient (shuffled actions scored the same);
  at 24 the 3-seed study has the recorded actions beating shuffled ones and copy-last on PSNR and flow EPE
  (docs/results.md, study v4).
* Target task ``pick-place-v3`` (the project's RL testbed) held out of the pretraining tasks ``push``, ``reach``,
  ``drawer-open``, ``button-press-topdown``. Seeds: pretraining episodes ``seed + i``, target training episodes
  ``seed + 500 + i``, held-out evaluation episodes ``seed + 800 + i`` (all demo seeds < 1000).

Loading a model back: every model directory this study writes (``<stage>/model``) is a ``save_pretrained`` directory:
``Prophet.from_pretrained(dir)``. LoRA adapters are fused into the base weights and the peft layers removed before
saving (:func:`merge_lora`), so no adapter loading is needed. Each adapted directory also holds the ``stats.json``
that normalized its training actions (give it to ``WorldModelEnv(action_stats=...)`` or as ``stats_from``).

Sizes and CPU time (one torch thread on a loaded 2-core machine, measured at 64 px, batch 8, ``L = 8``, history 8):

* full defaults (:class:`ProphetStudyConfig`): 4 pretraining tasks x 30 episodes of 150 steps, 20 target + 20
  held-out episodes (24k frames at ~73 frames/s: ~6 min, once); per seed 3000 pretraining steps (0.8 s/step: ~40 min),
  1000 LoRA + 1000 scratch steps (0.7 s/step: ~23 min) and three reports (20 episodes x 5 segments x 4 Euler steps,
  3 rollouts each: ~1 min each). About 66 min per seed, ~3.4 h for seeds 0 1 2.
* ``--quick``: 32 px, chunk 4, history 4, 3 episodes per task of 48 steps, 150 + 50 steps, one seed: ~1 min. It proves
  the plumbing only: the models still sample noise (PSNR ~8 dB against 18.5 dB for copy-last).

Action noise: ``[0.1, 1.0]`` rather than ``[0.1, 0.6]``: with 0.6 the pick-place expert still succeeds in 80-90% of
150-step episodes (2-4 failures in 20, too few for the success-head agreement); 1.0 gives 60-75% (measured).

Run: ``python -m lightning_prophrl.studies.prophet [--quick] [--seeds 0 1 2] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.stage_cache import is_done, load_done, mark_done

MODEL_TINY_YAML = Path(__file__).resolve().parents[2] / "configs" / "prophet" / "model_tiny.yaml"
TARGET_SEED_OFFSET, EVAL_SEED_OFFSET = 500, 800
MAX_TARGET_EPISODES = 20
METRICS = ("psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos")


# ---------------------------------------------------------------------------------------------------------------------
# 1. Data
# ---------------------------------------------------------------------------------------------------------------------
def generate_wm_data(
    out: str | Path,
    pretrain_tasks: Sequence[str] = ("push-v3", "reach-v3", "drawer-open-v3", "button-press-topdown-v3"),
    target_task: str = "pick-place-v3",
    episodes_per_task: int = 30,
    target_episodes: int = 20,
    eval_episodes: int = 20,
    size: int = 64,
    noise: float = 0.1,
    noise_max: float = 1.0,
    max_steps: int = 150,
    camera: str = "workspace",
    seed: int = 0,
) -> dict[str, Any]:
    """Noisy-expert world-model data: one dataset per pretraining task, the target's few-shot and held-out sets.

    Args:
        out: output directory (``pretrain/<task>``, ``target_train``, ``target_eval``).
        pretrain_tasks: Meta-World tasks of the pretraining mixture.
        target_task: held-out task (must not be a pretraining task).
        episodes_per_task: episodes per pretraining task (initial-state seeds ``seed + i``).
        target_episodes: few-shot target episodes, at most 20 (seeds ``seed + 500 + i``).
        eval_episodes: held-out target episodes (seeds ``seed + 800 + i``).
        size: frame size in pixels.
        noise: lower end of the per-episode action-noise std.
        noise_max: upper end (see the module docstring on the choice of 1.0).
        max_steps: step cap; episodes do not stop at success.
        camera: camera preset (``workspace``: see the module docstring).
        seed: base initial-state seed.

    Returns:
        ``{"pretrain": [dirs], "target": dir, "eval": dir, "summary": {dir: generator summary}}``.
    """
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    if not pretrain_tasks:
        raise ValueError("`pretrain_tasks` is empty")
    if target_task in pretrain_tasks:
        raise ValueError(f"`target_task` {target_task!r} must be held out of `pretrain_tasks`")
    if not 1 <= target_episodes <= MAX_TARGET_EPISODES:
        raise ValueError(f"`target_episodes` must lie in [1, {MAX_TARGET_EPISODES}] (few-shot), got {target_episodes}")
    if not 1 <= episodes_per_task <= TARGET_SEED_OFFSET or not 1 <= eval_episodes <= 1000 - EVAL_SEED_OFFSET - seed:
        raise ValueError(
            f"`episodes_per_task` must lie in [1, {TARGET_SEED_OFFSET}] and `eval_episodes` in "
            f"[1, {1000 - EVAL_SEED_OFFSET - seed}] (demo seeds stay below 1000), "
            f"got {episodes_per_task}, {eval_episodes}"
        )
    out = Path(out)
    jobs = [(out / "pretrain" / t, [t], episodes_per_task, seed) for t in pretrain_tasks]
    jobs += [(out / "target_train", [target_task], target_episodes, seed + TARGET_SEED_OFFSET),
             (out / "target_eval", [target_task], eval_episodes, seed + EVAL_SEED_OFFSET)]  # fmt: skip
    summary = {}
    for path, tasks, n, first_seed in jobs:
        if not is_done(path):
            shutil.rmtree(path, ignore_errors=True)  # a partial dataset from an interrupted run
            s = generate_metaworld(tasks, n, str(path), noise=noise, noise_max=noise_max, size=size, camera=camera,
                                   max_steps=max_steps, stop_at_success=False, seed=first_seed,
                                   progress=False)  # fmt: skip
            mark_done(path, s)
        summary[str(path)] = load_done(path)
    return {"pretrain": [str(j[0]) for j in jobs[:-2]], "target": str(jobs[-2][0]), "eval": str(jobs[-1][0]),
            "summary": summary}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# 2. Model and training
# ---------------------------------------------------------------------------------------------------------------------
def prophet_config(
    image_size: int = 64,
    chunk_len: int = 8,
    history_length: int = 8,
    use_action_frames: bool | None = None,
    base: str | Path = MODEL_TINY_YAML,
    **overrides: Any,
) -> dict[str, Any]:
    """``Prophet`` constructor kwargs: ``model_tiny.yaml``'s ``init_args`` with the study's sizes.

    Args:
        image_size: frame size (a multiple of 8: pixel codec x4, patch 2).
        chunk_len: frames per segment (``action_chunk_length``).
        history_length: memory frames (0 disables the memory); the FramePack scales split them newest -> oldest.
        use_action_frames: build the action-frame stream (None: the YAML's value; see the module docstring).
        base: the YAML whose ``init_args`` are the defaults.
        **overrides: any other ``Prophet`` argument.
    """
    import yaml

    if image_size % 8 or image_size < 8:
        raise ValueError(f"`image_size` must be a positive multiple of 8, got {image_size}")
    if chunk_len < 1 or history_length < 0:
        raise ValueError(f"`chunk_len` must be >= 1 and `history_length` >= 0, got {chunk_len}, {history_length}")
    if not Path(base).exists():
        raise FileNotFoundError(f"`base` model config {base} not found (configs/ ships with the repository)")
    cfg = dict(yaml.safe_load(Path(base).read_text())["init_args"])
    scales = [list(s) for s in cfg["history_scales"]][: max(1, min(3, history_length))]
    if history_length >= 4:
        frames = [history_length // 4, history_length // 4, history_length - 2 * (history_length // 4)]
    else:
        frames = [1] * max(1, history_length)
    cfg.update(action_chunk_length=chunk_len, history_length=history_length, history_scales=scales,
               history_scale_frames=frames,
               max_size=[max(64, 1 + chunk_len), max(64, image_size // 4), max(64, image_size // 4)])  # fmt: skip
    unknown = set(overrides) - set(cfg) - {"codec_kwargs"}
    if unknown:
        raise KeyError(f"unknown Prophet argument(s) in `overrides`: {sorted(unknown)}")
    if use_action_frames is not None:
        cfg["use_action_frames"] = use_action_frames
    cfg.update(overrides)
    return cfg


def _fit(module: Any, datasets: list[Any], log_dir: str, name: str, steps: int, seed: int, stride: int, chunk_len: int,
         history_len: int, image_size: int, batch_size: int, ema_decay: float | None,
         stats_from: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train ``module`` for ``steps`` optimizer steps on clips of ``datasets`` (paths, or ``{"path", "weight"}``
    dicts of a weighted mixture; TensorBoard: ``<log_dir>/<name>``), actions normalized by ``stats_from``'s
    ``stats.json`` (None: each dataset's own)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_prophrl.callbacks import EMACallback
    from lightning_prophrl.datamodules.robot import RobotClipDataModule

    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    specs = [{"path": d, "stride": stride} if isinstance(d, str) else {"stride": stride, **d} for d in datasets]
    dm = RobotClipDataModule(specs, history_len=history_len,
                             chunk_len=chunk_len, image_size=image_size, batch_size=batch_size,
                             samples_per_epoch=steps * batch_size, windows_per_episode=8,
                             shuffle_buffer=min(64, 4 * batch_size), seed=seed, stats_from=stats_from)  # fmt: skip
    callbacks = [EMACallback(decay=ema_decay, warmup=True)] if ema_decay else []
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, gradient_clip_val=1.0,
                        logger=TensorBoardLogger(log_dir, name=name), callbacks=callbacks,
                        log_every_n_steps=min(10, steps), enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    loss = trainer.callback_metrics.get("train/loss")
    return {"seconds": time.perf_counter() - t0, "steps": int(trainer.global_step), "seed": seed,
            "final_train_loss": None if loss is None else float(loss), "datasets": datasets}  # fmt: skip


def _optimizers(lr: float, steps: int) -> tuple[Any, Any]:
    """AdamW (weight decay 0.01) with a linear warm-up over the first ``min(200, steps // 10)`` steps."""
    warmup = max(1, min(200, steps // 10))
    return (lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
            lambda opt: torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warmup))  # fmt: skip


def pretrain_prophet(
    data_dirs: Sequence[str],
    out: str | Path,
    steps: int = 3000,
    seed: int = 0,
    stride: int = 4,
    chunk_len: int = 8,
    history_len: int = 8,
    image_size: int = 64,
    batch_size: int = 8,
    lr: float = 3e-4,
    ema_decay: float | None = 0.999,
    model_config: dict[str, Any] | None = None,
    log_dir: str | Path | None = None,
    stats_from: str | None = None,
) -> str:
    """Pretrain a Prophet on the equal-weight mixture of ``data_dirs``; returns its ``save_pretrained`` directory.

    Args:
        data_dirs: pretraining datasets (one per task).
        out: stage directory; the model is exported to ``<out>/model``.
        steps: optimizer steps.
        seed: seeds the weights, the clip stream and the noise.
        stride: simulator frames per model frame (4: see the module docstring).
        chunk_len: frames per segment ``L``.
        history_len: memory frames (data history and model ``history_length``).
        image_size: frame size.
        batch_size: clips per step.
        lr: AdamW learning rate.
        ema_decay: EMA of the weights (with warm-up), exported at the end; None disables it.
        model_config: ``Prophet`` kwargs (default :func:`prophet_config` of the sizes above).
        log_dir: TensorBoard directory (default ``<out>/tb``); the run is named ``<out parent>_<out name>``.
        stats_from: directory whose ``stats.json`` normalizes every dataset and is exported with the model (e.g. a
            corpus's pooled statistics); None: each dataset's own, nothing exported.
    """
    import lightning as L

    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules import ProphetPretrainModule

    out = Path(out)
    if not is_done(out):
        L.seed_everything(seed, workers=True, verbose=False)
        model = Prophet(**(model_config or prophet_config(image_size, chunk_len, history_len)))
        opt, sched = _optimizers(lr, steps)
        module = ProphetPretrainModule(model, optimizer=opt, lr_scheduler=sched, export_dir=str(out / "model"),
                                       stats_from=stats_from)  # fmt: skip
        info = _fit(module, list(data_dirs), str(log_dir or out / "tb"), f"{out.parent.name}_{out.name}", steps, seed,
                    stride, chunk_len, history_len, image_size, batch_size, ema_decay, stats_from)  # fmt: skip
        mark_done(out, info)
    return str(out / "model")


def merge_lora(model: Any) -> Any:
    """Fuse a Prophet's LoRA adapters into its base weights and remove the peft layers (in place).

    The result is a plain ``Prophet`` that computes what the adapted one did: ``save_pretrained`` writes it and
    ``Prophet.from_pretrained`` reads it back without any adapter.
    """
    if getattr(model, "_hf_peft_config_loaded", False):
        model.fuse_lora()
        model.unload_lora()
    return model


def adapt_prophet(
    pretrained_dir: str | None,
    target_dir: str | Sequence[Any],
    out: str | Path,
    steps: int = 1000,
    mode: Literal["lora", "full"] = "lora",
    seed: int = 0,
    stride: int = 4,
    chunk_len: int = 8,
    history_len: int = 8,
    image_size: int = 64,
    batch_size: int = 8,
    lr: float = 3e-4,
    lora_rank: int = 16,
    ema_decay: float | None = 0.999,
    model_config: dict[str, Any] | None = None,
    log_dir: str | Path | None = None,
    stats_from: str | None = None,
) -> str:
    """Adapt a pretrained Prophet to the target episodes, or (``pretrained_dir=None``) train one from scratch on them.

    Args:
        pretrained_dir: ``save_pretrained`` directory of the pretrained model; None trains a freshly initialised
            network (``model_config`` / :func:`prophet_config`) with every parameter and the same budget (``mode`` is
            then ignored and recorded as ``"scratch"``).
        target_dir: few-shot target dataset, or a weighted mixture (paths or ``{"path", "weight"}`` dicts, as for
            ``RobotClipDataModule``).
        out: stage directory; the model goes to ``<out>/model`` (LoRA fused in, see :func:`merge_lora`) with the
            (first) target dataset's ``stats.json``.
        steps: optimizer steps (the shared adaptation budget).
        mode: ``"lora"`` (rank ``lora_rank`` on the DiT attention + the conditioning modules; paper: adaptation)
            or ``"full"``.
        seed, stride, chunk_len, history_len, image_size, batch_size, lr, ema_decay, log_dir: as in
            :func:`pretrain_prophet`.
        lora_rank: LoRA rank (alpha = rank).
        model_config: ``Prophet`` kwargs of the scratch network.
        stats_from: directory whose ``stats.json`` normalizes the target actions and is copied to the model (e.g. the
            pretrained model's own, pooled over its corpus); None: the (first) target dataset's.
    """
    import lightning as L

    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules import ProphetAdaptModule, ProphetPretrainModule

    if mode not in ("lora", "full"):
        raise ValueError(f"`mode` must be 'lora' or 'full', got {mode!r}")
    out = Path(out)
    if is_done(out):
        return str(out / "model")
    L.seed_everything(seed, workers=True, verbose=False)
    opt, sched = _optimizers(lr, steps)
    if pretrained_dir is None:
        model = Prophet(**(model_config or prophet_config(image_size, chunk_len, history_len)))
        module, mode = ProphetPretrainModule(model, optimizer=opt, lr_scheduler=sched), "scratch"
    else:
        module = ProphetAdaptModule(pretrained_path=pretrained_dir, mode=mode, lora_rank=lora_rank, optimizer=opt,
                                    lr_scheduler=sched)  # fmt: skip
    if int(module.model.config.action_chunk_length) != chunk_len:
        raise ValueError(f"`chunk_len`={chunk_len} differs from the model's {module.model.config.action_chunk_length}")
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    datasets = [target_dir] if isinstance(target_dir, str) else list(target_dir)
    if not datasets:
        raise ValueError("`target_dir` is an empty mixture")
    info = _fit(module, datasets, str(log_dir or out / "tb"), f"{out.parent.name}_{out.name}", steps, seed,
                stride, chunk_len, history_len, image_size, batch_size, ema_decay, stats_from)  # fmt: skip
    merge_lora(module.model).save_pretrained(str(out / "model"))
    first = datasets[0] if isinstance(datasets[0], str) else datasets[0]["path"]
    shutil.copy(Path(stats_from or first) / K.STATS_FILE, out / "model" / K.STATS_FILE)
    mark_done(out, {**info, "mode": mode, "pretrained": pretrained_dir, "trainable_parameters": trainable})
    return str(out / "model")


# ---------------------------------------------------------------------------------------------------------------------
# 3. Report
# ---------------------------------------------------------------------------------------------------------------------
@contextmanager
def memory_disabled(model: Any) -> Iterator[None]:
    """Run ``model`` without its history memory: every forward gets ``history_latents=None`` (exactly the computation
    of an all-masked memory, i.e. history length 0)."""

    names = list(inspect.signature(model.forward).parameters)
    slots = {names.index(k): k for k in ("history_latents", "history_mask")}

    def drop_history(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        args = tuple(None if i in slots else a for i, a in enumerate(args))
        return args, {**kwargs, **{k: None for i, k in slots.items() if i >= len(args)}}

    handle = model.register_forward_pre_hook(drop_history, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _score(video: torch.Tensor, real: torch.Tensor, batch_size: int) -> dict[str, float]:
    """``evaluate_world_model``'s metrics of imagined vs real videos ``(N, 1 + T, 3, H, W)``."""
    from lightning_prophrl.callbacks.world_model import VideoMetricSet

    metrics = VideoMetricSet()
    for i in range(0, len(real), batch_size):
        metrics.update(video[i : i + batch_size], real[i : i + batch_size])
    return metrics.compute()


def _segment_psnr(video: torch.Tensor, real: torch.Tensor, segments: int) -> list[float]:
    """Mean PSNR of each rollout segment (frames ``1 + s L .. (s + 1) L``) over the episodes."""
    from lightning_prophrl.metrics import frame_psnr

    psnr = frame_psnr(video[:, 1:].float(), real[:, 1:].float())  # (N, S * L)
    return psnr.view(psnr.shape[0], segments, -1).mean((0, 2)).tolist()


def contact_sheet(videos: Sequence[torch.Tensor], path: str | Path, episodes: int = 2, max_frames: int = 12) -> str:
    """PNG grid: for each of the first ``episodes`` episodes, one row per video of ``videos`` (e.g. real, generated
    with GT actions, generated with perturbed actions), ``min(T, max_frames)`` evenly spaced columns.

    Args:
        videos: equally shaped ``(N, T, 3, H, W)`` videos in ``[-1, 1]``.
        path: output PNG.
        episodes: episodes shown.
        max_frames: columns.
    """
    import cv2

    from lightning_prophrl.metrics import video_to_uint8

    if not videos or any(v.shape != videos[0].shape or v.ndim != 5 for v in videos):
        raise ValueError(f"`videos` must be equal (N, T, 3, H, W) videos, got {[tuple(v.shape) for v in videos]}")
    t = videos[0].shape[1]
    cols = torch.from_numpy(np.linspace(0, t - 1, min(t, max_frames)).round().astype(np.int64))
    rows = torch.stack([v[:episodes, cols].float() for v in videos], 1).flatten(0, 1)  # (E * V, F, 3, H, W)
    grid = video_to_uint8(rows).permute(0, 2, 1, 3, 4).flatten(2, 3).flatten(0, 1).numpy()  # (E V H, F W, 3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(grid), cv2.COLOR_RGB2BGR))
    return str(path)


def _success_agreement(prob: torch.Tensor, real: torch.Tensor, last: int, threshold: float) -> dict[str, Any]:
    """Imagined success (``prob`` ``(N, S)`` above ``threshold`` in each of the ``last`` segments) vs real ``(N,)``."""
    from lightning_prophrl.envs.agreement import cohen_kappa, confusion

    imagined = (prob[:, -last:] > threshold).all(1).numpy()
    real_np = (real.float() > 0.5).numpy()
    return {"confusion": confusion(real_np, imagined), "kappa": cohen_kappa(real_np, imagined),
            "accuracy": float((imagined == real_np).mean()), "real_rate": float(real_np.mean()),
            "imagined_rate": float(imagined.mean()), "final_prob_mean": float(prob[:, -1].mean())}  # fmt: skip


def world_model_report(
    model_dir: str,
    eval_dir: str,
    out: str | Path | None = None,
    num_episodes: int = 20,
    num_segments: int = 5,
    num_steps: int = 4,
    seed: int = 0,
    stride: int = 4,
    image_size: int = 64,
    stats_from: str | None = None,
    success_last: int = 2,
    success_threshold: float = 0.5,
    batch_size: int = 4,
    sheet_episodes: int = 2,
) -> dict[str, Any]:
    """Score a Prophet on held-out episodes rolled out from their first frame under their real actions.

    Args:
        model_dir: ``save_pretrained`` directory.
        eval_dir: held-out dataset.
        out: where ``report.json``, ``contact_sheet.png`` and ``done.json`` go (None: nothing written, no cache).
        num_episodes: held-out episodes used.
        num_segments: rollout segments ``S`` (>= 3 shows the memory's effect; cover the episode for the success head).
        num_steps: Euler steps per segment.
        seed: rollout noise (shared by all variants, so only the actions / memory differ).
        stride: simulator frames per model frame (as in training).
        image_size: frame size (as in training).
        stats_from: directory of the ``stats.json`` that normalized the model's training actions (default
            ``model_dir`` when it has one, else ``eval_dir``'s own statistics).
        success_last: the imagined outcome is success when each of the last ``success_last`` segments' success
            probability exceeds ``success_threshold``.
        success_threshold: success probability threshold.
        batch_size: episodes per rollout call.
        sheet_episodes: episodes on the contact sheet.

    Returns:
        ``{metric}`` (model), ``{metric}_copy_last``, ``{metric}_shuffled``, ``{metric}_no_memory`` for the metrics of
        ``evaluate_world_model``; ``psnr_per_segment`` (and ``_no_memory``); ``memory_effect`` and
        ``action_effect`` (mean absolute pixel change of the imagined video without memory / under shuffled actions);
        ``success`` (confusion counts, kappa, accuracy, rates); ``contact_sheet``; sizes.
    """
    from lightning_prophrl.callbacks.world_model import load_eval_episodes, rollout_episodes, shuffle_actions
    from lightning_prophrl.models.prophet import Prophet

    if num_segments < 1 or success_last < 1:
        raise ValueError(f"`num_segments` and `success_last` must be >= 1, got {num_segments}, {success_last}")
    if out is not None and is_done(Path(out)):
        return json.loads((Path(out) / "report.json").read_text())
    model = Prophet.from_pretrained(model_dir).eval()
    chunk = int(model.config.action_chunk_length)
    if stats_from is None and (Path(model_dir) / K.STATS_FILE).exists():
        stats_from = model_dir
    eps = load_eval_episodes([{"path": eval_dir, "stride": stride}], num_episodes, num_segments, chunk, image_size,
                             stats_from=stats_from)  # fmt: skip
    real = torch.cat([eps[K.COND_FRAME][:, None], eps[K.FUTURE]], 1).float()
    # 1. Rollouts: real actions, shuffled actions (same noise), real actions without memory
    frames = bool(model.config.use_action_frames)  # commanded targets of the episode (of the other one when shuffled)
    pred, prob = rollout_episodes(model, eps, num_steps, seed, batch_size, use_action_frames=frames)
    shuffled = rollout_episodes(model, shuffle_actions(eps, seed), num_steps, seed, batch_size, frames)[0]
    with memory_disabled(model):
        no_mem = rollout_episodes(model, eps, num_steps, seed, batch_size, use_action_frames=frames)[0]
    # 2. Metrics
    report: dict[str, Any] = {"model_dir": model_dir, "episodes": len(real), "segments": num_segments,
                              "frames_per_segment": chunk,
                              "history_length": int(model.config.history_length)}  # fmt: skip
    for suffix, video in {"": pred, "_copy_last": real[:, :1].expand_as(real), "_shuffled": shuffled,
                          "_no_memory": no_mem}.items():  # fmt: skip
        report.update({f"{k}{suffix}": v for k, v in _score(video, real, batch_size).items()})
    report["psnr_per_segment"] = _segment_psnr(pred, real, num_segments)
    report["psnr_per_segment_no_memory"] = _segment_psnr(no_mem, real, num_segments)
    report["memory_effect"] = float((pred - no_mem).abs().mean())
    report["action_effect"] = float((pred - shuffled).abs().mean())
    if prob is not None:
        report["success"] = _success_agreement(prob, eps[K.SUCCESS], min(success_last, num_segments),
                                               success_threshold)  # fmt: skip
    if out is not None:
        report["contact_sheet"] = contact_sheet([real, pred, shuffled], Path(out) / "contact_sheet.png",
                                                sheet_episodes)  # fmt: skip
        (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
        mark_done(Path(out), {"report": str(Path(out) / "report.json")})
    return report


# ---------------------------------------------------------------------------------------------------------------------
# 4. Study
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ProphetStudyConfig:
    """Settings of the study (defaults: the full run, ~3.4 CPU-hours, see the module docstring); :meth:`quick` shrinks
    it to prove the plumbing in about a minute."""

    out: str = "runs/prophet_study"
    pretrain_tasks: list[str] = field(
        default_factory=lambda: ["push-v3", "reach-v3", "drawer-open-v3", "button-press-topdown-v3"]
    )
    target_task: str = "pick-place-v3"
    episodes_per_task: int = 30
    target_episodes: int = 20
    eval_episodes: int = 20
    image_size: int = 64
    camera: str = "workspace"
    max_steps: int = 150
    noise: float = 0.1
    noise_max: float = 1.0
    data_seed: int = 0
    stride: int = 4
    chunk_len: int = 8
    history_len: int = 8
    batch_size: int = 8
    lr: float = 3e-4
    ema_decay: float | None = 0.999
    pretrain_steps: int = 3000
    adapt_steps: int = 1000
    adapt_mode: Literal["lora", "full"] = "lora"
    lora_rank: int = 16
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_segments: int | None = None  # None: cover the whole episode, at least 3
    num_steps: int = 4
    success_last: int = 2
    threads: int = 1
    prediction_target: Literal["frames", "residual"] = "residual"
    cond_noise: float | None = None  # None: model_tiny.yaml's value
    action_tokens: bool | None = None  # None: model_tiny.yaml's value
    use_action_frames: bool | None = None  # None: model_tiny.yaml's value
    action_frame_mode: Literal["pooled", "concat", "both"] | None = None  # None: model_tiny.yaml's value
    cond_concat: bool | None = None  # None: model_tiny.yaml's value
    prev_concat: bool | None = None  # None: model_tiny.yaml's value
    flow_shift: float | None = None  # None: model_tiny.yaml's value
    unshifted_fraction: float | None = None  # None: model_tiny.yaml's value

    @property
    def segments(self) -> int:
        """Rollout segments of the report: the whole (strided) episode, at least 3."""
        if self.num_segments is not None:
            return self.num_segments
        return max(3, math.ceil(self.max_steps / (self.stride * self.chunk_len)))

    @classmethod
    def quick(cls, **kw: Any) -> ProphetStudyConfig:
        base = dict(out="runs/prophet_study_quick", episodes_per_task=3, target_episodes=4, eval_episodes=4,
                    image_size=32, max_steps=48, chunk_len=4, history_len=4, batch_size=4, pretrain_steps=150,
                    adapt_steps=50, seeds=[0], num_steps=2)  # fmt: skip
        base.update(kw)
        return cls(**base)


def _train_kwargs(cfg: ProphetStudyConfig, seed: int) -> dict[str, Any]:
    return dict(seed=seed, stride=cfg.stride, chunk_len=cfg.chunk_len, history_len=cfg.history_len,
                image_size=cfg.image_size, batch_size=cfg.batch_size, lr=cfg.lr, ema_decay=cfg.ema_decay,
                log_dir=Path(cfg.out) / "tb", model_config=prophet_config(cfg.image_size, cfg.chunk_len,
                cfg.history_len, prediction_target=cfg.prediction_target, **_model_options(cfg)))  # fmt: skip


def _model_options(cfg: ProphetStudyConfig) -> dict[str, Any]:
    """The optional Prophet arguments set in ``cfg`` (None keeps ``model_tiny.yaml``'s value)."""
    keys = (
        "cond_noise",
        "action_tokens",
        "use_action_frames",
        "action_frame_mode",
        "cond_concat",
        "prev_concat",
        "flow_shift",
        "unshifted_fraction",
    )
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def run_study(cfg: ProphetStudyConfig) -> dict[str, Any]:
    """All stages over ``cfg.seeds``; writes ``results.md`` and ``results.json`` under ``cfg.out``.

    Returns:
        ``{"table": markdown, "reports": {setting: [report per seed]}, "data": generate_wm_data's result}``.
    """
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t0 = time.perf_counter()
    data = generate_wm_data(out / "data", cfg.pretrain_tasks, cfg.target_task, cfg.episodes_per_task,
                            cfg.target_episodes, cfg.eval_episodes, cfg.image_size, cfg.noise, cfg.noise_max,
                            cfg.max_steps, cfg.camera, cfg.data_seed)  # fmt: skip
    adapted = f"pretrained+{cfg.adapt_mode}"
    reports: dict[str, list[dict[str, Any]]] = {adapted: [], "scratch": [], "pretrained_only": []}
    for seed in cfg.seeds:
        kw = _train_kwargs(cfg, seed)
        pre = pretrain_prophet(data["pretrain"], out / "pretrain" / f"seed{seed}", cfg.pretrain_steps, **kw)
        models = {
            adapted: adapt_prophet(
                pre,
                data["target"],
                out / f"adapt_{cfg.adapt_mode}" / f"seed{seed}",
                cfg.adapt_steps,
                cfg.adapt_mode,
                lora_rank=cfg.lora_rank,
                **kw,
            ),  # fmt: skip
            "scratch": adapt_prophet(None, data["target"], out / "scratch" / f"seed{seed}", cfg.adapt_steps, **kw),
            "pretrained_only": pre,
        }
        for name, model_dir in models.items():
            reports[name].append(world_model_report(
                model_dir, data["eval"], out / "report" / name.replace("+", "_") / f"seed{seed}", cfg.eval_episodes,
                cfg.segments, cfg.num_steps, seed, cfg.stride, cfg.image_size, stats_from=data["target"],
                success_last=cfg.success_last))  # fmt: skip
    table = study_table(cfg, reports)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"config": asdict(cfg), "reports": reports}, indent=2))
    print(table)
    print(f"\nwrote {out / 'results.md'}, TensorBoard logs in {out / 'tb'} ({time.perf_counter() - t0:.0f} s)")
    return {"table": table, "reports": reports, "data": data}


def _ms(values: Sequence[float], digits: int = 2) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def _row(label: str, rs: list[dict[str, Any]], suffix: str, success: bool) -> str:
    """One table row from the reports of several seeds (metric keys ``{metric}{suffix}``)."""
    cells = [label] + [_ms([r[m + suffix] for r in rs], 3 if "flow" in m else 2)
                       for m in ("psnr", "dyn_psnr", "flow_epe", "flow_cos")]  # fmt: skip
    seg_key = "psnr_per_segment" + ("_no_memory" if suffix == "_no_memory" else "")
    cells.append(_ms([r[seg_key][-1] for r in rs]) if suffix in ("", "_no_memory") else "–")
    if success and all("success" in r for r in rs):
        s = [r["success"] for r in rs]
        cells += [_ms([x["kappa"] for x in s]), _ms([x["accuracy"] for x in s]),
                  f"{_ms([x['real_rate'] for x in s])} / {_ms([x['imagined_rate'] for x in s])}"]  # fmt: skip
    else:
        cells += ["–", "–", "–"]
    return "| " + " | ".join([*cells, str(len(rs))]) + " |"


def study_table(cfg: ProphetStudyConfig, reports: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table, mean ± std over seeds, on the held-out target episodes.

    One row per model setting, then the same model under shuffled actions and without memory, and the copy-last
    baseline (the first frame held still). Success columns: the success head on the real-action rollout (Cohen's
    kappa and accuracy against the simulator's episode outcome; the rates show degenerate, one-class cases).
    """
    head = ["setting", "PSNR", "dyn PSNR", "flow EPE", "flow cos", "PSNR last segment", "success kappa",
            "success acc", "success rate real / imagined", "seeds"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in reports.items():
        lines.append(_row(name, rs, "", True))
        lines.append(_row(f"{name} · shuffled actions", rs, "_shuffled", False))
        lines.append(_row(f"{name} · no memory", rs, "_no_memory", False))
    rs = next(iter(reports.values()))
    lines.append(_row("copy-last (first frame held)", rs, "_copy_last", False))
    r0 = rs[0]
    lines.append(f"\n{r0['episodes']} held-out {cfg.target_task} episodes, {r0['segments']} segments x "
                 f"{r0['frames_per_segment']} frames (stride {cfg.stride}), {cfg.num_steps} Euler steps; "
                 f"{cfg.target_episodes} target training episodes, {cfg.adapt_steps} adaptation steps, "
                 f"{cfg.pretrain_steps} pretraining steps on {', '.join(cfg.pretrain_tasks)}.")  # fmt: skip
    return "\n".join(lines)


def _bool_flag(ap: argparse.ArgumentParser) -> Any:
    """``flag(name, help)``: a ``--x/--no-x`` option whose default None keeps ``model_tiny.yaml``'s value."""
    return lambda name, help: ap.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m lightning_prophrl.studies.prophet", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny settings that prove the plumbing (~1 minute)")
    ap.add_argument("--out", default=None, help="output directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds")
    ap.add_argument("--pretrain-steps", type=int, default=None)
    ap.add_argument("--adapt-steps", type=int, default=None)
    ap.add_argument("--adapt-mode", choices=["lora", "full"], default=None)
    ap.add_argument("--cond-noise", type=float, default=None, help="Prophet `cond_noise` (drift augmentation)")
    flag = _bool_flag(ap)
    flag("--action-tokens", "Prophet `action_tokens` (actions as extra keys/values)")
    flag("--use-action-frames", "Prophet `use_action_frames` (render and feed the commanded end-effector targets)")
    ap.add_argument(
        "--action-frame-mode",
        choices=["pooled", "concat", "both"],
        default=None,
        help="Prophet `action_frame_mode` (how action frames enter the DiT)",
    )
    flag("--cond-concat", "Prophet `cond_concat` (the current frame also as input channels of every frame)")
    flag("--prev-concat", "Prophet `prev_concat` (the frame before the current one also as input channels)")
    ap.add_argument("--flow-shift", type=float, default=None, help="Prophet `flow_shift` (time shift toward noise)")
    ap.add_argument(
        "--unshifted-fraction",
        type=float,
        default=None,
        help="Prophet `unshifted_fraction` (training times kept unshifted)",
    )
    ap.add_argument("--chunk-len", type=int, default=None, help="frames per generated segment (default 8)")
    ap.add_argument("--history-len", type=int, default=None, help="memory frames (default 8; 0 disables it)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    ap.add_argument(
        "--prediction-target",
        choices=["frames", "residual"],
        default=None,
        help="what the flow generates (Prophet `prediction_target`; default residual)",
    )
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "quick" and v is not None}
    cfg = ProphetStudyConfig.quick(**overrides) if args.quick else ProphetStudyConfig(**overrides)
    return run_study(cfg)


if __name__ == "__main__":
    main()
