"""``prophrl-data encode``: copy a dataset's shards with each episode's latents (``latents.npz``) added, so that
training reads latents (``RobotClipDataModule(latents=True)``) and skips video decoding and the codec.

The codec is causal in time with 4x compression (Wan2.1 VAE): the latents of a window are *not* a slice of the whole
episode's latents. So what is stored is what training computes for a window (layout: ``latent_shards``):

* every frame encoded alone (``encode_frames``): Prophet encodes its history frame by frame, and the conditioning
  frame's latent is the first latent of the ``[cond, future]`` clip, which a causal codec computes from that frame only;
* for every window start ``c`` (every ``every``-th), the future latents of the clip ``[c, c+1 .. c+L]`` encoded as one
  video, cut by the very ``ClipIterable`` code the pixel datamodule uses (stride, resize, clamping at the episode end);
  a frame-independent codec (the pixel codec) needs no windows: its future latents are per-frame rows;
* with a Prophet that uses action frames, each window's rendered and encoded action-frame video.

The output mirrors the input shard by shard (same names, every member copied byte for byte; ``--drop-frames`` leaves
out ``frames.npy`` / ``frames.mp4``). Each shard is written to ``NAME.tmp`` and renamed when complete; ``index.json``
lists the finished ones and ``latents.json`` (the codec fingerprint, sizes and progress) is rewritten after each, so an
interrupted run resumes with ``--resume`` and re-encodes only the unfinished shards.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.constants import LATENTS_FILE, SHARD_LATENTS
from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec, stride_episode, to_float_video
from lightning_prophrl.datamodules.latent_shards import FORMAT_VERSION, pack_latents, write_json_atomic
from lightning_prophrl.datamodules.shards import (
    INDEX_FILE,
    Episode,
    ShardFormatError,
    decode_episode,
    list_shards,
    read_index,
)
from lightning_prophrl.models.action_frames import ActionFrameStyle, render_action_frames
from lightning_prophrl.models.latent import LatentCodec, WanVAECodec, action_frame_fingerprint, build_codec

RESUMED_SETTINGS = ("format", "fingerprint", "action_frame_fingerprint", "image_size", "stride", "chunk_len", "every",
                    "drop_frames", "source")  # fmt: skip


@dataclass
class LatentEncoder:
    """What ``--model`` gives: the codec, and from a Prophet its chunk length and action-frame style."""

    codec: LatentCodec
    chunk_len: int | None = None
    frame_style: ActionFrameStyle | None = None


def load_encoder(model: str) -> LatentEncoder:
    """``--model``: a Prophet ``save_pretrained`` directory (its codec weights are read, not the DiT's), a Prophet
    model YAML (``class_path`` / ``init_args``, as ``configs/prophet/model_*.yaml``) or a diffusers Wan VAE directory."""
    path = Path(model)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        import yaml

        cfg = yaml.safe_load(path.read_text()) or {}
        args = cfg.get("init_args", cfg)
        kind, kwargs = args.get("codec", "wan"), dict(args.get("codec_kwargs") or {})
        if kind == "wan" and not kwargs.get("pretrained_path"):
            raise ValueError(f"--model {model}: its Wan VAE has random weights (codec_kwargs.pretrained_path is "
                             "null), so no trained model would match its latents: give the Prophet directory "
                             "(save_pretrained) or set pretrained_path")  # fmt: skip
        return _prophet_encoder(args, build_codec(kind, kwargs))
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "Prophet":
        args = json.loads(config.read_text())
        codec = build_codec(args.get("codec", "wan"), args.get("codec_kwargs"))
        _load_codec_weights(codec, path)
        return _prophet_encoder(args, codec)
    if path.is_dir() and ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
        return LatentEncoder(WanVAECodec(pretrained_path=str(path)))
    raise FileNotFoundError(f"--model {model}: not a Prophet directory (save_pretrained), a Prophet model YAML or a "
                            "diffusers Wan VAE directory")  # fmt: skip


def _prophet_encoder(args: dict[str, Any], codec: LatentCodec) -> LatentEncoder:
    from lightning_prophrl.models.prophet import Prophet

    defaults = {k: p.default for k, p in inspect.signature(Prophet.__init__).parameters.items()}
    args = {**defaults, **{k: v for k, v in args.items() if k in defaults}}
    style = ActionFrameStyle(**(args["action_frame_style"] or {})) if args["use_action_frames"] else None
    return LatentEncoder(codec, int(args["action_chunk_length"]), style)


def _load_codec_weights(codec: LatentCodec, path: Path) -> None:
    """Load the ``latent_codec.*`` entries of a Prophet directory's safetensors into ``codec``."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"--model {path}: no *.safetensors weights in the Prophet directory")
    state = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            names = [k for k in f.keys() if k.startswith("latent_codec.")]  # noqa: SIM118 - not a dict
            state.update({k.removeprefix("latent_codec."): f.get_tensor(k) for k in names})
    codec.load_state_dict(state, strict=True)


@torch.inference_mode()
def encode_episode(
    ep: Episode, enc: LatentEncoder, cutter: ClipIterable, every: int, batch_size: int, device: torch.device
) -> tuple[bytes, dict[str, Any]]:
    """The ``latents.npz`` bytes of one (unstrided) episode and its meta (see ``latent_shards``)."""
    codec, size = enc.codec, cutter.image_size
    ep = stride_episode(ep, cutter.datasets[0].stride)
    t = len(ep)
    # 1. Every frame as a one-frame clip (conditioning frame and history)
    frames = [codec.encode_frames(to_float_video(ep.frames[i : i + batch_size], size)[None].to(device))[0]
              for i in range(0, t, batch_size)]  # fmt: skip
    per_frame = torch.cat(frames, 1).transpose(0, 1).float().cpu().numpy()  # (T, C, h, w)
    # 2. Windows: the [cond, future] clip and the action frames, cut as the pixel datamodule cuts them
    starts = np.arange(0, t, every)
    windows, actions = [], []
    for i in range(0, len(starts), batch_size):
        clips = [cutter.make_clip(ep, int(c), 0) for c in starts[i : i + batch_size]]
        if not codec.frame_independent:
            video = torch.stack([torch.cat([c[K.COND_FRAME][None], c[K.FUTURE]]) for c in clips]).to(device)
            windows.append(codec.encode(video)[:, :, 1:].float().cpu())
        if enc.frame_style is not None and bool(clips[0][K.HAS_CAMERA]):
            actions.append(_encode_action_frames(codec, enc.frame_style, clips, size, device))
    meta = {"fingerprint": codec.fingerprint(), "image_size": size, "stride": cutter.datasets[0].stride,
            "chunk_len": cutter.chunk_len, "every": every, "layout": "frame" if codec.frame_independent else "window",
            "action_frame_fingerprint": _af_fingerprint(enc)}  # fmt: skip
    return pack_latents(per_frame, starts, _cat(windows), _cat(actions), meta), meta


def _cat(parts: list[torch.Tensor]) -> np.ndarray | None:
    return torch.cat(parts).numpy() if parts else None


def _encode_action_frames(codec: LatentCodec, style: ActionFrameStyle, clips: list[dict], size: int,
                          device: torch.device) -> torch.Tensor:  # fmt: skip
    """``Prophet.encode_action_frames`` for a batch of clips: render, prepend the first frame, encode, drop it."""
    ee, grip, k, extr = (torch.stack([c[key] for c in clips]).to(device)
                         for key in (K.EE_POSES, K.GRIPPER, K.CAMERA_K, K.CAMERA_EXTR))  # fmt: skip
    frames = render_action_frames(ee, grip, k, extr, size, size, style=style)
    return codec.encode(torch.cat([frames[:, :1], frames], 1))[:, :, 1:].float().cpu()


def _af_fingerprint(enc: LatentEncoder) -> str | None:
    return None if enc.frame_style is None else action_frame_fingerprint(enc.codec, dataclasses.asdict(enc.frame_style))


def _raw_samples(url: str):
    """The samples of one shard as bytes by extension (an unreadable tar raises ``ShardFormatError``)."""
    import webdataset as wds

    def unreadable(err: Exception) -> bool:
        raise ShardFormatError(url, "?", f"unreadable tar: {type(err).__name__}: {err}") from err

    return wds.WebDataset([url], shardshuffle=False, nodesplitter=None, workersplitter=None, handler=unreadable)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def encode_dataset(
    shards: str,
    out: str,
    model: str,
    image_size: int,
    chunk_len: int | None = None,
    stride: int = 1,
    every: int = 1,
    drop_frames: bool = False,
    batch_size: int = 8,
    device: str = "cpu",
    resume: bool = False,
) -> dict[str, Any]:
    """Write ``shards``' episodes with their latents to ``out`` (see the module docstring); returns a summary.

    Args:
        shards: the source dataset directory (shards, ``index.json``, ``stats.json``).
        out: a new or empty directory, or (``resume``) an interrupted encode run's.
        model: see :func:`load_encoder`.
        image_size: the training datamodule's ``image_size`` (frames are resized as it resizes them).
        chunk_len: the action chunk length L (default: the Prophet's ``action_chunk_length``).
        stride: the training datamodule's stride of this dataset.
        every: store windows at every ``every``-th conditioning index (training then draws its windows from those).
        drop_frames: leave the frames out of the output shards (latent-only training data).
        batch_size: clips per codec call.
        device: where the codec runs.
        resume: continue an interrupted run into ``out`` (same settings), skipping its finished shards.
    """
    src, dst = Path(shards), Path(out)
    if src.resolve() == dst.resolve():
        raise ValueError(f"--out {out} is the source directory: choose a new directory")
    urls = list_shards(src)
    if not (src / K.STATS_FILE).is_file():
        raise FileNotFoundError(f"{src / K.STATS_FILE} not found: run `prophrl-data stats {src}` first")
    enc = load_encoder(model)
    if getattr(enc.codec, "sample_posterior", False):
        raise ValueError(f"--model {model}: its codec samples the posterior (sample_posterior: true): stored latents "
                         "would be one fixed draw, not what training draws")  # fmt: skip
    chunk_len = chunk_len or enc.chunk_len
    if chunk_len is None:
        raise ValueError(f"--model {model} is a bare VAE: give --chunk-len (the Prophet's action_chunk_length)")
    enc.codec.num_latent_frames(1 + chunk_len)  # a chunk the codec can encode with its conditioning frame
    enc.codec.latent_size(image_size, image_size)
    settings = {"format": FORMAT_VERSION, "fingerprint": enc.codec.fingerprint(),
                "action_frame_fingerprint": _af_fingerprint(enc), "image_size": image_size, "stride": stride,
                "chunk_len": chunk_len, "every": every, "drop_frames": drop_frames, "source": str(src.resolve()),
                "codec": type(enc.codec).__name__, "model": str(model),
                "layout": "frame" if enc.codec.frame_independent else "window"}  # fmt: skip
    created = not dst.exists()
    info = _prepare_output(dst, settings, resume)
    try:  # full float32 convolutions on a GPU too (cuDNN would use TF32 by default)
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
            return _encode_shards(urls, src, dst, info, enc, batch_size, torch.device(device))
    except BaseException:
        if not resume and not any(dst.glob("*.tar")):  # nothing to resume: leave --out as it was
            if created:
                shutil.rmtree(dst, ignore_errors=True)
            else:
                for child in dst.iterdir():  # it was empty
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        raise


def _encode_shards(urls: list[str], src: Path, dst: Path, info: dict[str, Any], enc: LatentEncoder, batch_size: int,
                   device: torch.device) -> dict[str, Any]:  # fmt: skip
    """The shard loop of :func:`encode_dataset` (``info``: the run's ``latents.json``)."""
    image_size, stride, chunk_len, every = (info[k] for k in ("image_size", "stride", "chunk_len", "every"))
    shutil.copy(src / K.STATS_FILE, dst / K.STATS_FILE)
    index = {"shards": list(info["index"]), "dataset": read_index(src).get("dataset") if (src / INDEX_FILE).is_file()
             else src.name}  # fmt: skip
    enc.codec.to(device).eval()
    cutter = ClipIterable([DatasetSpec(str(src), stride=stride)], 0, chunk_len, image_size, with_future=True)
    skip = {SHARD_LATENTS} | ({K.SHARD_FRAMES_NPY, K.SHARD_FRAMES_MP4} if info["drop_frames"] else set())
    episodes = 0
    for url in urls:
        name = Path(url).name
        if name in {s["name"] for s in index["shards"]}:
            continue
        tmp = dst / f"{name}.tmp"
        try:
            count = 0
            with tarfile.open(tmp, "w") as tar:
                for sample in _raw_samples(url):
                    ep = decode_episode(sample, url)
                    payload, _ = encode_episode(ep, enc, cutter, every, batch_size, device)
                    for ext, data in sample.items():
                        if not ext.startswith("__") and ext not in skip:
                            _add(tar, f"{sample['__key__']}.{ext}", data)
                    _add(tar, f"{sample['__key__']}.{SHARD_LATENTS}", payload)
                    count += 1
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dst / name)
        episodes += count
        index["shards"].append({"name": name, "count": count})
        write_json_atomic(dst / INDEX_FILE, index)
        write_json_atomic(dst / LATENTS_FILE, {**info, "index": index["shards"]})
    write_json_atomic(dst / LATENTS_FILE, {**info, "index": index["shards"], "complete": True})
    c, h, w = enc.codec.latent_channels, *enc.codec.latent_size(image_size, image_size)
    return {"out": str(dst), "shards": len(index["shards"]), "episodes_encoded": episodes,
            "fingerprint": info["fingerprint"], "layout": info["layout"],
            "action_frames": info["action_frame_fingerprint"] is not None,
            "bytes_per_latent_frame": 4 * c * h * w}  # fmt: skip


def _prepare_output(dst: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Create ``dst`` (or check an interrupted run's ``latents.json`` with ``resume``); the run's ``latents.json``."""
    existing = dst / LATENTS_FILE
    if resume:
        if not existing.is_file():
            raise FileNotFoundError(f"--resume: {existing} not found: {dst} holds no interrupted encode run")
        info = json.loads(existing.read_text())
        diff = [f"{k}={info.get(k)!r} (now {settings[k]!r})" for k in RESUMED_SETTINGS if info.get(k) != settings[k]]
        if diff:
            raise ValueError(f"--resume: {dst} was encoded with other settings: {', '.join(diff)}; encode into a new "
                             "--out instead")  # fmt: skip
        for leftover in dst.glob("*.tmp"):
            leftover.unlink()
        return {**info, "complete": False}
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        hint = " (an interrupted encode run: pass --resume)" if existing.is_file() else ""
        raise FileExistsError(f"--out {dst} is not empty: choose a new or empty directory{hint}")
    dst.mkdir(parents=True, exist_ok=True)
    info = {**settings, "index": [], "complete": False}
    write_json_atomic(existing, info)
    return info
