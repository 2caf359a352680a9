"""Prophet's multi-task pretraining corpus from Meta-World v3 (``prophrl-data corpus``).

One dataset per (camera, task) under ``OUT/<camera>/<task>``, for every task of
:data:`lightning_prophrl.envs.task_split.PRETRAIN_TASKS` (never a held-out task). Every episode is a scripted expert
with a Gaussian action noise drawn per episode in ``[noise, noise_max]`` (graded: near-perfect runs, near-successes
and failures), run to the step cap without stopping at success; a share of the episodes also make smooth random
excursions (``ScriptedExpert.run``), so the corpus shows motions no expert makes. ``OUT/stats.json`` holds the action
statistics pooled over the whole corpus: one normalization of the unified action space, shipped with the model.

Datasets are generated in parallel processes (one simulator and renderer each) and cached: a rerun keeps every
finished dataset (``done.json``) and regenerates only the unfinished ones.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import STATS_FILE
from lightning_prophrl.envs.task_split import PRETRAIN_TASKS
from lightning_prophrl.stage_cache import is_done, load_done, mark_done


def _one_dataset(job: dict[str, Any]) -> dict[str, Any]:
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    path = Path(job.pop("out"))
    if not is_done(path):
        shutil.rmtree(path, ignore_errors=True)  # a partial dataset of an interrupted run
        mark_done(path, generate_metaworld(out=str(path), progress=False, stop_at_success=False, **job))
    return {"path": str(path), **load_done(path)}


def pooled_stats(dirs: Sequence[str | Path]) -> ActionStats:
    """Action statistics over every episode of ``dirs`` together (frames are not decoded)."""
    from lightning_prophrl.datamodules.shards import iter_episodes

    masks, chunks = [], []
    for d in dirs:
        for ep in iter_episodes(str(d), decode_frames=False):
            chunks.append(ep.actions)
            masks.append(ep.action_mask)
    if not chunks:
        raise ValueError(f"no episodes in {list(map(str, dirs))}")
    return ActionStats.compute(chunks, mask=np.any(np.stack(masks), 0))


def generate_corpus(
    out: str | Path,
    tasks: Sequence[str] = PRETRAIN_TASKS,
    cameras: dict[str, int] | None = None,
    noise: float = 0.1,
    noise_max: float = 1.0,
    excursion: float = 0.5,
    excursion_share: float = 0.5,
    size: int = 64,
    max_steps: int = 150,
    seed: int = 0,
    workers: int = 2,
) -> dict[str, Any]:
    """Write the pretraining corpus (see the module docstring); returns the ``corpus.json`` it writes
    (datasets and stats file relative to ``out``, frames, per-dataset success rates).

    Args:
        out: corpus directory.
        tasks: Meta-World v3 tasks; every one must be a pretraining task (held-out tasks are refused).
        cameras: episodes per task for each camera preset (default ``{"workspace": 30, "overview": 10}``).
        noise: lower end of the per-episode action-noise std.
        noise_max: upper end.
        excursion: rate of smooth random excursions in the episodes that get them.
        excursion_share: fraction of episodes with excursions.
        size: frame size in pixels.
        max_steps: step cap (episodes run to it).
        seed: first initial-state seed; episode ``i`` uses ``seed + i`` (seeds stay below 1000, as demo seeds).
        workers: parallel generator processes.
    """
    cameras = dict(cameras or {"workspace": 30, "overview": 10})
    outside = [t for t in tasks if t not in PRETRAIN_TASKS]
    if outside:
        raise ValueError(f"tasks {outside} are not pretraining tasks (lightning_prophrl.envs.task_split): the corpus "
                         "never includes a held-out task")  # fmt: skip
    if workers < 1 or not cameras or min(cameras.values()) < 1:
        raise ValueError(f"`workers` and the episodes per camera must be >= 1, got {workers}, {cameras}")
    out = Path(out)
    jobs = [dict(out=str(out / cam / task), tasks=[task], episodes=n, noise=noise, noise_max=noise_max, size=size,
                 camera=cam, max_steps=max_steps, seed=seed, excursion=excursion, excursion_share=excursion_share)
            for cam, n in cameras.items() for task in tasks]  # fmt: skip
    if workers == 1:
        summaries = [_one_dataset(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            summaries = list(pool.map(_one_dataset, jobs))
    datasets = [s["path"] for s in summaries]
    stats = pooled_stats(datasets)
    stats.extra = {"datasets": len(datasets), "episodes": sum(s["episodes"] for s in summaries)}
    (out / STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=2))
    names = [str(Path(d).relative_to(out)) for d in datasets]
    rates = [s["tasks"][Path(s["path"]).name]["success_rate"] for s in summaries]
    info = {
        "datasets": names,
        "stats": STATS_FILE,
        "cameras": cameras,
        "tasks": list(tasks),
        "frames": sum(s["frames"] for s in summaries),
        "success_rate": dict(zip(names, rates)),
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=2))
    return info
