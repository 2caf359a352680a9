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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lightning_prophrl.actions import unified_to_metaworld
from lightning_prophrl.constants import INSTRUCTION, OBS_IMAGE, OBS_STATE
from lightning_prophrl.envs.base import (
    INFO_EE_POSE,
    INFO_EXECUTED,
    INFO_STEPS,
    INFO_SUCCESS,
    INFO_SUCCESS_NOW,
    BatchedEnvBase,
    Prompt,
    check_prompts,
    frames_to_image,
    pad_videos,
)
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.envs.rendering import FastRenderer, FreeCamera
from lightning_prophrl.rl.nonfinite import NonFiniteError

StateMode = Literal["proprio", "full"]
SEED_RANGES: dict[str, tuple[int, int]] = {"demo": (0, 1000), "eval": (1000, 2000), "train": (2000, 2**31)}
PINNED_METAWORLD = "3.1.1"
RAW_MAX_STEPS = 500  # the raw environment's own path-length limit


def _seeds(kind: str, n: int, start: int) -> list[int]:
    lo, hi = SEED_RANGES[kind]
    if n < 0 or not lo <= start or start + n > hi:
        raise ValueError(f"{kind} seeds [start={start}, start+n={start + n}) must lie inside [{lo}, {hi})")
    return list(range(start, start + n))


def demo_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` consecutive demonstration seeds from ``start``, inside ``[0, 1000)``."""
    return _seeds("demo", n, start)


def eval_seeds(n: int, start: int = 1000) -> list[int]:
    """``n`` consecutive evaluation seeds from ``start``, inside ``[1000, 2000)``."""
    return _seeds("eval", n, start)


def train_seeds(n: int, start: int = 2000) -> list[int]:
    """``n`` consecutive RL / on-line data seeds from ``start``, inside ``[2000, 2**31)``."""
    return _seeds("train", n, start)


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


@dataclass
class EpisodeRecord:
    """What one environment did since ``reset`` (``T`` executed steps, ``C`` rendered frames).

    Attributes:
        frames: ``C`` frames ``(H, W, 3)`` uint8, the first after reset, then one after each executed chunk.
        frame_steps: step index of each frame (0 = initial state, ``t`` = after ``t`` actions).
        actions: ``T`` executed (clipped) actions ``(4,)``.
        ee_poses: ``T + 1`` hand poses ``(7,)``, before the first action and after each one.
        object_pos: ``T + 1`` object positions ``(3 k,)`` (``_get_pos_objects``), same timing.
        success: ``T`` success flags, after each action.
        step_frames, states, target_poses: only with ``MetaWorldEnv(record_steps=True)``: ``T + 1`` frames, proprio
            states and commanded (mocap) poses, at reset and after each action (``to_expert_episode`` needs them).
    """

    task: str
    seed: int
    instruction: str
    goal: np.ndarray
    frames: list[np.ndarray] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    ee_poses: list[np.ndarray] = field(default_factory=list)
    object_pos: list[np.ndarray] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    step_frames: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    target_poses: list[np.ndarray] = field(default_factory=list)

    def to_expert_episode(self, camera_k: np.ndarray, camera_extr: np.ndarray, sigma: float = 0.0) -> ExpertEpisode:
        """This episode in the layout of a scripted-expert episode, so that ``expert_to_episode`` writes it as a
        demonstration shard (e.g. a policy's real rollouts as world-model refresh data; ``sigma`` is recorded as the
        episode's noise level)."""
        if len(self.step_frames) != len(self.actions) + 1 or not self.actions:
            raise ValueError(
                f"episode {self.task} seed {self.seed}: {len(self.step_frames)} per-step frames for "
                f"{len(self.actions)} actions; record it with MetaWorldEnv(record_steps=True) and step it at least once"
            )
        return ExpertEpisode(
            task=self.task, seed=self.seed, sigma=float(sigma), instruction=self.instruction,
            frames=np.stack(self.step_frames[:-1]), final_frame=self.step_frames[-1],
            actions=np.stack(self.actions).astype(np.float32), states=np.stack(self.states[:-1]),
            ee_poses=np.stack(self.ee_poses), target_poses=np.stack(self.target_poses),
            object_pos=np.stack(self.object_pos), goal=self.goal, success=np.array(self.success, dtype=bool),
            camera_k=camera_k, camera_extr=camera_extr,
        )  # fmt: skip


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


@dataclass
class ExpertEpisode:
    """One scripted-expert episode (``T`` steps). ``frames[t]`` and ``states[t]`` are observed *before*
    ``actions[t]``, so ``len(frames) == len(actions)``; ``final_frame`` is the observation after the last action.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 (``(0, H, W, 3)`` when rendering was off).
        final_frame: ``(H, W, 3)`` uint8 after the last action, ``None`` when rendering was off.
        actions: ``(T, 4)`` float32, the executed actions (expert + noise, clipped to ``[-1, 1]``).
        states: ``(T, S)`` float32 proprioception before each action (``state_mode`` of the runner).
        ee_poses: ``(T + 1, 7)`` hand xyz + quaternion wxyz, before the first action and after each one.
        target_poses: ``(T + 1, 7)`` commanded hand target (the mocap body: xyz + quaternion wxyz), same timing; the
            hand follows it with a lag (centimetres when it pushes against the table or an object). It is exactly the
            reset target plus the clipped, bounded sum of the commanded deltas, so an imagined rollout can reproduce
            it from actions alone (``lightning_prophrl.envs.poses``).
        object_pos: ``(T + 1, 3 k)`` object position(s), same timing.
        goal: ``(3,)`` goal position.
        success: ``(T,)`` bool, ``info["success"]`` after each action.
        camera_k: ``(3, 3)`` intrinsics; camera_extr: ``(4, 4)`` world -> camera (OpenCV).
    """

    task: str
    seed: int
    sigma: float
    instruction: str
    frames: np.ndarray
    final_frame: np.ndarray | None
    actions: np.ndarray
    states: np.ndarray
    ee_poses: np.ndarray
    target_poses: np.ndarray
    object_pos: np.ndarray
    goal: np.ndarray
    success: np.ndarray
    camera_k: np.ndarray
    camera_extr: np.ndarray

    @property
    def episode_success(self) -> bool:
        """Whether ``info["success"]`` held at any step."""
        return bool(self.success.any())


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
                obs, _, _, _, info = env.step(action)
                actions.append(action)
                success.append(bool(info["success"]))
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
