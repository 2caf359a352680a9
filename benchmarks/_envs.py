"""Imagined vs real environment throughput, shared by ``benchmarks/prophet.py`` and ``benchmarks/pipeline.py``.

Both environments run the same ``N = num_prompts x group_size`` rollouts from the same initial states and execute the
same chunks of ``h`` raw unified actions (``(N, h, 14)``, uniform random Meta-World actions mapped with
``metaworld_to_unified``) per ``step`` call:

* real: ``MetaWorldEnv`` (physics for every action, one rendered frame per ``step`` call, i.e. at chunk boundaries,
  as in the demo's rollouts), given the chunks converted back to its 4-D Meta-World actions with
  ``unified_to_metaworld`` (done before the timing, as the policy's action decoder does outside ``env.step``);
* imagined: ``WorldModelEnv`` over a Prophet of the demo's configuration (``prophet_config(image_size, wm_chunk_len,
  history_len)``, random weights: the cost of a forward pass does not depend on them) with the commanded-pose
  action-frame stream (``CommandedPoses.metaworld``) and the Prophet statistics of uniform random actions; one
  ``step`` call generates one segment of ``wm_chunk_len`` frames (stride ``h / wm_chunk_len`` actions per frame).
  The imagined episodes start from the real environment's rendered initial frames and hand states.

Steps per second count simulator-equivalent actions, ``N * h`` per ``step`` call, for both worlds (an imagined step
call of the demo, ``h = 4`` and one Prophet frame, stands for 4 simulator steps). Only the ``step`` calls are timed,
after ``warmup`` untimed ones per episode (reset excluded); no episode ends early (``stop_at_success=False`` and a
horizon longer than the episode), and the executed steps are read back from ``info["steps"]``. Each round runs one
episode in the real environment, then one per Prophet sampling-step count, interleaved so that load from other
processes hits all of them alike; the reported rates are medians over the rounds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lightning_prophrl.actions import ActionStats, metaworld_to_unified, unified_to_metaworld  # noqa: E402
from lightning_prophrl.constants import OBS_IMAGE, OBS_STATE  # noqa: E402
from lightning_prophrl.envs.base import INFO_STEPS, Prompt  # noqa: E402

TARGET_RATIO = 0.1  # the target: imagined steps/s >= 1/10 of real rendered steps/s


def uniform_action_stats(n: int = 10_000, seed: int = 0) -> ActionStats:
    """Unified-space statistics of ``n`` uniform random Meta-World actions in ``[-1, 1]^4``."""
    unified, mask = metaworld_to_unified(np.random.default_rng(seed).uniform(-1, 1, (n, 4)))
    return ActionStats.compute([unified], mask)


def random_unified_chunks(steps: int, num_envs: int, chunk: int, seed: int) -> np.ndarray:
    """``(steps, N, h, 14)`` raw unified chunks of uniform random Meta-World actions."""
    raw = np.random.default_rng(seed).uniform(-1, 1, (steps * num_envs * chunk, 4))
    return metaworld_to_unified(raw)[0].astype(np.float32).reshape(steps, num_envs, chunk, -1)


def timed_episode(
    env: Any, prompts: Sequence[Prompt], chunks: np.ndarray, warmup: int
) -> tuple[float, int, dict[str, Any]]:
    """Reset ``env``, run ``chunks`` (one ``step`` per chunk) and time all but the first ``warmup``.

    Returns:
        ``(seconds, env_steps, first_obs)``: wall time of the timed ``step`` calls, the actions they executed (all
        envs) and the observation returned by ``reset``.
    """
    first = env.reset(prompts)
    before = 0
    for c in chunks[:warmup]:
        _, _, info = env.step(c)
        before = int(info[INFO_STEPS].sum())
    t0 = time.perf_counter()
    for c in chunks[warmup:]:
        _, _, info = env.step(c)
    seconds = time.perf_counter() - t0
    return seconds, int(info[INFO_STEPS].sum()) - before, first


def env_throughput(
    task: str = "pick-place-v3",
    image_size: int = 64,
    camera: str = "workspace",
    num_prompts: int = 4,
    group_size: int = 8,
    chunk_len: int = 4,
    wm_chunk_len: int = 1,
    history_len: int = 8,
    num_steps: Sequence[int] = (1, 2),
    segments: int = 8,
    warmup: int = 1,
    rounds: int = 1,
    seed: int = 0,
    prophet_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Imagined (``WorldModelEnv``) vs real (``MetaWorldEnv``) environment steps per second (module docstring).

    Args:
        task: Meta-World task of the prompts.
        image_size: frame size of both worlds (a multiple of 8 for Prophet).
        camera: camera preset of the real renderer and of the commanded-pose projection.
        num_prompts: ``P`` prompts.
        group_size: ``G`` rollouts per prompt.
        chunk_len: ``h`` raw actions per ``step`` call (the policy's chunk).
        wm_chunk_len: Prophet frames per segment; ``chunk_len`` must be a multiple of it.
        history_len: Prophet's history memory in frames.
        num_steps: Prophet sampling (Euler) steps per segment, one imagined measurement each.
        segments: timed ``step`` calls per episode.
        warmup: untimed ``step`` calls at the start of each episode.
        rounds: episodes per world (rates are medians over them).
        seed: seeds the weights, the actions, the prompts and the sampling noise.
        prophet_kwargs: the world model's ``Prophet`` arguments (default: ``prophet_config`` of the DiT with
            ``wm_chunk_len`` and ``history_len``).

    Returns:
        Settings, ``real_steps_per_s``, and per sampling-step count ``k``: ``imagined_steps_per_s_{k}step``,
        ``ratio_{k}step`` (imagined / real) and ``imagined_ms_per_call_{k}step``; ``target_ratio`` and
        ``target_met`` (every ratio at least ``target_ratio``); ``build_s`` of each world.
    """
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.studies.prophet import prophet_config

    if chunk_len % wm_chunk_len:
        raise ValueError(f"`chunk_len`={chunk_len} must be a multiple of `wm_chunk_len`={wm_chunk_len}")
    if segments < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"need segments >= 1, warmup >= 0, rounds >= 1, got {segments}, {warmup}, {rounds}")
    per_episode = segments + warmup
    if per_episode * chunk_len > 500:
        raise ValueError(f"(segments + warmup) * chunk_len = {per_episode * chunk_len} exceeds Meta-World's 500 steps")
    n = num_prompts * group_size

    t0 = time.perf_counter()
    real = MetaWorldEnv(task, num_prompts=num_prompts, group_size=group_size, image_size=image_size,
                        max_steps=per_episode * chunk_len, camera=camera, stop_at_success=False)  # fmt: skip
    real_build_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        prophet = Prophet(**(prophet_kwargs or prophet_config(image_size, wm_chunk_len, history_len)))
        poses = CommandedPoses.metaworld(task, image_size, camera) if prophet.config.use_action_frames else None
        stats = uniform_action_stats(seed=seed)
        worlds = {k: WorldModelEnv(prophet, stats, num_prompts=num_prompts, group_size=group_size,
                                   max_segments=per_episode + 1, num_steps=k, stop_at_success=False, seed=seed,
                                   poses=poses)
                  for k in num_steps}  # fmt: skip
        wm_build_s = time.perf_counter() - t0

        real_rates: list[float] = []
        wm_rates: dict[int, list[float]] = {k: [] for k in num_steps}
        wm_call_ms: dict[int, list[float]] = {k: [] for k in num_steps}
        for r in range(rounds):
            seeds = [2000 + seed * 1000 + r * num_prompts + p for p in range(num_prompts)]
            chunks = random_unified_chunks(per_episode, n, chunk_len, seed + r)
            seconds, steps, first = timed_episode(real, [Prompt(task, s) for s in seeds],
                                                  unified_to_metaworld(chunks), warmup)  # fmt: skip
            if steps != n * chunk_len * segments:
                raise RuntimeError(f"real episode executed {steps} steps, expected {n * chunk_len * segments}")
            real_rates.append(steps / seconds)
            # imagined episodes start where the real ones did: rendered frame and proprioception of each prompt
            prompts = [Prompt(task, s, None, first[OBS_IMAGE][p * group_size], first[OBS_STATE][p * group_size])
                       for p, s in enumerate(seeds)]  # fmt: skip
            for k, world in worlds.items():
                seconds, steps, _ = timed_episode(world, prompts, chunks, warmup)
                if steps != n * chunk_len * segments:
                    raise RuntimeError(f"imagined episode executed {steps} steps, expected {n * chunk_len * segments}")
                wm_rates[k].append(steps / seconds)
                wm_call_ms[k].append(1000 * seconds / segments)
    finally:
        real.close()

    real_rate = statistics.median(real_rates)
    out: dict[str, Any] = {
        "task": task,
        "image_size": image_size,
        "num_envs": n,
        "num_prompts": num_prompts,
        "group_size": group_size,
        "actions_per_step_call": chunk_len,
        "prophet_frames_per_step_call": wm_chunk_len,
        "history_len": history_len,
        "prophet_params": prophet.num_parameters(),
        "segments_timed": segments,
        "rounds": rounds,
        "real_steps_per_s": real_rate,
        "real_ms_per_call": 1000 * n * chunk_len / real_rate,
    }
    for k in num_steps:
        rate = statistics.median(wm_rates[k])
        out[f"imagined_steps_per_s_{k}step"] = rate
        out[f"imagined_ms_per_call_{k}step"] = statistics.median(wm_call_ms[k])
        out[f"ratio_{k}step"] = rate / real_rate
    out["target_ratio"] = TARGET_RATIO
    out["target_met"] = all(out[f"ratio_{k}step"] >= TARGET_RATIO for k in num_steps)
    out["real_build_s"], out["imagined_build_s"] = real_build_s, wm_build_s
    return out


def format_throughput(res: dict[str, Any]) -> str:
    """A small human-readable table of an ``env_throughput`` result."""
    lines = [
        f"imagined vs real env steps/s: {res['task']}, {res['image_size']} px, N = {res['num_prompts']} x "
        f"{res['group_size']} = {res['num_envs']} envs, {res['actions_per_step_call']} actions per step call "
        f"({res['prophet_frames_per_step_call']} Prophet frame(s), history {res['history_len']}), "
        f"{res['segments_timed']} timed calls x {res['rounds']} round(s)",
        f"{'world':>22} | {'steps/s':>9} | {'ms/call':>8} | imagined/real",
        f"{'real MetaWorldEnv':>22} | {res['real_steps_per_s']:9.1f} | {res['real_ms_per_call']:8.1f} |",
    ]
    for key in sorted(k for k in res if k.startswith("imagined_steps_per_s_")):
        k = key.removeprefix("imagined_steps_per_s_")
        lines.append(f"{'WorldModelEnv ' + k:>22} | {res[key]:9.1f} | {res[f'imagined_ms_per_call_{k}']:8.1f} | "
                     f"{res[f'ratio_{k}']:.3f}")  # fmt: skip
    lines.append(f"target imagined/real >= {res['target_ratio']}: {'met' if res['target_met'] else 'NOT met'}")
    return "\n".join(lines)
