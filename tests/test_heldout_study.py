"""The held-out-task study on real Meta-World data: counterfactual sets share the evaluation starts, adaptation keeps
the pretrained action normalization, the reports cover every set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats
from lightning_prophrl.datamodules.shards import iter_episodes
from lightning_prophrl.envs.instructions import instruction_for
from lightning_prophrl.models.policy import FlowMatchingPolicy
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.recipes.heldout import CALIBRATION_SEED, calibrated
from lightning_prophrl.stage_cache import load_done
from lightning_prophrl.studies.heldout import (
    POLICY_SET,
    SETS,
    adapt,
    closed_loop_check,
    closed_loop_table,
    compare_models,
    heldout_data,
    main,
    results_table,
    task_readout,
    task_report,
)

UNET = dict(backbone="unet", codec="pixel", codec_kwargs={"factor": 1}, action_chunk_length=1, history_length=2,
            use_action_frames=False, success_hidden_dim=8,
            unet_kwargs={"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                         "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8,
                         "norm_num_groups": 4})  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    return heldout_data("window-open-v3", out, adapt_episodes=2, eval_episodes=2, cf_episodes=1, size=16,
                        max_steps=16)  # fmt: skip


def save_tiny_policy(data: dict[str, str], out: Path) -> ActionStats:
    """A small window-open policy on the adaptation set's action statistics, saved to ``out``; returns the stats."""
    stats = ActionStats.load(Path(data["adapt"]) / K.STATS_FILE)
    policy = FlowMatchingPolicy(action_dim=4, chunk_len=4, exec_horizon=2, state_dim=4,
                                instructions=[instruction_for("window-open-v3")], cond_dim=16, width=16, depth=1,
                                num_heads=2, num_steps=2, cnn_channels=(8, 8))  # fmt: skip
    policy.set_action_stats(stats, [0, 1, 2, 6])
    policy.save_pretrained(out)
    return stats


def test_only_heldout_tasks_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="not a held-out task"):
        heldout_data("reach-v3", tmp_path)


def test_counterfactual_sets_start_where_the_evaluation_starts_and_act_differently(data):
    ev, rnd, other = (next(iter(iter_episodes(data[k]))) for k in ("eval", "cf_random", "cf_expert"))
    assert np.array_equal(ev.frames[0], rnd.frames[0]) and np.array_equal(ev.frames[0], other.frames[0])
    assert not np.allclose(ev.actions, rnd.actions) and not np.allclose(ev.actions, other.actions)
    assert (
        rnd.meta["driver"] == "random" and other.meta["driver"] == "push-v3" and ev.meta["driver"] == "window-open-v3"
    )


def test_adaptation_keeps_the_pretrained_stats_and_reports_cover_every_set(data, tmp_path):
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained"
    Prophet(**UNET).save_pretrained(pretrained)
    stats = json.loads((Path(data["adapt"]) / K.STATS_FILE).read_text())
    stats["mean"] = [0.5 * v for v in stats["mean"]]  # pooled statistics differ from the task's own
    (pretrained / "stats.json").write_text(json.dumps(stats))
    model_dir = adapt(str(pretrained), data["adapt"], tmp_path / "lora", steps=3, batch_size=2)
    assert json.loads((tmp_path / "lora" / "model" / K.STATS_FILE).read_text()) == stats
    base, tuned = Prophet.from_pretrained(pretrained), Prophet.from_pretrained(model_dir)
    moved = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert any("conv" in n for n in moved)  # LoRA on the convolutions, fused into the exported weights
    report = task_report(model_dir, data, tmp_path / "report", num_segments=3)
    assert set(report) == set(SETS)
    for r in report.values():
        assert r["segments"] == 3 and np.isfinite([r["psnr"], r["psnr_copy_last"], r["dyn_psnr_shuffled"]]).all()
    table = results_table({"tasks": {"window-open-v3": {"zero_shot": [report], "lora": [report, report]}}})
    assert table.count("| cf_random |") == 5 and "±" in table
    table = compare_models({"base": (str(pretrained), 1), "lora": (model_dir, 2)}, "window-open-v3", tmp_path / "cmp",
                           data=data, num_segments=3, teacher_forced=True)  # fmt: skip
    assert table.count("| eval |") == 8 and "| eval | lora, shuffled actions |" in table
    assert "| eval | lora, one step ahead |" in table and "| eval | copy-previous (one step ahead) |" in table


def test_policy_set_and_end_effector_path_error(data, tmp_path):
    """A policy adds ``cf_policy`` (its own SDE rollouts, cached per policy and noise); the readout is fitted on the
    adaptation frames and every report then carries the end-effector path error of each video."""
    torch.manual_seed(0)
    stats = save_tiny_policy(data, tmp_path / "policy")
    root = Path(data["adapt"]).parent
    kw = dict(adapt_episodes=2, eval_episodes=2, cf_episodes=1, size=16, max_steps=16)
    sets = heldout_data("window-open-v3", root, policy=str(tmp_path / "policy"), **kw)
    ep = next(iter(iter_episodes(sets[POLICY_SET])))
    assert ep.meta["source"] == "policy-sde" and len(ep) == len(next(iter(iter_episodes(sets["eval"]))))
    assert load_done(sets[POLICY_SET])["recipe"]["noise_level"] == 2.0
    again = heldout_data("window-open-v3", root, policy=str(tmp_path / "policy"), policy_noise=0.5, **kw)
    assert load_done(again[POLICY_SET])["recipe"]["noise_level"] == 0.5  # another noise: made again
    readout, rmse = task_readout(sets, tmp_path / "readout", steps=10)
    assert np.isfinite(rmse) and task_readout(sets, tmp_path / "readout", steps=10)[1] == rmse  # cached
    model = tmp_path / "model"
    Prophet(**UNET).save_pretrained(model)
    stats.save(model / K.STATS_FILE)
    report = task_report(str(model), sets, tmp_path / "report", num_segments=3, ee_readout=readout)
    assert set(report) == {*SETS, POLICY_SET}
    for r in report.values():
        values = [r[f"ee_path_cm{s}"] for s in ("", "_copy_last", "_shuffled", "_no_memory")]
        assert np.isfinite(values).all() and min(values) >= 0
    table = results_table({"tasks": {"window-open-v3": {"zero_shot": [report]}},
                           "ee_readout_rmse_cm": {"window-open-v3": rmse}})  # fmt: skip
    assert "ee_path_cm" in table and f"| {POLICY_SET} | copy-last |" in table and "readout error" in table


def test_closed_loop_check_judges_imagined_episodes_with_the_success_head(data, tmp_path):
    """The policy's whole episodes in the simulator and inside the model from the same starts; the imagined outcome is
    the model's success head: forced to 'success' every imagined episode succeeds, and the confusion follows."""
    torch.manual_seed(0)
    stats = save_tiny_policy(data, tmp_path / "policy")
    model = Prophet(**UNET)
    with torch.no_grad():
        model.success_mlp[-1].bias.fill_(30.0)  # the head says 'success' whatever it sees
    model.save_pretrained(tmp_path / "model")
    stats.save(tmp_path / "model" / K.STATS_FILE)
    kw = dict(episodes=3, size=16, max_steps=16)
    res = closed_loop_check(str(tmp_path / "model"), "window-open-v3", str(tmp_path / "policy"), tmp_path / "cl", **kw)
    conf, n = res["confusion"], 3
    assert res["episodes"] == n and sum(conf.values()) == n and res["imagined_success"] == 1.0
    assert conf["both"] == round(res["real_success"] * n) and conf["imagined_only"] == n - conf["both"]
    assert res["real_env_steps"] == n * 16  # whole real episodes (run past any success)
    assert len(res["imagined_score"]) == n and min(res["imagined_score"]) > 0.99  # the head's graded score
    assert res["score_auc"] in (None, 0.5)  # equal scores rank no real success above a failure
    assert sum(step is not None for step in res["real_success_steps"]) == conf["both"]  # per real episode
    assert len(res["psnr_by_frame"]) > 1 and np.isfinite(res["psnr_by_frame"][0])
    done = tmp_path / "cl" / "done.json"
    mtime = done.stat().st_mtime_ns
    assert closed_loop_check(str(tmp_path / "model"), "window-open-v3", str(tmp_path / "policy"), tmp_path / "cl",
                             **kw) == load_done(tmp_path / "cl") and done.stat().st_mtime_ns == mtime  # fmt: skip
    table = closed_loop_table({"zero_shot": [res], "lora": [res, res]})
    assert f"| zero_shot | {conf['both']} / 3 | 3 / 3 | {conf['both']} / 3 |" in table and "| lora (seed 1) |" in table
    all_real = {
        **res,
        "confusion": {"both": 3, "real_only": 0, "imagined_only": 0, "neither": 0},
        "kappa": 1.0,
        "score_auc": None,
    }
    assert closed_loop_table({"lora": [all_real]}).endswith("| 0 | 0 | - | - | - | - | - |")  # nothing to agree on
    # calibration episodes, as many, from other starts (seeds CALIBRATION_SEED..): other frames, other divergence
    cal = closed_loop_check(str(tmp_path / "model"), "window-open-v3", str(tmp_path / "policy"), tmp_path / "cal",
                            **kw, calibration=n)  # fmt: skip
    calib_done = load_done(tmp_path / "cal" / "calibration")
    assert cal["calibration"]["episodes"] == n and cal["calibration"]["real_env_steps"] == n * 16
    assert calib_done["recipe"]["first_seed"] == CALIBRATION_SEED
    assert calib_done["psnr_by_frame"] != res["psnr_by_frame"]
    assert cal["confusion"] == conf and cal["psnr_by_frame"] == res["psnr_by_frame"]  # the evaluation episodes
    if cal["calibration"]["real_success"] in (0.0, 1.0):  # one real outcome only: no threshold can be fitted
        assert cal["calibration"]["fit"] is None and cal["fitted"] is None
    Prophet(**{**UNET, "success_head": False}).save_pretrained(tmp_path / "headless")
    with pytest.raises(ValueError, match="no success head"):
        closed_loop_check(str(tmp_path / "headless"), "window-open-v3", str(tmp_path / "policy"), tmp_path / "x", **kw)


def test_adaptation_mixture_holds_expert_and_policy_episodes_and_adapts(tmp_path):
    """``studies.adapt_mix``: the 20 adaptation episodes are noisy-expert ones and the policy's own SDE rollouts (from
    initial states apart from the evaluation ones); LoRA on the mixture moves the weights; stages are cached."""
    from lightning_prophrl.studies.adapt_mix import MIX_POLICY_SEED, run_mix

    torch.manual_seed(0)
    root = tmp_path / "out"
    data = heldout_data("window-open-v3", root / "data" / "window-open-v3", size=16, max_steps=16,
                        adapt_episodes=2, eval_episodes=2, cf_episodes=1)  # fmt: skip
    save_tiny_policy(data, tmp_path / "policy")
    pretrained = tmp_path / "pretrained"
    Prophet(**UNET).save_pretrained(pretrained)
    (pretrained / K.STATS_FILE).write_text((Path(data["adapt"]) / K.STATS_FILE).read_text())
    kw = dict(
        policy_episodes=3,
        size=16,
        max_steps=16,
        adapt_steps=2,
        closed_loop=2,
        report=False,
        batch_size=2,
        calibration=0,
    )
    res = run_mix(str(pretrained), "window-open-v3", str(tmp_path / "policy"), root, **kw)
    expert, own = (list(iter_episodes(d)) for d in res["mixture"])
    assert len(expert) == 17 and len(own) == 3 and Path(res["mixture"][1]).name == "adapt3_policy"
    assert {ep.meta["source"] for ep in own} == {"policy-sde"}
    assert sorted(ep.meta["seed"] for ep in own) == [MIX_POLICY_SEED, MIX_POLICY_SEED + 1, MIX_POLICY_SEED + 2]
    model_dir = root / "window-open-v3" / "lora_mix3_1_seed0" / "model"
    base, tuned = Prophet.from_pretrained(pretrained), Prophet.from_pretrained(model_dir)
    assert any(not torch.equal(p, base.state_dict()[n]) for n, p in tuned.state_dict().items())
    assert res["seeds"][0]["closed_loop"]["episodes"] == 2
    mtime = (model_dir.parent / "done.json").stat().st_mtime_ns
    assert run_mix(str(pretrained), "window-open-v3", str(tmp_path / "policy"), root, **kw) == res
    assert (model_dir.parent / "done.json").stat().st_mtime_ns == mtime


def test_the_threshold_fitted_on_calibration_episodes_is_applied_to_the_evaluation_scores():
    """The head over-calls success (every score above 0.5) but ranks: the cut fitted on the calibration check
    (between its real failures' and successes' scores) recovers the evaluation episodes' outcomes."""
    calib = {
        "episodes": 4,
        "real_env_steps": 600,
        "real_success": 0.5,
        "imagined_success": 1.0,
        "kappa": 0.0,
        "score_auc": 1.0,
        "imagined_score": [0.6, 0.7, 0.9, 0.95],
        "real_success_steps": [None, None, 40, 12],
    }
    check = {"episodes": 3, "imagined_score": [0.65, 0.92, 0.85], "real_success_steps": [None, 30, None]}
    out = calibrated(calib, check)
    assert out["calibration"]["fit"]["threshold"] == pytest.approx(0.8) and out["calibration"]["kappa"] == 0.0
    fitted = out["fitted"]
    assert fitted["threshold"] == pytest.approx(0.8) and fitted["imagined_success"] == pytest.approx(2 / 3)
    assert fitted["confusion"] == {"both": 1, "real_only": 0, "imagined_only": 1, "neither": 1}
    assert fitted["kappa"] == pytest.approx(0.4)  # p_o 2/3, p_e 5/9
    row = {
        **check,
        "confusion": fitted["confusion"],
        "real_success": 1 / 3,
        "imagined_success": 1.0,
        "kappa": 0.0,
        "score_auc": 0.5,
        **out,
    }
    assert closed_loop_table({"lora": [row]}).endswith("| 0.800 | 2 / 3 | 0.40 |")
    assert calibrated({**calib, "real_success_steps": [None] * 4}, check)["fitted"] is None  # one class: no fit


def test_compare_names_an_item_that_is_not_a_model_directory(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--compare", f"shipped (5,000 steps)={tmp_path}:1", "--out", str(tmp_path)])
    assert "--compare 'shipped (5': '' is not a save_pretrained directory" in capsys.readouterr().err
