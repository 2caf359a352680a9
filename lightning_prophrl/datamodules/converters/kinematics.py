"""Forward kinematics from a URDF for joint-space robots (SO-100, Koch, ALOHA, ...), with pytorch-kinematics.

A :class:`URDFJointMapping` is a ``joint_mapping`` for the converters (``action_convention="joint"``): each step's
absolute joint positions go through the chain from the URDF's root to each end-effector link, and the resulting
absolute end-effector poses (xyz + quaternion wxyz + gripper opening) are mapped like ``ee_abs_quat`` data
(``lightning_prophrl.actions.to_unified``: tool-frame deltas of consecutive poses), so joint-space and end-effector
datasets meet in one unified action space. ``prophrl-data convert ... --action-convention joint --urdf PATH
--ee-link NAME`` builds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightning_prophrl.actions import to_unified


def _pytorch_kinematics():
    try:
        import pytorch_kinematics
    except ImportError as err:
        raise ImportError(
            "forward kinematics from a URDF needs pytorch-kinematics: pip install 'lightning_prophrl[kinematics]'"
        ) from err
    return pytorch_kinematics


class URDFJointMapping:
    """Joint-space actions -> unified actions through a URDF's forward kinematics.

    The source actions hold, per arm in ``ee_links`` order, the absolute positions of the chain's movable joints (root
    to that link, in the URDF's order) and then the gripper's position: ``(T, sum(n_joints_arm + 1))``.

    Args:
        urdf: the robot's URDF file.
        ee_links: the end-effector link of each arm (one for a single arm, two for a bimanual robot such as ALOHA).
        gripper_range: the gripper positions that mean fully closed and fully open; mapped linearly to the unified
            gripper opening in ``[0, 1]`` (clipped).

    Raises:
        FileNotFoundError: naming ``--urdf`` when the file is missing.
        ValueError: naming ``--ee-link`` (with the URDF's links) when a link is not in the URDF.
    """

    def __init__(self, urdf: str | Path, ee_links: str | Sequence[str], gripper_range: Sequence[float] = (0.0, 1.0)):
        pk = _pytorch_kinematics()
        path = Path(urdf)
        if not path.is_file():
            raise FileNotFoundError(f"--urdf {urdf}: no such file; pass the robot's URDF")
        self.ee_links = [ee_links] if isinstance(ee_links, str) else list(ee_links)
        lo, hi = (float(v) for v in gripper_range)
        if not hi > lo:
            raise ValueError(f"--gripper-range {lo} {hi}: the open position must be above the closed one")
        self.gripper_range = (lo, hi)
        data = path.read_bytes()
        links = sorted(pk.build_chain_from_urdf(data).get_link_names())
        self.chains = []
        for link in self.ee_links:
            if link not in links:
                raise ValueError(f"--ee-link {link!r} is not a link of {urdf}; its links: {links}")
            self.chains.append(pk.build_serial_chain_from_urdf(data, link).to(dtype=torch.float64))
        self.joint_names = [chain.get_joint_parameter_names() for chain in self.chains]

    @property
    def width(self) -> int:
        """Columns of the source actions: every arm's joints and its gripper."""
        return sum(len(names) + 1 for names in self.joint_names)

    def end_effector_poses(self, actions: np.ndarray) -> np.ndarray:
        """``(T, width)`` joint actions -> ``(T, n_arms * 8)`` absolute poses: xyz, quaternion wxyz, gripper in
        ``[0, 1]`` per arm (the ``ee_abs_quat`` layout)."""
        pk = _pytorch_kinematics()
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.width:
            joints = ", ".join(f"{link}: {len(n)} joints + gripper" for link, n in zip(self.ee_links, self.joint_names))
            raise ValueError(f"joint actions must be (T, {self.width}) ({joints}), got {actions.shape}")
        lo, hi = self.gripper_range
        out, col = [], 0
        for chain, names in zip(self.chains, self.joint_names, strict=True):
            q = torch.from_numpy(actions[:, col : col + len(names)])
            matrix = chain.forward_kinematics(q).get_matrix()
            gripper = np.clip((actions[:, col + len(names)] - lo) / (hi - lo), 0.0, 1.0)
            quat = pk.matrix_to_quaternion(matrix[:, :3, :3]).numpy()
            out.append(np.concatenate([matrix[:, :3, 3].numpy(), quat, gripper[:, None]], 1))
            col += len(names) + 1
        return np.concatenate(out, 1)

    def __call__(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(T, width)`` joint actions -> ``(unified (T, 14) actions, mask (14,) bool)``."""
        return to_unified(self.end_effector_poses(actions), "ee_abs_quat")
