"""The domain-bridged reward classifier study: imagined datasets (schema, strided alignment with the real episodes,
caching, setup checks) and the quick study end to end, on a tiny random Prophet and a few 32 px Meta-World episodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.clips import stride_episode
from lightning_prophrl.datamodules.shards import iter_episodes
from lightning_prophrl.studies.reward import (
    RewardStudyConfig,
    imagine_dataset,
    main,
    reward_study,
    stride_dataset,
    strided_segments,
    training_setup,
)
from tests.conftest import coded_episode

SIZE, STEPS, STRIDE, CHUNK = 32, 20, 4, 2  # 21 frames -> 6 strided -> 1 + 2 segments of 2 = 5 (one frame dropped)


def _write_study_config(root: Path, **overrides) -> None:
    cfg = {"stride": STRIDE, "image_size": SIZE, "camera": "workspace", "max_steps": STEPS, "chunk_len": CHUNK}
    (root / "config.json").write_text(json.dumps({**cfg, **overrides}))


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> str:
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    out = tmp_path_factory.mktemp("real") / "pick"
    generate_metaworld(["pick-place-v3"], 3, str(out), noise=0.1, noise_max=1.0, size=SIZE, max_steps=STEPS,
                       stop_at_success=False, seed=600, progress=False)  # fmt: skip
    return str(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, real_dir) -> str:
    """A random tiny Prophet (model_tiny.yaml, 32 px, 2 frames per segment) under a Prophet-study-like config.json."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.studies.prophet import prophet_config

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("prophet")
    model = Prophet(**prophet_config(image_size=SIZE, chunk_len=CHUNK, history_length=2))
    model.save_pretrained(str(root / "model"))
    shutil.copy(Path(real_dir) / K.STATS_FILE, root / "model" / K.STATS_FILE)
    _write_study_config(root)
    return str(root / "model")


def test_strided_segments_cuts_frames_actions_labels_and_extras_alike():
    ep = coded_episode("toy", 1, 30)  # success flags on the last 3 frames
    ep.extras = {"object_pos.npy": np.arange(30, dtype=np.float32)[:, None], "note.json": b"{}"}
    cut = strided_segments(ep, stride=4, chunk_len=3)  # 8 strided frames -> 1 + 2 * 3 = 7
    full = stride_episode(ep, 4)
    assert len(cut) == 7 and cut.frames.shape[0] == 7 and cut.meta["dropped_tail_frames"] == 1
    np.testing.assert_array_equal(cut.actions, full.actions[:7])
    np.testing.assert_array_equal(cut.frames, ep.frames[::4][:7])
    assert cut.meta["success_steps"] == full.meta["success_steps"][:7] and cut.success
    np.testing.assert_array_equal(cut.extras["object_pos.npy"][:, 0], np.arange(0, 28, 4))
    assert cut.extras["note.json"] == b"{}"
    with pytest.raises(ValueError, match="shorter than one segment"):
        strided_segments(coded_episode("toy", 2, 4), stride=4, chunk_len=3)


def test_imagined_dataset_matches_the_strided_source_and_is_cached(tmp_path, real_dir, model_dir):
    from lightning_prophrl.datamodules.reward import RewardDataModule

    out = tmp_path / "imagined"
    info = imagine_dataset(model_dir, real_dir, out, STRIDE, seed=3, batch_size=2)  # batches of 2 and 1 episodes
    assert info["episodes"] == 3 and info["training_setup"]["stride"] == STRIDE
    src, img = list(iter_episodes(real_dir)), list(iter_episodes(out))
    assert [e.key for e in img] == [e.key for e in src]
    for s, i in zip(src, img, strict=True):
        ref = stride_episode(s, STRIDE)
        assert len(i) == 5 and i.frames.shape == (5, SIZE, SIZE, 3) and i.frames.dtype == np.uint8
        assert set(s.meta) < set(i.meta) and i.meta["imagined"]["stride"] == STRIDE
        np.testing.assert_array_equal(i.actions, ref.actions[:5])
        assert i.meta["success_steps"] == ref.meta["success_steps"][:5] and i.success == s.success
        np.testing.assert_array_equal(i.state, ref.state[:5])
        np.testing.assert_array_equal(i.ee_poses, ref.ee_poses[:5])
        assert set(i.extras) == set(s.extras)
        np.testing.assert_array_equal(i.frames[0], s.frames[0])  # the given first frame
        assert np.abs(i.frames[1:].astype(int) - ref.frames[1:5]).mean() > 1  # the rest is imagined
        assert len(i.meta["imagined"]["success_prob"]) == 2  # one probability per segment
    # 1. The real strided set lines up frame for frame
    stride_dataset(real_dir, tmp_path / "strided", STRIDE, CHUNK)
    for r, i in zip(iter_episodes(tmp_path / "strided"), img, strict=True):
        assert r.key == i.key and len(r) == len(i) and r.meta["success_steps"] == i.meta["success_steps"]
    # 2. RewardDataModule reads it
    dm = RewardDataModule([str(out)], image_size=SIZE, batch_size=4, val_fraction=0.0, samples_per_epoch=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.VIDEO].shape == (4, 1, 3, SIZE, SIZE)
    # 3. Cached; other arguments are refused; the same arguments elsewhere give the same frames
    shard = next(out.glob("*.tar"))
    stamp = shard.stat().st_mtime_ns
    assert imagine_dataset(model_dir, real_dir, out, STRIDE, seed=3, batch_size=2) == info
    assert shard.stat().st_mtime_ns == stamp and not out.with_name("imagined.partial").exists()
    with pytest.raises(ValueError, match="other arguments.*seed"):
        imagine_dataset(model_dir, real_dir, out, STRIDE, seed=4, batch_size=2)
    again = imagine_dataset(model_dir, real_dir, tmp_path / "again", STRIDE, seed=3, batch_size=2)
    assert again["episodes"] == 3
    for a, b in zip(iter_episodes(tmp_path / "again"), img, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)


def test_mismatched_training_setup_is_refused_before_writing(tmp_path, real_dir, model_dir):
    with pytest.raises(ValueError, match=r"stride=2 \(trained with 4\)"):
        imagine_dataset(model_dir, real_dir, tmp_path / "a", stride=2)
    other = tmp_path / "p64"
    shutil.copytree(model_dir, other / "model")
    _write_study_config(other, image_size=64)
    assert training_setup(other / "model")["image_size"] == 64
    with pytest.raises(ValueError, match=r"image_size=32 \(trained with 64\)"):
        imagine_dataset(other / "model", real_dir, tmp_path / "b", STRIDE)
    with pytest.raises(FileNotFoundError, match="stats_from"):
        imagine_dataset(model_dir, real_dir, tmp_path / "c", STRIDE, stats_from=tmp_path)
    with pytest.raises(ValueError, match=r"camera='overview' \(trained with 'workspace'\)"):
        reward_study(RewardStudyConfig.quick(model_dir=model_dir, out=str(tmp_path / "d"), camera="overview"))
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_quick_study_writes_the_table_and_is_cached(tmp_path, model_dir):
    cfg = RewardStudyConfig.quick(model_dir=model_dir, out=str(tmp_path / "study"))
    out = main(["--quick", "--model-dir", model_dir, "--out", cfg.out])  # the CLI
    root = Path(cfg.out)
    assert out["setup"] == {"image_size": SIZE, "camera": "workspace", "max_steps": STEPS, "stride": STRIDE}
    table = (root / "results.md").read_text()
    for col in ("precision", "recall", "kappa", "frame AUC", "TP", "FP", "FN", "TN"):
        assert f"| {col} |" in table.splitlines()[0]
    for name in ("real-only", "bridged"):
        for split in ("real", "imagined"):
            assert f"| {name} | held-out {split} |" in table
            r = out["reports"][name][split]
            assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == r["episodes"] == cfg.heldout_episodes
    results = json.loads((root / "results.json").read_text())
    assert results["classifiers"]["real-only"]["steps"] == results["classifiers"]["bridged"]["steps"] == 10
    assert results["classifiers"]["bridged"]["args"]["weights"] == [1.0, 1.0]
    assert json.loads((root / "config.json").read_text())["resolved"]["stride"] == STRIDE
    seeds = [e.meta["seed"] for e in iter_episodes(root / "data" / "imagined_heldout", decode_frames=False)]
    assert seeds == [700, 701]
    gap = results["domain_gap"]
    assert np.isfinite(gap["psnr"]) and gap["psnr"] < gap["psnr_copy_first"]  # a random Prophet imagines noise
    assert Path(gap["contact_sheet"]).exists() and "imagined vs real held-out frames: PSNR" in table
    weights = root / "classifier" / "bridged" / "classifier.pt"
    stamp = weights.stat().st_mtime_ns
    assert reward_study(cfg)["table"] == out["table"] and weights.stat().st_mtime_ns == stamp


def test_classifier_stage_with_the_default_log_dir_is_published_and_cached(tmp_path, real_dir):
    from lightning_prophrl.studies.reward import load_classifier, train_classifier

    out = tmp_path / "clf"
    first = train_classifier([real_dir], out, steps=2, batch_size=4, image_size=SIZE)
    assert (out / "classifier.pt").exists() and (out / "tb").is_dir() and not out.with_name("clf.partial").exists()
    assert train_classifier([real_dir], out, steps=2, batch_size=4, image_size=SIZE) == first  # cached
    assert load_classifier(out) is not None
