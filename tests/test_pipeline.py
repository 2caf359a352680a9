import json

import pytest

from lightning_prophrl.pipeline import DemoConfig, run, updates_to_reach


def test_updates_to_reach():
    rows = [{"step": 0, "success": 0.2}, {"step": 10, "success": 0.25}, {"step": 20, "success": 0.4}]
    assert updates_to_reach(rows, 0.3) == 20 and updates_to_reach(rows, 0.5) is None


@pytest.mark.slow
def test_demo_quick_runs_every_stage_writes_the_table_and_resumes(tmp_path):
    cfg = DemoConfig.quick(out=str(tmp_path / "demo"))
    out = run(cfg)
    table = (tmp_path / "demo" / "results.md").read_text()
    assert "| SFT (3 demos)" in table and "sim_fagrpo_flowscale" in table and "sim_fagrpo " in table
    assert (tmp_path / "demo" / "success_vs_updates.png").stat().st_size > 1000
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    rl = res["sim_fagrpo_flowscale"][0]
    assert rl["updates"] == cfg.rl_updates and rl["train_env_steps"] > 0 and rl["eval"][0]["step"] == 0
    assert len(rl["eval"]) == 2  # before training and after the last update
    assert list((tmp_path / "demo" / "tb").iterdir())
    # cached stages: a rerun resumes without retraining and gives the same table
    assert run(cfg)["table"] == out["table"]
