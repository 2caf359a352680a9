"""Clip-loading throughput and peak memory: episode shards (RobotClipDataModule) vs a LeRobot-style layout.

Both sides hold the same Meta-World episodes as H.264 mp4 at the same settings and cut the same kind of window
(history, conditioning frame, chunk of actions, future frames, resized to the same size). Methods:

* ``shards``: ``RobotClipDataModule`` streams tar shards and cuts ``windows_per_episode`` random windows from each
  episode, decoding only the groups of pictures those windows need (the library's path);
* ``shards-whole``: the same datamodule with every episode decoded whole first (the path before windowed decoding,
  reproduced by reading frames eagerly);
* ``lerobot``: one parquet of actions per episode plus one mp4 per episode; every window is read by random access
  (pick an episode and a start, read its actions from parquet, seek the mp4 to the keyframe before the window and
  decode the window's frames, converting each with ``to_ndarray(format="rgb24")``), as a map-style dataset does;
* ``lerobot-tuned``: ``lerobot`` with the decoder settings of the library's reader (one decoder thread, one reused
  single-thread swscale context for RGB), to show how much of the gap is those settings rather than decoding less.

Each (method, windows per episode) runs in its own child process, so its peak RSS (``VmHWM``) is its own; the
children of one windows-per-episode setting run back to back. A child loads ``--warmup`` clips, then times
``--clips`` more: clips/s (wall clock) and CPU milliseconds per clip (all threads of the process; on a shared machine
the less noisy of the two). Prints one line per setting and a final JSON line.

    python benchmarks/dataloader.py --quick                          # 1, 4, 8 windows per episode, a few minutes
    python benchmarks/dataloader.py --windows-per-episode 8 --clips 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

METHODS = ("shards", "shards-whole", "lerobot", "lerobot-tuned")


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (``VmHWM``; ``ru_maxrss`` would carry the parent's peak across exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# 1. data: the same episodes as mp4 shards and LeRobot-style ----------------------------------------------------------
def write_lerobot_style(src_dir: str, out: Path, gop: int) -> list[dict]:
    """Same episodes as parquet (actions) + one mp4 per episode; writes and returns the episode index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lightning_prophrl.datamodules.shards import encode_mp4, iter_episodes

    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i, ep in enumerate(iter_episodes(src_dir)):
        pq.write_table(pa.table({"action": list(ep.actions)}), out / f"episode_{i:06d}.parquet")
        (out / f"episode_{i:06d}.mp4").write_bytes(encode_mp4(ep.frames, fps=int(ep.meta["fps"]), gop=gop))
        index.append({"i": i, "length": len(ep), "fps": float(ep.meta["fps"])})
    (out / "index.json").write_text(json.dumps(index))
    return index


def prepare(tmp: Path, src: str | None, episodes: int, size: int, gop: int) -> tuple[Path, Path, float]:
    """Generate (or reuse) npy episodes, store them as mp4 shards and LeRobot-style; returns both roots and gen time."""
    from lightning_prophrl.datamodules.shards import ShardWriter, iter_episodes

    t0 = time.perf_counter()
    if src is None:
        from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

        src = str(tmp / "npy")
        generate_metaworld(["pick-place-v3", "push-v3"], episodes, src, noise=0.1, size=size,
                           max_steps=100, seed=0, per_shard=4, progress=False)  # fmt: skip
    gen_s = time.perf_counter() - t0
    shards = tmp / "shards_mp4"
    with ShardWriter(shards, "bench", max_count=4, frame_format="mp4", gop=gop) as w:
        for ep in iter_episodes(src):
            w.write(ep)
    write_lerobot_style(src, tmp / "lerobot", gop)
    return shards, tmp / "lerobot", gen_s


# 2. the LeRobot-style reader -----------------------------------------------------------------------------------------
def decode_window(path: Path, start: int, stop: int, fps: float, tuned: bool = False) -> np.ndarray:
    """Seek to the keyframe before ``start`` and decode frames ``[start, stop)``."""
    import av

    from lightning_prophrl.datamodules.video import to_rgb

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if tuned:
            stream.codec_context.thread_count = 1
        container.seek(int(start / fps / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            idx = int(round(float(frame.pts * stream.time_base) * fps))
            if idx >= stop:
                break
            if idx >= start:
                frames.append(frame)
    return np.stack(to_rgb(frames) if tuned else [f.to_ndarray(format="rgb24") for f in frames])


def lerobot_loader(args: argparse.Namespace, tuned: bool = False) -> Callable[[int, int], int]:
    """Returns ``load(n, seed)``: ``n`` windows read by random access; returns ``n``."""
    import pyarrow.parquet as pq

    from lightning_prophrl import constants as K
    from lightning_prophrl.datamodules.clips import to_float_video
    from lightning_prophrl.datamodules.shards import load_stats

    root = args.lerobot
    index, stats = json.loads((root / "index.json").read_text()), load_stats(args.shards)

    def load(n: int, seed: int) -> int:
        rng = np.random.default_rng(seed)
        for _ in range(n):
            ep = index[int(rng.integers(len(index)))]
            c = int(rng.integers(0, ep["length"]))
            lo, hi = max(c - args.history, 0), min(c + args.chunk + 1, ep["length"])
            table = pq.read_table(root / f"episode_{ep['i']:06d}.parquet")
            acts = stats.normalize(np.stack(table.column("action").to_numpy(zero_copy_only=False))[c : c + args.chunk])
            frames = decode_window(root / f"episode_{ep['i']:06d}.mp4", lo, hi, ep["fps"], tuned)
            video = to_float_video(frames, args.size)
            assert video.shape[0] == hi - lo and acts.shape[1] == K.ACTION_DIM
        return n

    return load


# 3. one measurement in a child process ------------------------------------------------------------------------------
def shard_loader(args: argparse.Namespace, whole_episode: bool) -> Callable[[int, int], int]:
    """Returns ``load(n, seed)``: one epoch of ``n`` clips through ``RobotClipDataModule``; returns the clip count."""
    import webdataset  # noqa: F401 - imported before timing (the reader imports it on first use)

    from lightning_prophrl import constants as K
    from lightning_prophrl.datamodules import clips
    from lightning_prophrl.datamodules.robot import RobotClipDataModule

    if whole_episode:  # the previous path: every episode's frames decoded whole before its windows are cut
        lazy_reader = clips.iter_episodes
        clips.iter_episodes = lambda *a, **kw: lazy_reader(*a, **{**kw, "lazy_frames": False})

    def load(n: int, seed: int) -> int:
        wpe = args.windows_per_episode[0]
        dm = RobotClipDataModule([str(args.shards)], history_len=args.history, chunk_len=args.chunk,
                                 image_size=args.size, batch_size=8, samples_per_epoch=n, windows_per_episode=wpe,
                                 shuffle_buffer=32, seed=seed)  # fmt: skip
        dm.setup("fit")
        return sum(len(b[K.INSTRUCTION]) for b in dm.train_dataloader())

    return load


def child(args: argparse.Namespace) -> None:
    """Warm up, then time one loader; print its clips/s, CPU ms per clip and peak RSS as a JSON line."""
    import av  # noqa: F401 - imported before timing, as both readers need it
    import torch

    torch.set_num_threads(1)
    if args.child.startswith("shards"):
        load = shard_loader(args, whole_episode=args.child == "shards-whole")
    else:
        load = lerobot_loader(args, tuned=args.child == "lerobot-tuned")
    rss0 = peak_rss_mb()  # imports and setup done, nothing loaded yet
    load(args.warmup, 1)
    t0, c0 = time.perf_counter(), time.process_time()
    n = load(args.clips, 0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "clips_per_s": n / wall,
        "cpu_ms_per_clip": 1e3 * cpu / n,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss0,
    }
    print(json.dumps(out))


def measure(method: str, wpe: int, shards: Path, lerobot: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--shards", str(shards), "--lerobot", str(lerobot),
           "--windows-per-episode", str(wpe), "--clips", str(args.clips), "--size", str(args.size),
           "--history", str(args.history), "--chunk", str(args.chunk), "--warmup", str(args.warmup)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{method} at {wpe} windows per episode failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# 4. the run ---------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="prophrl_bench_"))
    try:
        shards, lerobot, gen_s = prepare(tmp, args.data, args.episodes, args.size, args.gop)
        rows = []
        for wpe in args.windows_per_episode:
            row = {"windows_per_episode": wpe}
            for method in args.methods:
                r = measure(method, wpe, shards, lerobot, args)
                row[method] = {k: round(v, 2) for k, v in r.items()}
            for base in ("lerobot", "lerobot-tuned"):
                if "shards" in row and base in row:  # throughput ratio (wall clock) and CPU-time ratio
                    row[f"ratio_vs_{base}"] = round(row["shards"]["clips_per_s"] / row[base]["clips_per_s"], 2)
                    row[f"cpu_ratio_vs_{base}"] = round(
                        row[base]["cpu_ms_per_clip"] / row["shards"]["cpu_ms_per_clip"], 2
                    )
            rows.append(row)
            print(format_row(row, args.methods), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rows": rows, "clips": args.clips, "episodes_per_task": args.episodes, "size": args.size,
        "history": args.history, "chunk": args.chunk, "gop": args.gop, "generate_s": round(gen_s, 1),
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}", "threads": 1,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip


def format_row(row: dict, methods: list[str]) -> str:
    cells = [f"{m} {row[m]['clips_per_s']:.0f}/s {row[m]['cpu_ms_per_clip']:.2f} cpu-ms {row[m]['peak_rss_mb']:.0f} MB"
             for m in methods]  # fmt: skip
    ratios = [f"{k} {v}x" for k, v in row.items() if k.startswith(("ratio", "cpu_ratio"))]
    return f"windows/episode {row['windows_per_episode']}: " + " | ".join(cells + ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 episodes per task, 320 clips per measurement")
    ap.add_argument("--episodes", type=int, default=None, help="episodes per task (default 20, --quick 4)")
    ap.add_argument("--clips", type=int, default=None, help="clips per measurement (default 1000, --quick 320)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--history", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument("--windows-per-episode", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--warmup", type=int, default=32, help="clips loaded before timing, in each process")
    ap.add_argument("--gop", type=int, default=10, help="keyframe interval of both mp4 layouts")
    ap.add_argument("--data", default=None, help="reuse an existing npy/mp4 shard directory instead of generating")
    ap.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shards", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--lerobot", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.episodes = args.episodes or (4 if args.quick else 20)
    args.clips = args.clips or (320 if args.quick else 1000)
    if args.child:
        child(args)
        return
    res = run(args)
    print("peak RSS: each method and setting in its own process (imports included); rss_before_mb: before loading")
    print("cpu-ms: CPU time per clip over all threads of the process (less sensitive to other load than clips/s)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
