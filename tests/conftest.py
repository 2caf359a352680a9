"""Shared fixtures: small episode shards written to disk with the real ShardWriter."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from lightning_prophrl.datamodules.shards import Episode, ShardWriter


def coded_episode(dataset: str, index: int, length: int, size: int = 16, success: bool = True) -> Episode:
    """An episode whose frames encode (dataset tag, episode index, frame index) in their pixels:
    channel 0 = frame index, channel 1 = episode index, channel 2 = dataset tag; actions[t, 0] = t, [t, 1] = index."""
    tag = sum(map(ord, dataset)) % 200
    frames = np.zeros((length, size, size, 3), dtype=np.uint8)
    frames[..., 0] = np.arange(length, dtype=np.uint8)[:, None, None]
    frames[..., 1] = index
    frames[..., 2] = tag
    actions = np.zeros((length, 14), dtype=np.float32)
    actions[:, 0] = np.arange(length)
    actions[:, 1] = index
    actions[:, 2] = np.linspace(-1, 1, length)
    actions[:, 6] = (np.arange(length) % 2).astype(np.float32)
    mask = np.zeros(14, dtype=bool)
    mask[[0, 1, 2, 6]] = True
    steps = [False] * length
    if success:
        steps[-3:] = [True] * 3
    meta = dict(
        embodiment="toy",
        instruction=f"task of {dataset}",
        fps=10,
        success=success,
        success_steps=steps,
        task=dataset,
        seed=index,
    )
    return Episode(f"{dataset}_{index:05d}", frames, actions, mask, meta, state=np.tile(actions[:, :4], 1))


def write_coded_dataset(path, dataset: str, episodes: int, length: int = 30, per_shard: int = 2, size: int = 16):
    with ShardWriter(path, dataset, max_count=per_shard) as w:
        for i in range(episodes):
            w.write(coded_episode(dataset, i, length + (i % 3), size=size, success=bool(i % 2)))
    return str(path)


@pytest.fixture
def coded_dataset(tmp_path):
    return write_coded_dataset(tmp_path / "coded", "coded", episodes=8)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run faster and more repeatably on one thread when the two CI cores are shared."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
