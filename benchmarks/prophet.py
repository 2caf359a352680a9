"""Benchmark of the embedded Prophet backbones on CPU, side by side: training step time, peak RSS, generation
throughput, and imagined vs real environment steps per second.

Measures, at 64x64, for each configuration of ``--configs`` (default both: ``configs/prophet/model_tiny.yaml``, the
Cosmos DiT with 8-frame chunks, and ``configs/prophet/model_unet.yaml``, the shipped U-Net with 1-frame chunks):

* one training step (``training_loss`` + backward + Adam) at batch ``--batch`` (16, the pretraining batch) with
  history and action frames, and the trained frames per second it amounts to;
* generated frames per second of ``generate`` with and without the history memory, for 1, 2 and 4 Euler steps
  (the success head's clean scoring pass included), and of a 3-segment ``rollout``;
* peak resident memory (``resource.getrusage``) after these model measurements (``peak_rss_mb``).

Then, in the same run, imagined vs real environment throughput at the demo's RL settings (``benchmarks/_envs.py``
has the details): a ``WorldModelEnv`` over each configuration with one-frame segments (``chunk_len`` 1; the DiT
with the demo's history of 8), random weights, commanded-pose action frames from
``CommandedPoses.metaworld("pick-place-v3", 64)``) and the real ``MetaWorldEnv("pick-place-v3", image_size=64)``
(rendering at chunk boundaries), both with ``num_prompts x group_size = 4 x 8 = 32`` envs stepped by the same
``(N, 4, 14)`` raw unified action chunks (4 simulator actions = one Prophet frame at stride 4), with 1 and 2 Prophet
sampling steps. Steps per second count simulator-equivalent actions: ``N * 4 * step calls / seconds`` for both
worlds. The issue's target is imagined >= 1/10 of real. ``peak_rss_mb_with_envs`` is the peak RSS at the end.

The last line of the output is one JSON object (rates are medians over the rounds). ``--quick`` (3 repetitions,
8 timed env step calls, one round) takes under a minute at one thread (47 s on a 2-core machine shared with
three training processes).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prophet.py --quick
    .venv/bin/python benchmarks/prophet.py [--configs model_unet.yaml] [--threads 2] [--prompts 4 --group 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
import yaml  # noqa: E402

from lightning_prophrl import constants as K  # noqa: E402
from lightning_prophrl.models.prophet import Prophet  # noqa: E402
from lightning_prophrl.studies.prophet import prophet_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _envs import env_throughput, format_throughput  # noqa: E402
from _machine import run_info  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "prophet"


def make_batch(batch: int, length: int, size: int, history: int) -> dict:
    """A synthetic training batch with every optional key (frames in [-1, 1], one camera per sample)."""
    g = torch.Generator().manual_seed(0)
    ee = torch.zeros(batch, length, 2, 7)
    ee[:, :, 0, :3] = torch.tensor([0.0, 0.0, 1.0]) + 0.05 * torch.randn(batch, length, 3, generator=g)
    ee[:, :, 0, 3] = 1.0
    k = torch.tensor([[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]])
    return {
        K.COND_FRAME: torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
        K.FUTURE: torch.rand(batch, length, 3, size, size, generator=g) * 2 - 1,
        K.ACTIONS: torch.randn(batch, length, 14, generator=g),
        K.ACTION_MASK: torch.ones(batch, 14, dtype=torch.bool),
        K.HISTORY: torch.rand(batch, history, 3, size, size, generator=g) * 2 - 1,
        K.HISTORY_MASK: torch.ones(batch, history, dtype=torch.bool),
        K.EE_POSES: ee,
        K.GRIPPER: torch.rand(batch, length, 2, generator=g),
        K.CAMERA_K: k.expand(batch, 3, 3).clone(),
        K.CAMERA_EXTR: torch.eye(4).expand(batch, 4, 4).clone(),
        K.HAS_CAMERA: torch.ones(batch, dtype=torch.bool),
        K.CLIP_SUCCESS: torch.tensor([1.0, 0.0]).repeat(batch)[:batch],
    }


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_train(model: Prophet, batch: dict, reps: int) -> float:
    """Median seconds of one training step (loss, backward, Adam) on ``batch``."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss, _ = model.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, reps)


def bench_generate(model: Prophet, batch: dict, steps: int, memory: bool, reps: int) -> float:
    """Generated frames per second of ``generate`` with ``steps`` Euler steps, with or without the history."""
    model.eval()
    history = batch[K.HISTORY] if memory else None
    frames = batch[K.FUTURE].shape[0] * batch[K.FUTURE].shape[1]
    seconds = timed(
        lambda: model.generate(batch[K.COND_FRAME], batch[K.ACTIONS], history=history, num_steps=steps), reps
    )
    return frames / seconds


def bench_config(name: str, args: argparse.Namespace, reps: int, segments: int, rounds: int) -> dict:
    """Every measurement of the module docstring for one model YAML of ``configs/prophet``."""
    kwargs = yaml.safe_load((CONFIGS / name).read_text())["init_args"]
    torch.manual_seed(0)
    with_memory = Prophet(**kwargs)
    without_memory = Prophet(**{**kwargs, "history_length": 0})
    length = kwargs["action_chunk_length"]
    batch = make_batch(args.batch, length, args.size, kwargs["history_length"])
    result = {
        "backbone": with_memory.config.backbone,
        "chunk_length": length,
        "history_length": kwargs["history_length"],
        "params": with_memory.num_parameters(),
        "train_step_s": bench_train(with_memory, batch, reps),
        "train_step_s_no_memory": bench_train(without_memory, batch, reps),
    }
    result["train_frames_per_s"] = args.batch * length / result["train_step_s"]
    for steps in (1, 2, 4):
        result[f"gen_fps_memory_{steps}step"] = bench_generate(with_memory, batch, steps, True, reps)
        result[f"gen_fps_no_memory_{steps}step"] = bench_generate(without_memory, batch, steps, False, reps)
    chunks = batch[K.ACTIONS][:, None].expand(-1, 3, -1, -1)
    seconds = timed(lambda: with_memory.rollout(batch[K.COND_FRAME], chunks, num_steps=2), 1 if args.quick else 3)
    result["rollout_fps_memory_2step"] = args.batch * 3 * length / seconds
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"== {name}")
    for key, value in result.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    if not args.no_envs:
        # one Prophet frame per 4-action policy chunk (the demo's stride); the DiT keeps the demo's history of 8
        wm = {**kwargs, "action_chunk_length": 1}
        if wm.get("backbone", "cosmos") == "cosmos":
            wm = prophet_config(args.size, 1, 8)
        envs = env_throughput(image_size=args.size, num_prompts=args.prompts, group_size=args.group, chunk_len=4,
                              wm_chunk_len=1, history_len=wm["history_length"], num_steps=(1, 2), segments=segments,
                              rounds=rounds, prophet_kwargs=wm)  # fmt: skip
        print(format_throughput(envs))
        result["envs"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in envs.items()}
        result["peak_rss_mb_with_envs"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    """Parse the arguments, run the measurements, print them and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions, 8 timed env calls, 1 round (~1 min)")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (model and environments)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--configs", default="model_tiny.yaml,model_unet.yaml", help="model YAMLs in configs/prophet")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--prompts", type=int, default=4, help="envs: P prompts")
    parser.add_argument("--group", type=int, default=8, help="envs: G rollouts per prompt")
    parser.add_argument("--segments", type=int, default=None, help="envs: timed step calls (default 36, quick 8)")
    parser.add_argument("--rounds", type=int, default=None, help="envs: episodes per world (default 3, quick 1)")
    parser.add_argument("--no-envs", action="store_true", help="skip the imagined vs real environment comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 10
    segments = args.segments or (8 if args.quick else 36)
    rounds = args.rounds or (1 if args.quick else 3)
    t_start = time.perf_counter()

    results = {}
    for name in [c for c in args.configs.split(",") if c]:
        results[name] = bench_config(name, args, reps, segments, rounds)
    result = {"frame_size": args.size, "batch": args.batch, "threads": torch.get_num_threads(), "configs": results}
    result.update({"torch": torch.__version__, **run_info(t_start)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
