"""Benchmark of the RL loop: batched per-step log-probs, rollout environment steps/s, and time per FA-GRPO update.

1. Log-probs. FA-GRPO recomputes ``log pi(x_{k+1} | x_k, o)`` for all K flow steps of every sampled chunk at each
   update. ``FlowMatchingPolicy.log_prob`` encodes the observations once and runs the action head on ``B * K`` rows in
   one call; the baselines loop over k, with the conditioning cached (``log_prob_loop``) or re-encoded at every step
   (``log_prob_loop(reencode=True)``, what calling a ``velocity(obs, x, t)`` per step costs). Timings are medians over
   repeats after warm-up, for a forward without grad (old log-probs) and forward + backward (the policy update), and
   the results are checked equal.
2. Rollouts and 3. updates. ``FAGRPOModule`` with the demo's policy (``pipeline.build_policy``, freshly initialised:
   FA-GRPO needs only the action statistics and dims, passed directly, not an SFT checkpoint) trains in the real
   ``MetaWorldEnv`` (pick-place-v3, 64 px, workspace camera) under a Lightning ``Trainer`` for a few updates at the
   demo's settings (P = 4 prompts x G = 8 rollouts, chunk 4, at most 150 steps, 2 PPO epochs of minibatches of 256
   queries). Rewards are seeded uniform noise so that no group has zero variance and every update runs its PPO epochs
   (an update whose advantages are all zero is skipped); the untrained policy does not succeed, so episodes run to the
   step cap. Per update: wall time of the whole update (rollouts + log-prob recomputation + PPO epochs), of its
   rollouts, and inside the rollouts of ``policy.sample`` and of the simulator (``env.reset`` / ``env.step``: physics
   plus rendering at chunk boundaries). Environment steps/s = real simulator steps / rollout wall time. The demo's
   per-flow-step gradient-norm diagnostic (``step_grad_every``, every 10th update) is off.

    python benchmarks/rl.py --quick      # K = 10 log-probs; RL with P = 2, G = 2, 40 steps, 2 updates (under a minute)
    python benchmarks/rl.py [--threads 1] [--batch 64] [--steps 5 10 20] [--updates 3] [--only logprob|rl]

Prints the tables and, last, one JSON line (log-probs at K = 10, forward + backward; RL medians over the updates).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_prophrl.actions import ActionStats, metaworld_to_unified  # noqa: E402
from lightning_prophrl.constants import INSTRUCTION, OBS_IMAGE, OBS_STATE  # noqa: E402
from lightning_prophrl.models.policy import FlowMatchingPolicy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import run_info  # noqa: E402

TASKS = ["pick the puck and place it at the goal", "open the drawer", "push the puck to the goal"]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Log-probs over K flow steps: batched vs a Python loop
# ---------------------------------------------------------------------------------------------------------------------
def median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median wall time (ms) of each function; variants are interleaved per repeat so that load from other processes
    on a shared machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_logprob(k: int, batch: int, image: int, width: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    policy = FlowMatchingPolicy(
        action_dim=4,
        chunk_len=4,
        state_dim=4,
        instructions=TASKS,
        num_steps=k,
        cond_dim=width,
        width=width,
        cnn_channels=(width // 4, width // 2, width, width),
    )
    obs = {
        OBS_IMAGE: torch.rand(batch, 3, image, image) * 2 - 1,
        OBS_STATE: torch.randn(batch, 4),
        INSTRUCTION: [TASKS[i % len(TASKS)] for i in range(batch)],
    }
    x_steps = policy.sample(obs, mode="sde", generator=torch.Generator().manual_seed(0)).x_steps
    variants = {
        "batched": lambda: policy.log_prob(obs, x_steps),
        "loop": lambda: policy.log_prob_loop(obs, x_steps),
        "loop_reencode": lambda: policy.log_prob_loop(obs, x_steps, reencode=True),
    }
    with torch.no_grad():
        ref = variants["batched"]()
        max_diff = max((fn() - ref).abs().max().item() for fn in variants.values())
    out: dict = {"K": k, "batch": batch, "max_abs_diff": max_diff}

    def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            policy.zero_grad(set_to_none=True)
            fn().sum().backward()

        return step

    with torch.no_grad():
        out.update({f"{name}_fwd_ms": ms for name, ms in median_ms(variants, repeats, warmup).items()})
    train = {name: fwd_bwd(fn) for name, fn in variants.items()}
    out.update({f"{name}_ms": ms for name, ms in median_ms(train, repeats, warmup).items()})
    return out


def print_logprob(rows: list[dict], args: argparse.Namespace, repeats: int) -> None:
    print(
        f"log-probs: torch {torch.__version__}, threads={torch.get_num_threads()}, batch={args.batch}, "
        f"image={args.image}px, width={args.width}; medians of {repeats} (ms), speedup = loop / batched"
    )
    header = f"{'K':>3} {'pass':>8} {'batched':>9} {'loop':>9} {'speedup':>8} {'loop re-encode':>15} {'speedup':>8}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        for label, sfx in (("fwd+bwd", ""), ("fwd", "_fwd")):
            b, lp, lr = r[f"batched{sfx}_ms"], r[f"loop{sfx}_ms"], r[f"loop_reencode{sfx}_ms"]
            print(f"{r['K']:>3} {label:>8} {b:9.1f} {lp:9.1f} {lp / b:7.2f}x {lr:15.1f} {lr / b:7.2f}x")
    print(f"max |batched - loop| over all K: {max(r['max_abs_diff'] for r in rows):.1e}")


def logprob_summary(rows: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    row = next((r for r in rows if r["K"] == 10), rows[-1])
    return {
        "K": row["K"],
        "batched_ms": round(row["batched_ms"], 2),
        "loop_ms": round(row["loop_ms"], 2),
        "speedup": round(row["loop_ms"] / row["batched_ms"], 2),
        "loop_reencode_ms": round(row["loop_reencode_ms"], 2),
        "speedup_vs_reencode": round(row["loop_reencode_ms"] / row["batched_ms"], 2),
        "batched_fwd_ms": round(row["batched_fwd_ms"], 2),
        "loop_fwd_ms": round(row["loop_fwd_ms"], 2),
        "batch": args.batch,
        "width": args.width,
        "max_abs_diff": row["max_abs_diff"],
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. Rollout environment steps/s and 3. time per FA-GRPO update
# ---------------------------------------------------------------------------------------------------------------------
class Stopwatch:
    """Accumulates the wall time of wrapped calls by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, attr: str, name: str, after: Callable[[Any], None] | None = None) -> None:
        """Shadow ``obj.attr`` by a timed call (an instance attribute); ``after`` receives each result."""
        inner = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                out = inner(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
            if after is not None:
                after(out)
            return out

        setattr(obj, attr, timed)


class UpdateTimer(L.Callback):
    """One record per RL update (one training batch): wall times and environment steps."""

    def __init__(self, watch: Stopwatch) -> None:
        self.watch, self.records, self.env_steps = watch, [], 0
        self._t0, self._before, self._steps_before, self._skipped = 0.0, {}, 0, True

    def count_steps(self, rollouts: Any) -> None:
        self.env_steps += int(rollouts.steps.sum())

    def check_update(self, stats: dict[str, torch.Tensor]) -> None:
        self._skipped = bool(stats["train/skipped_update"] > 0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._before, self._steps_before, self._skipped = dict(self.watch.seconds), self.env_steps, True
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:  # fmt: skip
        rec = {"update_s": time.perf_counter() - self._t0, "env_steps": self.env_steps - self._steps_before}
        rec.update({f"{k}_s": v - self._before.get(k, 0.0) for k, v in self.watch.seconds.items()})
        rec["learn_s"] = rec["update_s"] - rec["rollout_s"]  # advantages, flattening, ppo_s (log-probs + PPO epochs)
        rec["skipped"] = self._skipped
        self.records.append(rec)


def uniform_action_stats() -> ActionStats:
    """Statistics of uniform random Meta-World actions in ``[-1, 1]^4`` (the full action box) in the unified space."""
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, (10_000, 4)))
    return ActionStats.compute([unified], mask)


def run_rl(num_prompts: int, group_size: int, max_steps: int, updates: int, seed: int = 0) -> dict[str, Any]:
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.modules import FAGRPOModule
    from lightning_prophrl.pipeline import POLICY_DIMS, DemoConfig, build_policy

    cfg = DemoConfig(num_prompts=num_prompts, group_size=group_size, max_steps=max_steps)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    env = MetaWorldEnv(cfg.target_task, num_prompts=cfg.num_prompts, group_size=cfg.group_size,
                       image_size=cfg.image_size, max_steps=cfg.max_steps, camera=cfg.camera)  # fmt: skip
    build_s = time.perf_counter() - t0
    reward_gen = torch.Generator().manual_seed(seed)
    module = FAGRPOModule(build_policy(cfg), env, group_size=cfg.group_size, max_queries=cfg.max_queries,
                          action_stats=uniform_action_stats().to_dict(), action_dims=POLICY_DIMS, flowscale=True,
                          reward_model=lambda b: torch.rand(b.rewards.numel(), generator=reward_gen),
                          optimizer=lambda p: torch.optim.Adam(p, lr=cfg.lr), step_grad_every=0, seed=seed)  # fmt: skip
    watch = Stopwatch()
    timer = UpdateTimer(watch)
    watch.wrap(module, "rollout", "rollout", after=timer.count_steps)
    watch.wrap(module, "_ppo_update", "ppo", after=timer.check_update)
    watch.wrap(module.policy, "sample", "policy")
    watch.wrap(env, "reset", "sim")
    watch.wrap(env, "step", "sim")
    prompts = PromptDataModule(tasks=[cfg.target_task], num_prompts=cfg.num_prompts, updates_per_epoch=updates,
                               seed=seed)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, callbacks=[timer],
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)  # fmt: skip
    try:
        trainer.fit(module, datamodule=prompts)
    finally:
        env.close()
    recs = timer.records
    if any(r["skipped"] for r in recs):
        raise RuntimeError(
            "an update skipped its PPO epochs (all advantages zero): the timing would not be a full update"
        )
    med = {
        k: statistics.median(r[k] for r in recs)
        for k in ("update_s", "rollout_s", "learn_s", "ppo_s", "policy_s", "sim_s")
    }
    steps, rollout_s = sum(r["env_steps"] for r in recs), sum(r["rollout_s"] for r in recs)
    return {
        "updates": len(recs),
        "records": recs,
        "median": med,
        "env_steps_per_update": steps / len(recs),
        "env_steps_per_s": steps / rollout_s,
        "sim_steps_per_s": steps / sum(r["sim_s"] for r in recs),
        "policy_share": sum(r["policy_s"] for r in recs) / rollout_s,
        "sim_share": sum(r["sim_s"] for r in recs) / rollout_s,
        "env_build_s": build_s,
        "settings": {
            "task": cfg.target_task,
            "image": cfg.image_size,
            "camera": cfg.camera,
            "P": cfg.num_prompts,
            "G": cfg.group_size,
            "chunk": cfg.chunk_len,
            "max_steps": cfg.max_steps,
            "max_queries": cfg.max_queries,
            "K": module.policy.num_steps,
            "ppo_epochs": module.hparams.ppo_epochs,
            "minibatch": module.hparams.minibatch_size,
        },
    }


def print_rl(res: dict[str, Any]) -> None:
    s = res["settings"]
    print(
        f"\nFA-GRPO in MetaWorldEnv {s['task']} ({s['image']} px, {s['camera']}): P={s['P']} x G={s['G']}, "
        f"chunk {s['chunk']}, <= {s['max_steps']} steps, K={s['K']}, {s['ppo_epochs']} PPO epochs x minibatch "
        f"{s['minibatch']}; env build {res['env_build_s']:.1f} s"
    )
    header = (
        f"{'update':>6} {'total s':>8} {'rollout s':>9} {'policy s':>8} {'sim s':>7} {'learn s':>8} {'PPO s':>7} "
        f"{'env steps':>9} {'steps/s':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for i, r in enumerate(res["records"]):
        print(
            f"{i:>6} {r['update_s']:8.2f} {r['rollout_s']:9.2f} {r['policy_s']:8.2f} {r['sim_s']:7.2f} "
            f"{r['learn_s']:8.2f} {r['ppo_s']:7.2f} {r['env_steps']:>9} {r['env_steps'] / r['rollout_s']:8.1f}"
        )
    m = res["median"]
    print(
        f"{'median':>6} {m['update_s']:8.2f} {m['rollout_s']:9.2f} {m['policy_s']:8.2f} {m['sim_s']:7.2f} "
        f"{m['learn_s']:8.2f} {m['ppo_s']:7.2f}"
    )
    print("learn = update - rollout; PPO = behaviour log-prob recomputation + PPO epochs (inside learn)")
    print(
        f"rollouts: {res['env_steps_per_s']:.1f} env steps/s ({res['policy_share']:.0%} of rollout time in "
        f"policy.sample, {res['sim_share']:.0%} in the simulator: {res['sim_steps_per_s']:.1f} steps/s alone)"
    )


# ---------------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K = 10 only, few repeats; RL with P = 2, G = 2, 40 steps")
    parser.add_argument("--only", choices=["logprob", "rl"], default=None, help="run one part only")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=64, help="log-probs: sampled chunks (B)")
    parser.add_argument("--image", type=int, default=64, help="log-probs: image size")
    parser.add_argument("--width", type=int, default=64, help="log-probs: head/token width (CNN w/4, w/2, w, w)")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="log-probs: K values")
    parser.add_argument("--repeats", type=int, default=15, help="log-probs: timed repeats")
    parser.add_argument("--prompts", type=int, default=None, help="RL: P (default 4, quick 2)")
    parser.add_argument("--group", type=int, default=None, help="RL: G (default 8, quick 2)")
    parser.add_argument("--max-steps", type=int, default=None, help="RL: episode step cap (default 150, quick 40)")
    parser.add_argument("--updates", type=int, default=None, help="RL: timed updates (default 3, quick 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, repeats, warmup = ([10], 5, 1) if args.quick else (args.steps, args.repeats, 3)
    rl_defaults = (2, 2, 40, 2) if args.quick else (4, 8, 150, 3)
    p, g, max_steps, updates = (v if v is not None else d for v, d in
                                zip((args.prompts, args.group, args.max_steps, args.updates), rl_defaults))  # fmt: skip
    t_start = time.perf_counter()

    summary: dict[str, Any] = {}
    if args.only != "rl":
        rows = [run_logprob(k, args.batch, args.image, args.width, repeats, warmup) for k in steps]
        print_logprob(rows, args, repeats)
        summary.update(logprob_summary(rows, args))
    if args.only != "logprob":
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*in eval mode at the start of training.*")  # the frozen reference
        res = run_rl(p, g, max_steps, updates)
        print_rl(res)
        m = res["median"]
        summary.update({
            "env_steps_per_s": round(res["env_steps_per_s"], 1),
            "sim_steps_per_s": round(res["sim_steps_per_s"], 1),
            "rollout_policy_share": round(res["policy_share"], 3),
            "rollout_sim_share": round(res["sim_share"], 3),
            "s_per_update": round(m["update_s"], 2),
            "rollout_s_per_update": round(m["rollout_s"], 2),
            "learn_s_per_update": round(m["learn_s"], 2),
            "env_steps_per_update": res["env_steps_per_update"],
            "updates_timed": res["updates"],
            "rl_settings": res["settings"],
        })  # fmt: skip
    summary.update({"threads": torch.get_num_threads(), "torch": torch.__version__, **run_info(t_start)})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
