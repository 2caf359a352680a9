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
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl.recipes.prophet import (  # noqa: F401 (re-exported)
    EVAL_SEED_OFFSET,
    MAX_TARGET_EPISODES,
    MODEL_TINY_YAML,
    TARGET_SEED_OFFSET,
    _fit,
    _optimizers,
    adapt_prophet,
    generate_wm_data,
    memory_disabled,
    merge_lora,
    pretrain_prophet,
    prophet_config,
)
from lightning_prophrl.recipes.prophet_report import (  # noqa: F401 (re-exported)
    METRICS,
    _score,
    _segment_psnr,
    _success_agreement,
    contact_sheet,
    world_model_report,
)


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
