"""Installing a pretraining export as the shipped Prophet: files, model card from the run's own records, limits."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter

from lightning_prophrl import constants as K
from lightning_prophrl.assets.ship import ship, training_summary
from lightning_prophrl.models.prophet import Prophet
from tests.models.test_prophet_unet import TINY


@pytest.fixture
def run(tmp_path):
    export, run_dir, corpus = tmp_path / "export", tmp_path / "run", tmp_path / "corpus"
    torch.manual_seed(0)
    Prophet(**TINY).save_pretrained(export)
    stats = {k: [0.0] * 14 for k in ("mean", "q01", "min")} | {k: [1.0] * 14 for k in ("std", "q99", "max")}
    (export / K.STATS_FILE).write_text(json.dumps({**stats, "mask": [True] * 14, "count": 10}))
    for version, steps in ((0, range(0, 40, 10)), (1, range(40, 70, 10))):  # an interrupted run, resumed
        writer = SummaryWriter(run_dir / "pretrain" / f"version_{version}")
        for s in steps:
            writer.add_scalar("train/loss", 1.0 / (s + 1), s, walltime=1000.0 * version + s)
        writer.close()
        cfg = {"data": {"init_args": {"batch_size": 16, "stride": 4, "history_len": 2}},
               "model": {"init_args": {"optimizer": {"init_args": {"lr": 3e-4, "weight_decay": 0.01}}}}}  # fmt: skip
        (run_dir / "pretrain" / f"version_{version}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    corpus.mkdir()
    (corpus / "corpus.json").write_text(json.dumps({"tasks": ["reach-v3"], "cameras": {"workspace": 2}, "frames": 50}))
    return export, run_dir, corpus


def test_training_summary_adds_the_segments_of_a_resumed_run(run):
    summary = training_summary(run[1])
    assert summary["steps"] == 61 and summary["wall_seconds"] == pytest.approx(30 + 20)
    assert summary["losses"]["train/loss"] == pytest.approx(1 / 61)
    upto = training_summary(run[1], until_step=50)  # the export's checkpoint; the run went on after it
    assert upto["steps"] == 50 and upto["wall_seconds"] == pytest.approx(30 + 0)
    assert upto["losses"]["train/loss"] == pytest.approx(1 / 41)


def test_ship_copies_the_model_and_writes_its_card(run, tmp_path):
    export, run_dir, corpus = run
    (tmp_path / "results.md").write_text("| set | model |\n|---|---|\n| eval | lora |\n")
    dest = ship(export, run_dir, corpus, tmp_path / "results.md", dest=tmp_path / "shipped")
    loaded = Prophet.from_pretrained(dest)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), Prophet.from_pretrained(export)
                                                 .state_dict().values()))  # fmt: skip
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "61 optimizer steps at batch 16" in card and "window-open-v3" in card and "| eval | lora |" in card
    assert "--trainer.max_steps 61" in card


def test_ship_refuses_an_incomplete_or_oversized_export(run, tmp_path):
    export, run_dir, corpus = run
    with pytest.raises(ValueError, match="--max-mb"):
        ship(export, run_dir, corpus, dest=tmp_path / "a", max_mb=1e-3)
    (export / K.STATS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="stats.json"):
        ship(export, run_dir, corpus, dest=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
