import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from lightning_prophrl.datamodules.shards import iter_episodes
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
    # a finished RL stage made with other settings is refused, naming its file and the setting, and left as it was
    done = tmp_path / "demo" / "rl" / "sim_fagrpo" / "seed0" / "done.json"
    before = done.read_text()
    with pytest.raises(ValueError, match=rf"{done}.*lr: 3e-05 there, 0\.001 now.*--out"):
        run(replace(cfg, lr=1e-3))
    assert done.read_text() == before and json.loads(before)["settings"]["lr"] == cfg.lr
    # the paired re-evaluation reproduces the demo's own evaluations of the saved policies (same states, same noise)
    from lightning_prophrl.demo.evaluate import evaluate_checkpoint, paired_table

    n = cfg.eval_seeds
    sft = evaluate_checkpoint(cfg.out, "sft", 0, n)
    again = evaluate_checkpoint(cfg.out, "sim_fagrpo_flowscale", 0, n)
    assert sft["success"] == rl["eval"][0]["success"] and again["success"] == rl["eval"][-1]["success"]
    assert len(sft["per_seed"]) == n and "| sim_fagrpo_flowscale |" in paired_table({"sim_fagrpo_flowscale": {0: again}},
                                                                                   {0: sft})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="wm_fagrpo"):
        evaluate_checkpoint(cfg.out, "wm_fagrpo", 0, n)
    # a policy saved again is evaluated again (the same weights: the same outcomes)
    ckpt = Path(cfg.out) / "rl" / "sim_fagrpo_flowscale" / "seed0" / "policy.ckpt"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    fresh = evaluate_checkpoint(cfg.out, "sim_fagrpo_flowscale", 0, n)
    assert fresh["checkpoint_mtime_ns"] == ckpt.stat().st_mtime_ns != again["checkpoint_mtime_ns"]
    assert fresh["per_seed"] == again["per_seed"]
    # the demo's own paired table (cached: the re-evaluations above read the demo's files, equal to its evaluations)
    assert f"Paired on {cfg.paired_states} held-out states" in table
    assert "| sim_fagrpo_flowscale |" in table.split("Paired on")[1]


@pytest.mark.slow
def test_demo_quick_trains_prophet_then_reports_gate_guard_and_real_interactions(tmp_path):
    from lightning_prophrl.models.prophet import Prophet

    out = tmp_path / "demo"
    cfg = DemoConfig.quick(out=str(out), variants=["wm_fagrpo_flowscale", "wm_fagrpo_refresh", "wm_fagrpo_branch"])
    run(cfg)
    # the demo pretrained and adapted its own Prophet: one frame per policy chunk, the target's action statistics
    model_dir = out / "world_model" / "adapt_lora" / "model"
    prophet = Prophet.from_pretrained(model_dir)
    assert prophet.config.action_chunk_length == cfg.wm_chunk_len and (model_dir / "stats.json").exists()
    assert json.loads((out / "world_model" / "pretrain" / "done.json").read_text())["steps"] == cfg.wm_pretrain_steps
    res = json.loads((out / "results.json").read_text())
    report, wm = res["world_model_report"], res["wm_fagrpo_flowscale"][0]
    assert {"psnr", "psnr_copy_last", "psnr_shuffled", "flow_epe"} <= set(report)
    assert wm["train_env_steps"] == 0 and wm["real_interactions"] > 0
    assert {"kappa", "confusion"} <= set(wm["gate"]) and len(wm["guard"]) >= 1
    assert wm["eval"][-1]["step"] == wm["updates"]
    # the reward stage: real-only and bridged classifiers and the success head, scored against the simulator
    rewards = res["reward_report"]
    assert set(rewards["classifiers"]) == {"real-only", "bridged"}
    for by_split in rewards["classifiers"].values():
        assert set(by_split) == {"real", "imagined"} and by_split["real"]["episodes"] == cfg.reward_heldout_episodes
    # the refresh variant fine-tuned Prophet on the SFT policy's real rollouts and counts them as real interactions
    fresh = res["wm_fagrpo_refresh"][0]
    refresh = fresh["refresh"]
    assert refresh["episodes"] == cfg.wm_refresh_episodes and refresh["env_steps"] == cfg.wm_refresh_episodes * 40
    guard_steps = sum(g["real_env_steps"] for g in fresh["guard"])
    assert fresh["real_interactions"] == fresh["gate"]["real_env_steps"] + guard_steps + refresh["env_steps"]
    assert refresh["target_data"] == str(out / "world_model" / "data" / "target_train")
    # ... and retrained the bridged classifier on them and their imagined twins (the reward of that variant)
    classifier = json.loads((Path(refresh["classifier_dir"]) / "done.json").read_text())
    assert len(classifier["args"]["datasets"]) == 4 and classifier["args"]["datasets"][-1].endswith("rollouts_imagined")
    before = prophet.state_dict()
    after = Prophet.from_pretrained(refresh["model_dir"]).state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    # the branch variant started short imagined rollouts at the chunk boundaries of its refresh rollouts
    br = res["wm_fagrpo_branch-seg3"][0]  # the quick branches are 3 chunks (the default 10 is unnamed)
    assert br["branch"]["segments"] == 3 and br["refresh"]["episodes"] == cfg.wm_refresh_episodes
    assert 1 <= br["branch"]["starts"] <= cfg.wm_refresh_episodes * (40 - 3 * cfg.chunk_len) // cfg.chunk_len + 2
    assert br["updates"] == cfg.rl_updates and br["real_interactions"] > br["refresh"]["env_steps"]
    agree = br["branch"]["agreement"]
    assert agree["segments"] == 3 and agree["starts"] == min(2 * cfg.wm_check_seeds, br["branch"]["starts"])
    assert {"kappa", "precision", "recall", "real_rate"} <= set(agree["replay"]) and agree["policy"] is not None
    assert (
        br["wm_reward_signal"] == "success" and "Branch agreement, wm_fagrpo_branch" in (out / "results.md").read_text()
    )
    table = (out / "results.md").read_text()
    assert "wm_fagrpo_flowscale" in table and "World model (held-out target episodes" in table
    assert "wm_fagrpo_refresh" in table and "Closed-loop gate, wm_fagrpo_refresh" in table
    assert {"precision", "recall", "kappa"} <= set(wm["gate"]["reward_on_real"])  # the bridged reward on real episodes
    assert "Reward models vs the simulator" in table and "bridged classifier" in table
    # the branch-replay classifier is added to the cached refresh: trained on the rollouts and their branch replays
    res2 = run(replace(cfg, variants=["wm_fagrpo_branch"], wm_refresh_reward_data="branches"))["results"]
    br2 = res2["wm_fagrpo_branch-brclf-seg3"][0]
    assert br2["refresh"]["model_dir"] == br["refresh"]["model_dir"]  # the same refresh, not a second one
    clf = json.loads((Path(br2["refresh"]["classifier_dir"]) / "done.json").read_text())
    assert clf["args"]["datasets"][-1].endswith("rollouts_branches_seg3")  # the quick branches are 3 chunks
    branches = json.loads((Path(clf["args"]["datasets"][-1]) / "done.json").read_text())
    assert branches["episodes"] >= cfg.wm_refresh_episodes and branches["args"]["segments"] == cfg.wm_branch_segments
    # within-start contrast in the refresh: real SDE branches from recorded rollout states join the LoRA mixture
    res3 = run(replace(cfg, variants=["wm_fagrpo_branch"], wm_refresh_branch_starts=2, wm_refresh_branch_group=2))
    br3 = res3["results"]["wm_fagrpo_branch-refresh-br2x2-seg3"][0]["refresh"]
    real_branches = br3["branches"]
    assert real_branches["starts"] == 2 and real_branches["episodes"] == 4 and real_branches["branch_steps"] <= 4 * 12
    assert br3["env_steps"] == cfg.wm_refresh_episodes * 40 + real_branches["env_steps"]  # prefixes count as real
    mixture = json.loads((Path(br3["model_dir"]).parent / "done.json").read_text())["datasets"]
    assert [d["weight"] for d in mixture] == [0.5, 0.25, 0.25] and mixture[-1]["path"].endswith("branches")
    assert br3["model_dir"] != br["refresh"]["model_dir"]
    # FlowScale on branches shares the branch refresh; on-policy starts: after update 1 the current policy's real
    # rollouts (after the refresh's seeds, counted as real interactions) become the starts of update 2
    res4 = run(replace(cfg, variants=["wm_fagrpo_branch_flowscale"], wm_onpolicy_starts_every=1,
                       wm_onpolicy_starts_episodes=2))["results"]  # fmt: skip
    br4 = res4["wm_fagrpo_branch_flowscale-seg3-onpolicy1x2"][0]
    assert br4["refresh"]["model_dir"] == br["refresh"]["model_dir"] and br4["updates"] == cfg.rl_updates
    (starts,) = br4["onpolicy_starts"]
    assert starts["update"] == 1 and starts["starts"] >= 1 and starts["env_steps"] == 2 * 40
    first = 6000 + cfg.wm_refresh_episodes
    assert sorted(int(ep.meta["seed"]) for ep in iter_episodes(starts["dir"])) == [first, first + 1]
    guard_steps = sum(g["real_env_steps"] for g in br4["guard"])
    assert br4["real_interactions"] == br4["gate"]["real_env_steps"] + guard_steps + br4["refresh"]["env_steps"] + 80
    # keeping the guard's best real check: the kept policy is policy.ckpt, the last update's is saved and paired too
    res5 = run(replace(cfg, variants=["wm_fagrpo_branch"], wm_guard_keep_best=True))
    kb = res5["results"]["wm_fagrpo_branch-seg3-keepbest"][0]
    checks = {g["update"]: g["real_success"] for g in kb["guard"]}
    assert kb["kept_update"] == max(checks, key=lambda u: (checks[u], -u))  # the best check, the earlier on ties
    last = out / "rl" / "wm_fagrpo_branch-seg3-keepbest" / "seed0" / "policy_last.ckpt"
    assert last.exists() == (kb["kept_update"] != kb["updates"])
    if last.exists():
        assert "| wm_fagrpo_branch-seg3-keepbest@last |" in res5["table"]
        evaluated = json.loads((out / "studies" / "evaluate" / "wm_fagrpo_branch-seg3-keepbest@last_seed0_n4_from1000.json")
                               .read_text())  # fmt: skip
        assert evaluated["checkpoint"] == str(last)
    if kb["kept_update"] == 0:  # the check before the first update kept: the policy is the SFT policy's weights
        kept_w = torch.load(last.with_name("policy.ckpt"), weights_only=False)["state_dict"]
        sft_w = torch.load(out / "sft" / "seed0" / "sft.ckpt", weights_only=False)["state_dict"]
        shared = [k for k in sft_w if k.startswith("policy.") and k in kept_w]
        assert shared and all(torch.equal(kept_w[k], sft_w[k]) for k in shared)
    # the value head: a classifier of the refresh rollouts' eventual success grades branches cut without a success,
    # here also trained on real branches of 2 starts x 2, run to the episode's end and labelled with their own outcome
    res6 = run(replace(cfg, variants=["wm_fagrpo_branch"], wm_reward_signal="graded", wm_value=True,
                       wm_value_branches=2, wm_refresh_branch_group=2))["results"]  # fmt: skip
    vh = res6["wm_fagrpo_branch-graded-seg3-valuebr2x2"][0]
    assert vh["refresh"]["model_dir"] == br["refresh"]["model_dir"]  # the value branches leave the refresh alone
    value = json.loads((Path(vh["value_head"]) / "done.json").read_text())
    assert value["args"]["label"] == "outcome" and value["args"]["datasets"][:2] == clf["args"]["datasets"]
    replays = list(iter_episodes(value["args"]["datasets"][1], decode_frames=False))
    sources = {ep.key: ep.success for ep in iter_episodes(value["args"]["datasets"][0], decode_frames=False)}
    assert replays and all(ep.meta["episode_success"] == sources[ep.meta["branch_of"]] for ep in replays)
    vb = vh["value_branches"]
    assert value["args"]["datasets"][2] == str(Path(vb["out"]).resolve()) and vb["starts"] == 2 and vb["episodes"] == 4
    real = list(iter_episodes(vb["out"], decode_frames=False))
    assert len(real) == 4 and all(len(ep.meta["success_steps"]) == cfg.max_steps + 1 for ep in real)  # to the end
    assert all(ep.meta["episode_success"] == ep.success for ep in real)  # starts precede any success of the source
    guard_steps = sum(g["real_env_steps"] for g in vh["guard"])
    assert vh["real_interactions"] == (vh["gate"]["real_env_steps"] + guard_steps + vh["refresh"]["env_steps"]
                                       + vb["env_steps"])  # fmt: skip
    # the within-start study reuses the run: G real and G imagined branches from the same recorded states
    from lightning_prophrl.studies.branches import WithinStartConfig, run_within_start, saved_table

    study = WithinStartConfig(out=str(out), seed=0, segments=2, starts=3, group_size=2, num_prompts=2)
    ws = run_within_start(study)
    assert ws["starts"] == 3 and ws["group_size"] == 2 and len(ws["real_rate_per_start"]) == 3
    assert ws["real_branch_steps"] <= 3 * 2 * 2 * cfg.chunk_len
    assert ws["real_env_steps"] == ws["real_branch_steps"] + 2 * sum(ws["start_frames"])  # + the replayed prefixes
    assert ws["max_state_drift"] < 1e-4 and ws["first_action_max_diff"] < 1e-4  # both worlds start from one state
    assert (out / "studies" / "within_start" / f"{study.name}.json").exists() and run_within_start(study) == ws
    assert saved_table(out).count("\n| 0 | 2 | all | 0.7 | success | refresh | 3 x 2 |") == 1
    valued = run_within_start(replace(study, reward_signal="graded", value=True, real_segments=4))
    assert valued["real_segments"] == 4 and valued["segments"] == 2 and "value_on_real_pair_auc" in valued
    assert valued["value_head"].endswith("value_seg2")  # trained for the study's own branch length
    assert valued["real_branch_steps"] <= 3 * 2 * 4 * cfg.chunk_len
    # ... or by the head that also saw real branches run to the end (the RL run's branches, cached)
    valued_br = run_within_start(replace(study, reward_signal="graded", value=True, real_segments=4, value_branches=2))
    assert valued_br["value_head"].endswith("value_seg2_value_branches2x2") and valued_br["pairs"] == valued["pairs"]
    assert 0 <= valued_br["value_branch_starts_measured"] <= 2
    one = run_within_start(replace(study, reward_signal="graded", value=True, value_branches=1))  # made by the study
    made = Path(one["value_head"]).parent / "value_branches1x2"
    assert json.loads((made / "done.json").read_text())["starts"] == 1  # ... with the demo's action statistics
    assert (made / "stats.json").read_text() == (
        out / "world_model" / "adapt_lora" / "model" / "stats.json"
    ).read_text()
    with pytest.raises(ValueError, match="--value-branches"):
        WithinStartConfig(out=str(out), value_branches=2)
    with pytest.raises(ValueError, match="--real-segments"):
        WithinStartConfig(out=str(out), segments=3, real_segments=2)


def test_results_table_compares_runs_at_the_configured_budget():
    from lightning_prophrl.pipeline import eval_at, results_table

    long_run = {"seed": 0, "updates": 60, "train_env_steps": 600,
                "eval": [{"step": s, "success": v, "train_env_steps": 10 * s}
                         for s, v in [(0, 0.2), (20, 0.3), (40, 0.4), (60, 0.9)]]}  # fmt: skip
    assert eval_at(long_run["eval"], 50)["step"] == 40
    with pytest.raises(ValueError, match="no evaluation"):
        eval_at(long_run["eval"][1:], 10)
    table = results_table(DemoConfig(rl_updates=40), {"sim_fagrpo": [long_run]})
    row = next(line for line in table.splitlines() if line.startswith("| sim_fagrpo"))
    assert "0.400" in row and "| 40 |" in row and "400" in row and "0.900" not in row


def test_refresh_refuses_bad_settings_before_any_rollout(tmp_path):
    from lightning_prophrl.pipeline import stage_refresh

    cfg = DemoConfig.quick(out=str(tmp_path), wm_model_dir=str(tmp_path / "m"))
    with pytest.raises(ValueError, match="--wm-target-data"):
        stage_refresh(cfg, "unused.ckpt", 0, tmp_path / "refresh")
    bad = DemoConfig.quick(out=str(tmp_path), wm_model_dir="m", wm_target_data="d", wm_refresh_reward_steps=0)
    with pytest.raises(ValueError, match="wm_refresh_reward_steps"):
        stage_refresh(bad, "unused.ckpt", 0, tmp_path / "refresh")
    assert not (tmp_path / "refresh").exists()


def test_demo_cli_refuses_a_target_task_that_is_also_pretrained_on(tmp_path, capsys):
    from lightning_prophrl.pipeline import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--target-task", "reach-v3", "--pretrain-tasks", "reach-v3", "push-v3"])
    assert "--target-task reach-v3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--sft-demos", "0"])
    assert "--sft-demos" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_reward_signal_and_branch_settings_are_checked_and_name_the_run(tmp_path, capsys):
    from lightning_prophrl.pipeline import main, refresh_name, run_name

    for flag, value in (("--wm-reward-signal", "dense"), ("--wm-branch-segments", "0"), ("--wm-noise-level", "0"),
                        ("--wm-group-size", "1"), ("--wm-refresh-noise-level", "-1"),
                        ("--wm-refresh-branch-starts", "-1"), ("--wm-refresh-branch-group", "0"),
                        ("--wm-onpolicy-starts-every", "-1"), ("--wm-onpolicy-starts-every", "30"),
                        ("--wm-onpolicy-starts-episodes", "0"), ("--wm-beta-kl", "-0.1"),
                        ("--wm-value-branches", "-1")):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), flag, value])
        assert flag in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    # the names say what differs from the plainest RL inside Prophet (0/1 success, twins classifier, policy noise)
    plain = dict(wm_reward_signal="success", wm_refresh_reward_data="twins", wm_noise_level=None, wm_value=False,
                 wm_guard_keep_best=False)  # fmt: skip
    default = "wm_fagrpo_branch-graded-brclf-value-noise2-keepbest"
    assert run_name(DemoConfig(), "wm_fagrpo_branch") == default  # the demo's default
    assert run_name(DemoConfig(wm_value_branches=32), "wm_fagrpo_branch") == default.replace("value", "valuebr32x4")
    with pytest.raises(ValueError, match="--wm-value-branches"):
        DemoConfig(wm_value_branches=32, wm_value=False)
    graded = DemoConfig(**{**plain, "wm_reward_signal": "graded"})
    assert run_name(graded, "wm_fagrpo_branch") == "wm_fagrpo_branch-graded"
    assert run_name(graded, "sim_fagrpo") == "sim_fagrpo"  # the simulator's reward is its own success
    assert run_name(DemoConfig(**plain, wm_reward="success_head"), "wm_fagrpo") == "wm_fagrpo-success_head"
    explore = DemoConfig(**{**plain, "wm_noise_level": 2.0}, wm_group_size=16, wm_branch_segments=6)
    assert run_name(explore, "wm_fagrpo_branch") == "wm_fagrpo_branch-seg6-noise2-g16"
    assert run_name(replace(explore, wm_beta_kl=0.0), "wm_fagrpo") == "wm_fagrpo-noise2-g16-kl0"
    assert run_name(explore, "wm_fagrpo") == "wm_fagrpo-noise2-g16" and run_name(explore, "sim_fagrpo") == "sim_fagrpo"
    refresh = DemoConfig(**plain, wm_refresh_noise_level=1.5)
    assert refresh_name(refresh) == "refresh-noise1.5" and refresh_name(DemoConfig.quick()) == "refresh"
    assert run_name(refresh, "wm_fagrpo_branch") == "wm_fagrpo_branch-refresh-noise1.5"
    from lightning_prophrl.studies.branches import WithinStartConfig

    assert WithinStartConfig(out="x", starts=120, real_to_cap=True).name == "seed0_seg10_g8_n120_tocap"
    contrast = DemoConfig(
        **{**plain, "wm_noise_level": 2.0}, wm_refresh_branch_starts=64
    )  # the real branches use the RL noise
    assert refresh_name(contrast) == "refresh-br64x4-noise2"
    assert run_name(contrast, "wm_fagrpo_branch") == "wm_fagrpo_branch-refresh-br64x4-noise2-noise2"
    onpolicy = DemoConfig(**{**plain, "wm_noise_level": 2.0}, wm_onpolicy_starts_every=20, rl_updates=100)
    assert run_name(onpolicy, "wm_fagrpo_branch_flowscale") == "wm_fagrpo_branch_flowscale-noise2-onpolicy20x30"
    assert run_name(onpolicy, "wm_fagrpo") == "wm_fagrpo-noise2"  # whole episodes from first frames: no branch starts
    assert run_name(DemoConfig(wm_branch_segments=3, wm_guard_keep_best=False), "wm_fagrpo_branch") == (
        "wm_fagrpo_branch-graded-brclf-seg3-value-noise2"
    )
    with pytest.raises(
        ValueError, match=r"--wm-value \(on by default\) needs --wm-reward-signal graded.*--no-wm-value"
    ):
        DemoConfig(wm_reward_signal="success")
    DemoConfig(wm_reward_signal="success", wm_value=False)  # success within the branch alone
    DemoConfig(wm_reward_signal="success", variants=["sim_fagrpo", "wm_fagrpo"])  # no branch variant, no value head
    from lightning_prophrl.pipeline import refresh_owner

    assert refresh_owner("wm_fagrpo_branch_flowscale") == "wm_fagrpo_branch" == refresh_owner("wm_fagrpo_branch")


def test_the_last_update_of_a_run_is_its_final_policy_unless_a_kept_check_is_saved_beside_it(tmp_path):
    from lightning_prophrl.demo.evaluate import run_checkpoint

    run_dir = tmp_path / "rl" / "wm_fagrpo_branch" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "policy.ckpt").touch()
    assert run_checkpoint(tmp_path, "wm_fagrpo_branch@last", 1) == run_dir / "policy.ckpt"  # kept = last
    (run_dir / "policy_last.ckpt").touch()
    assert run_checkpoint(tmp_path, "wm_fagrpo_branch@last", 1) == run_dir / "policy_last.ckpt"
    assert run_checkpoint(tmp_path, "wm_fagrpo_branch", 1) == run_dir / "policy.ckpt"
    assert run_checkpoint(tmp_path, "sft", 1) == tmp_path / "sft" / "seed1" / "sft.ckpt"


def test_a_run_recorded_before_a_setting_existed_is_reused_only_at_that_settings_default(tmp_path):
    from lightning_prophrl.demo.config import cached_rl_run, rl_settings
    from lightning_prophrl.stage_cache import mark_done

    cfg = DemoConfig(out=str(tmp_path))
    older = {k: v for k, v in rl_settings(cfg).items() if k != "wm_value_branches"}  # made before the setting
    mark_done(tmp_path / "run", {"updates": 40, "settings": older})
    assert cached_rl_run(cfg, tmp_path / "run")["updates"] == 40  # the default is what the run was made with
    with pytest.raises(ValueError, match="wm_value_branches: None there, 24 now"):
        cached_rl_run(replace(cfg, wm_value_branches=24), tmp_path / "run")
    with pytest.raises(ValueError, match="lr: "):  # a recorded setting still has to match
        cached_rl_run(replace(cfg, lr=1e-3), tmp_path / "run")


def test_paired_table_counts_states_won_and_lost_against_sft():
    from lightning_prophrl.demo.evaluate import paired_table

    sft = {0: {"success": 0.5, "per_seed": [1, 0, 1, 0]}, 1: {"success": 0.25, "per_seed": [0, 0, 1, 0]}}
    rl = {0: {"success": 0.75, "per_seed": [1, 1, 1, 0]}, 1: {"success": 0.25, "per_seed": [1, 0, 0, 0]}}
    row = next(line for line in paired_table({"rl": rl}, sft).splitlines() if line.startswith("| rl"))
    # 2 won / 1 lost: P(split at least that uneven | fair coin) = 2 * (1 + 3) / 8 = 1
    assert "0.750 / 0.250" in row and "+25.0 / +0.0 (mean +12.5)" in row and row.endswith("| 2 / 1 | 1 |")


def test_paired_runs_add_the_last_update_only_where_it_was_saved(tmp_path):
    from lightning_prophrl.demo.evaluate import run_checkpoint
    from lightning_prophrl.demo.report import paired_runs

    run = tmp_path / "rl" / "wm" / "seed0"
    run.mkdir(parents=True)
    (run / "policy.ckpt").write_bytes(b"")
    assert paired_runs(tmp_path, "wm", 0) == ["wm"]  # "wm@last" would name policy.ckpt again: not evaluated twice
    (run / "policy_last.ckpt").write_bytes(b"")
    assert paired_runs(tmp_path, "wm", 0) == ["wm", "wm@last"]
    assert run_checkpoint(tmp_path, "wm@last", 0) == run / "policy_last.ckpt"


def test_sign_test_is_the_exact_two_sided_binomial_tail():
    from lightning_prophrl.demo.evaluate import sign_test

    assert sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0
    assert sign_test(10, 0) == pytest.approx(2 / 2**10) and sign_test(0, 10) == sign_test(10, 0)
    assert sign_test(13, 3) == pytest.approx(2 * sum(math.comb(16, i) for i in range(4)) / 2**16)  # 0.0213


@pytest.mark.slow
def test_demo_world_model_is_the_shipped_prophet_adapted_to_the_held_out_target(tmp_path):
    from lightning_prophrl.assets import shipped_prophet_path
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.pipeline import stage_world_model

    cfg = DemoConfig(out=str(tmp_path), variants=["wm_fagrpo"], max_steps=12, wm_target_episodes=2,
                     wm_eval_episodes=1, wm_adapt_steps=2, wm_batch=2)  # fmt: skip
    model_dir, stats_dir, report = stage_world_model(cfg)
    assert model_dir == stats_dir and sorted(p.name for p in (tmp_path / "world_model" / "data").iterdir()) == [
        "adapt",
        "eval",
    ]
    shipped = Path(shipped_prophet_path())
    assert (Path(model_dir) / "stats.json").read_text() == (shipped / "stats.json").read_text()
    base, adapted = Prophet.from_pretrained(shipped).state_dict(), Prophet.from_pretrained(model_dir).state_dict()
    changed = {k for k in base if not torch.equal(base[k], adapted[k])}
    # LoRA (fused into the export) moved the backbone's adapted layers' weights, never its norms or biases; the
    # conditioning modules (action encoders, success head) are trained in full
    from lightning_prophrl.modules.prophet_adapt import CONDITIONING_PREFIXES

    backbone = {k for k in changed if not k.startswith(CONDITIONING_PREFIXES)}
    assert backbone and all(k.endswith(".weight") and "norm" not in k for k in backbone)
    assert report["segments"] == cfg.max_queries == 3 and report["episodes"] == 1
    # the refresh mixes the adaptation episodes in
    from lightning_prophrl.pipeline import with_world_model

    assert with_world_model(cfg, model_dir, stats_dir, True).wm_target_data == str(
        tmp_path / "world_model" / "data" / "adapt"
    )


def test_shipped_world_model_refuses_a_pretraining_target_or_another_image_size(tmp_path, capsys):
    from lightning_prophrl.pipeline import main

    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--target-task", "push-v3", "--pretrain-tasks", "reach-v3"])
    assert "--target-task push-v3 was in the shipped Prophet's pretraining" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--wm-base shipped needs image_size 64"):
        DemoConfig(image_size=32)
    DemoConfig(image_size=32, wm_base="pretrain")  # the tiny path works at any size
    DemoConfig(image_size=32, variants=["sim_fagrpo"])  # no world model, no constraint
    assert not any(tmp_path.iterdir())


def test_noise_draws_name_the_run_and_reduce_the_reward(tmp_path, capsys):
    from types import SimpleNamespace

    from lightning_prophrl.pipeline import main, run_name, wm_reward_model

    cfg = DemoConfig(wm_draws=2, wm_draws_reduce="min")
    assert run_name(cfg, "wm_fagrpo_branch") == "wm_fagrpo_branch-graded-brclf-value-noise2-draws2min-keepbest"
    assert run_name(cfg, "sim_fagrpo") == "sim_fagrpo"
    batch = SimpleNamespace(info={"draw_score": torch.tensor([[0.9, 0.1], [0.5, 0.8]])})
    assert torch.allclose(wm_reward_model(cfg)(batch), torch.tensor([0.5, 0.0]))  # min of the floored draws
    assert wm_reward_model(DemoConfig(wm_reward_signal="success", wm_value=False)) is None  # the env's 0/1 success
    for flag, value in (("--wm-draws", "0"), ("--wm-draws-reduce", "max")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), flag, value])
        assert flag in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_reward_stage_runs_only_when_an_rl_reward_reads_its_classifier():
    from lightning_prophrl.pipeline import needs_reward_stage

    assert not needs_reward_stage(DemoConfig())  # the default branch variant trains its own branch-replay classifier
    assert not needs_reward_stage(DemoConfig(variants=["sim_fagrpo"]))
    assert needs_reward_stage(DemoConfig(variants=["wm_fagrpo_branch", "wm_fagrpo"]))  # no refresh: the stage's one
    assert needs_reward_stage(DemoConfig(wm_refresh_reward_data="twins"))  # retrained on the stage's data
    assert not needs_reward_stage(DemoConfig(variants=["wm_fagrpo"], wm_reward="success_head"))


def test_table10_preset_and_cli_flags(tmp_path, capsys):
    from lightning_prophrl.pipeline import main

    cfg = DemoConfig.table10(seeds=[4])
    assert cfg.seeds == [4] and {"sim_fagrpo", "wm_fagrpo_branch_flowscale"} <= set(cfg.variants)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--quick", "--table10"])
    assert "--table10" in capsys.readouterr().err


@pytest.mark.slow
def test_sft_worker_trains_and_evaluates_in_its_own_process(tmp_path):
    from lightning_prophrl.pipeline import stage_data, stage_sft, start_sft_worker
    from lightning_prophrl.stage_cache import is_done

    cfg = DemoConfig.quick(out=str(tmp_path / "demo"), threads=2)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text(json.dumps(asdict(cfg)))
    data = stage_data(cfg)
    child = start_sft_worker(cfg, data)
    child.join()
    assert child.exitcode == 0 and is_done(tmp_path / "demo" / "sft" / "seed0")
    ckpt = tmp_path / "demo" / "sft" / "seed0" / "sft.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    assert stage_sft(cfg, data, 0) == str(ckpt) and ckpt.stat().st_mtime_ns == mtime  # cached, not retrained
    evaluated = json.loads((tmp_path / "demo" / "studies" / "evaluate" / "sft_seed0_n4_from1000.json").read_text())
    assert len(evaluated["per_seed"]) == cfg.paired_states and evaluated["checkpoint_mtime_ns"] == mtime


@pytest.mark.slow
def test_refresh_rollouts_are_cached_and_remade_for_other_action_statistics(tmp_path):
    from lightning_prophrl.assets import shipped_prophet_path
    from lightning_prophrl.pipeline import refresh_rollouts, stage_data, stage_sft

    cfg = DemoConfig.quick(out=str(tmp_path / "demo"), wm_refresh_episodes=2)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text(json.dumps(asdict(cfg)))
    data = stage_data(cfg)
    ckpt = stage_sft(cfg, data, 0)
    shipped, own = str(shipped_prophet_path()), data["sft"]
    assert (Path(shipped) / "stats.json").read_text() != (Path(own) / "stats.json").read_text()
    out = refresh_rollouts(cfg, ckpt, 0, tmp_path / "refresh", shipped)
    done = (out / "done.json").stat().st_mtime_ns
    assert (out / "stats.json").read_text() == (Path(shipped) / "stats.json").read_text()
    assert json.loads((out / "done.json").read_text())["episodes"] == 2
    assert refresh_rollouts(cfg, ckpt, 0, tmp_path / "refresh", shipped) == out
    assert (out / "done.json").stat().st_mtime_ns == done  # cached
    refresh_rollouts(cfg, ckpt, 0, tmp_path / "refresh", own)  # other statistics: made again with them
    assert (out / "stats.json").read_text() == (Path(own) / "stats.json").read_text()


def test_every_setting_is_a_flag_and_a_printed_config_reruns_as_it_was(tmp_path, capsys):
    """``prophrl demo``: one flag per ``DemoConfig`` field; ``--print_config`` prints the resolved settings, which
    ``--config`` reads back to the same settings (flags still win); an unknown key names the file and the key."""
    import dataclasses

    import yaml

    from lightning_prophrl.pipeline import main

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for f in dataclasses.fields(DemoConfig):
        flag = f"--{f.name.replace('_', '-')}"
        assert flag in help_text, flag

    main(["--quick", "--out", str(tmp_path / "q"), "--seeds", "3", "4", "--wm-noise-level", "1.5", "--no-parallel",
          "--print_config"])  # fmt: skip
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    want = DemoConfig.quick(out=str(tmp_path / "q"), seeds=[3, 4], wm_noise_level=1.5, parallel=False)
    assert values == dataclasses.asdict(want)
    config = tmp_path / "demo.yaml"
    config.write_text(printed)
    main(["--config", str(config), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == values
    main(["--config", str(config), "--rl-updates", "7", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["rl_updates"] == 7

    config.write_text("rl_update: 3\n")
    with pytest.raises(SystemExit):
        main(["--config", str(config)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(config) in err[0] and "'rl_update'" in err[0]
    assert not (tmp_path / "q").exists()  # nothing ran


@pytest.mark.slow
def test_seed_processes_give_the_numbers_of_seeds_run_one_after_another(tmp_path):
    """``seed_workers``: the seeds run in processes of their own, and every result (SFT, RL, evaluations) equals a
    sequential run at the same thread count; the table (paired evaluation included) is read from their caches."""

    def strip_seconds(x):
        if isinstance(x, dict):
            return {k: strip_seconds(v) for k, v in x.items() if k != "seconds"}
        return [strip_seconds(v) for v in x] if isinstance(x, list) else x

    kw = dict(variants=["sim_fagrpo"], seeds=[0, 1])
    one = run(DemoConfig.quick(out=str(tmp_path / "one"), threads=1, **kw))
    two = run(DemoConfig.quick(out=str(tmp_path / "two"), threads=2, seed_workers=2, **kw))
    assert strip_seconds(two["results"]) == strip_seconds(one["results"])
    assert [r["seed"] for r in two["results"]["sim_fagrpo"]] == [0, 1]
    assert two["table"] == one["table"]
    timing = (tmp_path / "two" / "results.md").read_text()
    assert "seeds in 2 processes (wall)" in timing and "rl sim_fagrpo (in the seed processes)" in timing
    assert "paired evaluation (in the seed processes)" in timing  # the main process's table only read the cache
    assert sorted(p.name for p in (tmp_path / "two" / "seed_workers").iterdir()) == ["worker0.json", "worker1.json"]


def test_a_failed_seed_process_is_named_and_raises(tmp_path):
    from lightning_prophrl.pipeline import run_seed_workers

    cfg = DemoConfig.quick(out=str(tmp_path), seeds=[0, 1], seed_workers=2, threads=2)
    with pytest.raises(RuntimeError, match=r"prophrl-demo-seeds0 \(seeds \[0\], exit code 1\).*--seed-workers 1"):
        run_seed_workers(cfg, {"sft": str(tmp_path / "no_such_data")})
    with pytest.raises(ValueError, match="--seed-workers"):
        DemoConfig.quick(seed_workers=0)
