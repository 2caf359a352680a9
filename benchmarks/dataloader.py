"""Clip-loading throughput: episode shards (RobotClipDataModule) vs a LeRobot-style layout, same episodes.

Both sides hold the same Meta-World episodes as H.264 mp4 at the same settings and cut the same windows (history,
conditioning frame, chunk of actions, future frames, resized to the same size):

* shards: ``RobotClipDataModule`` streams tar shards, decodes each episode once and cuts ``windows_per_episode``
  random windows from it (WebDataset's sequential-read model);
* LeRobot-style: one parquet of actions per episode plus one mp4 per episode; every window is read by random access
  (pick an episode and a start, read its actions from parquet, seek the mp4 to the nearest keyframe and decode the
  window's frames), as a map-style dataset with random indices does.

Prints a table and a final JSON line ``{"shards_clips_per_s", "lerobot_clips_per_s", "ratio", ...}``.

    python benchmarks/dataloader.py --quick        # under a minute
    python benchmarks/dataloader.py                # larger run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.clips import to_float_video
from lightning_prophrl.datamodules.robot import RobotClipDataModule
from lightning_prophrl.datamodules.shards import ShardWriter, encode_mp4, iter_episodes, load_stats


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_lerobot_style(src_dir: str, out: Path, gop: int) -> list[dict]:
    """Same episodes as parquet (actions) + one mp4 per episode; returns the episode index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i, ep in enumerate(iter_episodes(src_dir)):
        pq.write_table(pa.table({"action": list(ep.actions)}), out / f"episode_{i:06d}.parquet")
        (out / f"episode_{i:06d}.mp4").write_bytes(encode_mp4(ep.frames, fps=int(ep.meta["fps"]), gop=gop))
        index.append({"i": i, "length": len(ep), "fps": float(ep.meta["fps"])})
    return index


def decode_window(path: Path, start: int, stop: int, fps: float) -> np.ndarray:
    """Seek to the keyframe before ``start`` and decode frames ``[start, stop)``."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(start / fps / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            idx = int(round(float(frame.pts * stream.time_base) * fps))
            if idx >= stop:
                break
            if idx >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames)


def lerobot_clips(root: Path, index: list[dict], stats, n: int, hist: int, chunk: int, size: int, seed: int) -> int:
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    for _ in range(n):
        ep = index[int(rng.integers(len(index)))]
        c = int(rng.integers(0, ep["length"]))
        lo, hi = max(c - hist, 0), min(c + chunk + 1, ep["length"])
        acts = np.stack(
            pq.read_table(root / f"episode_{ep['i']:06d}.parquet").column("action").to_numpy(zero_copy_only=False)
        )
        acts = stats.normalize(acts[c : c + chunk])
        video = to_float_video(decode_window(root / f"episode_{ep['i']:06d}.mp4", lo, hi, ep["fps"]), size)
        assert video.shape[0] == hi - lo and acts.shape[1] == K.ACTION_DIM
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--episodes", type=int, default=None, help="episodes per task")
    ap.add_argument("--clips", type=int, default=None, help="clips to load per method")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--history", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument("--windows-per-episode", type=int, default=8)
    ap.add_argument("--gop", type=int, default=10, help="keyframe interval of both mp4 layouts")
    ap.add_argument("--data", default=None, help="reuse an existing npy/mp4 shard directory instead of generating")
    args = ap.parse_args()
    episodes = args.episodes or (4 if args.quick else 20)
    clips = args.clips or (160 if args.quick else 1000)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="prophrl_bench_"))
    try:
        # 1. the same episodes, generated once, stored both ways (mp4 in both)
        t0 = time.perf_counter()
        src = args.data
        if src is None:
            from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

            src = str(tmp / "npy")
            generate_metaworld(["pick-place-v3", "push-v3"], episodes, src, noise=0.1, size=args.size,
                               max_steps=100, seed=0, per_shard=4, progress=False)  # fmt: skip
        gen_s = time.perf_counter() - t0
        shards = tmp / "shards_mp4"
        with ShardWriter(shards, "bench", max_count=4, frame_format="mp4", gop=args.gop) as w:
            for ep in iter_episodes(src):
                w.write(ep)
        index = write_lerobot_style(src, tmp / "lerobot", args.gop)
        stats = load_stats(shards)
        # 2. shards through the real datamodule
        dm = RobotClipDataModule([str(shards)], history_len=args.history, chunk_len=args.chunk, image_size=args.size,
                                 batch_size=8, samples_per_epoch=clips, windows_per_episode=args.windows_per_episode,
                                 shuffle_buffer=32)  # fmt: skip
        dm.setup("fit")
        rss0 = peak_rss_mb()
        t0 = time.perf_counter()
        n_shards = sum(len(b[K.INSTRUCTION]) for b in dm.train_dataloader())
        shard_s = time.perf_counter() - t0
        rss_shards = peak_rss_mb()
        # 3. LeRobot-style random access
        t0 = time.perf_counter()
        n_lr = lerobot_clips(tmp / "lerobot", index, stats, clips, args.history, args.chunk, args.size, seed=0)
        lr_s = time.perf_counter() - t0
        rss_lr = peak_rss_mb()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {
        "shards_clips_per_s": round(n_shards / shard_s, 1),
        "lerobot_clips_per_s": round(n_lr / lr_s, 1),
        "ratio": round((n_shards / shard_s) / (n_lr / lr_s), 2),
        "peak_rss_mb_after_shards": round(max(rss_shards, rss0), 1),
        "peak_rss_mb_after_lerobot": round(rss_lr, 1),
        "clips": clips, "episodes": len(index), "size": args.size, "history": args.history, "chunk": args.chunk,
        "windows_per_episode": args.windows_per_episode, "gop": args.gop, "generate_s": round(gen_s, 1),
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}", "threads": 1,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    print(f"shards       : {res['shards_clips_per_s']:8.1f} clips/s")
    print(f"lerobot-style: {res['lerobot_clips_per_s']:8.1f} clips/s   ratio {res['ratio']}x")
    print("peak RSS is process-wide and monotone: the second figure includes the first phase")
    print(json.dumps(res))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
