"""The real Meta-World v3 simulator as a ``BatchedEnv``, deterministic seeding, seed ranges and the scripted expert.

Seeding: ``env.reset(seed=s)`` does not reseed Meta-World v3 and the MT1 wrapper
draws one of 50 preset variants at every reset. ``make_seeded_env`` therefore builds the raw environment class, applies
one MT1 task with ``set_task`` (which makes the goal observable in ``obs[36:39]``, as the experts need) and then flips
two *private* attributes, ``_freeze_rand_vec = False`` and ``seeded_rand_vec = True``; ``reset_seeded(env, s)`` calls
``env.seed(s)`` then ``env.reset()``. The same seed then gives the same initial state on any instance. The attributes
were verified on metaworld 3.1.1 (pinned by the ``sim`` extra); a missing attribute raises, another version warns.

Stepping the raw environment bypasses Meta-World's time-limit and stop-at-success wrappers, so ``MetaWorldEnv``
implements both (the raw env raises past its own 500 steps, hence ``max_steps <= 500``).

Seed ranges (disjoint, so that evaluation never sees a training initial state): demonstrations ``[0, 1000)``,
evaluation ``[1000, 2000)``, RL prompts and any other on-line data ``[2000, 2**31)``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from lightning_prophrl.actions import unified_to_metaworld
from lightning_prophrl.constants import (
    INFO_EE_POSE,
    INFO_EXECUTED,
    INFO_STEPS,
    INFO_SUCCESS,
    INFO_SUCCESS_NOW,
    INSTRUCTION,
    OBS_IMAGE,
    OBS_STATE,
)
from lightning_prophrl.envs.base import BatchedEnvBase, Prompt, check_prompts, frames_to_image, pad_videos
from lightning_prophrl.envs.episodes import (  # noqa: F401 (re-exported)
    EpisodeRecord,
    ExpertEpisode,
)
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.envs.rendering import FastRenderer, FreeCamera
from lightning_prophrl.envs.seeds import (  # noqa: F401 (re-exported)
    SEED_RANGES,
    _seeds,
    demo_seeds,
    eval_seeds,
    train_seeds,
)
from lightning_prophrl.rl.nonfinite import NonFiniteError

StateMode = Literal["proprio", "full"]


PINNED_METAWORLD = "3.1.1"


RAW_MAX_STEPS = 500  # the raw environment's own path-length limit


def _metaworld():
    try:
        import metaworld
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("Meta-World is not installed: pip install 'lightning_prophrl[sim]'") from err
    return metaworld


@functools.cache
def _mt1_task(task: str) -> Any:
    """One MT1 task of ``task`` (cached: building the benchmark resets the env 50 times, about 1 s)."""
    metaworld = _metaworld()
    if task not in metaworld.MT1.ENV_NAMES:
        raise ValueError(f"unknown Meta-World v3 task {task!r}; valid: {sorted(metaworld.MT1.ENV_NAMES)}")
    version = importlib.metadata.version("metaworld")
    if version != PINNED_METAWORLD:
        warnings.warn(
            f"metaworld {version} != {PINNED_METAWORLD}: the seeding fix relies on private attributes", stacklevel=3
        )
    return metaworld.MT1(task, seed=0).train_tasks[0]


def make_seeded_env(task: str) -> Any:
    """A raw (unwrapped) Meta-World v3 environment of ``task`` whose ``reset_seeded`` is deterministic per seed."""
    task_obj = _mt1_task(task)  # validates the name
    env = _metaworld().env_dict.ALL_V3_ENVIRONMENTS[task]()
    env.set_task(task_obj)
    for name in ("_freeze_rand_vec", "seeded_rand_vec"):
        if not hasattr(env, name):
            raise RuntimeError(
                f"metaworld changed: {type(env).__name__} has no {name}; pin metaworld=={PINNED_METAWORLD}"
            )
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return env


def reset_seeded(env: Any, seed: int) -> np.ndarray:
    """Reset a ``make_seeded_env`` environment to the initial state of ``seed``; returns the 39-D observation."""
    env.seed(int(seed))
    obs, _ = env.reset()
    return obs


def ee_pose(env: Any) -> np.ndarray:
    """Hand pose ``(7,)``: xyz (``obs[:3]``) + quaternion wxyz of the ``hand`` body, world frame."""
    body = env.data.body("hand")
    return np.concatenate([body.xpos, body.xquat]).astype(np.float64)


def mocap_pose(env: Any) -> np.ndarray:
    """Commanded hand target ``(7,)``: the mocap body's xyz + quaternion wxyz (the hand is welded to it)."""
    return np.concatenate([env.data.mocap_pos[0], env.data.mocap_quat[0]]).astype(np.float64)


def proprio(obs: np.ndarray, state_mode: StateMode) -> np.ndarray:
    """Proprioception from the 39-D observation: ``"proprio"`` hand xyz + gripper opening ``(4,)``; ``"full"`` all 39
    (hand, gripper, object poses, the previous frame's copy of them, goal xyz), a privileged simulator state."""
    return obs[:4] if state_mode == "proprio" else obs


class _Slot:
    """One reusable simulator instance with its renderer."""

    def __init__(self, task: str, image_size: int | Sequence[int], camera: str | FreeCamera) -> None:
        self.task = task
        self.env = make_seeded_env(task)
        self.renderer = FastRenderer(self.env.model, self.env.data, image_size, camera)


class MetaWorldEnv(BatchedEnvBase):
    """``num_prompts x group_size`` real Meta-World v3 episodes stepped by action chunks (a ``BatchedEnv``).

    Rendering happens only at chunk boundaries (after ``reset`` and after each ``step`` call), which is what the
    policy observes and what ``video()`` keeps for reward models. Simulator instances are created once (about 0.2 s
    each) and reused across resets: ``num_envs`` per task, built for ``tasks[0]`` in ``__init__`` and lazily for other
    tasks on the first ``reset`` that needs them.

    Args:
        tasks: one Meta-World v3 task name or several; prompts may only use these tasks.
        num_prompts: ``P``, prompts per ``reset``.
        group_size: ``G``, rollouts per prompt, all from the prompt's initial state (same seed).
        image_size: rendered size, an int (square) or ``(height, width)``.
        max_steps: step cap per episode (the calibration uses 150; at most Meta-World's own 500).
        exec_horizon: actions of each chunk to execute (``None``: the whole chunk); the rest are dropped.
        camera: ``"workspace"`` (default, zoomed on the table) or ``"overview"`` (whole arm), a ``FreeCamera``, or a
            model camera name; see ``lightning_prophrl.envs.rendering``.
        stop_at_success: end an episode at its first successful step.
        state_mode: ``OBS_STATE`` content, ``"proprio"`` (hand xyz + gripper opening, 4-D, what a real robot has) or
            ``"full"`` (Meta-World's 39-D observation with object poses and goal: privileged).
        record_steps: also render a frame and record the proprio state and the commanded pose after *every* action
            (one render per step instead of per chunk), so the episodes can be written as demonstration shards
            (``EpisodeRecord.to_expert_episode``).
    """

    action_dim = 4

    def __init__(
        self,
        tasks: str | Sequence[str] = "pick-place-v3",
        num_prompts: int = 1,
        group_size: int = 1,
        image_size: int | Sequence[int] = 64,
        max_steps: int = 150,
        exec_horizon: int | None = None,
        camera: str | FreeCamera = "workspace",
        stop_at_success: bool = True,
        state_mode: StateMode = "proprio",
        record_steps: bool = False,
    ) -> None:
        # 1. Validate the arguments.
        self.tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        if not self.tasks:
            raise ValueError("tasks must name at least one Meta-World task")
        if num_prompts < 1 or group_size < 1:
            raise ValueError(f"num_prompts and group_size must be >= 1, got {num_prompts} and {group_size}")
        if not 1 <= max_steps <= RAW_MAX_STEPS:
            raise ValueError(f"max_steps must lie in [1, {RAW_MAX_STEPS}] (Meta-World's own limit), got {max_steps}")
        if exec_horizon is not None and exec_horizon < 1:
            raise ValueError(f"exec_horizon must be >= 1 or None, got {exec_horizon}")
        if state_mode not in ("proprio", "full"):
            raise ValueError(f"state_mode must be 'proprio' or 'full', got {state_mode!r}")
        self.num_prompts, self.group_size, self.num_envs = num_prompts, group_size, num_prompts * group_size
        self.image_size, self.camera, self.max_steps = image_size, camera, max_steps
        self.exec_horizon, self.stop_at_success, self.state_mode = exec_horizon, stop_at_success, state_mode
        self.record_steps = record_steps
        self.state_dim = 4 if state_mode == "proprio" else 39

        # 2. Simulator pool: num_envs instances per task, the first task built now.
        self._pool: dict[str, list[_Slot]] = {}
        for task in self.tasks:
            _mt1_task(task)  # fail early on an unknown task name
        self._grow_pool(self.tasks[0], self.num_envs)
        first = self._pool[self.tasks[0]][0].renderer
        self.camera_k, self.camera_extr = first.intrinsics(), first.extrinsics()
        sim = self._pool[self.tasks[0]][0].env
        self.fps = 1.0 / (sim.model.opt.timestep * sim.frame_skip)  # simulator steps per second

        # 3. Episode state (filled by reset).
        self._slots: list[_Slot] = []
        self._episodes: list[EpisodeRecord] = []
        self._obs = np.zeros((self.num_envs, 39))
        self._image = torch.zeros(0)
        self._done = np.ones(self.num_envs, dtype=bool)
        self._success = np.zeros(self.num_envs, dtype=bool)
        self._success_now = np.zeros(self.num_envs, dtype=bool)
        self._steps = np.zeros(self.num_envs, dtype=np.int64)

    def _grow_pool(self, task: str, n: int) -> list[_Slot]:
        slots = self._pool.setdefault(task, [])
        while len(slots) < n:
            slots.append(_Slot(task, self.image_size, self.camera))
        return slots

    def reset(self, prompts: Sequence[Prompt | Mapping[str, Any]]) -> dict[str, Any]:
        """Start one group of ``group_size`` identical initial states per prompt (env ``n`` runs prompt ``n // G``).

        Args:
            prompts: ``num_prompts`` ``Prompt``s, or prompt dicts of ``PromptDataModule`` whose ``TASK_ID`` indexes
                ``tasks``; instruction ``None`` uses ``instruction_for(task)``; ``initial_frame``/``initial_state``
                are ignored (the simulator renders its own). A prompt's ``prefix_actions`` (unified, as recorded
                in the shards) are replayed after the seeded reset: the simulator is deterministic, so the episode
                then starts at the recorded mid-episode state of a branch prompt; the replayed steps count towards
                ``max_steps``, ``INFO_STEPS`` and the record's ``frame_steps`` (time since the seeded reset), but
                their frames and actions are not in the video or the episode record.

        Returns:
            The observation dict: ``OBS_IMAGE`` ``(N, 3, H, W)``, ``OBS_STATE`` ``(N, S)``, ``INSTRUCTION``.
        """
        prompts = check_prompts(prompts, self.num_prompts, self.tasks)
        for i, p in enumerate(prompts):
            if p.task not in self.tasks:
                raise ValueError(f"prompts[{i}].task={p.task!r} is not one of this env's tasks {self.tasks}")
            if p.seed < 0:
                raise ValueError(f"prompts[{i}].seed={p.seed}: a simulator prompt needs a seed >= 0")
        expanded = [p for p in prompts for _ in range(self.group_size)]
        used: dict[str, int] = {}
        self._slots, self._episodes = [], []
        frames = []
        for n, p in enumerate(expanded):
            slot = self._grow_pool(p.task, used.get(p.task, 0) + 1)[used.get(p.task, 0)]
            used[p.task] = used.get(p.task, 0) + 1
            self._obs[n] = self._checked_obs(reset_seeded(slot.env, p.seed), n, p, 0)
            prefix_steps, prefix_success = self._replay_prefix(n, slot.env, p)
            frame = slot.renderer.render()
            record = EpisodeRecord(
                p.task, p.seed, p.instruction or instruction_for(p.task), slot.env._target_pos.copy()
            )
            record.frames.append(frame)
            record.frame_steps.append(prefix_steps)
            record.ee_poses.append(ee_pose(slot.env))
            record.object_pos.append(np.array(slot.env._get_pos_objects(), dtype=np.float64))
            if self.record_steps:
                record.step_frames.append(frame)
                record.states.append(proprio(self._obs[n], self.state_mode).astype(np.float32))
                record.target_poses.append(mocap_pose(slot.env))
            self._slots.append(slot)
            self._episodes.append(record)
            frames.append(frame)
            self._steps[n], self._success[n] = prefix_steps, prefix_success
            self._success_now[n] = False
            self._done[n] = prefix_steps >= self.max_steps or (prefix_success and self.stop_at_success)
        self._image = frames_to_image(np.stack(frames))
        return self._observation()

    def _replay_prefix(self, n: int, env: Any, prompt: Prompt) -> tuple[int, bool]:
        """Replay ``prompt.prefix_actions`` in ``env`` (just reset); returns ``(steps, success reached)``."""
        if prompt.prefix_actions is None or len(prompt.prefix_actions) == 0:
            return 0, False
        prefix = prompt.prefix_actions
        prefix = prefix.detach().cpu().numpy() if isinstance(prefix, torch.Tensor) else np.asarray(prefix)
        if len(prefix) > self.max_steps:
            raise ValueError(f"prompt {prompt.task!r} seed {prompt.seed}: {len(prefix)} prefix_actions exceed "
                             f"max_steps={self.max_steps}")  # fmt: skip
        success = False
        for t, action in enumerate(np.clip(unified_to_metaworld(prefix).astype(np.float64), -1.0, 1.0)):
            obs, _, _, _, step_info = env.step(action)
            self._obs[n] = self._checked_obs(obs, n, prompt, t + 1)
            success |= bool(step_info["success"])
        return len(prefix), success

    @staticmethod
    def _checked_obs(obs: np.ndarray, n: int, prompt: Any, step: int) -> np.ndarray:
        """``obs`` of environment ``n`` after ``step`` actions, or a ``NonFiniteError`` naming env, prompt, step and
        element when the simulator returned a NaN or inf (an unstable simulation)."""
        bad = ~np.isfinite(obs)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise NonFiniteError(f"non-finite simulator observation for env {n} (task {prompt.task!r}, seed "
                                 f"{prompt.seed}) after step {step}, element {j}: {obs.flat[j]}")  # fmt: skip
        return obs

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
        """Execute one chunk of Meta-World actions for every environment that is not done.

        Args:
            actions: ``(N, h, 4)`` un-normalised Meta-World actions (xyz delta in units of 1 cm, gripper effort, +1
                closes), clipped to ``[-1, 1]``; only the first ``exec_horizon`` of each chunk are executed.

        Returns:
            ``(obs, done, info)``: the observation after the chunk, ``done`` ``(N,)`` bool and ``info`` with
            ``INFO_SUCCESS``, ``INFO_SUCCESS_NOW``, ``INFO_STEPS``, ``INFO_EXECUTED`` and ``INFO_EE_POSE``.

        Raises:
            NonFiniteError: a non-finite action of an environment that is not done (nothing is executed; a
                ``ValueError``), or a non-finite observation returned by the simulator.
        """
        if not self._slots:
            raise RuntimeError("call reset(prompts) before step(actions)")
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if a.ndim != 3 or a.shape[0] != self.num_envs or a.shape[2] != self.action_dim or a.shape[1] < 1:
            raise ValueError(f"actions must have shape (num_envs={self.num_envs}, h, 4), got {tuple(a.shape)}")
        if self.exec_horizon is not None:
            if a.shape[1] < self.exec_horizon:
                raise ValueError(f"actions has chunk length {a.shape[1]} < exec_horizon={self.exec_horizon}")
            a = a[:, : self.exec_horizon]
        bad = ~np.isfinite(a) & ~self._done[:, None, None]
        if bad.any():  # MuJoCo would silently reset the simulator and the episode would go on
            n, t, j = (int(i) for i in np.argwhere(bad)[0])
            raise NonFiniteError(f"non-finite action for env {n} at chunk step {t}, dimension {j}: {a[n, t, j]} "
                                 "(check the policy's outputs before stepping)")  # fmt: skip
        a = np.clip(a.astype(np.float64), -1.0, 1.0)
        executed = np.zeros(self.num_envs, dtype=np.int64)
        for n in np.flatnonzero(~self._done):
            executed[n] = self._run_chunk(n, a[n])
            frame = self._episodes[n].step_frames[-1] if self.record_steps else self._slots[n].renderer.render()
            self._episodes[n].frames.append(frame)
            self._episodes[n].frame_steps.append(int(self._steps[n]))
            self._image[n] = frames_to_image(frame)
        info = {
            INFO_SUCCESS: torch.from_numpy(self._success.copy()),
            INFO_SUCCESS_NOW: torch.from_numpy(self._success_now.copy()),
            INFO_STEPS: torch.from_numpy(self._steps.copy()),
            INFO_EXECUTED: torch.from_numpy(executed),
            INFO_EE_POSE: torch.from_numpy(np.stack([e.ee_poses[-1] for e in self._episodes])).float(),
        }
        return self._observation(), torch.from_numpy(self._done.copy()), info

    def _run_chunk(self, n: int, chunk: np.ndarray) -> int:
        """Step environment ``n`` through ``chunk`` ``(h, 4)`` until done; returns the number of actions executed."""
        env, record = self._slots[n].env, self._episodes[n]
        for t, action in enumerate(chunk):
            obs, _, _, _, step_info = env.step(action)
            success = bool(step_info["success"])
            self._obs[n], self._steps[n] = self._checked_obs(obs, n, record, self._steps[n] + 1), self._steps[n] + 1
            self._success_now[n] = success
            self._success[n] |= success
            record.actions.append(action.copy())
            record.success.append(success)
            record.ee_poses.append(ee_pose(env))
            record.object_pos.append(np.array(env._get_pos_objects(), dtype=np.float64))
            if self.record_steps:
                record.step_frames.append(self._slots[n].renderer.render())
                record.states.append(proprio(obs, self.state_mode).astype(np.float32))
                record.target_poses.append(mocap_pose(env))
            if (success and self.stop_at_success) or self._steps[n] >= self.max_steps:
                self._done[n] = True
                return t + 1
        return len(chunk)

    def _observation(self) -> dict[str, Any]:
        state = np.stack([proprio(o, self.state_mode) for o in self._obs]).astype(np.float32)
        return {
            OBS_IMAGE: self._image.clone(),
            OBS_STATE: torch.from_numpy(state),
            INSTRUCTION: [e.instruction for e in self._episodes],
        }

    def video(self, uint8: bool = False) -> torch.Tensor:
        """Chunk-boundary videos since ``reset``, ``(N, T, 3, H, W)``: float32 in ``[-1, 1]``, or uint8 if asked.

        Shorter episodes are padded with their last frame (``video_lengths()`` gives the real lengths).
        """
        frames, _ = pad_videos([np.stack(e.frames) for e in self._episodes])
        if uint8:
            return torch.from_numpy(frames).movedim(-1, -3).contiguous()
        return frames_to_image(frames)

    def video_lengths(self) -> torch.Tensor:
        """Number of real frames per environment in ``video()``, ``(N,)`` long."""
        return torch.tensor([len(e.frames) for e in self._episodes], dtype=torch.long)

    def episodes(self) -> list[EpisodeRecord]:
        """Per-environment records since ``reset`` (actions, hand poses, object positions, success per step)."""
        return self._episodes

    def close(self) -> None:
        """Free every renderer's GL context."""
        for slots in self._pool.values():
            for slot in slots:
                slot.renderer.close()
        self._pool.clear()
