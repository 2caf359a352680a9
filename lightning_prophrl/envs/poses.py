"""Commanded end-effector targets from actions alone, for the action-frame stream inside a world model.

A world model imagines frames, not poses, so an imagined rollout cannot measure where the hand is. What it can know
exactly is where the policy *commanded* the hand to be: for a delta-action robot whose controller tracks a target
(Meta-World's mocap body, a servo set-point), the target is the reset target plus the sum of the commanded deltas,
each applied in the action's frame and clipped to the controller's bounds. :class:`CommandedPoses` integrates that
rule; for Meta-World it reproduces the simulator's mocap position exactly (checked in the tests against the
simulator), while the measured hand lags behind it by up to ~10 cm when it pushes against the table or an object.
The training data stores the same quantity (``target_poses.npy``, written by ``prophrl-data metaworld``), so the
action frames Prophet learned from and the ones it sees during RL follow one rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.actions import METAWORLD_HAND_QUAT, quat_to_matrix


@dataclass
class CommandedPoses:
    """The commanded-target integrator of one arm and the camera that draws it.

    Attributes:
        camera_k: ``(3, 3)`` intrinsics in pixels of the rendered frames.
        camera_extr: ``(4, 4)`` world -> camera (OpenCV).
        target_quat: ``(4,)`` wxyz orientation drawn for the target (Meta-World keeps the hand orientation fixed).
        dpos_frame_quat: ``(4,)`` wxyz frame in which the unified ``dpos`` is expressed: world delta = ``R @ dpos``.
        low: ``(3,)`` lower bound of the target (None: unbounded).
        high: ``(3,)`` upper bound of the target.
        reset_offset: ``(3,)`` target minus measured hand position right after a reset.
    """

    camera_k: np.ndarray
    camera_extr: np.ndarray
    target_quat: np.ndarray
    dpos_frame_quat: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    reset_offset: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.rotation = torch.as_tensor(quat_to_matrix(np.asarray(self.dpos_frame_quat, dtype=np.float64)))
        if self.camera_k.shape != (3, 3) or self.camera_extr.shape != (4, 4):
            raise ValueError(f"camera_k must be (3, 3) and camera_extr (4, 4), got {self.camera_k.shape}, "
                             f"{self.camera_extr.shape}")  # fmt: skip

    @classmethod
    def metaworld(cls, task: str, image_size: int = 64, camera: str = "workspace") -> CommandedPoses:
        """Read the bounds, reset offset, orientation and camera from a Meta-World simulator of ``task``."""
        from lightning_prophrl.envs.metaworld import _Slot, ee_pose, mocap_pose, reset_seeded

        slot = _Slot(task, image_size, camera)
        try:
            env = slot.env
            reset_seeded(env, 0)
            target = mocap_pose(env)
            return cls(
                camera_k=np.asarray(slot.renderer.intrinsics(), dtype=np.float64),
                camera_extr=np.asarray(slot.renderer.extrinsics(), dtype=np.float64),
                target_quat=target[3:],
                dpos_frame_quat=np.asarray(METAWORLD_HAND_QUAT, dtype=np.float64),
                low=np.asarray(env.mocap_low, dtype=np.float64),
                high=np.asarray(env.mocap_high, dtype=np.float64),
                reset_offset=target[:3] - ee_pose(env)[:3],
            )
        finally:
            slot.renderer.close()

    def start(self, hand_xyz: torch.Tensor) -> torch.Tensor:
        """Targets ``(N, 3)`` right after reset from the measured hand positions ``(N, 3)``."""
        offset = 0.0 if self.reset_offset is None else torch.as_tensor(self.reset_offset, dtype=hand_xyz.dtype)
        return hand_xyz + offset

    def world_deltas(self, actions: torch.Tensor) -> torch.Tensor:
        """Unified actions ``(..., 14)`` -> world-frame position deltas ``(..., 3)`` of arm 0."""
        return actions[..., :3].to(torch.float64) @ self.rotation.T

    def integrate(self, target: torch.Tensor, actions: torch.Tensor, frames: int) -> torch.Tensor:
        """Targets after each group of ``h / frames`` actions.

        Args:
            target: ``(N, 3)`` current targets.
            actions: ``(N, h, 14)`` raw unified actions, applied one by one (clipped to the bounds after each).
            frames: groups (``h`` must be a multiple).

        Returns:
            ``(N, frames, 3)`` float32 targets at the end of each group.
        """
        n, h, _ = actions.shape
        if h % frames:
            raise ValueError(f"{h} actions cannot be grouped into {frames} frames")
        deltas = self.world_deltas(actions)
        low = None if self.low is None else torch.as_tensor(self.low)
        high = None if self.high is None else torch.as_tensor(self.high)
        x, out = target.to(torch.float64), []
        for i in range(h):
            x = x + deltas[:, i]
            if low is not None:
                x = torch.maximum(torch.minimum(x, high), low)
            if (i + 1) % (h // frames) == 0:
                out.append(x)
        return torch.stack(out, 1).float()

    def geometry(self, targets: torch.Tensor, gripper: torch.Tensor) -> dict[str, torch.Tensor]:
        """Prophet's action-frame inputs for targets ``(N, L, 3)`` and openings ``(N, L)`` (arm 0; other arms empty)."""
        n, length, _ = targets.shape
        poses = torch.zeros(n, length, K.NUM_ARMS, 7)  # zero quaternions: arms that are not drawn
        poses[:, :, 0, :3] = targets
        poses[:, :, 0, 3:] = torch.as_tensor(self.target_quat, dtype=torch.float32)
        grip = torch.zeros(n, length, K.NUM_ARMS)
        grip[:, :, 0] = gripper.float().clamp(0.0, 1.0)
        return {
            "ee_poses": poses,
            "gripper": grip,
            "camera_k": torch.as_tensor(self.camera_k, dtype=torch.float32).expand(n, 3, 3),
            "camera_extr": torch.as_tensor(self.camera_extr, dtype=torch.float32).expand(n, 4, 4),
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (for run configs)."""
        return {k: None if v is None else np.asarray(v).tolist() for k, v in self.__dict__.items() if k != "rotation"}
