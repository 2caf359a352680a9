"""Dual action conditioning of Prophet (as in the paper): the scalar action stream and the action-frame stream.

* :class:`ScalarActionEncoder`: ``f_sa = MLP(flatten(action chunk))`` - one global vector per sample.
* :func:`render_action_frames`: end-effector poses (xyz + quaternion wxyz per arm, world frame) and gripper openings
  are projected with the camera (intrinsics ``K`` in pixels, extrinsics world -> camera, OpenCV convention: x right,
  y down, z forward) into an "action-frame" video on black: per arm a disk at the projected position whose radius
  shrinks with depth (``r = r_ref * z_ref / z``, clamped), coloured by the gripper opening, plus the three tool axes
  as segments (x red, y green, z blue). Pure torch, batched over (B, L), no gradients needed.
* :class:`ActionFrameEncoder`: codec latents of the action-frame video -> ``1x1x1`` conv -> depthwise ``1x3x3`` +
  pointwise conv -> spatial mean -> + sinusoidal time code -> MLP: ``f_af`` per latent frame ``(B, T, D)``.

Style values of the renderer are not given in the paper; defaults follow the guesses of an unofficial third-party
reimplementation (marked "reimpl." below).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


# ---------------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------------
def quaternion_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """Quaternions wxyz ``(..., 4)`` (normalized here) -> rotation matrices ``(..., 3, 3)``."""
    q = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def project_points(
    points: torch.Tensor, camera_k: torch.Tensor, camera_extr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of world points.

    Args:
        points: ``(B, P, 3)`` world coordinates.
        camera_k: ``(B, 3, 3)`` intrinsics in pixels.
        camera_extr: ``(B, 4, 4)`` world -> camera transform (OpenCV convention).

    Returns:
        ``uv`` ``(B, P, 2)`` pixel coordinates (column, row) and ``depth`` ``(B, P)`` (camera z; <= 0 is behind).
    """
    cam = points @ camera_extr[:, :3, :3].transpose(1, 2) + camera_extr[:, None, :3, 3]
    depth = cam[..., 2]
    pix = cam @ camera_k.transpose(1, 2)
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    return pix[..., :2] / safe[..., None], depth


def _segment_distance(px: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from pixel centres ``px`` ``(H, W, 2)`` to segments ``a -> b`` ``(F, 2)``: ``(F, H, W)``."""
    ab = (b - a)[:, None, None, :]
    ap = px[None] - a[:, None, None, :]
    s = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (ap - s[..., None] * ab).norm(dim=-1)


@dataclass
class ActionFrameStyle:
    """Drawing parameters of :func:`render_action_frames` (pixel sizes are given at ``reference_width``).

    Attributes:
        axis_length: Length of the drawn tool axes in metres (reimpl. 0.15).
        r_ref: Disk radius in pixels at depth ``z_ref`` (reimpl. 40 px on a 256 canvas).
        z_ref: Reference depth in metres.
        r_min: Smallest radius in pixels (reimpl. 8).
        r_max: Largest radius in pixels (reimpl. 140).
        line_width: Axis line width in pixels (reimpl. 2); never thinner than 1 px after scaling.
        reference_width: Canvas width at which the pixel sizes hold; they scale with ``width / reference_width``.
        closed_color: RGB in ``[0, 1]`` of a closed gripper (opening 0).
        open_color: RGB in ``[0, 1]`` of an open gripper (opening 1); linear blend in between.
        near: Points closer than this depth (metres) are not drawn.
    """

    axis_length: float = 0.15
    r_ref: float = 40.0
    z_ref: float = 1.0
    r_min: float = 8.0
    r_max: float = 140.0
    line_width: float = 2.0
    reference_width: int = 256
    closed_color: tuple[float, float, float] = (1.0, 0.55, 0.0)
    open_color: tuple[float, float, float] = (0.0, 0.85, 1.0)
    near: float = 1e-3


_AXIS_COLORS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))  # x red, y green, z blue


@torch.no_grad()
def render_action_frames(
    ee_poses: torch.Tensor,
    gripper: torch.Tensor,
    camera_k: torch.Tensor,
    camera_extr: torch.Tensor,
    height: int,
    width: int,
    style: ActionFrameStyle | None = None,
    arm_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render the action-frame video of an action chunk.

    Args:
        ee_poses: ``(B, L, N, 7)`` end-effector xyz + quaternion wxyz in the world frame.
        gripper: ``(B, L, N)`` opening in ``[0, 1]`` (clamped).
        camera_k: ``(B, 3, 3)`` intrinsics in pixels of the ``(height, width)`` canvas.
        camera_extr: ``(B, 4, 4)`` world -> camera transform (OpenCV convention).
        height: Canvas height in pixels.
        width: Canvas width in pixels.
        style: Drawing parameters (default :class:`ActionFrameStyle`).
        arm_mask: ``(B, N)`` bool, arms to draw; default: arms whose quaternions are non-zero (padded arms are zero).

    Returns:
        ``(B, L, 3, height, width)`` in ``[-1, 1]`` (black background = -1).
    """
    style = style or ActionFrameStyle()
    if ee_poses.ndim != 4 or ee_poses.shape[-1] != 7:
        raise ValueError(f"`ee_poses` must have shape (B, L, N, 7), got {tuple(ee_poses.shape)}")
    b, length, n_arms = ee_poses.shape[:3]
    if gripper.shape != (b, length, n_arms):
        raise ValueError(f"`gripper` must have shape {(b, length, n_arms)}, got {tuple(gripper.shape)}")
    if camera_k.shape != (b, 3, 3) or camera_extr.shape != (b, 4, 4):
        raise ValueError(
            f"`camera_k` / `camera_extr` must be (B, 3, 3) / (B, 4, 4), got {camera_k.shape} / {camera_extr.shape}"
        )
    poses, k, extr = ee_poses.float(), camera_k.float(), camera_extr.float()
    if arm_mask is None:
        arm_mask = poses[..., 3:].norm(dim=-1).amax(1) > 1e-6  # (B, N)

    # 1. Project centres and axis tips: points (B, L*N*4, 3) = [centre, centre + a * R e_x, ... e_y, ... e_z]
    rot = quaternion_to_matrix(poses[..., 3:])  # (B, L, N, 3, 3), columns = tool axes in the world
    tips = poses[..., None, :3] + style.axis_length * rot.transpose(-1, -2)  # (B, L, N, 3, 3)
    pts = torch.cat([poses[..., None, :3], tips], -2)  # (B, L, N, 4, 3)
    uv, depth = project_points(pts.flatten(1, 3), k, extr)
    uv, depth = uv.view(b * length, n_arms, 4, 2), depth.view(b * length, n_arms, 4)
    visible = (depth > style.near) & arm_mask[:, None, :, None].expand(b, length, n_arms, 4).reshape(depth.shape)

    # 2. Sizes and colours
    scale = width / style.reference_width
    radius = (style.r_ref * scale * style.z_ref / depth[..., 0].clamp_min(style.near)).clamp(
        style.r_min * scale, style.r_max * scale
    )
    half_line = max(style.line_width * scale, 1.0) / 2
    g = gripper.float().clamp(0, 1).reshape(b * length, n_arms, 1)
    closed, opened = (torch.tensor(c, device=g.device) for c in (style.closed_color, style.open_color))
    disk_color = (1 - g) * closed + g * opened  # (F, N, 3)

    # 3. Draw arm by arm: disk, then the z, y, x axes on top
    rows = torch.arange(height, device=g.device, dtype=torch.float32)
    cols = torch.arange(width, device=g.device, dtype=torch.float32)
    px = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), -1)  # (H, W, 2) as (u, v)
    canvas = torch.zeros(b * length, 3, height, width, device=g.device)
    for arm in range(n_arms):
        centre = uv[:, arm, 0]
        disk = ((px[None] - centre[:, None, None]) ** 2).sum(-1) <= radius[:, arm, None, None] ** 2
        disk &= visible[:, arm, 0, None, None]
        canvas = torch.where(disk[:, None], disk_color[:, arm, :, None, None], canvas)
        for axis in (2, 1, 0):
            seg = _segment_distance(px, centre, uv[:, arm, axis + 1]) <= half_line
            seg &= (visible[:, arm, 0] & visible[:, arm, axis + 1])[:, None, None]
            color = torch.tensor(_AXIS_COLORS[axis], device=g.device)[None, :, None, None]
            canvas = torch.where(seg[:, None], color, canvas)
    return (canvas * 2 - 1).view(b, length, 3, height, width).to(ee_poses.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------------
class ScalarActionEncoder(nn.Module):
    """Scalar action stream ``f_sa``: MLP over the flattened, masked action chunk and the action mask.

    Input is ``[flatten(actions * mask), mask]`` (``L * A + A`` numbers) so that padded dimensions are exactly zero
    and the network knows which dimensions are real. The reimplementation guesses Linear -> GELU -> Linear with
    hidden ``4 * D``.

    Args:
        chunk_length: Actions per chunk ``L``.
        action_dim: Action size ``A`` (14 in the unified space).
        out_dim: Output width ``D`` (the DiT hidden size).
        hidden_dim: Hidden width (default ``4 * out_dim``).
        zero_init: Zero the last layer so that the stream starts as a no-op (keeps a pretrained backbone intact).
    """

    def __init__(
        self, chunk_length: int, action_dim: int, out_dim: int, hidden_dim: int | None = None, zero_init: bool = False
    ) -> None:
        super().__init__()
        self.chunk_length, self.action_dim = chunk_length, action_dim
        hidden_dim = hidden_dim or 4 * out_dim
        self.mlp = nn.Sequential(
            nn.Linear(chunk_length * action_dim + action_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )
        if zero_init:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, actions: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``actions`` ``(B, L, A)`` and ``action_mask`` ``(B, A)`` bool (default all real) to ``(B, D)``."""
        if actions.ndim != 3 or actions.shape[1:] != (self.chunk_length, self.action_dim):
            raise ValueError(
                f"`actions` must have shape (B, {self.chunk_length}, {self.action_dim}), got {tuple(actions.shape)}"
            )
        if action_mask is None:
            action_mask = torch.ones(actions.shape[0], self.action_dim, dtype=torch.bool, device=actions.device)
        if action_mask.shape != (actions.shape[0], self.action_dim):
            raise ValueError(f"`action_mask` must have shape (B, {self.action_dim}), got {tuple(action_mask.shape)}")
        m = action_mask.to(actions.dtype)
        x = torch.cat([(actions * m[:, None]).flatten(1), m], 1)
        return self.mlp(x)


class ActionFrameEncoder(nn.Module):
    """Action-frame stream ``f_af``: lightweight 3D projection of the codec latents of the action-frame video.

    Args:
        in_channels: Latent channels ``C`` of the codec.
        hidden_channels: Channels after the ``1x1x1`` lift.
        out_dim: Output width ``D`` (the DiT hidden size).
        zero_init: Zero the last layer so that the stream starts as a no-op.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.lift = nn.Conv3d(in_channels, hidden_channels, 1)
        self.depthwise = nn.Conv3d(
            hidden_channels, hidden_channels, (1, 3, 3), padding=(0, 1, 1), groups=hidden_channels
        )
        self.pointwise = nn.Conv3d(hidden_channels, hidden_channels, 1)
        self.act = nn.SiLU()
        self.mlp = nn.Sequential(nn.Linear(hidden_channels, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        if zero_init:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Map action-frame latents ``(B, C, T, h, w)`` to per-latent-frame vectors ``(B, T, D)``."""
        # 1. 1x1x1 lift, depthwise-separable 1x3x3
        x = self.act(self.pointwise(self.depthwise(self.lift(latents))))
        # 2. Spatial average pool and sinusoidal time code
        x = x.mean(dim=(-2, -1)).transpose(1, 2)  # (B, T, hidden)
        steps = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        x = x + get_timestep_embedding(steps, self.hidden_channels, flip_sin_to_cos=True).to(x.dtype)[None]
        # 3. MLP
        return self.mlp(x)
