"""What a Meta-World episode leaves behind: :class:`EpisodeRecord` (a rollout of :class:`MetaWorldEnv`) and
:class:`ExpertEpisode` (a scripted-expert episode, the layout the shard writer turns into a demonstration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
