"""Real rendered throughput of ``MetaWorldEnv``: environment steps per second at 64x64 and 96x96, rendering every
step (chunks of one action) vs only at chunk boundaries (chunks of ``--chunk`` actions, what policy rollouts do).

Also measured: physics only (raw ``env.step``, no rendering), ms per rendered frame, the one-off cost of building
the environments (simulators + render contexts), and the memory of each further simulator with its renderer, with
render contexts shared between the simulators of one task (the default) and with one context each (resident memory
in a fresh process per setting). Actions are uniform random in ``[-1, 1]``, episodes never stop early
(``stop_at_success=False``), so every env executes every step. Timings are wall-clock on this machine, single thread.

    python benchmarks/metaworld_env.py --quick          # under 30 s
    python benchmarks/metaworld_env.py                  # 8 envs, 240 steps per env and setting

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from lightning_prophrl.envs import MetaWorldEnv, Prompt, make_seeded_env, reset_seeded  # noqa: E402


def physics_steps_per_s(task: str, steps: int) -> float:
    """Raw simulator steps per second without rendering."""
    env = make_seeded_env(task)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4))
    elapsed = 0.0
    for start in range(0, steps, 480):  # the raw env refuses to step past 500 steps
        reset_seeded(env, 2000 + start)
        t0 = time.perf_counter()
        for a in actions[start : start + 480]:
            env.step(a)
        elapsed += time.perf_counter() - t0
    return steps / elapsed


def rendered_steps_per_s(env: MetaWorldEnv, steps: int, chunk: int, seed: int) -> tuple[float, float]:
    """Env steps per second (summed over envs) and rendered frames per second, for ``steps`` steps per env."""
    env.reset([Prompt(env.tasks[0], 2000 + seed + p) for p in range(env.num_prompts)])
    rng = np.random.default_rng(seed)
    n_chunks = steps // chunk
    chunks = rng.uniform(-1, 1, (n_chunks, env.num_envs, chunk, 4))
    t0 = time.perf_counter()
    for c in chunks:
        env.step(c)
    dt = time.perf_counter() - t0
    return n_chunks * chunk * env.num_envs / dt, n_chunks * env.num_envs / dt


def _memory_per_env_mb(task: str, n: int, share: bool) -> float:
    """Resident memory of each further seeded simulator + 64 px renderer, after one of each was built."""
    from lightning_prophrl.envs.rendering import FastRenderer

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    keep = [make_seeded_env(task)]
    keep.append(FastRenderer(keep[0].model, keep[0].data, 64, share_context=share))
    before = rss_mb()
    for _ in range(n):
        env = make_seeded_env(task)
        keep += [env, FastRenderer(env.model, env.data, 64, share_context=share)]
    return (rss_mb() - before) / n


def memory_per_env_mb(task: str, n: int, share: bool) -> float:
    """``_memory_per_env_mb`` in a fresh (spawned) process, so that settings do not see each other's memory."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_memory_per_env_mb, (task, n, share))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 envs, 48 steps per setting (under 30 s)")
    parser.add_argument("--task", default="pick-place-v3")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=240, help="env steps per env and setting (<= 496)")
    parser.add_argument("--chunk", type=int, default=4, help="actions per chunk for chunk-boundary rendering")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    parser.add_argument("--camera", default="workspace")
    args = parser.parse_args()
    if args.quick:
        args.num_envs, args.steps = 2, 48
    if not 1 <= args.steps <= 496 or args.steps % args.chunk:
        parser.error("--steps must lie in [1, 496] and be a multiple of --chunk")

    physics = physics_steps_per_s(args.task, 4 * args.steps)
    rows, result = [], {"task": args.task, "num_envs": args.num_envs, "chunk": args.chunk, "camera": args.camera}
    result["physics_steps_per_s"] = round(physics, 1)
    mem = {share: memory_per_env_mb(args.task, max(args.num_envs, 4), share) for share in (True, False)}
    result["mb_per_env_shared_context"] = round(mem[True], 1)
    result["mb_per_env_own_context"] = round(mem[False], 1)
    for size in args.sizes:
        t0 = time.perf_counter()
        env = MetaWorldEnv(args.task, args.num_envs, 1, size, max_steps=500, camera=args.camera, stop_at_success=False)
        build_s = time.perf_counter() - t0
        try:
            rendered_steps_per_s(env, args.chunk * 2, args.chunk, seed=99)  # warm-up
            every, fps_every = rendered_steps_per_s(env, args.steps, 1, seed=0)
            boundary, fps_boundary = rendered_steps_per_s(env, args.steps, args.chunk, seed=1)
        finally:
            env.close()
        # Per frame: the time of one rendered step minus one physics step.
        ms_frame = 1000.0 * (1.0 / every - 1.0 / physics)
        rows.append((size, every, boundary, ms_frame, build_s))
        result[f"steps_per_s_render_every_step_{size}"] = round(every, 1)
        result[f"steps_per_s_render_chunk_boundary_{size}"] = round(boundary, 1)
        result[f"ms_per_frame_{size}"] = round(ms_frame, 2)
        result[f"build_s_{size}"] = round(build_s, 2)

    print(f"Meta-World {args.task}, {args.num_envs} envs, camera {args.camera}, {platform.processor() or 'cpu'}")
    print(f"physics only: {physics:8.1f} steps/s")
    print(
        f"memory per further simulator + renderer: {mem[True]:.1f} MB with shared render contexts, "
        f"{mem[False]:.1f} MB with one each ({mem[False] / mem[True]:.1f}x)"
    )
    print(f"{'size':>5} | {'render every step':>18} | {f'render every {args.chunk}':>16} | {'ms/frame':>8} | build (s)")
    for size, every, boundary, ms_frame, build_s in rows:
        print(f"{size:>5} | {every:12.1f} st/s | {boundary:10.1f} st/s | {ms_frame:8.2f} | {build_s:8.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
