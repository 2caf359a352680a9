"""Pre-encoded latents (``prophrl-data encode``, ``RobotClipDataModule(latents=True)``): the latents a training batch
reads are what the Prophet computes from the same window's pixels, other codecs and sizes are refused, and ``--out``
is never overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.constants import (
    LATENT_ACTION_FRAMES,
    LATENT_COND,
    LATENT_FUTURE,
    LATENT_HISTORY,
    LATENTS_FILE,
    SHARD_LATENTS,
)
from lightning_prophrl.data_cli import main
from lightning_prophrl.datamodules.clips import to_float_video
from lightning_prophrl.datamodules.latent_clips import LatentClipIterable
from lightning_prophrl.datamodules.latent_shards import unpack_latents
from lightning_prophrl.datamodules.robot import RobotClipDataModule, collate_clips
from lightning_prophrl.datamodules.shards import Episode, ShardFormatError, ShardWriter, iter_episodes
from lightning_prophrl.models.prophet import Prophet
from tests.datamodules.mp4_data import textured_frames
from tests.faults.test_data_cli_faults import one_error_line, run
from tests.models.test_prophet import CONFIGS

SIZE, L, HIST = 32, 8, 3  # frames 32 x 32 (Wan: 4 x 4 latents), chunk 8 (2 future latents), history 3
TINY_VAE = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}


def write_camera_dataset(path, lengths=(13, 9, 11, 7), frame_format="mp4") -> str:
    """Textured episodes; even ones carry a camera and commanded poses (action frames), odd ones none."""
    with ShardWriter(path, "cam", max_count=2, frame_format=frame_format) as w:
        for i, t in enumerate(lengths):
            rng = np.random.default_rng(i)
            actions = rng.normal(size=(t, 14)).astype(np.float32)
            meta = {"embodiment": "toy", "instruction": "move", "fps": 10, "success": bool(i % 2)}
            extras = {}
            if i % 2 == 0:
                meta["camera"] = {"K": [[40.0, 0, 24], [0, 40.0, 24], [0, 0, 1]], "extrinsics": np.eye(4).tolist(),
                                  "width": 48, "height": 48}  # fmt: skip
                poses = np.zeros((t, 1, 8), dtype=np.float32)
                poses[:, 0, :3] = [0.0, 0.0, 1.0] + 0.1 * rng.normal(size=(t, 3))
                poses[:, 0, 3], poses[:, 0, 7] = 1.0, rng.uniform(size=t)
                extras["target_poses.npy"] = poses
            w.write(Episode(f"cam_{i:03d}", textured_frames(t, 48, 48, seed=i), actions, np.ones(14, bool), meta,
                            extras=extras))  # fmt: skip
    return str(path)


def tiny_prophet(codec: str = "wan", seed: int = 0, **overrides) -> Prophet:
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    codec_kwargs = {"vae_config": TINY_VAE} if codec == "wan" else {"factor": 4}
    kwargs.update(codec=codec, codec_kwargs=codec_kwargs, history_length=HIST, history_scale_frames=[1, 1, 1],
                  history_scales=[[1, 1, 1], [1, 2, 2], [1, 2, 2]], action_chunk_length=L, **overrides)  # fmt: skip
    torch.manual_seed(seed)
    return Prophet(**kwargs).eval()


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prophet_wan")
    tiny_prophet("wan").save_pretrained(path)
    return str(path)


def encode(src, out, model, *extra: str) -> None:
    main(["encode", "--model", model, "--shards", str(src), "--out", str(out), "--image-size", str(SIZE), *extra])


def datamodule(path, latents: bool, stride: int = 1, **kw) -> RobotClipDataModule:
    kw = {"history_len": HIST, "chunk_len": L, "image_size": SIZE, "batch_size": 4, "samples_per_epoch": 8,
          "windows_per_episode": 3, "shuffle_buffer": 4, "seed": 5, **kw}  # fmt: skip
    dm = RobotClipDataModule([str(path)], stride=stride, latents=latents, **kw)
    dm.setup("fit")
    return dm


def assert_same_training_inputs(model: Prophet, pixel: dict, latent: dict) -> None:
    """Stored latents = the model's own encoding of the pixels, and the loss on the same noise is the same."""
    cond_p, fut_p, hist_p, mask_p, size_p = model.clip_latents(pixel)
    cond_l, fut_l, hist_l, mask_l, size_l = model.clip_latents(latent)
    assert size_p == size_l
    torch.testing.assert_close(cond_l, cond_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fut_l, fut_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hist_l, hist_p, atol=1e-5, rtol=1e-5)
    assert torch.equal(mask_l, mask_p)
    af_p, cam_p = model.clip_action_frames(pixel, size_p)
    af_l, cam_l = model.clip_action_frames(latent, size_l)
    if cam_p is None:  # no sample of the batch has a camera
        assert af_p is af_l is cam_l is None
    else:
        assert torch.equal(cam_p, cam_l)
        torch.testing.assert_close(af_l[cam_l], af_p[cam_p], atol=1e-5, rtol=1e-5)  # no camera: masked in forward
    loss_p, logs_p = model.training_loss(pixel, generator=torch.Generator().manual_seed(3))
    loss_l, logs_l = model.training_loss(latent, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss_l, loss_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logs_l["success_loss"], logs_p["success_loss"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_latent_batches_equal_what_the_model_encodes_from_the_pixels(tmp_path, wan_dir, stride):
    src = write_camera_dataset(tmp_path / "src")
    encode(src, tmp_path / "enc", wan_dir, "--stride", str(stride), "--batch-size", "3")
    model = Prophet.from_pretrained(wan_dir).eval()
    info = json.loads((tmp_path / "enc" / LATENTS_FILE).read_text())
    assert info["complete"] and info["layout"] == "window" and info["fingerprint"] == model.latent_codec.fingerprint()
    pixel_dm, latent_dm = datamodule(src, False, stride), datamodule(tmp_path / "enc", True, stride)
    assert isinstance(latent_dm.train_set, LatentClipIterable)
    for pixel, latent in zip(pixel_dm.train_dataloader(), latent_dm.train_dataloader(), strict=True):
        assert pixel[K.EPISODE_KEY] == latent[K.EPISODE_KEY] and K.FUTURE not in latent
        assert latent[LATENT_FUTURE].shape == latent[LATENT_ACTION_FRAMES].shape == (4, 4, 2, 4, 4)  # C=4, 4 x 4
        assert latent[LATENT_HISTORY].shape == (4, 4, HIST, 4, 4) and latent[LATENT_COND].shape == (4, 4, 4, 4)
        for key in (K.FRAME_INDEX, K.ACTIONS, K.HISTORY_MASK, K.EE_POSES, K.CAMERA_K, K.HAS_CAMERA, K.CLIP_SUCCESS):
            assert torch.equal(pixel[key], latent[key]), key
        assert_same_training_inputs(model, pixel, latent)


def test_every_and_drop_frames_keep_the_windows_exact(tmp_path, wan_dir):
    src = write_camera_dataset(tmp_path / "src", frame_format="npy")
    encode(src, tmp_path / "enc", wan_dir, "--every", "4", "--drop-frames")
    model = Prophet.from_pretrained(wan_dir).eval()
    with pytest.raises(ShardFormatError, match="no frames .*--drop-frames"):
        next(iter_episodes(str(tmp_path / "enc")))
    stored = unpack_latents(next(iter_episodes(str(tmp_path / "enc"), decode_frames=False)).extras[SHARD_LATENTS])
    assert stored.starts.tolist() == [0, 4, 8, 12] and stored.windows.shape == (4, 4, 2, 4, 4)
    # the causal caveat: the whole episode's latents (frames 0 | 1-4 | 5-8 | 9-12) line up with the window at 0 only;
    # the window at 4 encodes frames 5-12 after frame 4 alone, not after frames 0-4
    whole = model.latent_codec.encode(to_float_video(next(iter_episodes(src)).frames, SIZE)[None])[0]
    torch.testing.assert_close(torch.from_numpy(stored.windows[0]), whole[:, 1:3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.from_numpy(stored.windows[1]), whole[:, 2:4], atol=1e-3)
    latent_dm = datamodule(tmp_path / "enc", True, windows_per_episode=6)
    pixel_ds = datamodule(src, False).train_set
    episodes = {ep.key: ep for ep in iter_episodes(src)}
    for latent in latent_dm.train_dataloader():
        assert all(int(c) % 4 == 0 for c in latent[K.FRAME_INDEX])
        pixel = collate_clips([pixel_ds.make_clip(episodes[k], int(c), 0)
                               for k, c in zip(latent[K.EPISODE_KEY], latent[K.FRAME_INDEX], strict=True)])  # fmt: skip
        assert_same_training_inputs(model, pixel, latent)


def test_frame_independent_codec_stores_frames_only(tmp_path):
    src = write_camera_dataset(tmp_path / "src", lengths=(9, 6))
    config = tmp_path / "pixel.yaml"
    model = tiny_prophet("pixel")
    config.write_text(yaml.safe_dump({"init_args": dict(model.config)}))
    encode(src, tmp_path / "enc", str(config))
    stored = unpack_latents(next(iter_episodes(str(tmp_path / "enc"), decode_frames=False)).extras[SHARD_LATENTS])
    assert stored.windows is None and stored.meta["layout"] == "frame" and stored.action_frames.shape[0] == 9
    for pixel, latent in zip(datamodule(src, False).train_dataloader(), datamodule(tmp_path / "enc", True).train_dataloader(),
                             strict=True):  # fmt: skip
        assert_same_training_inputs(model, pixel, latent)


def test_latents_of_another_codec_style_or_size_are_refused(tmp_path, wan_dir):
    src = write_camera_dataset(tmp_path / "src", lengths=(9, 7))
    encode(src, tmp_path / "enc", wan_dir)
    batch = next(iter(datamodule(tmp_path / "enc", True).train_dataloader()))
    other = tiny_prophet("wan", seed=1)  # same architecture, other weights
    refused = r"enc: episode 'cam_00\d': latents.npz was made by codec \w+, this Prophet's is \w+: encode the source"
    with pytest.raises(ValueError, match=refused + r" shards again with `prophrl-data encode --model <this model>`"):
        other.training_loss(batch)
    restyled = Prophet.from_pretrained(wan_dir, action_frame_style={"r_ref": 3.0}).eval()
    with pytest.raises(ValueError, match="made by codec \\+ action-frame style"):
        restyled.training_loss(batch)
    size = r"latents.json: latents were encoded with image_size=32, the datamodule reads image_size=64: set "
    with pytest.raises(ValueError, match=size + r"image_size: 32 or encode again with --image-size 64"):
        RobotClipDataModule([str(tmp_path / "enc")], chunk_len=L, image_size=64, latents=True).setup("fit")
    with pytest.raises(ValueError, match="encoded with stride=1, the datamodule reads stride=2"):
        datamodule(tmp_path / "enc", True, stride=2)
    with pytest.raises(FileNotFoundError, match="no latents.json.*prophrl-data encode"):
        datamodule(src, True)


def test_out_is_never_overwritten_and_an_interrupted_run_resumes(tmp_path, wan_dir, capsys, monkeypatch):
    from lightning_prophrl.datamodules import latent_encode

    src = write_camera_dataset(tmp_path / "src", lengths=(6, 5, 7))  # shards of 2 + 1 episodes
    encode(src, tmp_path / "clean", wan_dir)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, err = run(capsys, "encode", "--model", wan_dir, "--shards", src, "--out", str(tmp_path / "full"),
                    "--image-size", "32")  # fmt: skip
    assert code == 1 and "--out" in one_error_line(err) and "not empty" in err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    code, err = run(capsys, "encode", "--model", wan_dir, "--shards", src, "--out", str(tmp_path / "o"),
                    "--image-size", "32", "--every", "0")  # fmt: skip
    assert code == 2 and "--every" in one_error_line(err) and not (tmp_path / "o").exists()

    real, calls = latent_encode.encode_episode, []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(latent_encode, "encode_episode", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        main(["encode", "--model", wan_dir, "--shards", src, "--out", str(tmp_path / "part"), "--image-size", "32"])
    monkeypatch.setattr(latent_encode, "encode_episode", real)
    assert sorted(p.name for p in (tmp_path / "part").glob("*.tar*")) == ["shard-000000.tar"]  # no partial shard
    with pytest.raises(ValueError, match="did not finish: rerun it with --resume"):
        datamodule(tmp_path / "part", True)
    code, err = run(capsys, "encode", "--model", wan_dir, "--shards", src, "--out", str(tmp_path / "part"),
                    "--image-size", "32")  # fmt: skip
    assert code == 1 and "pass --resume" in one_error_line(err)
    code, err = run(capsys, "encode", "--model", wan_dir, "--shards", src, "--out", str(tmp_path / "part"),
                    "--image-size", "32", "--resume", "--every", "2")  # fmt: skip
    assert code == 1 and "every=1 (now 2)" in one_error_line(err)
    encode(src, tmp_path / "part", wan_dir, "--resume")
    for name in ("shard-000000.tar", "shard-000001.tar", "index.json", "stats.json"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_pretraining_on_latent_batches_never_runs_the_codec(tmp_path, wan_dir):
    import lightning as L

    from lightning_prophrl.modules.prophet_pretrain import ProphetPretrainModule

    src = write_camera_dataset(tmp_path / "src", lengths=(9, 7))
    encode(src, tmp_path / "enc", wan_dir)
    model = Prophet.from_pretrained(wan_dir).train()

    def refuse(video):
        raise AssertionError("the codec ran on a latent batch")

    model.latent_codec._encode = refuse
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(ProphetPretrainModule(model), datamodule=datamodule(tmp_path / "enc", True))
    assert trainer.global_step == 2


def test_codec_fingerprint_follows_config_weights_and_dtype():
    from lightning_prophrl.models.latent import PixelShuffleCodec

    codec = tiny_prophet("wan").latent_codec
    fp = codec.fingerprint()
    assert (
        codec.fingerprint()
        == fp
        == tiny_prophet("wan").latent_codec.fingerprint()
        != tiny_prophet("wan", seed=1).latent_codec.fingerprint()
    )
    state = {k: v.clone() for k, v in codec.state_dict().items()}
    name = next(iter(state))
    codec.load_state_dict({**state, name: state[name] + 1e-3})  # the same tensors, new values
    assert codec.fingerprint() not in (fp, None)
    codec.load_state_dict(state)
    assert codec.fingerprint() == fp
    assert codec.double().fingerprint() != fp
    assert (
        PixelShuffleCodec(4).fingerprint() == PixelShuffleCodec(4).fingerprint() != PixelShuffleCodec(2).fingerprint()
    )
