"""A joint-space robot's forward kinematics, as a user passes it to the converters (``--joint-mapping``): a planar
two-link arm (joint angles in columns 0 and 1) with the gripper opening in column 6."""

import numpy as np

LINKS = (0.3, 0.25)


def planar_to_unified(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T, 7)`` joint actions -> unified ``(T, 14)`` per-step end-effector position deltas (the last step holds
    still) + gripper, and the mask of the dims the arm has (dpos xy z, gripper)."""
    q1, q2 = joints[:, 0], joints[:, 1]
    xy = np.stack([LINKS[0] * np.cos(q1) + LINKS[1] * np.cos(q1 + q2),
                   LINKS[0] * np.sin(q1) + LINKS[1] * np.sin(q1 + q2)], 1)  # fmt: skip
    out = np.zeros((len(joints), 14), np.float32)
    out[:-1, :2] = np.diff(xy, axis=0)
    out[:, 6] = np.clip(joints[:, 6], 0.0, 1.0)
    mask = np.zeros(14, bool)
    mask[[0, 1, 2, 6]] = True
    return out, mask
