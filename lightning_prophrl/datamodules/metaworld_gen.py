"""Demonstration shards from Meta-World's scripted experts (``prophrl-data metaworld``), the embedded default's data.

Each episode is one expert run from a seeded initial state with Gaussian action noise (a mix of successes and
failures for larger noise). The stored episode has ``T + 1`` frames: the ``T`` observations before each action plus
the final observation, paired with a last "hold still" action, so that the state reached by the last action (often
the success) is in the data. ``success_steps[t]`` is the simulator's success flag *at frame t*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lightning_prophrl.actions import metaworld_to_unified
from lightning_prophrl.datamodules.shards import SHARD_TARGET_POSES, Episode, ShardWriter


def expert_to_episode(ep: Any, fps: float, dataset: str, camera_size: tuple[int, int]) -> Episode:
    """A ``ScriptedExpert`` episode -> a shard ``Episode`` in the unified action space (see the module docstring)."""
    t = len(ep.actions)
    hold = np.array([[0.0, 0.0, 0.0, ep.actions[-1, 3]]], dtype=np.float32)
    raw = np.concatenate([ep.actions, hold])  # (T + 1, 4)
    actions, mask = metaworld_to_unified(raw)
    frames = np.concatenate([ep.frames, ep.final_frame[None]])
    final_state = np.concatenate([ep.ee_poses[-1, :3], ep.states[-1, 3:4]]).astype(np.float32)
    states = np.concatenate([ep.states[:, :4], final_state[None]])
    grip = np.clip(states[:, 3:4], 0.0, 1.0)
    ee = np.concatenate([ep.ee_poses, grip], axis=1)[:, None].astype(np.float32)  # (T + 1, 1, 8)
    # commanded target: mocap pose after each action + the commanded opening of that action (the state's at reset)
    command = np.concatenate([grip[:1, 0], actions[:-1, 6]])[:, None]
    targets = np.concatenate([ep.target_poses, command], axis=1)[:, None].astype(np.float32)
    h, w = camera_size
    meta = {
        "dataset": dataset,
        "embodiment": "sawyer-metaworld",
        "instruction": ep.instruction,
        "task": ep.task,
        "seed": ep.seed,
        "noise_sigma": ep.sigma,
        "fps": fps,
        "success": ep.episode_success,
        "success_steps": [False] + ep.success.tolist(),
        "num_actions": t,
        "goal": ep.goal.tolist(),
        "camera": {"K": ep.camera_k.tolist(), "extrinsics": ep.camera_extr.tolist(), "width": w, "height": h},
    }
    return Episode(
        key=f"{ep.task}_{ep.seed:06d}",
        frames=frames,
        actions=actions,
        action_mask=mask,
        meta=meta,
        state=states.astype(np.float32),
        ee_poses=ee,
        extras={"object_pos.npy": ep.object_pos.astype(np.float32), SHARD_TARGET_POSES: targets},
    )


def generate_metaworld(
    tasks: Sequence[str],
    episodes: int,
    out: str,
    noise: float = 0.1,
    noise_max: float | None = None,
    size: int = 64,
    camera: str = "workspace",
    max_steps: int = 150,
    stop_at_success: bool = True,
    seed: int = 0,
    per_shard: int = 10,
    dataset: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``episodes`` expert demonstrations per task into one shard dataset.

    Args:
        tasks: Meta-World v3 task names.
        episodes: episodes per task; episode ``i`` uses initial-state seed ``seed + i`` (demo seeds are < 1000, see
            ``lightning_prophrl.envs.metaworld``).
        out: output directory.
        noise: Gaussian action-noise std (or the lower end of the range with ``noise_max``).
        noise_max: when set, each episode's std is drawn uniformly in ``[noise, noise_max]``.
        size: square frame size.
        camera: camera preset.
        max_steps: step cap.
        stop_at_success: end episodes at their first success.
        seed: first initial-state seed; everything is a deterministic function of the arguments.
        per_shard: episodes per shard.
        dataset: dataset name (default ``metaworld``).
        progress: show a progress bar.

    Returns:
        a summary: episodes, successes and success rate per task, frames, output directory.
    """
    from lightning_prophrl.envs.metaworld import ScriptedExpert

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if noise < 0 or (noise_max is not None and noise_max < noise):
        raise ValueError(f"--noise must be >= 0 and --noise-max >= --noise, got {noise}, {noise_max}")
    if seed + episodes > 1000:
        raise ValueError(
            f"demo seeds must stay below 1000 (evaluation seeds start there): seed={seed}, episodes={episodes}"
        )
    summary: dict[str, Any] = {"out": out, "tasks": {}, "frames": 0}
    bar = tqdm(total=len(tasks) * episodes, desc="metaworld demos", disable=not progress)
    with ShardWriter(out, dataset or "metaworld", max_count=per_shard) as writer:
        for task in tasks:
            expert = ScriptedExpert(task, image_size=size, camera=camera, max_steps=max_steps,
                                    stop_at_success=stop_at_success)  # fmt: skip
            env = expert.slot.env
            fps = 1.0 / (env.model.opt.timestep * env.frame_skip)
            rng = np.random.default_rng([seed, len(task)])
            wins = 0
            try:
                for i in range(episodes):
                    sigma = noise if noise_max is None else float(rng.uniform(noise, noise_max))
                    ep = expert.run(seed + i, sigma=sigma)
                    episode = expert_to_episode(ep, fps, dataset or "metaworld", (size, size))
                    writer.write(episode)
                    wins += int(ep.episode_success)
                    summary["frames"] += len(episode)
                    bar.update(1)
                    bar.set_postfix(task=task, success=f"{wins}/{i + 1}")
            finally:
                expert.close()
            summary["tasks"][task] = {"episodes": episodes, "successes": wins, "success_rate": wins / episodes}
    bar.close()
    summary["episodes"] = len(tasks) * episodes
    return summary
