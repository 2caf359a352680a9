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
import torch
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
    excursion: float = 0.0,
    excursion_share: float = 1.0,
    driver: str | None = None,
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
        excursion: rate of smooth random excursions in an episode (``ScriptedExpert.run``; 0 = none).
        excursion_share: fraction of the episodes that get excursions (drawn per episode with the seed).
        driver: who acts (``ScriptedExpert``): None (each task's expert), another task's name or ``"random"``.

    Returns:
        a summary: episodes, successes and success rate per task, frames, output directory.
    """
    from lightning_prophrl.envs.metaworld_expert import ScriptedExpert

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
                                    stop_at_success=stop_at_success, driver=driver)  # fmt: skip
            env = expert.slot.env
            fps = 1.0 / (env.model.opt.timestep * env.frame_skip)
            rng = np.random.default_rng([seed, len(task)])
            wins = 0
            try:
                for i in range(episodes):
                    sigma = noise if noise_max is None else float(rng.uniform(noise, noise_max))
                    rate = excursion if excursion > 0 and rng.random() < excursion_share else 0.0
                    ep = expert.run(seed + i, sigma=sigma, excursion=rate)
                    episode = expert_to_episode(ep, fps, dataset or "metaworld", (size, size))
                    episode.meta["excursion"] = rate
                    episode.meta["driver"] = driver or task
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


class _RecordingRollouts:
    """A policy's real SDE/ODE rollouts for shard writing: ``MetaWorldEnv``s that render and record every action and
    run to the step cap (no stop at success), one per batch size, closed together."""

    def __init__(self, task: str, group_size: int, size: int, camera: str, max_steps: int) -> None:
        self.task, self.group_size, self.size, self.camera, self.max_steps = task, group_size, size, camera, max_steps
        self.envs: dict[int, Any] = {}

    def run(self, policy: Any, decoder: Any, prompts: list[Any], max_queries: int, mode: str,
            noise_level: float | None, noise_seed: int) -> Any:  # fmt: skip
        """Roll ``policy`` out from ``prompts`` (``group_size`` each); returns the env holding the episode records."""
        from lightning_prophrl.envs.metaworld import MetaWorldEnv
        from lightning_prophrl.envs.rollout import collect_rollouts

        if len(prompts) not in self.envs:
            self.envs[len(prompts)] = MetaWorldEnv(self.task, num_prompts=len(prompts), group_size=self.group_size,
                                                   image_size=self.size, max_steps=self.max_steps, camera=self.camera,
                                                   stop_at_success=False, record_steps=True)  # fmt: skip
        env = self.envs[len(prompts)]
        with torch.no_grad():
            collect_rollouts(policy, env, prompts, decoder, max_queries, mode=mode, noise_level=noise_level,
                             generator=torch.Generator().manual_seed(noise_seed))  # fmt: skip
        return env

    def episode(self, env: Any, n: int, dataset: str) -> tuple[Any, Episode]:
        """Rollout ``n`` of the last ``run`` as ``(ExpertEpisode, shard Episode)``."""
        ep = env.episodes()[n].to_expert_episode(env.camera_k, env.camera_extr)
        return ep, expert_to_episode(ep, env.fps, dataset, (self.size, self.size))

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _finish_rollouts(summary: dict[str, Any], out: str, stats_from: str | None) -> dict[str, Any]:
    """Copy ``stats_from``'s ``stats.json`` over the written set's and add the success rate to ``summary``."""
    import shutil
    from pathlib import Path

    from lightning_prophrl.constants import STATS_FILE

    if stats_from is not None:
        shutil.copy(Path(stats_from) / STATS_FILE, Path(out) / STATS_FILE)
    summary["success_rate"] = summary["successes"] / summary["episodes"]
    return summary


def generate_policy_rollouts(
    policy: Any,
    decoder: Any,
    task: str,
    seeds: Sequence[int],
    out: str,
    max_queries: int,
    mode: str = "sde",
    size: int = 64,
    camera: str = "workspace",
    max_steps: int = 150,
    batch_size: int = 10,
    noise_seed: int = 0,
    noise_level: float | None = None,
    stats_from: str | None = None,
    dataset: str = "metaworld-policy",
    progress: bool = True,
) -> dict[str, Any]:
    """Write a policy's real closed-loop episodes as a demonstration shard dataset (world-model refresh data).

    Each episode runs the full ``max_steps`` (no stop at success, like the world-model data of
    ``lightning_prophrl.recipes.prophet.generate_wm_data``) with a frame rendered after every action, and is stored in
    the layout of ``generate_metaworld`` (``expert_to_episode``), with ``meta["source"] = "policy-<mode>"``.

    Args:
        policy: a ``FlowMatchingPolicy``.
        decoder: maps its normalized actions to Meta-World actions (``envs.rollout.ActionDecoder``).
        task: Meta-World v3 task.
        seeds: initial-state seeds (on-line data: ``>= 2000``, see ``lightning_prophrl.envs.metaworld``).
        out: output directory (must be empty or absent).
        max_queries: policy queries per episode.
        mode: ``"sde"`` (the policy's exploration, as during RL) or ``"ode"``.
        size, camera, max_steps: as in ``generate_metaworld``.
        batch_size: episodes stepped together.
        noise_seed: seeds the sampler noise (with the batch index).
        noise_level: the SDE sampler's noise level (None: the policy's).
        stats_from: a directory whose ``stats.json`` replaces the one computed from these episodes, so that the new
            data is normalized exactly like the data the world model was trained on (its model directory).
        dataset: dataset name.
        progress: show a progress bar.
        excursion: rate of smooth random excursions in an episode (``ScriptedExpert.run``; 0 = none).
        excursion_share: fraction of the episodes that get excursions (drawn per episode with the seed).

    Returns:
        ``{"out", "episodes", "successes", "success_rate", "env_steps", "frames"}``.
    """
    from contextlib import closing

    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 2000:
        raise ValueError(f"policy rollout seeds must be >= 2000 (on-line range), got {seeds[:5]}...")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    summary: dict[str, Any] = {"out": out, "episodes": 0, "successes": 0, "env_steps": 0, "frames": 0}
    with (
        tqdm(total=len(seeds), desc="policy rollouts", disable=not progress) as bar,
        closing(_RecordingRollouts(task, 1, size, camera, max_steps)) as rollouts,
        ShardWriter(out, dataset, max_count=10) as writer,
    ):
        for b, start in enumerate(range(0, len(seeds), batch_size)):
            chunk = seeds[start : start + batch_size]
            env = rollouts.run(policy, decoder, [{"task": task, "seed": s} for s in chunk], max_queries, mode,
                               noise_level, noise_seed * 100003 + b)  # fmt: skip
            for n in range(len(chunk)):
                ep, episode = rollouts.episode(env, n, dataset)
                episode.meta["source"] = f"policy-{mode}"
                writer.write(episode)
                summary["episodes"] += 1
                summary["successes"] += int(ep.episode_success)
                summary["env_steps"] += len(ep.actions)
                summary["frames"] += len(episode)
                bar.update(1)
            bar.set_postfix(success=f"{summary['successes']}/{summary['episodes']}")
    return _finish_rollouts(summary, out, stats_from)


def join_branch(source: Episode, t: int, branch: Episode, key: str) -> Episode:
    """A real branch from frame ``t`` of ``source`` as one whole episode: the recorded frames, actions and per-frame
    arrays ``0 .. t - 1`` of ``source``, then ``branch`` (whose first frame is the state at ``t``, reached by replaying
    the recorded actions), so that a world model trained on it sees the branch with its true memory."""
    if not 0 <= t < len(source.frames):
        raise ValueError(f"branch start {t} outside episode {source.key} ({len(source.frames)} frames)")

    def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        return None if a is None or b is None else np.concatenate([a[:t], b])

    if not np.array_equal(source.action_mask, branch.action_mask):
        raise ValueError(f"branch {key} and its source {source.key} use different action dimensions")
    extras = {k: cat(v, branch.extras[k]) for k, v in source.extras.items()
              if isinstance(v, np.ndarray) and len(v) == len(source.frames) and k in branch.extras}  # fmt: skip
    steps = list(source.meta["success_steps"][:t]) + list(branch.meta["success_steps"])
    meta = {**branch.meta, "success_steps": steps, "success": any(steps), "num_actions": len(steps) - 1,
            "branch_of": source.key, "branch_start": int(t)}  # fmt: skip
    return Episode(key=key, frames=cat(source.frames, branch.frames), actions=cat(source.actions, branch.actions),
                   action_mask=branch.action_mask, meta=meta,
                   state=cat(source.state, branch.state), ee_poses=cat(source.ee_poses, branch.ee_poses),
                   extras=extras)  # fmt: skip


def generate_branch_rollouts(
    policy: Any,
    decoder: Any,
    prompts: Any,
    indices: Sequence[int],
    out: str,
    group_size: int,
    max_queries: int,
    size: int = 64,
    camera: str = "workspace",
    max_steps: int = 150,
    batch_size: int = 8,
    noise_seed: int = 0,
    noise_level: float | None = None,
    stats_from: str | None = None,
    dataset: str = "metaworld-branches",
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``group_size`` real SDE branches of a policy from each of the recorded states ``indices`` of a set-up
    ``PromptDataModule`` with branch prompts (world-model refresh data *with within-start contrast*: the same state and
    memory, different actions, different outcomes; what a group-relative reward from the world model must tell apart).

    Each branch replays the start's recorded prefix in the simulator (``MetaWorldEnv.reset``), runs ``max_queries``
    policy chunks from there with a frame after every action, and is stored joined to its source episode's recorded
    prefix (``join_branch``; ``meta["branch_of"]``, ``meta["branch_start"]``). A branch that reached the episode's
    end (a success, or ``max_steps`` with the prefix) also records its eventual outcome, ``meta["episode_success"]``,
    the label of a value head (``frame_labels(label="outcome")``); a branch cut earlier has none.

    Returns:
        ``{"out", "starts", "episodes", "successes", "success_rate", "mixed_starts", "env_steps" (with the replayed
        prefixes), "branch_steps", "frames"}``.
    """
    from contextlib import closing

    from lightning_prophrl.constants import PREFIX_ACTIONS
    from lightning_prophrl.datamodules.prompts import BRANCH

    indices = [int(i) for i in indices]
    starts = prompts.train_prompts
    if not indices or not starts or BRANCH not in starts[0]:
        raise ValueError("generate_branch_rollouts needs start indices into the branch prompts of a set-up "
                         "PromptDataModule(branch_every > 0)")  # fmt: skip
    if group_size < 1 or batch_size < 1:
        raise ValueError(f"`group_size` and `batch_size` must be >= 1, got {group_size}, {batch_size}")
    source_data, episodes = prompts.train_dataloader().dataset, prompts.branches.episodes
    task = episodes[starts[indices[0]][BRANCH][0]].meta["task"]
    summary: dict[str, Any] = {"out": out, "starts": 0, "episodes": 0, "successes": 0, "mixed_starts": 0,
                               "env_steps": 0, "branch_steps": 0, "frames": 0}  # fmt: skip
    with (
        tqdm(total=len(indices), desc="real branches", disable=not progress) as bar,
        closing(_RecordingRollouts(task, group_size, size, camera, max_steps)) as rollouts,
        ShardWriter(out, dataset, max_count=16) as writer,
    ):
        for b, first in enumerate(range(0, len(indices), batch_size)):
            idx = indices[first : first + batch_size]
            batch = [source_data[i] for i in idx]
            env = rollouts.run(policy, decoder, batch, max_queries, "sde", noise_level, noise_seed * 100003 + b)
            for p, i in enumerate(idx):
                e, t = starts[i][BRANCH]
                source, wins = episodes[e], 0
                for j in range(group_size):
                    ep, branch = rollouts.episode(env, p * group_size + j, dataset)
                    joined = join_branch(source, t, branch, f"{source.key}_t{t:03d}_g{j:02d}")
                    joined.meta["source"] = "policy-sde-branch"
                    if branch.success or len(batch[p][PREFIX_ACTIONS]) + len(ep.actions) >= max_steps:
                        joined.meta["episode_success"] = bool(branch.success)  # the branch ran to the episode's end
                    writer.write(joined)
                    wins += int(branch.success)
                    summary["episodes"] += 1
                    summary["branch_steps"] += len(ep.actions)
                    summary["env_steps"] += len(ep.actions) + len(batch[p][PREFIX_ACTIONS])
                    summary["frames"] += len(joined)
                summary["successes"] += wins
                summary["mixed_starts"] += int(0 < wins < group_size)
                summary["starts"] += 1
                bar.update(1)
            bar.set_postfix(success=f"{summary['successes']}/{summary['episodes']}")
    return _finish_rollouts(summary, out, stats_from)
