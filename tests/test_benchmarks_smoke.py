"""Smoke tests of the benchmark helpers (``benchmarks/_envs.py``, ``benchmarks/pipeline.py``) at tiny sizes."""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark module by name with ``benchmarks/`` on ``sys.path`` (spawned children inherit it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_random_chunks_round_trip_to_metaworld_actions(bench):
    from lightning_prophrl.actions import unified_to_metaworld

    envs = bench("_envs")
    chunks = envs.random_unified_chunks(steps=3, num_envs=2, chunk=4, seed=0)
    assert chunks.shape == (3, 2, 4, 14)
    mw = unified_to_metaworld(chunks)
    assert mw.shape == (3, 2, 4, 4) and np.abs(mw).max() <= 1 + 1e-5
    np.testing.assert_allclose(mw, unified_to_metaworld(envs.random_unified_chunks(3, 2, 4, seed=0)))


@pytest.mark.slow
def test_env_throughput_counts_every_executed_action(bench):
    envs = bench("_envs")
    res = envs.env_throughput(image_size=16, num_prompts=1, group_size=2, history_len=2, num_steps=(1,), segments=2)
    assert res["num_envs"] == 2 and res["real_steps_per_s"] > 0 and res["imagined_steps_per_s_1step"] > 0
    assert res["ratio_1step"] == pytest.approx(res["imagined_steps_per_s_1step"] / res["real_steps_per_s"])
    assert res["target_met"] == (res["ratio_1step"] >= envs.TARGET_RATIO)
    assert "WorldModelEnv 1step" in envs.format_throughput(res)
    with pytest.raises(ValueError, match="500"):
        envs.env_throughput(segments=200)


@pytest.mark.slow
def test_run_stage_returns_result_time_and_peak_memory_from_a_child(bench, tmp_path):
    pipe = bench("pipeline")
    result, stats = pipe.run_stage("factorial", math.factorial, 5, threads=1, log_dir=tmp_path)
    assert result == 120 and stats["s"] >= 0 and stats["peak_rss_mb"] >= stats["import_rss_mb"] > 0
    with pytest.raises(RuntimeError, match="stage negative failed"):
        pipe.run_stage("negative", math.factorial, -1, threads=1, log_dir=tmp_path)


@pytest.mark.slow
def test_stage_benchmark_runs_the_demo_s_world_model_stages_in_order(bench, tmp_path):
    from lightning_prophrl.pipeline import DemoConfig

    pipe = bench("pipeline")
    cfg = DemoConfig.quick(out=str(tmp_path / "demo"), variants=["wm_fagrpo_branch"])
    (tmp_path / "logs").mkdir()
    stages, table = pipe.run_stages(cfg, tmp_path / "logs")
    # the reward stage runs before RL, and the refresh finds the target data the demo's Prophet was adapted on
    assert list(stages)[:4] == ["data", "world_model", "reward", "sft_seed0"] and "rl_wm_fagrpo_branch_seed0" in stages
    assert stages["rl_wm_fagrpo_branch_seed0"]["updates"] == cfg.rl_updates and "| wm_fagrpo_branch |" in table


@pytest.mark.slow
def test_imagination_benchmark_times_both_success_sources_on_the_same_frames(bench):
    res = bench("imagination").imagination_cost("window-open-v3", segments=1, rounds=1, num_prompts=1, group_size=2)
    assert res["rollouts"] == 2 and res["ms_per_step_head"] > 0 and res["ms_per_step_scorer"] > 0
    assert res["head_over_scorer"] == pytest.approx(res["ms_per_step_head"] / res["ms_per_step_scorer"], rel=0.01)
