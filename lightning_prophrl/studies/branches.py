"""Within-start study: from one real state, do G branches of the policy have different outcomes, in reality and in
Prophet, and does Prophet order them the way reality does? (``envs.branches.within_start_outcomes``.)

Group-relative RL (GRPO, FA-GRPO) learns only from groups whose rewards differ, so a world model for it must get
*which branches of one start* succeed, not just which starts succeed. This study branches the demo's SFT policy
from the recorded states of its refresh rollouts, G times each, in the real simulator (replaying the recorded prefix
to reach the state exactly) and in the refreshed Prophet with the same sampler noise, for a given branch horizon,
start window and SDE noise level, so that settings can be compared before spending an RL run on them.

It reuses a demo run's cached stages (``prophrl demo --out OUT --variants wm_fagrpo_branch ...`` first). Run::

    python -m lightning_prophrl.studies.branches --out runs/window --seed 2 --segments 10 --starts 40
    python -m lightning_prophrl.studies.branches --out runs/window --seed 2 --segments 25 --max-start-step 40

Each setting writes ``OUT/studies/within_start/<name>.json``; ``--table`` prints all of them as one table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class WithinStartConfig:
    """One setting of the within-start study (the branch prompts and the world model come from the demo run)."""

    out: str = "runs/demo"
    seed: int = 0
    segments: int = 10  # branch horizon in policy chunks
    max_start_step: int | None = None  # only starts at frame <= this (None: all of them)
    starts: int = 40
    group_size: int = 8
    num_prompts: int = 4  # starts imagined at once
    noise_level: float | None = None  # SDE noise level (None: the policy's)
    reward_signal: str = "success"  # "success" (0/1) or "graded" (the demo's graded reward)
    num_steps: int | None = None  # Prophet's sampling steps per segment (None: the demo's wm_num_steps)
    refresh: str = "refresh"  # the refresh under rl/wm_fagrpo_branch/seed<s>/ (``pipeline.refresh_name``)
    # the real branches run their whole chunk budget past a success (the outcome stays success at any step), so the
    # reward model's persistence rule sees the frames after it, as in the closed-loop gate (more real steps)
    real_to_cap: bool = False
    # the value head (``demo.scorers.value_head``, trained on the refresh for ``segments``-chunk branches) grades
    # imagined branches cut without a success; compare with real branches run ``real_segments`` chunks (None:
    # ``segments``; a number past the episode's remaining chunks runs them to the episode's cap)
    value: bool = False
    real_segments: int | None = None
    # the value head also trained on this many real branch starts run to the episode's end (the demo's
    # ``wm_value_branches``, each branched ``wm_refresh_branch_group`` times; 0: the default head)
    value_branches: int = 0

    def __post_init__(self) -> None:
        if self.segments < 1 or self.starts < 1 or self.group_size < 2 or self.num_prompts < 1:
            raise ValueError(f"--segments, --starts and --num-prompts must be >= 1 and --group-size >= 2, got "
                             f"{self.segments}, {self.starts}, {self.num_prompts} and {self.group_size}")  # fmt: skip
        if self.reward_signal not in ("success", "graded"):
            raise ValueError(f"--reward-signal must be 'success' or 'graded', got {self.reward_signal!r}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"--num-steps must be >= 1, got {self.num_steps}")
        if self.real_segments is not None and self.real_segments < self.segments:
            raise ValueError(f"--real-segments must be >= --segments ({self.segments}), got {self.real_segments}")
        if self.value_branches < 0 or (self.value_branches and not self.value):
            raise ValueError(f"--value-branches must be >= 0 and needs --value, got {self.value_branches}")
        if self.noise_level is not None and self.noise_level <= 0:
            raise ValueError(f"--noise-level must be > 0, got {self.noise_level}")

    @property
    def name(self) -> str:
        noise = "" if self.noise_level is None else f"_noise{self.noise_level:g}"
        start = "" if self.max_start_step is None else f"_start{self.max_start_step}"
        graded = "" if self.reward_signal == "success" else "_graded"
        steps = "" if self.num_steps is None else f"_steps{self.num_steps}"
        refresh = "" if self.refresh == "refresh" else f"_{self.refresh}"
        batch = "" if self.num_prompts == 4 else f"_p{self.num_prompts}"  # the noise is seeded per batch of starts
        cap = "_tocap" if self.real_to_cap else ""
        cap += (
            ("_value" if self.value else "")
            + (f"br{self.value_branches}" if self.value_branches else "")
            + ("" if self.real_segments is None else f"_real{self.real_segments}")
        )
        return (f"seed{self.seed}_seg{self.segments}{start}{noise}{graded}{steps}{refresh}_g{self.group_size}"
                f"_n{self.starts}{batch}{cap}")  # fmt: skip


def run_within_start(study: WithinStartConfig) -> dict[str, Any]:
    """Measure one setting on the demo run under ``study.out`` (cached: an existing result is returned)."""
    from functools import partial

    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.demo.config import DemoConfig
    from lightning_prophrl.demo.imagined import _with_branch_classifier, branch_prompts
    from lightning_prophrl.demo.stages import build_policy, wm_success_scoring
    from lightning_prophrl.envs.branches import within_start_outcomes
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.envs.world_model import WorldModelEnv, graded_reward
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules.fa_grpo import load_policy_weights
    from lightning_prophrl.stage_cache import is_done, load_done

    path = Path(study.out) / "studies" / "within_start" / f"{study.name}.json"
    if path.exists():
        return json.loads(path.read_text())
    # the success classifier is the demo's branch-replay classifier of this branch length (trained when missing), not
    # the one of whichever run last wrote the demo's config
    root = Path(study.out)
    own = str(root / "world_model" / "adapt_lora" / "model")  # the demo's own Prophet when it trained one
    cfg = DemoConfig.load(study.out)
    cfg = replace(cfg, out=study.out, group_size=study.group_size, wm_branch_segments=study.segments,
                  wm_value_branches=study.value_branches, wm_model_dir=cfg.wm_model_dir or own,
                  wm_stats_dir=cfg.wm_stats_dir or own)  # fmt: skip
    refresh_dir = root / "rl" / "wm_fagrpo_branch" / f"seed{study.seed}" / study.refresh
    sft_ckpt = root / "sft" / f"seed{study.seed}" / "sft.ckpt"
    for need in (refresh_dir, sft_ckpt.parent):
        if not is_done(need):
            raise FileNotFoundError(f"{need} is not a finished stage: run the demo's wm_fagrpo_branch variant for seed "
                                    f"{study.seed} first")  # fmt: skip
    refresh = _with_branch_classifier(cfg, json.loads((refresh_dir / "done.json").read_text()), refresh_dir)
    torch.manual_seed(study.seed)
    policy = build_policy(cfg)
    hp = load_policy_weights(policy, str(sft_ckpt))
    policy.eval()
    prophet = Prophet.from_pretrained(refresh["model_dir"])
    stats = load_stats(cfg.wm_stats_dir)
    poses = (
        CommandedPoses.metaworld(cfg.target_task, cfg.image_size, cfg.camera)
        if prophet.config.use_action_frames
        else None
    )
    scoring = wm_success_scoring(cfg, refresh.get("classifier_dir"))
    p, g, seg = study.num_prompts, study.group_size, study.segments
    value = value_dir = real_branches = None
    if study.value:
        from lightning_prophrl.demo.imagined import value_branches
        from lightning_prophrl.demo.scorers import value_head
        from lightning_prophrl.envs.world_model import classifier_scorer
        from lightning_prophrl.models.reward import load_classifier

        memory = int(prophet.config.history_length)
        real_branches = value_branches(cfg, str(sft_ckpt), study.seed, refresh_dir, memory)
        value_dir = value_head(cfg, refresh["model_dir"], refresh_dir / "rollouts", refresh_dir, real_branches)
        value = classifier_scorer(load_classifier(value_dir))
    world = WorldModelEnv(prophet, stats, num_prompts=p, group_size=g, max_segments=seg,
                          num_steps=study.num_steps or cfg.wm_num_steps,
                          poses=poses, seed=study.seed, value_scorer=value, **scoring)  # fmt: skip
    real = MetaWorldEnv(cfg.target_task, num_prompts=p, group_size=g, image_size=cfg.image_size,
                        max_steps=cfg.max_steps, camera=cfg.camera, stop_at_success=not study.real_to_cap)  # fmt: skip
    prompts = branch_prompts(replace(cfg, wm_branch_segments=seg, wm_branch_every=1), refresh_dir / "rollouts",
                             int(prophet.config.history_length), num_prompts=p)  # fmt: skip
    prompts.setup()
    t0 = time.perf_counter()
    res = within_start_outcomes(
        policy, real, world, prompts,
        ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld"),
        ActionDecoder(hp["action_stats"], hp["action_dims"], "unified"),
        max_starts=study.starts, max_start_step=study.max_start_step, noise_seed=study.seed,
        noise_level=study.noise_level,
        world_reward_fn=partial(graded_reward, floor=cfg.wm_graded_floor) if study.reward_signal == "graded" else None,
        real_segments=study.real_segments,
    )  # fmt: skip
    real.close()
    if study.value_branches:  # how many measured starts the value head saw branched for real
        trained = set(load_done(real_branches)["start_indices"])
        res["value_branch_starts_measured"] = len(trained & set(res["start_indices"]))
    res = {"config": asdict(study), "seconds": round(time.perf_counter() - t0, 1),
           "policy_noise_level": policy.noise_level, "success_scorer": refresh.get("classifier_dir"),
           "value_head": value_dir, **res}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return res


def summary_line(res: dict[str, Any]) -> str:
    c = res["config"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    steps = "" if c.get("num_steps") is None else f" ({c['num_steps']} Prophet steps)"
    segments = f"{c['segments']}" + ("" if c.get("real_segments") is None else f" (real {c['real_segments']})")
    segments += " + value" if c.get("value") else ""
    segments += f" ({c['value_branches']} real-branch starts)" if c.get("value_branches") else ""
    return (f"| {c['seed']} | {segments} | {c['max_start_step'] if c['max_start_step'] is not None else 'all'} "
            f"| {c['noise_level'] or res['policy_noise_level']:g}{steps} | {c['reward_signal']} | {c.get('refresh', 'refresh')}{' (real past success)' if c.get('real_to_cap') else ''} | {res['starts']} x "
            f"{res['group_size']} | {res['real_rate']:.3f} / {res['imagined_rate']:.3f} | {res['real_mixed_starts']} / "
            f"{res['imagined_mixed_starts']} | {fmt(res['rate_corr'])} | {fmt(res['pair_auc'])} ({res['pairs']}) | "
            f"{fmt(res['advantage_corr'])} | {res['real_env_steps']} | {fmt(res.get('scorer_on_real_pair_auc'))} | {fmt(res.get('value_on_real_pair_auc'))} |")  # fmt: skip


HEADER = ("| seed | segments | starts at frame <= | noise | reward | refresh | starts x G | success real / imagined | "
          "mixed starts real / imagined | per-start rate corr | pair AUC (pairs) | advantage corr | real steps | "
          "pair AUC of the reward on the real branches | pair AUC of the value head on the real branch ends |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def saved_table(out: str | Path) -> str:
    """The markdown table of every setting measured under ``out`` (``OUT/studies/within_start/*.json``)."""
    rows = [json.loads(p.read_text()) for p in sorted((Path(out) / "studies" / "within_start").glob("*.json"))]

    def key(r: dict[str, Any]) -> tuple:
        c = r["config"]
        return (c["seed"], c["segments"], -1 if c["max_start_step"] is None else c["max_start_step"],
                c["noise_level"] or 0.0, c["reward_signal"], c.get("num_steps") or 0, c.get("refresh", ""),
                c["group_size"], c["starts"])  # fmt: skip

    return "\n".join([HEADER] + [summary_line(r) for r in sorted(rows, key=key)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="the demo run to reuse (default runs/demo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segments", type=int, default=10, help="branch horizon in policy chunks (default 10)")
    ap.add_argument("--max-start-step", type=int, default=None, help="only starts at frame <= this (default all)")
    ap.add_argument("--starts", type=int, default=40)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--num-prompts", type=int, default=4)
    ap.add_argument("--noise-level", type=float, default=None, help="SDE noise level (default the policy's)")
    ap.add_argument("--reward-signal", choices=("success", "graded"), default="success")
    ap.add_argument("--num-steps", type=int, default=None, help="Prophet sampling steps (default the demo's)")
    ap.add_argument("--refresh", default="refresh", help="the refresh directory's name (default refresh)")
    ap.add_argument("--real-to-cap", action="store_true",
                    help="run the real branches past a success, so that the reward model sees the frames after it")  # fmt: skip
    ap.add_argument(
        "--value",
        action="store_true",
        help="grade imagined branches cut without a success by the value head (trained on the refresh)",
    )
    ap.add_argument(
        "--real-segments",
        type=int,
        default=None,
        help="real branches run this many chunks (default --segments; more: the value head's target)",
    )
    ap.add_argument("--value-branches", type=int, default=0,
                    help="train the value head also on this many real branch starts run to the episode's end")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="print the table of every setting measured under --out")
    a = ap.parse_args(argv)
    if a.table:
        print(saved_table(a.out))
        return
    torch.set_num_threads(a.threads)
    study = WithinStartConfig(a.out, a.seed, a.segments, a.max_start_step, a.starts, a.group_size, a.num_prompts,
                              a.noise_level, a.reward_signal, a.num_steps, a.refresh, a.real_to_cap, a.value,
                              a.real_segments, a.value_branches)  # fmt: skip
    res = run_within_start(study)
    print(HEADER)
    print(summary_line(res))
    print(f"({res['seconds']} s; {Path(a.out) / 'studies' / 'within_start' / (study.name + '.json')})")


if __name__ == "__main__":
    main()
