"""Benchmark of the tiny Prophet world model on CPU: training step time, peak RSS and generation throughput.

Measures, at 64x64 with the configuration of ``configs/prophet/model_tiny.yaml`` (8-frame action chunks):

* one training step (``training_loss`` + backward + Adam) at batch 2 with history and action frames;
* generated frames per second of ``generate`` with and without the history memory, for 1, 2 and 4 Euler steps
  (the success head's clean scoring pass included), and of a 3-segment ``rollout``;
* peak resident memory (``resource.getrusage``).

The last line of the output is one JSON object. ``--quick`` runs in well under a minute.

    .venv/bin/python benchmarks/prophet_model.py --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.models.prophet import Prophet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prophet" / "model_tiny.yaml"


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


def timed(fn, reps: int, warmup: int = 1) -> float:
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
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss, _ = model.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, reps)


def bench_generate(model: Prophet, batch: dict, steps: int, memory: bool, reps: int) -> float:
    model.eval()
    history = batch[K.HISTORY] if memory else None
    frames = batch[K.FUTURE].shape[0] * batch[K.FUTURE].shape[1]
    seconds = timed(
        lambda: model.generate(batch[K.COND_FRAME], batch[K.ACTIONS], history=history, num_steps=steps), reps
    )
    return frames / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 60 s)")
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 10

    kwargs = yaml.safe_load(CONFIG.read_text())["init_args"]
    torch.manual_seed(0)
    with_memory = Prophet(**kwargs)
    without_memory = Prophet(**{**kwargs, "history_length": 0})
    length = kwargs["action_chunk_length"]
    batch = make_batch(args.batch, length, args.size, kwargs["history_length"])

    result = {
        "model": "prophet_tiny",
        "frame_size": args.size,
        "batch": args.batch,
        "chunk_length": length,
        "threads": torch.get_num_threads(),
        "params": with_memory.num_parameters(),
        "train_step_s": bench_train(with_memory, batch, reps),
        "train_step_s_no_memory": bench_train(without_memory, batch, reps),
    }
    for steps in (1, 2, 4):
        result[f"gen_fps_memory_{steps}step"] = bench_generate(with_memory, batch, steps, True, reps)
        result[f"gen_fps_no_memory_{steps}step"] = bench_generate(without_memory, batch, steps, False, reps)
    chunks = batch[K.ACTIONS][:, None].expand(-1, 3, -1, -1)
    seconds = timed(lambda: with_memory.rollout(batch[K.COND_FRAME], chunks, num_steps=2), 1 if args.quick else 3)
    result["rollout_fps_memory_2step"] = args.batch * 3 * length / seconds
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for key, value in result.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
