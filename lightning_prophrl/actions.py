"""The unified action space of Prophet (paper: unified action representation) and per-dataset normalization statistics.

Every action in the library is a 14-vector: 2 arms x [dpos (3), deuler (3), gripper (1)], where dpos and deuler are
the increment of the end-effector pose expressed in the *previous tool frame* (``xi_t = xi_{t-1} o dxi_t``), and the
gripper is the opening in [0, 1] (1 = fully open). Single-arm data fills arm 0 and is zero-padded, with a boolean mask
of the real dimensions.

Converters map their source convention explicitly through one of the functions below; nothing guesses:

* ``absolute_poses_to_unified``: absolute end-effector poses (xyz + quaternion wxyz, or xyz + Euler xyz) -> deltas.
* ``metaworld_to_unified`` / ``unified_to_metaworld``: Meta-World's 4-D action (world-frame xyz delta in units of
  ``action_scale`` metres + gripper effort in [-1, 1], +1 closes) <-> unified, exactly invertible.
* joint-space actions are rejected by ``to_unified`` unless the caller passes a forward-kinematics mapping.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_prophrl.constants import ACTION_DIM, ARM_DIM, NUM_ARMS

SourceConvention = Literal["unified", "metaworld", "ee_abs_quat", "ee_abs_euler", "ee_delta_euler", "joint"]
NormMode = Literal["quantile", "meanstd"]

# Meta-World keeps the Sawyer hand at a fixed orientation (mocap quaternion wxyz (1, 0, 1, 0) / sqrt 2): its world-frame
# xyz deltas are rotated into that tool frame so that they agree with the other datasets' tool-frame convention.
METAWORLD_HAND_QUAT = (0.7071067811865476, 0.0, 0.7071067811865476, 0.0)
METAWORLD_ACTION_SCALE = 0.01  # metres per unit of the 4-D action (Meta-World's ``action_scale``)


# ---------------------------------------------------------------------------------------------------------------------
# Rotations (numpy, batched over leading dims). Euler angles are intrinsic-free "xyz": R = Rz(c) @ Ry(b) @ Rx(a).
# ---------------------------------------------------------------------------------------------------------------------
def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions wxyz ``(..., 4)`` -> rotation matrices ``(..., 3, 3)``."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def euler_to_matrix(e: np.ndarray) -> np.ndarray:
    """Euler angles ``(..., 3)`` (roll a about x, pitch b about y, yaw c about z; R = Rz Ry Rx) -> ``(..., 3, 3)``."""
    e = np.asarray(e, dtype=np.float64)
    a, b, c = np.moveaxis(e, -1, 0)
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    return np.stack(
        [
            np.stack([cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa], -1),
            np.stack([sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa], -1),
            np.stack([-sb, cb * sa, cb * ca], -1),
        ],
        -2,
    )


def matrix_to_euler(m: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` -> Euler angles ``(..., 3)``, the inverse of ``euler_to_matrix`` for
    pitch in (-pi/2, pi/2)."""
    m = np.asarray(m, dtype=np.float64)
    pitch = np.arcsin(np.clip(-m[..., 2, 0], -1.0, 1.0))
    roll = np.arctan2(m[..., 2, 1], m[..., 2, 2])
    yaw = np.arctan2(m[..., 1, 0], m[..., 0, 0])
    return np.stack([roll, pitch, yaw], -1)


# ---------------------------------------------------------------------------------------------------------------------
# Source conventions -> unified
# ---------------------------------------------------------------------------------------------------------------------
def pad_arms(per_arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place ``(T, n_arms, 7)`` per-arm actions into the unified ``(T, 14)`` layout.

    Returns:
        ``(actions (T, 14) float32, mask (14,) bool)``; arms beyond ``n_arms`` are zero and masked out.
    """
    per_arm = np.asarray(per_arm, dtype=np.float32)
    if per_arm.ndim != 3 or per_arm.shape[-1] != ARM_DIM or not 1 <= per_arm.shape[1] <= NUM_ARMS:
        raise ValueError(f"expected per-arm actions of shape (T, 1..{NUM_ARMS}, {ARM_DIM}), got {per_arm.shape}")
    t, n = per_arm.shape[:2]
    out = np.zeros((t, ACTION_DIM), dtype=np.float32)
    out[:, : n * ARM_DIM] = per_arm.reshape(t, n * ARM_DIM)
    mask = np.zeros(ACTION_DIM, dtype=bool)
    mask[: n * ARM_DIM] = True
    return out, mask


def absolute_poses_to_unified(
    positions: np.ndarray,
    rotations: np.ndarray,
    gripper: np.ndarray,
    rotation_format: Literal["quat_wxyz", "euler_xyz"] = "quat_wxyz",
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute end-effector poses -> unified tool-frame deltas.

    Action ``t`` is the motion from pose ``t`` to pose ``t + 1`` in the tool frame of pose ``t`` together with the
    gripper command of step ``t``; the last action is a zero motion (the episode ends), so the output has as many
    steps as the input and lines up with the frames.

    Args:
        positions: ``(T, n_arms, 3)`` world-frame positions.
        rotations: ``(T, n_arms, 4)`` quaternions wxyz or ``(T, n_arms, 3)`` Euler angles.
        gripper: ``(T, n_arms)`` opening in [0, 1].
        rotation_format: how ``rotations`` is written.
    """
    p = np.asarray(positions, dtype=np.float64)
    r = quat_to_matrix(rotations) if rotation_format == "quat_wxyz" else euler_to_matrix(rotations)
    r_prev_t = np.swapaxes(r[:-1], -1, -2)  # R_{t}^T
    dpos = np.einsum("tnij,tnj->tni", r_prev_t, p[1:] - p[:-1])
    deuler = matrix_to_euler(r_prev_t @ r[1:])
    per_arm = np.zeros(p.shape[:2] + (ARM_DIM,), dtype=np.float64)
    per_arm[:-1, :, :3] = dpos
    per_arm[:-1, :, 3:6] = deuler
    per_arm[:, :, 6] = np.asarray(gripper, dtype=np.float64)
    return pad_arms(per_arm)


def metaworld_to_unified(
    actions: np.ndarray, action_scale: float = METAWORLD_ACTION_SCALE, hand_quat=METAWORLD_HAND_QUAT
) -> tuple[np.ndarray, np.ndarray]:
    """Meta-World ``(T, 4)`` actions -> unified ``(T, 14)`` and its mask (arm 0 dpos + gripper are real).

    dpos is the world xyz delta in metres (``action * action_scale``) rotated into the fixed hand frame; deuler is
    always zero (Meta-World keeps the hand orientation fixed) and is masked out; gripper opening is ``(1 - a) / 2``.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"Meta-World actions must have shape (T, 4), got {a.shape}")
    rot = quat_to_matrix(np.asarray(hand_quat))
    per_arm = np.zeros((a.shape[0], 1, ARM_DIM), dtype=np.float64)
    per_arm[:, 0, :3] = (a[:, :3] * action_scale) @ rot  # R^T x for each row
    per_arm[:, 0, 6] = (1.0 - a[:, 3]) / 2.0
    out, mask = pad_arms(per_arm)
    mask[3:6] = False
    return out, mask


def unified_to_metaworld(
    actions: np.ndarray, action_scale: float = METAWORLD_ACTION_SCALE, hand_quat=METAWORLD_HAND_QUAT
) -> np.ndarray:
    """Inverse of ``metaworld_to_unified``: ``(..., 14)`` -> ``(..., 4)`` Meta-World actions (not clipped)."""
    u = np.asarray(actions, dtype=np.float64)
    if u.shape[-1] != ACTION_DIM:
        raise ValueError(f"unified actions must have {ACTION_DIM} dims in the last axis, got {u.shape}")
    rot = quat_to_matrix(np.asarray(hand_quat))
    xyz = (u[..., :3] @ rot.T) / action_scale
    grip = 1.0 - 2.0 * u[..., 6:7]
    return np.concatenate([xyz, grip], -1).astype(np.float32)


def to_unified(
    actions: np.ndarray,
    convention: SourceConvention,
    *,
    joint_mapping: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Map source actions to the unified space by an explicitly named convention.

    Args:
        actions: source actions. ``unified``: ``(T, 14)``; ``metaworld``: ``(T, 4)``; ``ee_delta_euler``:
            ``(T, 7)`` or ``(T, 14)`` tool-frame deltas already in this layout; ``ee_abs_quat``: ``(T, n*8)``
            xyz + quat wxyz + gripper per arm; ``ee_abs_euler``: ``(T, n*7)`` xyz + euler + gripper per arm;
            ``joint``: joint positions, which need ``joint_mapping``.
        convention: the source convention.
        joint_mapping: forward kinematics for joint-space data, returning unified ``(actions, mask)``.
    """
    a = np.asarray(actions)
    known = ("unified", "metaworld", "ee_abs_quat", "ee_abs_euler", "ee_delta_euler", "joint")
    if convention not in known:
        raise ValueError(f"unknown action convention {convention!r}; expected one of {known}")
    if convention == "joint":
        if joint_mapping is None:
            raise ValueError(
                "joint-space actions cannot be mapped to the unified end-effector action space without a "
                "forward-kinematics mapping: pass joint_mapping=... (or convert to end-effector poses first)"
            )
        return joint_mapping(a)
    if convention == "metaworld":
        return metaworld_to_unified(a)
    if convention == "unified":
        if a.ndim != 2 or a.shape[1] != ACTION_DIM:
            raise ValueError(f"unified actions must have shape (T, {ACTION_DIM}), got {a.shape}")
        return a.astype(np.float32), np.ones(ACTION_DIM, dtype=bool)
    if convention == "ee_delta_euler":
        if a.ndim != 2 or a.shape[1] not in (ARM_DIM, ACTION_DIM):
            raise ValueError(f"ee_delta_euler actions must have shape (T, 7) or (T, 14), got {a.shape}")
        return pad_arms(a.reshape(a.shape[0], -1, ARM_DIM))
    width = 8 if convention == "ee_abs_quat" else 7
    if a.ndim != 2 or a.shape[1] % width or not 1 <= a.shape[1] // width <= NUM_ARMS:
        raise ValueError(f"{convention} actions must have shape (T, n_arms*{width}), got {a.shape}")
    per = a.reshape(a.shape[0], -1, width)
    fmt = "quat_wxyz" if convention == "ee_abs_quat" else "euler_xyz"
    return absolute_poses_to_unified(per[..., :3], per[..., 3:-1], per[..., -1], rotation_format=fmt)


# ---------------------------------------------------------------------------------------------------------------------
# Normalization statistics
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class ActionStats:
    """Per-dataset statistics of unified actions, each a list of 14 floats (JSON friendly)."""

    mean: list[float]
    std: list[float]
    q01: list[float]
    q99: list[float]
    min: list[float]
    max: list[float]
    mask: list[bool]
    count: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActionStats:
        """Build from a ``to_dict`` / ``stats.json`` mapping, checking every vector.

        Raises:
            KeyError: a statistic is missing.
            ValueError: a vector does not hold ``ACTION_DIM`` (14) finite numbers (``mask``: 14 booleans), naming the
                statistic, its length and the expected length.
        """
        keys = ("mean", "std", "q01", "q99", "min", "max", "mask", "count")
        missing = set(keys) - set(d)
        if missing:
            raise KeyError(f"action statistics are missing keys {sorted(missing)}")
        for key in keys[:-1]:
            value = d[key]
            n = len(value) if isinstance(value, list | tuple | np.ndarray) else None
            if n != ACTION_DIM:
                got = f"{n} values" if n is not None else f"a {type(value).__name__}"
                raise ValueError(
                    f"action statistics {key!r} has {got}, expected {ACTION_DIM} (one per unified action dimension)"
                )
            try:
                vec = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(f"action statistics {key!r} must hold {ACTION_DIM} numbers: {err}") from err
            if not np.isfinite(vec).all():
                raise ValueError(f"action statistics {key!r} holds NaN/inf at index {int(np.argmin(np.isfinite(vec)))}")
        return cls(**{k: d[k] for k in keys}, extra=d.get("extra", {}))

    @classmethod
    def compute(cls, chunks: Iterable[np.ndarray], mask: np.ndarray | None = None) -> ActionStats:
        """Stream ``(T_i, 14)`` action arrays (video is never touched). Exact quantiles over all steps."""
        arrays, total, s1, s2 = [], 0, np.zeros(ACTION_DIM), np.zeros(ACTION_DIM)
        for a in chunks:
            a = np.asarray(a, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != ACTION_DIM:
                raise ValueError(f"expected (T, {ACTION_DIM}) actions, got {a.shape}")
            arrays.append(a.astype(np.float32))
            total += a.shape[0]
            s1 += a.sum(0)
            s2 += (a * a).sum(0)
        if total == 0:
            raise ValueError("cannot compute action statistics from zero steps")
        allv = np.concatenate(arrays).astype(np.float64)
        mean = s1 / total
        std = np.sqrt(np.maximum(s2 / total - mean**2, 0.0))
        m = np.ones(ACTION_DIM, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        q01, q99 = np.quantile(allv, [0.01, 0.99], axis=0)
        return cls(
            mean=mean.tolist(),
            std=std.tolist(),
            q01=q01.tolist(),
            q99=q99.tolist(),
            min=allv.min(0).tolist(),
            max=allv.max(0).tolist(),
            mask=m.tolist(),
            count=int(total),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> ActionStats:
        """Read a ``stats.json``.

        Raises:
            ValueError: ``<path>: invalid action statistics: ...`` for invalid JSON, a missing statistic or a vector of
                the wrong length (naming the expected length), with the command that rewrites the file.
        """
        try:
            d = json.loads(Path(path).read_text())
            if not isinstance(d, dict):
                raise ValueError(f"expected a JSON object, got {type(d).__name__}")
            return cls.from_dict(d)
        except (KeyError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            reason = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ValueError(
                f"{path}: invalid action statistics: {reason} "
                f"(a dataset's stats.json is rewritten by `prophrl-data stats DIR --recompute`)"
            ) from err

    def _affine(self, mode: NormMode, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(center, half_range)`` so that ``normalized = (x - center) / half_range``."""
        m = np.asarray(self.mask, dtype=bool)
        if mode == "quantile":
            lo, hi = np.asarray(self.q01), np.asarray(self.q99)
            center, scale = (hi + lo) / 2.0, (hi - lo) / 2.0
        elif mode == "meanstd":
            center, scale = np.asarray(self.mean), np.asarray(self.std)
        else:
            raise ValueError(f"unknown normalization mode {mode!r}; expected 'quantile' or 'meanstd'")
        scale = np.where(m & (scale > eps), scale, 1.0)
        center = np.where(m, center, 0.0)
        return center, scale

    def normalize(self, actions: np.ndarray, mode: NormMode = "quantile") -> np.ndarray:
        """``(..., 14)`` raw -> normalized (q01/q99 -> -1/+1, or z-score). Masked dims become 0. Not clipped."""
        center, scale = self._affine(mode)
        out = (np.asarray(actions, dtype=np.float64) - center) / scale
        return (out * np.asarray(self.mask)).astype(np.float32)

    def unnormalize(self, actions: np.ndarray, mode: NormMode = "quantile") -> np.ndarray:
        """Inverse of ``normalize`` on the real dims; masked dims come back as 0."""
        center, scale = self._affine(mode)
        out = np.asarray(actions, dtype=np.float64) * scale + center
        return (out * np.asarray(self.mask)).astype(np.float32)
