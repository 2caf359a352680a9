"""Kill and resume of a real FA-GRPO run in the simulator: the resumed run trains the same prompts and logs the same
metrics, bit for bit, as the uninterrupted one."""

from pathlib import Path

import lightning as L
import pytest

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.prompts import PromptDataModule
from lightning_prophrl.envs.metaworld import MetaWorldEnv
from tests.modules.test_policy_rl_modules import TASK, rl_module, varied_reward


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(TASK, num_prompts=2, group_size=2, image_size=32, max_steps=12, exec_horizon=2)
    yield e
    e.close()


class Killed(Exception):
    pass


class Record(L.Callback):
    """Each update's prompts and logged metrics; with ``kill_after``, checkpoint after that update and die."""

    def __init__(self, kill_after: int | None = None, path=None):
        self.kill_after, self.path = kill_after, path
        self.prompts: list[list[int]] = []
        self.metrics: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.prompts.append(batch[K.SEED].tolist())
        self.metrics.append({k: float(v) for k, v in sorted(trainer.callback_metrics.items())})
        if len(self.prompts) == self.kill_after:
            trainer.save_checkpoint(self.path)
            raise Killed


def fit(env, record: Record, ckpt_path=None):
    module = rl_module(env, reward_model=varied_reward, seed=3)
    dm = PromptDataModule(tasks=[TASK], train_seeds=(2000, 2010), eval_seeds=(1000, 1004), num_prompts=2,
                          updates_per_epoch=2, seed=1)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record])  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_a_killed_and_resumed_fa_grpo_run_logs_the_uninterrupted_runs_metrics(env, tmp_path):
    full = Record()
    fit(env, full)
    assert len(full.prompts) == 4 and full.metrics[-1]["rollout/updates"] == 4.0
    first = Record(kill_after=3, path=tmp_path / "k.ckpt")  # mid-epoch: the first update of epoch 1
    with pytest.raises(Killed):
        fit(env, first)
    resumed = Record()
    module = fit(env, resumed, ckpt_path=tmp_path / "k.ckpt")
    assert module.updates == 4
    assert first.prompts + resumed.prompts == full.prompts
    assert first.metrics + resumed.metrics == full.metrics  # exact floats: weights, optimizer, noise, prompts
    assert full.metrics[-1]["train/nonfinite_skips"] == 0.0 and full.metrics[-1]["train/skipped_update"] == 0.0


def _probe(tmp, *flags):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = Path(__file__).resolve().parent / "fa_grpo_kill_probe.py"
    return subprocess.Popen([sys.executable, str(script), "--dir", str(tmp), *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _rows(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_sigkilled_fa_grpo_run_resumes_from_last_and_logs_the_uninterrupted_runs_metrics(tmp_path):
    """A real SIGKILL once update 3 has started (its prompts drawn; ``last.ckpt`` holds update 2), then
    ``ckpt_path=last.ckpt``: updates 3 and 4 train the same prompts and log the same metrics, bit for bit, as the run
    that was never interrupted."""
    import os
    import signal
    import time

    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir()
    killed_dir.mkdir()
    full = _probe(full_dir)
    assert full.wait(timeout=600) == 0, full.stderr.read()[-2000:]

    victim = _probe(killed_dir, "--mark", "3")
    deadline = time.monotonic() + 600
    while not (killed_dir / "mark").exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()[-2000:]
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    before = _rows(killed_dir / "log.jsonl")
    assert len(before) == 2  # update 3 never finished

    resumed = _probe(killed_dir, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    assert _rows(killed_dir / "log.jsonl") == _rows(full_dir / "log.jsonl")  # prompts and metrics of updates 1..4
