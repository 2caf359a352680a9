"""SLURM pre-emption: save the whole training state and requeue the job at a batch boundary (docs/scale.md)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from typing_extensions import override


def hpc_checkpoint_path(folder: str | os.PathLike) -> Path:
    """``folder/hpc_ckpt_N.ckpt`` with ``N`` one more than the highest there (Lightning's ``ckpt_path="hpc"`` name)."""
    found = [
        int(m.group(1))
        for p in Path(folder).glob("hpc_ckpt_*.ckpt")
        if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
    ]
    return Path(folder) / f"hpc_ckpt_{max(found, default=0) + 1}.ckpt"


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for an array task, else ``$SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"SLURM_JOB_ID / SLURM_ARRAY_JOB_ID: {job!r} is not a SLURM job id")
    return job


class RequeueOnPreemption(L.Callback):
    """Answers SLURM's pre-emption signal by saving ``default_root_dir/hpc_ckpt_N.ckpt`` and requeueing the job.

    Active only when the trainer runs under Lightning's ``SLURMEnvironment`` with ``auto_requeue`` (``srun`` with
    ``SLURM_NTASKS`` set); elsewhere it does nothing. ``prophrl fit`` adds it to every fit.

    The signal handler only records that the signal came. At the end of the next training batch (the point where
    ``ModelCheckpoint`` also saves, so the saved loop counters resume exactly) every rank learns whether any rank was
    signalled (one boolean all-reduce per batch under DDP / FSDP), the loggers are flushed, the whole training state
    is saved, and rank 0 runs ``scontrol requeue <job id>``. SLURM then stops the job (SIGTERM: Lightning ends the step
    it is in) and starts it again with the same id. Installed before Lightning's own handler, which Lightning then
    leaves out: that one saves and calls ``scontrol`` inside the handler, which can interrupt a checkpoint being written
    or a logger holding its lock and hang the job instead of requeueing it. The signal's lead time
    (``--signal=SIGUSR1@90``) must cover one training step plus the save.

    Args:
        requeue: run ``scontrol requeue`` after saving (``False``: only save, e.g. to checkpoint on a signal sent by
            hand with ``scancel --signal=USR1``).
    """

    def __init__(self, requeue: bool = True) -> None:
        super().__init__()
        self.requeue = requeue
        self.signalled = False  # set by the handler, read at batch ends
        self.saved_path: Path | None = None
        self._signum: int | None = None
        self._previous: Any = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(env, SLURMEnvironment) or not env.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("RequeueOnPreemption: not in the main thread, so Lightning's own requeue handler is used")
            return
        self._signum = int(env.requeue_signal or signal.SIGUSR1)
        self._previous = signal.signal(self._signum, self._on_signal)
        self.signalled, self.saved_path = False, None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._signum is None or self.saved_path is not None:
            return
        signalled = self.signalled
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        rank_zero_info(f"Pre-emption signal {self._signum}: saving at step {trainer.global_step}")
        for logger in trainer.loggers:
            logger.save()
        # rank 0 names the file for all ranks (under a sharded strategy every rank writes into it)
        path = trainer.strategy.broadcast(hpc_checkpoint_path(trainer.default_root_dir), src=0)
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_info(f"Saved the pre-emption checkpoint {path}")
        if self.requeue and trainer.is_global_zero:
            self._requeue()

    @staticmethod
    def _requeue() -> None:
        job = slurm_job_id()
        try:
            code = subprocess.call(["scontrol", "requeue", job])
        except FileNotFoundError:
            rank_zero_warn(f"scontrol is not on PATH: SLURM job {job} was not requeued; resubmit it to resume")
            return
        if code == 0:
            rank_zero_info(f"Requeued SLURM job {job}")
        else:
            rank_zero_warn(f"scontrol requeue {job} failed with exit code {code}; resubmit the job to resume")

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous)
            self._signum, self._previous = None, None
