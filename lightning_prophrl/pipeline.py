"""``prophrl demo``: the ProphRL pipeline on the embedded Meta-World default, stage by stage, cached.

The default (``make demo``, about 30 minutes on 2 cores) is one seed of FA-GRPO inside the shipped Prophet on
window-open-v3 against its SFT policy; ``--table10`` runs the whole comparison (3 seeds; FA-GRPO with and without
FlowScale, in the simulator and inside Prophet; hours).

Stages (each writes under ``runs/demo/`` and is skipped when its output exists, so a rerun resumes):

1. ``data``: scripted-expert demonstrations of the target task (few, low noise: the SFT data);
2. ``sft``: a deliberately weak flow-matching policy from the few target demos, one per seed, and its success on the
   paired held-out states (with ``parallel``, in a second process while the world model is built);
   ``world_model`` (only with ``wm_*`` variants and no ``--wm-model-dir``): the shipped Prophet LoRA-adapted to a few
   noisy target-task episodes (``--wm-base pretrain``: a tiny Prophet pretrained on the pretraining tasks first, the
   functions of :mod:`lightning_prophrl.recipes.prophet`), with its open-loop report on held-out target episodes;
   ``reward`` (when a ``wm_*`` variant's reward needs it, or with ``--reward-report``): the domain-bridged success
   classifier (:mod:`lightning_prophrl.recipes.reward_report`: trained on real episodes and on their Prophet-imagined twins
   labelled by the simulator) and the precision / recall of it, of a real-only classifier and of Prophet's success
   head against the simulator on held-out real episodes and their imagined twins;
3. ``rl``: FA-GRPO variants from the SFT policy for a fixed budget of updates, in the real simulator
   (``sim_*``) and, when a world model is available, inside it (``wm_*``). The default's ``wm_fagrpo_branch*``
   variants first refresh Prophet and the classifier on the SFT policy's own real rollouts, run the closed-loop
   agreement gate, then learn from short imagined branches started at those rollouts' real states, with the
   imagined-vs-real guard and a KL anchor to the SFT policy;
4. ``eval``: every policy in the real simulator on held-out initial states during RL (ODE, fixed noise), then the
   final policies paired state by state with their SFT policy on ``paired_states`` held-out states, and the table.

The settings are :class:`lightning_prophrl.demo.config.DemoConfig`; the stages live in
:mod:`lightning_prophrl.demo.stages` and :mod:`lightning_prophrl.demo.imagined`, the report in
:mod:`lightning_prophrl.demo.report`; this module runs them in order (:func:`run`) and parses the command line.

Every row of the table states its RL updates and the real environment interactions it used; ``results.md`` ends with
the wall time of every stage.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import torch

from lightning_prophrl.cli_errors import DEBUG_HELP, ArgumentParser, user_command
from lightning_prophrl.demo.config import (
    BRANCHED,
    POLICY_DIMS,
    REFRESHED,
    VARIANTS,
    DemoConfig,
    needs_reward_stage,
    refresh_name,
    refresh_owner,
    run_name,
    with_world_model,
)
from lightning_prophrl.demo.flags import add_dataclass_flags, config_file_values
from lightning_prophrl.demo.imagined import (
    branch_classifier,
    branch_prompts,
    onpolicy_starts,
    refresh_branches,
    refresh_classifier,
    refresh_rollouts,
    stage_refresh,
    stage_rl_wm,
    wm_reward_model,
)
from lightning_prophrl.demo.report import (
    StageClock,
    eval_at,
    evaluate_seed,
    gate_summary,
    paired_summary,
    plot_curves,
    results_table,
    updates_to_reach,
    world_model_summary,
)
from lightning_prophrl.demo.stages import (
    adapt_shipped,
    build_policy,
    reward_summary,
    stage_data,
    stage_reward,
    stage_rl_sim,
    stage_sft,
    stage_world_model,
    wm_success_scoring,
)
from lightning_prophrl.stage_cache import is_done

__all__ = [
    "BRANCHED", "POLICY_DIMS", "REFRESHED", "VARIANTS", "DemoConfig", "StageClock", "adapt_shipped",
    "branch_classifier", "branch_prompts", "build_policy", "eval_at", "evaluate_seed", "gate_summary", "main",
    "needs_reward_stage", "onpolicy_starts", "paired_summary", "plot_curves", "refresh_branches",
    "refresh_classifier", "refresh_name", "refresh_owner", "refresh_rollouts", "results_table", "reward_summary",
    "run", "run_name", "run_seed", "run_seed_workers", "stage_data", "stage_refresh", "stage_reward", "stage_rl_sim",
    "stage_rl_wm", "stage_sft", "stage_world_model", "start_sft_worker", "updates_to_reach", "wm_reward_model",
    "wm_success_scoring", "with_world_model", "world_model_summary",
]  # fmt: skip


def _sft_worker(cfg_dict: dict[str, Any], data: dict[str, str], threads: int) -> None:
    """The SFT policies of every seed, their paired-state evaluation and, when the world model will be the adapted
    shipped Prophet (whose action statistics are the shipped ones), the refreshes' real rollouts: in a process of
    their own (``parallel``)."""
    torch.set_num_threads(threads)
    cfg = DemoConfig(**cfg_dict)
    owners = sorted({refresh_owner(v) for v in cfg.variants if v in REFRESHED})
    for seed in cfg.seeds:
        ckpt = stage_sft(cfg, data, seed)
        if cfg.paired_states:
            from lightning_prophrl.demo.evaluate import evaluate_checkpoint

            evaluate_checkpoint(cfg.out, "sft", seed, cfg.paired_states)
        if cfg.wm_base == "shipped" and not cfg.wm_model_dir:
            from lightning_prophrl.assets import shipped_prophet_path

            for owner in owners:
                refresh = Path(cfg.out) / "rl" / owner / f"seed{seed}" / refresh_name(cfg)
                refresh_rollouts(cfg, ckpt, seed, refresh, str(shipped_prophet_path()))


def start_sft_worker(cfg: DemoConfig, data: dict[str, str]) -> Any:
    """Start ``_sft_worker`` in a 'spawn' child process with half of ``cfg.threads`` (at least one)."""
    import multiprocessing as mp

    child = mp.get_context("spawn").Process(target=_sft_worker, args=(asdict(cfg), data, max(1, cfg.threads // 2)),
                                            name="prophrl-demo-sft")  # fmt: skip
    child.start()
    return child


def run_seed(cfg: DemoConfig, data: dict[str, str], seed: int, clock: StageClock) -> dict[str, dict[str, Any]]:
    """One seed: its SFT policy, then every RL variant from it (each stage cached); returns run name -> result."""
    with clock("sft"):
        ckpt = stage_sft(cfg, data, seed)
    out = {}
    for variant in cfg.variants:
        stage = stage_rl_sim if VARIANTS[variant][2] == "sim" else stage_rl_wm
        with clock(f"rl {run_name(cfg, variant)}"):
            out[run_name(cfg, variant)] = stage(cfg, ckpt, seed, variant)
    return out


def _seed_worker(cfg_dict: dict[str, Any], data: dict[str, str], seeds: list[int], threads: int, timing: str) -> None:
    """``run_seed`` for each of ``seeds`` in a process of its own (``seed_workers``), then the paired evaluation of
    that seed's policies (``evaluate_seed``; the main process's table reads the cache); its stage times go to
    ``timing`` (JSON)."""
    torch.set_num_threads(threads)
    cfg, clock = DemoConfig(**cfg_dict), StageClock()
    for seed in seeds:
        names = run_seed(cfg, data, seed, clock)
        if cfg.paired_states:
            with clock("paired evaluation"):
                evaluate_seed(cfg, seed, list(names))
    Path(timing).write_text(json.dumps(clock.seconds))


def run_seed_workers(cfg: DemoConfig, data: dict[str, str]) -> dict[str, float]:
    """Run the seeds of ``cfg`` in ``seed_workers`` 'spawn' processes at once (seeds dealt round-robin, each process
    with ``threads // seed_workers`` threads, at least one), filling the stage caches and the paired-evaluation cache
    that the demo then reads.

    Each stage seeds itself, so a seed's results do not depend on which process ran it or on the seeds before it
    (at the same thread count, the same numbers as running the seeds one after another).

    Returns:
        every stage's seconds, summed over the processes.

    Raises:
        RuntimeError: a process failed (its traceback is above); a rerun with the same ``out`` resumes.
    """
    import multiprocessing as mp

    n = min(cfg.seed_workers, len(cfg.seeds))
    timing = Path(cfg.out) / "seed_workers"
    timing.mkdir(parents=True, exist_ok=True)
    ctx, procs, paths = mp.get_context("spawn"), [], [timing / f"worker{i}.json" for i in range(n)]
    try:
        for i, path in enumerate(paths):
            path.unlink(missing_ok=True)
            args = (asdict(cfg), data, list(cfg.seeds[i::n]), max(1, cfg.threads // n), str(path))
            procs.append(ctx.Process(target=_seed_worker, args=args, name=f"prophrl-demo-seeds{i}"))
            procs[-1].start()
        for proc in procs:
            proc.join()
    finally:  # interrupted: stop the other processes too (their finished stages stay cached)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    failed = [f"{p.name} (seeds {cfg.seeds[i::n]}, exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode]
    if failed:
        raise RuntimeError(f"seed process(es) failed: {', '.join(failed)} (tracebacks above); rerun the demo with the "
                           f"same --out to resume, or pass --seed-workers 1")  # fmt: skip
    seconds: dict[str, float] = {}
    for path in paths:
        for stage, s in json.loads(path.read_text()).items():
            seconds[stage] = seconds.get(stage, 0.0) + s
    return seconds


def run(cfg: DemoConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    clock = StageClock()
    with clock("data"):
        data = stage_data(cfg)
    wm_report = reward = None
    uses_wm = any(VARIANTS[v][2] == "wm" for v in cfg.variants)
    child = None
    if uses_wm and cfg.parallel and not all(is_done(out / "sft" / f"seed{s}") for s in cfg.seeds):
        child = start_sft_worker(cfg, data)  # SFT on one half of the threads while the world model takes the other
        torch.set_num_threads(max(1, cfg.threads // 2))
    try:
        if uses_wm:
            trains = not cfg.wm_model_dir
            with clock("world model (adapt + report)" + (", SFT in parallel" if child else "")):
                model_dir, stats_dir, wm_report = stage_world_model(cfg)
            cfg = with_world_model(cfg, model_dir, stats_dir, trains)
            if cfg.reward_report or needs_reward_stage(cfg):
                with clock("reward report"):
                    reward = stage_reward(cfg, model_dir, stats_dir)
    finally:
        if child is not None:
            with clock("wait for SFT"):
                child.join()
            torch.set_num_threads(cfg.threads)
    if child is not None and child.exitcode != 0:
        raise RuntimeError(f"the SFT process failed (exit code {child.exitcode}; its traceback is above); rerun the "
                           f"demo with the same --out to resume, or pass --no-parallel")  # fmt: skip
    if cfg.seed_workers > 1 and len(cfg.seeds) > 1:
        n = min(cfg.seed_workers, len(cfg.seeds))
        with clock(f"seeds in {n} processes (wall)"):
            worker_seconds = run_seed_workers(cfg, data)
        for stage, seconds in worker_seconds.items():  # their stages' own times, summed over the processes
            clock.seconds[f"{stage} (in the seed processes)"] = seconds
    results: dict[str, list[dict[str, Any]]] = {run_name(cfg, v): [] for v in cfg.variants}
    for seed in cfg.seeds:  # with seed processes, every stage here is cached
        for name, info in run_seed(cfg, data, seed, clock).items():
            results[name].append(info)
    table = results_table(cfg, results)
    if cfg.paired_states:
        with clock("paired evaluation"):
            table += "\n\n" + paired_summary(cfg, results)
    gates = gate_summary(results)
    if gates:
        table += "\n\n" + gates
    if wm_report is not None:
        table += "\n\n" + world_model_summary(wm_report)
    if reward is not None:
        table += "\n\n" + reward_summary(reward)
    plot_curves(results, out / "success_vs_updates.png")
    timing = clock.summary()  # in results.md, not in the returned table (a cached rerun returns the same table)
    (out / "results.md").write_text(f"{table}\n\n{timing}\n")
    reward_reports = (
        None if reward is None else {"classifiers": reward["reports"], "success_head": reward["success_head"]}
    )
    (out / "results.json").write_text(json.dumps({**results, "world_model_report": wm_report,
                                                  "reward_report": reward_reports,
                                                  "seconds": {**clock.seconds, "total": clock.total()}},
                                                 indent=2))  # fmt: skip
    print(f"{table}\n\n{timing}")
    print(f"\nwrote {out / 'results.md'}, {out / 'success_vs_updates.png'}, TensorBoard logs in {out / 'tb'} "
          f"({clock.total():.0f} s)")  # fmt: skip
    return {"table": table, "results": results}


@user_command("prophrl demo")
def main(argv: list[str] | None = None) -> None:
    """``prophrl demo``: every :class:`DemoConfig` field is a flag (``--target-task``, ``--wm-noise-level``, ...);
    ``--config FILE`` reads settings from YAML (field names as keys; flags win); ``--print_config`` prints the resolved
    settings as YAML (a valid ``--config`` file) and exits."""
    ap = ArgumentParser(prog="prophrl demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings that prove the plumbing (minutes)")
    ap.add_argument("--table10", action="store_true",
                    help="the whole comparison: 3 seeds, FA-GRPO +/- FlowScale in the simulator and inside Prophet")  # fmt: skip
    ap.add_argument("--config", default=None, metavar="FILE", help="YAML of settings (field names as keys)")
    ap.add_argument("--print_config", action="store_true", help="print the resolved settings as YAML and exit")
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)  # taken out of argv by run_user_command
    choices = {"variants": {"choices": sorted(VARIANTS), "metavar": "VARIANT"}, "wm_base": {"choices": ["shipped", "pretrain"]},
               "wm_reward": {"choices": ["bridged", "success_head"]},
               "wm_reward_signal": {"choices": ["success", "graded"]},
               "wm_refresh_reward_data": {"choices": ["twins", "branches"]},
               "wm_draws_reduce": {"choices": ["mean", "min"]}}  # fmt: skip
    names = add_dataclass_flags(
        ap, DemoConfig, {k: v for k, v in choices.items() if k in DemoConfig.__dataclass_fields__}
    )
    args = ap.parse_args(argv)
    if args.quick and args.table10:
        ap.error("--quick and --table10 are exclusive")
    overrides = config_file_values(args.config, DemoConfig) if args.config else {}
    overrides.update({k: getattr(args, k) for k in names if getattr(args, k) is not None})
    try:
        preset = DemoConfig.quick if args.quick else DemoConfig.table10 if args.table10 else DemoConfig
        cfg = preset(**overrides)
    except (TypeError, ValueError) as e:
        ap.error(str(e))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(asdict(cfg), sort_keys=False), end="")
        return
    run(cfg)


if __name__ == "__main__":
    main()
