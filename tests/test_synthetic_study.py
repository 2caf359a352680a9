"""The synthetic action-use task: the data say what the docstring says, and the scoring is consistent."""

from __future__ import annotations

import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.studies.synthetic import disk_frames, run_synthetic, synthetic_batch


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_future_disk_sits_where_the_action_says(mode):
    g = torch.Generator().manual_seed(0)
    b = synthetic_batch(8, g, mode, size=32, radius=3.0, shift=8.0, action_gain=5.0)
    a = b[K.ACTIONS][:, 0, :2] / 5.0
    assert torch.all(b[K.ACTIONS][:, 0, 2:] == 0) and a.abs().max() <= 1
    red = b[K.FUTURE][:, 0, 0] > 0  # (B, H, W) disk pixels
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centroid = torch.stack([(xx * red).sum((1, 2)) / red.sum((1, 2)), (yy * red).sum((1, 2)) / red.sum((1, 2))], 1)
    assert torch.allclose(centroid, b["centre"], atol=0.6)  # the disk's pixel centroid is the stated centre
    cond_red = b[K.COND_FRAME][:, 0] > 0
    cond_centroid = (
        torch.stack([(xx * cond_red).sum((1, 2)), (yy * cond_red).sum((1, 2))], 1) / cond_red.sum((1, 2))[:, None]
    )
    start = torch.full_like(cond_centroid, 16.0) if mode == "absolute" else cond_centroid
    assert torch.allclose(b["centre"], start + 8.0 * a, atol=0.6)


def test_disk_frames_values():
    f = disk_frames(torch.tensor([[4.0, 5.0]]), 10, 1.5)
    assert f.shape == (1, 3, 10, 10)
    assert f[0, 0, 5, 4] == 0.9 and f[0, 1, 5, 4] == -0.9 and f[0, 2, 5, 4] == -0.5
    assert f[0, 0, 0, 0] == -0.5 and int((f[0, 0] > 0).sum()) == 9  # the 3 x 3 pixels within 1.5 px


def test_run_scores_real_and_shuffled_with_the_same_noise():
    out = run_synthetic(steps=2, batch_size=2, eval_size=4)
    assert set(out["loss"]) == {"real", "shuffled"} and all(0 < v < 100 for v in out["loss"]["real"].values())
    assert out["action_effect"] > 0  # the randomly initialised action stream moves the prediction
    # with the action stream zero-initialised (a no-op) real and shuffled actions score exactly alike
    dead = run_synthetic({"zero_init_conditioning": True}, steps=0, eval_size=4)
    assert dead["loss"]["real"] == dead["loss"]["shuffled"] and dead["action_effect"] == 0.0
