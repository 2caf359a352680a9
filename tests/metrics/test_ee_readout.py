"""The end-effector readout: it learns a position from pixels, its path error is exactly zero for the same video and
grows with the distance between paths, and it round-trips through save / load."""

from __future__ import annotations

import pytest
import torch

from lightning_prophrl.metrics.ee_readout import (
    EndEffectorReadout,
    ee_path_error,
    fit_ee_readout,
    read_path,
    readout_error_cm,
)


def dot_frames(positions: torch.Tensor, size: int = 32) -> torch.Tensor:
    """A bright 4x4 square on a dark frame at pixel (x, y) from the first two coordinates in [0, 1], its brightness
    from the third: ``(N, 3, size, size)`` in [-1, 1]."""
    frames = -torch.ones(len(positions), 3, size, size)
    for i, (x, y, z) in enumerate(positions.tolist()):
        c, r = int(x * (size - 4)), int(y * (size - 4))
        frames[i, :, r : r + 4, c : c + 4] = -0.2 + 1.2 * z
    return frames


def test_the_readout_learns_where_the_dot_is():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.rand(512, 3, generator=gen), torch.rand(128, 3, generator=gen)
    readout = fit_ee_readout(dot_frames(train), train, steps=300, seed=0)
    baseline = float(100 * (test - train.mean(0)).pow(2).sum(-1).mean().sqrt())  # predicting the mean position
    err = readout_error_cm(readout, dot_frames(test), test)
    assert err < 0.35 * baseline, (err, baseline)


def test_path_error_is_zero_for_the_same_video_and_grows_with_the_path_gap():
    torch.manual_seed(0)
    readout = EndEffectorReadout().eval()
    real = torch.rand(2, 5, 3, 32, 32) * 2 - 1
    assert ee_path_error(readout, real, real) == 0.0
    still = real[:, :1].expand_as(real)
    path_real, path_still = read_path(readout, real[:, 1:]), read_path(readout, still[:, 1:])
    expected = float(100 * (path_still - path_real).norm(dim=-1).mean())
    assert ee_path_error(readout, still, real) == pytest.approx(expected, rel=1e-6) and expected > 0
    with pytest.raises(ValueError, match="two equal"):
        ee_path_error(readout, real[:, :3], real)


def test_save_load_round_trip_is_exact(tmp_path):
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(64, 3, generator=gen)
    readout = fit_ee_readout(dot_frames(pos), pos, steps=5, seed=1)
    readout.save(tmp_path / "r", {"rmse_cm": 1.5})
    loaded = EndEffectorReadout.load(tmp_path / "r")
    frames = dot_frames(pos[:8])
    assert torch.equal(loaded(frames), readout(frames)) and torch.equal(loaded.mean, readout.mean)
    with pytest.raises(FileNotFoundError, match="ee_readout.json"):
        EndEffectorReadout.load(tmp_path)


def test_fit_refuses_bad_targets():
    with pytest.raises(ValueError, match="positions"):
        fit_ee_readout(torch.zeros(4, 3, 32, 32), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="finite"):
        fit_ee_readout(torch.zeros(4, 3, 32, 32), torch.full((4, 3), float("nan")))
