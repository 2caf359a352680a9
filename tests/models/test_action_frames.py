"""Action-frame rendering geometry and the two action encoders (paper: dual action conditioning)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prophrl.models.action_frames import (
    ActionFrameEncoder,
    ActionFrameStyle,
    ScalarActionEncoder,
    project_points,
    quaternion_to_matrix,
    render_action_frames,
)

H = W = 64
FOCAL, CX, CY = 60.0, 31.0, 30.0
STYLE = ActionFrameStyle()  # r_ref 40 px at 256 px -> 10 px at 64 px and z = 1


def camera(b: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.tensor([[FOCAL, 0.0, CX], [0.0, FOCAL, CY], [0.0, 0.0, 1.0]])
    return k.expand(b, 3, 3).clone(), torch.eye(4).expand(b, 4, 4).clone()


def one_arm(xyz, quat=(1.0, 0.0, 0.0, 0.0), grip: float = 1.0, style: ActionFrameStyle = STYLE) -> torch.Tensor:
    """Render one frame with arm 0 at ``xyz`` (camera = world frame) and a padded (all-zero) arm 1: (3, H, W)."""
    poses = torch.zeros(1, 1, 2, 7)
    poses[0, 0, 0] = torch.tensor([*xyz, *quat])
    gripper = torch.tensor([[[grip, 0.0]]])
    return render_action_frames(poses, gripper, *camera(), H, W, style=style)[0, 0]


def test_quaternion_to_matrix_closed_form():
    half = math.pi / 4  # 90 degrees about z
    rot = quaternion_to_matrix(torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)]))
    assert torch.allclose(rot, torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6)
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    r = quaternion_to_matrix(q)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(5, 3, 3), atol=1e-5)


def test_point_on_optical_axis_projects_to_principal_point():
    torch.manual_seed(0)
    rot = quaternion_to_matrix(torch.nn.functional.normalize(torch.randn(4), dim=0))
    trans = torch.tensor([0.1, -0.3, 0.7])
    extr = torch.eye(4)
    extr[:3, :3], extr[:3, 3] = rot, trans
    k, _ = camera()
    cam_points = torch.tensor([[0.0, 0.0, 2.0], [0.2, -0.1, 0.5]])  # on the axis; off the axis
    world = (cam_points - trans) @ rot  # R^T (p_cam - t)
    uv, depth = project_points(world[None], k, extr[None])
    assert torch.allclose(uv[0, 0], torch.tensor([CX, CY]), atol=1e-4)
    assert torch.allclose(uv[0, 1], torch.tensor([FOCAL * 0.2 / 0.5 + CX, FOCAL * -0.1 / 0.5 + CY]), atol=1e-4)
    assert torch.allclose(depth[0], torch.tensor([2.0, 0.5]), atol=1e-5)


def test_nearer_disk_is_bigger_with_closed_form_area():
    style = ActionFrameStyle(axis_length=0.0)  # axes collapse to the centre pixel
    areas = {}
    for z in (1.0, 0.5, 0.1):
        frame = one_arm((0.0, 0.0, z), style=style)
        areas[z] = int((frame > -1).any(0).sum())
    r1, r2, r_max = 10.0, 20.0, STYLE.r_max * W / 256  # r = r_ref * z_ref / z (scaled), clamped at 35 px
    assert abs(areas[1.0] - math.pi * r1**2) < 2 * math.pi * r1
    assert abs(areas[0.5] - math.pi * r2**2) < 2 * math.pi * r2
    assert areas[0.1] > areas[0.5] > areas[1.0]
    assert areas[0.1] < math.pi * (r_max + 1) ** 2  # clamped (unclamped r would be 100 px: the whole canvas)


def test_gripper_opening_sets_disk_colour():
    row, col = int(CY) - 5, int(CX) - 5  # inside the disk, away from the x (right) and y (down) axes
    colours = [one_arm((0.0, 0.0, 1.0), grip=g)[:, row, col] for g in (0.0, 0.5, 1.0)]
    closed, opened = torch.tensor(STYLE.closed_color) * 2 - 1, torch.tensor(STYLE.open_color) * 2 - 1
    assert torch.allclose(colours[0], closed) and torch.allclose(colours[2], opened)
    assert torch.allclose(colours[1], (closed + opened) / 2)


def test_axes_are_red_green_blue():
    red, green, blue = torch.tensor([1.0, -1, -1]), torch.tensor([-1.0, 1, -1]), torch.tensor([-1.0, -1, 1])
    frame = one_arm((0.0, 0.0, 1.0))  # identity tool frame: x -> image right, y -> image down, z -> optical axis
    assert torch.equal(frame[:, int(CY), int(CX) + 6], red)
    assert torch.equal(frame[:, int(CY) + 6, int(CX)], green)
    half = math.pi / 4  # 90 degrees about y: the tool z axis points to world +x (image right)
    frame = one_arm((0.0, 0.0, 1.0), quat=(math.cos(half), 0.0, math.sin(half), 0.0))
    assert torch.equal(frame[:, int(CY), int(CX) + 6], blue)


def test_behind_camera_and_padded_arms_are_not_drawn():
    assert torch.all(one_arm((0.0, 0.0, -1.0)) == -1)
    poses = torch.zeros(2, 3, 2, 7)  # both arms padded (zero quaternions)
    poses[..., 2] = 1.0
    frames = render_action_frames(poses, torch.ones(2, 3, 2), *camera(2), H, W)
    assert frames.shape == (2, 3, 3, H, W) and torch.all(frames == -1)


def test_render_rejects_bad_shapes():
    with pytest.raises(ValueError, match="ee_poses"):
        render_action_frames(torch.zeros(1, 2, 7), torch.zeros(1, 2), *camera(), H, W)
    with pytest.raises(ValueError, match="gripper"):
        render_action_frames(torch.zeros(1, 2, 2, 7), torch.zeros(1, 2), *camera(), H, W)


def test_scalar_action_encoder_ignores_masked_dimensions():
    torch.manual_seed(0)
    enc = ScalarActionEncoder(chunk_length=4, action_dim=14, out_dim=16)
    actions, mask = torch.randn(2, 4, 14), torch.zeros(2, 14, dtype=torch.bool)
    mask[:, :7] = True
    out = enc(actions, mask)
    other = actions.clone()
    other[..., 7:] = torch.randn(2, 4, 7)  # padded arm
    assert out.shape == (2, 16) and torch.equal(enc(other, mask), out)
    other[..., 0] += 1.0  # a real dimension
    assert not torch.allclose(enc(other, mask), out)
    with pytest.raises(ValueError, match="actions"):
        enc(torch.randn(2, 5, 14), mask)


def test_action_frame_encoder_shapes_time_code_and_zero_init():
    torch.manual_seed(0)
    enc = ActionFrameEncoder(in_channels=6, hidden_channels=8, out_dim=16)
    latents = torch.randn(2, 6, 1, 4, 4).expand(2, 6, 5, 4, 4)  # identical content in every frame
    out = enc(latents)
    assert out.shape == (2, 5, 16)
    assert not torch.allclose(out[:, 0], out[:, 1])  # the sinusoidal time code tells frames apart
    zero = ActionFrameEncoder(6, 8, 16, zero_init=True)
    assert torch.equal(zero(latents), torch.zeros(2, 5, 16))
