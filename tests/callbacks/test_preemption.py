"""RequeueOnPreemption: a pre-emption signal that lands inside a checkpoint save is answered at the next batch end
with one whole-state checkpoint that resumes exactly, and one requeue request."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prophrl.callbacks import RequeueOnPreemption
from lightning_prophrl.callbacks.preemption import hpc_checkpoint_path, slurm_job_id
from tests.callbacks.test_ema import LinearRegression, loader

_SLURM = dict(SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
              SLURM_JOB_ID="77", SLURM_JOB_NAME="unit", SLURM_NODELIST="localhost")  # fmt: skip


class BatchCounter(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1


class SignalDuringSave(L.Callback):
    """Sends the requeue signal to this process while the first checkpoint is being written."""

    def __init__(self) -> None:
        self.sent_at: int | None = None
        self.handler_during_fit = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.sent_at is None:
            self.sent_at = trainer.global_step
            self.handler_during_fit = signal.getsignal(signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)  # Python runs the handler here, in the middle of the save


@pytest.fixture
def slurm(monkeypatch, tmp_path) -> Path:
    """A one-task SLURM job: the task's variables, and an ``scontrol`` that records its arguments."""
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    for key, value in _SLURM.items():
        monkeypatch.setenv(key, value)
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def fit(root: Path, callbacks: list, max_steps: int, ckpt_path: str | None = None) -> LinearRegression:
    model = LinearRegression()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=root, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=callbacks)  # fmt: skip
    trainer.fit(model, loader(n=6, batch_size=2), ckpt_path=ckpt_path)  # 3 batches an epoch: step 3 ends one
    return model


def test_signal_inside_a_save_is_answered_at_the_next_batch_end_and_resumes_exactly(slurm, tmp_path):
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # what the handler must be restored to
    try:
        requeue, sender = RequeueOnPreemption(), SignalDuringSave()
        saver = ModelCheckpoint(dirpath=tmp_path / "periodic", every_n_train_steps=2, save_top_k=-1)
        full = fit(tmp_path, [requeue, sender, saver], max_steps=6)  # the fake scontrol does not stop the job
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sender.handler_during_fit == requeue._on_signal  # installed instead of Lightning's own handler
    assert sender.sent_at == 2
    (hpc,) = tmp_path.glob("hpc_ckpt_*.ckpt")  # one save, at the end of the batch after the interrupted save
    assert hpc == requeue.saved_path == tmp_path / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=False)["global_step"] == 3
    assert slurm.read_text().split() == ["requeue", "77"]

    counter = BatchCounter()
    resumed = fit(tmp_path / "resumed", [counter], max_steps=6, ckpt_path=str(hpc))
    assert counter.batches == 3  # the remaining steps, none repeated
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_requeue_saves_only(slurm, tmp_path):
    requeue, sender = RequeueOnPreemption(requeue=False), SignalDuringSave()
    fit(tmp_path, [requeue, sender, ModelCheckpoint(dirpath=tmp_path / "periodic", every_n_train_steps=2)], 4)
    assert requeue.saved_path == tmp_path / "hpc_ckpt_1.ckpt" and requeue.saved_path.exists()
    assert not slurm.exists()


def test_outside_slurm_it_leaves_the_signal_alone(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            seen.append(signal.getsignal(signal.SIGUSR1))

    before = signal.getsignal(signal.SIGUSR1)
    requeue = RequeueOnPreemption()
    fit(tmp_path, [requeue, Probe()], max_steps=2)
    assert seen == [before, before] and requeue._signum is None
    assert not list(tmp_path.glob("hpc_ckpt_*"))


def test_checkpoint_numbering_and_job_ids(tmp_path, monkeypatch):
    assert hpc_checkpoint_path(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    for name in ("hpc_ckpt_1.ckpt", "hpc_ckpt_7.ckpt", "hpc_ckpt_x.ckpt", "hpc_ckpt_9.ckpt.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert hpc_checkpoint_path(tmp_path) == tmp_path / "hpc_ckpt_8.ckpt"
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert slurm_job_id() == "123"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "120")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "120_3"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "120; rm -rf /")
    with pytest.raises(ValueError, match="SLURM_ARRAY_JOB_ID"):
        slurm_job_id()
