"""A SLURM job simulated on one machine, for tests/scale/test_slurm.py.

The processes are real ``prophrl fit`` runs; only SLURM's own side is played by the test: the variables ``srun`` sets
in every task (``slurm_env``), and the ``srun`` and ``scontrol`` commands (``write_controller``), which cannot exist
on a machine without a SLURM controller.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "configs" / "slurm").glob("*.sbatch"))
# the tiny Prophet fit: configs/prophet/pretrain_tiny.yaml with the test's overrides
TINY = ["--config", str(ROOT / "configs/prophet/pretrain_tiny.yaml"),
        "--config", str(Path(__file__).with_name("pretrain_tiny_slurm.yaml"))]  # fmt: skip
# variables that would make Lightning pick another cluster environment, or a SLURM job this test runs inside
_FOREIGN = re.compile(r"^(SLURM_|TORCHELASTIC_)|^(RANK|LOCAL_RANK|GROUP_RANK|LOCAL_WORLD_SIZE|WORLD_SIZE|NODE_RANK)$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_env(nodes: int, tasks_per_node: int, rank: int, port: int, bin_dir: Path | None = None, **extra: str) -> dict:
    """The environment ``srun`` gives task ``rank`` of a ``nodes x tasks_per_node`` job (one task per node-local GPU).

    Args:
        nodes, tasks_per_node: ``--nodes`` and ``--ntasks-per-node`` of the job.
        rank: the task's global rank (``SLURM_PROCID``); node ``rank // tasks_per_node``.
        port: ``MASTER_PORT`` (rank 0 listens on 127.0.0.1).
        bin_dir: put first on ``PATH`` (the fake ``srun`` / ``scontrol``); the venv's ``bin`` (``prophrl``) follows.
        extra: more variables (``CONFIG``, ``RUN_DIR``, ``SLURM_RESTART_COUNT``, ...).
    """
    env = {k: v for k, v in os.environ.items() if not _FOREIGN.search(k)}
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    env.update(
        PATH=os.pathsep.join(([str(bin_dir)] if bin_dir else []) + path),
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="prophet-test",  # not "bash" / "interactive": Lightning would not detect SLURM
        SLURM_NNODES=str(nodes),
        SLURM_NTASKS=str(nodes * tasks_per_node),
        SLURM_NTASKS_PER_NODE=str(tasks_per_node),
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank % tasks_per_node),
        SLURM_NODEID=str(rank // tasks_per_node),
        SLURM_NODELIST="localhost",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **extra,
    )
    return env


def write_controller(bin_dir: Path, srun_suffix: str = "", requeue_log: Path | None = None) -> Path:
    """Write the controller's commands into ``bin_dir``.

    * ``srun CMD...``: runs ``CMD... <srun_suffix>`` in place of the one task (the task's variables come from
      ``slurm_env``).
    * ``scontrol requeue JOB``: appends its arguments to ``requeue_log`` and, as the controller does on a requeue,
      sends SIGTERM to the job's task (its caller).
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "srun").write_text(f'#!/bin/sh\nexec "$@" {srun_suffix}\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{requeue_log}"\nkill -TERM "$PPID"\n')
    for name in ("srun", "scontrol"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def sbatch_options(template: Path) -> dict[str, str]:
    """The ``#SBATCH --key[=value]`` options of a template (value ``""`` for a flag)."""
    found = re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", template.read_text(), re.M)
    return {key: value for key, value in found}


def template_configs(template: Path) -> list[tuple[str, str]]:
    """``(CONFIG, RUN_DIR)`` pairs a template runs: its defaults, then the alternatives its comments name as
    ``CONFIG=... RUN_DIR=... sbatch ...``."""
    text = template.read_text()
    default = re.search(r"^CONFIG=\$\{CONFIG:-(\S+)\}", text, re.M).group(1)
    run_dir = re.search(r"^RUN_DIR=\$\{RUN_DIR:-(\S+)\}", text, re.M).group(1)
    return [(default, run_dir), *re.findall(r"^#\s+CONFIG=(\S+) RUN_DIR=(\S+) sbatch", text, re.M)]


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` a Lightning checkpoint was saved at."""
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def logged_steps(log_dir: Path, tag: str) -> list[int]:
    """The steps at which TensorBoard scalar ``tag`` was written under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]
