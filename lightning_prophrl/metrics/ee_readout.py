"""Where the end effector is, read from a frame: a small convolutional regressor trained on real frames and the
simulator's recorded end-effector positions, used to compare the arm path in a world model's video with the path in
the simulator's video of the same actions.

The readout is fitted on one task's real episodes (frames and ``ee_poses``), checked on other real episodes of the
task (its error in centimetres is the resolution of any path comparison made with it), then applied to both the
imagined and the real video: :func:`ee_path_error` is the mean distance between the two read paths, so a readout bias
shared by both videos cancels. Holding the first frame still (copy-last) gives the distance the arm actually travels,
the baseline a world model has to beat.

Spatial soft-argmax keypoints (each feature map's expected pixel position) keep the position information that global
pooling would lose; training adds pixel noise and random blur so that the readout does not depend on the sharpness of
real renders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

READOUT_CONFIG, READOUT_WEIGHTS = "ee_readout.json", "ee_readout.safetensors"


class EndEffectorReadout(nn.Module):
    """``(..., 3, H, W)`` frames in ``[-1, 1]`` -> ``(..., 3)`` end-effector positions (the units of the targets it
    was fitted on; Meta-World: metres).

    Args:
        channels: output channels of the stride-2 convolutions.
        keypoints: soft-argmax keypoints (feature maps of the last convolution).
        hidden: width of the MLP from keypoints to position.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 32), keypoints: int = 16, hidden: int = 64):
        super().__init__()
        self.config = {"channels": [int(c) for c in channels], "keypoints": int(keypoints), "hidden": int(hidden)}
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4 if c % 4 == 0 else 1, c), nn.SiLU()]
            c_in = c
        layers.append(nn.Conv2d(c_in, keypoints, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * keypoints, hidden), nn.SiLU(), nn.Linear(hidden, 3))
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.ones(3))

    def forward(self, frames: Tensor) -> Tensor:
        lead = frames.shape[:-3]
        x = self.features(frames.reshape(-1, *frames.shape[-3:]).float())  # (N, K, h, w)
        n, k, h, w = x.shape
        attn = x.flatten(2).softmax(-1).view(n, k, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device)
        points = torch.cat([(attn.sum(2) * xs).sum(-1), (attn.sum(3) * ys).sum(-1)], 1)  # (N, 2K)
        return (self.head(points) * self.std + self.mean).view(*lead, 3)

    # save / load ----------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> str:
        """Write ``ee_readout.json`` (config and ``extra``, e.g. the fit's validation error) and the weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / READOUT_WEIGHTS))
        (directory / READOUT_CONFIG).write_text(json.dumps({**self.config, "extra": extra or {}}, indent=2))
        return str(directory)

    @classmethod
    def load(cls, directory: str | Path) -> EndEffectorReadout:
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (READOUT_CONFIG, READOUT_WEIGHTS):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not an end-effector readout directory "
                                        "(written by EndEffectorReadout.save)")  # fmt: skip
        config = json.loads((directory / READOUT_CONFIG).read_text())
        config.pop("extra", None)
        readout = cls(**config)
        readout.load_state_dict(load_file(str(directory / READOUT_WEIGHTS)))
        return readout.eval()


def readout_data(data_dir: str | Path, stride: int = 4, image_size: int = 64,
                 max_episodes: int | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Real frames every ``stride`` steps of a shard dataset and the first arm's recorded position at each:
    ``(N, 3, image_size, image_size)`` in ``[-1, 1]`` and ``(N, 3)``.

    Raises:
        ValueError: when an episode has no ``ee_poses`` (naming it) or the dataset has no episode.
    """
    from lightning_prophrl.datamodules.clips import to_float_video
    from lightning_prophrl.datamodules.shards import iter_episodes

    frames, positions = [], []
    for i, ep in enumerate(iter_episodes(str(data_dir))):
        if max_episodes is not None and i >= max_episodes:
            break
        if ep.ee_poses is None:
            raise ValueError(f"{data_dir}: episode {ep.key} has no ee_poses.npy; the end-effector readout needs the "
                             "recorded positions (generate the data with prophrl-data metaworld)")  # fmt: skip
        idx = np.arange(0, len(ep), stride)
        frames.append(to_float_video(np.asarray(ep.frames)[idx], image_size))
        positions.append(torch.from_numpy(np.asarray(ep.ee_poses[idx, 0, :3], dtype=np.float32)))
    if not frames:
        raise ValueError(f"{data_dir}: no episodes to fit or check the end-effector readout on")
    return torch.cat(frames), torch.cat(positions)


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Pixel noise on every frame and a 3x3 box blur on a random half (renders vs softer generated frames)."""
    n = x.shape[0]
    blur = torch.rand(n, generator=generator) < 0.5
    if blur.any():
        x = x.clone()
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x + 0.05 * torch.randn(x.shape, generator=generator)


def fit_ee_readout(frames: Tensor, positions: Tensor, steps: int = 1500, batch_size: int = 64, lr: float = 2e-3,
                   seed: int = 0, **model_kwargs: Any) -> EndEffectorReadout:  # fmt: skip
    """Fit an :class:`EndEffectorReadout` on ``frames`` ``(N, 3, H, W)`` and ``positions`` ``(N, 3)`` (AdamW, cosine
    schedule, seeded batches and augmentation); returns it in eval mode.

    Raises:
        ValueError: on mismatched lengths, fewer than 2 frames or non-finite positions.
    """
    if frames.ndim != 4 or positions.shape != (len(frames), 3):
        raise ValueError(f"need frames (N, 3, H, W) and positions (N, 3), got {tuple(frames.shape)}, "
                         f"{tuple(positions.shape)}")  # fmt: skip
    if len(frames) < 2 or not torch.isfinite(positions).all():
        raise ValueError("need at least 2 frames and finite positions to fit the end-effector readout")
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        readout = EndEffectorReadout(**model_kwargs)
    gen = torch.Generator().manual_seed(seed)
    readout.mean.copy_(positions.mean(0))
    readout.std.copy_(positions.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(readout.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    readout.train()
    for _ in range(steps):
        idx = torch.randint(len(frames), (min(batch_size, len(frames)),), generator=gen)
        pred = readout(_augment(frames[idx], gen))
        loss = F.smooth_l1_loss((pred - readout.mean) / readout.std, (positions[idx] - readout.mean) / readout.std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return readout.eval()


@torch.no_grad()
def readout_error_cm(readout: EndEffectorReadout, frames: Tensor, positions: Tensor, batch_size: int = 256) -> float:
    """Root-mean-square 3-D distance (cm, for positions in metres) between the read and the recorded positions."""
    pred = torch.cat([readout(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)])
    return float(100.0 * (pred - positions).pow(2).sum(-1).mean().sqrt())


@torch.no_grad()
def read_path(readout: EndEffectorReadout, video: Tensor, batch_size: int = 8) -> Tensor:
    """``(N, T, 3, H, W)`` video -> ``(N, T, 3)`` read end-effector path."""
    return torch.cat([readout(video[i : i + batch_size]) for i in range(0, len(video), batch_size)])


def ee_path_error(readout: EndEffectorReadout, video: Tensor, real: Tensor, batch_size: int = 8) -> float:
    """Mean distance (cm, for a readout in metres) between the end-effector paths read from ``video`` and from
    ``real`` (both ``(N, T, 3, H, W)``), over every frame after the first (the shared start)."""
    if video.shape != real.shape or video.ndim != 5:
        raise ValueError(f"need two equal (N, T, 3, H, W) videos, got {tuple(video.shape)}, {tuple(real.shape)}")
    a, b = read_path(readout, video[:, 1:], batch_size), read_path(readout, real[:, 1:], batch_size)
    return float(100.0 * (a - b).norm(dim=-1).mean())
