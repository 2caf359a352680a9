"""Imagined datasets: Prophet's twins of real episodes (same start, same actions) and branch replays from real
states, written as shards that the reward datamodules read like real ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.shards import Episode, ShardWriter, iter_episodes
from lightning_prophrl.recipes.reward import NORM_MODE, check_setup, strided_segments, training_setup
from lightning_prophrl.stage_cache import run_stage


def _batches(episodes: Iterator[Episode], size: int) -> Iterator[list[Episode]]:
    """Consecutive episodes in groups of at most ``size`` with equal lengths (a rollout batch shares its length)."""
    group: list[Episode] = []
    for ep in episodes:
        if group and (len(group) == size or len(ep) != len(group[0])):
            yield group
            group = []
        group.append(ep)
    if group:
        yield group


def imagine_dataset(
    model_dir: str | Path,
    source_dir: str | Path,
    out_dir: str | Path,
    stride: int,
    num_steps: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    stats_from: str | Path | None = None,
    max_episodes: int | None = None,
) -> dict[str, Any]:
    """Imagine every episode of a real dataset with Prophet under its own actions; same schema, imagined frames.

    Each episode is strided and cut to whole segments (:func:`strided_segments`, ``model.config.action_chunk_length``
    frames per segment), its actions normalized as Prophet's training clips were, and rolled out from its first frame
    (``Prophet.rollout`` via ``rollout_episodes``, no memory before the first frame). The written episode keeps the key,
    actions, action mask, labels (``success_steps``, ``success``: the simulator's), state and poses of the strided real
    one; its frames are the imagined video (frame 0 is the real first frame). ``meta["imagined"]`` records the model,
    the settings and Prophet's own per-segment success probabilities.

    Args:
        model_dir: ``save_pretrained`` directory of the Prophet.
        source_dir: real episode shards.
        out_dir: output shard directory (cached: ``done.json``; built under ``<out_dir>.partial``).
        stride: simulator frames per model frame, as in the Prophet's training (checked when :func:`training_setup`
            finds its study configuration).
        num_steps: Euler steps per segment.
        seed: the noise of rollout batch ``j`` comes from ``seed + j`` (the output depends on ``batch_size`` too).
        batch_size: episodes per rollout call.
        stats_from: directory of the ``stats.json`` that normalized Prophet's training actions (default ``model_dir``).
        max_episodes: imagine only the first episodes.

    Returns:
        ``done.json``: ``episodes``, ``frames``, ``seconds``, the training setup found, and the arguments.
    """
    if stride < 1 or num_steps < 1 or batch_size < 1 or (max_episodes is not None and max_episodes < 1):
        raise ValueError(f"stride, num_steps, batch_size (and max_episodes) must be >= 1, got {stride}, {num_steps}, "
                         f"{batch_size}, {max_episodes}")  # fmt: skip
    stats_dir = Path(stats_from or model_dir)
    if not (stats_dir / K.STATS_FILE).exists():
        raise FileNotFoundError(f"{stats_dir / K.STATS_FILE} not found: pass stats_from=<the dataset whose stats.json "
                                "normalized the Prophet's training actions>")  # fmt: skip
    setup = training_setup(model_dir)
    check_setup(setup, stride=stride)
    args = {"model_dir": model_dir, "source_dir": source_dir, "stride": stride, "num_steps": num_steps, "seed": seed,
            "batch_size": batch_size, "stats_dir": stats_dir, "max_episodes": max_episodes}  # fmt: skip
    return run_stage(Path(out_dir), args, lambda tmp: _imagine(tmp, setup, **args))


def _imagine(tmp: Path, setup: dict[str, Any] | None, model_dir, source_dir, stride, num_steps, seed, batch_size,
             stats_dir, max_episodes) -> dict[str, Any]:  # fmt: skip
    """The body of :func:`imagine_dataset`: roll out and write into ``tmp``."""
    from itertools import islice

    from lightning_prophrl.callbacks.world_model import rollout_episodes
    from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec
    from lightning_prophrl.datamodules.robot import collate_clips
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.metrics import video_to_uint8
    from lightning_prophrl.models.prophet import Prophet

    t0 = time.perf_counter()
    model = Prophet.from_pretrained(model_dir).eval()
    chunk = int(model.config.action_chunk_length)
    check_setup(setup, chunk_len=chunk)
    stats = load_stats(stats_dir)
    cutters: dict[int, ClipIterable] = {}  # one clip cutter per episode length: exactly the training clips' inputs
    episodes = (strided_segments(ep, stride, chunk) for ep in islice(iter_episodes(source_dir), max_episodes))
    n_eps = n_frames = 0
    with ShardWriter(tmp, f"{Path(source_dir).name}_imagined", max_count=10) as writer:
        for j, group in enumerate(_batches(episodes, batch_size)):
            t, (h, w) = len(group[0]), group[0].frames.shape[1:3]
            if j == 0:
                check_setup(setup, image_size=h if h == w else (h, w))
                model.check_frame_size(h, w)
            if t not in cutters:
                cutters[t] = ClipIterable([DatasetSpec(str(source_dir))], 0, t - 1, None, True, 1, 1, 1, NORM_MODE,
                                          stats=[stats], eval_mode=True)  # fmt: skip
            batch = collate_clips([cutters[t].make_clip(ep, 0, 0) for ep in group])
            video, prob = rollout_episodes(model, batch, num_steps, seed + j, len(group),
                                           use_action_frames=bool(model.config.use_action_frames))  # fmt: skip
            frames = video_to_uint8(video).numpy()
            for b, ep in enumerate(group):
                imagined = {"model_dir": str(Path(model_dir).resolve()), "source": str(Path(source_dir).resolve()),
                            "stride": stride, "chunk_len": chunk, "num_steps": num_steps, "seed": seed + j,
                            "success_prob": None if prob is None else prob[b].tolist()}  # fmt: skip
                meta = {**ep.meta, "dataset": f"{ep.meta.get('dataset', 'real')}_imagined", "imagined": imagined}
                writer.write(Episode(ep.key, frames[b], ep.actions, ep.action_mask, meta, ep.state, ep.ee_poses,
                                     ep.extras))  # fmt: skip
                n_eps, n_frames = n_eps + 1, n_frames + t
    if n_eps == 0:
        raise ValueError(f"{source_dir}: no episode to imagine")
    return {"episodes": n_eps, "frames": n_frames, "seconds": time.perf_counter() - t0, "training_setup": setup}


def imagine_branch_dataset(
    model_dir: str | Path,
    source_dir: str | Path,
    out_dir: str | Path,
    task: str,
    segments: int,
    actions_per_segment: int,
    every: int,
    image_size: int = 64,
    camera: str = "workspace",
    num_steps: int = 1,
    seed: int = 0,
    batch_size: int = 30,
) -> dict[str, Any]:
    """Imagined *branch replays* of real episodes, labelled with the recorded frames' success (cached).

    From every ``every``-th frame of each episode of ``source_dir`` before its first success (``BranchStarts``, with
    the recorded memory and commanded target), Prophet replays the recorded actions for ``segments`` segments of
    ``actions_per_segment`` actions (``envs.branches.replay_branches``). Each branch becomes one episode of
    ``segments + 1`` imagined frames whose ``success_steps`` are the simulator's flags of the recorded frames they
    stand for, and whose ``meta["episode_success"]`` is the recorded episode's outcome (the value head's label).
    These are the frames RL on branches shows its reward model, from real states; the bridged classifier's
    imagined twins are whole-episode open-loop replays from the first frame (docs/history.md, round v8).

    Returns:
        ``done.json``: ``episodes``, ``positives`` (branches whose window succeeds), ``seconds`` and the arguments.
    """
    if min(segments, actions_per_segment, every, num_steps, batch_size) < 1:
        raise ValueError(f"segments, actions_per_segment, every, num_steps and batch_size must be >= 1, got "
                         f"{segments}, {actions_per_segment}, {every}, {num_steps}, {batch_size}")  # fmt: skip
    args = {"model_dir": str(model_dir), "source_dir": str(source_dir), "task": task, "segments": segments,
            "actions_per_segment": actions_per_segment, "every": every, "image_size": image_size, "camera": camera,
            "num_steps": num_steps, "seed": seed, "batch_size": batch_size}  # fmt: skip
    return run_stage(Path(out_dir), args, lambda tmp: _imagine_branches(tmp, **args))


def _imagine_branches(tmp: Path, model_dir, source_dir, task, segments, actions_per_segment, every, image_size, camera,
                      num_steps, seed, batch_size) -> dict[str, Any]:  # fmt: skip
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.envs.branches import replay_branches
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.metrics import video_to_uint8
    from lightning_prophrl.models.prophet import Prophet

    t0 = time.perf_counter()
    model = Prophet.from_pretrained(model_dir).eval()
    stride = actions_per_segment // int(model.config.action_chunk_length)
    prompts = PromptDataModule(datasets=[str(source_dir)], eval_fraction=0.0, num_prompts=batch_size,
                               image_size=image_size, branch_every=every, branch_margin=segments * actions_per_segment,
                               history_len=int(model.config.history_length), history_stride=stride)  # fmt: skip
    prompts.setup()
    poses = CommandedPoses.metaworld(task, image_size, camera) if model.config.use_action_frames else None
    env = WorldModelEnv(model, load_stats(model_dir), num_prompts=batch_size, group_size=1, max_segments=segments,
                        num_steps=num_steps, seed=seed, poses=poses, stop_at_success=False,
                        success_scorer=lambda v: torch.zeros(v.shape[0]))  # fmt: skip
    n = positives = 0
    h = actions_per_segment
    with ShardWriter(tmp, f"{Path(source_dir).name}_branches", max_count=50) as writer:
        for refs, _, keep in replay_branches(env, prompts, range(len(prompts.train_prompts)), h):
            frames = video_to_uint8(env.video()[:keep]).numpy()
            for j, (e, t) in enumerate(refs[:keep]):
                ep = prompts.branches.episodes[e]
                labels = [bool(ep.meta["success_steps"][t + k * h]) for k in range(segments + 1)]
                meta = {k: ep.meta[k] for k in ("dataset", "embodiment", "instruction", "fps")}
                meta.update(success=any(labels), success_steps=labels, branch_of=ep.key, branch_frame=t,
                            episode_success=bool(ep.success))  # fmt: skip
                actions = np.zeros((segments + 1, K.ACTION_DIM), np.float32)  # the classifier reads frames only
                writer.write(Episode(f"{ep.key}_b{t:04d}", frames[j], actions, ep.action_mask, meta))
                n, positives = n + 1, positives + int(any(labels))
    return {"episodes": n, "positives": positives, "seconds": time.perf_counter() - t0}
