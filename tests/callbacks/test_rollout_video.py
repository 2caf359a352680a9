"""Rollout videos reach TensorBoard: RL rollouts inside a world model, and the guard's real and imagined episodes."""

import io
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.callbacks import ImaginationGuardCallback, RolloutVideoCallback
from lightning_prophrl.callbacks.rollout_video import side_by_side, video_to_uint8
from lightning_prophrl.datamodules.prompts import PromptDataModule
from lightning_prophrl.envs.world_model import WorldModelEnv
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules import FAGRPOModule
from tests.conftest import write_coded_dataset

ROOT = Path(__file__).resolve().parents[2]
DIMS = [0, 1, 2, 6]


def stats():
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, size=(500, 4)))
    return ActionStats.compute([unified], mask=mask).to_dict()


def first_reward(batch):
    """1 for the first member of every group of 2: mixed groups, so every update steps."""
    return torch.tensor([1.0, 0.0]).repeat(batch.x_steps.shape[1] // 2)  # x_steps: (queries, N, K + 1, C, D)


def gif_frames(encoded: bytes) -> list[np.ndarray]:
    img = Image.open(io.BytesIO(encoded))
    frames = []
    for i in range(img.n_frames):
        img.seek(i)
        frames.append(np.asarray(img.convert("RGB")))
    return frames


def test_side_by_side_resizes_pads_and_keeps_pixels():
    left = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    right = video_to_uint8(torch.rand(2, 5, 3, 4, 4) * 2 - 1)
    both = side_by_side(left, right)
    assert both.shape == (2, 5, 3, 8, 16) and both.dtype == torch.uint8
    assert torch.equal(both[:, :3, ..., :8], left) and torch.equal(
        both[:, 3:, ..., :8], left[:, -1:].expand(-1, 2, -1, -1, -1)
    )
    assert video_to_uint8(torch.full((1, 1, 3, 2, 2), -1.0)).eq(0).all()
    assert video_to_uint8(torch.ones(1, 1, 3, 2, 2)).eq(255).all()


@pytest.mark.skipif(__import__("importlib").util.find_spec("moviepy") is None, reason="needs the `video` extra")
def test_rl_rollouts_inside_a_world_model_are_logged_as_tensorboard_videos(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/prophet/model_tiny.yaml").read_text())
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg["init_args"], "action_chunk_length": 2, "history_length": 4,
                         "history_scale_frames": [1, 1, 2]})  # fmt: skip
    data = write_coded_dataset(tmp_path / "d", "d", episodes=4, per_shard=1, size=32)
    prompts = PromptDataModule(datasets=[data], eval_fraction=0.0, num_prompts=2, image_size=32)
    prompts.setup("fit")
    env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=2, max_segments=2, num_steps=1,
                        stop_at_success=False)  # fmt: skip
    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4, instructions=["task of d"],
                                cond_dim=32, width=32, depth=1, num_heads=2, num_steps=4)  # fmt: skip
    module = FAGRPOModule(policy, env, group_size=2, max_queries=2, action_target="unified", action_stats=stats(),
                          action_dims=DIMS, minibatch_size=4, reward_model=first_reward)  # fmt: skip
    videos = RolloutVideoCallback(every_n_updates=1, max_videos=3)
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="rl")
    L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=logger, callbacks=[videos],
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False).fit(
        module, train_dataloaders=prompts.train_dataloader()
    )  # fmt: skip
    assert module.updates == 2
    expected = video_to_uint8(env.video()[:3])  # the last update's rollouts, as logged at update 2
    assert torch.equal(videos.last_video, expected)

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    logged = events.Images("rollout/video")
    assert [e.step for e in logged] == [1, 2]
    frames = gif_frames(logged[-1].encoded_image_string)
    assert len(frames) == expected.shape[1]  # one GIF frame per video frame
    assert frames[0].shape[0] >= 32 and frames[0].shape[1] >= 32  # the episodes tiled in a grid


def test_guard_keeps_real_and_imagined_episodes_side_by_side(tmp_path):
    from lightning_prophrl.envs.instructions import instruction_for
    from lightning_prophrl.envs.metaworld import MetaWorldEnv

    task = "pick-place-v3"
    cfg = yaml.safe_load((ROOT / "configs/prophet/model_tiny.yaml").read_text())
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg["init_args"], "action_chunk_length": 2, "history_length": 4,
                         "history_scale_frames": [1, 1, 2]})  # fmt: skip
    initial = MetaWorldEnv(task, num_prompts=2, group_size=1, image_size=32, max_steps=12)
    wm = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=2, max_segments=2, num_steps=1, initial_env=initial)
    torch.manual_seed(0)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4,
                                instructions=[instruction_for(task)], cond_dim=32, width=32, depth=1, num_heads=2,
                                num_steps=4)  # fmt: skip
    module = FAGRPOModule(policy, wm, group_size=2, max_queries=2, action_target="unified", action_stats=stats(),
                          action_dims=DIMS, minibatch_size=4, reward_model=first_reward)  # fmt: skip
    guard = ImaginationGuardCallback(task, check_seeds=[4000, 4001], every_n_updates=1, max_gap=2.0, image_size=32,
                                     max_steps=8, log_videos=2)  # fmt: skip
    logger = TensorBoardLogger(str(tmp_path / "tb"), name="guard")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=logger, callbacks=[guard],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    prompts = PromptDataModule(tasks=[task], train_seeds=(2000, 2010), eval_seeds=(1000, 1004), num_prompts=2)
    prompts.setup("fit")
    trainer.fit(module, train_dataloaders=prompts.train_dataloader())
    real, world = guard._envs
    expected = side_by_side(video_to_uint8(real.video()[:2]), video_to_uint8(world.video()[:2]))
    assert torch.equal(guard.last_video, expected) and expected.shape[-1] == 64  # 32 real + 32 imagined columns
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("guard/real_vs_imagined")) == 2  # before the first update and after it
    initial.close()
