"""Prophet recipes: world-model data from the Meta-World simulator, the model config, pretraining on many tasks and
LoRA adaptation to a target task (each a cached Lightning fit), merging the adapter, and switching the memory off.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("MUJOCO_GL", "egl")

import torch

from lightning_prophrl import constants as K
from lightning_prophrl.constants import CONFIG_DIR
from lightning_prophrl.stage_cache import is_done, load_done, mark_done

MODEL_TINY_YAML = CONFIG_DIR / "prophet" / "model_tiny.yaml"
TARGET_SEED_OFFSET, EVAL_SEED_OFFSET = 500, 800  # seeds of the target-task and evaluation episodes
MAX_TARGET_EPISODES = 20


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
    self_forcing: float = 0.0,
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
        self_forcing: share of the clips whose second segment continues from the model's own frames
            (``models.prophet.self_forcing``; the clips then hold two segments of ``chunk_len``).
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
        module = ProphetPretrainModule(model, optimizer=opt, lr_scheduler=sched, self_forcing=self_forcing)
        mode = "scratch"
    else:
        module = ProphetAdaptModule(pretrained_path=pretrained_dir, mode=mode, lora_rank=lora_rank, optimizer=opt,
                                    lr_scheduler=sched, self_forcing=self_forcing)  # fmt: skip
    if int(module.model.config.action_chunk_length) != chunk_len:
        raise ValueError(f"`chunk_len`={chunk_len} differs from the model's {module.model.config.action_chunk_length}")
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    datasets = [target_dir] if isinstance(target_dir, str) else list(target_dir)
    if not datasets:
        raise ValueError("`target_dir` is an empty mixture")
    info = _fit(module, datasets, str(log_dir or out / "tb"), f"{out.parent.name}_{out.name}", steps, seed,
                stride, chunk_len * (2 if self_forcing > 0 else 1), history_len, image_size, batch_size, ema_decay,
                stats_from)  # fmt: skip
    merge_lora(module.model).save_pretrained(str(out / "model"))
    first = datasets[0] if isinstance(datasets[0], str) else datasets[0]["path"]
    shutil.copy(Path(stats_from or first) / K.STATS_FILE, out / "model" / K.STATS_FILE)
    mark_done(out, {**info, "mode": mode, "pretrained": pretrained_dir, "trainable_parameters": trainable,
                    "self_forcing": self_forcing})  # fmt: skip
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
