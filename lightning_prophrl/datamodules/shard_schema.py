"""The in-memory side of the shard schema (see ``shards`` for the on-disk table): ``Episode``, the key names that are
not batch keys, the format error and the validation every writer and reader applies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lightning_prophrl.constants import ACTION_DIM

if TYPE_CHECKING:
    from lightning_prophrl.datamodules.lazy_frames import FrameSource

SHARD_EE_POSES = "ee_poses.npy"
SHARD_TARGET_POSES = "target_poses.npy"
INDEX_FILE = "index.json"
REQUIRED_META = ("dataset", "embodiment", "instruction", "fps", "success")
OnError = Literal["raise", "skip"]


class ShardFormatError(ValueError):
    """A sample in a shard is invalid. The message names the shard, the sample key and the problem.

    Built from a single message (how a DataLoader re-raises an error of one of its workers, and how pickle rebuilds
    it), the type survives and ``shard`` / ``key`` / ``problem`` are read back from the message's last such line.
    """

    def __init__(self, shard: str, key: str | None = None, problem: str | None = None):
        if key is None and problem is None:
            super().__init__(shard)
            found = _FORMAT_ERROR_LINE.findall(shard)
            self.shard, self.key, self.problem = found[-1] if found else (None, None, None)
            return
        super().__init__(f"{shard}: sample {key!r}: {problem}")
        self.shard, self.key, self.problem = shard, key, problem


_FORMAT_ERROR_LINE = re.compile(r"^(?:\S*ShardFormatError: )?(.+?): sample '(.*?)': (.+)$", re.MULTILINE)


@dataclass
class Episode:
    """One robot episode in memory (see ``shards`` for the on-disk schema).

    ``frames`` is a ``(T, H, W, 3) uint8`` array, or a ``FrameSource`` that decodes only the frames indexed
    (``iter_episodes(lazy_frames=True)``), or None when frames were not read.
    """

    key: str
    frames: np.ndarray | FrameSource | None
    actions: np.ndarray
    action_mask: np.ndarray
    meta: dict[str, Any]
    state: np.ndarray | None = None
    ee_poses: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def success(self) -> bool:
        return bool(self.meta.get("success", False))

    @property
    def target_poses(self) -> np.ndarray | None:
        """Commanded target poses ``(T, n_arms, 8)`` (``target_poses.npy``), or None."""
        value = self.extras.get(SHARD_TARGET_POSES)
        return value if isinstance(value, np.ndarray) else None


def validate_arrays(frames, actions, action_mask, meta, state=None, ee_poses=None) -> str | None:
    """Return a description of the first problem with an episode's arrays, or None if it is valid.

    ``frames`` may be an array or anything with ``ndim`` / ``shape`` / ``dtype`` (a ``FrameSource``), or None.
    """
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        return f"meta.json is missing key(s) {missing}"
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        return f"actions must have shape (T, {ACTION_DIM}) in the unified space, got {tuple(actions.shape)}"
    if not np.isfinite(actions).all():
        bad = np.argwhere(~np.isfinite(actions))[0]
        return f"actions contain NaN/inf (first at step {bad[0]}, dim {bad[1]})"
    if action_mask.shape != (ACTION_DIM,):
        return f"action_mask must have shape ({ACTION_DIM},), got {tuple(action_mask.shape)}"
    if frames is not None:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            return f"frames must be (T, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}"
        if frames.shape[0] != actions.shape[0]:
            return f"frame/action length mismatch: {frames.shape[0]} frames vs {actions.shape[0]} actions"
    if state is not None and (state.ndim != 2 or state.shape[0] != actions.shape[0]):
        return f"state must be (T, S) with T={actions.shape[0]}, got {tuple(state.shape)}"
    if ee_poses is not None and (ee_poses.ndim != 3 or ee_poses.shape[0] != actions.shape[0] or ee_poses.shape[2] != 8):
        return f"ee_poses must be (T, n_arms, 8) with T={actions.shape[0]}, got {tuple(ee_poses.shape)}"
    return None
