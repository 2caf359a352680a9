"""dataset_stats / inspect_dataset on coded shards whose pixels and actions are known."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import STATS_FILE
from lightning_prophrl.datamodules.inspect import dataset_stats, inspect_dataset
from lightning_prophrl.datamodules.shards import ShardWriter
from tests.conftest import coded_episode, write_coded_dataset


def test_dataset_stats_recomputes_from_actions(tmp_path):
    path = tmp_path / "coded"
    write_coded_dataset(path, "coded", episodes=6, length=10, per_shard=4)
    truth = ActionStats.compute([coded_episode("coded", i, 10 + i % 3).actions for i in range(6)])
    written = json.loads((path / STATS_FILE).read_text())
    (path / STATS_FILE).unlink()

    stats = dataset_stats(path)
    assert (path / STATS_FILE).exists() and not list(path.glob("*.tmp"))
    for k in ("mean", "std", "q01", "q99", "min", "max"):
        np.testing.assert_allclose(stats[k], getattr(truth, k), rtol=1e-6, atol=1e-7)
    assert stats["count"] == 10 * 6 + 6 and stats["mask"] == written["mask"]
    assert stats["extra"] == {"dataset": "coded", "episodes": 6, "success_rate": 0.5, "mean_length": 11.0}
    assert json.loads((path / STATS_FILE).read_text()) == stats

    tampered = dict(stats, mean=[9.0] * 14)
    (path / STATS_FILE).write_text(json.dumps(tampered))
    assert dataset_stats(path)["mean"] == [9.0] * 14  # an existing file is trusted unless recompute=True
    np.testing.assert_allclose(dataset_stats(path, recompute=True)["mean"], truth.mean, rtol=1e-6, atol=1e-7)


def test_inspect_counts_and_contact_sheet(tmp_path):
    path = tmp_path / "mixed"
    with ShardWriter(path, "mixed", max_count=2) as w:
        for i in range(5):
            ep = coded_episode("mixed", i, 12 + 2 * i, size=16, success=i < 2)
            ep.meta["instruction"] = "open" if i % 2 else "close"
            w.write(ep)
    png = tmp_path / "sheet" / "sheet.png"
    report = inspect_dataset(path, out_png=png, n_episodes=3, n_frames=4)

    assert report["episodes"] == 5 and report["frames"] == sum(12 + 2 * i for i in range(5))
    assert report["length"] == {"min": 12, "mean": 16.0, "max": 20}
    assert report["success_rate"] == pytest.approx(0.4)
    assert report["instructions"] == {"close": 3, "open": 2}
    assert report["frame_size"] == [16, 16] and report["datasets"] == ["mixed"] and report["fps"] == [10]
    assert report["actions"]["mask"] == [0, 1, 2, 6] and report["actions"]["count"] == report["frames"]
    assert report["actions"]["min"][1] == 0.0 and report["actions"]["max"][1] == 4.0  # actions[:, 1] = episode index
    assert report["stats_json"] is True

    sheet = cv2.imread(str(png))[..., ::-1]
    assert sheet.shape == (3 * 16, 4 * 16, 3) and report["contact_sheet"]["size"] == [48, 64]
    assert report["contact_sheet"]["episodes"] == ["mixed_00000", "mixed_00001", "mixed_00002"]
    for r in range(3):
        idx = np.linspace(0, 12 + 2 * r - 1, 4).round().astype(int)
        assert report["contact_sheet"]["frame_indices"][r] == idx.tolist()
        for c in range(4):
            cell = sheet[16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)]
            assert (cell[..., 0] == idx[c]).all() and (cell[..., 1] == r).all()  # pixels code (frame, episode)


def test_inspect_without_png_and_bad_args(coded_dataset):
    report = inspect_dataset(coded_dataset, n_episodes=2, n_frames=3)
    assert report["contact_sheet"]["path"] is None and report["episodes"] == 8
    assert report["contact_sheet"]["size"] == [2 * 16, 3 * 16]
    with pytest.raises(ValueError, match="n_episodes and n_frames"):
        inspect_dataset(coded_dataset, n_frames=0)
