"""RewardDataModule (labelled frame stacks, weighted mixtures, split by episode) and RewardModelModule training."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.reward import (
    FRAME_SUCCESS,
    RewardDataModule,
    SuccessFrameIterable,
    frame_labels,
    is_val_episode,
    load_episode_videos,
)
from lightning_prophrl.datamodules.shards import Episode, ShardWriter
from lightning_prophrl.models.reward import ClassifierReward, PersistenceRule, VideoSuccessClassifier
from lightning_prophrl.modules.reward_model import RewardModelModule
from tests.conftest import write_coded_dataset


def frame_index(video: torch.Tensor) -> torch.Tensor:
    """Coded episodes store the frame index in channel 0: ``(..., 3, H, W)`` -> ``(...)`` indices."""
    return ((video[..., 0, 0, 0] + 1) * 127.5).round().long()


def square_episode(key: str, length: int, success_from: int | None, rng: np.random.Generator) -> Episode:
    """Dark noisy 32 px frames; from ``success_from`` on, a white square (the 'object at the goal')."""
    frames = rng.integers(0, 60, size=(length, 32, 32, 3), dtype=np.uint8)
    flags = [success_from is not None and t >= success_from for t in range(length)]
    for t in np.flatnonzero(flags):
        r, c = rng.integers(0, 26, size=2)
        frames[t, r : r + 6, c : c + 6] = 255
    meta = dict(embodiment="toy", instruction="put the square", fps=10, success=any(flags), success_steps=flags)
    return Episode(key, frames, np.zeros((length, 14), np.float32), np.zeros(14, bool), meta)


@pytest.fixture(scope="module")
def square_dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    with ShardWriter(path, "squares", max_count=10) as w:
        for i in range(40):
            w.write(square_episode(f"sq_{i:03d}", 12, 6 if i % 2 else None, rng))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny CNNs run fastest on one thread when other jobs share the 2 cores (oversubscription costs ~10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer(**kw):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)  # fmt: skip


# ---- data -----------------------------------------------------------------------------------------------------------
def test_samples_are_frame_stacks_labelled_by_their_last_frame(coded_dataset):
    dm = RewardDataModule([coded_dataset], image_size=None, batch_size=16, frame_stack=3, stack_stride=2,
                          val_fraction=0.25, samples_per_epoch=64, shuffle_buffer=8)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.VIDEO].shape == (16, 3, 3, 16, 16) and batch[FRAME_SUCCESS].shape == (16,)
    idx = frame_index(batch[K.VIDEO])  # (B, 3)
    t = batch[K.FRAME_INDEX]
    assert torch.equal(idx[:, -1], t)
    assert torch.equal(idx, (t[:, None] - torch.tensor([4, 2, 0])).clamp(min=0))
    for key, ti, label, success in zip(batch[K.EPISODE_KEY], t.tolist(), batch[FRAME_SUCCESS].tolist(),
                                       batch[K.SUCCESS].tolist()):  # fmt: skip
        index, length = int(key.split("_")[-1]), 30 + int(key.split("_")[-1]) % 3
        assert success == float(index % 2)  # conftest: odd episodes succeed, on their last 3 frames
        assert label == float(bool(index % 2) and ti >= length - 3)
        assert not is_val_episode(key, 0.25)


def test_val_split_is_by_episode_and_deterministic(coded_dataset):
    keys = [f"coded_{i:05d}" for i in range(8)]
    val_keys = {k for k in keys if is_val_episode(k, 0.5)}
    assert 0 < len(val_keys) < 8 and val_keys == {k for k in keys if is_val_episode(k, 0.5)}
    val = SuccessFrameIterable([coded_dataset], split="val", val_fraction=0.5, image_size=None)
    samples = list(val)
    assert {s[K.EPISODE_KEY] for s in samples} == val_keys
    per_episode = {k: sorted(s[K.FRAME_INDEX] for s in samples if s[K.EPISODE_KEY] == k) for k in val_keys}
    assert all(v == list(range(len(v))) and len(v) >= 30 for v in per_episode.values())  # every frame, in order
    train = SuccessFrameIterable([coded_dataset], split="train", val_fraction=0.5, samples_per_epoch=40,
                                 shuffle_buffer=4, seed=7)  # fmt: skip
    first = [(s[K.EPISODE_KEY], s[K.FRAME_INDEX]) for s in train]
    assert not {k for k, _ in first} & val_keys
    again = SuccessFrameIterable([coded_dataset], split="train", val_fraction=0.5, samples_per_epoch=40,
                                 shuffle_buffer=4, seed=7)  # fmt: skip
    assert [(s[K.EPISODE_KEY], s[K.FRAME_INDEX]) for s in again] == first
    assert [(s[K.EPISODE_KEY], s[K.FRAME_INDEX]) for s in again] != first  # the next epoch is a new draw


def test_mixture_weights_and_positive_oversampling(tmp_path):
    a = write_coded_dataset(tmp_path / "real", "real", episodes=6, length=20)
    b = write_coded_dataset(tmp_path / "imagined", "imagined", episodes=6, length=20)
    mix = SuccessFrameIterable([a, b], weights=[3.0, 1.0], val_fraction=0.0, samples_per_epoch=800,
                               frames_per_episode=4, shuffle_buffer=16, image_size=8)  # fmt: skip
    ids = np.array([s[K.DATASET_ID] for s in mix])
    assert abs((ids == 0).mean() - 0.75) < 0.06
    pos = SuccessFrameIterable([a], val_fraction=0.0, samples_per_epoch=200, positive_fraction=1.0, image_size=8)
    for s in pos:  # every draw from a successful episode is one of its success frames
        assert s[FRAME_SUCCESS] == s[K.SUCCESS]
    with pytest.raises(ValueError, match="weights"):
        SuccessFrameIterable([a, b], weights=[1.0])


def test_frame_labels_validation():
    ep = square_episode("e", 5, 3, np.random.default_rng(0))
    assert frame_labels(ep).tolist() == [False, False, False, True, True]
    del ep.meta["success_steps"]
    with pytest.raises(ValueError, match="success_steps"):
        frame_labels(ep)
    ep.meta["success"] = False
    assert not frame_labels(ep).any()
    ep.meta["success_steps"] = [False] * 4
    with pytest.raises(ValueError, match="4 flags for 5 frames"):
        frame_labels(ep)


def test_outcome_labels_carry_the_episodes_eventual_success(tmp_path):
    ep = square_episode("e", 5, 3, np.random.default_rng(0))  # succeeds at frame 3
    assert frame_labels(ep, "outcome").tolist() == [True] * 5
    ep.meta.update(branch_of="src", success=True, episode_success=False)  # a window that succeeds, of a failure
    assert not frame_labels(ep, "outcome").any() and frame_labels(ep).tolist()[-1]
    del ep.meta["episode_success"]
    with pytest.raises(ValueError, match="episode_success"):
        frame_labels(ep, "outcome")
    with pytest.raises(ValueError, match="'success' or 'outcome'"):
        frame_labels(ep, "value")
    a = write_coded_dataset(tmp_path / "real", "real", episodes=6, length=20)
    frames = SuccessFrameIterable([a], val_fraction=0.0, samples_per_epoch=200, image_size=8, label="outcome")
    samples = list(frames)
    assert all(s[FRAME_SUCCESS] == s[K.SUCCESS] for s in samples) and {s[K.SUCCESS] for s in samples} == {0.0, 1.0}
    assert any(s[FRAME_SUCCESS] == 1.0 and s[K.FRAME_INDEX] < 5 for s in samples)  # early frames of successes too


def test_load_episode_videos_pads_and_strides(coded_dataset):
    out = load_episode_videos(coded_dataset, split=None, image_size=None, frame_stride=4)
    lengths = out["lengths"]
    assert out[K.VIDEO].shape[:2] == (8, int(lengths.max())) and len(out[K.EPISODE_KEY]) == 8
    for n, key in enumerate(out[K.EPISODE_KEY]):
        length = 30 + int(key.split("_")[-1]) % 3
        kept = sorted(set(range(0, length, 4)) | {length - 1})
        assert frame_index(out[K.VIDEO][n, : lengths[n]]).tolist() == kept
        assert (frame_index(out[K.VIDEO][n, lengths[n] :]) == length - 1).all()  # padded with the last frame
    assert out[K.SUCCESS].tolist() == [float(int(k.split("_")[-1]) % 2) for k in out[K.EPISODE_KEY]]


# ---- module ---------------------------------------------------------------------------------------------------------
def test_module_trains_logs_validation_metrics_and_checkpoint_loads_into_a_reward(square_dataset, tmp_path):
    torch.manual_seed(0)
    dm = RewardDataModule([square_dataset], image_size=32, batch_size=32, val_fraction=0.25, samples_per_epoch=512,
                          shuffle_buffer=64)  # fmt: skip
    module = RewardModelModule(VideoSuccessClassifier(feature_dim=32, channels=(8, 16, 16), groups=4),
                               optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), shift_pad=2)  # fmt: skip
    before = copy.deepcopy(module.classifier.state_dict())
    t = trainer(max_epochs=1)
    t.fit(module, datamodule=dm)
    assert any(not torch.equal(v, before[k]) for k, v in module.classifier.state_dict().items())
    metrics = {k: float(v) for k, v in t.callback_metrics.items()}
    for key in ("train/loss", "val/loss", "val/precision", "val/recall", "val/auc", "val/accuracy"):
        assert key in metrics, sorted(metrics)
    assert metrics["val/auc"] > 0.95 and metrics["val/recall"] > 0.9, metrics  # held-out episodes
    t.save_checkpoint(tmp_path / "rm.ckpt")
    fresh = VideoSuccessClassifier(feature_dim=32, channels=(8, 16, 16), groups=4)
    reward = ClassifierReward(fresh, PersistenceRule(0.5, k=3), checkpoint=str(tmp_path / "rm.ckpt"))
    for k, v in module.classifier.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    videos = load_episode_videos(square_dataset, split="val", val_fraction=0.25, image_size=32)
    judged = reward(videos[K.VIDEO], videos[K.INSTRUCTION], videos["lengths"])
    assert torch.equal(judged, module.as_reward(PersistenceRule(0.5, k=3))(videos[K.VIDEO], videos[K.INSTRUCTION]))
    assert (judged == videos[K.SUCCESS]).float().mean() >= 0.9


def test_module_fast_dev_run_with_frame_stacks_and_bad_batches(coded_dataset):
    dm = RewardDataModule([coded_dataset], image_size=16, batch_size=4, frame_stack=2, val_fraction=0.25,
                          samples_per_epoch=16, shuffle_buffer=4)  # fmt: skip
    module = RewardModelModule(VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4, temporal_kernel=3))
    with pytest.warns(UserWarning, match="frame_stack=2 is shorter"):
        trainer(fast_dev_run=True).fit(module, datamodule=dm)
    with pytest.raises(KeyError, match=FRAME_SUCCESS):
        module.training_step({K.VIDEO: torch.zeros(2, 1, 3, 16, 16)}, 0)
    with pytest.raises(ValueError, match="pos_weight"):
        RewardModelModule(VideoSuccessClassifier(), pos_weight=0.0)
