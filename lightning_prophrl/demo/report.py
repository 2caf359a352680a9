"""The demo's report: the results table, the paired and gate summaries, the learning-curve plot and the stage clock."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.demo.config import DemoConfig


def updates_to_reach(rows: list[dict[str, Any]], level: float) -> int | None:
    return next((r["step"] for r in rows if r["success"] >= level), None)


def eval_at(rows: list[dict[str, Any]], updates: int) -> dict[str, Any]:
    """The last evaluation at or before ``updates`` (runs cached with a longer budget compare at the same one)."""
    kept = [r for r in rows if r["step"] <= updates]
    if not kept:
        raise ValueError(f"no evaluation at or before update {updates} in {rows}")
    return kept[-1]


def results_table(cfg: DemoConfig, results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table in the form of the paper's LIBERO simulator-vs-world-model table (mean +- std over seeds of
    held-out real success)."""
    sft = [r["eval"][0]["success"] for rs in results.values() for r in rs[:1]]
    sft_by_seed = {r["seed"]: r["eval"][0]["success"] for rs in results.values() for r in rs}
    lines = [f"| setting | real success ({cfg.eval_seeds} held-out states) | RL updates | updates to reach SFT+10pp "
             "| real interactions (train env steps) | seeds |", "|---|---|---|---|---|---|"]  # fmt: skip
    s = np.array(list(sft_by_seed.values()) or sft)
    lines.append(
        f"| SFT ({cfg.sft_demos} demos) | {s.mean():.3f} ± {s.std():.3f} | – | – | {cfg.sft_demos} demos | {len(s)} |"
    )
    for variant, rs in results.items():
        final = np.array([eval_at(r["eval"], cfg.rl_updates)["success"] for r in rs])
        reach = [updates_to_reach(r["eval"], sft_by_seed[r["seed"]] + 0.10) for r in rs]
        reach = [None if x is not None and x > cfg.rl_updates else x for x in reach]
        reach_s = ", ".join("–" if x is None else str(x) for x in reach)
        steps = np.mean([r.get("real_interactions", eval_at(r["eval"], cfg.rl_updates)["train_env_steps"]) for r in rs])
        ups = max(min(r["updates"], eval_at(r["eval"], cfg.rl_updates)["step"]) for r in rs)
        lines.append(
            f"| {variant} | {final.mean():.3f} ± {final.std():.3f} | {ups} | {reach_s} | {steps:,.0f} | {len(rs)} |"
        )
    return "\n".join(lines)


def gate_summary(results: dict[str, list[dict[str, Any]]]) -> str:
    """One line per world-model variant: the closed-loop agreement gate of each seed (imagined vs real outcomes of the
    SFT policy, kappa) and, where recorded, the reward model judging the real gate episodes."""
    lines = []
    for variant, rs in results.items():
        cells = []
        for r in rs:
            g = r.get("gate")
            if not g:
                continue
            n = g["episodes"]
            cell = (f"seed {r['seed']}: imagined {round(g['imagined_success'] * n)}/{n} vs real "
                    f"{round(g['real_success'] * n)}/{n}, kappa {g['kappa']:.2f}")  # fmt: skip
            rew = g.get("reward_on_real")
            if rew:
                cell += f"; reward model on the real episodes: kappa {rew['kappa']:.2f}, predicted {rew['predicted_rate']:.2f}"
            cells.append(cell)
        if cells:
            lines.append(f"Closed-loop gate, {variant} (SFT policy): " + " | ".join(cells) + ".")
        cells = []
        for r in rs:
            a = ((r.get("branch") or {}).get("agreement")) or {}
            if a:
                rep, pol = a["replay"], a.get("policy") or {}
                cells.append(f"seed {r['seed']}: replay imagined {rep['imagined_rate']:.2f} vs real "
                             f"{rep['real_rate']:.2f}, kappa {rep['kappa']:.2f}, graded-score AUC "
                             f"{_fmt(rep.get('score_auc'))}; policy branches imagined "
                             f"{pol.get('imagined_rate', 0):.2f}")  # fmt: skip
        if cells:
            lines.append(f"Branch agreement, {variant} ({a['starts']} real starts x {a['segments']} chunks, success "
                         "within the branch): " + " | ".join(cells) + ".")  # fmt: skip
    return "\n\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def world_model_summary(report: dict[str, Any]) -> str:
    """One-paragraph open-loop summary of the demo's Prophet on held-out target episodes."""
    line = (f"World model (held-out target episodes, open loop under recorded actions, {report['episodes']} episodes x "
            f"{report['segments']} segments): PSNR {report['psnr']:.2f} dB vs copy-last {report['psnr_copy_last']:.2f}"
            f" vs shuffled actions {report['psnr_shuffled']:.2f}; flow EPE {report['flow_epe']:.3f} vs "
            f"{report['flow_epe_copy_last']:.3f} / {report['flow_epe_shuffled']:.3f}")  # fmt: skip
    if "success" in report:
        s = report["success"]
        rates = f"{s['real_rate']:.2f} / {s['imagined_rate']:.2f}"
        line += f"; success head kappa {s['kappa']:.2f} (real / imagined success rate {rates})"
    return line + "."


def paired_runs(out: str | Path, name: str, seed: int) -> list[str]:
    """The policies of one seed's run that the paired evaluation scores: ``NAME`` (its final policy, or the guard's
    kept check) and, where the kept check is not the last update, ``NAME@last``."""
    from lightning_prophrl.demo.evaluate import last_update_checkpoint

    return [name] + ([f"{name}@last"] if last_update_checkpoint(out, name, seed).exists() else [])


def evaluate_seed(cfg: DemoConfig, seed: int, names: list[str]) -> None:
    """Fill the paired-evaluation cache for the SFT policy of ``seed`` and its runs ``names`` (``paired_runs`` of
    each), so that ``paired_summary`` only reads it: the seed processes call this for their own seeds."""
    from lightning_prophrl.demo.evaluate import evaluate_checkpoint

    evaluate_checkpoint(cfg.out, "sft", seed, cfg.paired_states)  # a cache hit where the SFT process evaluated it
    for name in names:
        for run in paired_runs(cfg.out, name, seed):
            evaluate_checkpoint(cfg.out, run, seed, cfg.paired_states)


def paired_summary(cfg: DemoConfig, results: dict[str, list[dict[str, Any]]]) -> str:
    """The final policies of every run and their SFT policies on ``paired_states`` held-out states, paired state by
    state (cached under ``OUT/studies/evaluate``, like ``python -m lightning_prophrl.demo.evaluate``)."""
    from lightning_prophrl.demo.evaluate import evaluate_checkpoint, paired_table

    n = cfg.paired_states
    sft = {s: evaluate_checkpoint(cfg.out, "sft", s, n) for s in cfg.seeds}
    rows = {}
    for name, rs in results.items():
        rows[name] = {r["seed"]: evaluate_checkpoint(cfg.out, name, r["seed"], n) for r in rs}
        # a run that kept its guard's best check: its last update's policy too (the kept one where they are the same)
        if any(r.get("kept_update") is not None for r in rs):
            rows[f"{name}@last"] = {r["seed"]: evaluate_checkpoint(cfg.out, paired_runs(cfg.out, name, r["seed"])[-1],
                                                                   r["seed"], n) for r in rs}  # fmt: skip
    return (f"Paired on {n} held-out states (seeds 1000..{999 + n}, ODE, the same noise per state for every policy; "
            f"final policies, the guard's kept check where it kept one, NAME@last the last update's):\n\n"
            + paired_table(rows, sft))  # fmt: skip


def plot_curves(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rs in results.items():
        for i, r in enumerate(rs):
            xs = [e["step"] for e in r["eval"]]
            ys = [e["success"] for e in r["eval"]]
            ax.plot(xs, ys, marker="o", color=f"C{list(results).index(variant)}", alpha=0.8,
                    label=variant if i == 0 else None)  # fmt: skip
    ax.set_xlabel("RL updates")
    ax.set_ylabel("held-out real success")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class StageClock:
    """Wall time (``time.perf_counter``) of the demo's stages, in the order they ran; a stage that ran more than once
    (one per seed) adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t

    def total(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self) -> str:
        parts = [f"{k} {v:.0f} s" for k, v in self.seconds.items()]
        return f"Wall time by stage: {' | '.join(parts)} | total {self.total():.0f} s (cached stages take ~0 s)."
