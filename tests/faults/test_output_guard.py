"""``guarded_output``: a failing block leaves its output directory as it found it (with real ShardWriter output)."""

from __future__ import annotations

import pytest

from lightning_prophrl.datamodules.converters import guarded_output
from lightning_prophrl.datamodules.shards import ShardWriter, iter_episodes
from tests.conftest import coded_episode, write_coded_dataset
from tests.faults.sources import snapshot


def test_created_directory_and_parents_are_removed_even_after_finished_shards(tmp_path):
    out = tmp_path / "a" / "b" / "ds"
    crash = pytest.raises(RuntimeError, match="simulator crashed")
    with crash, guarded_output(out), ShardWriter(out, "ds", max_count=1) as writer:
        writer.write(coded_episode("ds", 0, 5))
        writer.write(coded_episode("ds", 1, 5))  # shard 0 finished, index.json and stats.json written
        raise RuntimeError("simulator crashed")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_in_append_restores_existing_dataset(tmp_path):
    write_coded_dataset(tmp_path / "ds", "ds", episodes=3, length=5, per_shard=2)
    before = snapshot(tmp_path / "ds")
    writer = ShardWriter(tmp_path / "ds", "ds", max_count=1, append=True)
    with pytest.raises(KeyboardInterrupt), guarded_output(tmp_path / "ds"), writer:
        writer.write(coded_episode("ds", 10, 5))
        writer.write(coded_episode("ds", 11, 5))
        raise KeyboardInterrupt
    assert snapshot(tmp_path / "ds") == before
    assert [len(e) for e in iter_episodes(tmp_path / "ds")] == [5, 6, 7]


def test_resumable_command_keeps_finished_parts(tmp_path):
    """A corpus keeps its finished datasets (``done.json``) for the rerun; with none finished it is removed."""
    out = tmp_path / "corpus"
    with pytest.raises(ValueError), guarded_output(out, keep_if=lambda d: any(d.rglob("done.json"))):
        (out / "workspace" / "reach-v3").mkdir(parents=True)
        (out / "workspace" / "reach-v3" / "done.json").write_text("{}")
        raise ValueError("second dataset failed")
    assert (out / "workspace" / "reach-v3" / "done.json").is_file()
    with pytest.raises(ValueError), guarded_output(tmp_path / "c2", keep_if=lambda d: any(d.rglob("done.json"))):
        (tmp_path / "c2" / "workspace").mkdir(parents=True)
        raise ValueError("first dataset failed")
    assert not (tmp_path / "c2").exists()


def test_success_keeps_everything(tmp_path):
    with guarded_output(tmp_path / "ds"), ShardWriter(tmp_path / "ds", "ds") as writer:
        writer.write(coded_episode("ds", 0, 5))
    assert [e.key for e in iter_episodes(tmp_path / "ds")] == ["ds_00000"]
