"""Meta-World's scripted experts as data sources: :class:`ScriptedExpert` runs a task's expert (or another task's, or
smooth random motions) with per-episode action noise and occasional excursions, recording frames, states, poses and
success; :func:`run_expert_episode` is one episode of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_prophrl.envs.episodes import ExpertEpisode
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.envs.metaworld import (
    RAW_MAX_STEPS,
    StateMode,
    _Slot,
    ee_pose,
    mocap_pose,
    proprio,
    reset_seeded,
)
from lightning_prophrl.envs.rendering import FreeCamera


class _Excursions:
    """Smooth random excursions of :meth:`ScriptedExpert.run`: ``action()`` is the excursion's action, or None
    while the expert is in control."""

    def __init__(self, rate: float, rng: np.random.Generator, always: bool = False) -> None:
        self.rate, self.rng, self.left, self.current, self.always = rate, rng, 0, np.zeros(4), always

    def action(self) -> np.ndarray | None:
        if self.left == 0 and (self.always or self.rng.random() < self.rate / 16):
            direction = self.rng.standard_normal(3)
            speed = self.rng.uniform(0.3, 1.0)
            grip = self.rng.choice([-1.0, 1.0])
            self.current = np.concatenate([speed * direction / np.linalg.norm(direction), [grip]])
            self.left = int(self.rng.integers(8, 25))
        if self.left == 0:
            return None
        self.left -= 1
        return self.current.copy()


class ScriptedExpert:
    """Meta-World's scripted expert (``metaworld.policies.ENV_POLICY_MAP``) with Gaussian action noise, reusing one
    simulator and renderer across episodes (for writing demonstration shards).

    Args:
        task: Meta-World v3 task name.
        image_size: rendered size, an int or ``(height, width)``.
        camera: camera preset / ``FreeCamera`` / model camera name, as in ``MetaWorldEnv``.
        max_steps: step cap per episode (at most 500).
        stop_at_success: end the episode at its first successful step.
        state_mode: ``"proprio"`` (4-D) or ``"full"`` (39-D), as in ``MetaWorldEnv``.
        render: render a frame before every action (off: no frames, for fast replays and statistics).
        driver: who chooses the actions: None (the task's own expert), another task's name (that task's expert acting
            on this task's observations: motions unlike the task's data) or ``"random"`` (back-to-back smooth random
            excursions, see ``run``; the expert never acts).
    """

    def __init__(
        self,
        task: str,
        image_size: int | Sequence[int] = 64,
        camera: str | FreeCamera = "workspace",
        max_steps: int = 150,
        stop_at_success: bool = True,
        state_mode: StateMode = "proprio",
        render: bool = True,
        driver: str | None = None,
    ) -> None:
        if not 1 <= max_steps <= RAW_MAX_STEPS:
            raise ValueError(f"max_steps must lie in [1, {RAW_MAX_STEPS}], got {max_steps}")
        from metaworld.policies import ENV_POLICY_MAP

        if driver not in (None, "random") and driver not in ENV_POLICY_MAP:
            raise ValueError(f"driver must be None, 'random' or a Meta-World v3 task name, got {driver!r}")
        self.task, self.max_steps, self.stop_at_success = task, max_steps, stop_at_success
        self.state_mode, self.render, self.driver = state_mode, render, driver
        self.slot = _Slot(task, image_size, camera)
        self.policy = ENV_POLICY_MAP[task if driver in (None, "random") else driver]()

    def run(
        self, seed: int, sigma: float = 0.0, noise_seed: int | None = None, excursion: float = 0.0
    ) -> ExpertEpisode:
        """One episode from the initial state of ``seed``.

        Args:
            seed: initial-state seed (see ``demo_seeds``).
            sigma: standard deviation of the Gaussian noise added to every expert action before clipping.
            noise_seed: seed of the noise generator ``np.random.default_rng``; ``None`` uses ``seed``, so an episode
                is a deterministic function of ``(task, seed, sigma, excursion)``.
            excursion: rate of smooth random excursions (0 = none): at each step outside one, an excursion of 8-24
                steps starts with probability ``excursion / 16``; during it the expert is ignored and the arm moves
                along one random direction at a random speed (plus the Gaussian noise) with a random gripper
                command. They show a world model motions and failures that the expert never makes (the actions an
                exploring policy will try), then the expert recovers from wherever the arm ended up.
        """
        if sigma < 0 or not 0.0 <= excursion <= 1.0:
            raise ValueError(f"sigma must be >= 0 and excursion in [0, 1], got {sigma}, {excursion}")
        env, renderer = self.slot.env, self.slot.renderer
        rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
        random_only = self.driver == "random"
        detour = _Excursions(excursion, np.random.default_rng([seed if noise_seed is None else noise_seed, 7919]),
                             always=random_only)  # fmt: skip
        obs = reset_seeded(env, seed)
        frames, actions, states, success = [], [], [], []
        poses, objects = [ee_pose(env)], [np.array(env._get_pos_objects(), dtype=np.float64)]
        targets = [mocap_pose(env)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")  # experts' own clipping note
            for _ in range(self.max_steps):
                if self.render:
                    frames.append(renderer.render())
                states.append(proprio(obs, self.state_mode).astype(np.float32))
                planned = detour.action() if excursion > 0 or random_only else None
                base = self.policy.get_action(obs) if planned is None else planned
                action = np.clip(base + sigma * rng.standard_normal(4), -1.0, 1.0)
                obs, _, _, _, step_info = env.step(action)  # Meta-World's own per-step dict, not a BatchedEnv info
                actions.append(action)
                success.append(bool(step_info["success"]))
                poses.append(ee_pose(env))
                targets.append(mocap_pose(env))
                objects.append(np.array(env._get_pos_objects(), dtype=np.float64))
                if success[-1] and self.stop_at_success:
                    break
        h, w = renderer.height, renderer.width
        return ExpertEpisode(
            task=self.task,
            seed=int(seed),
            sigma=float(sigma),
            instruction=instruction_for(self.task),
            frames=np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8),
            final_frame=renderer.render() if self.render else None,
            actions=np.stack(actions).astype(np.float32),
            states=np.stack(states),
            ee_poses=np.stack(poses),
            target_poses=np.stack(targets),
            object_pos=np.stack(objects),
            goal=env._target_pos.copy(),
            success=np.array(success, dtype=bool),
            camera_k=renderer.intrinsics(),
            camera_extr=renderer.extrinsics(),
        )

    def close(self) -> None:
        """Free the renderer's GL context."""
        self.slot.renderer.close()


def run_expert_episode(task: str, seed: int, sigma: float = 0.0, **kwargs: Any) -> ExpertEpisode:
    """One scripted-expert episode in a fresh simulator (``kwargs`` go to ``ScriptedExpert``); for many episodes keep
    a ``ScriptedExpert`` and call ``run`` (building a simulator costs about 0.2 s)."""
    expert = ScriptedExpert(task, **kwargs)
    try:
        return expert.run(seed, sigma)
    finally:
        expert.close()
