"""The shipped Prophet: loads with no network, fits the size budget, and imagines what the simulator shows.

The last test is behavioural: from a real initial state of a task held out of pretraining, the arm is driven left
or right in the simulator and in Prophet; each imagined video must be closer to the simulator's video under the same
actions than to the one under the opposite actions (a model that ignored its actions, or held the first frame
still, fails it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_prophrl import constants as K
from lightning_prophrl.actions import metaworld_to_unified
from lightning_prophrl.assets import SHIPPED_PROPHET, load_shipped_prophet, shipped_prophet_path
from lightning_prophrl.envs.task_split import HELDOUT_TASKS, PRETRAIN_TASKS


def test_shipped_prophet_loads_offline_within_budget(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, stats = load_shipped_prophet()
    assert model.config.backbone == "unet" and not model.training and stats.count > 100_000
    assert sum(f.stat().st_size for f in SHIPPED_PROPHET.iterdir()) < 50 * 2**20
    card = (SHIPPED_PROPHET / "README.md").read_text()
    assert (
        all(t in card for t in HELDOUT_TASKS) and "prophrl fit --config configs/prophet/pretrain_metaworld.yaml" in card
    )
    assert json.loads((SHIPPED_PROPHET / "config.json").read_text())["history_length"] == model.config.history_length


@pytest.mark.slow
def test_imagined_motion_follows_the_simulator_on_a_heldout_task():
    from lightning_prophrl.envs.base import Prompt
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.metrics import frame_psnr

    task = "window-open-v3"
    assert task in HELDOUT_TASKS and task not in PRETRAIN_TASKS
    model, stats = load_shipped_prophet()
    real, imagined = {}, {}
    for name, dx in (("right", 1.0), ("left", -1.0)):
        raw = np.tile([dx, 0.0, 0.0, -1.0], (1, 4, 1)).astype(np.float32)  # (N=1, 4 steps, Meta-World action)
        unified = metaworld_to_unified(raw[0])[0][None]  # (1, 4, 14)
        sim = MetaWorldEnv(task, num_prompts=1, group_size=1, image_size=64, max_steps=24, stop_at_success=False)
        try:
            first = sim.reset([Prompt(task, 1000)])
            for _ in range(6):
                sim.step(raw)
            real[name] = sim.video()[0]
        finally:
            sim.close()
        wm = WorldModelEnv(model, stats, max_segments=6, num_steps=1, stop_at_success=False, seed=0,
                           poses=CommandedPoses.metaworld(task, 64))  # fmt: skip
        wm.reset([Prompt(task, 1000, None, first[K.OBS_IMAGE][0], first[K.OBS_STATE][0])])
        for _ in range(6):
            wm.step(unified)
        imagined[name] = wm.video()[0]
    for name, other in (("right", "left"), ("left", "right")):
        same = frame_psnr(imagined[name][None, -3:], real[name][None, -3:]).mean()
        opposite = frame_psnr(imagined[name][None, -3:], real[other][None, -3:]).mean()
        assert same > opposite + 0.5, (name, float(same), float(opposite))


def test_missing_assets_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr("lightning_prophrl.assets.SHIPPED_PROPHET", tmp_path)
    with pytest.raises(FileNotFoundError, match="pretrain_metaworld.yaml"):
        shipped_prophet_path()
