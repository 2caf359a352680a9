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


@pytest.mark.slow
def test_demo_quick_world_model_variant_reports_gate_guard_and_real_interactions(tmp_path):
    from pathlib import Path

    import torch
    import yaml

    from lightning_prophrl.models.prophet import Prophet

    cfg_yaml = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/prophet/model_tiny.yaml").read_text())
    torch.manual_seed(0)
    prophet = Prophet(**{**cfg_yaml["init_args"], "action_chunk_length": 2, "history_length": 4,
                         "history_scale_frames": [1, 1, 2]})  # fmt: skip
    prophet.save_pretrained(tmp_path / "prophet")
    out = tmp_path / "demo"
    cfg = DemoConfig.quick(out=str(out), variants=["wm_fagrpo_flowscale"], wm_model_dir=str(tmp_path / "prophet"),
                           wm_stats_dir=str(out / "data" / "target_sft"))  # fmt: skip
    run(cfg)
    res = json.loads((out / "results.json").read_text())["wm_fagrpo_flowscale"][0]
    assert res["train_env_steps"] == 0 and res["real_interactions"] > 0
    assert {"kappa", "confusion"} <= set(res["gate"]) and len(res["guard"]) >= 1
    assert res["eval"][-1]["step"] == res["updates"]
    assert "wm_fagrpo_flowscale" in (out / "results.md").read_text()
