"""The pretrained Prophet on Meta-World tasks held out of its pretraining: few-shot adaptation, open-loop and
counterfactual-action reports.

``python -m lightning_prophrl.studies.heldout --model lightning_prophrl/assets/prophet_metaworld --out runs/heldout``

Stages (each cached with ``done.json`` in its own directory, so a rerun resumes; everything is seeded):

1. :func:`heldout_data`, per task of ``--tasks`` (every one in ``lightning_prophrl.envs.task_split.HELDOUT_TASKS``,
   i.e. never in the pretraining corpus): ``adapt`` (<= 20 noisy-expert episodes, initial-state seeds ``500 + i``),
   ``eval`` (20 noisy-expert episodes, seeds ``800 + i``) and two counterfactual sets from the *same* initial states
   as ``eval``: ``cf_random`` (smooth random motions, back to back: ``ScriptedExpert(driver="random")``) and
   ``cf_expert`` (another task's scripted expert acting on this task's observations, ``driver=COUNTERFACTUAL_EXPERT``);
   with ``--policy TASK=PATH``, ``cf_policy``: that policy's real SDE rollouts at high noise (``--policy-noise``).
   Counterfactual actions are what an exploring policy will try and the task's data never shows. Episodes run to the
   step cap (150 steps = 38 model frames at stride 4).
2. :func:`adapt` (per task and seed): LoRA (rank 16 on the U-Net's convolutions, noise-embedding projections and
   attention) or full fine-tuning of the pretrained model on ``adapt`` with the model's own action statistics
   (one normalization of the unified action space, so what pretraining learned about actions carries over); the
   adapters are fused into the exported ``save_pretrained`` directory.
3. :func:`task_report`: ``recipes.prophet_report.world_model_report`` of a model on ``eval`` and on each counterfactual set:
   whole episodes (38 segments of one model frame) rolled out from the first frame under the recorded actions,
   against the simulator's video; copy-last (the first frame held still) and the same model under shuffled actions
   (actions of another episode) as baselines; a contact sheet per set.
   With an end-effector readout (``metrics.ee_readout``, fitted per task on the ``adapt`` frames and checked on the
   real ``eval`` frames, ``task_readout``) the report adds ``ee_path_cm``: how far the arm path read from the
   model's video lies from the path read from the simulator's (copy-last: how far the arm really moves).
   With ``--policy``, ``closed_loop_check``: that policy's whole episodes (ODE) from the same initial states in the
   simulator and inside the model, the imagined success judged by the model's success head; real vs imagined
   successes and Cohen's kappa (``--closed-loop N`` episodes, 0 to skip).
4. :func:`run_study`: stages 1-3 for the zero-shot model and the adapted models of every seed; ``results.md`` and
   ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_prophrl.recipes.heldout import (  # noqa: F401 (re-exported)
    ADAPT_SEED,
    COUNTERFACTUAL_EXPERT,
    EVAL_SEED,
    POLICY_SET,
    SETS,
    adapt,
    closed_loop_check,
    heldout_data,
    task_readout,
)
from lightning_prophrl.stage_cache import load_done

STUDY_TASKS = ("window-open-v3", "faucet-open-v3", "plate-slide-v3")


METRICS = ("psnr", "dyn_psnr", "ssim", "flow_epe", "flow_cos")
EE_METRIC = "ee_path_cm"


def eval_sets(data: dict[str, str]) -> list[str]:
    """The evaluation sets of a task's ``data`` in report order (``SETS``, then ``cf_policy`` when present)."""
    return [name for name in (*SETS, POLICY_SET) if name in data]


def task_report(model_dir: str, data: dict[str, str], out: str | Path, num_steps: int = 1, seed: int = 0,
                num_segments: int = 38, ee_readout: Any = None, teacher_forced: bool = False) -> dict[str, Any]:  # fmt: skip
    """``world_model_report`` of ``model_dir`` on every evaluation set of ``data`` (``{set: report}``), with the
    end-effector path error when ``ee_readout`` is given and the one-step-ahead scores with ``teacher_forced``."""
    from lightning_prophrl.recipes.prophet_report import world_model_report

    return {name: world_model_report(model_dir, data[name], Path(out) / name, num_episodes=20,
                                     num_segments=num_segments, num_steps=num_steps, seed=seed, ee_readout=ee_readout,
                                     teacher_forced=teacher_forced)
            for name in eval_sets(data)}  # fmt: skip


def run_study(
    model: str,
    out: str | Path = "runs/heldout",
    tasks: Sequence[str] = STUDY_TASKS,
    seeds: Sequence[int] = (0, 1, 2),
    adapt_steps: int = 400,
    mode: Literal["lora", "full"] = "lora",
    num_steps: int = 1,
    name: str = "results",
    policies: dict[str, str] | None = None,
    policy_noise: float = 2.0,
    ee_readout: bool = True,
    closed_loop: int = 30,
    calibration: int = 30,
    self_forcing: float = 0.0,
) -> dict[str, Any]:
    """Stages 1-4 of the module docstring; writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (stages are shared
    between calls with the same ``out``: a second call with more seeds reuses the first one's adaptations).

    ``policies`` maps a task to a trained policy of it (the ``cf_policy`` set at ``policy_noise``); ``ee_readout``
    fits each task's end-effector readout and adds the path error to every report; with a task's policy, every model
    also runs ``closed_loop`` whole episodes of it against the simulator (``closed_loop_check``; 0: skip), with its
    success threshold fitted on ``calibration`` episodes from other initial states (0: no fit). ``self_forcing`` > 0
    adapts on clips that continue from the model's own frames (``models.prophet.self_forcing``; its own stage
    directories, ``<mode>_seed<N>_sf<share>``)."""
    out = Path(out)
    results: dict[str, Any] = {"model": model, "mode": mode, "adapt_steps": adapt_steps, "seeds": list(seeds),
                               "num_steps": num_steps, "tasks": {}, "ee_readout_rmse_cm": {},
                               "closed_loop": {}, "self_forcing": self_forcing}  # fmt: skip
    label = mode + (f", self-forcing {self_forcing:g}" if self_forcing > 0 else "")
    suffix = f"_sf{self_forcing:g}" if self_forcing > 0 else ""
    for task in tasks:
        data = heldout_data(task, out / "data" / task, policy=(policies or {}).get(task), policy_noise=policy_noise)
        readout = None
        if ee_readout:
            readout, results["ee_readout_rmse_cm"][task] = task_readout(data, out / task / "ee_readout")
        policy = (policies or {}).get(task)
        models = {"zero_shot": [(model, out / task / "zero_shot")]}
        models[label] = []
        for seed in seeds:
            stage = out / task / f"{mode}_seed{seed}{suffix}"
            model_dir = adapt(model, data["adapt"], stage, adapt_steps, mode, seed, self_forcing=self_forcing)
            models[label].append((model_dir, stage / "report"))
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label in models}
        loops: dict[str, list[dict[str, Any]]] = {label: [] for label in models}
        for label, runs in models.items():
            for model_dir, report_dir in runs:
                rows[label].append(task_report(model_dir, data, report_dir, num_steps, ee_readout=readout))
                if label != "zero_shot":
                    rows[label][-1]["adapt_seconds"] = load_done(report_dir.parent)["seconds"]
                if policy and closed_loop:
                    loops[label].append(closed_loop_check(model_dir, task, policy, report_dir / "closed_loop",
                                                          closed_loop, num_steps, calibration=calibration))  # fmt: skip
        results["tasks"][task] = rows
        if policy and closed_loop:
            results["closed_loop"][task] = loops
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(results_table(results))
    return results


def compare_models(models: dict[str, tuple[str, int]], task: str, out: str | Path = "runs/heldout",
                   data: dict[str, str] | None = None, num_segments: int = 38,
                   teacher_forced: bool = False) -> str:  # fmt: skip
    """Markdown table of several models on one held-out task's evaluation sets (no adaptation): ``models`` maps a
    label to ``(save_pretrained dir, sampling steps)``; reports are cached under ``<out>/<task>/compare/<label>``;
    ``data`` defaults to :func:`heldout_data` of the task under ``<out>/data``. ``teacher_forced`` adds each model's
    one-step-ahead row (every frame imagined from the real frames before it)."""
    out = Path(out)
    data = data or heldout_data(task, out / "data" / task)
    lines = [f"**{task}**, every model zero-shot\n", "| set | model | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]  # fmt: skip
    reports = {
        label: task_report(d, data, out / task / "compare" / label, steps, teacher_forced=teacher_forced)
        for label, (d, steps) in models.items()
    }
    rows = [("", ""), ("_shuffled", ", shuffled actions")] + [("_teacher_forced", ", one step ahead")] * teacher_forced
    for name in eval_sets(data):
        for i, label in enumerate(models):
            report = reports[label][name]
            if i == 0:
                lines.append(
                    f"| {name} | copy-last | " + " | ".join(f"{report[f'{m}_copy_last']:.2f}" for m in METRICS) + " |"
                )
                if teacher_forced:
                    cells = " | ".join(f"{report[f'{m}_copy_previous']:.2f}" for m in METRICS)
                    lines.append(f"| {name} | copy-previous (one step ahead) | {cells} |")
            for suffix, tag in rows:
                lines.append(
                    f"| {name} | {label}{tag} | " + " | ".join(f"{report[f'{m}{suffix}']:.2f}" for m in METRICS) + " |"
                )
    return "\n".join(lines) + "\n"


def _mean_std(values: Sequence[float]) -> str:
    return f"{np.mean(values):.2f}" + (f" ± {np.std(values):.2f}" if len(values) > 1 else "")


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _kappa(check: dict[str, Any]) -> str:
    """Kappa, or "-" when every real episode succeeded (or every one failed): nothing to agree on."""
    conf = check["confusion"]
    real = conf["both"] + conf["real_only"]
    return "-" if real in (0, check["episodes"]) else f"{check['kappa']:.2f}"


def _fitted(check: dict[str, Any]) -> str:
    """The fitted-threshold cells of a closed-loop row: threshold, imagined successes and kappa at it."""
    fit, n = check.get("fitted"), check["episodes"]
    if not fit:
        return "- | - | -"
    return f"{fit['threshold']:.3f} | {round(fit['imagined_success'] * n)} / {n} | {_kappa({**fit, 'episodes': n})}"


def closed_loop_table(loops: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown of ``closed_loop_check`` outcomes per model (one row per adaptation seed): real and imagined successes,
    the episodes on which they agree, Cohen's kappa and the AUC of the head's graded score against the real outcomes
    (both "-" when the real episodes all succeed or all fail); with a calibrated check, the threshold fitted on the
    calibration episodes and the imagined successes and kappa at it ("-" without a fit)."""
    first = next(iter(loops.values()))[0]
    lines = [f"Closed loop: the policy (ODE) from {first['episodes']} initial states in the simulator and inside the "
             "model, imagined success judged by the model's success head (probability 0.5, and the threshold fitted "
             "on calibration episodes from other initial states)", "",
             "| model | real successes | imagined successes | agree | imagined only | real only | kappa | score AUC "
             "| fitted threshold | imagined at it | kappa at it |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, checks in loops.items():
        for i, c in enumerate(checks):
            n, conf = c["episodes"], c["confusion"]
            name = label if len(checks) == 1 else f"{label} (seed {i})"
            lines.append(f"| {name} | {round(c['real_success'] * n)} / {n} | {round(c['imagined_success'] * n)} / {n} "
                         f"| {conf['both'] + conf['neither']} / {n} | {conf['imagined_only']} | {conf['real_only']} "
                         f"| {_kappa(c)} | {_auc(c.get('score_auc'))} | {_fitted(c)} |")  # fmt: skip
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> str:
    """Markdown: per task and evaluation set, copy-last, the zero-shot and the adapted model (mean ± std over
    seeds), the model under shuffled actions."""
    lines = []
    for task, rows in results["tasks"].items():
        first_reports = rows["zero_shot"][0]
        metrics = METRICS + ((EE_METRIC,) if all(EE_METRIC in r for r in first_reports.values()) else ())
        rmse = results.get("ee_readout_rmse_cm", {}).get(task)
        note = f"; end-effector readout error on real frames {rmse:.2f} cm" if rmse is not None else ""
        lines += [f"\n**{task}** (held out of pretraining{note})\n", "| set | model | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]  # fmt: skip
        for name in eval_sets(first_reports):
            first = first_reports[name]
            lines.append(
                f"| {name} | copy-last | " + " | ".join(f"{first[f'{m}_copy_last']:.2f}" for m in metrics) + " |"
            )
            for label, reports in rows.items():
                for suffix, tag in (("", ""), ("_shuffled", ", shuffled actions")):
                    cells = [_mean_std([r[name][f"{m}{suffix}"] for r in reports]) for m in metrics]
                    lines.append(f"| {name} | {label}{tag} | " + " | ".join(cells) + " |")
        loops = results.get("closed_loop", {}).get(task)
        if loops:
            lines += ["", closed_loop_table(loops)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pretrained Prophet (save_pretrained directory with stats.json)")
    ap.add_argument("--out", default="runs/heldout")
    ap.add_argument("--tasks", default=",".join(STUDY_TASKS), help="comma-separated held-out tasks")
    ap.add_argument("--seeds", default="0,1,2", help="adaptation seeds")
    ap.add_argument("--adapt-steps", type=int, default=400)
    ap.add_argument("--mode", choices=["lora", "full"], default="lora")
    ap.add_argument("--num-steps", type=int, default=1, help="sampling steps per generated frame")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("PROPHRL_THREADS", 2)))
    ap.add_argument("--name", default="results", help="results file name under --out (NAME.md, NAME.json)")
    ap.add_argument("--policy", action="append", default=[], metavar="TASK=PATH",
                    help="a trained policy of TASK (save_pretrained directory or SFT checkpoint): adds the cf_policy "
                         "set, its SDE rollouts at --policy-noise (repeat per task)")  # fmt: skip
    ap.add_argument("--policy-noise", type=float, default=2.0, help="SDE noise level of the cf_policy rollouts")
    ap.add_argument("--no-ee-readout", action="store_true", help="skip the end-effector readout and path error")
    ap.add_argument(
        "--closed-loop",
        type=int,
        default=30,
        metavar="N",
        help="with --policy: N whole episodes of it in the simulator and inside each model (0: skip)",
    )
    ap.add_argument("--calibration", type=int, default=30, metavar="N",
                    help="with --closed-loop: fit the success threshold on N episodes from other states (0: no fit)")  # fmt: skip
    ap.add_argument("--self-forcing", type=float, default=0.0, metavar="SHARE",
                    help="adapt on clips whose second segment continues from the model's own frames in SHARE of them")  # fmt: skip
    ap.add_argument("--compare", default=None,
                    help="instead of the study: LABEL=DIR[:STEPS],... zero-shot on the first task of --tasks")  # fmt: skip
    ap.add_argument("--teacher-forced", action="store_true",
                    help="with --compare: add each model's one-step-ahead row (frames from the real frames before them)")  # fmt: skip
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.compare:
        models = {}
        for item in args.compare.split(","):
            label, _, spec = item.partition("=")
            path, _, steps = spec.partition(":")
            if not (Path(path) / "config.json").is_file():
                ap.error(f"--compare {item!r}: {path!r} is not a save_pretrained directory (LABEL=DIR[:STEPS], items "
                         "separated by commas, so no commas in a label)")  # fmt: skip
            models[label] = (path, int(steps or args.num_steps))
        table = compare_models(models, args.tasks.split(",")[0], args.out, teacher_forced=args.teacher_forced)
        print(table)
        return {"table": table}
    if not args.model:
        ap.error("--model is required (the pretrained Prophet's directory) unless --compare is given")
    policies = {}
    for item in args.policy:
        task, sep, path = item.partition("=")
        if not sep or not path:
            ap.error(f"--policy takes TASK=PATH, got {item!r}")
        policies[task] = path
    results = run_study(args.model, args.out, [t for t in args.tasks.split(",") if t],
                        [int(s) for s in args.seeds.split(",") if s], args.adapt_steps, args.mode, args.num_steps,
                        args.name, policies, args.policy_noise, not args.no_ee_readout, args.closed_loop,
                        args.calibration, args.self_forcing)  # fmt: skip
    print((Path(args.out) / f"{args.name}.md").read_text())
    return results


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
