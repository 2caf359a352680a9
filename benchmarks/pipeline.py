"""Benchmark of ``prophrl demo``: wall time and peak memory of every stage, and imagined vs real env steps/s.

1. Stages. The stages of ``DemoConfig.quick()`` (``lightning_prophrl.pipeline``), by default with the variant
   list of ``prophrl demo --table10`` (FA-GRPO with and without FlowScale, in the simulator and on branches inside
   Prophet) so that the world-model stages run too, into a fresh output directory (the stages cache in their output directories, so a
   reused one would time nothing): ``data`` (``stage_data``), ``world_model`` (``stage_world_model``: Prophet
   pretraining, LoRA adaptation and its open-loop report), per seed ``sft`` (``stage_sft``) and one RL stage per
   variant (``stage_rl_sim`` / ``stage_rl_wm``, with their evaluations, gate and guard), then ``table`` (the
   results table, plot and JSON that ``pipeline.run`` writes). Every stage runs in a fresh ``multiprocessing``
   'spawn' child process, in the order of ``pipeline.run``, with the outputs of the earlier stages. Per stage:

   * ``s``: wall time (``time.perf_counter``) of the stage function inside the child, after the child imported
     torch, Lightning and the library (``import_s``), so that stage times are comparable to the demo's single
     process where those imports happen once;
   * ``peak_rss_mb``: the child's own peak resident memory, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` read in the
     child after the stage and sent back (the stages start no processes of their own: data loaders have no workers).
     It includes the imports, ``import_rss_mb`` (the peak right before the stage). The demo runs all stages in one
     process, whose peak is about the largest stage's.

   Full-size stage times are written by every real demo run (the last line of its ``results.md``, ``seconds`` in its
   ``results.json``) and recorded in ``docs/results.md``; this benchmark runs the quick config,
   which proves the plumbing and shows the per-stage overheads, not the full-size cost.
2. Environments. In the same run (another spawn child, also timed and measured), imagined ``WorldModelEnv`` vs real
   ``MetaWorldEnv`` steps per second at the *full* demo's RL settings (``DemoConfig()``: window-open-v3, 64 px,
   ``4 x 8 = 32`` envs, chunks of 4 actions, one Prophet frame of history 8 per chunk, 1 and 2 sampling steps) with
   the demo's Prophet configuration at random weights; see ``benchmarks/_envs.py``. Steps per second count
   simulator-equivalent actions (``N * 4`` per step call) for both worlds; the issue's target is imagined >= 1/10
   of real.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pipeline.py            # ~4 min at one thread
    .venv/bin/python benchmarks/pipeline.py [--out DIR] [--variants sim_fagrpo ...] [--only stages|envs]

Prints a stage table, the environment table and, last, one JSON line. Without ``--out`` the stages write to a
temporary directory that is removed at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

from lightning_prophrl.pipeline import (  # noqa: E402
    VARIANTS,
    DemoConfig,
    plot_curves,
    results_table,
    stage_data,
    stage_reward,
    stage_rl_sim,
    stage_rl_wm,
    stage_sft,
    stage_world_model,
    with_world_model,
    world_model_summary,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _envs import env_throughput, format_throughput  # noqa: E402
from _machine import run_info  # noqa: E402


def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(conn: Any, fn: Callable[..., Any], args: tuple, threads: int, log: str) -> None:
    """Body of a stage process: imports, then ``fn(*args)`` timed; sends ``(ok, result, stats)`` back."""
    with open(log, "w") as f:  # the stage's own output (Lightning, the generators) goes to its log
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    t0 = time.perf_counter()
    import lightning  # noqa: F401
    import torch

    import lightning_prophrl.envs  # noqa: F401
    import lightning_prophrl.modules  # noqa: F401

    torch.set_num_threads(threads)
    stats = {"import_s": time.perf_counter() - t0, "import_rss_mb": _rss_mb()}
    try:
        t0 = time.perf_counter()
        result = fn(*args)
        stats["s"] = time.perf_counter() - t0
        stats["peak_rss_mb"] = _rss_mb()
        conn.send((True, result, stats))
    except BaseException:
        conn.send((False, traceback.format_exc(), stats))
    finally:
        conn.close()


def run_stage(name: str, fn: Callable[..., Any], *args: Any, threads: int, log_dir: Path) -> tuple[Any, dict]:
    """Run ``fn(*args)`` in a fresh spawn child; returns its result and ``{s, peak_rss_mb, import_s, ...}``."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    log = log_dir / f"{name}.log"
    t0 = time.perf_counter()
    proc = ctx.Process(target=_child, args=(child, fn, args, threads, str(log)), name=f"stage-{name}")
    proc.start()
    child.close()
    try:
        ok, result, stats = parent.recv()
    except EOFError:
        proc.join()
        ok, result, stats = False, f"the stage process died (exit code {proc.exitcode})", {}
    proc.join()
    stats["process_s"] = time.perf_counter() - t0  # spawn + imports + stage + exit
    if not ok:
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise RuntimeError(f"stage {name} failed:\n{result}\n--- last lines of {log} ---\n{tail}")
    print(f"{name:>28} | {stats['s']:8.1f} | {stats['peak_rss_mb']:8.0f} | {stats['import_s']:6.1f} | "
          f"{stats['import_rss_mb']:6.0f}", flush=True)  # fmt: skip
    return result, stats


def write_table(cfg: DemoConfig, results: dict[str, list[dict[str, Any]]], wm_report: dict | None) -> str:
    """The end of ``pipeline.run``: results table (+ world-model summary), plot and results JSON."""
    out = Path(cfg.out)
    table = results_table(cfg, results)
    if wm_report is not None:
        table += "\n\n" + world_model_summary(wm_report)
    plot_curves(results, out / "success_vs_updates.png")
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({**results, "world_model_report": wm_report}, indent=2))
    return table


def run_stages(cfg: DemoConfig, log_dir: Path) -> tuple[dict[str, dict], str]:
    """Every stage of ``pipeline.run(cfg)`` in its own process; returns the per-stage stats and the table."""
    stages: dict[str, dict] = {}
    kw = {"threads": cfg.threads, "log_dir": log_dir}
    print(f"{'stage':>28} | {'s':>8} | {'peak MB':>8} | {'imp s':>6} | {'imp MB':>6}")
    data, stages["data"] = run_stage("data", stage_data, cfg, **kw)
    wm_report = None
    if any(VARIANTS[v][2] == "wm" for v in cfg.variants):
        trains = not cfg.wm_model_dir
        (model_dir, stats_dir, wm_report), stages["world_model"] = run_stage("world_model", stage_world_model, cfg,
                                                                             **kw)  # fmt: skip
        cfg = with_world_model(cfg, model_dir, stats_dir, trains)
        _, stages["reward"] = run_stage("reward", stage_reward, cfg, model_dir, stats_dir, **kw)
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in cfg.variants}
    for seed in cfg.seeds:
        ckpt, stages[f"sft_seed{seed}"] = run_stage(f"sft_seed{seed}", stage_sft, cfg, data, seed, **kw)
        for variant in cfg.variants:
            fn = stage_rl_sim if VARIANTS[variant][2] == "sim" else stage_rl_wm
            name = f"rl_{variant}_seed{seed}"
            info, stages[name] = run_stage(name, fn, cfg, ckpt, seed, variant, **kw)
            stages[name]["updates"] = info["updates"]
            results[variant].append(info)
    table, stages["table"] = run_stage("table", write_table, cfg, results, wm_report, **kw)
    return stages, table


def main() -> None:
    """Parse the arguments, run the stages and the environment comparison, print the tables and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="fresh output directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output directory")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=DemoConfig.table10().variants,
                        help="RL variants (default: those of --table10)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every stage (DemoConfig.threads)")
    parser.add_argument("--only", choices=["stages", "envs"], default=None, help="run one part only")
    parser.add_argument("--segments", type=int, default=36, help="envs: timed step calls per episode")
    parser.add_argument("--rounds", type=int, default=1, help="envs: episodes per world")
    args = parser.parse_args()

    t_start = time.perf_counter()
    if args.out is not None and Path(args.out).exists() and any(Path(args.out).iterdir()):
        parser.error(f"--out {args.out} is not empty: the stages would be read from its cache, not timed")
    out = Path(args.out) if args.out is not None else Path(tempfile.mkdtemp(prefix="prophrl_bench_pipeline_"))
    log_dir = out / "bench_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig.quick(out=str(out), variants=list(args.variants), threads=args.threads)
    summary: dict[str, Any] = {"config": "DemoConfig.quick", "variants": cfg.variants}
    try:
        if args.only != "envs":
            (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
            stages, table = run_stages(cfg, log_dir)
            print(table)
            summary["stages"] = {name: {k: round(v, 2) if isinstance(v, float) else v for k, v in st.items()}
                                 for name, st in stages.items()}  # fmt: skip
            summary["stages_total_s"] = round(sum(st["s"] for st in stages.values()), 1)
            summary["stages_max_peak_rss_mb"] = round(max(st["peak_rss_mb"] for st in stages.values()), 1)
        if args.only != "stages":
            full = DemoConfig()
            envs, stats = run_stage("envs", env_throughput, full.target_task, full.image_size, full.camera,
                                    full.num_prompts, full.group_size, full.chunk_len, full.wm_chunk_len,
                                    full.wm_history_len, (1, 2), args.segments, 1, args.rounds,
                                    threads=args.threads, log_dir=log_dir)  # fmt: skip
            print(format_throughput(envs))
            summary["envs"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in envs.items()}
            summary["envs"].update({k: round(stats[k], 2) for k in ("s", "peak_rss_mb")})
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"outputs and per-stage logs in {out}")
    summary.update({"threads": args.threads, **run_info(t_start)})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
