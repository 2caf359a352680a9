"""Re-evaluate a demo run's saved policies on a larger held-out set, paired with their SFT policy.

The demo evaluates on 60 held-out initial states, where one state is 1.7 pp and the standard error of a success rate
near 0.67 is about 6 pp: too coarse for gains of a few points. This study evaluates the SFT policy and each named RL
run of every seed on ``--states`` held-out states (seeds 1000 on, the demo's evaluation range, disjoint from every
training, gate, guard and refresh seed) with the same ODE noise per state (``evaluate_in_simulator``), and reports
per-seed success, the paired gain over SFT, and how many states each policy won and lost against SFT.

    python -m lightning_prophrl.demo.evaluate --out runs/window --runs sim_fagrpo wm_fagrpo_branch --states 200

Results are cached per policy under ``OUT/studies/evaluate/``, so a rerun prints the table from them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch


def last_update_checkpoint(out: str | Path, name: str, seed: int) -> Path:
    """Where run ``name`` saves its last update's policy beside a guard's kept check that is not the last update
    (absent otherwise)."""
    return Path(out) / "rl" / name / f"seed{seed}" / "policy_last.ckpt"


def run_checkpoint(out: str | Path, run: str, seed: int) -> Path:
    """The checkpoint of a demo run under ``out``: ``"sft"`` (the SFT policy of ``seed``), ``"NAME"`` (the run's
    final policy, or the guard's kept check) or ``"NAME@last"`` (the last update's: saved beside a kept check that is
    not the last update, otherwise the final policy itself)."""
    if run == "sft":
        return Path(out) / "sft" / f"seed{seed}" / "sft.ckpt"
    last = last_update_checkpoint(out, run.removesuffix("@last"), seed)
    return last if run.endswith("@last") and last.exists() else last.with_name("policy.ckpt")


def evaluate_checkpoint(out: str | Path, run: str, seed: int, states: int, first: int = 1000) -> dict[str, Any]:
    """Success of one saved policy (``run="sft"``: the SFT policy of ``seed``; ``run="NAME@last"``: the last update's
    policy of a run that kept its guard's best check) on ``states`` held-out states."""
    from lightning_prophrl.callbacks.sim_eval import evaluate_in_simulator
    from lightning_prophrl.demo.config import DemoConfig
    from lightning_prophrl.demo.stages import build_policy
    from lightning_prophrl.envs.metaworld import eval_seeds
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.modules.fa_grpo import load_policy_weights

    root = Path(out)
    path = root / "studies" / "evaluate" / f"{run}_seed{seed}_n{states}_from{first}.json"
    ckpt = run_checkpoint(root, run, seed)
    if path.exists():
        cached = json.loads(path.read_text())
        # a policy retrained since (its checkpoint rewritten) is evaluated again
        if not ckpt.exists() or cached.get("checkpoint_mtime_ns", ckpt.stat().st_mtime_ns) == ckpt.stat().st_mtime_ns:
            return cached
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} not found: run the demo for run {run!r} and seed {seed} first")
    cfg = DemoConfig.load(root)
    policy = build_policy(cfg)
    hp = load_policy_weights(policy, str(ckpt))
    decoder = ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld")
    res = evaluate_in_simulator(policy, decoder, cfg.target_task, eval_seeds(states, first), cfg.max_queries,
                                image_size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                                progress=False)  # fmt: skip
    res = {"run": run, "seed": seed, "states": states, "first": first, "checkpoint": str(ckpt),
           "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, **res}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return res


def sign_test(won: int, lost: int) -> float:
    """Two-sided exact sign test: the probability, under "the policies are equally good" (each state that differs is
    won or lost with probability 1/2), of a won / lost split at least as uneven as the observed one (ties dropped)."""
    n = won + lost
    if n == 0:
        return 1.0
    k = min(won, lost)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired_table(rows: dict[str, dict[int, dict[str, Any]]], sft: dict[int, dict[str, Any]]) -> str:
    """Markdown: per run, success per seed, mean paired gain over SFT, states won / lost against SFT (all seeds
    pooled) and the two-sided sign-test p of that split (``sign_test``)."""
    seeds = sorted(sft)
    lines = ["| policy | success per seed | mean | paired gain over SFT (pp) | states won / lost vs SFT | sign-test p |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    base = np.array([sft[s]["success"] for s in seeds])
    lines.append(f"| SFT | {' / '.join(f'{v:.3f}' for v in base)} | {base.mean():.3f} ± {base.std():.3f} | – | – | – |")
    for run, by_seed in rows.items():
        have = [s for s in seeds if s in by_seed]
        v = np.array([by_seed[s]["success"] for s in have])
        gain = [100 * (by_seed[s]["success"] - sft[s]["success"]) for s in have]
        won = sum(int(np.sum(np.array(by_seed[s]["per_seed"]) > np.array(sft[s]["per_seed"]))) for s in have)
        lost = sum(int(np.sum(np.array(by_seed[s]["per_seed"]) < np.array(sft[s]["per_seed"]))) for s in have)
        lines.append(f"| {run} | {' / '.join(f'{x:.3f}' for x in v)} | {v.mean():.3f} ± {v.std():.3f} | "
                     f"{' / '.join(f'{g:+.1f}' for g in gain)} (mean {np.mean(gain):+.1f}) | {won} / {lost} | "
                     f"{sign_test(won, lost):.3g} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/demo", help="the demo run (default runs/demo)")
    ap.add_argument("--runs", nargs="+", required=True,
                    help="RL run names under OUT/rl/ (e.g. sim_fagrpo; NAME@last: the last update's policy of a run "
                         "that kept its guard's best check)")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--states", type=int, default=200, help="held-out states (default 200)")
    ap.add_argument("--first", type=int, default=1000, help="first held-out seed (default 1000, the demo's)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    from lightning_prophrl.envs.metaworld import eval_seeds

    try:
        eval_seeds(a.states, a.first)
    except ValueError as err:
        ap.error(f"--states/--first: {err}")
    torch.set_num_threads(a.threads)
    sft = {s: evaluate_checkpoint(a.out, "sft", s, a.states, a.first) for s in a.seeds}
    rows = {r: {s: evaluate_checkpoint(a.out, r, s, a.states, a.first) for s in a.seeds} for r in a.runs}
    print(f"{a.states} held-out states (seeds {a.first}..{a.first + a.states - 1}), ODE, same noise per state")
    print(paired_table(rows, sft))


if __name__ == "__main__":
    main()
