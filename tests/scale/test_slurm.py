"""The SLURM templates (configs/slurm/*.sbatch) and Lightning's SLURM environment under ``prophrl fit``.

SLURM's side (the task variables, ``srun``, ``scontrol``) is simulated by ``slurm_sim``; every fit is a real
``prophrl fit`` process on CPU (gloo), on the tiny Prophet of configs/prophet/pretrain_tiny.yaml.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_coded_dataset
from tests.scale.slurm_sim import (
    ROOT,
    TEMPLATES,
    TINY,
    checkpoint_step,
    free_port,
    logged_steps,
    sbatch_options,
    slurm_env,
    template_configs,
    write_controller,
)

TIMEOUT = 120  # seconds for one fit process; each runs in about 10-20 s on one core
CASES = [(t, config, run_dir) for t in TEMPLATES for config, run_dir in template_configs(t)]  # defaults + alternatives


def launch(cmd: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr to the file ``log`` (a pipe could fill up and stall a DDP peer)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> str:
    """Four one-episode shards of 32 px coded clips: whole shards for each of two ranks."""
    return write_coded_dataset(tmp_path_factory.mktemp("slurm") / "clips", "coded", episodes=4, per_shard=1, size=32)


def test_every_stage_has_a_template():
    defaults = {template_configs(t)[0][0] for t in TEMPLATES}
    assert {"configs/rl/fagrpo_metaworld_sim.yaml", "configs/rl/fagrpo_prophet.yaml"} <= defaults
    assert any(c.startswith("configs/prophet/pretrain_2b") for c in defaults)
    assert any(c.startswith("configs/prophet/adapt") for c in defaults)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_asks_for_one_task_per_gpu_and_the_requeue_signal(template):
    assert subprocess.run(["bash", "-n", str(template)]).returncode == 0
    opts = sbatch_options(template)
    assert opts["gres"] == f"gpu:{opts['ntasks-per-node']}"
    assert opts["signal"] == "SIGUSR1@90" and opts["requeue"] == "" and opts["open-mode"] == "append"
    assert int(opts["nodes"]) >= 1 and opts["output"]


@pytest.mark.parametrize("template, config, run_dir", CASES, ids=[f"{t.name}:{Path(c).name}" for t, c, _ in CASES])
def test_template_command_line_parses(template, config, run_dir, tmp_path):
    # RUN_DIR is where the config writes: the requeued job looks for checkpoints there
    assert yaml.safe_load((ROOT / config).read_text())["trainer"].get("default_root_dir", run_dir) == run_dir
    # run the template as the batch script of a 2-node x 2-task job; srun runs the command line with --print_config
    run_dir = tmp_path / "run"
    older, newer = run_dir / "hpc_ckpt_1.ckpt", run_dir / "stage" / "version_0" / "checkpoints" / "last.ckpt"
    for i, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (1e9 + i, 1e9 + i))
    bin_dir = write_controller(tmp_path / "bin", srun_suffix="--print_config")
    env = slurm_env(2, 2, 0, free_port(), bin_dir, CONFIG=config, RUN_DIR=str(run_dir))
    run = subprocess.run(["bash", str(template)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = yaml.safe_load(run.stdout[run.stdout.index("\n") + 1 :])  # after the template's "job ... start" line
    trainer = printed["trainer"]
    # devices is typed list[int] | str | int: "2" stays a string, which Lightning reads as 2 devices
    assert trainer["num_nodes"] == 2 and str(trainer["devices"]) == "2" and trainer["accelerator"] == "gpu"
    assert trainer["default_root_dir"] == str(run_dir) and printed["ckpt_path"] == str(newer)
    if isinstance(trainer["logger"], dict):
        assert trainer["logger"]["init_args"]["save_dir"] == str(run_dir)
    savers = [c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert any(s["save_last"] for s in savers)  # a crash without the pre-emption signal resumes from last.ckpt
    if printed["model"]["init_args"].get("env"):  # FA-GRPO: whole groups per task, the global batch unchanged
        assert printed["data"]["init_args"]["num_prompts"] == 4
        assert printed["model"]["init_args"]["env"]["init_args"]["num_prompts"] == 1


def test_two_node_job_trains_one_model_with_two_ranks(clips, tmp_path):
    run_dir, port, max_steps = tmp_path / "run", free_port(), 4
    cmd = ["prophrl", "fit", *TINY, "--data.init_args.datasets", f"[{clips}]", "--trainer.max_steps", str(max_steps),
           "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir),
           "--model.init_args.export_dir", str(run_dir / "export"), "--trainer.strategy", "ddp",
           "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1"]  # fmt: skip
    logs = [tmp_path / f"task{rank}.out" for rank in range(2)]
    procs = [launch(cmd, slurm_env(2, 1, rank, port), tmp_path, logs[rank]) for rank in range(2)]
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
    outs = [log.read_text() for log in logs]
    for rank, (code, out) in enumerate(zip(codes, outs)):
        assert code == 0, out[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out  # both joined one process group of world size 2
    assert "SLURM auto-requeueing enabled" in outs[0]  # Lightning chose SLURMEnvironment(auto_requeue=True)
    (last,) = run_dir.rglob("last.ckpt")  # written by rank 0 only
    assert checkpoint_step(last) == max_steps
    assert logged_steps(last.parents[1], "train/loss") == list(range(max_steps))


def test_requeued_job_resumes_from_the_preemption_checkpoint(clips, tmp_path):
    run_dir, requeue_log, max_steps = tmp_path / "run", tmp_path / "requeue.log", 12
    bin_dir = write_controller(tmp_path / "bin", requeue_log=requeue_log)
    env = slurm_env(1, 1, 0, free_port(), bin_dir, CONFIG="configs/prophet/pretrain_tiny.yaml", RUN_DIR=str(run_dir))
    job = ["bash", str(ROOT / "configs/slurm/prophet_pretrain.sbatch"), *TINY[2:], "--data.init_args.datasets",
           f"[{clips}]", "--model.init_args.export_dir", str(tmp_path / "export"),
           "--trainer.max_steps", str(max_steps)]  # fmt: skip

    # 1. the job runs until its first checkpoint, then SLURM's pre-emption signal arrives (the job script execs
    # srun, srun the task: the signal goes to the fit itself), possibly while that checkpoint is still being written
    first = launch(job, env, ROOT, tmp_path / "job.out")
    deadline = time.monotonic() + TIMEOUT
    while not any(run_dir.rglob("last.ckpt")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, f"no checkpoint while the fit ran:\n{(tmp_path / 'job.out').read_text()[-3000:]}"
    os.kill(first.pid, signal.SIGUSR1)
    first.wait(timeout=TIMEOUT)
    out = (tmp_path / "job.out").read_text()
    assert "Pre-emption signal 10: saving at step" in out, out[-3000:]  # RequeueOnPreemption, not Lightning's
    assert requeue_log.read_text().split() == ["requeue", "4242"]  # Lightning asked the controller to requeue the job
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")  # saved in trainer.default_root_dir before the requeue
    preempted_at = checkpoint_step(hpc)
    assert preempted_at >= 2  # after the first checkpoint
    # the controller's SIGTERM stopped the fit before max_steps
    assert max(checkpoint_step(c) for c in run_dir.rglob("*.ckpt")) < max_steps

    # 2. the requeued job (same job id, same script and arguments) resumes from the newest checkpoint of RUN_DIR
    env["SLURM_RESTART_COUNT"] = "1"
    second = subprocess.run(job, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = re.search(r"resume from: (\S+)", second.stdout).group(1)
    assert f"Restoring states from the checkpoint path at {resumed}" in second.stdout + second.stderr
    start = checkpoint_step(resumed)
    assert start >= preempted_at  # the pre-emption checkpoint, or a periodic one saved after it
    newest = max(run_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert checkpoint_step(newest) == max_steps and newest.name == "last.ckpt"
    # the requeued job's TensorBoard version: one loss per step it trained, max_steps - start, none from step 0
    (first_log, second_log) = sorted((run_dir / "pretrain").iterdir())
    steps = logged_steps(second_log, "train/loss")
    assert len(steps) == max_steps - start and steps == sorted(steps) and steps[0] >= start
    assert logged_steps(first_log, "train/loss")[0] == 0


def test_a_signal_to_one_rank_saves_on_every_rank(clips, tmp_path):
    run_dir, port, max_steps = tmp_path / "run", free_port(), 12
    cmd = ["prophrl", "fit", *TINY, "--data.init_args.datasets", f"[{clips}]", "--trainer.max_steps", str(max_steps),
           "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir),
           "--model.init_args.export_dir", str(run_dir / "export"), "--trainer.strategy", "ddp",
           "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1",
           "--preemption.requeue", "false"]  # fmt: skip
    logs = [tmp_path / f"task{rank}.out" for rank in range(2)]
    procs = [launch(cmd, slurm_env(2, 1, rank, port), tmp_path, logs[rank]) for rank in range(2)]
    deadline = time.monotonic() + TIMEOUT
    while not any(run_dir.rglob("last.ckpt")) and procs[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs[1].poll() is None, logs[1].read_text()[-3000:]
    os.kill(procs[1].pid, signal.SIGUSR1)  # rank 1 only: rank 0 learns it at the next batch end
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
    assert codes == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    assert "Pre-emption signal 10: saving at step" in logs[0].read_text()  # printed by rank 0, which got no signal
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")  # one save (both ranks took part), no requeue: the fit ran to the end
    assert 2 <= checkpoint_step(hpc) < max_steps
    assert checkpoint_step(next(run_dir.rglob("last.ckpt"))) == max_steps
