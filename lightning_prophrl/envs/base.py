"""The batched environment contract shared by the real simulators and the world-model environment.

``FAGRPOModule`` rolls out a policy in any ``BatchedEnv``: the real Meta-World simulator (``MetaWorldEnv``), or a
learned world model that imagines the frames (a ``WorldModelEnv`` implements the same protocol). The contract:

* **Layout.** ``reset`` takes ``P = num_prompts`` prompts and repeats each one ``G = group_size`` times, so there are
  ``N = num_envs = P * G`` environments and environment ``n`` runs prompt ``n // G`` (the group of prompt ``p`` is the
  contiguous slice ``[p * G, (p + 1) * G)``). Every member of a group starts from the same initial state.
* **Observations** (``reset`` and ``step`` return the same dict, keys from ``lightning_prophrl.constants``):
  ``OBS_IMAGE`` ``(N, 3, H, W)`` float32 in ``[-1, 1]``; ``OBS_STATE`` ``(N, S)`` float32 proprioception (``S`` is the
  environment's ``state_dim``); ``INSTRUCTION`` ``list[str]`` of length ``N``. All tensors are on the CPU.
* **Actions.** ``step(actions)`` takes one chunk ``(N, h, action_dim)`` in the environment's own action convention
  (for ``MetaWorldEnv``: un-normalised 4-D Meta-World actions; converting from the policy's normalised unified space
  is the caller's job) and executes it for every environment that is not done.
* **Termination.** ``done`` ``(N,)`` bool is True once an environment stopped (success with stop-at-success, or the
  step cap). Done environments ignore further actions and keep returning their last observation.
* **Info** (keys ``INFO_*`` from ``lightning_prophrl.constants``): ``INFO_SUCCESS`` ``(N,)`` bool, success reached
  at any step of the episode so far (the outcome a reward oracle reads); ``INFO_STEPS`` ``(N,)`` long, environment
  steps executed since ``reset``. Implementations may add keys (defined there too).
* **Video.** ``video()`` ``(N, T, 3, H, W)`` float32 in ``[-1, 1]``: the frame after ``reset`` then one frame per
  ``step`` call that executed at least one action. Episodes that ended earlier are padded by repeating their last
  frame; ``video_lengths()`` ``(N,)`` gives the number of real frames. This is what a video reward model judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lightning_prophrl.constants import (
    ACTION_DIM,
    COND_FRAME,
    COND_TARGET,
    HISTORY,
    HISTORY_MASK,
    INFO_EE_POSE,  # noqa: F401 (re-exported: the info keys were defined here before constants.py)
    INFO_EXECUTED,  # noqa: F401
    INFO_STEPS,  # noqa: F401
    INFO_SUCCESS,  # noqa: F401
    INFO_SUCCESS_NOW,  # noqa: F401
    INSTRUCTION,
    OBS_STATE,
    PREFIX_ACTIONS,
    SEED,
    TASK_ID,
)


@dataclass
class Prompt:
    """One RL prompt: a task, the seed of its initial state and the instruction given to the policy.

    Args:
        task: task name (for Meta-World, an environment name such as ``"pick-place-v3"``).
        seed: seed of the initial state; in a simulator the same seed gives the same initial state (-1: unknown, for
            prompts taken from recorded episodes).
        instruction: language instruction; ``None`` lets the environment use its default for ``task``.
        initial_frame: ``(3, H, W)`` float in ``[-1, 1]``, the first frame for environments that cannot render one
            (a world model); simulators ignore it and render their own.
        initial_state: ``(S,)`` proprioception matching ``initial_frame``, for the same environments.
        history_frames: ``(T_h, 3, H, W)`` past frames before ``initial_frame`` (oldest first), for a world model
            started in the middle of a recorded episode (a branch); simulators ignore it.
        history_mask: ``(T_h,)`` bool, False where ``history_frames`` is padding (the episode had no such frame).
        initial_target: ``(3,)`` commanded end-effector target at ``initial_frame`` (a branch's action-frame stream
            continues from it instead of from the reset rule).
        prefix_actions: ``(T, 14)`` unified actions recorded from the seeded initial state up to ``initial_frame``;
            a deterministic simulator replays them after its seeded reset, so a real rollout starts at the same
            mid-episode state as an imagined branch (world models ignore them: they start from the frame).
    """

    task: str
    seed: int
    instruction: str | None = None
    initial_frame: torch.Tensor | None = None
    initial_state: torch.Tensor | None = None
    history_frames: torch.Tensor | None = None
    history_mask: torch.Tensor | None = None
    initial_target: torch.Tensor | None = None
    prefix_actions: torch.Tensor | np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"Prompt.task must be a non-empty string, got {self.task!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < -1:
            raise ValueError(f"Prompt.seed must be an int >= -1, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.history_frames is not None:
            n = self.history_frames.shape[0]
            if self.history_frames.ndim != 4 or (self.history_mask is not None and self.history_mask.shape != (n,)):
                mask = None if self.history_mask is None else tuple(self.history_mask.shape)
                raise ValueError(f"Prompt.history_frames must be (T_h, 3, H, W) with history_mask (T_h,), got "
                                 f"{tuple(self.history_frames.shape)} and {mask}")  # fmt: skip
        shape = None if self.prefix_actions is None else tuple(np.shape(self.prefix_actions))
        if shape is not None and (len(shape) != 2 or shape[1] != ACTION_DIM):
            raise ValueError(f"Prompt.prefix_actions must be (T, {ACTION_DIM}) unified actions, got {shape}")


@runtime_checkable
class BatchedEnv(Protocol):
    """A batch of ``num_envs = num_prompts * group_size`` environments stepped by action chunks (see module doc)."""

    num_envs: int
    num_prompts: int
    group_size: int
    action_dim: int
    state_dim: int

    def reset(self, prompts: Sequence[Prompt | Mapping[str, Any]]) -> dict[str, Any]:
        """Start ``num_prompts`` groups from ``Prompt``s or prompt dicts (``as_prompt``); returns the observation."""
        ...

    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
        """Execute one chunk ``(N, h, action_dim)``; returns ``(obs, done (N,) bool, info)``."""
        ...

    def video(self) -> torch.Tensor:
        """Episode videos since ``reset``, ``(N, T, 3, H, W)`` float32 in ``[-1, 1]``, padded with the last frame."""
        ...

    def video_lengths(self) -> torch.Tensor:
        """Number of real frames per environment in ``video()``, ``(N,)`` long."""
        ...


class BatchedEnvBase:
    """Nominal base class of the library's environments (``MetaWorldEnv``, ``WorldModelEnv``).

    ``BatchedEnv`` is the structural contract; this base exists so that configuration systems (LightningCLI /
    jsonargparse) can name an environment with ``class_path`` and override its ``init_args`` from the command line.
    """

    num_envs: int
    num_prompts: int
    group_size: int


def as_prompt(prompt: Prompt | Mapping[str, Any], tasks: Sequence[str] = ()) -> Prompt:
    """A ``Prompt`` from a ``Prompt`` or from one prompt dict of ``PromptDataModule`` (keys ``SEED``, ``INSTRUCTION``,
    optional ``COND_FRAME``, ``OBS_STATE``, ``HISTORY`` / ``HISTORY_MASK``, ``COND_TARGET`` and ``PREFIX_ACTIONS``,
    and ``"task"`` or ``TASK_ID``, an index into ``tasks``)."""
    if isinstance(prompt, Prompt):
        return prompt
    if not isinstance(prompt, Mapping):
        raise TypeError(f"a prompt must be a Prompt or a dict, got {type(prompt).__name__}")
    if SEED not in prompt:
        raise KeyError(f"prompt dict needs key {SEED!r}, got keys {sorted(prompt)}")
    if "task" in prompt:
        task = str(prompt["task"])
    elif TASK_ID in prompt and 0 <= int(prompt[TASK_ID]) < len(tasks):
        task = tasks[int(prompt[TASK_ID])]
    else:
        raise KeyError(f"prompt dict needs 'task' or {TASK_ID!r} in [0, {len(tasks)}) (index into {list(tasks)})")
    instruction = prompt.get(INSTRUCTION)
    return Prompt(task, int(prompt[SEED]), None if instruction is None else str(instruction), prompt.get(COND_FRAME),
                  prompt.get(OBS_STATE), prompt.get(HISTORY), prompt.get(HISTORY_MASK),
                  prompt.get(COND_TARGET), prompt.get(PREFIX_ACTIONS))  # fmt: skip


def check_prompts(
    prompts: Sequence[Prompt | Mapping[str, Any]], num_prompts: int, tasks: Sequence[str] = ()
) -> list[Prompt]:
    """Validate the prompts passed to ``reset``: exactly ``num_prompts`` ``Prompt`` objects or prompt dicts
    (converted by ``as_prompt`` with ``tasks``)."""
    prompts = list(prompts)
    if len(prompts) != num_prompts:
        raise ValueError(f"reset(prompts) expects num_prompts={num_prompts} prompts, got {len(prompts)}")
    out = []
    for i, p in enumerate(prompts):
        try:
            out.append(as_prompt(p, tasks))
        except (KeyError, TypeError, ValueError) as err:
            raise type(err)(f"prompts[{i}]: {err}") from None
    return out


def frames_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``(..., H, W, 3)`` -> float32 images ``(..., 3, H, W)`` in ``[-1, 1]``."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32)
    return (x / 127.5 - 1.0).movedim(-1, -3).contiguous()


def pad_videos(videos: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-environment frame lists of different lengths, padding each with its last frame.

    Args:
        videos: ``N`` arrays ``(T_n, H, W, 3)`` uint8 with ``T_n >= 1``.

    Returns:
        ``(N, T, H, W, 3)`` uint8 with ``T = max T_n``, and the lengths ``(N,)`` int64.
    """
    lengths = np.array([len(v) for v in videos], dtype=np.int64)
    if (lengths < 1).any():
        raise ValueError("every video needs at least one frame: call reset() first")
    t_max = int(lengths.max())
    padded = [np.concatenate([v, np.repeat(v[-1:], t_max - len(v), axis=0)]) if len(v) < t_max else v for v in videos]
    return np.stack(padded), lengths
