"""World-model evaluation: held-out episodes, the metric set, baselines, and the two callbacks in a Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.callbacks import (
    EMACallback,
    VideoLoggerCallback,
    VideoMetricSet,
    WorldModelEvalCallback,
    evaluate_world_model,
    load_eval_episodes,
    rollout_episodes,
    rollout_grid,
    shuffle_actions,
    teacher_forced_episodes,
)
from lightning_prophrl.datamodules.robot import RobotClipDataModule
from lightning_prophrl.metrics import frame_psnr, video_to_uint8
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules.prophet_pretrain import ProphetPretrainModule
from lightning_prophrl.recipes.prophet_report import copy_previous
from tests.conftest import write_coded_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prophet"
SIZE, L_CHUNK, SEGMENTS = 32, 8, 2


def tiny_prophet(seed: int = 0) -> Prophet:
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    kwargs.update(num_layers=1, history_length=4, history_scale_frames=[1, 1, 2])
    torch.manual_seed(seed)
    return Prophet(**kwargs)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> str:
    return write_coded_dataset(tmp_path_factory.mktemp("wm") / "val", "coded", episodes=3, length=20, size=SIZE)


@pytest.fixture(scope="module")
def episodes(held_out) -> dict:
    return load_eval_episodes([held_out], num_episodes=2, num_segments=SEGMENTS, chunk_len=L_CHUNK, image_size=SIZE)


def test_load_eval_episodes_cuts_the_start_of_each_episode(episodes):
    n, t = 2, SEGMENTS * L_CHUNK
    assert episodes[K.COND_FRAME].shape == (n, 3, SIZE, SIZE)
    assert episodes[K.FUTURE].shape == (n, t, 3, SIZE, SIZE)
    assert episodes[K.ACTIONS].shape == (n, t, K.ACTION_DIM)
    assert episodes[K.EPISODE_KEY] == ["coded_00000", "coded_00001"]
    # Coded frames: channel 0 holds the frame index, channel 1 the episode index (uint8 -> [-1, 1]).
    assert torch.equal(episodes[K.COND_FRAME][:, 0], torch.full((n, SIZE, SIZE), -1.0))
    frame_index = episodes[K.FUTURE][:, :, 0, 0, 0].add(1).mul(127.5).round()
    assert torch.equal(frame_index, torch.arange(1, t + 1, dtype=torch.float32).expand(n, t))
    assert torch.equal(episodes[K.FUTURE][:, 0, 1, 0, 0].add(1).mul(127.5).round(), torch.tensor([0.0, 1.0]))


def test_shuffle_actions_swaps_episodes_or_permutes_time(episodes):
    shuffled = shuffle_actions(episodes)
    assert torch.equal(shuffled[K.ACTIONS][0], episodes[K.ACTIONS][1])
    assert torch.equal(shuffled[K.ACTIONS][1], episodes[K.ACTIONS][0])
    assert torch.equal(shuffled[K.EE_POSES][0], episodes[K.EE_POSES][1])
    assert torch.equal(shuffled[K.FUTURE], episodes[K.FUTURE])  # the real video is untouched
    single = {k: v[:1] for k, v in episodes.items()}
    perm = shuffle_actions(single, seed=0)[K.ACTIONS][0]
    assert not torch.equal(perm, single[K.ACTIONS][0])
    assert torch.equal(perm.sort(0).values, single[K.ACTIONS][0].sort(0).values)  # same steps, other order


def test_metric_set_closed_forms(episodes):
    real = torch.cat([episodes[K.COND_FRAME][:, None], episodes[K.FUTURE]], 1)
    perfect = VideoMetricSet()
    perfect.update(real, real)
    out = perfect.compute()
    assert out["psnr"] == pytest.approx(100.0)  # the per-frame cap of an exact prediction
    assert out["ssim"] == pytest.approx(1.0, abs=1e-3) and out["tssim"] == pytest.approx(1.0, abs=1e-3)
    assert out["flow_epe"] == 0.0
    # Copy-last: every frame is the first one; PSNR is 10 log10(2^2 / MSE) averaged over the future frames.
    copy = real[:, :1].expand_as(real)
    baseline = VideoMetricSet()
    baseline.update(copy, real)
    mse = (copy[:, 1:].double() - real[:, 1:].double()).pow(2).mean(dim=(2, 3, 4))
    expected = (10 * torch.log10(4.0 / mse)).mean().item()
    assert baseline.compute()["psnr"] == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(expected) and expected < 100


@pytest.mark.slow
def test_evaluate_world_model_scores_rollouts_and_baselines(episodes):
    model = tiny_prophet()
    results = evaluate_world_model(model, episodes, num_steps=1, seed=5, batch_size=2)
    for suffix in ("", "_copy_last", "_shuffled"):
        for name in ("psnr", "ssim", "tssim", "dyn_psnr", "flow_epe"):
            assert math.isfinite(results[f"{name}{suffix}"]), f"{name}{suffix}"
        assert f"flow_cos{suffix}" in results
    assert 0.0 <= results["success_prob"] <= 1.0 and results["success_acc"] in (0.0, 0.5, 1.0)
    # The model's PSNR is the PSNR of its own rollout (same seed -> same video) ...
    video, success = rollout_episodes(model, episodes, num_steps=1, seed=5, batch_size=2)
    assert video.shape == (2, 1 + SEGMENTS * L_CHUNK, 3, SIZE, SIZE) and success.shape == (2, SEGMENTS)
    assert torch.equal(video[:, 0], episodes[K.COND_FRAME])
    psnr = frame_psnr(video[:, 1:], episodes[K.FUTURE]).mean().item()
    assert results["psnr"] == pytest.approx(psnr, rel=1e-5)
    # ... and the shuffled baseline is the same model under other actions (an untrained model still reacts to them).
    assert results["psnr_shuffled"] != results["psnr"]
    copy = VideoMetricSet()
    real = torch.cat([episodes[K.COND_FRAME][:, None], episodes[K.FUTURE]], 1)
    copy.update(real[:, :1].expand_as(real), real)
    assert results["psnr_copy_last"] == pytest.approx(copy.compute()["psnr"])


def test_teacher_forcing_continues_every_segment_from_the_real_frames(held_out):
    """Segment 0 is the open-loop rollout's (same frame, history and noise); segment 1 starts from the real frame
    ``L`` with the real frames before it as history, not from the model's own frames."""
    model = tiny_prophet().eval()
    eps = load_eval_episodes([held_out], num_episodes=2, num_segments=SEGMENTS, chunk_len=L_CHUNK, image_size=SIZE,
                             history_len=4)  # fmt: skip
    tf = teacher_forced_episodes(model, eps, num_steps=1, seed=3, batch_size=2, use_action_frames=False)
    ar, _ = rollout_episodes(model, eps, num_steps=1, seed=3, batch_size=2, use_action_frames=False)
    assert tf.shape == ar.shape == (2, 1 + SEGMENTS * L_CHUNK, 3, SIZE, SIZE)
    assert torch.equal(tf[:, : 1 + L_CHUNK], ar[:, : 1 + L_CHUNK])
    real = torch.cat([eps[K.COND_FRAME][:, None], eps[K.FUTURE]], 1)
    one = model.rollout(real[:, L_CHUNK], eps[K.ACTIONS][:, L_CHUNK:].reshape(2, 1, L_CHUNK, -1),
                        action_mask=eps[K.ACTION_MASK], history=real[:, L_CHUNK - 4 : L_CHUNK],
                        history_mask=torch.ones(2, 4, dtype=torch.bool), num_steps=1,
                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(tf[:, 1 + L_CHUNK :], one.video[:, 1:])
    assert not torch.allclose(tf[:, 1 + L_CHUNK :], ar[:, 1 + L_CHUNK :])
    prev = copy_previous(real)  # the one-step-ahead baseline
    assert torch.equal(prev[:, 0], real[:, 0]) and torch.equal(prev[:, 1:], real[:, :-1])


def test_evaluate_rejects_actions_that_do_not_fill_whole_chunks(episodes):
    bad = {**episodes, K.ACTIONS: episodes[K.ACTIONS][:, :-1]}
    with pytest.raises(ValueError, match="action_chunk_length"):
        rollout_episodes(tiny_prophet(), bad, num_steps=1)


def test_rollout_grid_layout():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2, 5, 3, 4, 6, generator=g) * 2 - 1
    pred = torch.rand(2, 5, 3, 4, 6, generator=g) * 2 - 1
    grid = rollout_grid(real, pred, max_frames=3)  # columns = frames 0, 2, 4
    assert grid.shape == (2 * 2 * 4, 3 * 6, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[0:4, 6:12], video_to_uint8(real[0, 2]).numpy())
    assert np.array_equal(grid[4:8, 12:18], video_to_uint8(pred[0, 4]).numpy())
    assert np.array_equal(grid[8:12, 0:6], video_to_uint8(real[1, 0]).numpy())


@pytest.mark.slow
def test_callbacks_log_in_a_trainer(held_out, tmp_path):
    train = write_coded_dataset(tmp_path / "train", "coded", episodes=2, length=20, size=SIZE)
    data = RobotClipDataModule([train], val_datasets=[held_out], history_len=2, chunk_len=L_CHUNK, image_size=SIZE,
                               batch_size=2, samples_per_epoch=2, windows_per_episode=1, shuffle_buffer=1)  # fmt: skip
    wm = WorldModelEvalCallback(num_episodes=2, num_segments=SEGMENTS, num_steps=1, baselines=False)
    video = VideoLoggerCallback(num_episodes=1, num_segments=1, num_steps=1, max_frames=4, save_dir=str(tmp_path),
                                every_n_steps=1)  # fmt: skip
    ema = EMACallback(decay=0.5, apply_at_end=False)
    module = ProphetPretrainModule(tiny_prophet())
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", callbacks=[ema, wm, video], enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, data)
    # Defaults came from the datamodule: held-out set, image size and history length.
    assert wm.episodes[K.FUTURE].shape == (2, SEGMENTS * L_CHUNK, 3, SIZE, SIZE)
    assert wm.episodes[K.HISTORY].shape[1] == 2
    for key in ("psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos", "success_prob"):
        logged = trainer.callback_metrics[f"wm/{key}"].item()
        assert logged == pytest.approx(wm.last_results[key], nan_ok=True)
    assert "wm/psnr_shuffled" not in trainer.callback_metrics
    # The evaluation ran on the EMA weights: rolling the averaged model out again gives the same PSNR.
    with ema.averaged_weights(module):
        again = evaluate_world_model(module.model, wm.episodes, num_steps=1, baselines=False)
    assert again["psnr"] == pytest.approx(wm.last_results["psnr"], rel=1e-6)
    raw = evaluate_world_model(module.model, wm.episodes, num_steps=1, baselines=False)
    assert raw["psnr"] != pytest.approx(wm.last_results["psnr"], rel=1e-6)
    # The PNG grid: top row pair = the real clip (1 + 8 frames -> 4 columns), read back exactly.
    (png,) = list(tmp_path.glob("*.png"))  # one optimizer step -> one grid, written by the step hook
    assert png.name == "epoch0000_step0000001.png"
    grid = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(grid, video.last_grid) and grid.shape == (2 * SIZE, 4 * SIZE, 3)
    first = video_to_uint8(video.episodes[K.COND_FRAME][0]).numpy()
    assert np.array_equal(grid[:SIZE, :SIZE], first) and np.array_equal(grid[SIZE:, :SIZE], first)
