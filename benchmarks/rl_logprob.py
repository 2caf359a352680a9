"""Benchmark: per-step log-probs of recorded SDE trajectories, one batched forward vs a Python loop over the K steps.

FA-GRPO recomputes ``log pi(x_{k+1} | x_k, o)`` for all K flow steps of every sampled chunk at each update.
``FlowMatchingPolicy.log_prob`` encodes the observations once and runs the action head on ``B * K`` rows in one call;
the baselines loop over k, with the conditioning cached (``log_prob_loop``) or re-encoded at every step
(``log_prob_loop(reencode=True)``, what calling a ``velocity(obs, x, t)`` per step costs). Timings are medians over
repeats after warm-up, for a forward without grad (old log-probs) and forward + backward (the policy update), and the
results are checked equal.

    python benchmarks/rl_logprob.py [--quick] [--threads 1] [--batch 64] [--steps 5 10 20]

Prints a table and, last, one JSON line for K = 10 (forward + backward).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from lightning_prophrl.constants import INSTRUCTION, OBS_IMAGE, OBS_STATE
from lightning_prophrl.models.policy import FlowMatchingPolicy

TASKS = ["pick the puck and place it at the goal", "open the drawer", "push the puck to the goal"]


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


def run(k: int, batch: int, image: int, width: int, repeats: int, warmup: int) -> dict:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K = 10 only, few repeats (< 30 s)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--batch", type=int, default=64, help="sampled chunks (B)")
    parser.add_argument("--image", type=int, default=64, help="image size")
    parser.add_argument("--width", type=int, default=64, help="head/token width (CNN channels w/4, w/2, w, w)")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="K values")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, repeats, warmup = ([10], 5, 1) if args.quick else (args.steps, args.repeats, 3)

    rows = [run(k, args.batch, args.image, args.width, repeats, warmup) for k in steps]
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, batch={args.batch}, image={args.image}px, "
        f"width={args.width}; medians of {repeats} (ms), speedup = loop / batched"
    )
    header = f"{'K':>3} {'pass':>8} {'batched':>9} {'loop':>9} {'speedup':>8} {'loop re-encode':>15} {'speedup':>8}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        for label, sfx in (("fwd+bwd", ""), ("fwd", "_fwd")):
            b, lp, lr = r[f"batched{sfx}_ms"], r[f"loop{sfx}_ms"], r[f"loop_reencode{sfx}_ms"]
            print(f"{r['K']:>3} {label:>8} {b:9.1f} {lp:9.1f} {lp / b:7.2f}x {lr:15.1f} {lr / b:7.2f}x")
    print(f"max |batched - loop| over all K: {max(r['max_abs_diff'] for r in rows):.1e}")
    main_row = next((r for r in rows if r["K"] == 10), rows[-1])
    summary = {
        "K": main_row["K"],
        "batched_ms": round(main_row["batched_ms"], 2),
        "loop_ms": round(main_row["loop_ms"], 2),
        "speedup": round(main_row["loop_ms"] / main_row["batched_ms"], 2),
        "loop_reencode_ms": round(main_row["loop_reencode_ms"], 2),
        "speedup_vs_reencode": round(main_row["loop_reencode_ms"] / main_row["batched_ms"], 2),
        "batched_fwd_ms": round(main_row["batched_fwd_ms"], 2),
        "loop_fwd_ms": round(main_row["loop_fwd_ms"], 2),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "width": args.width,
        "max_abs_diff": main_row["max_abs_diff"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
